//! Data movement: reshape, transpose, concat, split, slice, expand, tile, and the shape ops.

use super::{axis, broadcast_map, broadcast_shape, KResult};
use crate::tensor::{numel, strides, DType, Tensor};

/// The flat source index of every element of an output of `shape`, in row-major order, from
/// its multi-index (the one loop behind transpose, slice and tile).
fn gather_indices(shape: &[usize], source: impl Fn(&[usize]) -> usize) -> Vec<usize> {
    let n = numel(shape);
    let mut ctr = vec![0usize; shape.len()];
    let mut idx = Vec::with_capacity(n);
    for _ in 0..n {
        idx.push(source(&ctr));
        for d in (0..shape.len()).rev() {
            ctr[d] += 1;
            if ctr[d] < shape[d] {
                break;
            }
            ctr[d] = 0;
        }
    }
    idx
}

fn dims(t: &Tensor) -> Vec<i64> {
    t.to_i64()
}

pub fn reshape(x: &Tensor, shape: &Tensor, allowzero: bool) -> KResult<Tensor> {
    let want = dims(shape);
    let mut out: Vec<i64> = want
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            if d == 0 && !allowzero {
                x.shape.get(i).map_or(0, |&s| s as i64)
            } else {
                d
            }
        })
        .collect();
    let known: i64 = out.iter().filter(|&&d| d != -1).product();
    if let Some(p) = out.iter().position(|&d| d == -1) {
        if known == 0 || x.len() as i64 % known != 0 {
            return Err(format!("cannot reshape {:?} to {want:?}", x.shape));
        }
        out[p] = x.len() as i64 / known;
    }
    if out.iter().any(|&d| d < 0) || out.iter().product::<i64>() != x.len() as i64 {
        return Err(format!(
            "cannot reshape {:?} ({} elements) to {want:?}",
            x.shape,
            x.len()
        ));
    }
    Ok(Tensor {
        shape: out.iter().map(|&d| d as usize).collect(),
        ..x.clone()
    })
}

pub fn reshape_to(x: &Tensor, shape: &[usize]) -> KResult<Tensor> {
    if numel(shape) != x.len() {
        return Err(format!(
            "cannot reshape {:?} ({} elements) to {shape:?}",
            x.shape,
            x.len()
        ));
    }
    Ok(Tensor {
        shape: shape.to_vec(),
        ..x.clone()
    })
}

pub fn squeeze(x: &Tensor, axes: Option<&Tensor>) -> KResult<Tensor> {
    let shape: Vec<usize> = match axes {
        Some(a) => {
            let ax: Vec<usize> = dims(a)
                .iter()
                .map(|&v| axis(v, x.shape.len()))
                .collect::<KResult<_>>()?;
            if let Some(&bad) = ax.iter().find(|&&i| x.shape[i] != 1) {
                return Err(format!("Squeeze of axis {bad} of size {}", x.shape[bad]));
            }
            x.shape
                .iter()
                .enumerate()
                .filter(|(i, _)| !ax.contains(i))
                .map(|(_, &d)| d)
                .collect()
        }
        None => x.shape.iter().copied().filter(|&d| d != 1).collect(),
    };
    Ok(Tensor { shape, ..x.clone() })
}

pub fn unsqueeze(x: &Tensor, axes: &Tensor) -> KResult<Tensor> {
    let r = x.shape.len() + axes.len();
    let mut ax: Vec<usize> = dims(axes)
        .iter()
        .map(|&v| axis(v, r))
        .collect::<KResult<_>>()?;
    ax.sort();
    let mut shape = x.shape.clone();
    for a in ax {
        shape.insert(a, 1);
    }
    Ok(Tensor { shape, ..x.clone() })
}

