//! `--dtype`: the weights stored in another float type. Router gate weights stay fp32: their
//! logits pick the experts, and a logit moved by bf16 rounding can flip a top-k choice and send a
//! token to another expert (Megatron's and DeepSeek's routers run in fp32 for this reason).

use crate::distribute::shard_moe::RankProgram;
use ppmoe_runtime::program::Op;
use ppmoe_runtime::DType;
use std::collections::{HashMap, HashSet};

/// The weights that are the B side of a matmul whose result, through reshapes, is a router's
/// logits.
pub fn router_weights(rp: &RankProgram) -> HashSet<String> {
    let p = &rp.program;
    let producer: HashMap<usize, usize> = p
        .instructions
        .iter()
        .enumerate()
        .flat_map(|(i, ins)| ins.outputs.iter().map(move |&o| (o, i)))
        .collect();
    let mut names = HashSet::new();
    for route in p
        .instructions
        .iter()
        .filter(|ins| matches!(ins.op, Op::MoeRoute { .. }))
    {
        let mut b = route.inputs.first().copied().flatten();
        while let Some(i) = b.and_then(|b| producer.get(&b).copied()) {
            let ins = &p.instructions[i];
            match ins.op {
                Op::ReshapeTo { .. } => b = ins.inputs.first().copied().flatten(),
                Op::MatMul => {
                    names.extend(
                        ins.inputs
                            .get(1)
                            .copied()
                            .flatten()
                            .map(|w| p.buffers[w].name.clone()),
                    );
                    break;
                }
                _ => break,
            }
        }
    }
    names
}

/// Converts every float weight but the routers' to `dt`, in the weights and in the program's
/// buffer types.
pub fn convert_weights(rp: &mut RankProgram, dt: DType) {
    let keep = router_weights(rp);
    for (name, t) in &mut rp.weights {
        if !t.dtype.is_float() || t.dtype == dt || keep.contains(name) {
            continue;
        }
        // Stored as half-precision bits: the converted weights take half the room.
        *t = match dt {
            DType::F16 | DType::BF16 => {
                ppmoe_runtime::Tensor::half(t.shape.clone(), &t.f32_values(), dt)
            }
            _ => match ppmoe_runtime::kernels::execute(&Op::Cast { to: dt }, &[Some(t)], 1) {
                Ok(mut v) => v.remove(0),
                Err(_) => continue,
            },
        };
        if let Some(b) = rp.program.buffers.iter_mut().find(|b| &b.name == name) {
            b.dtype = dt;
        }
    }
}
