//! Kernels for the non-GEMM work, written as MLIR `gpu.func`s specialised to each instruction's
//! static shapes (one thread per output element, or per row for row-wise ops):
//!
//!   gpu.func @k3_sigmoid(%x: memref<2048xf32>, %y: memref<2048xf32>) kernel {
//!     %i = <block_id * block_dim + thread_id>; scf.if %i < 2048 { ... y[i] = 1 / (1 + ex2(-x log2 e)) }
//!
//! Transcendentals use PTX's approximate instructions (ex2, lg2, tanh) through NVVM intrinsics,
//! so that the PTX needs no libdevice. Each instruction gets one of: a generated kernel, a
//! cuBLAS GEMM, an NCCL collective, an alias (a reshape moves no data), or host work (ops not
//! generated yet; the plan names them).

use super::experts_kernels::{combine_bits_kernel, experts_kernels, ExpertsOperands, Ffn};
use super::template::specialise;
use ppmoe_runtime::program::{BinaryFn, Buffer, Instruction, Op, Program, UnaryFn};
use std::fmt::Write;

const ROW_GATHER: &str = include_str!("templates/row_gather.mlir");
const DYN_KERNEL: &str = include_str!("templates/dyn_kernel.mlir");
const LAYER_NORM_ROWS: &str = include_str!("templates/layer_norm_rows.mlir");
const REDUCE_ROWS: &str = include_str!("templates/reduce_rows.mlir");
const SOFTMAX_ROWS: &str = include_str!("templates/softmax_rows.mlir");
const BROADCAST_COORDINATE: &str = include_str!("templates/math/broadcast_coordinate.mlir");
const REDUCE_ANGLE: &str = include_str!("templates/math/reduce_angle.mlir");
const ERF_HEAD: &str = include_str!("templates/math/erf_head.mlir");
const ERF_TAIL: &str = include_str!("templates/math/erf_tail.mlir");
const GELU_TAIL: &str = include_str!("templates/math/gelu_tail.mlir");
const GELU_TANH: &str = include_str!("templates/math/gelu_tanh.mlir");
const KERNEL: &str = include_str!("templates/kernel.mlir");
const SIGN: &str = include_str!("templates/math/sign.mlir");

/// How one instruction runs on the GPU (the runtime's own type: the bundle carries it).
pub use ppmoe_runtime::program::GpuOp as Lowered;

pub struct KernelPlan {
    /// Per instruction of the program.
    pub lowered: Vec<Lowered>,
    /// The `gpu.module` holding the generated kernels (MLIR text).
    pub module: String,
}

pub(super) fn static_shape(b: &Buffer) -> Option<Vec<usize>> {
    b.shape.iter().copied().collect()
}

pub(super) fn memref(shape: &[usize]) -> String {
    let n: usize = shape.iter().product();
    format!("memref<{n}xf32>")
}

/// The flat index of the thread, and the guard against the tail: the common prologue.
pub(super) fn prologue(body: &mut String, n: usize) {
    let _ = writeln!(
        body,
        "      %bid = gpu.block_id x\n      %bdim = gpu.block_dim x\n      %tid = gpu.thread_id x"
    );
    let _ = writeln!(
        body,
        "      %i0 = arith.muli %bid, %bdim : index\n      %i = arith.addi %i0, %tid : index"
    );
    let _ = writeln!(body, "      %n = arith.constant {n} : index\n      %in = arith.cmpi ult, %i, %n : index\n      scf.if %in {{");
}

/// exp(x) as ex2(x * log2 e).
pub(super) fn exp(body: &mut String, x: &str, out: &str) {
    let _ = writeln!(body, "        %{out}_l = arith.constant 1.44269504 : f32\n        %{out}_m = arith.mulf {x}, %{out}_l : f32");
    let _ = writeln!(body, "        %{out} = llvm.call_intrinsic \"llvm.nvvm.ex2.approx.ftz.f\"(%{out}_m) : (f32) -> f32");
}

