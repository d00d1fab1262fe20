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

use ppmoe_runtime::program::{BinaryFn, Buffer, Op, Program, UnaryFn};
use std::fmt::Write;

/// How one instruction runs on the GPU (the runtime's own type: the bundle carries it).
pub use ppmoe_runtime::program::GpuOp as Lowered;

pub struct KernelPlan {
    /// Per instruction of the program.
    pub lowered: Vec<Lowered>,
    /// The `gpu.module` holding the generated kernels (MLIR text).
    pub module: String,
}

fn static_shape(b: &Buffer) -> Option<Vec<usize>> {
    b.shape.iter().copied().collect()
}

fn memref(shape: &[usize]) -> String {
    let n: usize = shape.iter().product();
    format!("memref<{n}xf32>")
}

/// The flat index of the thread, and the guard against the tail: the common prologue.
fn prologue(body: &mut String, n: usize) {
    let _ = writeln!(body, "      %bid = gpu.block_id x\n      %bdim = gpu.block_dim x\n      %tid = gpu.thread_id x");
    let _ = writeln!(body, "      %i0 = arith.muli %bid, %bdim : index\n      %i = arith.addi %i0, %tid : index");
    let _ = writeln!(body, "      %n = arith.constant {n} : index\n      %in = arith.cmpi ult, %i, %n : index\n      scf.if %in {{");
}

/// exp(x) as ex2(x * log2 e).
fn exp(body: &mut String, x: &str, out: &str) {
    let _ = writeln!(body, "        %{out}_l = arith.constant 1.44269504 : f32\n        %{out}_m = arith.mulf {x}, %{out}_l : f32");
    let _ = writeln!(body, "        %{out} = llvm.call_intrinsic \"llvm.nvvm.ex2.approx.ftz.f\"(%{out}_m) : (f32) -> f32");
}

/// The scalar expression of a unary function, from `%x` into `%r`; None when not generated.
fn unary_expr(f: UnaryFn) -> Option<String> {
    let mut b = String::new();
    match f {
        UnaryFn::Neg => b.push_str("        %r = arith.negf %x : f32\n"),
        UnaryFn::Abs => b.push_str("        %r = math.absf %x : f32\n"),
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
        _ => return None,
    }
    Some(b)
}

fn binary_op(f: BinaryFn) -> Option<&'static str> {
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
fn broadcast_offset(body: &mut String, tag: &str, inp: &[usize], out: &[usize]) -> String {
    if inp == out {
        return "%i".into();
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
                "        %{tag}_s{d} = arith.constant {out_stride} : index\n        %{tag}_q{d} = arith.divui %i, %{tag}_s{d} : index\n        %{tag}_n{d} = arith.constant {} : index\n        %{tag}_c{d} = arith.remui %{tag}_q{d}, %{tag}_n{d} : index\n        %{tag}_w{d} = arith.constant {} : index\n        %{tag}_t{d} = arith.muli %{tag}_c{d}, %{tag}_w{d} : index\n        %{tag}_a{d} = arith.addi {acc}, %{tag}_t{d} : index",
                out[d], in_strides[d]
            );
            acc = format!("%{tag}_a{d}");
        }
        out_stride *= out[d];
    }
    acc
}

fn kernel(name: &str, params: &[String], body: &str) -> String {
    let args: Vec<String> = params.iter().enumerate().map(|(k, t)| format!("%a{k}: {t}")).collect();
    format!("    gpu.func @{name}({}) kernel {{\n{body}      }}\n      gpu.return\n    }}\n", args.join(", "))
}

