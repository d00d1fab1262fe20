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

use ppmoe_runtime::program::{BinaryFn, Buffer, ExpertDims, Instruction, Op, Program, UnaryFn};
use std::fmt::Write;

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
fn exp(body: &mut String, x: &str, out: &str) {
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
        UnaryFn::Sign => b.push_str("        %z = arith.constant 0.0 : f32\n        %one = arith.constant 1.0 : f32\n        %mone = arith.constant -1.0 : f32\n        %pos = arith.cmpf ogt, %x, %z : f32\n        %neg = arith.cmpf olt, %x, %z : f32\n        %sn = arith.select %neg, %mone, %z : f32\n        %r = arith.select %pos, %one, %sn : f32\n"),
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
            let _ = writeln!(
                body,
                "        %{tag}_s{d} = arith.constant {out_stride} : index\n        %{tag}_q{d} = arith.divui {idx}, %{tag}_s{d} : index\n        %{tag}_n{d} = arith.constant {} : index\n        %{tag}_c{d} = arith.remui %{tag}_q{d}, %{tag}_n{d} : index\n        %{tag}_w{d} = arith.constant {} : index\n        %{tag}_t{d} = arith.muli %{tag}_c{d}, %{tag}_w{d} : index\n        %{tag}_a{d} = arith.addi {acc}, %{tag}_t{d} : index",
                out[d], in_strides[d]
            );
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
    format!(
        "    gpu.func @{name}({}) kernel {{\n{body}      }}\n      gpu.return\n    }}\n",
        args.join(", ")
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
    let _ = writeln!(
        b,
        "        %inv = arith.constant {} : f32\n        %half = arith.constant 0.5 : f32\n        %q = arith.mulf %x, %inv : f32\n        %qh = arith.addf %q, %half : f32\n        %k = llvm.call_intrinsic \"llvm.nvvm.floor.f\"(%qh) : (f32) -> f32",
        c(std::f32::consts::FRAC_1_PI * 0.5)
    );
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
    let _ = writeln!(
        b,
        "        %{out}_nx = arith.negf {x} : f32\n        %{out}_ax = arith.maximumf {x}, %{out}_nx : f32\n        %{out}_p = arith.constant 0.3275911 : f32\n        %{out}_one = arith.constant 1.0 : f32\n        %{out}_pd = arith.mulf %{out}_p, %{out}_ax : f32\n        %{out}_den = arith.addf %{out}_one, %{out}_pd : f32\n        %{out}_t = arith.divf %{out}_one, %{out}_den : f32"
    );
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
    let _ = writeln!(
        b,
        "        %{out}_pe = arith.mulf %{out}_poly, %{out}_e : f32\n        %{out}_y = arith.subf %{out}_one, %{out}_pe : f32\n        %{out}_neg = arith.negf %{out}_y : f32\n        %{out}_z = arith.constant 0.0 : f32\n        %{out}_isneg = arith.cmpf olt, {x}, %{out}_z : f32\n        %{out} = arith.select %{out}_isneg, %{out}_neg, %{out}_y : f32"
    );
}

/// An activation of `x` into `%{out}` (the non-gated ones, and GELU for GeGLU's gate).
fn activation_expr(b: &mut String, a: ppmoe_runtime::program::Activation, x: &str, out: &str) {
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
            let _ = writeln!(b, "        %{out}_one = arith.constant 1.0 : f32\n        %{out}_half = arith.constant 0.5 : f32\n        %{out}_p = arith.addf %{out}_one, %{out}_erf : f32\n        %{out}_hx = arith.mulf %{out}_half, {x} : f32\n        %{out} = arith.mulf %{out}_hx, %{out}_p : f32");
        }
        A::GeluTanh => {
            let _ = writeln!(b, "        %{out}_x3 = arith.mulf {x}, {x} : f32\n        %{out}_x3b = arith.mulf %{out}_x3, {x} : f32\n        %{out}_c = arith.constant 0.044715 : f32\n        %{out}_cx = arith.mulf %{out}_c, %{out}_x3b : f32\n        %{out}_in = arith.addf {x}, %{out}_cx : f32\n        %{out}_s = arith.constant 0.797884583 : f32\n        %{out}_a = arith.mulf %{out}_s, %{out}_in : f32\n        %{out}_t = llvm.call_intrinsic \"llvm.nvvm.tanh.approx.f\"(%{out}_a) : (f32) -> f32\n        %{out}_one = arith.constant 1.0 : f32\n        %{out}_half = arith.constant 0.5 : f32\n        %{out}_p = arith.addf %{out}_one, %{out}_t : f32\n        %{out}_hx = arith.mulf %{out}_half, {x} : f32\n        %{out} = arith.mulf %{out}_hx, %{out}_p : f32");
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
    format!(
        "    gpu.func @{name}({}) kernel {{\n      %bid = gpu.block_id x\n      %bdim = gpu.block_dim x\n      %tid = gpu.thread_id x\n      %i0 = arith.muli %bid, %bdim : index\n      %i = arith.addi %i0, %tid : index\n{n}      %in = arith.cmpi ult, %i, %n : index\n      scf.if %in {{\n{body}      }}\n      gpu.return\n    }}\n",
        args.join(", ")
    )
}

/// The experts' FFN as the kernels need it: from `moe.experts`, or from PPMoE's
/// `moe.expert_ffn`.
pub(super) struct Ffn {
    activation: ppmoe_runtime::program::Activation,
    alpha: f32,
    beta: f32,
    limit: Option<f32>,
    layout: ppmoe_runtime::program::ExpertLayout,
}

impl Ffn {
    pub(super) fn of(op: &Op) -> Option<Ffn> {
        match *op {
            Op::MoeExperts {
                activation,
                alpha,
                beta,
                limit,
                layout,
            }
            | Op::MoeExpertFfn {
                activation,
                alpha,
                beta,
                limit,
                layout,
            } => Some(Ffn {
                activation,
                alpha,
                beta,
                limit,
                layout,
            }),
            _ => None,
        }
    }
}

/// The buffers the experts kernels are specialised to: tokens x [T,H], routing weights [T,k],
/// the two expert stacks, and the routing's expert ids where the step may be routed on the
/// device (`decode_experts`).
pub(super) struct ExpertsOperands {
    pub x: usize,
    pub weights: usize,
    pub w_in: usize,
    pub w_out: usize,
    pub ids: Option<usize>,
    /// The first projection's bias, and the second's, where the step has them.
    pub b_in: Option<usize>,
    pub b_out: Option<usize>,
}

/// The three kernels of `moe.experts` on the GPU (see `GpuOp::Experts`), and whether the
/// rows, hidden activations and expert outputs between them are bf16 (both stacks bf16).
pub(super) fn experts_kernels(
    p: &Program,
    ffn: &Ffn,
    o: &ExpertsOperands,
    prefix: &str,
) -> Option<(String, bool)> {
    let shape = |b: usize| static_shape(&p.buffers[b]);
    let (x, w, w_in, w_out) = (
        shape(o.x)?,
        shape(o.weights)?,
        shape(o.w_in)?,
        shape(o.w_out)?,
    );
    let dims = ffn.layout.dims(&w_in, &w_out)?;
    let stack_bf16 = |b: usize| p.buffers[b].dtype == ppmoe_runtime::DType::BF16;
    let mid = Mid {
        bf16: stack_bf16(o.w_in) && stack_bf16(o.w_out),
    };
    let (t, h, k) = (x[0], x[1], w[1]);
    let mut out = String::new();
    gather_kernels(&mut out, prefix, h, mid);
    act_kernels(&mut out, prefix, ffn, (dims.ffn, dims.n), mid);
    combine_kernels(&mut out, prefix, (t, h, k), mid);
    if let Some(ids) = o.ids {
        let step = (ffn, dims, (t, h, k));
        device_routed_kernels(&mut out, p, o, ids, prefix, step, mid.bf16);
    }
    Some((out, mid.bf16))
}

/// The element type between the experts' kernels and the GEMMs: a load widens it to f32, a
/// store narrows to it (round to nearest even), so the arithmetic stays f32.
#[derive(Clone, Copy)]
struct Mid {
    bf16: bool,
}

impl Mid {
    fn name(self) -> &'static str {
        if self.bf16 {
            "bf16"
        } else {
            "f32"
        }
    }

    fn load(self, dst: &str, mem: &str, idx: &str) -> String {
        if self.bf16 {
            format!("        %{dst}_b = memref.load %{mem}[%{idx}] : memref<?xbf16>\n        %{dst} = arith.extf %{dst}_b : bf16 to f32\n")
        } else {
            format!("        %{dst} = memref.load %{mem}[%{idx}] : memref<?xf32>\n")
        }
    }

    fn store(self, val: &str, mem: &str, idx: &str) -> String {
        if self.bf16 {
            format!("        %{val}_b = arith.truncf %{val} : f32 to bf16\n        memref.store %{val}_b, %{mem}[%{idx}] : memref<?xbf16>\n")
        } else {
            format!("        memref.store %{val}, %{mem}[%{idx}] : memref<?xf32>\n")
        }
    }
}

