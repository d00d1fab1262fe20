//! Row kernels with the pointwise chains around them as one kernel. An exported attention adds
//! its mask to the scores just before the softmax and guards the probabilities against NaN
//! just after it (sdpa's decomposition: `where(isnan(p), 0, p)`); each is a pass over
//! [batch, heads, S, S], as large as the softmax's own. An RMS norm squares its input just
//! before the mean over the last axis. Fused, the chain before is evaluated where the softmax
//! or reduction reads its input, and (softmax) the chain after where it writes its result: the
//! input is read once and the result written once. The numbers are the separate kernels' to
//! the bit: the same expressions over the same f32 values.

use super::kernel_gen::{
    memref, prologue, reduce_rows_with, softmax_rows_with, static_shape, WARP,
};
use super::pointwise::{emit_chain, read_counts, Operands, Scalar};
use ppmoe_runtime::program::{Op, Program, ReduceFn};
use ppmoe_runtime::Tensor;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// A softmax or a reduction over the last axis (`row`) and the chains (indices into the
/// program's chains) it takes: the one whose result only it reads, and (a softmax) the one
/// that alone reads its result.
pub(super) struct Fusion {
    pub before: Option<usize>,
    pub row: usize,
    pub after: Option<usize>,
}

/// The reduction a last-axis `Reduce` instruction is, where a row kernel does it: sum, mean,
/// max or min over the last axis alone (its axes a constant).
fn last_axis_reduce(
    p: &Program,
    i: usize,
    constant: &dyn Fn(Option<usize>) -> Option<Tensor>,
) -> Option<ReduceFn> {
    let ins = &p.instructions[i];
    let xb = ins.inputs.first().copied().flatten()?;
    let floats = [xb, *ins.outputs.first()?]
        .iter()
        .all(|&b| p.buffers[b].dtype.on_device_as_f32());
    let x = static_shape(&p.buffers[xb]).filter(|_| floats && ins.outputs.len() == 1)?;
    let last = x.len() as i64 - 1;
    let (f, axes) = match &ins.op {
        Op::Reduce {
            f,
            noop_with_empty_axes: false,
            ..
        } => (*f, constant(ins.inputs.get(1).copied().flatten())?.to_i64()),
        Op::ReduceAxes { f, axes, .. } => (*f, axes.iter().map(|&a| a as i64).collect()),
        _ => return None,
    };
    let ok = matches!(
        f,
        ReduceFn::Sum | ReduceFn::Mean | ReduceFn::Max | ReduceFn::Min
    ) && axes.len() == 1
        && (axes[0] == last || axes[0] == -1);
    ok.then_some(f)
}

/// The softmaxes of `p` with a chain to take before or after them, and its last-axis
/// reductions with a chain before them.
pub(super) fn find(
    p: &Program,
    chains: &[Vec<usize>],
    taken: &dyn Fn(usize) -> bool,
    constant: &dyn Fn(Option<usize>) -> Option<Tensor>,
) -> Vec<Fusion> {
    let uses = read_counts(p);
    let mut chain_of = HashMap::new();
    let mut chain_ending_in = HashMap::new();
    for (c, chain) in chains.iter().enumerate() {
        for &m in chain {
            chain_of.insert(m, c);
        }
        if let Some(&root) = chain.last() {
            chain_ending_in.insert(p.instructions[root].outputs[0], c);
        }
    }
    let mut found = Vec::new();
    for (s, ins) in p.instructions.iter().enumerate() {
        if taken(s) {
            continue;
        }
        if last_axis_reduce(p, s, constant).is_some() {
            let x = ins.inputs.first().copied().flatten();
            let before = x.and_then(|x| chain_ending_in.get(&x).copied().filter(|_| uses[x] == 1));
            if let (Some(_), [_]) = (before, &ins.outputs[..]) {
                found.push(Fusion {
                    before,
                    row: s,
                    after: None,
                });
            }
            continue;
        }
        let Op::Softmax { axis, log: false } = ins.op else {
            continue;
        };
        let (Some(Some(x)), [y]) = (ins.inputs.first(), &ins.outputs[..]) else {
            continue;
        };
        let Some(shape) = static_shape(&p.buffers[*y]) else {
            continue;
        };
        let last = axis == -1 || axis == shape.len() as i64 - 1;
        if !last || p.buffers[*x].shape != p.buffers[*y].shape {
            continue;
        }
        let before = chain_ending_in.get(x).copied().filter(|_| uses[*x] == 1);
        // Every reader of the result in one chain, and the result no program output.
        let readers: Vec<usize> = (s + 1..p.instructions.len())
            .filter(|&r| p.instructions[r].inputs.contains(&Some(*y)))
            .collect();
        let after = match readers.first().and_then(|r| chain_of.get(r)) {
            Some(&c)
                if !p.outputs.contains(y)
                    && readers.iter().all(|r| chain_of.get(r) == Some(&c)) =>
            {
                Some(c)
            }
            _ => None,
        };
        if before.is_some() || after.is_some() {
            found.push(Fusion {
                before,
                row: s,
                after,
            });
        }
    }
    found
}

