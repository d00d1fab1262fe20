//! The upstream IR ppmoe prints means what ppmoe computes: each case's instruction, printed as
//! a program of its own (`core::print::print_core`), is lowered by upstream MLIR alone
//! (`mlir-opt`: a softmax decomposed by its interface, `arith` on tensors to linalg, one-shot
//! bufferization, linalg to loops, everything to LLVM) and run by
//! `mlir-runner` on the inputs the runtime's kernel takes; every element of the result is the
//! kernel's bit for bit. Inputs hold what separates a right form from a near one: ties, NaNs,
//! sums that wrap, rows of many magnitudes.

use ppmoe_compiler::core::print::print_core;
use ppmoe_runtime::kernels::execute;
use ppmoe_runtime::program::{Buffer, BufferKind, Instruction, Op, Program, ReduceFn};
use ppmoe_runtime::{DType, Tensor};
use std::fmt::Write as _;
use std::process::Command;

const LLVM: &str = "/usr/lib/llvm-22";

/// The lowering of tensors of linalg, arith and math ops to LLVM, upstream passes only.
const LOWERING: &[&str] = &[
    "--transform-interpreter",
    "--test-transform-dialect-erase-schedule",
    "--convert-elementwise-to-linalg",
    "--one-shot-bufferize=bufferize-function-boundaries",
    "--convert-linalg-to-loops",
    "--convert-scf-to-cf",
    "--expand-strided-metadata",
    "--lower-affine",
    "--finalize-memref-to-llvm",
    "--convert-math-to-llvm",
    // What LLVM has no intrinsic for (`math.erf`) as the C library's function.
    "--convert-math-to-libm",
    "--convert-arith-to-llvm",
    "--convert-index-to-llvm",
    "--convert-func-to-llvm",
    "--convert-cf-to-llvm",
    "--reconcile-unrealized-casts",
];

/// A deterministic stream of values in [-1, 1) (a linear congruential generator).
struct Values(u64);

impl Values {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn take(&mut self, n: usize, f: impl Fn(f32) -> f32) -> Vec<f32> {
        (0..n).map(|_| f(self.next())).collect()
    }
}

/// `op` over `inputs` (each held as the type it is stored in) into one result of `out`.
fn program(op: Op, inputs: &[&Tensor], out: (DType, &[usize])) -> Program {
    let buffer = |name: String, dtype, shape: &[usize], kind| Buffer {
        name,
        dtype,
        shape: shape.iter().map(|&d| Some(d)).collect(),
        kind,
    };
    let mut buffers: Vec<Buffer> = (inputs.iter().enumerate())
        .map(|(k, t)| buffer(format!("x{k}"), t.dtype, &t.shape, BufferKind::Input))
        .collect();
    let n = inputs.len();
    buffers.push(buffer("y".into(), out.0, out.1, BufferKind::Output));
    Program {
        buffers,
        inputs: (0..n).collect(),
        outputs: vec![n],
        instructions: vec![Instruction {
            op,
            inputs: (0..n).map(Some).collect(),
            outputs: vec![n],
            origin: "node".into(),
        }],
        ..Program::empty()
    }
}

/// A tensor's little-endian bytes, as MLIR's hex `dense<"0x...">` takes them, and its type.
fn dense(t: &Tensor) -> (String, String) {
    let mut hex = String::from("0x");
    match t.dtype {
        DType::F32 => (t.to_f32().iter()).for_each(|v| {
            let _ = write!(hex, "{}", bytes(&v.to_bits().to_le_bytes()));
        }),
        // Half-precision values as the tensor stores them.
        DType::F16 => match &*t.data {
            ppmoe_runtime::tensor::Data::Half(bits) => {
                (bits.iter()).for_each(|b| hex.push_str(&bytes(&b.to_le_bytes())))
            }
            _ => panic!("an f16 tensor holds its bits"),
        },
        // Values stored in bf16 are its bits' upper half of f32 exactly.
        DType::BF16 => (t.to_f32().iter()).for_each(|v| {
            let _ = write!(
                hex,
                "{}",
                bytes(&((v.to_bits() >> 16) as u16).to_le_bytes())
            );
        }),
        DType::I32 => (t.to_i64().iter()).for_each(|&v| {
            let _ = write!(hex, "{}", bytes(&(v as i32).to_le_bytes()));
        }),
        // i1 elements packed eight to a byte, the first in the lowest bit.
        DType::Bool => {
            let mut packed = vec![0u8; t.len().div_ceil(8)];
            for (k, &v) in t.to_i64().iter().enumerate() {
                packed[k / 8] |= u8::from(v != 0) << (k % 8);
            }
            hex.push_str(&bytes(&packed));
        }
        _ => (t.to_i64().iter()).for_each(|&v| {
            let _ = write!(hex, "{}", bytes(&v.to_le_bytes()));
        }),
    }
    (hex, tensor_type(t.dtype, &t.shape))
}

fn bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn tensor_type(dtype: DType, shape: &[usize]) -> String {
    let dims: String = shape.iter().map(|d| format!("{d}x")).collect();
    format!("tensor<{dims}{}>", dtype.mlir())
}

/// The printed program with a `main` that calls its function on `inputs` and prints the
/// result's bits (an f32's as i32).
fn runnable(p: &Program, inputs: &[&Tensor], out: (DType, &[usize])) -> String {
    with_main(&print_core(&[p]), inputs, out)
}

