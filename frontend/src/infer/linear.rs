//! Contractions: MatMul, Gemm and Einsum.

use super::{broadcast, out, Ctx, Outs};
use crate::graph::{AttrValue, Dim, TensorType};
use std::collections::HashMap;

pub(super) fn matmul(c: &Ctx) -> Outs {
    let (a, b) = (c.input(0)?, c.input(1)?);
    Ok(vec![out(TensorType {
        dtype: a.dtype,
        dims: matmul_dims(&a.dims, &b.dims)?,
    })])
}

pub(super) fn gemm(c: &Ctx) -> Outs {
    let (a, b) = (c.input(0)?, c.input(1)?);
    if a.dims.len() != 2 || b.dims.len() != 2 {
        return Err("Gemm takes 2-D operands".into());
    }
    let m = if c.int_attr("transA", 0) != 0 {
        &a.dims[1]
    } else {
        &a.dims[0]
    };
    let n = if c.int_attr("transB", 0) != 0 {
        &b.dims[0]
    } else {
        &b.dims[1]
    };
    Ok(vec![out(TensorType {
        dtype: a.dtype,
        dims: vec![m.clone(), n.clone()],
    })])
}

pub(super) fn einsum(c: &Ctx) -> Outs {
    let Some(AttrValue::String(eq)) = c.node.attr("equation") else {
        return Err("Einsum needs an 'equation'".into());
    };
    let ins: Vec<&TensorType> = (0..c.node.inputs.len())
        .map(|i| c.input(i))
        .collect::<Result<_, _>>()?;
    Ok(vec![out(einsum_type(eq, &ins)?)])
}

/// Output dims of numpy matmul.
pub fn matmul_dims(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    if a.is_empty() || b.is_empty() {
        return Err("MatMul of a scalar".into());
    }
    let a2: Vec<Dim> = if a.len() == 1 {
        vec![Dim::Known(1), a[0].clone()]
    } else {
        a.to_vec()
    };
    let b2: Vec<Dim> = if b.len() == 1 {
        vec![b[0].clone(), Dim::Known(1)]
    } else {
        b.to_vec()
    };
    let (ka, kb) = (&a2[a2.len() - 1], &b2[b2.len() - 2]);
    if let (Some(x), Some(y)) = (ka.known(), kb.known()) {
        if x != y {
            return Err(format!("MatMul contraction sizes differ: {x} vs {y}"));
        }
    }
    let mut dims = broadcast(&[&a2[..a2.len() - 2], &b2[..b2.len() - 2]])?;
    if a.len() > 1 {
        dims.push(a2[a2.len() - 2].clone());
    }
    if b.len() > 1 {
        dims.push(b2[b2.len() - 1].clone());
    }
    Ok(dims)
}

fn einsum_type(eq: &str, ins: &[&TensorType]) -> Result<TensorType, String> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = eq
        .split_once("->")
        .ok_or("only explicit einsum equations (with '->') are supported")?;
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ins.len() || eq.contains("...") {
        return Err(format!(
            "einsum '{eq}': {} terms for {} inputs (ellipsis is not supported)",
            terms.len(),
            ins.len()
        ));
    }
    let mut sizes: HashMap<char, Dim> = HashMap::new();
    for (term, ty) in terms.iter().zip(ins) {
        if term.len() != ty.dims.len() {
            return Err(format!(
                "einsum term '{term}' does not match rank {}",
                ty.dims.len()
            ));
        }
        for (c, d) in term.chars().zip(&ty.dims) {
            let e = sizes.entry(c).or_insert(d.clone());
            if e.known().is_none() {
                *e = d.clone();
            }
        }
    }
    let dims = rhs
        .chars()
        .map(|c| {
            sizes
                .get(&c)
                .cloned()
                .ok_or(format!("einsum output index '{c}' is not in any input"))
        })
        .collect::<Result<_, _>>()?;
    Ok(TensorType {
        dtype: ins[0].dtype,
        dims,
    })
}