/// The scalar expression of a unary function, from `%x` into `%r`; None when not generated.
pub(super) fn unary_expr(f: UnaryFn) -> Option<String> {
    let mut b = String::new();
    match f {
        UnaryFn::Neg => b.push_str("        %r = arith.negf %x : f32\n"),
        // |x| as max(x, -x): NVVM has no fabs lowering without libdevice.
        UnaryFn::Abs => b.push_str("        %nx = arith.negf %x : f32\n        %r = arith.maximumf %x, %nx : f32\n"),
        UnaryFn::Relu => b.push_str("        %z = arith.constant 0.0 : f32\n        %r = arith.maximumf %x, %z : f32\n"),
        UnaryFn::Reciprocal => b.push_str("        %one = arith.constant 1.0 : f32\n        %r = arith.divf %one, %x : f32\n"),
        UnaryFn::Sqrt => b.push_str("        %r = llvm.call_intrinsic \"llvm.nvvm.sqrt.rn.f\"(%x) : (f32) -> f32\n"),
        UnaryFn::Exp => exp(&mut b, "%x", "r"),
        UnaryFn::Log => b.push_str("        %lg = llvm.call_intrinsic \"llvm.nvvm.lg2.approx.f\"(%x) : (f32) -> f32\n        %ln2 = arith.constant 0.693147182 : f32\n        %r = arith.mulf %lg, %ln2 : f32\n"),
        UnaryFn::Tanh => b.push_str("        %r = llvm.call_intrinsic \"llvm.nvvm.tanh.approx.f\"(%x) : (f32) -> f32\n"),
        UnaryFn::Sigmoid => {
            b.push_str("        %nx = arith.negf %x : f32\n");
            exp(&mut b, "%nx", "e");
            b.push_str("        %one = arith.constant 1.0 : f32\n        %d = arith.addf %one, %e : f32\n        %r = arith.divf %one, %d : f32\n");
        }
        UnaryFn::Sin => sin_cos(&mut b, "sin"),
        UnaryFn::Cos => sin_cos(&mut b, "cos"),
        UnaryFn::Floor => b.push_str("        %r = llvm.call_intrinsic \"llvm.nvvm.floor.f\"(%x) : (f32) -> f32\n"),
        UnaryFn::Ceil => b.push_str("        %r = llvm.call_intrinsic \"llvm.nvvm.ceil.f\"(%x) : (f32) -> f32\n"),
        // 1, -1, else 0 (NaN and zeros too), as the CPU backend's.
        UnaryFn::Sign => b.push_str(SIGN),
        UnaryFn::Erf => erf(&mut b, "%x", "r"),
        UnaryFn::Gelu => activation_expr(&mut b, ppmoe_runtime::program::Activation::Gelu, "%x", "r"),
        UnaryFn::GeluTanh => {
            activation_expr(&mut b, ppmoe_runtime::program::Activation::GeluTanh, "%x", "r")
        }
        _ => return None,
    }
    Some(b)
}

pub(super) fn binary_op(f: BinaryFn) -> Option<&'static str> {
    Some(match f {
        BinaryFn::Add => "arith.addf",
        BinaryFn::Sub => "arith.subf",
        BinaryFn::Mul => "arith.mulf",
        BinaryFn::Div => "arith.divf",
        BinaryFn::Max => "arith.maximumf",
        BinaryFn::Min => "arith.minimumf",
        _ => return None,
    })
}

/// The flat offset into an operand of shape `inp` broadcast to `out`, for flat output index %i.
pub(super) fn broadcast_offset(
    body: &mut String,
    tag: &str,
    inp: &[usize],
    out: &[usize],
) -> String {
    broadcast_offset_at(body, tag, inp, out, "%i")
}

/// `broadcast_offset` for the output element at flat index `idx` (an SSA index value).
pub(super) fn broadcast_offset_at(
    body: &mut String,
    tag: &str,
    inp: &[usize],
    out: &[usize],
    idx: &str,
) -> String {
    if inp == out {
        return idx.into();
    }
    let off = out.len() - inp.len();
    let mut out_stride = 1usize;
    let mut in_strides = vec![0usize; out.len()];
    let mut s = 1usize;
    for d in (0..inp.len()).rev() {
        in_strides[off + d] = if inp[d] == 1 { 0 } else { s };
        s *= inp[d];
    }
    let _ = writeln!(body, "        %{tag}_acc0 = arith.constant 0 : index");
    let mut acc = format!("%{tag}_acc0");
    for d in (0..out.len()).rev() {
        if in_strides[d] != 0 {
            // coordinate d of the output = (i / out_stride) % out[d]
            body.push_str(&specialise(
                BROADCAST_COORDINATE,
                &[
                    ("tag", &tag),
                    ("d", &d),
                    ("out_stride", &out_stride),
                    ("idx", &idx),
                    ("extent", &(out[d])),
                    ("stride", &(in_strides[d])),
                    ("acc", &acc),
                ],
            ));
            acc = format!("%{tag}_a{d}");
        }
        out_stride *= out[d];
    }
    acc
}

pub(super) fn kernel(name: &str, params: &[String], body: &str) -> String {
    let args: Vec<String> = params
        .iter()
        .enumerate()
        .map(|(k, t)| format!("%a{k}: {t}"))
        .collect();
    specialise(
        KERNEL,
        &[
            ("name", &name),
            ("args", &(args.join(", "))),
            ("body", &body),
        ],
    )
}

/// 2 pi in three parts, the first two of at most 11 significant bits (so k times each is exact
/// for |k| < 2^13) and the third the rest.
const TWO_PI_PARTS: [f32; 3] = [
    6.28125,
    f32::from_bits(0x3AFD_A000),
    f32::from_bits(0x34A2_2169),
];

/// sin or cos of `%x` into `%r`: the argument reduced to [-pi, pi] first (x - k 2pi with 2pi in
/// three parts, Cody and Waite's way: k * C1 and k * C2 are exact for |k| < 2^13, so the
/// reduction is good to about 1e-7 up to |x| of 5e4, rotary angles' range), then PTX's
/// approximate sin or cos (absolute error about 5e-7 on [-pi, pi]). PTX's instruction alone
/// reduces the argument poorly: rotary embeddings' angles reach thousands of radians.
fn sin_cos(b: &mut String, f: &str) {
    let c = |v: f32| hexf(v);
    b.push_str(&specialise(
        REDUCE_ANGLE,
        &[("inverse_two_pi", &(c(std::f32::consts::FRAC_1_PI * 0.5)))],
    ));
    let mut acc = "%x".to_string();
    for (j, part) in TWO_PI_PARTS.iter().enumerate() {
        let _ = writeln!(
            b,
            "        %c{j} = arith.constant {} : f32\n        %kc{j} = arith.mulf %k, %c{j} : f32\n        %red{j} = arith.subf {acc}, %kc{j} : f32",
            c(*part)
        );
        acc = format!("%red{j}");
    }
    let _ = writeln!(
        b,
        "        %r = llvm.call_intrinsic \"llvm.nvvm.{f}.approx.f\"({acc}) : (f32) -> f32"
    );
}

