//! Regions of a rank program: backward slices cut at chosen values, what flows in and out of
//! them, and their evaluation on given inputs with the runtime's kernels.

use ppmoe_runtime::program::{BufferId, BufferKind, Program};
use ppmoe_runtime::{kernels, Tensor};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Which instruction writes each buffer.
pub fn producers(p: &Program) -> HashMap<BufferId, usize> {
    let mut m = HashMap::new();
    for (i, ins) in p.instructions.iter().enumerate() {
        for &o in &ins.outputs {
            m.insert(o, i);
        }
    }
    m
}

/// Which instructions read each buffer.
pub fn consumers(p: &Program) -> HashMap<BufferId, Vec<usize>> {
    let mut m: HashMap<BufferId, Vec<usize>> = HashMap::new();
    for (i, ins) in p.instructions.iter().enumerate() {
        for &b in ins.inputs.iter().flatten() {
            m.entry(b).or_default().push(i);
        }
    }
    m
}

/// The instructions `out` depends on, not looking past the `cut` buffers.
pub fn backward_slice(
    p: &Program,
    prod: &HashMap<BufferId, usize>,
    out: BufferId,
    cut: &HashSet<BufferId>,
) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![out];
    let mut visited = HashSet::new();
    while let Some(b) = stack.pop() {
        if cut.contains(&b) || !visited.insert(b) {
            continue;
        }
        if let Some(&i) = prod.get(&b) {
            if seen.insert(i) {
                stack.extend(p.instructions[i].inputs.iter().flatten().copied());
            }
        }
    }
    seen
}

/// The instructions that depend on `from`, in program order.
pub fn forward_slice(p: &Program, from: &[BufferId]) -> BTreeSet<usize> {
    let mut live: HashSet<BufferId> = from.iter().copied().collect();
    let mut out = BTreeSet::new();
    for (i, ins) in p.instructions.iter().enumerate() {
        if ins.inputs.iter().flatten().any(|b| live.contains(b)) {
            out.insert(i);
            live.extend(ins.outputs.iter().copied());
        }
    }
    out
}

/// Buffers a region reads that it does not write, and that are not weights.
pub fn live_ins(p: &Program, region: &BTreeSet<usize>) -> BTreeSet<BufferId> {
    let written: HashSet<BufferId> = region
        .iter()
        .flat_map(|&i| p.instructions[i].outputs.iter().copied())
        .collect();
    region
        .iter()
        .flat_map(|&i| p.instructions[i].inputs.iter().flatten().copied())
        .filter(|b| !written.contains(b) && p.buffers[*b].kind != BufferKind::Weight)
        .collect()
}

/// Buffers a region writes that something outside it (or the program's outputs) reads.
pub fn live_outs(
    p: &Program,
    region: &BTreeSet<usize>,
    cons: &HashMap<BufferId, Vec<usize>>,
) -> BTreeSet<BufferId> {
    let mut out = BTreeSet::new();
    for &i in region {
        for &o in &p.instructions[i].outputs {
            let outside = cons
                .get(&o)
                .is_some_and(|c| c.iter().any(|j| !region.contains(j)));
            if outside || p.outputs.contains(&o) {
                out.insert(o);
            }
        }
    }
    out
}

/// Runs the region's instructions on `inputs` (and the program's weights); returns `want`.
/// No instruction may make a tensor over `limit` bytes (its static size is checked first).
pub fn evaluate(
    p: &Program,
    weights: &HashMap<&str, &Tensor>,
    region: &BTreeSet<usize>,
    inputs: &HashMap<BufferId, Tensor>,
    want: BufferId,
    limit: usize,
    memo: &mut HashMap<BufferId, Tensor>,
) -> Result<Tensor, String> {
    // A value depends only on the trial inputs, whichever region asks for it: the small ones
    // computed for an earlier candidate are kept in `memo` and not computed again.
    let mut vals: HashMap<BufferId, Tensor> = memo.clone();
    vals.extend(inputs.iter().map(|(&b, t)| (b, t.clone())));
    for &i in region {
        let ins = &p.instructions[i];
        if ins.outputs.iter().all(|o| vals.contains_key(o)) {
            continue;
        }
        // Static sizes are checked before anything is made; a run-time size (after NonZero)
        // is bounded by its operands, and checked once known.
        for &o in &ins.outputs {
            let b = &p.buffers[o];
            if b.shape.iter().all(Option::is_some) {
                let shape: Vec<usize> = b.shape.iter().flatten().copied().collect();
                within_limit(ins, &shape, b.dtype, limit)?;
            }
        }
        let mut args: Vec<Option<&Tensor>> = Vec::with_capacity(ins.inputs.len());
        for inp in &ins.inputs {
            args.push(match inp {
                None => None,
                Some(b) => Some(match vals.get(b) {
                    Some(t) => t,
                    None => weights
                        .get(p.buffers[*b].name.as_str())
                        .copied()
                        .ok_or_else(|| format!("buffer '{}' has no value", p.buffers[*b].name))?,
                }),
            });
        }
        let outs = kernels::execute(&ins.op, &args, ins.outputs.len())?;
        for t in &outs {
            within_limit(ins, &t.shape, t.dtype, limit)?;
        }
        for (&o, t) in ins.outputs.iter().zip(outs) {
            // A trial computes in f32: a value computed in a half-precision model is tagged
            // f32 (its GEMMs with bf16 weights then round it, as the raised layer's do); a
            // weight moved about (gathered, sliced) keeps its bits and type.
            let computed = !matches!(*t.data, ppmoe_runtime::tensor::Data::Half(_));
            let dtype = match p.buffers[o].dtype {
                ppmoe_runtime::DType::BF16 | ppmoe_runtime::DType::F16 if computed => {
                    ppmoe_runtime::DType::F32
                }
                d => d,
            };
            vals.insert(o, t.with_dtype(dtype));
        }
    }
    for (&b, t) in &vals {
        if t.len().saturating_mul(t.dtype.size()) <= MEMO_BYTES {
            memo.entry(b).or_insert_with(|| t.clone());
        }
    }
    vals.remove(&want)
        .ok_or_else(|| "the region does not produce the value".to_string())
}

/// Values up to this size are remembered between the candidates of one layer.
const MEMO_BYTES: usize = 16 << 20;

/// Refuses a tensor of `shape` over `limit` bytes (or whose size overflows), naming the node.
fn within_limit(
    ins: &ppmoe_runtime::program::Instruction,
    shape: &[usize],
    dtype: ppmoe_runtime::DType,
    limit: usize,
) -> Result<(), String> {
    let dims: Vec<Option<usize>> = shape.iter().map(|&d| Some(d)).collect();
    match crate::core::static_bytes(&dims, dtype) {
        Some(n) if n <= limit => Ok(()),
        Some(n) => Err(format!(
            "node \"{}\" ({}) would make a {} MiB tensor {shape:?}, over the compile-time evaluation limit of {} MiB (--eval-limit, or the layer's largest weight)",
            ins.origin,
            ins.op.name(),
            n >> 20,
            limit >> 20
        )),
        None => Err(format!("node \"{}\" ({}): the size of a {shape:?} tensor overflows", ins.origin, ins.op.name())),
    }
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (x, y) = (a.to_f32(), b.to_f32());
    if x.len() != y.len() {
        return f64::INFINITY;
    }
    let num: f64 = x
        .iter()
        .zip(&y)
        .map(|(p, q)| ((*p - *q) as f64).powi(2))
        .sum();
    let den: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

/// Deterministic normal samples (a small LCG and Box-Muller: no dependency, same every run).
pub fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (next(), next());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32 * scale
        })
        .collect()
}
