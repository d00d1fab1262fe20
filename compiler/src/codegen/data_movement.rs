//! Kernels that move data with static shapes and constant parameters (transpose, slice, a
//! token slice, expand, concat) and two kinds of arithmetic the same walk serves (a last-axis
//! reduction, a power by 2 or 0.5): one thread per output element, which finds its source.
//!
//!   gpu.func @k7_transpose(%a0: memref<2x3xf32>, %a1: memref<3x2xf32>) kernel {
//!     %i = <thread>; %c0, %c1 = <coordinates of %i in 3x2>; a1[%i] = a0[%c1 * 3 + %c0]

use super::kernel_gen::{
    broadcast_offset, kernel, memref, pow_expr, prologue, reduce_rows, static_shape,
};
use super::template::specialise;
use ppmoe_runtime::program::{BinaryFn, Instruction, Op, Program};
use ppmoe_runtime::Tensor;
use std::fmt::Write;

const CONCAT_PART: &str = include_str!("templates/data/concat_part.mlir");
const COORDINATE: &str = include_str!("templates/data/coordinate.mlir");

/// A compile-time constant operand's value, where it is one.
type Constant<'a> = &'a dyn Fn(Option<usize>) -> Option<Tensor>;

/// Instruction `idx` as a data-movement kernel (name, MLIR text, threads), where it is one.
pub(super) fn data_movement(
    p: &Program,
    idx: usize,
    constant: Constant,
) -> Option<(String, String, usize)> {
    let ins = &p.instructions[idx];
    let shapes: Vec<Vec<usize>> = ins
        .inputs
        .iter()
        .flatten()
        .map(|&b| static_shape(&p.buffers[b]))
        .collect::<Option<_>>()?;
    let out = static_shape(&p.buffers[*ins.outputs.first()?])?;
    if ins.outputs.len() != 1 || !moves_device_values(p, ins, constant)? {
        return None;
    }
    let n: usize = out.iter().product();
    let x = &shapes[0];
    let name = format!("k{idx}_{}", ins.op.name());
    let operand = |i: usize| constant(ins.inputs.get(i).copied().flatten()).map(|t| t.to_i64());
    // A reduction over the last axis alone (given as an operand, or static) is one of rows.
    let reduction = match &ins.op {
        Op::Reduce {
            f,
            keepdims: _,
            noop_with_empty_axes: false,
        } => Some((*f, operand(1)?)),
        Op::ReduceAxes { f, axes, .. } => Some((*f, axes.iter().map(|&a| a as i64).collect())),
        _ => None,
    };
    if let Some((f, axes)) = reduction {
        let last = x.len() as i64 - 1;
        if axes.len() != 1 || !(axes[0] == last || axes[0] == -1) {
            return None;
        }
        return reduce_rows(&name, x, &out, f);
    }
    let mut b = String::new();
    prologue(&mut b, n);
    let params = match &ins.op {
        Op::Transpose { perm } => transpose(&mut b, x, &out, perm),
        Op::Slice => {
            let starts = operand(1)?;
            let axes = match ins.inputs.get(3).copied().flatten() {
                Some(_) => operand(3)?,
                None => (0..starts.len() as i64).collect(),
            };
            let steps = match ins.inputs.get(4).copied().flatten() {
                Some(_) => operand(4)?,
                None => vec![1; starts.len()],
            };
            slice(&mut b, x, &out, (&starts, &axes, &steps))?
        }
        Op::ExtractSlice {
            offsets, strides, ..
        } => {
            // Only the axes it slices (the rest read as they are).
            let sliced: Vec<usize> = (0..x.len())
                .filter(|&a| offsets[a] != 0 || strides[a] != 1 || out[a] != x[a])
                .collect();
            let int = |v: usize| i64::try_from(v).ok();
            let starts = sliced
                .iter()
                .map(|&a| int(offsets[a]))
                .collect::<Option<Vec<_>>>()?;
            let axes = sliced.iter().map(|&a| int(a)).collect::<Option<Vec<_>>>()?;
            let steps = sliced
                .iter()
                .map(|&a| int(strides[a]))
                .collect::<Option<Vec<_>>>()?;
            slice(&mut b, x, &out, (&starts, &axes, &steps))?
        }
        Op::TokenSlice { axis, index, .. } => token_slice(&mut b, x, &out, *axis, *index)?,
        Op::Expand | Op::ExpandTo { .. } => {
            let off = broadcast_offset(&mut b, "e", x, &out);
            copy_element(&mut b, &off, x, &out)
        }
        Op::Concat { axis } => concat(&mut b, &shapes, &out, *axis),
        Op::Binary { f: BinaryFn::Pow } => {
            let c = constant(ins.inputs.get(1).copied().flatten())
                .filter(|t| t.len() == 1)?
                .to_f32()[0];
            power(&mut b, &shapes, &out, c)?
        }
        _ => return None,
    };
    Some((name.clone(), kernel(&name, &params, &b), n))
}

