//! Booleans and casts on the GPU. A boolean is held on the device as an f32 0 or 1 (as every
//! float is held as f32), so the attention masks of exported LMs (`IsNaN` -> `equal` + `not`,
//! `where`, comparisons, `and`/`or`) and the casts between float widths run as generated
//! kernels instead of round trips through the host. Each is exact: a comparison or logical op
//! writes 0 or 1, `where` selects, a cast to bf16 or f16 rounds to nearest even as the CPU
//! backend's does, and a cast to f32 or between booleans and floats moves the value as it is.

use super::kernel_gen::{broadcast_offset, kernel, memref, prologue, static_shape};
use super::template::specialise;
use ppmoe_runtime::program::{BinaryFn, Buffer, Op, UnaryFn};
use ppmoe_runtime::DType;
use std::fmt::Write;

const LOGICAL: &str = include_str!("templates/math/logical.mlir");

/// A generated kernel: (name, text, threads).
type Generated = (String, String, usize);

/// The kernel of a boolean or casting instruction: `bufs` its operands, `out` its one result;
/// None for the others (and for integer operands, which stay on the host).
pub(super) fn generate(op: &Op, name: &str, bufs: &[&Buffer], out: &Buffer) -> Option<Generated> {
    let (operands, expr) = scalar(op, bufs, out)?;
    let out_shape = static_shape(out)?;
    let n: usize = out_shape.iter().product();
    let shapes: Vec<Vec<usize>> = bufs
        .iter()
        .map(|b| static_shape(b))
        .collect::<Option<_>>()?;
    let mut body = String::new();
    prologue(&mut body, n);
    for (k, (shape, v)) in shapes.iter().zip(&operands).enumerate() {
        let off = broadcast_offset(&mut body, &format!("p{k}"), shape, &out_shape);
        let _ = writeln!(
            body,
            "        %{v} = memref.load %a{k}[{off}] : {}",
            memref(shape)
        );
    }
    body.push_str(&expr);
    let _ = writeln!(
        body,
        "        memref.store %r, %a{}[%i] : {}",
        bufs.len(),
        memref(&out_shape)
    );
    let mut params: Vec<String> = shapes.iter().map(|s| memref(s)).collect();
    params.push(memref(&out_shape));
    Some((name.to_string(), kernel(name, &params, &body), n))
}

/// The scalar form of a boolean or casting instruction: the names its operands are read
/// under (in operand order) and the text that computes `%r` from them; None for the others.
pub(super) fn scalar(
    op: &Op,
    bufs: &[&Buffer],
    out: &Buffer,
) -> Option<(Vec<&'static str>, String)> {
    if !bufs
        .iter()
        .chain([&out])
        .all(|b| b.dtype.on_device_as_f32())
    {
        return None;
    }
    let is_bool = |b: &Buffer| b.dtype == DType::Bool;
    Some(match op {
        Op::Unary { f: UnaryFn::Not } if is_bool(bufs.first()?) && is_bool(out) => (
            vec!["x"],
            "        %one = arith.constant 1.0 : f32\n        %r = arith.subf %one, %x : f32\n"
                .to_string(),
        ),
        Op::Binary { f } if bufs.len() == 2 && is_bool(out) => (
            vec!["x", "y"],
            binary_expr(*f, bufs.iter().all(|b| is_bool(b)))?,
        ),
        Op::Where if bufs.len() == 3 && is_bool(bufs[0]) => (
            vec!["c", "x", "y"],
            "        %z = arith.constant 0.0 : f32\n        %t = arith.cmpf une, %c, %z : f32\n        %r = arith.select %t, %x, %y : f32\n".to_string(),
        ),
        Op::Cast { to } if bufs.len() == 1 => (vec!["x"], cast_expr(bufs[0].dtype, *to)?),
        _ => return None,
    })
}

/// A comparison of floats (or of booleans), or a logical op of booleans, from `%x`, `%y` into
/// `%r` as 0 or 1. Comparisons are ordered: NaN compares unequal to everything, itself
/// included, as IEEE and PyTorch have it.
fn binary_expr(f: BinaryFn, both_bool: bool) -> Option<String> {
    let as_f32 = "        %r = arith.uitofp %t : i1 to f32\n";
    let compare = |pred: &str| format!("        %t = arith.cmpf {pred}, %x, %y : f32\n{as_f32}");
    let logical = |op: &str| specialise(LOGICAL, &[("op", &op)]);
    Some(match f {
        BinaryFn::Equal => compare("oeq"),
        BinaryFn::Less => compare("olt"),
        BinaryFn::Greater => compare("ogt"),
        BinaryFn::LessOrEqual => compare("ole"),
        BinaryFn::GreaterOrEqual => compare("oge"),
        BinaryFn::And if both_bool => logical("arith.andi"),
        BinaryFn::Or if both_bool => logical("arith.ori"),
        BinaryFn::Xor if both_bool => logical("arith.xori"),
        _ => return None,
    })
}

/// A cast from `%x` (held as f32) into `%r`: rounded through the narrower float, tested
/// against zero for a boolean, else the value as it is.
fn cast_expr(from: DType, to: DType) -> Option<String> {
    if !from.on_device_as_f32() || !to.on_device_as_f32() {
        return None;
    }
    Some(match to {
        DType::BF16 | DType::F16 if from != DType::Bool => {
            let t = if to == DType::BF16 { "bf16" } else { "f16" };
            format!("        %h = arith.truncf %x : f32 to {t}\n        %r = arith.extf %h : {t} to f32\n")
        }
        // NaN is true, as C's and ONNX's casts have it (une: unordered or unequal).
        DType::Bool if from != DType::Bool => {
            "        %z = arith.constant 0.0 : f32\n        %t = arith.cmpf une, %x, %z : f32\n        %r = arith.uitofp %t : i1 to f32\n".to_string()
        }
        // f32 or f64 (held as f32), or a boolean as a float: the value as it is (x 1 is exact).
        _ => "        %one = arith.constant 1.0 : f32\n        %r = arith.mulf %x, %one : f32\n".to_string(),
    })
}