/// One kernel for one instruction, if it is generated; with its thread count.
fn generate(p: &Program, idx: usize) -> Option<(String, String, usize)> {
    let ins = &p.instructions[idx];
    let bufs: Vec<&Buffer> = ins.inputs.iter().flatten().map(|&b| &p.buffers[b]).collect();
    let outs: Vec<&Buffer> = ins.outputs.iter().map(|&o| &p.buffers[o]).collect();
    // Floats of any storage type are f32 on the device.
    if bufs.iter().chain(&outs).any(|b| !b.dtype.is_float() || static_shape(b).is_none()) {
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
            let _ = writeln!(body, "        %x = memref.load %a0[%i] : {}", memref(&out_shape));
            body.push_str(&expr);
            let _ = writeln!(body, "        memref.store %r, %a1[%i] : {}", memref(&out_shape));
            let params = vec![memref(&out_shape), memref(&out_shape)];
            return Some((name.clone(), kernel(&name, &params, &body), n));
        }
        Op::Binary { f } => {
            let op = binary_op(*f)?;
            let (a, b) = (static_shape(bufs[0])?, static_shape(bufs[1])?);
            name = format!("k{idx}_{}", ins.op.name());
            prologue(&mut body, n);
            let oa = broadcast_offset(&mut body, "pa", &a, &out_shape);
            let ob = broadcast_offset(&mut body, "pb", &b, &out_shape);
            let _ = writeln!(body, "        %x = memref.load %a0[{oa}] : {}\n        %y = memref.load %a1[{ob}] : {}", memref(&a), memref(&b));
            let _ = writeln!(body, "        %r = {op} %x, %y : f32\n        memref.store %r, %a2[%i] : {}", memref(&out_shape));
            let params = vec![memref(&a), memref(&b), memref(&out_shape)];
            return Some((name.clone(), kernel(&name, &params, &body), n));
        }
        Op::Softmax { axis, log: false } => {
            let rank = out_shape.len();
            if !(*axis == -1 || *axis == rank as i64 - 1) {
                return None;
            }
            let cols = *out_shape.last()?;
            let rows = n / cols.max(1);
            name = format!("k{idx}_softmax");
            // One thread per row: max, sum of exponentials, normalised write.
            prologue(&mut body, rows);
            let m = memref(&out_shape);
            let _ = writeln!(
                body,
                "        %cols = arith.constant {cols} : index\n        %c0 = arith.constant 0 : index\n        %c1 = arith.constant 1 : index\n        %base = arith.muli %i, %cols : index\n        %ninf = arith.constant -3.40282347e+38 : f32\n        %zero = arith.constant 0.0 : f32\n        %mx = scf.for %j = %c0 to %cols step %c1 iter_args(%acc = %ninf) -> (f32) {{\n          %o = arith.addi %base, %j : index\n          %v = memref.load %a0[%o] : {m}\n          %nm = arith.maximumf %acc, %v : f32\n          scf.yield %nm : f32\n        }}\n        %sum = scf.for %j = %c0 to %cols step %c1 iter_args(%acc = %zero) -> (f32) {{\n          %o = arith.addi %base, %j : index\n          %v = memref.load %a0[%o] : {m}\n          %d = arith.subf %v, %mx : f32\n          %l2e = arith.constant 1.44269504 : f32\n          %dm = arith.mulf %d, %l2e : f32\n          %e = llvm.call_intrinsic \"llvm.nvvm.ex2.approx.ftz.f\"(%dm) : (f32) -> f32\n          memref.store %e, %a1[%o] : {m}\n          %ns = arith.addf %acc, %e : f32\n          scf.yield %ns : f32\n        }}\n        scf.for %j = %c0 to %cols step %c1 {{\n          %o = arith.addi %base, %j : index\n          %e = memref.load %a1[%o] : {m}\n          %q = arith.divf %e, %sum : f32\n          memref.store %q, %a1[%o] : {m}\n        }}"
            );
            let params = vec![m.clone(), m];
            return Some((name.clone(), kernel(&name, &params, &body), rows));
        }
        _ => None,
    }
}

/// How each instruction of `p` runs on the GPU, and the kernel module for those generated.
pub fn plan_kernels(p: &Program, module_name: &str) -> KernelPlan {
    let mut lowered = Vec::with_capacity(p.instructions.len());
    let mut funcs = String::new();
    for (i, ins) in p.instructions.iter().enumerate() {
        let l = match &ins.op {
            Op::MatMul => Lowered::Gemm,
            op if op.is_communication() => Lowered::Collective,
            Op::ReshapeTo { .. } => Lowered::Alias,
            _ => match generate(p, i) {
                Some((name, text, threads)) => {
                    funcs.push_str(&text);
                    Lowered::Kernel { name, threads }
                }
                None => Lowered::Host,
            },
        };
        lowered.push(l);
    }
    let module = format!("  gpu.module @{module_name} {{\n{funcs}  }}\n");
    KernelPlan { lowered, module }
}
