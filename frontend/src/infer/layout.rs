//! Ops that rearrange or cut a tensor without computing: reshapes, transposes, concatenation,
//! splits, slices, expansion; a small constant's value is carried through.

use super::{
    broadcast, known, known_product, norm_axis, out, retype, run_time_rank, size_axis, Ctx, Out,
    Outs,
};
use crate::graph::{Dim, TensorData, TensorType};

pub(super) fn reshape(c: &Ctx) -> Outs {
    let x = c.x()?;
    let Some(shape) = c.cints(1) else {
        return Ok(vec![out(TensorType {
            dtype: x.dtype,
            dims: vec![Dim::Unknown; run_time_rank(c.input(1)?)?],
        })]);
    };
    let allow_zero = c.int_attr("allowzero", 0) != 0;
    let mut dims: Vec<Dim> = shape
        .iter()
        .enumerate()
        .map(|(i, &s)| match s {
            0 if !allow_zero => x.dims.get(i).cloned().unwrap_or(Dim::Unknown),
            -1 => Dim::Unknown,
            s => Dim::Known(s),
        })
        .collect();
    if let Some(pos) = shape.iter().position(|&s| s == -1) {
        let total = known_product(x.dims.iter().map(Dim::known));
        let rest = known_product(
            dims.iter()
                .enumerate()
                .filter(|(i, _)| *i != pos)
                .map(|(_, d)| d.known()),
        );
        if let (Some(total), Some(rest)) = (total, rest) {
            if rest == 0 || total % rest != 0 {
                return Err(format!("cannot reshape {} to {shape:?}", x.mlir()));
            }
            dims[pos] = Dim::Known(total / rest);
        }
    }
    Ok(vec![reshaped(c, dims)?])
}

pub(super) fn flatten(c: &Ctx) -> Outs {
    let x = c.x()?;
    let axis = c.int_attr("axis", 1);
    let rank = x.dims.len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(0..=rank).contains(&axis) {
        return Err(format!("Flatten axis {axis} out of range for rank {rank}"));
    }
    let axis = axis as usize;
    let p = |ds: &[Dim]| {
        known_product(ds.iter().map(Dim::known))
            .map(Dim::Known)
            .unwrap_or(Dim::Unknown)
    };
    Ok(vec![out(TensorType {
        dtype: x.dtype,
        dims: vec![p(&x.dims[..axis]), p(&x.dims[axis..])],
    })])
}

pub(super) fn transpose(c: &Ctx) -> Outs {
    let x = c.x()?;
    let perm = c
        .ints_attr("perm")
        .unwrap_or_else(|| (0..x.dims.len() as i64).rev().collect());
    if perm.len() != x.dims.len() {
        return Err(format!(
            "perm {perm:?} does not match rank {}",
            x.dims.len()
        ));
    }
    let dims = perm
        .iter()
        .map(|&p| {
            x.dims
                .get(p as usize)
                .cloned()
                .ok_or(format!("bad perm {perm:?}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(vec![out(TensorType {
        dtype: x.dtype,
        dims,
    })])
}

pub(super) fn squeeze(c: &Ctx) -> Outs {
    let x = c.x()?;
    let axes = c
        .ints_attr("axes")
        .or_else(|| if c.has(1) { c.cints(1) } else { None });
    let dims = match axes {
        Some(axes) => {
            let axes: Vec<usize> = axes
                .iter()
                .map(|&a| norm_axis(a, x.dims.len()))
                .collect::<Result<_, _>>()?;
            x.dims
                .iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, d)| d.clone())
                .collect()
        }
        None if c.has(1) => return Err("the squeeze axes are computed at run time".into()),
        None => x
            .dims
            .iter()
            .filter(|d| **d != Dim::Known(1))
            .cloned()
            .collect(),
    };
    Ok(vec![reshaped(c, dims)?])
}

pub(super) fn unsqueeze(c: &Ctx) -> Outs {
    let x = c.x()?;
    let axes = c
        .ints_attr("axes")
        .or_else(|| if c.has(1) { c.cints(1) } else { None })
        .ok_or("the unsqueeze axes are computed at run time")?;
    let rank = x.dims.len() + axes.len();
    let mut axes: Vec<usize> = axes
        .iter()
        .map(|&a| norm_axis(a, rank))
        .collect::<Result<_, _>>()?;
    axes.sort();
    if axes.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("Unsqueeze axes {axes:?} repeat an axis"));
    }
    let mut dims = x.dims.clone();
    for a in axes {
        dims.insert(a, Dim::Known(1));
    }
    Ok(vec![reshaped(c, dims)?])
}

/// The input as `dims` (same elements, another shape), its value carried where it is a
/// tracked constant and `dims` are known.
fn reshaped(c: &Ctx, dims: Vec<Dim>) -> Result<Option<Out>, String> {
    let x = c.x()?;
    let value = c.cdata(0).and_then(|d| {
        dims.iter()
            .map(Dim::known)
            .collect::<Option<Vec<_>>>()
            .map(|nd| TensorData {
                dims: nd,
                ..d.clone()
            })
    });
    Ok(Some(Out {
        ty: TensorType {
            dtype: x.dtype,
            dims,
        },
        value,
    }))
}

