//! Reductions along axes: sums, means, extrema, softmax, layer norm, cumsum, argmax.

use super::{axis, KResult};
use crate::program::ReduceFn;
use crate::tensor::{numel, Data, Tensor};

/// Splits `shape` around one axis into (outer, len, inner).
fn around(shape: &[usize], ax: usize) -> (usize, usize, usize) {
    (numel(&shape[..ax]), shape[ax], numel(&shape[ax + 1..]))
}

pub fn reduce(
    f: ReduceFn,
    x: &Tensor,
    axes: Option<&Tensor>,
    keepdims: bool,
    noop_empty: bool,
) -> KResult<Tensor> {
    if matches!(*x.data, Data::Half(_)) {
        return reduce(f, &x.clone().widened(), axes, keepdims, noop_empty);
    }
    let rank = x.shape.len();
    let mut ax: Vec<usize> = axes
        .map(|a| a.to_i64())
        .unwrap_or_default()
        .iter()
        .map(|&a| axis(a, rank))
        .collect::<KResult<_>>()?;
    if ax.is_empty() {
        if noop_empty {
            return Ok(x.clone());
        }
        ax = (0..rank).collect();
    }
    let r = Reduced::new(&x.shape, ax);
    let shape = if keepdims {
        r.out_full.clone()
    } else {
        r.kept_dims(&x.shape)
    };
    match &*x.data {
        Data::F32(v) => Ok(Tensor::f32(shape, r.f32s(f, v)).with_dtype(x.dtype)),
        Data::I64(v) => {
            // Wrapped to the type's width, as a sum of that width wraps (and as ppmoe's
            // elementwise integer arithmetic does): i64 arithmetic wraps modulo 2^64, which
            // wrapping again to 32 bits makes the 32-bit sum exactly.
            let wrap = |a| super::elementwise::wrapped(a, x.dtype);
            let values = r.i64s(f, v)?.into_iter().map(wrap).collect();
            Ok(Tensor::i64(shape, values).with_dtype(x.dtype))
        }
        Data::Bool(_) => Err("reduction of a bool tensor".into()),
        Data::Half(_) => unreachable!("widened at the top of the function"),
    }
}

/// `reduce` over axes given as counts from the front (none, or one past the rank, is refused:
/// they come from a bundle or an IR file).
pub fn reduce_axes(f: ReduceFn, x: &Tensor, axes: &[usize], keepdims: bool) -> KResult<Tensor> {
    if axes.is_empty() || axes.iter().any(|&a| a >= x.shape.len()) {
        return Err(format!(
            "reduction over axes {axes:?} of a rank-{} tensor",
            x.shape.len()
        ));
    }
    let axes: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
    let axes = Tensor::i64(vec![axes.len()], axes);
    reduce(f, x, Some(&axes), keepdims, false)
}

/// A reduction's geometry: the axes reduced, the (keepdims) output shape, and each input
/// element's place in it.
struct Reduced {
    ax: Vec<usize>,
    out_full: Vec<usize>,
    in_shape: Vec<usize>,
    ist: Vec<usize>,
    ost: Vec<usize>,
    /// Input elements per output element.
    count: usize,
}

impl Reduced {
    fn new(shape: &[usize], ax: Vec<usize>) -> Self {
        let out_full: Vec<usize> = shape
            .iter()
            .enumerate()
            .map(|(i, &d)| if ax.contains(&i) { 1 } else { d })
            .collect();
        let n_out = numel(&out_full);
        Reduced {
            count: numel(shape) / n_out.max(1),
            ist: crate::tensor::strides(shape),
            ost: crate::tensor::strides(&out_full),
            in_shape: shape.to_vec(),
            ax,
            out_full,
        }
    }

