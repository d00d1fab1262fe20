//! Where the `pipelined` stage cuts a program into pp stages: at layer boundaries, balanced by
//! a per-instruction cost (FLOPs, and the bytes of the weights it reads). The pass over the
//! ops that cuts there and sends what crosses a cut is `passes::pipeline_split`.
//!
//! A boundary is a point after an MoE layer where the fewest values are live: in a plain LM one
//! activation (the residual stream); in a decoder with a KV cache also the caches' inputs that
//! later layers read and outputs that earlier ones made (outputs travel to the last stage). A
//! model with L MoE layers has at most L stages.

use ppmoe_runtime::program::{BufferId, BufferKind, Instruction, Op, Program};

/// A cost for balancing: multiply-adds of matrix work, element counts of the rest, plus the
/// bytes of the weights read (what a stage must hold).
fn cost(p: &Program, ins: &Instruction) -> f64 {
    let numel = |b: BufferId| {
        p.buffers[b]
            .shape
            .iter()
            .map(|d| d.unwrap_or(1) as f64)
            .product::<f64>()
    };
    let flops = match ins.op {
        Op::MatMul => {
            let (a, b) = (
                ins.inputs[0].map_or(0.0, numel),
                ins.inputs[1]
                    .map(|b| {
                        *p.buffers[b]
                            .shape
                            .last()
                            .and_then(|d| d.as_ref())
                            .unwrap_or(&1) as f64
                    })
                    .unwrap_or(1.0),
            );
            2.0 * a * b
        }
        Op::MoeExperts { .. } | Op::MoeExpertFfn { .. } => {
            let w: f64 = ins.inputs[3..5].iter().flatten().map(|&b| numel(b)).sum();
            let rows = ins.inputs[0].map_or(0.0, numel)
                / p.buffers[ins.inputs[0].unwrap_or(0)]
                    .shape
                    .last()
                    .and_then(|d| *d)
                    .unwrap_or(1) as f64;
            2.0 * rows * w / p.buffers[ins.inputs[3].unwrap_or(0)].shape[0].unwrap_or(1) as f64
        }
        _ => ins.outputs.iter().map(|&o| numel(o)).sum(),
    };
    let weight_bytes: f64 = ins
        .inputs
        .iter()
        .flatten()
        .filter(|&&b| p.buffers[b].kind == BufferKind::Weight)
        .map(|&b| numel(b) * 4.0)
        .sum();
    flops + weight_bytes
}

/// Which instructions end an MoE layer, in any of its forms: `moe.experts`; PPMoE's all-reduce
/// of a `moe.scatter_combine`; the all-to-all form's all-gather of a `moe.combine` (either
/// collective possibly through a cast of the combine, as a narrowed one is). Other collectives
/// (a dense row-split's all-reduce, an all-gather of routing logits) do not end a layer: counted
/// as ends, they would let a one-layer block be cut into two stages.
fn moe_layer_ends(p: &Program) -> Vec<bool> {
    // The instruction that made each buffer, seen through casts.
    let mut source: Vec<Option<usize>> = vec![None; p.buffers.len()];
    let mut ends = Vec::with_capacity(p.instructions.len());
    for (i, ins) in p.instructions.iter().enumerate() {
        let combined = |b: BufferId| {
            source[b].is_some_and(|s| {
                matches!(
                    p.instructions[s].op,
                    Op::MoeScatterCombine { .. } | Op::MoeCombine { .. }
                )
            })
        };
        ends.push(match ins.op {
            Op::MoeExperts { .. } => true,
            Op::AllReduce { .. } | Op::AllGather { .. } => {
                ins.inputs.first().copied().flatten().is_some_and(combined)
            }
            _ => false,
        });
        let made_by = match (&ins.op, ins.inputs.first()) {
            (Op::Cast { .. }, Some(&Some(from))) => source[from],
            _ => Some(i),
        };
        for &o in &ins.outputs {
            source[o] = made_by;
        }
    }
    ends
}

