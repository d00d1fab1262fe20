//! Ops that pick elements by index: gathers, top-k, one-hot, non-zero.

use super::{norm_axis, out, retype, size_axis, Ctx, Out, Outs};
use crate::dtype::DType;
use crate::graph::{Dim, TensorData, TensorType};

pub(super) fn gather(c: &Ctx) -> Outs {
    let (d, i) = (c.input(0)?, c.input(1)?);
    if d.dims.is_empty() {
        return Err("Gather of a scalar (its data must have rank 1 or more)".into());
    }
    let axis = norm_axis(c.int_attr("axis", 0), d.dims.len())?;
    let mut dims = d.dims[..axis].to_vec();
    dims.extend(i.dims.iter().cloned());
    dims.extend(d.dims[axis + 1..].iter().cloned());
    let value = match (c.cints(0), c.cints(1)) {
        (Some(dv), Some(iv)) if d.dims.len() == 1 => {
            let n = dv.len() as i64;
            let picked: Option<Vec<i64>> = iv
                .iter()
                .map(|&k| dv.get((if k < 0 { k + n } else { k }) as usize).copied())
                .collect();
            picked.and_then(|p| {
                dims.iter()
                    .map(Dim::known)
                    .collect::<Option<Vec<_>>>()
                    .map(|nd| retype(TensorData::from_i64(nd, &p), d.dtype))
            })
        }
        _ => None,
    };
    Ok(vec![Some(Out {
        ty: TensorType {
            dtype: d.dtype,
            dims,
        },
        value,
    })])
}

pub(super) fn gather_elements(c: &Ctx) -> Outs {
    Ok(vec![out(TensorType {
        dtype: c.x()?.dtype,
        dims: c.input(1)?.dims.clone(),
    })])
}

pub(super) fn gather_nd(c: &Ctx) -> Outs {
    let (d, i) = (c.input(0)?, c.input(1)?);
    let b = c.int_attr("batch_dims", 0) as usize;
    let k = i
        .dims
        .last()
        .and_then(Dim::known)
        .ok_or("GatherND's index depth must be static")? as usize;
    let mut dims = i.dims[..i.dims.len() - 1].to_vec();
    dims.extend(d.dims.get(b + k..).unwrap_or(&[]).iter().cloned());
    Ok(vec![out(TensorType {
        dtype: d.dtype,
        dims,
    })])
}

pub(super) fn top_k(c: &Ctx) -> Outs {
    let x = c.x()?;
    let axis = size_axis(c.int_attr("axis", -1), x.dims.len())?;
    let k = c.cints(1).and_then(|v| v.first().copied());
    let mut dims = x.dims.clone();
    dims[axis] = k.map(Dim::Known).unwrap_or(Dim::Unknown);
    Ok(vec![
        out(TensorType {
            dtype: x.dtype,
            dims: dims.clone(),
        }),
        out(TensorType {
            dtype: DType::I64,
            dims,
        }),
    ])
}

pub(super) fn one_hot(c: &Ctx) -> Outs {
    let i = c.x()?;
    let depth = c.cints(1).and_then(|v| v.first().copied());
    let vals = c.input(2)?;
    let rank = i.dims.len() + 1;
    let axis = norm_axis(c.int_attr("axis", -1), rank)?;
    let mut dims = i.dims.clone();
    dims.insert(axis, depth.map(Dim::Known).unwrap_or(Dim::Unknown));
    Ok(vec![out(TensorType {
        dtype: vals.dtype,
        dims,
    })])
}

pub(super) fn non_zero(c: &Ctx) -> Outs {
    Ok(vec![out(TensorType {
        dtype: DType::I64,
        dims: vec![Dim::Known(c.x()?.dims.len() as i64), Dim::Unknown],
    })])
}