/// gather: out[i] = x[perm[i / H] * H + i % H] (eight or two columns a thread where bf16 rows
/// allow: x's bf16 copy read by 16-byte words, or pairs).
fn gather_kernels(out: &mut String, prefix: &str, h: usize, mid: Mid) {
    if ppmoe_runtime::program::bf16_octets(mid.bf16, h) {
        out.push_str(&super::gather_octets::kernel(prefix, h));
    }
    if ppmoe_runtime::program::bf16_pairs(mid.bf16, h) {
        out.push_str(&gather_pairs_kernel(prefix, h));
        return;
    }
    let g = format!(
        "        %h = arith.constant {h} : index\n        %r = arith.divui %i, %h : index\n        %c = arith.remui %i, %h : index\n        %p32 = memref.load %perm[%r] : memref<?xi32>\n        %p = arith.index_cast %p32 : i32 to index\n        %s0 = arith.muli %p, %h : index\n        %s = arith.addi %s0, %c : index\n        %v = memref.load %x[%s] : memref<?xf32>\n{}",
        mid.store("v", "out", "i")
    );
    out.push_str(&dyn_kernel(
        &format!("{prefix}_gather"),
        &step_params(Kind::Gather, mid.name()),
        &format!(
            "      %hh = arith.constant {h} : index\n      %n = arith.muli %rows, %hh : index\n"
        ),
        &g,
    ));
}

