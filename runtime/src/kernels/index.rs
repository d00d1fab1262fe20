//! Indexing: gathers, scatters (with reductions), top-k, one-hot, trilu, nonzero.

use super::{axis, KResult};
use crate::program::Reduction;
use crate::tensor::{numel, strides, Data, Tensor};

fn wrap(i: i64, d: usize) -> KResult<usize> {
    let v = if i < 0 { i + d as i64 } else { i };
    if v < 0 || v >= d as i64 {
        return Err(format!(
            "index {i} is out of range for a dimension of size {d}"
        ));
    }
    Ok(v as usize)
}

pub fn gather(x: &Tensor, idx: &Tensor, ax: i64) -> KResult<Tensor> {
    let a = axis(ax, x.shape.len())?;
    let (outer, len, inner) = (numel(&x.shape[..a]), x.shape[a], numel(&x.shape[a + 1..]));
    let ids: Vec<usize> = idx
        .to_i64()
        .iter()
        .map(|&i| wrap(i, len))
        .collect::<KResult<_>>()?;
    let mut shape = x.shape[..a].to_vec();
    shape.extend(&idx.shape);
    shape.extend(&x.shape[a + 1..]);
    let mut starts = Vec::with_capacity(outer * ids.len());
    for o in 0..outer {
        starts.extend(ids.iter().map(|&k| o * len * inner + k * inner));
    }
    Ok(x.pick_runs(shape, &starts, inner))
}

/// For each element of `idx` (of the data's rank), the flat offset in data of `shape` that it
/// names: its own coordinates, with the index itself on `axis` (GatherElements and
/// ScatterElements address elements the same way).
fn element_offsets(shape: &[usize], idx: &Tensor, a: usize) -> KResult<Vec<usize>> {
    let (ds, is) = (strides(shape), strides(&idx.shape));
    let ids = idx.to_i64();
    let mut out = Vec::with_capacity(ids.len());
    for (flat, &k) in ids.iter().enumerate() {
        let mut off = 0;
        for d in 0..shape.len() {
            let c = (flat / is[d]) % idx.shape[d];
            off += if d == a { wrap(k, shape[a])? } else { c } * ds[d];
        }
        out.push(off);
    }
    Ok(out)
}

pub fn gather_elements(x: &Tensor, idx: &Tensor, ax: i64) -> KResult<Tensor> {
    let a = axis(ax, x.shape.len())?;
    if idx.shape.len() != x.shape.len() {
        return Err("GatherElements indices must have the data's rank".into());
    }
    let pick = element_offsets(&x.shape, idx, a)?;
    Ok(x.pick(idx.shape.clone(), pick.into_iter()))
}

pub fn gather_nd(x: &Tensor, idx: &Tensor, b: usize) -> KResult<Tensor> {
    let k = *idx
        .shape
        .last()
        .ok_or("GatherND indices must have rank >= 1")?;
    if b + k > x.shape.len() || b > 0 && x.shape[..b] != idx.shape[..b] {
        return Err(format!(
            "GatherND of data {:?} with indices {:?} (batch_dims {b})",
            x.shape, idx.shape
        ));
    }
    let slice = numel(&x.shape[b + k..]);
    let xs = strides(&x.shape);
    let batch = numel(&x.shape[..b]);
    let ids = idx.to_i64();
    let per_batch = numel(&idx.shape[b..idx.shape.len() - 1]);
    let batch_stride = numel(&x.shape[b..]);
    let mut starts = Vec::with_capacity(batch * per_batch);
    for bi in 0..batch {
        for j in 0..per_batch {
            let tuple = &ids[(bi * per_batch + j) * k..(bi * per_batch + j + 1) * k];
            let mut off = bi * batch_stride;
            for (d, &i) in tuple.iter().enumerate() {
                off += wrap(i, x.shape[b + d])? * xs[b + d];
            }
            starts.push(off);
        }
    }
    let mut shape = idx.shape[..idx.shape.len() - 1].to_vec();
    shape.extend(&x.shape[b + k..]);
    Ok(x.pick_runs(shape, &starts, slice))
}