/// `text` (a module of one function, `@rank0`) with a `main` that calls it on `inputs` and
/// prints the result's bits, and the schedule that decomposes its softmaxes.
fn with_main(text: &str, inputs: &[&Tensor], out: (DType, &[usize])) -> String {
    let end = text.rfind("} loc(").expect("the module's end");
    let (result, bits) = (tensor_type(out.0, out.1), tensor_type(DType::I32, out.1));
    let mut main = String::from("  func.func private @printMemrefI32(memref<*xi32>) attributes {llvm.emit_c_interface}\n  func.func private @printMemrefI64(memref<*xi64>) attributes {llvm.emit_c_interface}\n  func.func @main() {\n");
    let mut args = Vec::new();
    for (k, t) in inputs.iter().enumerate() {
        let (hex, ty) = dense(t);
        let _ = writeln!(main, "    %x{k} = arith.constant dense<\"{hex}\"> : {ty}");
        args.push((format!("%x{k}"), ty));
    }
    let names: Vec<&str> = args.iter().map(|(n, _)| n.as_str()).collect();
    let types: Vec<&str> = args.iter().map(|(_, t)| t.as_str()).collect();
    let _ = writeln!(
        main,
        "    %r = call @rank0({}) : ({}) -> {result}",
        names.join(", "),
        types.join(", ")
    );
    let memref = |ty: &str| ty.replacen("tensor", "memref", 1);
    let (printed, element) = match out.0 {
        // A half-precision result extended to f32 (exactly) first.
        DType::F32 | DType::BF16 | DType::F16 => {
            let (element, widen) = match out.0 {
                DType::BF16 => ("bf16", "%w = arith.extf %v : bf16 to f32\n        "),
                DType::F16 => ("f16", "%w = arith.extf %v : f16 to f32\n        "),
                _ => ("f32", ""),
            };
            let from = if widen.is_empty() { "%v" } else { "%w" };
            let _ = writeln!(main, "    %e = tensor.empty() : {bits}\n    %b = linalg.map ins(%r : {result}) outs(%e : {bits})\n      (%v: {element}, %o: i32) {{\n        {widen}%i = arith.bitcast {from} : f32 to i32\n        linalg.yield %i : i32\n      }}");
            (("%b", bits.clone()), "I32")
        }
        DType::I32 => (("%r", result.clone()), "I32"),
        // Booleans extended to i32 (0 or 1).
        DType::Bool => {
            let _ = writeln!(main, "    %e = tensor.empty() : {bits}\n    %b = linalg.map ins(%r : {result}) outs(%e : {bits})\n      (%v: i1, %o: i32) {{\n        %i = arith.extui %v : i1 to i32\n        linalg.yield %i : i32\n      }}");
            (("%b", bits.clone()), "I32")
        }
        _ => (("%r", result.clone()), "I64"),
    };
    let (value, ty) = printed;
    let lower = element.to_lowercase();
    let _ = writeln!(
        main,
        "    %m = bufferization.to_buffer {value} : {ty} to {}\n    %u = memref.cast %m : {} to memref<*x{lower}>\n    call @printMemref{element}(%u) : (memref<*x{lower}>) -> ()\n    return\n  }}",
        memref(&ty),
        memref(&ty),
    );
    let text = format!("{}{main}{SCHEDULE}{}", &text[..end], &text[end..]);
    match text.strip_prefix("module {") {
        Some(rest) => format!("module attributes {{transform.with_named_sequence}} {{{rest}"),
        None => text.replacen(
            "module attributes {",
            "module attributes {transform.with_named_sequence, ",
            1,
        ),
    }
}

/// The transform schedule that decomposes a `linalg.softmax` into the generics it is defined
/// by (max, exp of the difference, sum, division), which linalg then lowers to loops.
const SCHEDULE: &str = "  transform.named_sequence @__transform_main(%root: !transform.any_op {transform.readonly}) {\n    %s = transform.structured.match ops{[\"linalg.softmax\"]} in %root : (!transform.any_op) -> !transform.any_op\n    %d = transform.structured.decompose_interface %s : (!transform.any_op) -> !transform.any_op\n    transform.yield\n  }\n";