/// An f32 as MLIR's exact hexadecimal float literal.
pub(super) fn hexf(v: f32) -> String {
    format!("0x{:08X}", v.to_bits())
}

/// erf(x) by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7), from `x` into `%{out}`.
fn erf(b: &mut String, x: &str, out: &str) {
    b.push_str(&specialise(ERF_HEAD, &[("out", &out), ("x", &x)]));
    let coeffs = [
        "1.061405429",
        "-1.453152027",
        "1.421413741",
        "-0.284496736",
        "0.254829592",
    ];
    let _ = writeln!(b, "        %{out}_c0 = arith.constant {} : f32", coeffs[0]);
    let mut acc = format!("%{out}_c0");
    for (k, c) in coeffs[1..].iter().enumerate() {
        let _ = writeln!(b, "        %{out}_m{k} = arith.mulf {acc}, %{out}_t : f32\n        %{out}_k{k} = arith.constant {c} : f32\n        %{out}_s{k} = arith.addf %{out}_m{k}, %{out}_k{k} : f32");
        acc = format!("%{out}_s{k}");
    }
    let _ = writeln!(b, "        %{out}_poly = arith.mulf {acc}, %{out}_t : f32\n        %{out}_x2 = arith.mulf {x}, {x} : f32\n        %{out}_nx2 = arith.negf %{out}_x2 : f32");
    exp(b, &format!("%{out}_nx2"), &format!("{out}_e"));
    b.push_str(&specialise(ERF_TAIL, &[("out", &out), ("x", &x)]));
}

/// An activation of `x` into `%{out}` (the non-gated ones, and GELU for GeGLU's gate).
pub(super) fn activation_expr(
    b: &mut String,
    a: ppmoe_runtime::program::Activation,
    x: &str,
    out: &str,
) {
    use ppmoe_runtime::program::Activation as A;
    match a {
        A::Silu => {
            let _ = writeln!(b, "        %{out}_n = arith.negf {x} : f32");
            exp(b, &format!("%{out}_n"), &format!("{out}_e"));
            let _ = writeln!(b, "        %{out}_one = arith.constant 1.0 : f32\n        %{out}_d = arith.addf %{out}_one, %{out}_e : f32\n        %{out} = arith.divf {x}, %{out}_d : f32");
        }
        A::Gelu | A::Geglu => {
            let _ = writeln!(b, "        %{out}_r2 = arith.constant 0.707106781 : f32\n        %{out}_xs = arith.mulf {x}, %{out}_r2 : f32");
            erf(b, &format!("%{out}_xs"), &format!("{out}_erf"));
            b.push_str(&specialise(GELU_TAIL, &[("out", &out), ("x", &x)]));
        }
        A::GeluTanh => {
            b.push_str(&specialise(GELU_TANH, &[("out", &out), ("x", &x)]));
        }
        A::Relu => {
            let _ = writeln!(b, "        %{out}_z = arith.constant 0.0 : f32\n        %{out} = arith.maximumf {x}, %{out}_z : f32");
        }
        A::Identity | A::Swiglu => {
            let _ = writeln!(b, "        %{out}_z = arith.constant 0.0 : f32\n        %{out} = arith.addf {x}, %{out}_z : f32");
        }
    }
}

/// A kernel over `n` threads whose sizes come at launch (`memref<?x..>` and index operands).
pub(super) fn dyn_kernel<S: AsRef<str>>(name: &str, params: &[S], n: &str, body: &str) -> String {
    let args: Vec<&str> = params.iter().map(AsRef::as_ref).collect();
    specialise(
        DYN_KERNEL,
        &[
            ("name", &name),
            ("params", &args.join(", ")),
            ("n", &n),
            ("body", &body),
        ],
    )
}

/// The buffers an instruction reads (its operands present), in order.
pub(super) fn operand_buffers<'p>(p: &'p Program, ins: &Instruction) -> Vec<&'p Buffer> {
    ins.inputs
        .iter()
        .flatten()
        .map(|&b| &p.buffers[b])
        .collect()
}

/// One kernel for one instruction, if it is generated; with its thread count.
fn generate(p: &Program, idx: usize) -> Option<(String, String, usize)> {
    let ins = &p.instructions[idx];
    let bufs = operand_buffers(p, ins);
    let outs: Vec<&Buffer> = ins.outputs.iter().map(|&o| &p.buffers[o]).collect();
    // Booleans (f32 0 or 1 on the device) and casts.
    if let [out] = outs[..] {
        let name = format!("k{idx}_{}", ins.op.name());
        if let Some(g) = super::masks::generate(&ins.op, &name, &bufs, out) {
            return Some(g);
        }
    }
    // Floats of any storage type are f32 on the device.
    if bufs
        .iter()
        .chain(&outs)
        .any(|b| !b.dtype.is_float() || static_shape(b).is_none())
    {
        return None;
    }
    let out_shape = static_shape(outs[0])?;
    let name = format!("k{idx}_{}", ins.op.name());
    match &ins.op {
        Op::Unary { f } => unary_kernel(&name, *f, &out_shape),
        Op::Binary { f } => {
            let (a, b) = (static_shape(bufs[0])?, static_shape(bufs[1])?);
            binary_kernel(&name, *f, (&a, &b), &out_shape)
        }
        Op::LayerNorm { axis, epsilon } => {
            let same = bufs.first().is_some_and(|b| b.shape == outs[0].shape);
            layer_norm_kernel(
                &format!("k{idx}_layer_norm"),
                &bufs,
                (*axis, *epsilon),
                (&out_shape, same),
            )
        }
        Op::Softmax { axis, log: false } => {
            softmax_kernel(&format!("k{idx}_softmax"), *axis, &out_shape)
        }
        _ => None,
    }
}