/// out[t] = combine(out[t], v) for each (target, update) pair.
fn scatter_into<T: Copy>(o: &mut [T], u: &[T], targets: &[usize], combine: impl Fn(T, T) -> T) {
    for (&t, &v) in targets.iter().zip(u) {
        o[t] = combine(o[t], v);
    }
}

/// Applies `updates[u]` to `out[target(u)]` with the reduction (float, int and bool storages).
fn scatter(data: &Tensor, updates: &Tensor, targets: &[usize], r: Reduction) -> KResult<Tensor> {
    let mut out = data.clone();
    match (std::sync::Arc::make_mut(&mut out.data), &*updates.data) {
        (Data::F32(o), Data::F32(u)) => scatter_into(o, u, targets, |a, v| match r {
            Reduction::None => v,
            Reduction::Add => a + v,
            Reduction::Mul => a * v,
            Reduction::Max => a.max(v),
            Reduction::Min => a.min(v),
        }),
        (Data::I64(o), Data::I64(u)) => scatter_into(o, u, targets, |a, v| match r {
            Reduction::None => v,
            Reduction::Add => a + v,
            Reduction::Mul => a * v,
            Reduction::Max => a.max(v),
            Reduction::Min => a.min(v),
        }),
        (Data::Bool(o), Data::Bool(u)) if r == Reduction::None => {
            scatter_into(o, u, targets, |_, v| v)
        }
        _ => return Err("scatter of updates whose type differs from the data's".into()),
    }
    Ok(out)
}

pub fn scatter_nd(data: &Tensor, idx: &Tensor, updates: &Tensor, r: Reduction) -> KResult<Tensor> {
    let k = *idx
        .shape
        .last()
        .ok_or("ScatterND indices must have rank >= 1")?;
    let slice = numel(&data.shape[k..]);
    let ds = strides(&data.shape);
    let ids = idx.to_i64();
    let n = numel(&idx.shape[..idx.shape.len() - 1]);
    if updates.len() != n * slice {
        return Err(format!(
            "ScatterND updates {:?} do not match indices {:?} and data {:?}",
            updates.shape, idx.shape, data.shape
        ));
    }
    let mut targets = Vec::with_capacity(n * slice);
    for j in 0..n {
        let mut off = 0;
        for d in 0..k {
            off += wrap(ids[j * k + d], data.shape[d])? * ds[d];
        }
        targets.extend(off..off + slice);
    }
    scatter(data, updates, &targets, r)
}

pub fn scatter_elements(
    data: &Tensor,
    idx: &Tensor,
    updates: &Tensor,
    ax: i64,
    r: Reduction,
) -> KResult<Tensor> {
    let a = axis(ax, data.shape.len())?;
    if idx.shape != updates.shape || idx.shape.len() != data.shape.len() {
        return Err(
            "ScatterElements indices and updates must share a shape of the data's rank".into(),
        );
    }
    let targets = element_offsets(&data.shape, idx, a)?;
    scatter(data, updates, &targets, r)
}

/// TopK (ONNX's), its k an operand.
pub fn topk(x: &Tensor, k: &Tensor, ax: i64, largest: bool) -> KResult<Vec<Tensor>> {
    let a = axis(ax, x.shape.len())?;
    let k = *k.to_i64().first().ok_or("TopK needs k")?;
    let k = usize::try_from(k).map_err(|_| format!("TopK k={k}"))?;
    topk_along(x, a, k, largest)
}

/// The order top-k picks in, of the largest first: a NaN above every number (as PyTorch's
/// top-k places it), NaNs equal to each other; the caller's stable sort keeps equal values in
/// index order.
fn descending(a: f32, b: f32) -> std::cmp::Ordering {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let ascending = match (a.is_nan(), b.is_nan()) {
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
        _ => a.partial_cmp(&b).unwrap_or(Equal),
    };
    ascending.reverse()
}