/// Whether the instruction's values are f32 on the device in and out; or, for a concat of
/// integers exact in f32 (the routing's expert ids, small constants: the padding of tokens
/// over tp), the f32 values the device holds. None where it has no first operand.
fn moves_device_values(p: &Program, ins: &Instruction, constant: Constant) -> Option<bool> {
    let float = |b: usize| p.buffers[b].dtype.on_device_as_f32();
    Some(match ins.op {
        Op::Concat { .. } if !float(ins.outputs[0]) => {
            let inputs: Vec<usize> = ins.inputs.iter().flatten().copied().collect();
            inputs.iter().any(|&b| route_ids(p, b))
                && inputs.iter().all(|&b| exact_ints(p, b, constant))
        }
        _ => float(ins.outputs[0]) && float(ins.inputs[0]?),
    })
}

/// Output axis j is input axis perm[j].
fn transpose(b: &mut String, x: &[usize], out: &[usize], perm: &[usize]) -> Vec<String> {
    let c = coords(b, out);
    let mut src = vec![String::new(); x.len()];
    for (j, &pj) in perm.iter().enumerate() {
        src[pj] = c[j].clone();
    }
    let off = flat(b, "s", &src, x);
    copy_element(b, &off, x, out)
}

/// Each sliced axis's coordinate mapped back: start + coordinate x step (minus, for a
/// negative step). None where a start falls before the axis (an empty slice).
fn slice(
    b: &mut String,
    x: &[usize],
    out: &[usize],
    (starts, axes, steps): (&[i64], &[i64], &[i64]),
) -> Option<Vec<String>> {
    let c = coords(b, out);
    let mut src = c.clone();
    for ((&st, &ax), &step) in starts.iter().zip(axes).zip(steps) {
        let a = if ax < 0 { ax + x.len() as i64 } else { ax } as usize;
        let d = x[a] as i64;
        let lo = if step > 0 {
            (if st < 0 { st + d } else { st }).clamp(0, d)
        } else {
            (if st < 0 { st + d } else { st }).clamp(-1, d - 1)
        };
        if lo < 0 {
            return None;
        }
        let _ = writeln!(b, "        %ql{a} = arith.constant {lo} : index\n        %qp{a} = arith.constant {} : index\n        %qm{a} = arith.muli {}, %qp{a} : index", step.unsigned_abs(), c[a]);
        if step > 0 {
            let _ = writeln!(b, "        %qx{a} = arith.addi %ql{a}, %qm{a} : index");
        } else {
            let _ = writeln!(b, "        %qx{a} = arith.subi %ql{a}, %qm{a} : index");
        }
        src[a] = format!("%qx{a}");
    }
    let off = flat(b, "s", &src, x);
    Some(copy_element(b, &off, x, out))
}

/// Piece `index` along `axis`: rows index * n .. (index + 1) * n.
fn token_slice(
    b: &mut String,
    x: &[usize],
    out: &[usize],
    axis: usize,
    index: usize,
) -> Option<Vec<String>> {
    let c = coords(b, out);
    let mut src = c.clone();
    let lo = index * out.get(axis)?;
    let _ = writeln!(
        b,
        "        %tl = arith.constant {lo} : index\n        %tx = arith.addi %tl, {} : index",
        c[axis]
    );
    src[axis] = "%tx".into();
    let off = flat(b, "s", &src, x);
    Some(copy_element(b, &off, x, out))
}

