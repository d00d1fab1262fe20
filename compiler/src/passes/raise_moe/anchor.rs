//! A layer's anchor: its router (a top-k or arg-max over softmax or sigmoid scores, a biased
//! sigmoid with a group limit, a sparsemixer's arg-max over the logits), the logits it reads,
//! and the tokens those are a linear function of; and the router values the model returns
//! beside the layer.

use crate::core::CoreProgram;
use crate::moe::region::{backward_slice, live_ins, live_outs};
use ppmoe_runtime::program::{
    BufferId, BufferKind, Instruction, Op, Program, RouteOrder, Scoring, UnaryFn,
};
use ppmoe_runtime::Tensor;
use std::collections::{BTreeSet, HashMap, HashSet};

pub(super) struct Anchor {
    /// The router's logits [T, E].
    pub(super) logits: BufferId,
    pub(super) scoring: Vec<(Scoring, RouteOrder)>,
    pub(super) top_k: Vec<usize>,
    /// Sigmoid scores chosen with a score-correction bias (DeepSeek-V3): the bias weight, and
    /// the (n_group, topk_group) of the group limit (0, 0 without one).
    pub(super) biased: Option<(BufferId, usize, usize)>,
}

/// The buffers holding the same data as `x` under reshapes (the tokens, in every shape).
pub(super) fn reshape_family(
    p: &crate::core::CoreProgram,
    prod: &HashMap<BufferId, usize>,
    x: BufferId,
) -> HashSet<BufferId> {
    let prog = &p.program;
    let mut root = x;
    while let Some(&i) = prod.get(&root) {
        match prog.instructions[i].op {
            Op::ReshapeTo { .. } => root = prog.instructions[i].inputs[0].unwrap_or(root),
            _ => break,
        }
    }
    let mut fam = HashSet::from([root]);
    let mut grew = true;
    while grew {
        grew = false;
        for ins in &prog.instructions {
            if matches!(ins.op, Op::ReshapeTo { .. })
                && ins.inputs[0].is_some_and(|i| fam.contains(&i))
                && fam.insert(ins.outputs[0])
            {
                grew = true;
            }
        }
    }
    fam
}

/// The tokens whose linear function the logits are (through mat_mul, add of a weight, reshape).
pub(super) fn router_input(
    p: &crate::core::CoreProgram,
    prod: &HashMap<BufferId, usize>,
    logits: BufferId,
) -> Option<BufferId> {
    let prog = &p.program;
    let is_weight =
        |b: Option<BufferId>| b.is_some_and(|b| prog.buffers[b].kind == BufferKind::Weight);
    let mut cur = logits;
    for _ in 0..8 {
        let ins = &prog.instructions[*prod.get(&cur)?];
        match &ins.op {
            Op::MatMul if is_weight(ins.inputs[1]) => return ins.inputs[0],
            Op::Binary {
                f: ppmoe_runtime::program::BinaryFn::Add,
            } if is_weight(ins.inputs[1]) => cur = ins.inputs[0]?,
            Op::ReshapeTo { .. } => cur = ins.inputs[0]?,
            Op::Cast { to } if to.is_float() => cur = ins.inputs[0]?,
            _ => return None,
        }
    }
    None
}

/// The instructions of `region` that make values read outside it other than the layer's
/// output `o`, where each such value is made from the logits alone (none of them then is part
/// of the layer's work on the tokens): they are kept, the rest of the region is raised. None
/// when an escaping value depends on the tokens some other way.
pub(super) fn router_side(
    prog: &ppmoe_runtime::program::Program,
    prod: &HashMap<BufferId, usize>,
    region: &BTreeSet<usize>,
    cons: &HashMap<BufferId, Vec<usize>>,
    o: BufferId,
    logits: BufferId,
) -> Option<BTreeSet<usize>> {
    let cut: HashSet<BufferId> = [logits].into();
    let mut kept = BTreeSet::new();
    for v in live_outs(prog, region, cons)
        .into_iter()
        .filter(|&v| v != o)
    {
        let slice = backward_slice(prog, prod, v, &cut);
        if !slice.is_subset(region) || !live_ins(prog, &slice).iter().all(|&b| b == logits) {
            return None;
        }
        kept.extend(slice);
    }
    // The layer's output must not be among what is kept.
    (!kept
        .iter()
        .any(|&k| prog.instructions[k].outputs.contains(&o)))
    .then_some(kept)
}