/// act: a[r, q] from hid[r, q] (and hid[r, F + q]) plus the row's expert's bias; `n` is the
/// first projection's width (2F gated, F not).
fn act_kernels(out: &mut String, prefix: &str, ffn: &Ffn, (f, n): (usize, usize), mid: Mid) {
    let gated = ffn.activation.is_gated();
    let math = act_math(ffn);
    match ppmoe_runtime::program::row_columns(mid.bf16, f) {
        8 => return out.push_str(&super::act_octets::kernel(prefix, (f, n), gated, &math)),
        2 => return out.push_str(&act_pairs_kernel(prefix, f, n, gated, &math)),
        _ => {}
    }
    let mut a = format!(
        "        %f = arith.constant {f} : index\n        %nn = arith.constant {n} : index\n        %r = arith.divui %i, %f : index\n        %q = arith.remui %i, %f : index\n        %e32 = memref.load %rexp[%r] : memref<?xi32>\n        %e = arith.index_cast %e32 : i32 to index\n        %rb = arith.muli %r, %nn : index\n        %eb = arith.muli %e, %nn : index\n        %zero = arith.constant 0.0 : f32\n        %c0 = arith.constant 0 : index\n        %hb = arith.cmpi ne, %has_bias, %c0 : index\n"
    );
    let load = |a: &mut String, col: &str, out: &str| {
        let _ = writeln!(a, "        %{out}_o = arith.addi %rb, {col} : index");
        a.push_str(&mid.load(&format!("{out}_h"), "hid", &format!("{out}_o")));
        add_bias(a, col, &format!("%{out}_h"), out);
    };
    load(&mut a, "%q", "g");
    if gated {
        let _ = writeln!(a, "        %qf = arith.addi %q, %f : index");
        load(&mut a, "%qf", "u");
    }
    a.push_str(&math);
    a.push_str(&mid.store("res", "out", "i"));
    out.push_str(&dyn_kernel(
        &format!("{prefix}_act"),
        &step_params(Kind::Act, mid.name()),
        &format!(
            "      %ff = arith.constant {f} : index\n      %n = arith.muli %rows, %ff : index\n"
        ),
        &a,
    ));
}

/// combine: y[t, c] = sum_j w[t, j] * (out[pos[t, j], c] + b_out[eid[t, j], c]).
fn combine_kernels(out: &mut String, prefix: &str, (t, h, k): (usize, usize, usize), mid: Mid) {
    match ppmoe_runtime::program::row_columns(mid.bf16, h) {
        8 => return out.push_str(&super::combine_octets::kernel(prefix, t, h, k)),
        2 => return out.push_str(&combine_pairs_kernel(prefix, t, h, k)),
        _ => {}
    }
    let c = format!(
        "        %h = arith.constant {h} : index\n        %k = arith.constant {k} : index\n        %t = arith.divui %i, %h : index\n        %c = arith.remui %i, %h : index\n        %c0 = arith.constant 0 : index\n        %c1 = arith.constant 1 : index\n        %zero = arith.constant 0.0 : f32\n        %z32 = arith.constant 0 : i32\n        %hb = arith.cmpi ne, %has_bias, %c0 : index\n        %tk = arith.muli %t, %k : index\n        %acc = scf.for %j = %c0 to %k step %c1 iter_args(%a = %zero) -> (f32) {{\n          %s = arith.addi %tk, %j : index\n          %p32 = memref.load %pos[%s] : memref<?xi32>\n          %valid = arith.cmpi sge, %p32, %z32 : i32\n          %v = scf.if %valid -> (f32) {{\n            %p = arith.index_cast %p32 : i32 to index\n            %pb = arith.muli %p, %h : index\n            %po = arith.addi %pb, %c : index\n{load_o}            %b = scf.if %hb -> (f32) {{\n              %e32 = memref.load %eid[%s] : memref<?xi32>\n              %e = arith.index_cast %e32 : i32 to index\n              %ebb = arith.muli %e, %h : index\n              %eo = arith.addi %ebb, %c : index\n              %bv = memref.load %bout[%eo] : memref<?xf32>\n              scf.yield %bv : f32\n            }} else {{\n              scf.yield %zero : f32\n            }}\n            %ob = arith.addf %o, %b : f32\n            %wv = memref.load %w[%s] : memref<?xf32>\n            %wo = arith.mulf %wv, %ob : f32\n            scf.yield %wo : f32\n          }} else {{\n            scf.yield %zero : f32\n          }}\n          %na = arith.addf %a, %v : f32\n          scf.yield %na : f32\n        }}\n        memref.store %acc, %y[%i] : memref<?xf32>\n",
        load_o = mid.load("o", "out", "po")
    );
    out.push_str(&dyn_kernel(
        &format!("{prefix}_combine"),
        &step_params(Kind::Combine, mid.name()),
        &format!("      %n = arith.constant {} : index\n", t * h),
        &c,
    ));
}

