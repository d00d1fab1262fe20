//! The CPU backend's reference implementation of every `core` op, with ONNX semantics.
//! Each family is a file; `execute` dispatches an instruction to it.

mod elementwise;
mod gemm;
mod index;
pub mod limit;
mod linalg;
mod moe;
mod reduce;
pub(crate) mod shape;
pub use shape::{shape_values, slice_ranges};

use crate::program::Op;
use crate::tensor::Tensor;

/// A kernel's failure: what was wrong with its operands.
pub type KResult<T> = Result<T, String>;

/// Runs one op on its operands (`None` for an absent optional operand).
pub fn execute(op: &Op, inputs: &[Option<&Tensor>], n_outputs: usize) -> KResult<Vec<Tensor>> {
    // Half-precision storage (bf16/f16 weights kept as the model stores them) goes as it is to
    // the ops that move data or read it a piece at a time; every other op computes on f32.
    let reads_half = matches!(
        op,
        Op::ReshapeTo { .. }
            | Op::Transpose { .. }
            | Op::Slice
            | Op::ExtractSlice { .. }
            | Op::Gather { .. }
            | Op::GatherNd { .. }
            | Op::TokenSlice { .. }
            | Op::MatMul
            | Op::MoeExperts { .. }
            | Op::MoeExpertFfn { .. }
    );
    let is_half =
        |t: &Option<&Tensor>| t.is_some_and(|t| matches!(*t.data, crate::tensor::Data::Half(_)));
    if reads_half || !inputs.iter().any(is_half) {
        return execute_op(op, inputs, n_outputs);
    }
    let widened: Vec<Option<Tensor>> = inputs
        .iter()
        .map(|t| t.map(|t| t.clone().widened()))
        .collect();
    let refs: Vec<Option<&Tensor>> = widened.iter().map(Option::as_ref).collect();
    execute_op(op, &refs, n_outputs)
}

