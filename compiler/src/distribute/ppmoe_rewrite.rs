//! The PPMoE rewrite: where the tokens at an MoE layer's input are replicated over the
//! tensor-parallel group (they are after attention's all-reduce), the all-to-all form becomes a
//! local slice of the rows routed to this rank's experts and one all-reduce.
//!
//!   before: token_slice -> moe.dispatch -> shard.all_to_all -> moe.expert_ffn
//!           -> shard.all_to_all -> moe.combine -> shard.all_gather
//!   after:  %rows, %off, %slots = "moe.local_slice"(%x, %ids) {first_expert = t*E/tp}
//!           %o = "moe.expert_ffn"(%rows, %off, %w_in_local, %w_out_local)
//!           %p = "moe.scatter_combine"(%o, %slots, %w); %y = "shard.all_reduce"(%p)
//!
//! The routing is computed on every rank from the same replicated logits, so every rank agrees
//! on which rows each expert takes; nothing is exchanged but the partial outputs' sum.

use ppmoe_runtime::program::{BufferId, BufferKind, Op, Program};
use std::collections::{HashMap, HashSet};

/// Buffers whose value is the same on every rank of the group: model inputs, replicated
/// weights, and what is computed from them alone; token slices and expert outputs are not,
/// all-gathers and all-reduces are again.
fn replicated(
    p: &Program,
    sharded_weights: &HashSet<BufferId>,
    rank_pieces: &HashSet<BufferId>,
) -> HashSet<BufferId> {
    let mut rep: HashSet<BufferId> = p.inputs.iter().copied().collect();
    rep.extend((0..p.buffers.len()).filter(|b| {
        p.buffers[*b].kind == BufferKind::Weight
            && !sharded_weights.contains(b)
            && !rank_pieces.contains(b)
    }));
    for ins in &p.instructions {
        let all_in = ins.inputs.iter().flatten().all(|b| rep.contains(b));
        let makes_replicated = match ins.op {
            Op::AllGather { .. } | Op::AllReduce { .. } => true,
            Op::TokenSlice { .. }
            | Op::MoeExpertFfn { .. }
            | Op::AllToAll { .. }
            | Op::Recv { .. } => false,
            _ => all_in,
        };
        if makes_replicated {
            rep.extend(ins.outputs.iter().copied());
        }
    }
    rep
}

/// One layer to rewrite: the instructions it replaces (the three token slices and the chain
/// from the dispatch to the all-gather), the buffers its PPMoE form reads and makes, its
/// expert count, its `moe.expert_ffn` (an instruction index), and where it came from.
pub struct Plan {
    pub gone: Vec<usize>,
    pub x: BufferId,
    pub ids: BufferId,
    pub w: BufferId,
    pub y: BufferId,
    pub experts: usize,
    pub ffn: usize,
    /// The `shard.all_gather` whose result the layer's PPMoE form makes.
    pub gather: usize,
    pub origin: String,
}

/// The layers `wanted` picks whose all-to-all form can become PPMoE's (with their ordinals),
/// and a note for each of the others.
pub fn plan_layers(
    p: &Program,
    wanted: &dyn Fn(usize) -> bool,
    rank_pieces: &HashSet<BufferId>,
) -> (Vec<(usize, Plan)>, Vec<String>) {
    let producer: HashMap<BufferId, usize> = p
        .instructions
        .iter()
        .enumerate()
        .flat_map(|(i, ins)| ins.outputs.iter().map(move |&o| (o, i)))
        .collect();
    let sharded: HashSet<BufferId> = p
        .instructions
        .iter()
        .filter(|i| matches!(i.op, Op::MoeExpertFfn { .. }))
        .flat_map(|i| i.inputs[2..].iter().flatten().copied())
        .collect();
    let rep = replicated(p, &sharded, rank_pieces);
    let (mut plans, mut notes) = (Vec::new(), Vec::new());
    let dispatches = p
        .instructions
        .iter()
        .enumerate()
        .filter(|(_, ins)| matches!(ins.op, Op::MoeDispatch { .. }));
    for (layer, (i, _)) in dispatches.enumerate() {
        if !wanted(layer) {
            continue;
        }
        match plan_layer(p, i, &producer, &rep) {
            Ok(plan) => plans.push((layer, plan)),
            Err(note) => notes.push(note),
        }
    }
    (plans, notes)
}