/// A step whose routing is on the device (`ids`): the listed projections (`decode_experts`),
/// one token's two-kernel form where it pays, and the device grouping for cuBLAS over
/// device-side pointers (rows, hidden activations and outputs of the stacks' own type: both
/// bf16, or both f32).
fn device_routed_kernels(
    out: &mut String,
    p: &Program,
    o: &ExpertsOperands,
    ids: usize,
    prefix: &str,
    (ffn, dims, (t, h, k)): (&Ffn, ExpertDims, (usize, usize, usize)),
    bf16: bool,
) {
    let (f, n) = (dims.ffn, dims.n);
    let gated = ffn.activation.is_gated();
    let step = (dims, t, k);
    // A gated activation without a first bias can be the tensor-core projection's epilogue.
    let act = (gated && o.b_in.is_none()).then(|| act_math(ffn));
    let decode = super::decode_experts::kernels(p, o, ids, prefix, (ffn.layout, act), step, bf16);
    // One token routed on the device, bf16 stacks, no biases: its two-kernel form too.
    // (A whole step's only: PPMoE's local step at one token has not run on two GPUs.)
    let single = decode.is_some()
        && bf16
        && t == 1
        && ppmoe_runtime::program::single_token_pays(h)
        && !prefix.ends_with("_local_experts")
        && o.b_in.is_none()
        && o.b_out.is_none()
        && n == if gated { 2 * f } else { f };
    out.push_str(&decode.unwrap_or_default());
    if single {
        let x_bf16 = p.buffers[o.x].dtype == ppmoe_runtime::DType::BF16;
        let dims = (h, f, k, dims.experts);
        let math = act_math(ffn);
        out.push_str(&super::single_token::kernels(
            prefix,
            dims,
            (&math, gated),
            x_bf16,
        ));
    }
    let stacks = p.buffers[o.w_in].dtype;
    let same = stacks == p.buffers[o.w_out].dtype;
    let bytes = match (bf16, stacks) {
        (true, _) => Some(2),
        (false, ppmoe_runtime::DType::F32) => Some(4),
        _ => None,
    };
    if let (true, Some(bytes)) = (same, bytes) {
        let grouping = super::device_grouping::kernel(p, ids, prefix, (dims, t * k, k), bytes);
        out.push_str(&grouping.unwrap_or_default());
    }
}

/// An experts step's row kernels.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Gather,
    Act,
    Combine,
}

/// The parameters of an experts step's row kernel, its rows of element type `rows` (`bf16` or
/// `f32`; `i32` where two bf16 columns are one word): the same in every form of the kernel,
/// as the runtime passes them.
pub(super) fn step_params(kind: Kind, rows: &str) -> Vec<String> {
    let r = format!("memref<?x{rows}>");
    match kind {
        Kind::Gather => vec![
            "%x: memref<?xf32>".into(),
            "%perm: memref<?xi32>".into(),
            format!("%out: {r}"),
            "%rows: index".into(),
        ],
        Kind::Act => vec![
            format!("%hid: {r}"),
            "%bias: memref<?xf32>".into(),
            "%rexp: memref<?xi32>".into(),
            format!("%out: {r}"),
            "%rows: index".into(),
            "%has_bias: index".into(),
        ],
        Kind::Combine => vec![
            format!("%out: {r}"),
            "%pos: memref<?xi32>".into(),
            "%w: memref<?xf32>".into(),
            "%eid: memref<?xi32>".into(),
            "%bout: memref<?xf32>".into(),
            "%y: memref<?xf32>".into(),
            "%has_bias: index".into(),
        ],
    }
}

/// `%{out}` = `value` plus the row's expert's bias at column `col` (0 without a bias).
pub(super) fn add_bias(a: &mut String, col: &str, value: &str, out: &str) {
    let _ = writeln!(
        a,
        "        %{out}_b = scf.if %hb -> (f32) {{\n          %bo = arith.addi %eb, {col} : index\n          %bv = memref.load %bias[%bo] : memref<?xf32>\n          scf.yield %bv : f32\n        }} else {{\n          scf.yield %zero : f32\n        }}\n        %{out} = arith.addf {value}, %{out}_b : f32"
    );
}

/// The activation of one element, from `%g` (and `%u`, gated: the hidden values with their
/// biases) into `%res`; every other name is its own.
pub(super) fn act_math(ffn: &Ffn) -> String {
    use ppmoe_runtime::program::Activation;
    let Ffn {
        activation,
        alpha,
        beta,
        limit,
        ..
    } = ffn;
    let mut a = String::new();
    if !activation.is_gated() {
        activation_expr(&mut a, *activation, "%g", "res");
        return a;
    }
    let (gl, ul) = match limit {
        Some(l) => {
            let _ = writeln!(a, "        %lim = arith.constant {} : f32\n        %nlim = arith.constant {} : f32\n        %gl = arith.minimumf %g, %lim : f32\n        %ul0 = arith.minimumf %u, %lim : f32\n        %ul = arith.maximumf %ul0, %nlim : f32", hexf(*l), hexf(-l));
            ("%gl", "%ul")
        }
        None => ("%g", "%u"),
    };
    if *activation == Activation::Geglu {
        activation_expr(&mut a, Activation::Gelu, gl, "gate");
    } else {
        let _ = writeln!(a, "        %al = arith.constant {} : f32\n        %ag = arith.mulf %al, {gl} : f32\n        %nag = arith.negf %ag : f32", hexf(*alpha));
        exp(&mut a, "%nag", "ee");
        // g / (1 + e^-g) as g times the denominator's approximate reciprocal (within an ulp
        // of f32, as the ex2 before it): the correctly rounded division was a call with a
        // range check per element in the projections' epilogues.
        let _ = writeln!(a, "        %one = arith.constant 1.0 : f32\n        %den = arith.addf %one, %ee : f32\n        %rden = llvm.call_intrinsic \"llvm.nvvm.rcp.approx.ftz.f\"(%den) : (f32) -> f32\n        %gate = arith.mulf {gl}, %rden : f32");
    }
    let _ = writeln!(a, "        %be = arith.constant {} : f32\n        %up = arith.addf {ul}, %be : f32\n        %res = arith.mulf %gate, %up : f32", hexf(*beta));
    a
}