/// Walk the inputs along the axis: the first whose range holds the coordinate.
fn concat(b: &mut String, shapes: &[Vec<usize>], out: &[usize], axis: i64) -> Vec<String> {
    let a = if axis < 0 {
        axis + out.len() as i64
    } else {
        axis
    } as usize;
    let c = coords(b, out);
    let mut lo = 0usize;
    let _ = writeln!(b, "        %zero = arith.constant 0.0 : f32");
    let mut acc = "%zero".to_string();
    for (k, sh) in shapes.iter().enumerate() {
        let hi = lo + sh[a];
        let mut src = c.clone();
        b.push_str(&specialise(
            CONCAT_PART,
            &[("k", &k), ("lo", &lo), ("hi", &hi), ("ca", &(c[a]))],
        ));
        src[a] = format!("%ix{k}");
        // Other coordinates are in range for every input (same shape off the axis).
        let off = flat(b, &format!("f{k}_"), &src, sh);
        let _ = writeln!(b, "        %v{k} = memref.load %a{k}[{off}] : {}\n        %r{k} = arith.select %in{k}, %v{k}, {acc} : f32", memref(sh));
        acc = format!("%r{k}");
        lo = hi;
    }
    let _ = writeln!(
        b,
        "        memref.store {acc}, %a{}[%i] : {}",
        shapes.len(),
        memref(out)
    );
    shapes
        .iter()
        .map(|s| memref(s))
        .chain(std::iter::once(memref(out)))
        .collect()
}

/// x ^ c for a scalar constant c of 2 or 0.5 (RMS norms): exact, no transcendental.
fn power(b: &mut String, shapes: &[Vec<usize>], out: &[usize], c: f32) -> Option<Vec<String>> {
    let x = &shapes[0];
    if shapes[1].iter().product::<usize>() != 1 || x != out {
        return None;
    }
    let expr = pow_expr(c)?;
    let _ = writeln!(b, "        %x = memref.load %a0[%i] : {}", memref(x));
    b.push_str(&expr);
    let _ = writeln!(b, "        memref.store %r, %a2[%i] : {}", memref(out));
    Some(vec![memref(x), memref(&shapes[1]), memref(out)])
}

/// The coordinates of flat output index %i in `shape`, as SSA names (`%c<d>`).
fn coords(b: &mut String, shape: &[usize]) -> Vec<String> {
    let mut names = vec![String::new(); shape.len()];
    let mut stride = 1usize;
    for d in (0..shape.len()).rev() {
        b.push_str(&specialise(
            COORDINATE,
            &[("d", &d), ("stride", &stride), ("extent", &(shape[d]))],
        ));
        names[d] = format!("%c{d}");
        stride *= shape[d];
    }
    names
}

/// The flat offset `sum_d index_d * stride_d` of a row-major `shape`, from per-axis SSA indices.
fn flat(b: &mut String, tag: &str, idx: &[String], shape: &[usize]) -> String {
    let _ = writeln!(b, "        %{tag}0 = arith.constant 0 : index");
    let mut acc = format!("%{tag}0");
    let mut stride = 1usize;
    for d in (0..shape.len()).rev() {
        let _ = writeln!(b, "        %{tag}w{d} = arith.constant {stride} : index\n        %{tag}m{d} = arith.muli {}, %{tag}w{d} : index\n        %{tag}a{d} = arith.addi {acc}, %{tag}m{d} : index", idx[d]);
        acc = format!("%{tag}a{d}");
        stride *= shape[d];
    }
    acc
}

/// Whether `b` is the expert ids `moe.route` writes (on the device as f32, below the expert
/// count).
fn route_ids(p: &Program, b: usize) -> bool {
    p.instructions
        .iter()
        .any(|i| matches!(i.op, Op::MoeRoute { .. }) && i.outputs.get(1) == Some(&b))
}

/// Whether integer buffer `b` holds only values exact in f32, as the device holds it: the
/// route's expert ids, or a constant whose values are. (A concat of constants alone stays on
/// the host, where whatever reads it reads it.)
fn exact_ints(
    p: &Program,
    b: usize,
    constant: &dyn Fn(Option<usize>) -> Option<ppmoe_runtime::Tensor>,
) -> bool {
    route_ids(p, b)
        || constant(Some(b)).is_some_and(|t| {
            t.dtype == ppmoe_runtime::DType::I64
                && t.to_i64()
                    .iter()
                    .all(|&v| ppmoe_runtime::program::exact_in_f32(v))
        })
}

/// out[%i] = x[off]: the body of a data-movement kernel (one thread per output element), and
/// its two parameters.
fn copy_element(b: &mut String, off: &str, x: &[usize], out: &[usize]) -> Vec<String> {
    let _ = writeln!(
        b,
        "        %v = memref.load %a0[{off}] : {}\n        memref.store %v, %a1[%i] : {}",
        memref(x),
        memref(out)
    );
    vec![memref(x), memref(out)]
}