/// y = f(x), one thread per element.
fn unary_kernel(name: &str, f: UnaryFn, out: &[usize]) -> Option<(String, String, usize)> {
    let expr = unary_expr(f)?;
    let n: usize = out.iter().product();
    let mut body = String::new();
    prologue(&mut body, n);
    let _ = writeln!(body, "        %x = memref.load %a0[%i] : {}", memref(out));
    body.push_str(&expr);
    let _ = writeln!(body, "        memref.store %r, %a1[%i] : {}", memref(out));
    let params = vec![memref(out), memref(out)];
    Some((name.to_string(), kernel(name, &params, &body), n))
}

/// y = a op b, the operands broadcast to the output, one thread per element.
fn binary_kernel(
    name: &str,
    f: BinaryFn,
    (a, b): (&[usize], &[usize]),
    out: &[usize],
) -> Option<(String, String, usize)> {
    let op = binary_op(f)?;
    let n: usize = out.iter().product();
    let mut body = String::new();
    prologue(&mut body, n);
    let oa = broadcast_offset(&mut body, "pa", a, out);
    let ob = broadcast_offset(&mut body, "pb", b, out);
    let _ = writeln!(
        body,
        "        %x = memref.load %a0[{oa}] : {}\n        %y = memref.load %a1[{ob}] : {}",
        memref(a),
        memref(b)
    );
    let _ = writeln!(
        body,
        "        %r = {op} %x, %y : f32\n        memref.store %r, %a2[%i] : {}",
        memref(out)
    );
    let params = vec![memref(a), memref(b), memref(out)];
    Some((name.to_string(), kernel(name, &params, &body), n))
}

/// LayerNormalization over the axes from `axis` on (scale, and bias where given, of that
/// size), one warp per row; `same`: the input has the output's shape.
fn layer_norm_kernel(
    name: &str,
    bufs: &[&Buffer],
    (axis, epsilon): (i64, f32),
    (out, same): (&[usize], bool),
) -> Option<(String, String, usize)> {
    let rank = out.len() as i64;
    let from = if axis < 0 { axis + rank } else { axis };
    if !(0..rank).contains(&from) || !(2..=3).contains(&bufs.len()) {
        return None;
    }
    let inner: usize = out[from as usize..].iter().product();
    let scale = static_shape(bufs[1])?;
    let bias = match bufs.get(2) {
        Some(b) => Some(static_shape(b)?),
        None => None,
    };
    let fits = |s: &[usize]| s.iter().product::<usize>() == inner;
    if !same || !fits(&scale) || !bias.as_ref().is_none_or(|b| fits(b)) {
        return None;
    }
    let n: usize = out.iter().product();
    let rows = n / inner.max(1);
    let mut body = String::new();
    prologue(&mut body, rows * WARP);
    layer_norm_rows(&mut body, inner, epsilon, bufs.len() == 3, out, &scale);
    let mut params = vec![memref(out), memref(&scale)];
    if let Some(b) = &bias {
        params.push(memref(b));
    }
    params.push(memref(out));
    Some((name.to_string(), kernel(name, &params, &body), rows * WARP))
}

/// A softmax over the last axis, one warp per row.
fn softmax_kernel(name: &str, axis: i64, out: &[usize]) -> Option<(String, String, usize)> {
    let rank = out.len();
    if !(axis == -1 || axis == rank as i64 - 1) {
        return None;
    }
    let cols = *out.last()?;
    let n: usize = out.iter().product();
    let rows = n / cols.max(1);
    let mut body = String::new();
    prologue(&mut body, rows * WARP);
    softmax_rows(&mut body, cols, &memref(out));
    let params = vec![memref(out), memref(out)];
    Some((name.to_string(), kernel(name, &params, &body), rows * WARP))
}

/// x ^ c, from `%x` into `%r`, for the exponents RMS norms use (2 and 0.5): exact, with no
/// transcendental; None for others.
pub(super) fn pow_expr(c: f32) -> Option<String> {
    if c == 2.0 {
        Some("        %r = arith.mulf %x, %x : f32\n".into())
    } else if c == 0.5 {
        Some("        %r = llvm.call_intrinsic \"llvm.nvvm.sqrt.rn.f\"(%x) : (f32) -> f32\n".into())
    } else {
        None
    }
}

/// Threads of a warp: the row-wise kernels give each row one warp.
pub(super) const WARP: usize = 32;