pub fn flatten(x: &Tensor, ax: i64) -> KResult<Tensor> {
    let a = if ax < 0 {
        ax + x.shape.len() as i64
    } else {
        ax
    } as usize;
    if a > x.shape.len() {
        return Err(format!("Flatten axis {ax} for rank {}", x.shape.len()));
    }
    Ok(Tensor {
        shape: vec![numel(&x.shape[..a]), numel(&x.shape[a..])],
        ..x.clone()
    })
}

/// Whether `perm` holds each of 0..rank exactly once.
pub fn is_permutation(perm: &[usize], rank: usize) -> bool {
    let mut seen = vec![false; rank];
    perm.len() == rank
        && perm
            .iter()
            .all(|&p| p < rank && !std::mem::replace(&mut seen[p], true))
}

pub fn transpose(x: &Tensor, perm: &[usize]) -> KResult<Tensor> {
    if !is_permutation(perm, x.shape.len()) {
        return Err(format!(
            "Transpose perm {perm:?} is not a permutation of the {} axes of shape {:?}",
            x.shape.len(),
            x.shape
        ));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let ist = strides(&x.shape);
    let pst: Vec<usize> = perm.iter().map(|&p| ist[p]).collect();
    let idx = gather_indices(&shape, |ctr| ctr.iter().zip(&pst).map(|(c, s)| c * s).sum());
    Ok(x.pick(shape, idx.into_iter()))
}

pub fn concat(xs: &[&Tensor], ax: i64) -> KResult<Tensor> {
    let first = xs.first().ok_or("Concat of nothing")?;
    let a = axis(ax, first.shape.len())?;
    let mut shape = first.shape.clone();
    shape[a] = xs
        .iter()
        .map(|t| t.shape.get(a).copied().unwrap_or(0))
        .sum();
    let outer = numel(&first.shape[..a]);
    let mut parts = Vec::new();
    for t in xs {
        if t.shape.len() != first.shape.len()
            || t.shape
                .iter()
                .enumerate()
                .any(|(i, &d)| i != a && d != first.shape[i])
        {
            return Err(format!(
                "Concat of shapes {:?} and {:?} along axis {a}",
                first.shape, t.shape
            ));
        }
        parts.push((t, numel(&t.shape[a..])));
    }
    let mut f = Vec::new();
    let mut i = Vec::new();
    let mut b = Vec::new();
    for o in 0..outer {
        for (t, chunk) in &parts {
            match &*t.data {
                crate::tensor::Data::F32(v) => f.extend_from_slice(&v[o * chunk..(o + 1) * chunk]),
                crate::tensor::Data::I64(v) => i.extend_from_slice(&v[o * chunk..(o + 1) * chunk]),
                crate::tensor::Data::Bool(v) => b.extend_from_slice(&v[o * chunk..(o + 1) * chunk]),
                crate::tensor::Data::Half(v) => f.extend(crate::tensor::widen(
                    &v[o * chunk..(o + 1) * chunk],
                    t.dtype,
                )),
            }
        }
    }
    let data = match *first.data {
        crate::tensor::Data::F32(_) | crate::tensor::Data::Half(_) => {
            crate::tensor::Data::F32(f.into())
        }
        crate::tensor::Data::I64(_) => crate::tensor::Data::I64(i),
        crate::tensor::Data::Bool(_) => crate::tensor::Data::Bool(b),
    };
    Ok(Tensor {
        dtype: first.dtype,
        shape,
        data: std::sync::Arc::new(data),
    })
}

/// Picks `starts[k] + i*steps[k]` along each sliced axis.
fn take(x: &Tensor, ranges: &[(usize, i64, i64, usize)]) -> Tensor {
    let mut shape = x.shape.clone();
    let mut start = vec![0i64; shape.len()];
    let mut step = vec![1i64; shape.len()];
    for &(a, s, st, n) in ranges {
        shape[a] = n;
        start[a] = s;
        step[a] = st;
    }
    let ist = strides(&x.shape);
    // Contiguous runs: the trailing axes taken whole, and the axis before them if its step is
    // 1, are copied as one run (a slice of a weight never builds an index per element).
    let rank = shape.len();
    let mut split = rank;
    while split > 0
        && shape[split - 1] == x.shape[split - 1]
        && start[split - 1] == 0
        && step[split - 1] == 1
    {
        split -= 1;
    }
    if split > 0 && step[split - 1] == 1 {
        split -= 1;
    }
    let run = numel(&shape[split..]);
    let starts = gather_indices(&shape[..split], |ctr| {
        (0..ctr.len())
            .map(|d| ((start[d] + ctr[d] as i64 * step[d]) as usize) * ist[d])
            .sum::<usize>()
            + if split < rank {
                start[split] as usize * ist[split]
            } else {
                0
            }
    });
    x.pick_runs(shape, &starts, run)
}

pub fn slice(
    x: &Tensor,
    starts: &Tensor,
    ends: &Tensor,
    axes: Option<&Tensor>,
    steps: Option<&Tensor>,
) -> KResult<Tensor> {
    let (s, e) = (dims(starts), dims(ends));
    let ax = axes.map(dims);
    let st = steps.map(dims);
    let ranges = slice_ranges(&x.shape, (&s, &e), ax.as_deref(), st.as_deref())?;
    Ok(take(x, &ranges))
}

/// ONNX Slice's bounds over a tensor of `shape` as one range per sliced axis: (axis, first
/// index, step, count), indices counted from the end and out of range clamped as ONNX says.
pub fn slice_ranges(
    shape: &[usize],
    (s, e): (&[i64], &[i64]),
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> KResult<Vec<(usize, i64, i64, usize)>> {
    let ax = axes.map_or_else(|| (0..s.len() as i64).collect(), <[i64]>::to_vec);
    let st = steps.map_or_else(|| vec![1; s.len()], <[i64]>::to_vec);
    if e.len() != s.len() || ax.len() != s.len() || st.len() != s.len() {
        return Err("Slice starts, ends, axes and steps differ in length".into());
    }
    let mut ranges = Vec::new();
    for k in 0..s.len() {
        let a = axis(ax[k], shape.len())?;
        let d = shape[a] as i64;
        let step = st[k];
        if step == 0 {
            return Err("Slice step 0".into());
        }
        let fix = |v: i64, lo: i64, hi: i64| (if v < 0 { v + d } else { v }).clamp(lo, hi);
        let (lo, hi) = if step > 0 {
            (fix(s[k], 0, d), fix(e[k], 0, d))
        } else {
            (fix(s[k], -1, d - 1), fix(e[k], -1, d - 1))
        };
        let n = if step > 0 {
            (hi - lo + step - 1) / step
        } else {
            (lo - hi + (-step) - 1) / (-step)
        }
        .max(0);
        ranges.push((a, lo, step, n as usize));
    }
    Ok(ranges)
}

/// The slice of `x` at `offsets` of `sizes` elements every `strides`, per axis.
pub fn extract_slice(
    x: &Tensor,
    offsets: &[usize],
    sizes: &[usize],
    strides: &[usize],
) -> KResult<Tensor> {
    let rank = x.shape.len();
    if offsets.len() != rank || sizes.len() != rank || strides.len() != rank {
        return Err(format!(
            "a slice of {rank} offsets, sizes and strides takes a tensor of rank {rank}, not {:?}",
            x.shape
        ));
    }
    let mut ranges = Vec::with_capacity(rank);
    for a in 0..rank {
        let (o, n, t) = (offsets[a], sizes[a], strides[a]);
        // The last index read (checked: the numbers may come from a file).
        let last = match n {
            0 => Some(o.min(x.shape[a])),
            _ => (n - 1).checked_mul(t).and_then(|v| v.checked_add(o)),
        };
        let within = last.is_some_and(|l| l < x.shape[a] || (n == 0 && l == o));
        if t == 0 || !within {
            return Err(format!(
                "a slice of {n} elements from {o} every {t} along axis {a} of {:?}",
                x.shape
            ));
        }
        ranges.push((a, o as i64, t as i64, n));
    }
    Ok(take(x, &ranges))
}

pub fn split(x: &Tensor, sizes: Option<&Tensor>, ax: i64, n: usize) -> KResult<Vec<Tensor>> {
    let a = axis(ax, x.shape.len())?;
    let d = x.shape[a];
    let sizes: Vec<usize> = match sizes {
        Some(s) => dims(s).iter().map(|&v| v.max(0) as usize).collect(),
        None => {
            let chunk = d.div_ceil(n.max(1));
            (0..n)
                .map(|i| chunk.min(d.saturating_sub(chunk * i)))
                .collect()
        }
    };
    if sizes.iter().sum::<usize>() != d || sizes.len() != n {
        return Err(format!("Split of size {d} into {sizes:?} for {n} outputs"));
    }
    let mut off = 0;
    Ok(sizes
        .iter()
        .map(|&sz| {
            let t = take(x, &[(a, off as i64, 1, sz)]);
            off += sz;
            t
        })
        .collect())
}

pub fn expand(x: &Tensor, shape: &Tensor) -> KResult<Tensor> {
    let target: Vec<usize> = dims(shape).iter().map(|&d| d.max(0) as usize).collect();
    let out = broadcast_shape(&x.shape, &target)?;
    super::limit::sized("Expand", &out, x.dtype.size())?;
    let idx = broadcast_map(&x.shape, &out);
    Ok(x.pick(out, idx.into_iter()))
}

/// `x` broadcast to `shape` (numpy's rules; `shape` is the result's).
pub fn expand_to(x: &Tensor, shape: &[usize]) -> KResult<Tensor> {
    let out = broadcast_shape(&x.shape, shape)?;
    if out != shape {
        return Err(format!("cannot expand {:?} to {shape:?}", x.shape));
    }
    super::limit::sized("Expand", &out, x.dtype.size())?;
    let idx = broadcast_map(&x.shape, &out);
    Ok(x.pick(out, idx.into_iter()))
}

pub fn tile(x: &Tensor, reps: &Tensor) -> KResult<Tensor> {
    let r = dims(reps);
    if r.len() != x.shape.len() {
        return Err(format!("Tile repeats {r:?} for shape {:?}", x.shape));
    }
    let shape: Vec<usize> = x
        .shape
        .iter()
        .zip(&r)
        .map(|(&d, &k)| d.checked_mul(k.max(0) as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("Tile of {:?} by {r:?}: the size overflows", x.shape))?;
    super::limit::sized("Tile", &shape, x.dtype.size())?;
    let ist = strides(&x.shape);
    let idx = gather_indices(&shape, |ctr| {
        (0..ctr.len()).map(|d| (ctr[d] % x.shape[d]) * ist[d]).sum()
    });
    Ok(x.pick(shape, idx.into_iter()))
}

pub fn shape_of(x: &Tensor, start: i64, end: Option<i64>) -> Tensor {
    shape_values(&x.shape, start, end)
}

/// ONNX Shape of a tensor of `shape` (its values are never needed).
pub fn shape_values(shape: &[usize], start: i64, end: Option<i64>) -> Tensor {
    let r = shape.len() as i64;
    let c = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (s, e) = (c(start), c(end.unwrap_or(r)));
    let v: Vec<i64> = shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
    Tensor::i64(vec![v.len()], v)
}

pub fn constant_of_shape(shape: &Tensor, value: f64, dtype: DType) -> KResult<Tensor> {
    let s: Vec<usize> = dims(shape).iter().map(|&d| d.max(0) as usize).collect();
    let n = super::limit::sized("ConstantOfShape", &s, dtype.size())?;
    Ok(if dtype == DType::Bool {
        Tensor::bool(s, vec![value != 0.0; n])
    } else if dtype.is_float() {
        Tensor::f32(s, vec![value as f32; n]).with_dtype(dtype)
    } else {
        Tensor::i64(s, vec![value as i64; n]).with_dtype(dtype)
    })
}

pub fn range(start: &Tensor, limit: &Tensor, delta: &Tensor) -> KResult<Tensor> {
    if start.dtype.is_float() {
        let (s, l, d) = (start.to_f32()[0], limit.to_f32()[0], delta.to_f32()[0]);
        let steps = ((l - s) as f64 / d as f64).ceil();
        if !steps.is_finite() {
            return Err(format!("Range({s}, {l}, {d}) has no finite length"));
        }
        let n = super::limit::sized("Range", &[steps.max(0.0) as usize], 4)?;
        return Ok(
            Tensor::f32(vec![n], (0..n).map(|i| s + i as f32 * d).collect())
                .with_dtype(start.dtype),
        );
    }
    let (s, l, d) = (start.to_i64()[0], limit.to_i64()[0], delta.to_i64()[0]);
    if d == 0 {
        return Err("Range with delta 0".into());
    }
    let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
    let n = super::limit::sized("Range", &[n], 8)?;
    Ok(Tensor::i64(vec![n], (0..n as i64).map(|i| s + i * d).collect()).with_dtype(start.dtype))
}

/// Piece `index` of `parts` equal pieces of axis `axis`.
pub fn token_slice(x: &Tensor, axis: usize, index: usize, parts: usize) -> KResult<Tensor> {
    let d = *x.shape.get(axis).ok_or("token slice axis out of range")?;
    if parts == 0 || d % parts != 0 || index >= parts {
        return Err(format!(
            "cannot take piece {index} of {parts} of a dimension of {d}"
        ));
    }
    let n = d / parts;
    Ok(take(x, &[(axis, (index * n) as i64, 1, n)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_to_a_static_shape_is_expand_by_that_shape() {
        let x = Tensor::f32(vec![2, 1, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let by_operand = expand(&x, &Tensor::i64(vec![3], vec![2, 2, 3])).unwrap();
        let to = expand_to(&x, &[2, 2, 3]).unwrap();
        assert_eq!(to.shape, [2, 2, 3]);
        assert_eq!(to.to_f32(), by_operand.to_f32());
        // A shape the operand does not broadcast to is refused.
        assert!(expand_to(&x, &[2, 2, 4]).is_err());
        assert!(expand_to(&x, &[2, 3]).is_err());
    }

    #[test]
    fn a_static_slice_is_the_onnx_slice_of_its_bounds() {
        let x = Tensor::f32(vec![3, 4], (0..12).map(|v| v as f32).collect());
        let ints = |v: &[i64]| Tensor::i64(vec![v.len()], v.to_vec());
        // Rows 1.., columns -3..4 every 2: columns 1 and 3.
        let onnx = slice(
            &x,
            &ints(&[1, -3]),
            &ints(&[9, 4]),
            None,
            Some(&ints(&[1, 2])),
        );
        let ranges = slice_ranges(&x.shape, (&[1, -3], &[9, 4]), None, Some(&[1, 2])).unwrap();
        assert_eq!(ranges, [(0, 1, 1, 2), (1, 1, 2, 2)]);
        let extracted = extract_slice(&x, &[1, 1], &[2, 2], &[1, 2]).unwrap();
        assert_eq!(extracted.to_f32(), onnx.unwrap().to_f32());
        assert_eq!(extracted.to_f32(), [5.0, 7.0, 9.0, 11.0]);
        // Past the end, a zero stride, or a count that overflows: refused, not read.
        assert!(extract_slice(&x, &[2, 0], &[2, 4], &[1, 1]).is_err());
        assert!(extract_slice(&x, &[0, 0], &[3, 4], &[0, 1]).is_err());
        assert!(extract_slice(&x, &[0, 0], &[usize::MAX, 4], &[2, 1]).is_err());
        assert_eq!(
            extract_slice(&x, &[3, 0], &[0, 4], &[1, 1]).unwrap().len(),
            0
        );
    }
}
