//! Integer constants compared with each other, held as f32 where that is exact. The causal and
//! padding masks of exported LMs compare position ranges: i64 constants made from the input's
//! shape, which grow with the tokens (a [B, 1, S, S] mask folded at compile time would grow with
//! their square), so the comparisons run with every forward. The GPU holds floats and booleans,
//! not integers, so these comparisons would run on the host; comparing f32 copies of the
//! constants gives the same booleans while every value is an integer of at most 2^24 in
//! magnitude, and a float comparison is a generated kernel. Both backends run the rewritten
//! program, so they stay equal.

use crate::distribute::shard_moe::RankProgram;
use ppmoe_runtime::program::{exact_in_f32, BinaryFn, BufferKind, Op, Program};
use ppmoe_runtime::{DType, Tensor};
use std::collections::{HashMap, HashSet};

fn is_comparison(op: &Op) -> bool {
    matches!(
        op,
        Op::Binary {
            f: BinaryFn::Equal
                | BinaryFn::Less
                | BinaryFn::Greater
                | BinaryFn::LessOrEqual
                | BinaryFn::GreaterOrEqual
        }
    )
}

/// Converts to f32 the integer constants whose every use is a comparison of such constants, and
/// whose values f32 holds exactly; returns how many were converted.
pub fn compare_as_f32(rp: &mut RankProgram) -> usize {
    let mut chosen = exact_int_weights(rp);
    let p = &rp.program;
    // A constant qualifies when all its uses are comparisons whose operands all qualify;
    // dropping one can disqualify others, so repeat until nothing changes.
    loop {
        let before = chosen.len();
        for ins in &p.instructions {
            let operands: Vec<usize> = ins.inputs.iter().flatten().copied().collect();
            let keeps = is_comparison(&ins.op) && operands.iter().all(|b| chosen.contains(b));
            if !keeps {
                for b in &operands {
                    chosen.remove(b);
                }
            }
        }
        if chosen.len() == before {
            break;
        }
    }
    convert(rp, &chosen)
}

/// The integer weight buffers whose values are all exact in f32.
fn exact_int_weights(rp: &RankProgram) -> HashSet<usize> {
    let p: &Program = &rp.program;
    let by_name: HashMap<&str, &Tensor> = rp.weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
    p.buffers
        .iter()
        .enumerate()
        .filter(|(_, b)| b.kind == BufferKind::Weight && !b.dtype.on_device_as_f32())
        .filter(|(_, b)| {
            by_name.get(b.name.as_str()).is_some_and(|t| {
                !t.dtype.on_device_as_f32() && t.to_i64().iter().all(|&v| exact_in_f32(v))
            })
        })
        .map(|(i, _)| i)
        .collect()
}

fn convert(rp: &mut RankProgram, chosen: &HashSet<usize>) -> usize {
    let names: HashSet<String> = chosen
        .iter()
        .map(|&b| rp.program.buffers[b].name.clone())
        .collect();
    for &b in chosen {
        rp.program.buffers[b].dtype = DType::F32;
    }
    for (name, t) in &mut rp.weights {
        if names.contains(name) {
            let v = t.to_i64().iter().map(|&x| x as f32).collect();
            *t = Tensor::f32(t.shape.clone(), v);
        }
    }
    chosen.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppmoe_runtime::program::{Buffer, Instruction};

    fn buf(name: &str, dtype: DType, kind: BufferKind) -> Buffer {
        Buffer {
            name: name.into(),
            dtype,
            shape: vec![Some(3)],
            kind,
        }
    }

    fn compare(f: BinaryFn, a: usize, b: usize, out: usize) -> Instruction {
        Instruction {
            op: Op::Binary { f },
            inputs: vec![Some(a), Some(b)],
            outputs: vec![out],
            origin: String::new(),
        }
    }

    /// pos <= lim and pos == idx, constants all; with `with_big`, also big > pos, where big
    /// (2^25 + 1) is an integer f32 cannot hold.
    fn program(with_big: bool) -> RankProgram {
        use BufferKind::*;
        let mut buffers = vec![
            buf("pos", DType::I64, Weight),
            buf("lim", DType::I64, Weight),
            buf("idx", DType::I64, Weight),
            buf("le", DType::Bool, Temp),
            buf("eq", DType::Bool, Output),
        ];
        let mut instructions = vec![
            compare(BinaryFn::LessOrEqual, 0, 1, 3),
            compare(BinaryFn::Equal, 0, 2, 4),
        ];
        let mut weights = vec![
            ("pos".to_string(), Tensor::i64(vec![3], vec![0, 1, 2])),
            ("lim".to_string(), Tensor::i64(vec![3], vec![2, 1, 0])),
            ("idx".to_string(), Tensor::i64(vec![3], vec![0, 5, 2])),
        ];
        if with_big {
            buffers.push(buf("big", DType::I64, Weight));
            buffers.push(buf("gt", DType::Bool, Output));
            instructions.push(compare(BinaryFn::Greater, 5, 0, 6));
            weights.push((
                "big".to_string(),
                Tensor::i64(vec![3], vec![(1 << 25) + 1; 3]),
            ));
        }
        RankProgram {
            program: Program {
                rank: 0,
                outputs: (0..buffers.len())
                    .filter(|&b| buffers[b].kind == Output)
                    .collect(),
                buffers,
                inputs: vec![],
                instructions,
                weights_file: String::new(),
                coords: [0; 3],
                gpu: vec![],
                ptx_file: None,
            },
            weights,
        }
    }

    fn run(rp: &RankProgram) -> Vec<Vec<i64>> {
        let named = |b: usize| {
            let name = &rp.program.buffers[b].name;
            rp.weights
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
        };
        rp.program
            .instructions
            .iter()
            .map(|ins| {
                let args: Vec<Option<Tensor>> =
                    ins.inputs.iter().map(|b| named(b.unwrap())).collect();
                let refs: Vec<Option<&Tensor>> = args.iter().map(Option::as_ref).collect();
                ppmoe_runtime::kernels::execute(&ins.op, &refs, 1).unwrap()[0].to_i64()
            })
            .collect()
    }

    #[test]
    fn exact_integer_constants_compared_with_each_other_become_f32() {
        let mut rp = program(false);
        let before = run(&rp);
        assert_eq!(compare_as_f32(&mut rp), 3);
        assert!(rp.program.buffers[..3]
            .iter()
            .all(|b| b.dtype == DType::F32));
        assert!(rp.weights.iter().all(|(_, t)| t.dtype == DType::F32));
        assert_eq!(run(&rp), before, "the same booleans");
    }

    #[test]
    fn a_value_f32_cannot_hold_keeps_every_constant_it_is_compared_with() {
        let mut rp = program(true);
        // big stays i64, so pos (compared with it) does, so do lim and idx (compared
        // with pos): nothing converted.
        assert_eq!(compare_as_f32(&mut rp), 0);
        assert!(rp.weights.iter().all(|(_, t)| t.dtype == DType::I64));
    }
}