/// The sum (or max) of `%{v}` over the 32 lanes of the warp, the same value in every lane
/// (butterfly shuffles, so every lane combines in the same order); returns its SSA name.
pub(super) fn warp_reduce(b: &mut String, v: &str, out: &str, op: &str) -> String {
    butterfly_reduce(b, &format!("%{v}"), out, op, &[16, 8, 4, 2, 1])
}

/// `value` combined by `op` over the lanes that differ from each other in the bits of
/// `offsets` (butterfly shuffles xor each offset, so every lane combines in the same order;
/// [16, 8, 4, 2, 1]: the warp, [1, 2]: the four lanes of an mma fragment's row); returns the
/// result's SSA name.
pub(super) fn butterfly_reduce(
    b: &mut String,
    value: &str,
    out: &str,
    op: &str,
    offsets: &[u32],
) -> String {
    let _ = writeln!(b, "        %{out}_w = arith.constant 32 : i32");
    let mut acc = value.to_string();
    for (k, off) in offsets.iter().enumerate() {
        let _ = writeln!(
            b,
            "        %{out}_o{k} = arith.constant {off} : i32\n        %{out}_s{k}, %{out}_v{k} = gpu.shuffle xor {acc}, %{out}_o{k}, %{out}_w : f32\n        %{out}_a{k} = {op} {acc}, %{out}_s{k} : f32"
        );
        acc = format!("%{out}_a{k}");
    }
    acc
}

/// A reduction over the last axis of `x` into `out` (one value per row), one warp per row
/// (thread %i: row i / 32, lane i % 32): each lane folds every 32nd column (the warp reads a
/// row's consecutive elements together), the lanes' values are folded across the warp, and
/// lane 0 writes the row's. (One thread per row read each row alone, thousands of dependent
/// loads per thread: 0.55 ms for an RMS norm's mean over [4096, 4096] on an H200.)
pub(super) fn reduce_rows(
    name: &str,
    x: &[usize],
    out: &[usize],
    f: ppmoe_runtime::program::ReduceFn,
) -> Option<(String, String, usize)> {
    let (mx, mo) = (memref(x), memref(out));
    let mut b = String::new();
    let mut load = |b: &mut String| {
        let _ = writeln!(b, "          %v = memref.load %a0[%o] : {mx}");
        "%v".to_string()
    };
    let threads = reduce_rows_with(&mut b, (x, out), f, "%a1", &mut load)?;
    let params = vec![mx, mo];
    Some((name.to_string(), kernel(name, &params, &b), threads))
}

/// The body of `reduce_rows` (its prologue too) with the input element at flat index `%o`
/// made by `input` (its text appended, its value returned), the result stored into `out_param`;
/// returns the threads (one warp per row). None for a reduction other than sum, mean, max,
/// min, or shapes that are not rows of `x`'s last axis.
pub(super) fn reduce_rows_with(
    b: &mut String,
    (x, out): (&[usize], &[usize]),
    f: ppmoe_runtime::program::ReduceFn,
    out_param: &str,
    input: &mut dyn FnMut(&mut String) -> String,
) -> Option<usize> {
    use ppmoe_runtime::program::ReduceFn;
    let cols = *x.last()?;
    let rows: usize = out.iter().product();
    if rows.checked_mul(cols)? != x.iter().product::<usize>() {
        return None;
    }
    let (init, op) = match f {
        ReduceFn::Sum | ReduceFn::Mean => ("0.0", "arith.addf"),
        ReduceFn::Max => ("-3.40282347e+38", "arith.maximumf"),
        ReduceFn::Min => ("3.40282347e+38", "arith.minimumf"),
        _ => return None,
    };
    prologue(b, rows * WARP);
    let mut load = String::new();
    let value = input(&mut load);
    let mut over_warp = String::new();
    let total = warp_reduce(&mut over_warp, "part", "tot", op);
    let (mean, result) = match f {
        ReduceFn::Mean => (
            format!(
                "        %cf = arith.constant {} : f32\n        %mean = arith.divf {total}, %cf : f32\n",
                hexf(cols as f32)
            ),
            "%mean".to_string(),
        ),
        _ => (String::new(), total),
    };
    b.push_str(&specialise(
        REDUCE_ROWS,
        &[
            ("cols", &cols),
            ("init", &init),
            ("load", &load),
            ("op", &op),
            ("value", &value),
            ("over_warp", &over_warp),
            ("mean", &mean),
            ("result", &result),
            ("out", &out_param),
            ("out_type", &memref(out)),
        ],
    ));
    Some(rows * WARP)
}

/// LayerNormalization over rows of `inner` elements, one warp per row (as `reduce_rows`): the
/// mean, then the variance about it (two passes, as the CPU backend's), then each lane writes
/// (x - mean) / sqrt(var + eps) * scale (+ bias) for its columns. Parameters: x, scale, the
/// bias where `has_bias`, the result.
fn layer_norm_rows(
    b: &mut String,
    inner: usize,
    eps: f32,
    has_bias: bool,
    x: &[usize],
    scale: &[usize],
) {
    let (mx, ms) = (memref(x), memref(scale));
    let out = if has_bias { "%a3" } else { "%a2" };
    let (mut sum_over_warp, mut squares_over_warp) = (String::new(), String::new());
    let sum = warp_reduce(&mut sum_over_warp, "psum", "sum", "arith.addf");
    let squares = warp_reduce(&mut squares_over_warp, "psq", "sq", "arith.addf");
    let bias = if has_bias {
        format!("          %bv = memref.load %a2[%j] : {ms}\n          %r = arith.addf %ys, %bv : f32\n")
    } else {
        "          %r = arith.addf %ys, %zero : f32\n".to_string()
    };
    b.push_str(&specialise(
        LAYER_NORM_ROWS,
        &[
            ("inner", &inner),
            ("count", &hexf(inner as f32)),
            ("x_type", &mx),
            ("scale_type", &ms),
            ("sum_over_warp", &sum_over_warp),
            ("sum", &sum),
            ("squares_over_warp", &squares_over_warp),
            ("squares", &squares),
            ("eps", &hexf(eps)),
            ("bias", &bias),
            ("out", &out),
        ],
    ));
}

