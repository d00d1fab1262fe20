//! Test support: a program of one instruction from an input to an output, and its round trip
//! through the printed MLIR (printed, verified, read back).

use super::print::print_core;
use super::read::read_programs;
use ppmoe_runtime::program::{Buffer, BufferKind, Instruction, Op, Program};
use ppmoe_runtime::DType;

/// `op` reading input `x` (its element type and shape) and making output `y`.
pub fn program(op: Op, x: (DType, &[usize]), y: (DType, &[usize])) -> Program {
    program_of(op, &[("x", x.0, x.1)], y)
}

/// `op` reading the named `inputs` (element type and shape each), in order, and making `y`.
pub fn program_of(op: Op, inputs: &[(&str, DType, &[usize])], y: (DType, &[usize])) -> Program {
    let buffer = |name: &str, dtype, shape: &[usize], kind| Buffer {
        name: name.into(),
        dtype,
        shape: shape.iter().map(|&d| Some(d)).collect(),
        kind,
    };
    let mut buffers: Vec<Buffer> = (inputs.iter())
        .map(|&(name, dtype, shape)| buffer(name, dtype, shape, BufferKind::Input))
        .collect();
    let n = inputs.len();
    buffers.push(buffer("y", y.0, y.1, BufferKind::Output));
    Program {
        buffers,
        inputs: (0..n).collect(),
        outputs: vec![n],
        instructions: vec![Instruction {
            op,
            inputs: (0..n).map(Some).collect(),
            outputs: vec![n],
            origin: "node".into(),
        }],
        ..Program::empty()
    }
}

/// The names of the buffers the one instruction of `p` reads, in order.
pub fn operand_names(p: &Program) -> Vec<&str> {
    (p.instructions[0].inputs.iter().flatten())
        .map(|&b| p.buffers[b].name.as_str())
        .collect()
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