/// DeepSeek-V3's choice: top-k over sigmoid(logits) + a score-correction bias, optionally with
/// the experts of all but the best groups masked out first (a `where`). Returns the logits and
/// (bias weight, n_group, topk_group), the groups read from the program: a reshape of the
/// biased scores to [T, G, E/G], and the top-k (its k) over the [T, G] group scores.
fn biased_sigmoid(
    p: &CoreProgram,
    prod: &HashMap<BufferId, usize>,
    weights: &HashMap<&str, &Tensor>,
    src: BufferId,
) -> Option<(BufferId, (BufferId, usize, usize))> {
    let prog = &p.program;
    let op_of = |b: BufferId| prod.get(&b).map(|&j| &prog.instructions[j]);
    // Through the group mask, if there is one: where(mask, fill, scores).
    let (scores, masked) = match op_of(src) {
        Some(ins) if ins.op == Op::Where => (ins.inputs.get(2).copied().flatten()?, true),
        _ => (src, false),
    };
    let add = op_of(scores)?;
    let Op::Binary {
        f: ppmoe_runtime::program::BinaryFn::Add,
    } = add.op
    else {
        return None;
    };
    let is_weight = |b: BufferId| weights.contains_key(prog.buffers[b].name.as_str());
    let (a, b) = (
        add.inputs.first().copied().flatten()?,
        add.inputs.get(1).copied().flatten()?,
    );
    let (sig, bias) = if is_weight(b) { (a, b) } else { (b, a) };
    if !is_weight(bias) {
        return None;
    }
    let s = op_of(sig)?;
    let Op::Unary {
        f: UnaryFn::Sigmoid,
    } = s.op
    else {
        return None;
    };
    let logits = s.inputs.first().copied().flatten()?;
    let [Some(t), Some(e)] = prog.buffers[logits].shape[..] else {
        return None;
    };
    if !masked {
        return Some((logits, (bias, 0, 0)));
    }
    // The groups: the biased scores reshaped to [T, G, E/G] ...
    let n_group = prog.instructions.iter().find_map(|ins| match &ins.op {
        Op::ReshapeTo { shape } if ins.inputs.first() == Some(&Some(scores)) => match shape[..] {
            [a, g, per] if a == t && g > 1 && g * per == e => Some(g),
            _ => None,
        },
        _ => None,
    })?;
    // ... and the top-k over the [T, G] group scores, whose k is topk_group.
    let topk_group = prog.instructions.iter().find_map(|ins| {
        let input = ins.inputs.first().copied().flatten()?;
        if prog.buffers[input].shape[..] != [Some(t), Some(n_group)] {
            return None;
        }
        top_k_of(prog, ins, weights)
    })?;
    Some((logits, (bias, n_group, topk_group)))
}

/// The k of a top-k instruction: its own (`top_k_axis`), or its k operand's constant value.
fn top_k_of(prog: &Program, ins: &Instruction, weights: &HashMap<&str, &Tensor>) -> Option<usize> {
    match ins.op {
        Op::TopKAxis { k, .. } => Some(k),
        Op::TopK { .. } => {
            let operand = ins.inputs.get(1).copied().flatten()?;
            let k = weights.get(prog.buffers[operand].name.as_str())?;
            usize::try_from(*k.to_i64().first()?).ok()
        }
        _ => None,
    }
}

pub(super) fn find_anchor(
    p: &CoreProgram,
    prod: &HashMap<BufferId, usize>,
    weights: &HashMap<&str, &Tensor>,
    i: usize,
) -> Option<Anchor> {
    let prog = &p.program;
    let ins = &prog.instructions[i];
    let mut src = ins.inputs.first().copied().flatten()?;
    // A float-to-float cast (`.float()` in the source) between scores and choice changes nothing.
    while let Some(&j) = prod.get(&src) {
        match prog.instructions[j].op {
            Op::Cast { to } if to.is_float() && prog.buffers[src].dtype.is_float() => {
                src = prog.instructions[j].inputs[0]?
            }
            _ => break,
        }
    }
    let producer = prod.get(&src).map(|&j| &prog.instructions[j].op);
    match &ins.op {
        Op::TopK { .. } | Op::TopKAxis { .. } => {
            let k = top_k_of(prog, ins, weights)?;
            if let Some((logits, biased)) = biased_sigmoid(p, prod, weights, src) {
                return Some(Anchor {
                    logits,
                    scoring: vec![(Scoring::Sigmoid, RouteOrder::SoftmaxThenTopk)],
                    top_k: vec![k],
                    biased: Some(biased),
                });
            }
            let (logits, scoring) = match producer {
                Some(Op::Softmax { log: false, .. }) => (
                    prod.get(&src)
                        .and_then(|&j| prog.instructions[j].inputs[0])?,
                    vec![(Scoring::Softmax, RouteOrder::SoftmaxThenTopk)],
                ),
                Some(Op::Unary {
                    f: UnaryFn::Sigmoid,
                }) => (
                    prod.get(&src)
                        .and_then(|&j| prog.instructions[j].inputs[0])?,
                    vec![(Scoring::Sigmoid, RouteOrder::SoftmaxThenTopk)],
                ),
                _ => (src, vec![(Scoring::Softmax, RouteOrder::TopkThenSoftmax)]),
            };
            Some(Anchor {
                logits,
                scoring,
                top_k: vec![k],
                biased: None,
            })
        }
        // GShard/DeepSpeed gating picks with arg_max over the softmax of the logits.
        Op::ArgMax { max: true, .. } => match producer {
            Some(Op::Softmax { log: false, .. }) => Some(Anchor {
                logits: prod
                    .get(&src)
                    .and_then(|&j| prog.instructions[j].inputs[0])?,
                scoring: vec![(Scoring::Softmax, RouteOrder::SoftmaxThenTopk)],
                top_k: vec![2, 1],
                biased: None,
            }),
            // PhiMoE's sparsemixer picks with arg_max straight over the router logits.
            _ if matches!(prog.buffers[src].shape[..], [Some(_), Some(_)])
                && router_input(p, prod, src).is_some() =>
            {
                Some(Anchor {
                    logits: src,
                    scoring: vec![(Scoring::Sparsemixer, RouteOrder::SoftmaxThenTopk)],
                    top_k: vec![2],
                    biased: None,
                })
            }
            _ => None,
        },
        _ => None,
    }
}