pub(super) fn concat(c: &Ctx) -> Outs {
    let first = c.x()?;
    let axis = size_axis(c.int_attr("axis", 0), first.dims.len())?;
    let mut dims = first.dims.clone();
    let mut total = Some(0i64);
    let mut values: Option<Vec<i64>> = Some(vec![]);
    for i in 0..c.node.inputs.len() {
        let ti = c.input(i)?;
        total = total
            .zip(ti.dims.get(axis).and_then(Dim::known))
            .and_then(|(a, b)| a.checked_add(b));
        values = match (values, c.cints(i)) {
            (Some(mut v), Some(c)) if first.dims.len() == 1 => {
                v.extend(c);
                Some(v)
            }
            _ => None,
        };
    }
    dims[axis] = total.map(Dim::Known).unwrap_or(Dim::Unknown);
    let value = values.map(|v| retype(TensorData::from_i64(vec![v.len() as i64], &v), first.dtype));
    Ok(vec![Some(Out {
        ty: TensorType {
            dtype: first.dtype,
            dims,
        },
        value,
    })])
}

pub(super) fn split(c: &Ctx) -> Outs {
    let x = c.x()?;
    let axis = size_axis(c.int_attr("axis", 0), x.dims.len())?;
    let n = c.node.outputs.len();
    let sizes: Vec<Dim> =
        match c
            .ints_attr("split")
            .or_else(|| if c.has(1) { c.cints(1) } else { None })
        {
            Some(s) => known(&s),
            None if c.has(1) => return Err("the split sizes are computed at run time".into()),
            None => match x.dims[axis].known() {
                Some(d) => {
                    let chunk = (d + n as i64 - 1) / n as i64;
                    (0..n)
                        .map(|i| Dim::Known(chunk.min(d - chunk * i as i64).max(0)))
                        .collect()
                }
                None => vec![Dim::Unknown; n],
            },
        };
    Ok(sizes
        .into_iter()
        .map(|s| {
            let mut dims = x.dims.clone();
            dims[axis] = s;
            out(TensorType {
                dtype: x.dtype,
                dims,
            })
        })
        .collect())
}

pub(super) fn slice(c: &Ctx) -> Outs {
    let x = c.x()?;
    let rank = x.dims.len();
    let (starts, ends) = match (c.cints(1), c.cints(2)) {
        (Some(s), Some(e)) => (s, e),
        _ => {
            // Run-time bounds: the rank stays, the sliced sizes are unknown.
            let axes = if c.has(3) {
                c.cints(3)
            } else {
                Some((0..rank as i64).collect())
            };
            let mut dims = x.dims.clone();
            match axes {
                Some(axes) => {
                    for a in axes {
                        dims[size_axis(a, rank)?] = Dim::Unknown;
                    }
                }
                None => dims.iter_mut().for_each(|d| *d = Dim::Unknown),
            }
            return Ok(vec![out(TensorType {
                dtype: x.dtype,
                dims,
            })]);
        }
    };
    let axes = if c.has(3) {
        c.cints(3)
            .ok_or("the slice axes are computed at run time")?
    } else {
        (0..starts.len() as i64).collect()
    };
    let steps = if c.has(4) {
        c.cints(4)
            .ok_or("the slice steps are computed at run time")?
    } else {
        vec![1; starts.len()]
    };
    let mut dims = x.dims.clone();
    let mut ranges = vec![];
    for (((&s, &e), &a), &st) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
        let a = size_axis(a, rank)?;
        if st == 0 {
            return Err("slice step 0".into());
        }
        if let Some(d) = x.dims[a].known() {
            let (lo, hi) = slice_bounds(s, e, st, d);
            let n = if st > 0 {
                (hi - lo + st - 1) / st
            } else {
                (lo - hi - st - 1) / (-st)
            }
            .max(0);
            dims[a] = Dim::Known(n);
            ranges.push((a, lo, st, n));
        } else {
            dims[a] = Dim::Unknown;
        }
    }
    let value = match (c.cints(0), rank) {
        (Some(v), 1) if ranges.len() == 1 => {
            let (_, lo, st, n) = ranges[0];
            let picked: Vec<i64> = (0..n).map(|i| v[(lo + i * st) as usize]).collect();
            Some(retype(TensorData::from_i64(vec![n], &picked), x.dtype))
        }
        _ => None,
    };
    Ok(vec![Some(Out {
        ty: TensorType {
            dtype: x.dtype,
            dims,
        },
        value,
    })])
}

pub(super) fn expand(c: &Ctx) -> Outs {
    let x = c.x()?;
    let target = match c.cints(1) {
        Some(shape) => known(&shape),
        None => vec![Dim::Unknown; run_time_rank(c.input(1)?)?.max(x.dims.len())],
    };
    Ok(vec![out(TensorType {
        dtype: x.dtype,
        dims: broadcast(&[&x.dims, &target])?,
    })])
}

pub(super) fn tile(c: &Ctx) -> Outs {
    let x = c.x()?;
    let Some(reps) = c.cints(1) else {
        return Ok(vec![out(TensorType {
            dtype: x.dtype,
            dims: vec![Dim::Unknown; x.dims.len()],
        })]);
    };
    let dims = x
        .dims
        .iter()
        .zip(&reps)
        .map(|(d, &r)| d.known().map(|d| Dim::Known(d * r)).unwrap_or(Dim::Unknown))
        .collect();
    Ok(vec![out(TensorType {
        dtype: x.dtype,
        dims,
    })])
}

fn slice_bounds(s: i64, e: i64, step: i64, d: i64) -> (i64, i64) {
    let fix = |v: i64, lo: i64, hi: i64| {
        let v = if v < 0 { v + d } else { v };
        v.clamp(lo, hi)
    };
    if step > 0 {
        (fix(s, 0, d), fix(e, 0, d))
    } else {
        (fix(s, -1, d - 1), fix(e, -1, d - 1))
    }
}