/// What `mlir-runner` prints of the result of `module` (lowered by `mlir-opt`), as integers.
fn run_upstream(module: &str, name: &str) -> Vec<i64> {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join(format!("{name}.mlir"));
    let lowered = work.path().join(format!("{name}.llvm.mlir"));
    std::fs::write(&source, module).unwrap();
    let opt = Command::new(format!("{LLVM}/bin/mlir-opt"))
        .arg(&source)
        .args(LOWERING)
        .arg("-o")
        .arg(&lowered)
        .output()
        .expect("mlir-opt runs");
    let err = String::from_utf8_lossy(&opt.stderr);
    assert!(opt.status.success(), "{name}: mlir-opt: {err}\n{module}");
    let libs = format!("{LLVM}/lib/libmlir_runner_utils.so,{LLVM}/lib/libmlir_c_runner_utils.so");
    let run = Command::new(format!("{LLVM}/bin/mlir-runner"))
        .arg(&lowered)
        .args(["-e", "main", "-entry-point-result=void"])
        .arg(format!("-shared-libs={libs}"))
        .output()
        .expect("mlir-runner runs");
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{name}: mlir-runner: {err}");
    let data = out.split("data =").nth(1).expect("a printed memref");
    (data.split(|c: char| !(c.is_ascii_digit() || c == '-')))
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

/// The runtime kernel's result stored as `dtype` (a half-precision value rounded, as its
/// buffer holds it), as the integers `run_upstream` reads (a float's bits in f32, as i32).
fn run_kernel(op: &Op, inputs: &[&Tensor], dtype: DType) -> Vec<i64> {
    let refs: Vec<Option<&Tensor>> = inputs.iter().map(|t| Some(*t)).collect();
    let out = execute(op, &refs, 1).expect("the kernel runs").remove(0);
    let out = out.stored_as(dtype);
    match dtype {
        DType::F32 | DType::BF16 | DType::F16 => (out.to_f32().iter())
            .map(|x| x.to_bits() as i32 as i64)
            .collect(),
        _ => out.to_i64(),
    }
}

/// `op` over `inputs` into `out`, printed with no `core` op of its name left: its result run
/// by upstream MLIR and the runtime kernel's, as `run_upstream` reads them.
fn results(name: &str, op: Op, inputs: &[&Tensor], out: (DType, &[usize])) -> (Vec<i64>, Vec<i64>) {
    let p = program(op.clone(), inputs, out);
    let module = runnable(&p, inputs, out);
    let core = format!("\"core.{}\"", op.name());
    assert!(
        !module.contains(&core),
        "{name}: printed as {core}\n{module}"
    );
    let want = run_kernel(&op, inputs, out.0);
    let got = run_upstream(&module, name);
    assert_eq!(got.len(), want.len(), "{name}: element count");
    (got, want)
}

/// `op` over `inputs` into `out`, run by upstream MLIR: the runtime kernel's result bit for
/// bit.
fn check(name: &str, op: Op, inputs: &[&Tensor], out: (DType, &[usize])) {
    let (got, want) = results(name, op, inputs, out);
    let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(
        differing, 0,
        "{name}: {differing} elements differ\n{got:?}\n{want:?}"
    );
}

/// `op` over `inputs` into `out` (f32), run by upstream MLIR: within `most` units in the last
/// place of the runtime kernel's result, element by element (where a function's two
/// implementations may round differently: erf).
fn check_ulps(name: &str, op: Op, inputs: &[&Tensor], out: (DType, &[usize]), most: i64) {
    let (got, want) = results(name, op, inputs, out);
    let distance = |a: i64, b: i64| {
        let (a, b) = (
            f32::from_bits(a as i32 as u32),
            f32::from_bits(b as i32 as u32),
        );
        let ordered = |x: f32| {
            let bits = x.to_bits() as i32;
            i64::from(if bits < 0 { i32::MIN - bits } else { bits })
        };
        (ordered(a) - ordered(b)).abs()
    };
    let distances: Vec<i64> = got
        .iter()
        .zip(&want)
        .map(|(&a, &b)| distance(a, b))
        .collect();
    let largest = distances.iter().copied().max().unwrap_or(0);
    let differing = distances.iter().filter(|&&d| d > 0).count();
    assert!(
        largest <= most,
        "{name}: {differing} elements differ, by up to {largest} ulps"
    );
}

#[test]
fn an_arg_max_of_ties_and_nans_runs_in_upstream_mlir_as_ppmoe_picks() {
    let mut r = Values(1);
    // Halves tie often; a NaN first sticks, a NaN later never wins.
    let mut v = r.take(6 * 16, |x| (x * 4.0).round() / 2.0);
    v[0] = f32::NAN;
    v[16 + 5] = f32::NAN;
    let x = Tensor::f32(vec![6, 16], v.clone());
    for (max, keepdims) in [(true, false), (false, true)] {
        let op = Op::ArgMax {
            axis: -1,
            keepdims,
            max,
        };
        let shape: &[usize] = if keepdims { &[6, 1] } else { &[6] };
        check("arg_max", op, &[&x], (DType::I64, shape));
    }
    let half = Tensor::half(vec![16, 6], &v, DType::BF16);
    let op = Op::ArgMax {
        axis: 0,
        keepdims: false,
        max: false,
    };
    check("arg_min_bf16", op, &[&half], (DType::I64, &[6]));
}

#[test]
fn running_sums_run_in_upstream_mlir_as_ppmoe_adds() {
    let mut r = Values(2);
    let big = i32::MAX as f32;
    let ints = r.take(5 * 7, |x| (x * big).round());
    let x = Tensor::i64(vec![5, 7], ints.iter().map(|&v| v as i64).collect());
    let x = x.with_dtype(DType::I32);
    for (axis, exclusive, reverse) in [(0, true, true), (1, false, false), (1, true, false)] {
        let op = Op::CumSumAxis {
            axis,
            exclusive,
            reverse,
        };
        check("cum_sum_i32", op, &[&x], (DType::I32, &[5, 7]));
    }
    // Magnitudes from 1e-3 to 1e3: the order of the additions shows in the bits.
    let floats = r.take(4 * 33, |x| x * 10f32.powf(x * 3.0));
    let f = Tensor::f32(vec![4, 33], floats);
    let op = Op::CumSumAxis {
        axis: 1,
        exclusive: false,
        reverse: false,
    };
    check("cum_sum_f32", op, &[&f], (DType::F32, &[4, 33]));
}

#[test]
fn layer_norms_and_reductions_run_in_upstream_mlir_as_ppmoe_computes_them() {
    let mut r = Values(3);
    let x = Tensor::f32(vec![3, 5, 64], r.take(3 * 5 * 64, |x| x * 3.0 + 0.5));
    let scale = Tensor::f32(vec![64], r.take(64, |x| x + 1.0));
    let bias = Tensor::f32(vec![64], r.take(64, |x| x * 0.1));
    let op = Op::LayerNorm {
        axis: -1,
        epsilon: 1e-5,
    };
    check(
        "layer_norm",
        op,
        &[&x, &scale, &bias],
        (DType::F32, &[3, 5, 64]),
    );
    let y = Tensor::f32(vec![4, 6, 8], r.take(4 * 6 * 8, |x| x * 100.0));
    let scale = Tensor::f32(vec![6, 8], r.take(48, |x| x * 2.0));
    let op = Op::LayerNorm {
        axis: 1,
        epsilon: 1e-6,
    };
    check(
        "layer_norm_no_bias",
        op,
        &[&y, &scale],
        (DType::F32, &[4, 6, 8]),
    );
    for f in [ReduceFn::Sum, ReduceFn::Mean, ReduceFn::Max, ReduceFn::Min] {
        let op = Op::ReduceAxes {
            f,
            axes: vec![1, 2],
            keepdims: false,
        };
        check("reduce", op, &[&y], (DType::F32, &[4]));
    }
    // A --dtype bf16 build's norm: f32 activations, a bf16 scale and (here) an f16 bias, each
    // widened to f32 as the runtime widens them.
    let scale = Tensor::half(vec![64], &r.take(64, |x| x + 1.0), DType::BF16);
    let bias = Tensor::half(vec![64], &r.take(64, |x| x * 0.1), DType::F16);
    let op = Op::LayerNorm {
        axis: 2,
        epsilon: 1e-5,
    };
    check(
        "layer_norm_half_weights",
        op.clone(),
        &[&x, &scale, &bias],
        (DType::F32, &[3, 5, 64]),
    );
    // A half-precision model's norm: bf16 or f16 activations (and weights), widened exactly,
    // the f32 result rounded to their type.
    for dtype in [DType::BF16, DType::F16] {
        let xh = Tensor::half(vec![3, 5, 64], &x.to_f32(), dtype);
        let scale = Tensor::half(vec![64], &r.take(64, |x| x + 1.0), dtype);
        let bias = Tensor::half(vec![64], &r.take(64, |x| x * 0.1), dtype);
        let name = format!("layer_norm_{}", dtype.mlir());
        check(
            &name,
            op.clone(),
            &[&xh, &scale, &bias],
            (dtype, &[3, 5, 64]),
        );
    }
}

#[test]
fn elementwise_ops_and_softmaxes_run_in_upstream_mlir_as_ppmoe_rounds_them() {
    use ppmoe_runtime::program::{BinaryFn, UnaryFn};
    let mut r = Values(4);
    // bf16 arithmetic with broadcasting: ppmoe adds in f32 and rounds once.
    let a = Tensor::half(vec![6, 16], &r.take(96, |x| x * 8.0), DType::BF16);
    let b = Tensor::half(vec![16], &r.take(16, |x| x * 3.0), DType::BF16);
    for f in [BinaryFn::Add, BinaryFn::Mul, BinaryFn::Div] {
        check("bf16", Op::Binary { f }, &[&a, &b], (DType::BF16, &[6, 16]));
    }
    // A bf16 weight read by f32 activations into f32 (a --dtype bf16 build's norms, biases and
    // scales): the weight widened (exact), the f32 op; a bf16 exponent of an f32 power; a
    // where between a bf16 scalar and f32 values.
    let mut m = Values(41);
    let x = Tensor::f32(vec![6, 16], m.take(96, |x| x * 6.0));
    for f in [BinaryFn::Add, BinaryFn::Mul, BinaryFn::Sub, BinaryFn::Div] {
        check(
            "bf16_by_f32",
            Op::Binary { f },
            &[&b, &x],
            (DType::F32, &[6, 16]),
        );
        check(
            "f32_by_bf16",
            Op::Binary { f },
            &[&x, &a],
            (DType::F32, &[6, 16]),
        );
    }
    let two = Tensor::half(vec![], &[2.0], DType::BF16);
    let positive = Tensor::f32(vec![6, 16], m.take(96, |x| x.abs() * 4.0 + 0.25));
    let pow = Op::Binary { f: BinaryFn::Pow };
    check(
        "pow_bf16_exponent",
        pow,
        &[&positive, &two],
        (DType::F32, &[6, 16]),
    );
    let mask = Tensor::bool(vec![6, 16], (0..96).map(|k| k % 3 == 0).collect());
    let fill = Tensor::half(vec![], &[-3.5], DType::BF16);
    check(
        "where_bf16",
        Op::Where,
        &[&mask, &fill, &x],
        (DType::F32, &[6, 16]),
    );
    // Into f16 (an f16 model's activations by bf16 weights): computed in f32, rounded once.
    let h = Tensor::half(vec![6, 16], &m.take(96, |x| x * 6.0), DType::F16);
    for f in [BinaryFn::Add, BinaryFn::Mul, BinaryFn::Div] {
        check(
            "bf16_by_f16",
            Op::Binary { f },
            &[&b, &h],
            (DType::F16, &[6, 16]),
        );
    }
    check(
        "where_f16",
        Op::Where,
        &[&mask, &fill, &h],
        (DType::F16, &[6, 16]),
    );
    // The sigmoid upstream has no op for, as 1 / (1 + exp(-x)).
    let x = Tensor::f32(vec![6, 16], r.take(96, |x| x * 20.0));
    let sigmoid = Op::Unary {
        f: UnaryFn::Sigmoid,
    };
    check("sigmoid", sigmoid.clone(), &[&x], (DType::F32, &[6, 16]));
    // Of bf16: widened, computed in f32, rounded once (as ppmoe computes it).
    let half = Tensor::half(vec![6, 16], &x.to_f32(), DType::BF16);
    check("sigmoid_bf16", sigmoid, &[&half], (DType::BF16, &[6, 16]));
    let exp = Op::Unary { f: UnaryFn::Exp };
    check("exp_bf16", exp, &[&half], (DType::BF16, &[6, 16]));
    // Softmaxes: of f32, and of bf16 (widened, the f32 softmax, narrowed).
    let logits = Tensor::f32(vec![6, 16], r.take(96, |x| x * 12.0));
    let softmax = |axis| Op::Softmax { axis, log: false };
    check("softmax", softmax(-1), &[&logits], (DType::F32, &[6, 16]));
    let half = Tensor::half(vec![6, 16], &logits.to_f32(), DType::BF16);
    check(
        "softmax_bf16",
        softmax(0),
        &[&half],
        (DType::BF16, &[6, 16]),
    );
    // i32 products wrap at 32 bits.
    let big = Tensor::i64(
        vec![8],
        r.take(8, |x| (x * 1e9).round())
            .iter()
            .map(|&v| v as i64)
            .collect(),
    );
    let big = big.with_dtype(DType::I32);
    let product = Op::Binary { f: BinaryFn::Mul };
    check("i32_mul", product, &[&big, &big], (DType::I32, &[8]));
    // erf (math.erf: the C library's erff under upstream's lowering, where ppmoe's is the libm
    // crate's), and the GELU upstream has no op for, as 0.5 x (1 + erf(x / sqrt 2)).
    // The two erfs differ by an ulp at a few values; GELU's 1 + erf cancels near x = -3 and
    // below, where that ulp is many of the result's. With the C library's erff in ppmoe's
    // formula, upstream's GELU is the same bit for bit: the composite is ppmoe's order.
    let wide = Tensor::f32(vec![16, 64], r.take(1024, |x| x * 6.0));
    let shape = (DType::F32, &[16usize, 64][..]);
    check_ulps("erf", Op::Unary { f: UnaryFn::Erf }, &[&wide], shape, 1);
    let gelu = Op::Unary { f: UnaryFn::Gelu };
    let (upstream, _) = results("gelu", gelu.clone(), &[&wide], shape);
    let with_c_erf: Vec<i64> = (wide.to_f32().iter())
        .map(|&a| 0.5 * a * (1.0 + c_erff(a / std::f32::consts::SQRT_2)))
        .map(|v| v.to_bits() as i32 as i64)
        .collect();
    assert_eq!(upstream, with_c_erf, "gelu with the C library's erff");
    check_ulps("gelu", gelu, &[&wide], shape, 16);
}

/// The C library's erff, which upstream MLIR's `convert-math-to-libm` calls for `math.erf`.
fn c_erff(x: f32) -> f32 {
    extern "C" {
        fn erff(x: f32) -> f32;
    }
    // SAFETY: a pure function of one float.
    unsafe { erff(x) }
}

/// A matmul's sums run in linalg's loop order (k ascending, one term at a time), where
/// ppmoe's GEMM blocks and reassociates them, as cuBLAS's do: the same products summed in
/// another order, equal to f32's precision over the row rather than bit for bit.
#[test]
fn a_matmul_runs_in_upstream_mlir_to_ppmoes_product_up_to_its_summation_order() {
    let mut r = Values(9);
    let a = Tensor::f32(vec![8, 96], r.take(8 * 96, |x| x * 10f32.powf(x * 2.0)));
    let b = Tensor::f32(vec![96, 8], r.take(96 * 8, |x| x));
    let (got, want) = results("matmul", Op::MatMul, &[&a, &b], (DType::F32, &[8, 8]));
    let values =
        |v: &[i64]| -> Vec<f64> { v.iter().map(|&b| f32::from_bits(b as u32) as f64).collect() };
    let (got, want) = (values(&got), values(&want));
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let diff: Vec<f64> = got.iter().zip(&want).map(|(a, b)| a - b).collect();
    let relative = norm(&diff) / norm(&want);
    assert!(
        relative < 1e-6,
        "matmul: {relative:e} from the runtime's product"
    );
}

/// Data movement, casts, comparisons and `math` functions as upstream ops: each the kernel's
/// result bit for bit.
#[test]
fn data_movement_casts_comparisons_and_math_run_in_upstream_mlir_as_ppmoe_computes_them() {
    use ppmoe_runtime::program::{BinaryFn, UnaryFn};
    let mut r = Values(6);
    let x = Tensor::f32(vec![2, 3, 5], r.take(30, |x| x * 7.0));
    let transpose = Op::Transpose {
        perm: vec![2, 0, 1],
    };
    check("transpose", transpose, &[&x], (DType::F32, &[5, 2, 3]));
    let reshape = Op::ReshapeTo { shape: vec![6, 5] };
    check("reshape", reshape, &[&x], (DType::F32, &[6, 5]));
    let slice = Op::ExtractSlice {
        offsets: vec![0, 1, 1],
        sizes: vec![2, 2, 2],
        strides: vec![1, 1, 2],
    };
    check("extract_slice", slice, &[&x], (DType::F32, &[2, 2, 2]));
    let y = Tensor::f32(vec![2, 4, 5], r.take(40, |x| x));
    let concat = Op::Concat { axis: 1 };
    check("concat", concat, &[&x, &y], (DType::F32, &[2, 7, 5]));
    // (A gather's `tensor.gather` has no upstream bufferization in LLVM 22: it cannot run.)
    // Casts: to bf16 rounded to nearest even, i64 to i32 wrapped, i64 to f32 rounded.
    let wide = Tensor::i64(
        vec![6],
        vec![1 << 40, -3, (1 << 31) + 5, 16_777_217, -(1 << 33), 7],
    );
    let cast = |to| Op::Cast { to };
    check(
        "to_bf16",
        cast(DType::BF16),
        &[&x],
        (DType::BF16, &[2, 3, 5]),
    );
    check("to_i32", cast(DType::I32), &[&wide], (DType::I32, &[6]));
    check("to_f32", cast(DType::F32), &[&wide], (DType::F32, &[6]));
    // f32 to integers: truncated, saturated at i64's range, NaN to 0, an i32 wrapped.
    let edges = [
        f32::NAN,
        f32::INFINITY,
        -f32::INFINITY,
        9.3e18,
        -9.3e18,
        3e9,
        -2.7,
        2.7,
    ];
    let floats = Tensor::f32(vec![8], edges.to_vec());
    check(
        "f32_to_i64",
        cast(DType::I64),
        &[&floats],
        (DType::I64, &[8]),
    );
    check(
        "f32_to_i32",
        cast(DType::I32),
        &[&floats],
        (DType::I32, &[8]),
    );
    // To booleans: not zero (-0.0 is zero, a NaN is not).
    let mut signs = edges.to_vec();
    signs[6] = -0.0;
    signs[7] = 0.0;
    let signs = Tensor::f32(vec![8], signs);
    check(
        "f32_to_bool",
        cast(DType::Bool),
        &[&signs],
        (DType::Bool, &[8]),
    );
    check(
        "i64_to_bool",
        cast(DType::Bool),
        &[&wide],
        (DType::Bool, &[6]),
    );
    // Comparisons give booleans (printed as i32 here); a NaN compares false.
    let mut v = r.take(30, |x| (x * 2.0).round());
    v[3] = f32::NAN;
    let z = Tensor::f32(vec![2, 3, 5], v);
    for f in [BinaryFn::Less, BinaryFn::GreaterOrEqual, BinaryFn::Equal] {
        check(
            "compare",
            Op::Binary { f },
            &[&x, &z],
            (DType::Bool, &[2, 3, 5]),
        );
    }
    for f in [
        UnaryFn::Exp,
        UnaryFn::Sqrt,
        UnaryFn::Reciprocal,
        UnaryFn::Neg,
    ] {
        let positive = Tensor::f32(vec![2, 3, 5], r.take(30, |x| x.abs() * 5.0 + 0.1));
        check(
            "unary",
            Op::Unary { f },
            &[&positive],
            (DType::F32, &[2, 3, 5]),
        );
    }
    let ints = Tensor::i64(
        vec![4, 6],
        r.take(24, |x| (x * 1e18).round())
            .iter()
            .map(|&v| v as i64)
            .collect(),
    );
    let sum = Op::ReduceAxes {
        f: ReduceFn::Sum,
        axes: vec![1],
        keepdims: true,
    };
    check("i64_sum", sum, &[&ints], (DType::I64, &[4, 1]));
    // Products wrap at their width (these of i64 near 1e18 do, as do those of large i32s),
    // extrema start from the type's least or greatest value.
    let ints32 = Tensor::i64(
        vec![4, 6],
        r.take(24, |x| (x * 2.1e9).round())
            .iter()
            .map(|&v| (v as i64).clamp(i32::MIN.into(), i32::MAX.into()))
            .collect(),
    )
    .with_dtype(DType::I32);
    for f in [ReduceFn::Prod, ReduceFn::Max, ReduceFn::Min] {
        let over = |axes: Vec<usize>, keepdims| Op::ReduceAxes { f, axes, keepdims };
        let name = format!("{f:?}").to_lowercase();
        check(
            &format!("i64_{name}"),
            over(vec![1], false),
            &[&ints],
            (DType::I64, &[4]),
        );
        check(
            &format!("i32_{name}"),
            over(vec![0], true),
            &[&ints32],
            (DType::I32, &[1, 6]),
        );
    }
    // Indices clamped into range: i64 maxima and minima, broadcasting a scalar bound.
    let bound = Tensor::i64(vec![], vec![1 << 40]);
    for f in [BinaryFn::Max, BinaryFn::Min] {
        check(
            "i64_clamp",
            Op::Binary { f },
            &[&ints, &bound],
            (DType::I64, &[4, 6]),
        );
    }
    // Token slices (a marked extract_slice): a piece of f32 rows, and one of bf16 tokens read
    // into f32 (widened, then sliced).
    let rows = Tensor::f32(vec![6, 5], (0..30).map(|k| k as f32 * 0.25 - 3.0).collect());
    let half = Tensor::half(vec![6, 5], &rows.to_f32(), DType::BF16);
    for (axis, index, shape) in [(0, 1, [2, 5]), (1, 0, [6, 1])] {
        let parts = if axis == 0 { 3 } else { 5 };
        let slice = Op::TokenSlice { axis, index, parts };
        check("token_slice", slice.clone(), &[&rows], (DType::F32, &shape));
        check("token_slice_widened", slice, &[&half], (DType::F32, &shape));
    }
}

/// A whole MoE layer in upstream MLIR: JAX's GShard top-2 layer (capacity 2x, dropping what
/// overflows; its routing left unraised without its weights, so its `core` IR is arg-maxes,
/// running sums, matmuls and elementwise generics, no `core` op), as `ppmoe inspect --emit
/// core` prints it, lowered and run by upstream MLIR on random tokens and weights, gives
/// ppmoe's CPU output: to f32's precision (the matmuls' sums run in another order), every
/// routing decision the same.
#[test]
fn a_whole_gshard_layer_runs_in_upstream_mlir_to_ppmoes_output() {
    use crate::common::{fixtures_dir, ppmoe};
    let model = fixtures_dir().join("jax_gshard_top2/model.mlir");
    let model = model.display().to_string();
    let core = ppmoe(&["inspect", &model, "--emit", "core"]);
    assert_eq!(core.code, 0, "{}", core.stderr);
    assert!(
        !core.stdout.contains("\"core."),
        "a core op is left:\n{}",
        core.stdout
    );
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle").display().to_string();
    let compiled = ppmoe(&["compile", &model, "-o", &bundle]);
    assert_eq!(compiled.code, 0, "{}", compiled.stderr);
    // Tokens, the gate's weight, the experts' two stacks (the function's arguments, in order).
    let mut r = Values(7);
    let shapes: [&[usize]; 4] = [&[64, 64], &[64, 4], &[4, 64, 128], &[4, 128, 64]];
    let inputs: Vec<Tensor> = (shapes.iter())
        .map(|s| Tensor::f32(s.to_vec(), r.take(s.iter().product(), |x| x)))
        .collect();
    let mut args = vec!["run".to_string(), bundle, "--output-dir".into()];
    let out_dir = work.path().join("out");
    args.push(out_dir.display().to_string());
    for (k, t) in inputs.iter().enumerate() {
        let path = work.path().join(format!("arg{k}.npy"));
        ppmoe_runtime::npy::write_npy(&path, t).unwrap();
        args.extend(["--input".into(), format!("arg{k}={}", path.display())]);
    }
    let ran = ppmoe(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let want = ppmoe_runtime::npy::read_npy(&out_dir.join("out0.npy")).unwrap();
    // Then the constants JAX's graph holds, the function's weight arguments, from the bundle.
    let signature = (core.stdout.lines())
        .find(|l| l.contains("func.func @rank0("))
        .expect("the function");
    let weights =
        ppmoe_runtime::safetensors_io::Reader::open(&work.path().join("bundle/rank0.safetensors"))
            .unwrap();
    let constants: Vec<Tensor> = (signature.split("core.weight = \"").skip(1))
        .map(|s| weights.tensor(s.split('"').next().unwrap()).unwrap())
        .collect();
    let refs: Vec<&Tensor> = inputs.iter().chain(&constants).collect();
    let module = with_main(&core.stdout, &refs, (DType::F32, &[64, 64]));
    let got: Vec<f64> = (run_upstream(&module, "gshard").iter())
        .map(|&b| f32::from_bits(b as u32) as f64)
        .collect();
    let want: Vec<f64> = want.to_f32().iter().map(|&v| v as f64).collect();
    assert_eq!(got.len(), want.len());
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let diff: Vec<f64> = got.iter().zip(&want).map(|(a, b)| a - b).collect();
    let relative = norm(&diff) / norm(&want);
    assert!(norm(&want) > 1.0, "a trivial output");
    assert!(relative < 1e-6, "{relative:e} from ppmoe's output");
}

/// A top-k's values and indices (each the function's one result in turn), run by upstream
/// MLIR: the runtime kernel's bit for bit.
fn check_top_k(name: &str, op: Op, x: &Tensor, shape: &[usize]) {
    for (which, dtype) in [DType::F32, DType::I64].into_iter().enumerate() {
        let mut p = program(op.clone(), &[x], (DType::F32, shape));
        p.buffers.push(Buffer {
            name: "i".into(),
            dtype: DType::I64,
            shape: shape.iter().map(|&d| Some(d)).collect(),
            kind: BufferKind::Output,
        });
        p.instructions[0].outputs.push(2);
        p.buffers[2 - which].kind = BufferKind::Temp;
        p.outputs = vec![1 + which];
        let module = runnable(&p, &[x], (dtype, shape));
        assert!(
            !module.contains("\"core.top_k"),
            "{name}: a core op\n{module}"
        );
        let out = execute(&op, &[Some(x)], 2)
            .expect("the kernel runs")
            .remove(which);
        let want: Vec<i64> = match dtype {
            DType::F32 => (out.to_f32().iter())
                .map(|v| v.to_bits() as i32 as i64)
                .collect(),
            _ => out.to_i64(),
        };
        assert_eq!(run_upstream(&module, name), want, "{name}: result {which}");
    }
}

#[test]
fn a_top_k_of_ties_and_nans_runs_in_upstream_mlir_as_ppmoe_orders_them() {
    let mut r = Values(8);
    let mut v = r.take(5 * 12, |x| (x * 3.0).round());
    for at in [0, 7, 13, 30, 31] {
        v[at] = f32::NAN;
    }
    let x = Tensor::f32(vec![5, 12], v);
    for largest in [true, false] {
        let op = Op::TopKAxis {
            axis: 1,
            k: 4,
            largest,
        };
        check_top_k("top_k", op, &x, &[5, 4]);
    }
    let op = Op::TopKAxis {
        axis: 0,
        k: 5,
        largest: true,
    };
    check_top_k("top_k_axis_0", op, &x, &[5, 12]);
}

#[test]
fn one_hots_gathers_scatters_and_mixed_concats_run_in_upstream_mlir_as_ppmoe_indexes() {
    let mut r = Values(8);
    // Indices in range, negative ones (wrapped once) and, for the one-hot, out of range both
    // ways (no position matches: all `off`).
    let ids = Tensor::i64(vec![2, 4], vec![0, 3, -1, -4, 7, -5, 2, 1]);
    let depth = Tensor::i64(vec![], vec![4]);
    let values = Tensor::f32(vec![2], vec![0.25, -3.5]);
    let one_hot = Op::OneHot { axis: -1 };
    check(
        "one_hot",
        one_hot,
        &[&ids, &depth, &values],
        (DType::F32, &[2, 4, 4]),
    );
    let values = Tensor::i64(vec![2], vec![0, 1]);
    let one_hot = Op::OneHot { axis: 2 };
    check(
        "one_hot_i64",
        one_hot,
        &[&ids, &depth, &values],
        (DType::I64, &[2, 4, 4]),
    );
    let data = Tensor::f32(vec![4, 6, 5], r.take(120, |x| x * 3.0));
    let picks = [0, 5, -1, -6, 3, 2, 4, 1, -2, 0, 1, 5];
    for (axis, extent) in [(0i64, 4), (1, 6), (-1, 5)] {
        let ids: Vec<i64> = (0..24).map(|k| picks[k % 12] % extent).collect();
        let ids = Tensor::i64(vec![4, 3, 2], ids);
        let gather = Op::GatherElements { axis };
        let name = format!("gather_elements_{axis}");
        check(&name, gather, &[&data, &ids], (DType::F32, &[4, 3, 2]));
    }
    // A bf16 table's rows gathered into f32 (a --dtype bf16 build's embedding), indices
    // counted from the end among them.
    let table = Tensor::half(vec![8, 5], &r.take(40, |x| x * 4.0), DType::BF16);
    let ids = Tensor::i64(vec![2, 3], vec![0, 7, -1, 3, -8, 5]);
    let gather = Op::Gather { axis: 0 };
    check(
        "widening_gather",
        gather.clone(),
        &[&table, &ids],
        (DType::F32, &[2, 3, 5]),
    );
    // The same rows gathered into f16 (a --dtype bf16 build of an f16 model): beyond f16's
    // range infinite, below its normal range its subnormals, rounded to nearest even.
    let mut values = r.take(40, |x| x * 4.0);
    values[..6].copy_from_slice(&[1.0e5, -3.0e38, 1.0e-7, -3.0e-8, 61440.0, 6.0e-5]);
    let table = Tensor::half(vec![8, 5], &values, DType::BF16);
    check(
        "bf16_gather_into_f16",
        gather,
        &[&table, &ids],
        (DType::F16, &[2, 3, 5]),
    );
    // Scatters along each axis, indices repeated (the later update wins, or both are added in
    // ppmoe's order) and negative.
    use ppmoe_runtime::program::Reduction;
    let targets = [0, 2, 2, -1, 1, -3, 0, 0, 3, -2, 1, 1];
    let shapes: [(i64, [usize; 3]); 3] = [(0, [3, 6, 5]), (1, [4, 3, 5]), (-1, [4, 6, 3])];
    for (axis, ids_shape) in shapes {
        let n: usize = ids_shape.iter().product();
        let ids: Vec<i64> = (0..n).map(|k| targets[k % 12]).collect();
        let ids = Tensor::i64(ids_shape.to_vec(), ids);
        let updates = Tensor::f32(ids_shape.to_vec(), r.take(n, |x| x * 5.0));
        for reduction in [Reduction::None, Reduction::Add] {
            let scatter = Op::ScatterElements { axis, reduction };
            let name = format!("scatter_elements_{axis}_{reduction:?}");
            check(
                &name,
                scatter,
                &[&data, &ids, &updates],
                (DType::F32, &[4, 6, 5]),
            );
        }
    }
    // f32 scores joined by bf16 sinks and f16 columns into f32 (a --dtype bf16 build's
    // gpt-oss attention), along the last axis and the first.
    let scores = Tensor::f32(vec![2, 3, 4], r.take(24, |x| x * 3.0));
    let sinks = Tensor::half(vec![2, 3, 1], &r.take(6, |x| x * 2.0), DType::BF16);
    let more = Tensor::half(vec![2, 3, 2], &r.take(12, |x| x - 0.5), DType::F16);
    let concat = Op::Concat { axis: -1 };
    let operands = [&scores, &sinks, &more];
    check("mixed_concat", concat, &operands, (DType::F32, &[2, 3, 7]));
    let rows = Tensor::half(vec![1, 3, 4], &r.take(12, |x| x * 7.0), DType::BF16);
    let concat = Op::Concat { axis: 0 };
    let operands = [&rows, &scores];
    check(
        "mixed_concat_0",
        concat,
        &operands,
        (DType::F32, &[3, 3, 4]),
    );
}
