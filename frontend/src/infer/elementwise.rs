//! Elementwise ops: one result of the operands' broadcast shape (or the input's), and
//! integer shape arithmetic folded where the operands are known.

use super::{broadcast, known_product, out, retype, Ctx, Out, Outs};
use crate::dtype::DType;
use crate::graph::{Dim, TensorData, TensorType};

pub(super) fn identity(c: &Ctx) -> Outs {
    let v = c.cdata(0).cloned();
    Ok(vec![Some(Out {
        ty: c.x()?.clone(),
        value: v,
    })])
}

pub(super) fn norm_with_stats(c: &Ctx) -> Outs {
    let mut v = vec![out(c.x()?.clone()), c.stats()?];
    v.truncate(c.node.outputs.len());
    Ok(v)
}

pub(super) fn layer_norm(c: &Ctx) -> Outs {
    let ty = c.x()?.clone();
    let mut v = vec![out(ty.clone())];
    v.resize(c.node.outputs.len(), None);
    Ok(v)
}

pub(super) fn is_nan_or_inf(c: &Ctx) -> Outs {
    let mut ty = c.x()?.clone();
    ty.dtype = DType::Bool;
    Ok(vec![out(ty)])
}

pub(super) fn binary(c: &Ctx, op: &str) -> Outs {
    let a = c.input(0)?;
    let b = c.input(1)?;
    let dims = broadcast(&[&a.dims, &b.dims])?;
    let dtype = match op {
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" => DType::Bool,
        _ => a.dtype,
    };
    let value = match (
        c.cints(0),
        c.cints(1),
        dims.iter().map(Dim::known).collect::<Option<Vec<_>>>(),
    ) {
        (Some(av), Some(bv), Some(d)) => fold_binary(op, &av, &a.dims, &bv, &b.dims, &d)
            .map(|v| retype(TensorData::from_i64(d.clone(), &v), dtype)),
        _ => None,
    };
    Ok(vec![Some(Out {
        ty: TensorType { dtype, dims },
        value,
    })])
}

pub(super) fn select(c: &Ctx) -> Outs {
    let (cond, a, b) = (c.input(0)?, c.input(1)?, c.input(2)?);
    let dims = broadcast(&[&cond.dims, &a.dims, &b.dims])?;
    let value = match (c.cints(0), c.cints(1), c.cints(2)) {
        (Some(cv), Some(av), Some(bv)) if cond.dims == a.dims && a.dims == b.dims => {
            let v: Vec<i64> = cv
                .iter()
                .zip(av.iter().zip(&bv))
                .map(|(&c, (&a, &b))| if c != 0 { a } else { b })
                .collect();
            dims.iter()
                .map(Dim::known)
                .collect::<Option<Vec<_>>>()
                .map(|d| retype(TensorData::from_i64(d, &v), a.dtype))
        }
        _ => None,
    };
    Ok(vec![Some(Out {
        ty: TensorType {
            dtype: a.dtype,
            dims,
        },
        value,
    })])
}

pub(super) fn cast(c: &Ctx) -> Outs {
    let to = c.int_attr("to", 0);
    let dtype =
        DType::from_onnx(to as i32).ok_or_else(|| format!("Cast to unsupported type {to}"))?;
    let value = c
        .cdata(0)
        .and_then(|d| d.as_i64().map(|v| (d.dims.clone(), v)))
        .filter(|_| !dtype.is_float())
        .map(|(d, v)| retype(TensorData::from_i64(d, &v), dtype));
    Ok(vec![Some(Out {
        ty: TensorType {
            dtype,
            dims: c.x()?.dims.clone(),
        },
        value,
    })])
}

pub(super) fn cast_like(c: &Ctx) -> Outs {
    Ok(vec![out(TensorType {
        dtype: c.input(1)?.dtype,
        dims: c.x()?.dims.clone(),
    })])
}

fn fold_binary(
    op: &str,
    a: &[i64],
    ad: &[Dim],
    b: &[i64],
    bd: &[Dim],
    out: &[i64],
) -> Option<Vec<i64>> {
    let n = known_product(out.iter().map(|&d| Some(d)))?;
    let idx = |flat: i64, dims: &[Dim]| -> Option<usize> {
        // Broadcast index of `flat` (in `out`) into an operand of shape `dims`.
        let dims: Vec<i64> = dims.iter().map(Dim::known).collect::<Option<_>>()?;
        let off = out.len() - dims.len();
        let mut rem = flat;
        let mut pos = 0i64;
        let mut stride = 1i64;
        for i in (0..out.len()).rev() {
            let c = rem % out[i];
            rem /= out[i];
            if i >= off {
                let d = dims[i - off];
                pos += if d == 1 { 0 } else { c } * stride;
                stride *= d;
            }
        }
        Some(pos as usize)
    };
    (0..n)
        .map(|f| {
            let (x, y) = (*a.get(idx(f, ad)?)?, *b.get(idx(f, bd)?)?);
            Some(match op {
                // Shape arithmetic of a hostile model may overflow: wrap, never trap.
                "Add" => x.wrapping_add(y),
                "Sub" => x.wrapping_sub(y),
                "Mul" => x.wrapping_mul(y),
                "Div" => x.checked_div_euclid(y)?,
                "Max" => x.max(y),
                "Min" => x.min(y),
                "Equal" => (x == y) as i64,
                "Less" => (x < y) as i64,
                "Greater" => (x > y) as i64,
                "LessOrEqual" => (x <= y) as i64,
                "GreaterOrEqual" => (x >= y) as i64,
                "And" => (x != 0 && y != 0) as i64,
                "Or" => (x != 0 || y != 0) as i64,
                _ => return None,
            })
        })
        .collect()
}
