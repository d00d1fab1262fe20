//! `TopK` as a generated kernel (gpt-oss's block returns its router's top-k scores through
//! one, beside the raised routing): one thread per row along the axis, k passes over the row,
//! each taking the best element that comes after the previous pick in the order the CPU
//! backend sorts by (value, largest or smallest first; equal values by lower index first), so
//! the results are the CPU backend's for any finite input (the CPU backend, and the IR's
//! `core::top_k` form, also order a NaN above every number; this kernel's passes compare
//! with ordered predicates, under which a NaN is never after nor better than anything). Values as f32; indices as f32 too,
//! as the device holds integers (exact: the axis is at most 2^24 long), read back as integers
//! by whatever reads them on the host.

use super::kernel_gen::{kernel, memref, operand_buffers, prologue, static_shape};
use super::template::specialise;
use ppmoe_runtime::program::{exact_in_f32, Op, Program};
use ppmoe_runtime::Tensor;

/// The top-k kernel's k picks, each the best value after the previous pick.
const TOP_K_PICKS: &str = include_str!("templates/top_k_picks.mlir");

/// The top-k kernel's constants and its row's bounds.
const TOP_K_SETUP: &str = include_str!("templates/top_k_setup.mlir");

/// The kernel of instruction `idx` if it is a `TopK` over a float input of static shape with a
/// constant k; its name, text and thread count.
pub(super) fn generate(
    p: &Program,
    idx: usize,
    constant: &dyn Fn(Option<usize>) -> Option<Tensor>,
) -> Option<(String, String, usize)> {
    let ins = &p.instructions[idx];
    let (axis, largest) = match ins.op {
        Op::TopK { axis, largest } => (axis, largest),
        Op::TopKAxis { axis, largest, .. } => (i64::try_from(axis).ok()?, largest),
        _ => return None,
    };
    let bufs = operand_buffers(p, ins);
    let x = static_shape(bufs.first()?)?;
    if !bufs[0].dtype.is_float() || ins.outputs.len() != 2 {
        return None;
    }
    let k = match ins.op {
        Op::TopKAxis { k, .. } => k,
        _ => usize::try_from(*constant(*ins.inputs.get(1)?)?.to_i64().first()?).ok()?,
    };
    let rank = x.len() as i64;
    let a = usize::try_from(if axis < 0 { axis + rank } else { axis }).ok()?;
    let len = *x.get(a)?;
    if k == 0 || k > len || !exact_in_f32(len as i64) {
        return None;
    }
    let outer: usize = x[..a].iter().product();
    let inner: usize = x[a + 1..].iter().product();
    let rows = outer.checked_mul(inner)?;
    let name = format!("k{idx}_top_k");
    let mut out = x.clone();
    out[a] = k;
    let mut body = String::new();
    prologue(&mut body, rows);
    let sizes = (x.iter().product(), out.iter().product());
    body.push_str(&row_body((len, inner, k), largest, sizes));
    let params = [memref(&x), memref(&out), memref(&out)];
    Some((name.clone(), kernel(&name, &params, &body), rows))
}

/// The k passes over row `%i` (see the module's comment): `%a0` the input, `%a1` the values,
/// `%a2` the indices.
fn row_body(
    (len, inner, k): (usize, usize, usize),
    largest: bool,
    (n_in, n_out): (usize, usize),
) -> String {
    // "Comes after" the previous pick: further from the top by value, or equal and later.
    let (after, better) = if largest {
        ("olt", "ogt")
    } else {
        ("ogt", "olt")
    };
    let mut b = String::new();
    b.push_str(&specialise(
        TOP_K_SETUP,
        &[
            ("inner", &inner),
            ("len", &len),
            ("k", &k),
            ("len_inner", &(len * inner)),
            ("k_inner", &(k * inner)),
        ],
    ));
    b.push_str(&specialise(
        TOP_K_PICKS,
        &[
            ("input", &n_in),
            ("after", &after),
            ("better", &better),
            ("output", &n_out),
            ("output2", &n_out),
        ],
    ));
    b
}

/// A row's top-2 of 8 values: for the template test.
#[cfg(test)]
pub(super) fn row_body_for_test() -> String {
    row_body((8, 1, 2), true, (0, 1))
}