    /// The output's shape without the reduced axes.
    fn kept_dims(&self, shape: &[usize]) -> Vec<usize> {
        shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.ax.contains(i))
            .map(|(_, &d)| d)
            .collect()
    }

    /// Flat index of input element `flat` in the (keepdims) output.
    fn target(&self, flat: usize) -> usize {
        (0..self.in_shape.len())
            .map(|d| {
                if self.ax.contains(&d) {
                    0
                } else {
                    (flat / self.ist[d]) % self.in_shape[d] * self.ost[d]
                }
            })
            .sum()
    }

    /// Accumulated in f64, so that long sums do not drift from the reference.
    fn f32s(&self, f: ReduceFn, v: &[f32]) -> Vec<f32> {
        let init = match f {
            ReduceFn::Max => f32::NEG_INFINITY,
            ReduceFn::Min => f32::INFINITY,
            ReduceFn::Prod => 1.0,
            _ => 0.0,
        };
        let mut acc = vec![init as f64; numel(&self.out_full)];
        for (i, &a) in v.iter().enumerate() {
            let t = &mut acc[self.target(i)];
            let a = a as f64;
            *t = match f {
                ReduceFn::Sum | ReduceFn::Mean => *t + a,
                ReduceFn::L2 => *t + a * a,
                ReduceFn::Max => t.max(a),
                ReduceFn::Min => t.min(a),
                ReduceFn::Prod => *t * a,
            };
        }
        acc.into_iter()
            .map(|a| match f {
                ReduceFn::Mean => (a / self.count as f64) as f32,
                ReduceFn::L2 => a.sqrt() as f32,
                _ => a as f32,
            })
            .collect()
    }

    /// Integer sums and products wrap (a hostile model's shape arithmetic must not trap).
    fn i64s(&self, f: ReduceFn, v: &[i64]) -> KResult<Vec<i64>> {
        let init = match f {
            ReduceFn::Max => i64::MIN,
            ReduceFn::Min => i64::MAX,
            ReduceFn::Prod => 1,
            _ => 0,
        };
        let mut acc = vec![init; numel(&self.out_full)];
        for (i, &a) in v.iter().enumerate() {
            let t = &mut acc[self.target(i)];
            *t = match f {
                ReduceFn::Sum | ReduceFn::Mean => t.wrapping_add(a),
                ReduceFn::Max => (*t).max(a),
                ReduceFn::Min => (*t).min(a),
                ReduceFn::Prod => t.wrapping_mul(a),
                ReduceFn::L2 => return Err("ReduceL2 of integers".into()),
            };
        }
        if f == ReduceFn::Mean {
            acc.iter_mut().for_each(|a| *a /= self.count.max(1) as i64);
        }
        Ok(acc)
    }
}

pub fn softmax(x: &Tensor, ax: i64, log: bool) -> KResult<Tensor> {
    let v = x.as_f32().ok_or("Softmax of a non-float tensor")?;
    let a = axis(ax, x.shape.len())?;
    let (outer, len, inner) = around(&x.shape, a);
    let mut out = vec![0f32; v.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| o * len * inner + k * inner + i;
            let m = (0..len).map(|k| v[at(k)]).fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = (0..len).map(|k| (v[at(k)] - m).exp()).sum();
            for k in 0..len {
                out[at(k)] = if log {
                    v[at(k)] - m - s.ln()
                } else {
                    (v[at(k)] - m).exp() / s
                };
            }
        }
    }
    Ok(Tensor::f32(x.shape.clone(), out).with_dtype(x.dtype))
}

pub fn argmax(x: &Tensor, ax: i64, keepdims: bool, max: bool) -> KResult<Tensor> {
    let v = x.to_f32();
    let a = axis(ax, x.shape.len())?;
    let (outer, len, inner) = around(&x.shape, a);
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| v[o * len * inner + k * inner + i];
            let mut best = 0;
            for k in 1..len {
                if (max && at(k) > at(best)) || (!max && at(k) < at(best)) {
                    best = k;
                }
            }
            out.push(best as i64);
        }
    }
    let mut shape = x.shape.clone();
    if keepdims {
        shape[a] = 1;
    } else {
        shape.remove(a);
    }
    Ok(Tensor::i64(shape, out))
}

