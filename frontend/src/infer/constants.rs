//! Ops whose results are (or may be) known at compile time: Constant, Shape, Size, Range,
//! ConstantOfShape.

use super::{known_product, out, retype, run_time_rank, Ctx, Out, Outs, MAX_CONST};
use crate::dtype::DType;
use crate::graph::{AttrValue, Dim, Node, TensorData, TensorType};

pub(super) fn range(c: &Ctx) -> Outs {
    let s = c.x()?;
    // The count is known from the operands; the values are made only when small.
    let (value, n) = match (c.cints(0), c.cints(1), c.cints(2)) {
        (Some(a), Some(b), Some(c))
            if c.first().is_some_and(|&c| c != 0) && !a.is_empty() && !b.is_empty() =>
        {
            let (a, b, c) = (a[0], b[0], c[0]);
            let n = ((b as f64 - a as f64) / c as f64).ceil().max(0.0) as i64;
            let value = (n as u64 <= MAX_CONST as u64).then(|| {
                let v: Vec<i64> = (0..n).map(|i| a + i * c).collect();
                retype(TensorData::from_i64(vec![n], &v), s.dtype)
            });
            (value, Dim::Known(n))
        }
        _ => (None, Dim::Unknown),
    };
    Ok(vec![Some(Out {
        ty: TensorType {
            dtype: s.dtype,
            dims: vec![n],
        },
        value,
    })])
}

pub(super) fn shape(c: &Ctx) -> Outs {
    let x = c.x()?;
    let r = x.dims.len() as i64;
    let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clampi(c.int_attr("start", 0));
    let end = clampi(c.int_attr("end", r));
    let dims = &x.dims[start..end.max(start)];
    let value = dims
        .iter()
        .map(Dim::known)
        .collect::<Option<Vec<_>>>()
        .map(|v| TensorData::from_i64(vec![v.len() as i64], &v));
    Ok(vec![Some(Out {
        ty: TensorType::new(DType::I64, &[dims.len() as i64]),
        value,
    })])
}

pub(super) fn size(c: &Ctx) -> Outs {
    let n = known_product(c.x()?.dims.iter().map(Dim::known));
    Ok(vec![Some(Out {
        ty: TensorType::new(DType::I64, &[]),
        value: n.map(|n| TensorData::from_i64(vec![], &[n])),
    })])
}

pub(super) fn constant_of_shape(c: &Ctx) -> Outs {
    let fill = match c.node.attr("value") {
        Some(AttrValue::Tensor(t)) => t.clone(),
        _ => TensorData::from_f32(vec![1], &[0.0]),
    };
    let Some(shape) = c.cints(0) else {
        return Ok(vec![out(TensorType {
            dtype: fill.dtype,
            dims: vec![Dim::Unknown; run_time_rank(c.x()?)?],
        })]);
    };
    let n = known_product(shape.iter().map(|&d| Some(d))).unwrap_or(i64::MAX);
    let value = (fill.as_i64().is_some() && (0..=MAX_CONST as i64).contains(&n)).then(|| {
        let v = fill
            .as_i64()
            .unwrap_or_default()
            .first()
            .copied()
            .unwrap_or(0);
        retype(
            TensorData::from_i64(shape.clone(), &vec![v; n as usize]),
            fill.dtype,
        )
    });
    Ok(vec![Some(Out {
        ty: TensorType::new(fill.dtype, &shape),
        value,
    })])
}

pub(super) fn constant(c: &Ctx) -> Outs {
    let data = constant_value(c.node)?;
    Ok(vec![Some(Out {
        ty: data.ty(),
        value: Some(data),
    })])
}

/// The value of a Constant node, from whichever of its attributes holds it.
pub fn constant_value(node: &Node) -> Result<TensorData, String> {
    Ok(match node.attributes.first().map(|(n, v)| (n.as_str(), v)) {
        Some(("value", AttrValue::Tensor(t))) => t.clone(),
        Some(("value_float", AttrValue::Float(f))) => TensorData::from_f32(vec![], &[*f]),
        Some(("value_floats", AttrValue::Floats(f))) => TensorData::from_f32(vec![f.len() as i64], f),
        Some(("value_int", AttrValue::Int(i))) => TensorData::from_i64(vec![], &[*i]),
        Some(("value_ints", AttrValue::Ints(i))) => TensorData::from_i64(vec![i.len() as i64], i),
        _ => return Err("a Constant needs one of value, value_float(s), value_int(s); strings are not supported".into()),
    })
}
