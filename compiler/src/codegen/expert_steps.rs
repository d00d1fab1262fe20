//! The expert work of a distributed MoE layer as one GPU step each, its other instructions
//! planned as `Fused` into it: PPMoE's local_slice -> expert_ffn -> scatter_combine
//! (`LocalExperts`), and all-to-all's token slices -> dispatch -> all_to_all -> expert_ffn ->
//! all_to_all -> combine (`AllToAllExperts`: only the routed rows travel, in one ragged
//! exchange each way, where the dispatched form sends every expert's bucket at full capacity).

use super::experts_kernels::{experts_kernels, ExpertsOperands, Ffn};
use super::kernel_gen::{dyn_kernel, static_shape, Lowered};
use super::template::specialise;
use ppmoe_runtime::program::{Instruction, Op, Program};
use std::collections::HashMap;

const EXPERT_BIAS: &str = include_str!("templates/expert_bias.mlir");

/// Per instruction fused or made a step, how it runs; the steps' kernels appended to `funcs`.
pub(super) fn plan(p: &Program, funcs: &mut String) -> HashMap<usize, Lowered> {
    let mut fused = HashMap::new();
    for chain in local_expert_chains(p) {
        if let Some(step) = local_experts(p, chain, funcs) {
            let (slice, ffn, combine) = chain;
            fused.insert(slice, Lowered::Fused { into: combine });
            fused.insert(ffn, Lowered::Fused { into: combine });
            if let Lowered::LocalExperts {
                reduce: Some(r), ..
            } = step
            {
                fused.insert(r, Lowered::ReducedBy { step: combine });
            }
            fused.insert(combine, step);
        }
    }
    for chain in alltoall_chains(p) {
        if let Some(step) = alltoall_experts(p, &chain, funcs) {
            for &m in &chain.members {
                fused.insert(
                    m,
                    Lowered::Fused {
                        into: chain.combine,
                    },
                );
            }
            fused.insert(chain.combine, step);
        }
    }
    fused
}

/// The instructions that read buffer `b`.
fn readers(p: &Program, b: usize) -> Vec<usize> {
    p.instructions
        .iter()
        .enumerate()
        .filter(|(_, ins)| ins.inputs.contains(&Some(b)))
        .map(|(i, _)| i)
        .collect()
}

/// The one instruction that reads `b`, where nothing else does and it is no program output.
fn only_reader(p: &Program, b: usize) -> Option<usize> {
    match readers(p, b).as_slice() {
        &[r] if !p.outputs.contains(&b) => Some(r),
        _ => None,
    }
}

/// The instruction that makes buffer `b`.
fn producer(p: &Program, b: usize) -> Option<usize> {
    p.instructions
        .iter()
        .position(|ins| ins.outputs.contains(&b))
}

fn operand(ins: &Instruction, k: usize) -> Option<usize> {
    ins.inputs.get(k).copied().flatten()
}

/// PPMoE's local_slice -> expert_ffn -> scatter_combine chains that run as one `LocalExperts`
/// step: (slice, ffn, combine) instruction indices, where the chain's intermediate results
/// (rows, offsets, slots, expert outputs) are read by nothing else.
fn local_expert_chains(p: &Program) -> Vec<(usize, usize, usize)> {
    let mut chains = Vec::new();
    for (i, ins) in p.instructions.iter().enumerate() {
        let (Op::MoeLocalSlice { .. }, &[rows, offsets, slots]) = (&ins.op, ins.outputs.as_slice())
        else {
            continue;
        };
        let only = |b: usize| only_reader(p, b);
        let (Some(ffn), Some(ffn2), Some(combine)) = (only(rows), only(offsets), only(slots))
        else {
            continue;
        };
        let (f, c) = (&p.instructions[ffn], &p.instructions[combine]);
        let chained = ffn == ffn2
            && i < ffn
            && ffn < combine
            && matches!(f.op, Op::MoeExpertFfn { .. })
            && matches!(c.op, Op::MoeScatterCombine { .. })
            && f.inputs.first() == Some(&Some(rows))
            && f.inputs.get(1) == Some(&Some(offsets))
            && c.inputs.get(1) == Some(&Some(slots))
            && f.outputs.len() == 1
            && c.inputs.first() == Some(&Some(f.outputs[0]))
            && only(f.outputs[0]) == Some(combine);
        if chained {
            chains.push((i, ffn, combine));
        }
    }
    chains
}