/// The fused kernel of `f`: its name, text, threads (one warp per row) and the buffers it
/// reads (its parameters before the result); None where a chain's operand does not
/// broadcast to the row op's input shape.
pub(super) fn kernel(
    p: &Program,
    chains: &[Vec<usize>],
    f: &Fusion,
    scalars: &[Option<Scalar>],
    constant: &dyn Fn(Option<usize>) -> Option<Tensor>,
) -> Option<(String, String, usize, Vec<usize>)> {
    let ins = &p.instructions[f.row];
    let (x, y) = (ins.inputs.first().copied().flatten()?, ins.outputs[0]);
    let (shape, out) = (static_shape(&p.buffers[x])?, static_shape(&p.buffers[y])?);
    let root = f.after.map_or(Some(f.row), |c| chains[c].last().copied())?;
    let reduce = last_axis_reduce(p, f.row, constant);
    let name = format!("k{root}_{}_fused", ins.op.name());
    // The result is the last parameter, after every operand the chains read: it is written
    // as `%result` and named once they are all known.
    let ops = RefCell::new(Operands::default());
    let ok = Cell::new(true);
    let failed = |fallback: &str| {
        ok.set(false);
        fallback.to_string()
    };
    let mut input = |b: &mut String, pass: &str| -> String {
        let mut ops = ops.borrow_mut();
        let value = match f.before {
            Some(c) => emit_chain(
                p,
                &chains[c],
                scalars,
                (&shape, "%o", pass),
                &HashMap::new(),
                &mut ops,
                b,
            ),
            None => ops
                .load(p, x, &shape, "%o", &format!("{pass}x"), b)
                .map(|()| format!("%{pass}x")),
        };
        value.unwrap_or_else(|| failed("%zero"))
    };
    let mut finish = |b: &mut String, q: &str| -> String {
        let Some(c) = f.after else {
            return q.to_string();
        };
        let bound = HashMap::from([(y, q.to_string())]);
        let mut ops = ops.borrow_mut();
        emit_chain(
            p,
            &chains[c],
            scalars,
            (&shape, "%o", "ep"),
            &bound,
            &mut ops,
            b,
        )
        .unwrap_or_else(|| failed(q))
    };
    let mut body = String::new();
    let threads = match reduce {
        Some(rf) => reduce_rows_with(
            &mut body,
            (&shape, &out),
            rf,
            "%result",
            &mut |b: &mut String| input(b, "p1"),
        )?,
        None => {
            let cols = *shape.last()?;
            let rows = shape.iter().product::<usize>() / cols.max(1);
            prologue(&mut body, rows * WARP);
            softmax_rows_with(
                &mut body,
                cols,
                (&memref(&shape), "%result"),
                &mut input,
                &mut finish,
            );
            rows * WARP
        }
    };
    if !ok.get() {
        return None;
    }
    let Operands {
        buffers,
        mut params,
    } = ops.into_inner();
    let body = body.replace("%result[", &format!("%a{}[", buffers.len()));
    params.push(memref(&out));
    Some((
        name.clone(),
        super::kernel_gen::kernel(&name, &params, &body),
        threads,
        buffers,
    ))
}