/// A layer norm's, a row reduction's and a row softmax's bodies (64 columns), for the template
/// test.
#[cfg(test)]
pub(super) fn row_bodies_for_test() -> [String; 3] {
    let mut norm = String::new();
    layer_norm_rows(&mut norm, 64, 1e-5, true, &[4, 64], &[64]);
    let mut load = |b: &mut String| {
        b.push_str("          %v = memref.load %a0[%o] : memref<256xf32>\n");
        "%v".to_string()
    };
    let (mut sum, mut softmax) = (String::new(), String::new());
    let f = ppmoe_runtime::program::ReduceFn::Mean;
    reduce_rows_with(&mut sum, (&[4, 64], &[4]), f, "%a1", &mut load);
    softmax_rows(&mut softmax, 64, "memref<256xf32>");
    [norm, sum, softmax]
}

/// Softmax over rows of `cols`, one warp per row (thread %i: row i / 32, lane i % 32): each lane
/// takes every 32nd column (the warp reads a row's consecutive elements together), the max and
/// the sum of exponentials are reduced across the warp, then each lane writes its columns.
/// The input is `%a0`, the result `%a1`, both of memref type `m`.
fn softmax_rows(b: &mut String, cols: usize, m: &str) {
    let load = |b: &mut String, _pass: &str| {
        let _ = writeln!(b, "          %v = memref.load %a0[%o] : {m}");
        "%v".to_string()
    };
    softmax_rows_with(b, cols, (m, "%a1"), &mut { load }, &mut |_, q| {
        q.to_string()
    });
}

/// `softmax_rows` with the input element at flat index `%o` made by `input` (its text appended,
/// its value returned; `pass` tags the names of each of the two passes that read it) and each
/// result transformed by `finish` (given the softmax's value, it returns the value stored)
/// before it is stored into `out` (of memref type `m`).
pub(super) fn softmax_rows_with(
    b: &mut String,
    cols: usize,
    (m, out): (&str, &str),
    input: &mut dyn FnMut(&mut String, &str) -> String,
    finish: &mut dyn FnMut(&mut String, &str) -> String,
) {
    // Made in the order the kernel reads them (the callers name operands as they are first
    // read).
    let mut first_load = String::new();
    let first_value = input(&mut first_load, "p1");
    let mut max_over_warp = String::new();
    let max = warp_reduce(&mut max_over_warp, "pmax", "mx", "arith.maximumf");
    let mut second_load = String::new();
    let second_value = input(&mut second_load, "p2");
    let mut sum_over_warp = String::new();
    let sum = warp_reduce(&mut sum_over_warp, "psum", "sum", "arith.addf");
    let mut finished = String::new();
    let result = finish(&mut finished, "%q");
    b.push_str(&specialise(
        SOFTMAX_ROWS,
        &[
            ("cols", &cols),
            ("first_load", &first_load),
            ("first_value", &first_value),
            ("max_over_warp", &max_over_warp),
            ("max", &max),
            ("second_load", &second_load),
            ("second_value", &second_value),
            ("out", &out),
            ("out_type", &m),
            ("sum_over_warp", &sum_over_warp),
            ("sum", &sum),
            ("finish", &finished),
            ("result", &result),
        ],
    ));
}

/// Whether `y` is bf16 in the model (its type, or, the MoE raise typing its result f32, that
/// of a reshape of it) and read only inside the program (neither it nor such a reshape is a
/// result, which the runtime brings back as it holds it).
pub(super) fn bf16_read_inside(p: &Program, y: usize) -> bool {
    use ppmoe_runtime::{program::Op, DType};
    let reshapes = || {
        p.instructions.iter().filter(move |ins| {
            matches!(ins.op, Op::ReshapeTo { .. }) && ins.inputs.first() == Some(&Some(y))
        })
    };
    let bf16 = p.buffers[y].dtype == DType::BF16
        || reshapes().any(|ins| {
            ins.outputs
                .iter()
                .any(|&o| p.buffers[o].dtype == DType::BF16)
        });
    let result = p.outputs.contains(&y)
        || reshapes().any(|ins| ins.outputs.iter().any(|o| p.outputs.contains(o)));
    bf16 && !result
}