/// The kernels of one PPMoE chain, with the step that runs it.
fn local_experts(
    p: &Program,
    (slice, ffn, combine): (usize, usize, usize),
    funcs: &mut String,
) -> Option<Lowered> {
    let (s, f, c) = (
        &p.instructions[slice],
        &p.instructions[ffn],
        &p.instructions[combine],
    );
    let operand =
        |ins: &ppmoe_runtime::program::Instruction, k: usize| ins.inputs.get(k).copied().flatten();
    let o = ExpertsOperands {
        x: operand(s, 0)?,
        weights: operand(c, 2)?,
        w_in: operand(f, 2)?,
        w_out: operand(f, 3)?,
        ids: operand(s, 1),
        b_in: operand(f, 4),
        b_out: operand(f, 5),
        y_bits: false,
        local: true,
    };
    let prefix = format!("k{combine}_local_experts");
    let (text, bf16) = experts_kernels(p, &Ffn::of(&f.op)?, &o, &prefix)?;
    funcs.push_str(&text);
    // The all-reduce of the combined sum, where nothing else reads the sum.
    let reduce = c
        .outputs
        .first()
        .and_then(|&sum| only_reader(p, sum))
        .filter(|&r| matches!(p.instructions[r].op, Op::AllReduce { .. }));
    Some(Lowered::LocalExperts {
        prefix,
        bf16,
        slice,
        ffn,
        reduce,
    })
}

/// One all-to-all MoE layer's instructions, from the token slices to the combine.
pub(super) struct AllToAllChain {
    combine: usize,
    dispatch: usize,
    /// The all_to_all that sends the dispatched rows (its group is the step's).
    exchange: usize,
    ffn: usize,
    /// The token slices of the tokens, the routing weights and the ids, when they are read only
    /// here (the step then reads the whole tensors at the slice's offset); else empty.
    slices: Vec<usize>,
    /// Every instruction fused into the step.
    members: Vec<usize>,
}

/// From buffer `b` back through reshapes to the instruction that makes its data: that
/// instruction and the reshapes passed.
fn through_reshapes(p: &Program, mut b: usize) -> Option<(usize, Vec<usize>)> {
    let mut passed = Vec::new();
    loop {
        let i = producer(p, b)?;
        match p.instructions[i].op {
            Op::ReshapeTo { .. } => {
                passed.push(i);
                b = operand(&p.instructions[i], 0)?;
            }
            _ => return Some((i, passed)),
        }
    }
}

fn alltoall_chains(p: &Program) -> Vec<AllToAllChain> {
    p.instructions
        .iter()
        .enumerate()
        .filter(|(_, ins)| matches!(ins.op, Op::MoeCombine { .. }))
        .filter_map(|(c, _)| alltoall_chain(p, c))
        .collect()
}

