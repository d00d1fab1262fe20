//! Reductions and arg-reductions over axes from attributes or constant operands.

use super::{norm_axis, out, Ctx, Outs};
use crate::dtype::DType;
use crate::graph::{Dim, TensorType};

pub(super) fn reduce(c: &Ctx, op: &str) -> Outs {
    let x = c.x()?;
    let rank = x.dims.len();
    let axes: Vec<usize> = if op.starts_with("Arg") {
        vec![norm_axis(c.int_attr("axis", 0), rank)?]
    } else {
        let axes = c
            .ints_attr("axes")
            .or_else(|| if c.has(1) { c.cints(1) } else { Some(vec![]) });
        let axes = axes.ok_or("the reduction axes are computed at run time")?;
        if axes.is_empty() {
            if c.int_attr("noop_with_empty_axes", 0) != 0 {
                vec![]
            } else {
                (0..rank).collect()
            }
        } else {
            axes.iter()
                .map(|&a| norm_axis(a, rank))
                .collect::<Result<_, _>>()?
        }
    };
    let keep = c.int_attr("keepdims", 1) != 0;
    let mut dims = Vec::new();
    for (i, d) in x.dims.iter().enumerate() {
        if axes.contains(&i) {
            if keep {
                dims.push(Dim::Known(1));
            }
        } else {
            dims.push(d.clone());
        }
    }
    let dtype = if op.starts_with("Arg") {
        DType::I64
    } else {
        x.dtype
    };
    Ok(vec![out(TensorType { dtype, dims })])
}