/// The k largest (or smallest) elements along axis `a` (counted from the front) and their
/// indices, in order (see `descending`; equal values by lower index first, as PyTorch's CPU
/// top-k).
pub fn topk_along(x: &Tensor, a: usize, k: usize, largest: bool) -> KResult<Vec<Tensor>> {
    if a >= x.shape.len() {
        return Err(format!(
            "TopK along axis {a} of a rank-{} tensor",
            x.shape.len()
        ));
    }
    let (outer, len, inner) = (numel(&x.shape[..a]), x.shape[a], numel(&x.shape[a + 1..]));
    if k > len {
        return Err(format!("TopK k={k} exceeds the axis size {len}"));
    }
    let v = x.to_f32();
    let mut shape = x.shape.clone();
    shape[a] = k;
    let mut order: Vec<usize> = Vec::with_capacity(len);
    let mut res = vec![(0f32, 0i64); outer * k * inner];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| v[o * len * inner + j * inner + i];
            order.clear();
            order.extend(0..len);
            order.sort_by(|&p, &q| {
                let c = descending(at(p), at(q));
                if largest {
                    c
                } else {
                    c.reverse()
                }
            });
            for (j, &src) in order.iter().take(k).enumerate() {
                res[o * k * inner + j * inner + i] = (at(src), src as i64);
            }
        }
    }
    let (vals, ids): (Vec<f32>, Vec<i64>) = res.into_iter().unzip();
    let values = match *x.data {
        Data::F32(_) => Tensor::f32(shape.clone(), vals).with_dtype(x.dtype),
        _ => {
            Tensor::i64(shape.clone(), vals.iter().map(|&f| f as i64).collect()).with_dtype(x.dtype)
        }
    };
    Ok(vec![values, Tensor::i64(shape, ids)])
}

pub fn one_hot(idx: &Tensor, depth: &Tensor, values: &Tensor, ax: i64) -> KResult<Tensor> {
    let depth = *depth.to_i64().first().ok_or("OneHot needs a depth")?;
    if depth <= 0 {
        return Err(format!("OneHot depth {depth}"));
    }
    let d = usize::try_from(depth).map_err(|_| format!("OneHot depth {depth}"))?;
    if values.len() != 2 {
        return Err(format!(
            "OneHot values must be [off, on] (2 elements), got {} element(s)",
            values.len()
        ));
    }
    let a = axis(ax, idx.shape.len() + 1)?;
    let mut shape = idx.shape.clone();
    shape.insert(a, d);
    super::limit::sized("OneHot", &shape, values.dtype.size())?;
    let (outer, inner) = (numel(&idx.shape[..a]), numel(&idx.shape[a..]));
    let ids = idx.to_i64();
    let on_at = |o: usize, k: usize, i: usize| {
        let v = ids[o * inner + i];
        let v = if v < 0 { v + depth } else { v };
        v == k as i64
    };
    let n = numel(&shape);
    let mut mask = Vec::with_capacity(n);
    for o in 0..outer {
        for k in 0..d {
            for i in 0..inner {
                mask.push(on_at(o, k, i));
            }
        }
    }
    // values = [off, on]
    Ok(values.pick(shape, mask.into_iter().map(|on| on as usize)))
}