/// `%{o}gv` and `%{o}uv`: a gate value `g` and its up value `u` (f32) rounded to bf16
/// (nearest even) and widened again, as PyTorch's bf16 projection stores them before the
/// activation; one `cvt.rn.bf16x2.f32` narrows both, the gate in the low half (the two
/// single narrowings were two F2F instructions in `pproj_act`'s SASS, 128 per thread and tile).
pub(super) fn rounded_gate_up(b: &mut String, o: &str, g: &str, u: &str, ind: &str) {
    let _ = writeln!(
        b,
        "{ind}%{o}gu = llvm.inline_asm asm_dialect = att \"cvt.rn.bf16x2.f32 $0, $1, $2;\", \"=r,f,f\" {u}, {g} : (f32, f32) -> i32\n{ind}%{o}s16 = arith.constant 16 : i32\n{ind}%{o}glo = arith.shli %{o}gu, %{o}s16 : i32\n{ind}%{o}gv = arith.bitcast %{o}glo : i32 to f32\n{ind}%{o}hm = arith.constant -65536 : i32\n{ind}%{o}uhi = arith.andi %{o}gu, %{o}hm : i32\n{ind}%{o}uv = arith.bitcast %{o}uhi : i32 to f32"
    );
}

/// `v` (f32) rounded to bf16 (nearest even, as a bf16 store), its bits in the low half of
/// the i32 `%{name}`.
fn bf16_bits(b: &mut String, v: &str, name: &str) {
    let _ = writeln!(
        b,
        "        %{name}_b = arith.truncf {v} : f32 to bf16\n        %{name}_i = arith.bitcast %{name}_b : bf16 to i16\n        %{name} = arith.extui %{name}_i : i16 to i32"
    );
}

/// The gather into bf16 rows of an even width `h` (`ppmoe_runtime::program::bf16_pairs`): one
/// thread per two columns, the two f32 values rounded to bf16 and stored as one 4-byte word
/// (the even column in its low half).
fn gather_pairs_kernel(prefix: &str, h: usize) -> String {
    let mut g = format!(
        "        %h = arith.constant {h} : index\n        %hp = arith.constant {} : index\n        %c2 = arith.constant 2 : index\n        %c1 = arith.constant 1 : index\n        %r = arith.divui %i, %hp : index\n        %cp = arith.remui %i, %hp : index\n        %c = arith.muli %cp, %c2 : index\n        %p32 = memref.load %perm[%r] : memref<?xi32>\n        %p = arith.index_cast %p32 : i32 to index\n        %s0 = arith.muli %p, %h : index\n        %s = arith.addi %s0, %c : index\n        %s1 = arith.addi %s, %c1 : index\n        %v0 = memref.load %x[%s] : memref<?xf32>\n        %v1 = memref.load %x[%s1] : memref<?xf32>\n",
        h / 2
    );
    bf16_bits(&mut g, "%v0", "w0");
    bf16_bits(&mut g, "%v1", "w1");
    g.push_str("        %s16 = arith.constant 16 : i32\n        %hi = arith.shli %w1, %s16 : i32\n        %word = arith.ori %w0, %hi : i32\n        memref.store %word, %out[%i] : memref<?xi32>\n");
    dyn_kernel(
        &format!("{prefix}_gather"),
        &step_params(Kind::Gather, "i32"),
        &format!(
            "      %hh = arith.constant {} : index\n      %n = arith.muli %rows, %hh : index\n",
            h / 2
        ),
        &g,
    )
}

/// The combine over bf16 rows of an even width `h` (`ppmoe_runtime::program::bf16_pairs`): one
/// thread per two columns of a token, each slot's two bf16 values read as one 4-byte word;
/// each column's sum is the scalar kernel's, term by term in slot order.
fn combine_pairs_kernel(prefix: &str, t: usize, h: usize, k: usize) -> String {
    let c = format!(
        "        %h = arith.constant {h} : index\n        %hp = arith.constant {hp} : index\n        %k = arith.constant {k} : index\n        %c2 = arith.constant 2 : index\n        %t = arith.divui %i, %hp : index\n        %cp = arith.remui %i, %hp : index\n        %c = arith.muli %cp, %c2 : index\n        %c0 = arith.constant 0 : index\n        %c1 = arith.constant 1 : index\n        %zero = arith.constant 0.0 : f32\n        %z32 = arith.constant 0 : i32\n        %s16 = arith.constant 16 : i32\n        %hmask = arith.constant -65536 : i32\n        %hb = arith.cmpi ne, %has_bias, %c0 : index\n        %tk = arith.muli %t, %k : index\n        %acc:2 = scf.for %j = %c0 to %k step %c1 iter_args(%a0 = %zero, %a1 = %zero) -> (f32, f32) {{\n          %s = arith.addi %tk, %j : index\n          %p32 = memref.load %pos[%s] : memref<?xi32>\n          %valid = arith.cmpi sge, %p32, %z32 : i32\n          %v:2 = scf.if %valid -> (f32, f32) {{\n            %p = arith.index_cast %p32 : i32 to index\n            %pb = arith.muli %p, %h : index\n            %po = arith.addi %pb, %c : index\n            %wi = arith.divui %po, %c2 : index\n            %word = memref.load %out[%wi] : memref<?xi32>\n            %lo = arith.shli %word, %s16 : i32\n            %hi = arith.andi %word, %hmask : i32\n            %o0 = arith.bitcast %lo : i32 to f32\n            %o1 = arith.bitcast %hi : i32 to f32\n            %b:2 = scf.if %hb -> (f32, f32) {{\n              %e32 = memref.load %eid[%s] : memref<?xi32>\n              %e = arith.index_cast %e32 : i32 to index\n              %ebb = arith.muli %e, %h : index\n              %eo = arith.addi %ebb, %c : index\n              %eo1 = arith.addi %eo, %c1 : index\n              %bv0 = memref.load %bout[%eo] : memref<?xf32>\n              %bv1 = memref.load %bout[%eo1] : memref<?xf32>\n              scf.yield %bv0, %bv1 : f32, f32\n            }} else {{\n              scf.yield %zero, %zero : f32, f32\n            }}\n            %ob0 = arith.addf %o0, %b#0 : f32\n            %ob1 = arith.addf %o1, %b#1 : f32\n            %wv = memref.load %w[%s] : memref<?xf32>\n            %wo0 = arith.mulf %wv, %ob0 : f32\n            %wo1 = arith.mulf %wv, %ob1 : f32\n            scf.yield %wo0, %wo1 : f32, f32\n          }} else {{\n            scf.yield %zero, %zero : f32, f32\n          }}\n          %na0 = arith.addf %a0, %v#0 : f32\n          %na1 = arith.addf %a1, %v#1 : f32\n          scf.yield %na0, %na1 : f32, f32\n        }}\n        %y0 = arith.muli %i, %c2 : index\n        %y1 = arith.addi %y0, %c1 : index\n        memref.store %acc#0, %y[%y0] : memref<?xf32>\n        memref.store %acc#1, %y[%y1] : memref<?xf32>\n",
        hp = h / 2
    );
    dyn_kernel(
        &format!("{prefix}_combine"),
        &step_params(Kind::Combine, "i32"),
        &format!("      %n = arith.constant {} : index\n", t * h / 2),
        &c,
    )
}

