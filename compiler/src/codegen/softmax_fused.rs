//! A softmax with the pointwise chains around it as one kernel. An exported attention adds
//! its mask to the scores just before the softmax and guards the probabilities against NaN
//! just after it (sdpa's decomposition: `where(isnan(p), 0, p)`); each is a pass over
//! [batch, heads, S, S], as large as the softmax's own. Fused, the chain before is evaluated
//! where the softmax reads its input and the chain after where it writes its result: the
//! scores are read once and the probabilities written once. The numbers are the separate
//! kernels' to the bit: the same expressions over the same f32 values.

use super::kernel_gen::{memref, prologue, softmax_rows_with, static_shape, WARP};
use super::pointwise::{emit_chain, read_counts, Operands, Scalar};
use ppmoe_runtime::program::{Op, Program};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// A softmax over the last axis and the chains (indices into the program's chains) it
/// takes: the one whose result only it reads, and the one that alone reads its result.
pub(super) struct Fusion {
    pub before: Option<usize>,
    pub softmax: usize,
    pub after: Option<usize>,
}

/// The softmaxes of `p` with a chain to take before or after them.
pub(super) fn find(
    p: &Program,
    chains: &[Vec<usize>],
    taken: &dyn Fn(usize) -> bool,
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
        if taken(s) || !last || p.buffers[*x].shape != p.buffers[*y].shape {
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
                softmax: s,
                after,
            });
        }
    }
    found
}

/// The fused kernel of `f`: its name, text, threads (one warp per row) and the buffers it
/// reads (its parameters before the result); None where a chain's operand does not
/// broadcast to the softmax's shape.
pub(super) fn kernel(
    p: &Program,
    chains: &[Vec<usize>],
    f: &Fusion,
    scalars: &[Option<Scalar>],
) -> Option<(String, String, usize, Vec<usize>)> {
    let ins = &p.instructions[f.softmax];
    let (x, y) = (ins.inputs.first().copied().flatten()?, ins.outputs[0]);
    let shape = static_shape(&p.buffers[y])?;
    let root = f
        .after
        .map_or(Some(f.softmax), |c| chains[c].last().copied())?;
    let cols = *shape.last()?;
    let rows = shape.iter().product::<usize>() / cols.max(1);
    let name = format!("k{root}_softmax_fused");
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
    prologue(&mut body, rows * WARP);
    softmax_rows_with(
        &mut body,
        cols,
        (&memref(&shape), "%result"),
        &mut input,
        &mut finish,
    );
    if !ok.get() {
        return None;
    }
    let Operands {
        buffers,
        mut params,
    } = ops.into_inner();
    let body = body.replace("%result[", &format!("%a{}[", buffers.len()));
    params.push(memref(&shape));
    Some((
        name.clone(),
        super::kernel_gen::kernel(&name, &params, &body),
        rows * WARP,
        buffers,
    ))
}