pub fn trilu(x: &Tensor, k: Option<&Tensor>, upper: bool) -> KResult<Tensor> {
    if matches!(*x.data, Data::Half(_)) {
        return trilu(&x.clone().widened(), k, upper);
    }
    let r = x.shape.len();
    if r < 2 {
        return Err("Trilu needs rank >= 2".into());
    }
    let k = k
        .map(|t| t.to_i64().first().copied().unwrap_or(0))
        .unwrap_or(0);
    let (rows, cols) = (x.shape[r - 2], x.shape[r - 1]);
    let keep: Vec<bool> = (0..x.len())
        .map(|f| {
            let (i, j) = (((f / cols) % rows) as i64, (f % cols) as i64);
            if upper {
                j - i >= k
            } else {
                j - i <= k
            }
        })
        .collect();
    let mut out = x.clone();
    match std::sync::Arc::make_mut(&mut out.data) {
        Data::F32(v) => v.iter_mut().zip(&keep).for_each(|(a, &kp)| {
            if !kp {
                *a = 0.0
            }
        }),
        Data::I64(v) => v.iter_mut().zip(&keep).for_each(|(a, &kp)| {
            if !kp {
                *a = 0
            }
        }),
        Data::Bool(v) => v.iter_mut().zip(&keep).for_each(|(a, &kp)| {
            if !kp {
                *a = false
            }
        }),
        Data::Half(v) => v.iter_mut().zip(&keep).for_each(|(a, &kp)| {
            if !kp {
                *a = 0
            }
        }),
    }
    Ok(out)
}