/// The activation kernel of bf16 rows with an even FFN width `f`
/// (`ppmoe_runtime::program::bf16_pairs`): one thread per two columns, each two bf16
/// values one 4-byte word (the scalar kernel's 2-byte accesses reach about a third of the
/// copy bandwidth). A word's low half is the even column: widened, a bf16 is its bits over
/// 16 zero bits; narrowed, the same round to nearest even as the scalar kernel's. `math` is
/// `act_math`, made each column's own.
fn act_pairs_kernel(prefix: &str, f: usize, n: usize, gated: bool, math: &str) -> String {
    let half = f / 2;
    let mut a = format!(
        "        %fh = arith.constant {half} : index\n        %f = arith.constant {f} : index\n        %nn = arith.constant {n} : index\n        %c2 = arith.constant 2 : index\n        %c1 = arith.constant 1 : index\n        %r = arith.divui %i, %fh : index\n        %qp = arith.remui %i, %fh : index\n        %q = arith.muli %qp, %c2 : index\n        %e32 = memref.load %rexp[%r] : memref<?xi32>\n        %e = arith.index_cast %e32 : i32 to index\n        %rb = arith.muli %r, %nn : index\n        %eb = arith.muli %e, %nn : index\n        %zero = arith.constant 0.0 : f32\n        %c0 = arith.constant 0 : index\n        %hb = arith.cmpi ne, %has_bias, %c0 : index\n        %s16 = arith.constant 16 : i32\n        %hmask = arith.constant -65536 : i32\n"
    );
    // The two columns of the gate (and of the up projection, F further on), with biases.
    let pair = |a: &mut String, col: &str, name: &str| {
        let _ = writeln!(
            a,
            "        %{name}_o = arith.addi %rb, {col} : index\n        %{name}_wi = arith.divui %{name}_o, %c2 : index\n        %{name}_w = memref.load %hid[%{name}_wi] : memref<?xi32>\n        %{name}_lo = arith.shli %{name}_w, %s16 : i32\n        %{name}_hi = arith.andi %{name}_w, %hmask : i32\n        %{name}_h0 = arith.bitcast %{name}_lo : i32 to f32\n        %{name}_h1 = arith.bitcast %{name}_hi : i32 to f32\n        %{name}_c1 = arith.addi {col}, %c1 : index"
        );
        add_bias(a, col, &format!("%{name}_h0"), &format!("{name}0"));
        add_bias(
            a,
            &format!("%{name}_c1"),
            &format!("%{name}_h1"),
            &format!("{name}1"),
        );
    };
    pair(&mut a, "%q", "g");
    if gated {
        let _ = writeln!(a, "        %qf = arith.addi %q, %f : index");
        pair(&mut a, "%qf", "u");
    }
    for j in 0..2 {
        let operands =
            std::collections::BTreeMap::from([("g", format!("%g{j}")), ("u", format!("%u{j}"))]);
        a.push_str(&super::pointwise::scoped(math, &format!("p{j}"), &operands));
        bf16_bits(&mut a, &format!("%p{j}_res"), &format!("r{j}w"));
    }
    let _ = writeln!(
        a,
        "        %hiw = arith.shli %r1w, %s16 : i32\n        %word = arith.ori %r0w, %hiw : i32\n        memref.store %word, %out[%i] : memref<?xi32>"
    );
    dyn_kernel(
        &format!("{prefix}_act"),
        &step_params(Kind::Act, "i32"),
        &format!(
            "      %ff = arith.constant {half} : index\n      %n = arith.muli %rows, %ff : index\n"
        ),
        &a,
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
    let n: usize = out_shape.iter().product();
    let mut body = String::new();
    let name;
    match &ins.op {
        Op::Unary { f } => {
            let expr = unary_expr(*f)?;
            name = format!("k{idx}_{}", ins.op.name());
            prologue(&mut body, n);
            let _ = writeln!(
                body,
                "        %x = memref.load %a0[%i] : {}",
                memref(&out_shape)
            );
            body.push_str(&expr);
            let _ = writeln!(
                body,
                "        memref.store %r, %a1[%i] : {}",
                memref(&out_shape)
            );
            let params = vec![memref(&out_shape), memref(&out_shape)];
            Some((name.clone(), kernel(&name, &params, &body), n))
        }
        Op::Binary { f } => {
            let op = binary_op(*f)?;
            let (a, b) = (static_shape(bufs[0])?, static_shape(bufs[1])?);
            name = format!("k{idx}_{}", ins.op.name());
            prologue(&mut body, n);
            let oa = broadcast_offset(&mut body, "pa", &a, &out_shape);
            let ob = broadcast_offset(&mut body, "pb", &b, &out_shape);
            let _ = writeln!(
                body,
                "        %x = memref.load %a0[{oa}] : {}\n        %y = memref.load %a1[{ob}] : {}",
                memref(&a),
                memref(&b)
            );
            let _ = writeln!(
                body,
                "        %r = {op} %x, %y : f32\n        memref.store %r, %a2[%i] : {}",
                memref(&out_shape)
            );
            let params = vec![memref(&a), memref(&b), memref(&out_shape)];
            Some((name.clone(), kernel(&name, &params, &body), n))
        }
        Op::LayerNorm { axis, epsilon } => {
            let rank = out_shape.len() as i64;
            let from = if *axis < 0 { axis + rank } else { *axis };
            if !(0..rank).contains(&from) || !(2..=3).contains(&bufs.len()) {
                return None;
            }
            let inner: usize = out_shape[from as usize..].iter().product();
            let scale = static_shape(bufs[1])?;
            let bias = match bufs.get(2) {
                Some(b) => Some(static_shape(b)?),
                None => None,
            };
            let fits = |s: &[usize]| s.iter().product::<usize>() == inner;
            if bufs[0].shape != outs[0].shape
                || !fits(&scale)
                || !bias.as_ref().is_none_or(|b| fits(b))
            {
                return None;
            }
            let rows = n / inner.max(1);
            name = format!("k{idx}_layer_norm");
            prologue(&mut body, rows * WARP);
            layer_norm_rows(
                &mut body,
                inner,
                *epsilon,
                bufs.len() == 3,
                &out_shape,
                &scale,
            );
            let mut params = vec![memref(&out_shape), memref(&scale)];
            if let Some(b) = &bias {
                params.push(memref(b));
            }
            params.push(memref(&out_shape));
            Some((name.clone(), kernel(&name, &params, &body), rows * WARP))
        }
        Op::Softmax { axis, log: false } => {
            let rank = out_shape.len();
            if !(*axis == -1 || *axis == rank as i64 - 1) {
                return None;
            }
            let cols = *out_shape.last()?;
            let rows = n / cols.max(1);
            name = format!("k{idx}_softmax");
            prologue(&mut body, rows * WARP);
            softmax_rows(&mut body, cols, &memref(&out_shape));
            let params = vec![memref(&out_shape), memref(&out_shape)];
            Some((name.clone(), kernel(&name, &params, &body), rows * WARP))
        }
        _ => None,
    }
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
    let _ = writeln!(b, "        %{out}_w = arith.constant 32 : i32");
    let mut acc = format!("%{v}");
    for (k, off) in [16, 8, 4, 2, 1].iter().enumerate() {
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
    let mo = memref(out);
    prologue(b, rows * WARP);
    let _ = writeln!(
        b,
        "        %c32 = arith.constant 32 : index\n        %row = arith.divui %i, %c32 : index\n        %lane = arith.remui %i, %c32 : index\n        %cols = arith.constant {cols} : index\n        %base = arith.muli %row, %cols : index\n        %init = arith.constant {init} : f32"
    );
    let _ = writeln!(
        b,
        "        %part = scf.for %j = %lane to %cols step %c32 iter_args(%acc = %init) -> (f32) {{\n          %o = arith.addi %base, %j : index"
    );
    let v = input(b);
    let _ = writeln!(
        b,
        "          %na = {op} %acc, {v} : f32\n          scf.yield %na : f32\n        }}"
    );
    let mut res = warp_reduce(b, "part", "tot", op);
    if f == ReduceFn::Mean {
        let _ = writeln!(
            b,
            "        %cf = arith.constant {} : f32\n        %mean = arith.divf {res}, %cf : f32",
            hexf(cols as f32)
        );
        res = "%mean".into();
    }
    let _ = writeln!(
        b,
        "        %c0 = arith.constant 0 : index\n        %first = arith.cmpi eq, %lane, %c0 : index\n        scf.if %first {{\n          memref.store {res}, {out_param}[%row] : {mo}\n        }}"
    );
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
    let _ = writeln!(
        b,
        "        %c32 = arith.constant 32 : index\n        %row = arith.divui %i, %c32 : index\n        %lane = arith.remui %i, %c32 : index\n        %cols = arith.constant {inner} : index\n        %base = arith.muli %row, %cols : index\n        %zero = arith.constant 0.0 : f32\n        %nf = arith.constant {} : f32",
        hexf(inner as f32)
    );
    let _ = writeln!(
        b,
        "        %psum = scf.for %j = %lane to %cols step %c32 iter_args(%acc = %zero) -> (f32) {{\n          %o = arith.addi %base, %j : index\n          %v = memref.load %a0[%o] : {mx}\n          %na = arith.addf %acc, %v : f32\n          scf.yield %na : f32\n        }}"
    );
    let sum = warp_reduce(b, "psum", "sum", "arith.addf");
    let _ = writeln!(b, "        %mean = arith.divf {sum}, %nf : f32");
    let _ = writeln!(
        b,
        "        %psq = scf.for %j = %lane to %cols step %c32 iter_args(%acc = %zero) -> (f32) {{\n          %o = arith.addi %base, %j : index\n          %v = memref.load %a0[%o] : {mx}\n          %d = arith.subf %v, %mean : f32\n          %d2 = arith.mulf %d, %d : f32\n          %na = arith.addf %acc, %d2 : f32\n          scf.yield %na : f32\n        }}"
    );
    let sq = warp_reduce(b, "psq", "sq", "arith.addf");
    let _ = writeln!(
        b,
        "        %var = arith.divf {sq}, %nf : f32\n        %eps = arith.constant {} : f32\n        %ve = arith.addf %var, %eps : f32\n        %sd = llvm.call_intrinsic \"llvm.nvvm.sqrt.rn.f\"(%ve) : (f32) -> f32\n        %one = arith.constant 1.0 : f32\n        %inv = arith.divf %one, %sd : f32",
        hexf(eps)
    );
    let bias = if has_bias {
        format!("          %bv = memref.load %a2[%j] : {ms}\n          %r = arith.addf %ys, %bv : f32\n")
    } else {
        "          %r = arith.addf %ys, %zero : f32\n".to_string()
    };
    let _ = writeln!(
        b,
        "        scf.for %j = %lane to %cols step %c32 {{\n          %o = arith.addi %base, %j : index\n          %v = memref.load %a0[%o] : {mx}\n          %d = arith.subf %v, %mean : f32\n          %y = arith.mulf %d, %inv : f32\n          %sv = memref.load %a1[%j] : {ms}\n          %ys = arith.mulf %y, %sv : f32\n{bias}          memref.store %r, {out}[%o] : {mx}\n        }}"
    );
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
    let _ = writeln!(
        b,
        "        %c32 = arith.constant 32 : index\n        %row = arith.divui %i, %c32 : index\n        %lane = arith.remui %i, %c32 : index\n        %cols = arith.constant {cols} : index\n        %base = arith.muli %row, %cols : index\n        %ninf = arith.constant -3.40282347e+38 : f32\n        %zero = arith.constant 0.0 : f32"
    );
    let _ = writeln!(
        b,
        "        %pmax = scf.for %j = %lane to %cols step %c32 iter_args(%acc = %ninf) -> (f32) {{\n          %o = arith.addi %base, %j : index"
    );
    let v = input(b, "p1");
    let _ = writeln!(
        b,
        "          %nm = arith.maximumf %acc, {v} : f32\n          scf.yield %nm : f32\n        }}"
    );
    let mx = warp_reduce(b, "pmax", "mx", "arith.maximumf");
    let _ = writeln!(
        b,
        "        %psum = scf.for %j = %lane to %cols step %c32 iter_args(%acc = %zero) -> (f32) {{\n          %o = arith.addi %base, %j : index"
    );
    let v = input(b, "p2");
    let _ = writeln!(
        b,
        "          %d = arith.subf {v}, {mx} : f32\n          %l2e = arith.constant 1.44269504 : f32\n          %dm = arith.mulf %d, %l2e : f32\n          %e = llvm.call_intrinsic \"llvm.nvvm.ex2.approx.ftz.f\"(%dm) : (f32) -> f32\n          memref.store %e, {out}[%o] : {m}\n          %ns = arith.addf %acc, %e : f32\n          scf.yield %ns : f32\n        }}"
    );
    let sum = warp_reduce(b, "psum", "sum", "arith.addf");
    let _ = writeln!(
        b,
        "        scf.for %j = %lane to %cols step %c32 {{\n          %o = arith.addi %base, %j : index\n          %e = memref.load {out}[%o] : {m}\n          %q = arith.divf %e, {sum} : f32"
    );
    let r = finish(b, "%q");
    let _ = writeln!(b, "          memref.store {r}, {out}[%o] : {m}\n        }}");
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
    let body = format!(
        "        %h = arith.constant {row} : index\n        %r = arith.divui %i, %h : index\n        %c = arith.remui %i, %h : index\n        %p32 = memref.load %ids[%r] : memref<?xi32>\n        %p = arith.index_cast %p32 : i32 to index\n        %s0 = arith.muli %p, %h : index\n        %s = arith.addi %s0, %c : index\n        %v = memref.load %table[%s] : memref<?xf32>\n        memref.store %v, %out[%i] : memref<?xf32>\n"
    );
    Some(dyn_kernel(
        name,
        &[
            "%table: memref<?xf32>",
            "%ids: memref<?xi32>",
            "%out: memref<?xf32>",
            "%rows: index",
        ],
        &format!(
            "      %hh = arith.constant {row} : index\n      %n = arith.muli %rows, %hh : index\n"
        ),
        &body,
    ))
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
        })
    };
    let kernels = Ffn::of(&ins.op)
        .zip(operands())
        .and_then(|(ffn, o)| experts_kernels(p, &ffn, &o, &prefix));
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

/// Mixtral's and Qwen's SiLU-gated activation as `act_math` writes it (for the projections'
/// tests).
#[cfg(test)]
pub(super) fn silu_gated_math() -> String {
    act_math(&Ffn {
        activation: ppmoe_runtime::program::Activation::Swiglu,
        alpha: 1.0,
        beta: 0.0,
        limit: None,
        layout: ppmoe_runtime::program::ExpertLayout::Linear,
    })
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