/// LayerNormalization over the axes from `axis` to the end, with scale and optional bias.
pub fn layer_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    ax: i64,
    eps: f32,
) -> KResult<Tensor> {
    let v = x
        .as_f32()
        .ok_or("LayerNormalization of a non-float tensor")?;
    let a = axis(ax, x.shape.len())?;
    let inner = numel(&x.shape[a..]);
    let s = scale.to_f32();
    let b = bias.map(|b| b.to_f32());
    if s.len() != inner || b.as_ref().is_some_and(|b| b.len() != inner) {
        return Err(format!(
            "LayerNormalization scale/bias do not match the normalised size {inner}"
        ));
    }
    let mut out = vec![0f32; v.len()];
    let n = inner as f64;
    // Each sum in f64 from +0.0, element by element, as the `linalg.generic`s ppmoe prints a
    // layer norm as (`core::layer_norm`) compute it.
    for (row, o) in v.chunks(inner).zip(out.chunks_mut(inner)) {
        let mean = row.iter().fold(0.0, |acc, &x| acc + x as f64) / n;
        let squares = row.iter().fold(0.0, |acc, &x| {
            let d = x as f64 - mean;
            acc + d * d
        });
        let inv = 1.0 / (squares / n + eps as f64).sqrt();
        for k in 0..inner {
            o[k] = ((row[k] as f64 - mean) * inv) as f32 * s[k] + b.as_ref().map_or(0.0, |b| b[k]);
        }
    }
    Ok(Tensor::f32(x.shape.clone(), out).with_dtype(x.dtype))
}

/// CumSum (ONNX's), its axis an operand.
pub fn cumsum(x: &Tensor, ax: &Tensor, exclusive: bool, reverse: bool) -> KResult<Tensor> {
    let a = axis(
        *ax.to_i64().first().ok_or("CumSum needs an axis")?,
        x.shape.len(),
    )?;
    cumsum_along(x, a, exclusive, reverse)
}

/// The running sums of `x` along axis `a` (counted from the front), each element's sum taken
/// in order along the axis (from its end where `reverse`), with (or, `exclusive`, without)
/// the element itself. Floats add in f32; integers in i64, wrapping at their type's width as
/// ppmoe's integer arithmetic does.
pub fn cumsum_along(x: &Tensor, a: usize, exclusive: bool, reverse: bool) -> KResult<Tensor> {
    if a >= x.shape.len() {
        return Err(format!(
            "CumSum along axis {a} of a rank-{} tensor",
            x.shape.len()
        ));
    }
    let dims = around(&x.shape, a);
    let order = (exclusive, reverse);
    match &*x.data {
        Data::I64(values) => {
            let mut v = values.clone();
            let add = |acc: i64, e: i64| super::elementwise::wrapped(acc.wrapping_add(e), x.dtype);
            running(&mut v, dims, order, add);
            Ok(Tensor::i64(x.shape.clone(), v).with_dtype(x.dtype))
        }
        _ => {
            let mut v = x.to_f32();
            running(&mut v, dims, order, |acc: f32, e| acc + e);
            Ok(Tensor::f32(x.shape.clone(), v).with_dtype(x.dtype))
        }
    }
}