/// `Gather` on axis 0 of a float weight table [V, ...] with integer indices: the token
/// embedding, as a row copy (`GpuOp::Embedding`).
fn embedding_kernel(p: &Program, idx: usize, name: &str) -> Option<String> {
    let ins = &p.instructions[idx];
    let (Op::Gather { axis }, Some(Some(table)), Some(Some(ids))) =
        (&ins.op, ins.inputs.first(), ins.inputs.get(1))
    else {
        return None;
    };
    let (t, i) = (&p.buffers[*table], &p.buffers[*ids]);
    let shape = static_shape(t)?;
    let row: usize = shape.get(1..)?.iter().product();
    let normalized = if *axis < 0 {
        *axis + shape.len() as i64
    } else {
        *axis
    };
    if normalized != 0
        || t.kind != ppmoe_runtime::program::BufferKind::Weight
        || !t.dtype.is_float()
        || i.dtype.is_float()
        || shape.len() < 2
        || row == 0
    {
        return None;
    }
    let copy = |name: &str, elem: &str| {
        let body = specialise(ROW_GATHER, &[("row", &row), ("elem", &elem)]);
        dyn_kernel(
            name,
            &[
                format!("%table: memref<?x{elem}>"),
                "%ids: memref<?xi32>".into(),
                format!("%out: memref<?x{elem}>"),
                "%rows: index".into(),
            ],
            &format!(
                "      %hh = arith.constant {row} : index\n      %n = arith.muli %rows, %hh : index\n"
            ),
            &body,
        )
    };
    let mut text = copy(name, "f32");
    // A bf16 table's rows copied as their bits (`EMBEDDING_BITS_SUFFIX`), where the result is
    // bf16 in the model and no result of it: the runtime then holds the table as bits and
    // never widens it.
    let bits_out = ins.outputs.first().is_some_and(|&o| bf16_read_inside(p, o));
    if t.dtype == ppmoe_runtime::DType::BF16 && bits_out {
        let suffix = ppmoe_runtime::program::EMBEDDING_BITS_SUFFIX;
        text.push_str(&copy(&format!("{name}_{suffix}"), "i16"));
    }
    Some(text)
}

/// The kernel that rounds f32 activations to bf16 (to nearest even) for the bf16 GEMMs; the
/// runtime finds it by this name.
pub const TO_BF16_KERNEL: &str = ppmoe_runtime::program::TO_BF16_KERNEL;

/// How each instruction of `p` runs on the GPU, and the kernel module for those generated.
pub fn plan_kernels(
    p: &Program,
    weights: &[(String, ppmoe_runtime::Tensor)],
    module_name: &str,
) -> KernelPlan {
    let consts = |b: Option<usize>| -> Option<ppmoe_runtime::Tensor> {
        let name = &p.buffers[b?].name;
        weights
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
    };
    // bf16 weights: the GEMMs run in bf16 (fp32 accumulation), their activations narrowed first;
    // the generated kernels read and write the model's bf16 activations as bf16.
    let bf16_weights = weights
        .iter()
        .any(|(_, t)| t.dtype == ppmoe_runtime::DType::BF16);
    let mut lowered = Vec::with_capacity(p.instructions.len());
    let mut funcs = String::new();
    // PPMoE's expert work, one step per chain; its first two instructions fused into it.
    let mut fused = super::expert_steps::plan(p, &mut funcs);
    // Chains of pointwise instructions, one kernel each.
    let chains = {
        let taken = |i: usize| fused.contains_key(&i);
        super::pointwise::plan(p, &taken, &consts, &mut funcs)
    };
    fused.extend(chains);
    for (i, ins) in p.instructions.iter().enumerate() {
        let l = match fused.remove(&i) {
            Some(l) => l,
            None => match &ins.op {
                Op::MatMul => Lowered::Gemm,
                op if op.is_communication() => Lowered::Collective,
                Op::ReshapeTo { .. } => Lowered::Alias,
                Op::MoeRoute { .. } => route_step(p, i, bf16_weights, &mut funcs),
                Op::MoeExperts { .. } => experts_step(p, i, &mut funcs),
                _ => generated_step(p, i, &consts, &mut funcs),
            },
        };
        lowered.push(l);
    }
    if bf16_weights {
        super::bf16_params::narrow(p, &mut lowered, &mut funcs);
        conversion_kernels(&mut funcs);
    }
    let module = format!("  gpu.module @{module_name} {{\n{funcs}  }}\n");
    KernelPlan { lowered, module }
}

/// A route's kernel (reading its logits as bf16 where they are in the model and the rank has
/// bf16 weights), or host work where it is not generated.
fn route_step(p: &Program, i: usize, bf16_weights: bool, funcs: &mut String) -> Lowered {
    let name = format!("k{i}_route");
    let Some((text, threads, capacity)) = super::route::route_kernel(p, i, &name) else {
        return Lowered::Host;
    };
    let narrowed = (bf16_weights && bf16_in_model(p, i))
        .then(|| with_bf16_logits(&text))
        .flatten();
    let bf16_logits = narrowed.is_some();
    funcs.push_str(narrowed.as_deref().unwrap_or(&text));
    Lowered::Route {
        name,
        threads,
        capacity,
        bf16_logits,
    }
}