fn execute_op(op: &Op, inputs: &[Option<&Tensor>], n_outputs: usize) -> KResult<Vec<Tensor>> {
    let arg = |i: usize| -> KResult<&Tensor> {
        inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| format!("operand {i} is missing"))
    };
    let opt = |i: usize| -> Option<&Tensor> { inputs.get(i).copied().flatten() };
    let one = |t: KResult<Tensor>| t.map(|t| vec![t]);
    match op {
        Op::Unary { f } => one(elementwise::unary(*f, arg(0)?)),
        Op::Binary { f } => one(elementwise::binary(*f, arg(0)?, arg(1)?)),
        Op::Where => one(elementwise::where_(arg(0)?, arg(1)?, arg(2)?)),
        Op::Cast { to } => one(Ok(elementwise::cast(arg(0)?, *to))),
        Op::MatMul => one(linalg::matmul(arg(0)?, arg(1)?)),
        Op::Einsum { equation } => one(linalg::einsum(
            equation,
            &(0..inputs.len()).map(arg).collect::<KResult<Vec<_>>>()?,
        )),
        Op::Softmax { axis, log } => one(reduce::softmax(arg(0)?, *axis, *log)),
        Op::Reduce {
            f,
            keepdims,
            noop_with_empty_axes,
        } => one(reduce::reduce(
            *f,
            arg(0)?,
            opt(1),
            *keepdims,
            *noop_with_empty_axes,
        )),
        Op::ReduceAxes { f, axes, keepdims } => {
            one(reduce::reduce_axes(*f, arg(0)?, axes, *keepdims))
        }
        Op::ArgMax {
            axis,
            keepdims,
            max,
        } => one(reduce::argmax(arg(0)?, *axis, *keepdims, *max)),
        Op::LayerNorm { axis, epsilon } => one(reduce::layer_norm(
            arg(0)?,
            arg(1)?,
            opt(2),
            *axis,
            *epsilon,
        )),
        Op::CumSum { exclusive, reverse } => {
            one(reduce::cumsum(arg(0)?, arg(1)?, *exclusive, *reverse))
        }
        Op::CumSumAxis {
            axis,
            exclusive,
            reverse,
        } => one(reduce::cumsum_along(arg(0)?, *axis, *exclusive, *reverse)),
        Op::Reshape { allowzero } => one(shape::reshape(arg(0)?, arg(1)?, *allowzero)),
        Op::ReshapeTo { shape } => one(shape::reshape_to(arg(0)?, shape)),
        Op::Squeeze => one(shape::squeeze(arg(0)?, opt(1))),
        Op::Unsqueeze => one(shape::unsqueeze(arg(0)?, arg(1)?)),
        Op::Flatten { axis } => one(shape::flatten(arg(0)?, *axis)),
        Op::Transpose { perm } => one(shape::transpose(arg(0)?, perm)),
        Op::Concat { axis } => one(shape::concat(
            &(0..inputs.len()).map(arg).collect::<KResult<Vec<_>>>()?,
            *axis,
        )),
        Op::Split { axis } => shape::split(arg(0)?, opt(1), *axis, n_outputs),
        Op::Slice => one(shape::slice(arg(0)?, arg(1)?, arg(2)?, opt(3), opt(4))),
        Op::ExtractSlice {
            offsets,
            sizes,
            strides,
        } => one(shape::extract_slice(arg(0)?, offsets, sizes, strides)),
        Op::Expand => one(shape::expand(arg(0)?, arg(1)?)),
        Op::ExpandTo { shape } => one(shape::expand_to(arg(0)?, shape)),
        Op::Tile => one(shape::tile(arg(0)?, arg(1)?)),
        Op::Shape { start, end } => one(Ok(shape::shape_of(arg(0)?, *start, *end))),
        Op::ConstantOfShape { value, dtype } => {
            one(shape::constant_of_shape(arg(0)?, *value, *dtype))
        }
        Op::Range => one(shape::range(arg(0)?, arg(1)?, arg(2)?)),
        Op::Gather { axis } => one(index::gather(arg(0)?, arg(1)?, *axis)),
        Op::GatherElements { axis } => one(index::gather_elements(arg(0)?, arg(1)?, *axis)),
        Op::GatherNd { batch_dims } => one(index::gather_nd(arg(0)?, arg(1)?, *batch_dims)),
        Op::ScatterNd { reduction } => {
            one(index::scatter_nd(arg(0)?, arg(1)?, arg(2)?, *reduction))
        }
        Op::ScatterElements { axis, reduction } => one(index::scatter_elements(
            arg(0)?,
            arg(1)?,
            arg(2)?,
            *axis,
            *reduction,
        )),
        Op::TopK { axis, largest } => index::topk(arg(0)?, arg(1)?, *axis, *largest),
        Op::TopKAxis { axis, k, largest } => index::topk_along(arg(0)?, *axis, *k, *largest),
        Op::OneHot { axis } => one(index::one_hot(arg(0)?, arg(1)?, arg(2)?, *axis)),
        Op::Trilu { upper } => one(index::trilu(arg(0)?, opt(1), *upper)),
        Op::NonZero => one(Ok(index::nonzero(arg(0)?))),
        Op::MoeRoute { .. } => moe::route(op, arg(0)?, opt(1)),
        Op::MoeLocalSlice {
            first_expert,
            num_local_experts,
        } => moe::local_slice(arg(0)?, arg(1)?, *first_expert, *num_local_experts),
        Op::MoeExpertFfn {
            activation,
            alpha,
            beta,
            limit,
            layout,
        } => one(moe::expert_ffn(
            *activation,
            *alpha,
            *beta,
            *limit,
            *layout,
            [arg(0)?, arg(1)?, arg(2)?, arg(3)?],
            opt(4),
            opt(5),
        )),
        Op::MoeScatterCombine { tokens } => {
            one(moe::scatter_combine(arg(0)?, arg(1)?, arg(2)?, *tokens))
        }
        Op::MoeDispatch {
            num_experts,
            capacity,
        } => one(moe::dispatch(arg(0)?, arg(1)?, *num_experts, *capacity)),
        Op::MoeCombine { capacity } => one(moe::combine(arg(0)?, arg(1)?, arg(2)?, *capacity)),
        Op::TokenSlice { axis, index, parts } => {
            one(shape::token_slice(arg(0)?, *axis, *index, *parts))
        }
        Op::AllReduce { .. }
        | Op::AllGather { .. }
        | Op::AllToAll { .. }
        | Op::Send { .. }
        | Op::Recv { .. } => Err("communication ops run in the executor, not as kernels".into()),
        Op::MoeExperts {
            activation,
            alpha,
            beta,
            limit,
            layout,
        } => one(moe::experts(
            *activation,
            *alpha,
            *beta,
            *limit,
            *layout,
            [arg(0)?, arg(1)?, arg(2)?, arg(3)?, arg(4)?],
            opt(5),
            opt(6),
        )),
    }
}

/// Normalises a possibly negative axis.
pub fn axis(a: i64, rank: usize) -> KResult<usize> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if v < 0 || v >= r.max(1) {
        return Err(format!("axis {a} out of range for rank {rank}"));
    }
    Ok(v as usize)
}

/// Numpy broadcast of two shapes.
pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> KResult<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let x = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let y = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    Ok(out)
}

/// For each flat index of `out`, the flat index into a tensor of shape `inp` broadcast to it.
pub(crate) fn broadcast_map(inp: &[usize], out: &[usize]) -> Vec<usize> {
    let n = crate::tensor::numel(out);
    if inp == out {
        return (0..n).collect();
    }
    let off = out.len() - inp.len();
    let ist = crate::tensor::strides(inp);
    let mut bst = vec![0usize; out.len()];
    for i in 0..inp.len() {
        bst[off + i] = if inp[i] == 1 { 0 } else { ist[i] };
    }
    let mut idx = Vec::with_capacity(n);
    let mut counter = vec![0usize; out.len()];
    let mut pos = 0usize;
    for _ in 0..n {
        idx.push(pos);
        for d in (0..out.len()).rev() {
            counter[d] += 1;
            pos += bst[d];
            if counter[d] < out[d] {
                break;
            }
            pos -= bst[d] * counter[d];
            counter[d] = 0;
        }
    }
    idx
}