/// `v`'s running sums in place, along the middle of (outer, len, inner), from a zero.
fn running<T: Copy + Default>(
    v: &mut [T],
    (outer, len, inner): (usize, usize, usize),
    (exclusive, reverse): (bool, bool),
    add: impl Fn(T, T) -> T,
) {
    for o in 0..outer {
        for i in 0..inner {
            let mut acc = T::default();
            for step in 0..len {
                let k = if reverse { len - 1 - step } else { step };
                let at = o * len * inner + k * inner + i;
                let next = add(acc, v[at]);
                v[at] = if exclusive { acc } else { next };
                acc = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{cumsum, cumsum_along, reduce, reduce_axes};
    use crate::program::ReduceFn;
    use crate::tensor::Tensor;

    /// Over static axes a reduction is ONNX's over the same axes given as an operand (counted
    /// from the end there), for every function and both keepdims; no axis, or one past the
    /// rank, is refused (the axes may come from a file).
    #[test]
    fn static_axes_reduce_as_the_axes_operand_does() {
        let values: Vec<f32> = (0..24).map(|v| (v as f32 * 0.37).sin()).collect();
        let x = Tensor::f32(vec![2, 3, 4], values);
        for f in [
            ReduceFn::Sum,
            ReduceFn::Mean,
            ReduceFn::Max,
            ReduceFn::Min,
            ReduceFn::Prod,
        ] {
            for keepdims in [true, false] {
                for (axes, from_end) in [(vec![2], vec![-1]), (vec![0, 2], vec![-3, -1])] {
                    let operand = Tensor::i64(vec![from_end.len()], from_end);
                    let want = reduce(f, &x, Some(&operand), keepdims, false).unwrap();
                    let got = reduce_axes(f, &x, &axes, keepdims).unwrap();
                    assert_eq!(got.shape, want.shape, "{f:?} {axes:?}");
                    assert_eq!(got.as_f32(), want.as_f32(), "{f:?} {axes:?}");
                }
            }
        }
        assert!(reduce_axes(ReduceFn::Sum, &x, &[], true).is_err());
        assert!(reduce_axes(ReduceFn::Sum, &x, &[3], true).is_err());
    }

    /// An i32 sum or product wraps at 32 bits, as i32 arithmetic does (what `arith.addi` on
    /// i32 computes); an i64 one at 64; a maximum stays in range.
    #[test]
    fn integer_sums_wrap_at_their_width() {
        use crate::DType;
        let big = i32::MAX as i64;
        let x = Tensor::i64(vec![3], vec![big, big, 3]).with_dtype(DType::I32);
        // 2 (2^31 - 1) + 3 = 2^32 + 1, which is 1 at 32 bits.
        let sum = reduce_axes(ReduceFn::Sum, &x, &[0], false).unwrap();
        assert_eq!(sum.to_i64(), vec![1]);
        assert_eq!(sum.dtype, DType::I32);
        // (2^31 - 1)^2 3 = 3 (2^62 - 2^32 + 1), which is 3 at 32 bits.
        let prod = reduce_axes(ReduceFn::Prod, &x, &[0], false).unwrap();
        assert_eq!(prod.to_i64(), vec![3]);
        let max = reduce_axes(ReduceFn::Max, &x, &[0], false).unwrap();
        assert_eq!(max.to_i64(), vec![big]);
        let wide = Tensor::i64(vec![3], vec![big, big, 3]);
        let sum = reduce_axes(ReduceFn::Sum, &wide, &[0], false).unwrap();
        assert_eq!(sum.to_i64(), vec![2 * big + 3]);
    }

    /// Running sums along a static axis are ONNX's CumSum with the axis an operand (counted
    /// from the end there), in each order; integers sum exactly and wrap at their width (an
    /// i32's at 32 bits, where f32 would round 2^24 + 1).
    #[test]
    fn running_sums_along_a_static_axis_are_cumsums_and_integers_wrap() {
        use crate::DType;
        let values: Vec<f32> = (0..24).map(|v| (v as f32 * 0.61).cos()).collect();
        let x = Tensor::f32(vec![2, 3, 4], values);
        for order in [(false, false), (true, false), (false, true), (true, true)] {
            for (axis, from_end) in [(0, -3), (1, -2), (2, -1)] {
                let operand = Tensor::i64(vec![], vec![from_end]);
                let want = cumsum(&x, &operand, order.0, order.1).unwrap();
                let got = cumsum_along(&x, axis, order.0, order.1).unwrap();
                assert_eq!(got.as_f32(), want.as_f32(), "{axis} {order:?}");
            }
        }
        assert!(cumsum_along(&x, 3, false, false).is_err());
        let exact = Tensor::i64(vec![2], vec![1 << 24, 1]).with_dtype(DType::I32);
        let sums = cumsum_along(&exact, 0, false, false).unwrap();
        assert_eq!(sums.to_i64(), vec![1 << 24, (1 << 24) + 1]);
        let big = i32::MAX as i64;
        let wraps = Tensor::i64(vec![3], vec![big, 2, 1]).with_dtype(DType::I32);
        let sums = cumsum_along(&wraps, 0, true, false).unwrap();
        assert_eq!(sums.to_i64(), vec![0, big, i32::MIN as i64 + 1]);
        assert_eq!(sums.dtype, DType::I32);
    }
}