/// A `moe.experts` step's kernels, or host work where they are not generated.
fn experts_step(p: &Program, i: usize, funcs: &mut String) -> Lowered {
    let ins = &p.instructions[i];
    let prefix = format!("k{i}_experts");
    let at = |k: usize| ins.inputs.get(k).copied().flatten();
    let operands = || {
        Some(ExpertsOperands {
            x: at(0)?,
            weights: at(1)?,
            w_in: at(3)?,
            w_out: at(4)?,
            ids: at(2),
            b_in: at(5),
            b_out: at(6),
            y_bits: ins.outputs.first().is_some_and(|&y| bf16_read_inside(p, y)),
            local: false,
        })
    };
    let kernels = Ffn::of(&ins.op).zip(operands()).and_then(|(ffn, o)| {
        let (text, bf16) = experts_kernels(p, &ffn, &o, &prefix)?;
        let bits = combine_bits_kernel(p, &o, &prefix, bf16);
        Some((text + bits.as_deref().unwrap_or(""), bf16))
    });
    match kernels {
        Some((text, bf16)) => {
            funcs.push_str(&text);
            Lowered::Experts { prefix, bf16 }
        }
        None => Lowered::Host,
    }
}

/// Any other instruction: a row lookup in a weight table (the token embedding), else a
/// generated kernel (elementwise and row-wise ops, data movement, top-k), else host work.
fn generated_step(
    p: &Program,
    i: usize,
    consts: &dyn Fn(Option<usize>) -> Option<ppmoe_runtime::Tensor>,
    funcs: &mut String,
) -> Lowered {
    let name = format!("k{i}_embedding");
    if let Some(text) = embedding_kernel(p, i, &name) {
        funcs.push_str(&text);
        return Lowered::Embedding { name };
    }
    match generate(p, i)
        .or_else(|| super::data_movement::data_movement(p, i, consts))
        .or_else(|| super::top_k::generate(p, i, consts))
    {
        Some((name, text, threads)) => {
            funcs.push_str(&text);
            Lowered::Kernel {
                name,
                threads,
                bf16: Vec::new(),
            }
        }
        None => Lowered::Host,
    }
}

/// The conversions a rank with bf16 weights has: f32 to bf16 (to nearest even) for the bf16
/// GEMMs' operands, and back (PPMoE's all-reduce of a bf16 model's expert outputs runs in
/// bf16); each also four elements a thread (`%n` groups of four: the same rounding per element).
fn conversion_kernels(funcs: &mut String) {
    use ppmoe_runtime::program::{FROM_BF16_KERNEL, FROM_BF16_X4_KERNEL, TO_BF16_X4_KERNEL};
    let (narrow, widen) = ("arith.truncf", "arith.extf");
    funcs.push_str(&conversion_kernel(TO_BF16_KERNEL, narrow, "f32", "bf16"));
    funcs.push_str(&conversion_kernel(FROM_BF16_KERNEL, widen, "bf16", "f32"));
    let (f4, b4) = ("vector<4xf32>", "vector<4xbf16>");
    funcs.push_str(&conversion_kernel(TO_BF16_X4_KERNEL, narrow, f4, b4));
    funcs.push_str(&conversion_kernel(FROM_BF16_X4_KERNEL, widen, b4, f4));
}

/// Whether route `idx`'s logits are bf16 in the model (a bf16 router GEMM's result, which the
/// runtime holds as its bits); with bf16 weights the rank has the conversion kernels the
/// runtime narrows any other value of them with, so the route reads them as bf16.
fn bf16_in_model(p: &Program, idx: usize) -> bool {
    let logits = p.instructions[idx].inputs.first().copied().flatten();
    logits.is_some_and(|l| p.buffers[l].dtype == ppmoe_runtime::DType::BF16)
}

/// Route kernel `text` reading its logits (`%a0`) as bf16 (`bf16_params::narrow_param`: each
/// load widened, exactly), or None where the kernel uses them otherwise than by loads. The
/// route kernel only: the capacity kernels after it take no logits.
fn with_bf16_logits(text: &str) -> Option<String> {
    let first_end = text[1..]
        .find("    gpu.func @")
        .map_or(text.len(), |at| at + 1);
    let (route, rest) = text.split_at(first_end);
    let route = super::bf16_params::narrow_param(route, 0)?;
    Some(format!("{route}{rest}"))
}

/// Conversion kernel `name`: each thread's element (or vector) of type `from` at `%x`
/// converted by `op` (`arith.truncf` or `arith.extf`) to `to` at `%y`, `%n` of them.
fn conversion_kernel(name: &str, op: &str, from: &str, to: &str) -> String {
    let (x, y) = (format!("memref<?x{from}>"), format!("memref<?x{to}>"));
    dyn_kernel(
        name,
        &[format!("%x: {x}"), format!("%y: {y}"), "%n: index".into()],
        "",
        &format!("        %v = memref.load %x[%i] : {x}\n        %c = {op} %v : {from} to {to}\n        memref.store %c, %y[%i] : {y}\n"),
    )
}

#[cfg(test)]
mod two_pi_tests {
    use super::TWO_PI_PARTS;

    #[test]
    fn two_pi_parts_sum_to_two_pi_and_the_first_two_multiply_exactly() {
        let sum: f64 = TWO_PI_PARTS.iter().map(|&p| p as f64).sum();
        assert!((sum - std::f64::consts::TAU).abs() < 1e-13, "{sum}");
        for p in &TWO_PI_PARTS[..2] {
            // Significant bits: 24 less the mantissa's trailing zeros.
            let bits = 24 - ((p.to_bits() & 0x7f_ffff) | 0x80_0000).trailing_zeros();
            assert!(bits <= 11, "{p}: {bits} bits");
            for k in [1.0f32, 4095.0, 8191.0] {
                assert_eq!((k * p) as f64, k as f64 * *p as f64, "{k} x {p}");
            }
        }
    }
}