/// Points (instruction indices) where a new stage may start: one after each MoE layer but the
/// last, where the fewest non-weight values are live.
pub fn boundaries(p: &Program) -> Vec<usize> {
    let n = p.instructions.len();
    let mut def: Vec<Option<usize>> = vec![None; p.buffers.len()];
    for &b in &p.inputs {
        def[b] = Some(0);
    }
    let mut last_use = vec![0usize; p.buffers.len()];
    for (i, ins) in p.instructions.iter().enumerate() {
        for &o in &ins.outputs {
            def[o] = Some(i + 1);
        }
        for &b in ins.inputs.iter().flatten() {
            last_use[b] = last_use[b].max(i);
        }
    }
    for &o in &p.outputs {
        last_use[o] = n;
    }
    // crossing[c]: values made before cut c and read at or after it.
    let mut delta = vec![0i64; n + 2];
    for (b, d) in def.iter().enumerate() {
        if let Some(d) = *d {
            if p.buffers[b].kind != BufferKind::Weight && last_use[b] >= d {
                delta[d] += 1;
                delta[last_use[b] + 1] -= 1;
            }
        }
    }
    let crossing: Vec<i64> = delta
        .iter()
        .take(n)
        .scan(0i64, |acc, d| {
            *acc += d;
            Some(*acc)
        })
        .collect();
    // Between the end of one MoE layer and the end of the next, the first cut where fewest
    // values cross (one, the hidden state, in a plain LM; a decoder with a KV cache also
    // passes on the caches' inputs and outputs and its residual sum).
    let ends = moe_layer_ends(p);
    let layer_ends: Vec<usize> = (1..=n).filter(|&c| ends[c - 1]).collect();
    let mut out = Vec::new();
    for (k, &start) in layer_ends.iter().enumerate() {
        let end = layer_ends.get(k + 1).copied().unwrap_or(n);
        // (Layer ends are 1..=n, so every candidate cut is past the first instruction.)
        let best = (start..end)
            .filter(|&c| crossing[c] > 0)
            .min_by_key(|&c| crossing[c]);
        if let Some(c) = best {
            out.push(c);
        }
    }
    out
}

/// Chooses pp - 1 boundaries that minimise the costliest stage.
pub fn choose_cuts(p: &Program, pp: usize) -> Result<Vec<usize>, String> {
    if pp == 1 {
        return Ok(vec![]);
    }
    let layers = moe_layer_ends(p).into_iter().filter(|&end| end).count();
    if pp > layers {
        return Err(format!("{pp} pipeline stages for a model of {layers} MoE layer(s): at most one stage per layer"));
    }
    let b = boundaries(p);
    if b.len() + 1 < pp {
        return Err(format!(
            "{pp} pipeline stages need {} boundaries after MoE layers; the model has {}",
            pp - 1,
            b.len()
        ));
    }
    let prefix: Vec<f64> = std::iter::once(0.0)
        .chain(p.instructions.iter().scan(0.0, |acc, ins| {
            *acc += cost(p, ins);
            Some(*acc)
        }))
        .collect();
    let total = *prefix.last().unwrap_or(&0.0);
    // Greedy on the ideal split points, each snapped to the nearest boundary still free.
    let mut cuts = Vec::new();
    let mut avail: Vec<usize> = b.clone();
    for s in 1..pp {
        let target = total * s as f64 / pp as f64;
        let (idx, &best) = avail
            .iter()
            .enumerate()
            .filter(|(_, &c)| cuts.last().is_none_or(|&l| c > l))
            .min_by(|(_, &x), (_, &y)| {
                (prefix[x] - target)
                    .abs()
                    .total_cmp(&(prefix[y] - target).abs())
            })
            .ok_or("no boundary left")?;
        cuts.push(best);
        avail.remove(idx);
    }
    cuts.sort();
    Ok(cuts)
}