/// The plan for the layer whose dispatch is instruction `i`, or why it keeps its all-to-all
/// form: its chain is not the one the sharded stage writes, or its tokens or routing are not
/// replicated (`rep`) over the group.
fn plan_layer(
    p: &Program,
    i: usize,
    producer: &HashMap<BufferId, usize>,
    rep: &HashSet<BufferId>,
) -> Result<Plan, String> {
    let ins = &p.instructions[i];
    let not_ours = || {
        format!("layer at \"{}\": kept all-to-all: its dispatch is not in the form the sharded stage writes", ins.origin)
    };
    let Op::MoeDispatch { num_experts, .. } = ins.op else {
        return Err(not_ours());
    };
    // The chain the all-to-all form wrote: dispatch, all_to_all, reshape, expert_ffn,
    // reshape, all_to_all, combine, all_gather; the three token slices before it.
    let chain = p.instructions.get(i..i + 8).ok_or_else(not_ours)?;
    let (Op::MoeExpertFfn { .. }, Op::MoeCombine { .. }, Op::AllGather { .. }) =
        (&chain[3].op, &chain[6].op, &chain[7].op)
    else {
        return Err(not_ours());
    };
    let slice_src = |b: Option<BufferId>| -> Option<(usize, BufferId)> {
        let j = *producer.get(&b?)?;
        matches!(p.instructions[j].op, Op::TokenSlice { .. }).then_some(())?;
        Some((j, p.instructions[j].inputs[0]?))
    };
    let (Some((sx, x)), Some((si, ids)), Some((sw, w))) = (
        slice_src(ins.inputs[0]),
        slice_src(ins.inputs[1]),
        slice_src(chain[6].inputs[1]),
    ) else {
        return Err(not_ours());
    };
    if !(rep.contains(&x) && rep.contains(&ids) && rep.contains(&w)) {
        return Err(format!(
            "layer at \"{}\": kept all-to-all: the tokens or the routing at its input ('{}') are not replicated over the TP group",
            ins.origin, p.buffers[x].name
        ));
    }
    let mut gone: Vec<usize> = (i..i + 8).collect();
    gone.extend([sx, si, sw]);
    Ok(Plan {
        gone,
        x,
        ids,
        w,
        y: chain[7].outputs[0],
        experts: num_experts,
        ffn: i + 3,
        gather: i + 7,
        origin: ins.origin.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distribute::shard_moe::{shard_moe, RankProgram};
    use ppmoe_runtime::program::{
        Activation, Buffer, ExpertLayout, Instruction, RouteOrder, Scoring,
    };
    use ppmoe_runtime::DType;
    use ppmoe_runtime::Tensor;

    fn buf(name: &str, dtype: DType, shape: &[usize], kind: BufferKind) -> Buffer {
        Buffer {
            name: name.into(),
            dtype,
            shape: shape.iter().map(|&d| Some(d)).collect(),
            kind,
        }
    }

    /// One MoE layer over tokens that are either the model's input (replicated over the group)
    /// or a token slice of it (split over the group).
    fn layer(tokens_split: bool) -> RankProgram {
        let mut buffers = vec![
            buf("xx", DType::F32, &[8, 4], BufferKind::Input),
            buf("x", DType::F32, &[8, 4], BufferKind::Temp),
            buf("logits", DType::F32, &[8, 2], BufferKind::Input),
            buf("w", DType::F32, &[8, 1], BufferKind::Temp),
            buf("ids", DType::I64, &[8, 1], BufferKind::Temp),
            buf("w_in", DType::F32, &[2, 4, 3], BufferKind::Weight),
            buf("w_out", DType::F32, &[2, 3, 4], BufferKind::Weight),
            buf("y", DType::F32, &[8, 4], BufferKind::Output),
        ];
        let first = if tokens_split {
            buffers[0].shape[0] = Some(16);
            Instruction {
                op: Op::TokenSlice {
                    axis: 0,
                    index: 0,
                    parts: 2,
                },
                inputs: vec![Some(0)],
                outputs: vec![1],
                origin: "slice".into(),
            }
        } else {
            Instruction {
                op: Op::ReshapeTo { shape: vec![8, 4] },
                inputs: vec![Some(0)],
                outputs: vec![1],
                origin: "copy".into(),
            }
        };
        let route = Op::MoeRoute {
            top_k: 1,
            scoring: Scoring::Softmax,
            order: RouteOrder::SoftmaxThenTopk,
            renormalize: true,
            n_group: 0,
            topk_group: 0,
            routed_scaling_factor: 1.0,
            capacity: 0,
            mask_threshold: 0.0,
        };
        let experts = Op::MoeExperts {
            activation: Activation::Relu,
            alpha: 1.0,
            beta: 0.0,
            limit: None,
            layout: ExpertLayout::InOut,
        };
        let program = Program {
            rank: 0,
            buffers,
            inputs: vec![0, 2],
            outputs: vec![7],
            instructions: vec![
                first,
                Instruction {
                    op: route,
                    inputs: vec![Some(2)],
                    outputs: vec![3, 4],
                    origin: "router".into(),
                },
                Instruction {
                    op: experts,
                    inputs: vec![Some(1), Some(3), Some(4), Some(5), Some(6), None, None],
                    outputs: vec![7],
                    origin: "experts".into(),
                },
            ],
            weights_file: String::new(),
            coords: [0; 3],
            gpu: vec![],
            ptx_file: None,
        };
        let weights = vec![
            ("w_in".into(), Tensor::f32(vec![2, 4, 3], vec![0.1; 24])),
            ("w_out".into(), Tensor::f32(vec![2, 3, 4], vec![0.2; 24])),
        ];
        RankProgram { program, weights }
    }

    fn count(rp: &RankProgram, f: impl Fn(&Op) -> bool) -> usize {
        rp.program.instructions.iter().filter(|i| f(&i.op)).count()
    }

    #[test]
    fn a_layer_over_replicated_tokens_is_planned_with_its_whole_chain() {
        let rp = shard_moe(
            std::path::Path::new("t.onnx"),
            &layer(false),
            (2, 1),
            &mut Default::default(),
            &mut |_, _, _| Ok(()),
        )
        .unwrap();
        let p = &rp.program;
        assert_eq!(count(&rp, |o| matches!(o, Op::AllToAll { .. })), 2);
        let (plans, notes) = plan_layers(p, &|_| true, &HashSet::new());
        assert!(notes.is_empty(), "{notes:?}");
        let [(0, plan)] = plans.as_slice() else {
            panic!("one plan for layer 0");
        };
        // The chain (dispatch .. all-gather) and its three token slices go.
        let gone: Vec<&Op> = plan.gone.iter().map(|&i| &p.instructions[i].op).collect();
        assert_eq!(gone.len(), 11);
        let all_to_alls = gone.iter().filter(|o| matches!(o, Op::AllToAll { .. }));
        assert_eq!(all_to_alls.count(), 2);
        let slices = gone.iter().filter(|o| matches!(o, Op::TokenSlice { .. }));
        assert_eq!(slices.count(), 3);
        assert!(matches!(
            p.instructions[plan.ffn].op,
            Op::MoeExpertFfn { .. }
        ));
        assert!(matches!(
            p.instructions[plan.gather].op,
            Op::AllGather { .. }
        ));
        assert_eq!((plan.experts, p.buffers[plan.x].name.as_str()), (2, "x"));
        let none = plan_layers(p, &|_| false, &HashSet::new());
        assert!(
            none.0.is_empty() && none.1.is_empty(),
            "a layer not wanted is left"
        );
    }

    #[test]
    fn a_layer_over_split_tokens_keeps_all_to_all_and_says_why() {
        let rp = shard_moe(
            std::path::Path::new("t.onnx"),
            &layer(true),
            (2, 0),
            &mut Default::default(),
            &mut |_, _, _| Ok(()),
        )
        .unwrap();
        let (plans, notes) = plan_layers(&rp.program, &|_| true, &HashSet::new());
        assert!(plans.is_empty());
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].contains("layer at \"experts\": kept all-to-all")
                && notes[0].contains("not replicated over the TP group"),
            "{notes:?}"
        );
    }
}
