//! Test support: a program of one instruction from an input to an output, and its round trip
//! through the printed MLIR (printed, verified, read back).

use super::print::print_core;
use super::read::read_programs;
use ppmoe_runtime::program::{Buffer, BufferKind, Instruction, Op, Program};
use ppmoe_runtime::DType;

/// `op` reading input `x` (its element type and shape) and making output `y`.
pub fn program(op: Op, x: (DType, &[usize]), y: (DType, &[usize])) -> Program {
    let buffer = |name: &str, (dtype, shape): (DType, &[usize]), kind| Buffer {
        name: name.into(),
        dtype,
        shape: shape.iter().map(|&d| Some(d)).collect(),
        kind,
    };
    Program {
        buffers: vec![
            buffer("x", x, BufferKind::Input),
            buffer("y", y, BufferKind::Output),
        ],
        inputs: vec![0],
        outputs: vec![1],
        instructions: vec![Instruction {
            op,
            inputs: vec![Some(0)],
            outputs: vec![1],
            origin: "node".into(),
        }],
        ..Program::empty()
    }
}

/// `p` printed (the text), and the program the text reads back as once MLIR verified it.
pub fn round_trip(p: &Program) -> (String, Program) {
    let context = ppmoe_dialect::context();
    let text = print_core(&[p]);
    let module =
        ppmoe_dialect::parse_verified(&context, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut read = read_programs(&module.as_operation()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (text, read.remove(0))
}
