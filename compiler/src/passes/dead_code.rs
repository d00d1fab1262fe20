//! Dead-code elimination over a `core` program: drops instructions whose results nobody reads,
//! then the buffers and weights nothing refers to, and renumbers what is left.
//!
//!   before:  %t = core.transpose(%w)   (unused)    %y = core.mat_mul(%x, %v)
//!   after:                                          %y = core.mat_mul(%x, %v)

use ppmoe_runtime::program::{BufferId, Program};
use ppmoe_runtime::Tensor;
use std::collections::HashSet;

pub fn remove_dead_code(mut p: Program, weights: &mut Vec<(String, Tensor)>) -> Program {
    let mut live: HashSet<BufferId> = p.outputs.iter().copied().collect();
    let mut keep = vec![false; p.instructions.len()];
    for (i, ins) in p.instructions.iter().enumerate().rev() {
        // A send is kept for what it does, not for a result.
        if ins.outputs.iter().any(|o| live.contains(o))
            || matches!(ins.op, ppmoe_runtime::program::Op::Send { .. })
        {
            keep[i] = true;
            live.extend(ins.inputs.iter().flatten().copied());
        }
    }
    let mut k = keep.iter();
    p.instructions.retain(|_| *k.next().unwrap_or(&false));
    // Every output of a kept instruction stays (a multi-result op writes them all).
    for ins in &p.instructions {
        live.extend(ins.outputs.iter().copied());
    }
    live.extend(p.inputs.iter().copied());
    let mut remap = vec![usize::MAX; p.buffers.len()];
    let mut buffers = Vec::new();
    for (id, b) in p.buffers.iter().enumerate() {
        if live.contains(&id) {
            remap[id] = buffers.len();
            buffers.push(b.clone());
        }
    }
    let names: HashSet<&str> = buffers.iter().map(|b| b.name.as_str()).collect();
    weights.retain(|(n, _)| names.contains(n.as_str()));
    for ins in &mut p.instructions {
        ins.inputs
            .iter_mut()
            .flatten()
            .for_each(|id| *id = remap[*id]);
        ins.outputs.iter_mut().for_each(|id| *id = remap[*id]);
    }
    p.inputs.iter_mut().for_each(|id| *id = remap[*id]);
    p.outputs.iter_mut().for_each(|id| *id = remap[*id]);
    p.buffers = buffers;
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppmoe_runtime::program::{Buffer, BufferKind, Instruction, Op};
    use ppmoe_runtime::DType;

    fn buf(name: &str, kind: BufferKind) -> Buffer {
        Buffer {
            name: name.into(),
            dtype: DType::F32,
            shape: vec![Some(2)],
            kind,
        }
    }

    #[test]
    fn dead_code_drops_unread_instructions_and_their_weights() {
        let p = Program {
            rank: 0,
            buffers: vec![
                buf("x", BufferKind::Input),
                buf("w", BufferKind::Weight),
                buf("dead", BufferKind::Temp),
                buf("y", BufferKind::Output),
            ],
            inputs: vec![0],
            outputs: vec![3],
            instructions: vec![
                Instruction {
                    op: Op::Transpose { perm: vec![0] },
                    inputs: vec![Some(1)],
                    outputs: vec![2],
                    origin: "t".into(),
                },
                Instruction {
                    op: Op::Unary {
                        f: ppmoe_runtime::program::UnaryFn::Neg,
                    },
                    inputs: vec![Some(0)],
                    outputs: vec![3],
                    origin: "n".into(),
                },
            ],
            weights_file: "rank0.safetensors".into(),
            coords: [0; 3],
            gpu: vec![],
            ptx_file: None,
        };
        let mut weights = vec![("w".to_string(), Tensor::f32(vec![2], vec![1.0, 2.0]))];
        let p = remove_dead_code(p, &mut weights);
        assert_eq!(p.instructions.len(), 1);
        assert_eq!(
            p.buffers
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>(),
            ["x", "y"]
        );
        assert_eq!(p.instructions[0].inputs, vec![Some(0)]);
        assert_eq!(p.instructions[0].outputs, vec![1]);
        assert_eq!(p.outputs, vec![1]);
        assert!(weights.is_empty());
    }
}