fn alltoall_chain(p: &Program, c: usize) -> Option<AllToAllChain> {
    let ins = |i: usize| &p.instructions[i];
    let comb = ins(c);
    let (back, ids_l) = (operand(comb, 0)?, operand(comb, 2)?);
    let (a2, r2) = through_reshapes(p, back)?;
    let (ffn, r1) = through_reshapes(p, operand(ins(a2), 0)?)?;
    let (a1, r0) = through_reshapes(p, operand(ins(ffn), 0)?)?;
    let (d, rd) = through_reshapes(p, operand(ins(a1), 0)?)?;
    let shapes_ok = match (&ins(a1).op, &ins(a2).op, &ins(ffn).op, &ins(d).op) {
        (
            Op::AllToAll { group: g1, .. },
            Op::AllToAll { group: g2, .. },
            Op::MoeExpertFfn { .. },
            Op::MoeDispatch { .. },
        ) => g1 == g2 && rd.is_empty() && operand(ins(d), 1) == Some(ids_l),
        _ => false,
    };
    if !shapes_ok {
        return None;
    }
    let mut members: Vec<usize> = [d, a1, ffn, a2]
        .into_iter()
        .chain(r0)
        .chain(r1)
        .chain(r2)
        .collect();
    // Everything the members make is read by members (or the combine) alone.
    let closed = |members: &[usize]| {
        members.iter().all(|&m| {
            m < c
                && ins(m).outputs.iter().all(|&o| {
                    !p.outputs.contains(&o)
                        && readers(p, o).iter().all(|r| *r == c || members.contains(r))
                })
        })
    };
    if !closed(&members) {
        return None;
    }
    // The token slices, fused where all three are slices of one piece read only here.
    let slice_of = |b: usize| {
        let i = producer(p, b)?;
        match ins(i).op {
            Op::TokenSlice {
                axis: 0,
                index,
                parts,
            } => Some((i, index, parts)),
            _ => None,
        }
    };
    let pieces = [operand(ins(d), 0)?, operand(comb, 1)?, ids_l].map(slice_of);
    let mut slices = Vec::new();
    if let [Some(x), Some(w), Some(i)] = pieces {
        let with: Vec<usize> = members.iter().copied().chain([x.0, w.0, i.0]).collect();
        if (x.1, x.2) == (w.1, w.2) && (x.1, x.2) == (i.1, i.2) && closed(&with) {
            slices = vec![x.0, w.0, i.0];
            members = with;
        }
    }
    members.sort_unstable();
    Some(AllToAllChain {
        combine: c,
        dispatch: d,
        exchange: a1,
        ffn,
        slices,
        members,
    })
}

/// The kernels of one all-to-all chain (those of `Experts`, plus the expert-side output bias
/// where the FFN has one), with the step that runs it.
fn alltoall_experts(p: &Program, chain: &AllToAllChain, funcs: &mut String) -> Option<Lowered> {
    let (d, f, c) = (
        &p.instructions[chain.dispatch],
        &p.instructions[chain.ffn],
        &p.instructions[chain.combine],
    );
    let o = ExpertsOperands {
        x: operand(d, 0)?,
        weights: operand(c, 1)?,
        w_in: operand(f, 2)?,
        w_out: operand(f, 3)?,
        // The rows travel between ranks: grouped on the host.
        ids: None,
        b_in: operand(f, 4),
        b_out: operand(f, 5),
        y_bits: false,
        local: false,
    };
    let prefix = format!("k{}_alltoall_experts", chain.combine);
    let (text, bf16) = experts_kernels(p, &Ffn::of(&f.op)?, &o, &prefix)?;
    funcs.push_str(&text);
    if operand(f, 5).is_some() {
        let h = *static_shape(&p.buffers[o.x])?.last()?;
        funcs.push_str(&bias_rows_kernel(&format!("{prefix}_bias_out"), h, bf16));
    }
    Some(Lowered::AllToAllExperts {
        prefix,
        bf16,
        dispatch: chain.dispatch,
        exchange: chain.exchange,
        ffn: chain.ffn,
        slices: chain.slices.clone(),
        members: chain.members.clone(),
    })
}

/// `out[r, c] += bias[rexp[r], c]` over rows of width `h`: the output bias of each row's
/// expert, added on the rank that holds the expert, before the rows go back.
fn bias_rows_kernel(name: &str, h: usize, bf16: bool) -> String {
    let mid = if bf16 { "bf16" } else { "f32" };
    let (load, store) = if bf16 {
        (
            "        %vb = memref.load %out[%i] : memref<?xbf16>\n        %v = arith.extf %vb : bf16 to f32\n",
            "        %sb = arith.truncf %s : f32 to bf16\n        memref.store %sb, %out[%i] : memref<?xbf16>\n",
        )
    } else {
        (
            "        %v = memref.load %out[%i] : memref<?xf32>\n",
            "        memref.store %s, %out[%i] : memref<?xf32>\n",
        )
    };
    let body = specialise(
        EXPERT_BIAS,
        &[("h", &h), ("load", &load), ("store", &store)],
    );
    dyn_kernel(
        name,
        &[
            &format!("%out: memref<?x{mid}>"),
            "%bias: memref<?xf32>",
            "%rexp: memref<?xi32>",
            "%rows: index",
        ],
        &format!(
            "      %hh = arith.constant {h} : index\n      %n = arith.muli %rows, %hh : index\n"
        ),
        &body,
    )
}