pub fn nonzero(x: &Tensor) -> Tensor {
    let xs = strides(&x.shape);
    let nz: Vec<usize> = x
        .to_f32()
        .iter()
        .enumerate()
        .filter(|(_, &v)| v != 0.0)
        .map(|(i, _)| i)
        .collect();
    let r = x.shape.len();
    let mut out = vec![0i64; r * nz.len()];
    for (j, &flat) in nz.iter().enumerate() {
        for d in 0..r {
            out[d * nz.len() + j] = ((flat / xs[d]) % x.shape[d]) as i64;
        }
    }
    Tensor::i64(vec![r, nz.len()], out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    /// Top-k orders a NaN above every number (first of the largest, last of the smallest),
    /// NaNs and equal values by lower index first; along a static axis it is ONNX's TopK.
    #[test]
    fn top_k_puts_nans_above_every_number_and_ties_in_index_order() {
        let nan = f32::NAN;
        let x = Tensor::f32(vec![1, 6], vec![2.0, nan, 5.0, 2.0, nan, -1.0]);
        let ids = |largest, k| topk_along(&x, 1, k, largest).unwrap()[1].to_i64();
        assert_eq!(ids(true, 6), [1, 4, 2, 0, 3, 5]);
        assert_eq!(ids(false, 6), [5, 0, 3, 2, 1, 4]);
        let k = Tensor::i64(vec![1], vec![3]);
        let onnx = topk(&x, &k, -1, true).unwrap();
        assert_eq!(onnx[1].to_i64(), ids(true, 3));
        assert!(topk_along(&x, 1, 7, true).is_err());
        assert!(topk_along(&x, 2, 1, true).is_err());
    }

    #[test]
    fn sizes_from_data_are_checked_before_anything_is_allocated() {
        use super::super::shape::{constant_of_shape, expand, range, tile};
        let x = Tensor::f32(vec![1, 1], vec![1.0]);
        let big = Tensor::i64(vec![2], vec![1 << 32, 1 << 32]);
        let e = expand(&x, &big).unwrap_err();
        assert!(
            e.contains("Expand") && e.contains("allocation limit"),
            "{e}"
        );
        assert!(tile(&x, &big).unwrap_err().contains("Tile"));
        let cos = constant_of_shape(
            &Tensor::i64(vec![3], vec![100_000, 100_000, 10]),
            0.0,
            DType::F32,
        );
        assert!(cos.unwrap_err().contains("400000000000 bytes"));
        let f = |v: f32| Tensor::f32(vec![1], vec![v]);
        assert!(range(&f(0.0), &f(1e12), &f(1.0))
            .unwrap_err()
            .contains("Range"));
        assert!(range(&f(0.0), &f(f32::INFINITY), &f(1.0)).is_err());
        let i = |v: i64| Tensor::i64(vec![1], vec![v]);
        assert!(range(&i(0), &i(1 << 50), &i(1))
            .unwrap_err()
            .contains("Range"));
        let oh = one_hot(
            &Tensor::i64(vec![1 << 20], vec![0; 1 << 20]),
            &i(1 << 30),
            &Tensor::f32(vec![2], vec![0.0, 1.0]),
            -1,
        );
        assert!(oh.unwrap_err().contains("OneHot"));
        // Small ones still work.
        assert_eq!(range(&i(0), &i(5), &i(2)).unwrap().to_i64(), vec![0, 2, 4]);
    }

    #[test]
    fn hostile_operands_are_errors_or_wrap_never_panics() {
        // OneHot's values must be [off, on]: one element was an index past the end.
        let idx = Tensor::i64(vec![2], vec![0, 1]);
        let depth = Tensor::i64(vec![1], vec![3]);
        let err = one_hot(&idx, &depth, &Tensor::f32(vec![1], vec![1.0]), -1).unwrap_err();
        assert!(err.contains("2 elements"), "{err}");
        let ok = one_hot(&idx, &depth, &Tensor::f32(vec![2], vec![0.0, 1.0]), -1).unwrap();
        assert_eq!(ok.to_f32(), vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        // i64::MIN / -1 and % -1 trapped; they wrap as two's complement does.
        use crate::program::{BinaryFn, Op};
        let (a, b) = (
            Tensor::i64(vec![1], vec![i64::MIN]),
            Tensor::i64(vec![1], vec![-1]),
        );
        for f in [BinaryFn::Div, BinaryFn::Mod, BinaryFn::Pow] {
            let r = crate::kernels::execute(&Op::Binary { f }, &[Some(&a), Some(&b)], 1);
            assert!(r.is_ok(), "{f:?}: {r:?}");
        }
        // A transpose whose permutation repeats or leaves an axis is refused.
        let x = Tensor::f32(vec![2, 3], vec![0.0; 6]);
        assert!(super::super::shape::transpose(&x, &[1, 1]).is_err());
        assert!(super::super::shape::transpose(&x, &[0, 2]).is_err());
        assert_eq!(
            super::super::shape::transpose(&x, &[1, 0]).unwrap().shape,
            vec![3, 2]
        );
    }

    #[test]
    fn gather_and_scatter_elements_follow_the_onnx_examples() {
        // ONNX GatherElements, axis 1: data [[1,2],[3,4]], indices [[0,0],[1,0]] -> [[1,1],[4,3]].
        let data = Tensor::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let idx = Tensor::i64(vec![2, 2], vec![0, 0, 1, 0]);
        assert_eq!(
            gather_elements(&data, &idx, 1).unwrap().to_f32(),
            vec![1.0, 1.0, 4.0, 3.0]
        );
        // ONNX ScatterElements, axis 1: data [[1,2,3,4,5]], indices [[1,3]], updates [[1.1,2.1]]
        // -> [[1,1.1,3,2.1,5]]; with reduction add, the updates add to what is there.
        let data = Tensor::f32(vec![1, 5], vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        let idx = Tensor::i64(vec![1, 2], vec![1, 3]);
        let upd = Tensor::f32(vec![1, 2], vec![1.1, 2.1]);
        assert_eq!(
            scatter_elements(&data, &idx, &upd, 1, Reduction::None)
                .unwrap()
                .to_f32(),
            vec![1.0, 1.1, 3.0, 2.1, 5.0]
        );
        assert_eq!(
            scatter_elements(&data, &idx, &upd, 1, Reduction::Add)
                .unwrap()
                .to_f32(),
            vec![1.0, 3.1, 3.0, 6.1, 5.0]
        );
        // A negative index counts from the end; one out of range is an error.
        let neg = Tensor::i64(vec![1, 1], vec![-1]);
        assert_eq!(gather_elements(&data, &neg, 1).unwrap().to_f32(), vec![5.0]);
        assert!(gather_elements(&data, &Tensor::i64(vec![1, 1], vec![5]), 1).is_err());
    }
}
