//! The StableHLO frontend on the JAX fixtures (tests/fixtures/jax_*, made by
//! examples/export_jax_fixtures.py): a GShard top-2 layer under plain jit, and under shard_map
//! with two all_to_alls; compiled, raised, distributed and run on the CPU against JAX's output.

use crate::common::{assert_clean_failure, fixtures_dir, ppmoe};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Compiles with the weights bound at compile time and the given flags, runs on the CPU, and
/// returns the --check line.
fn compile_and_run(dir: &Path, flags: &[&str]) -> String {
    let work = tempfile::tempdir().unwrap();
    let b = work.path().join("b");
    let mut args = vec![
        "compile".to_string(),
        s(&dir.join("model.mlir")),
        "-o".into(),
        s(&b),
        "--weights".into(),
        s(&dir.join("weights.safetensors")),
    ];
    args.extend(flags.iter().map(|f| f.to_string()));
    let c = ppmoe(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(c.code, 0, "{}", c.stderr);
    let r = ppmoe(&[
        "run",
        &s(&b),
        "--input",
        &s(&dir.join("x.npy")),
        "--output-dir",
        &s(&work.path().join("o")),
        "--check",
        &s(&dir.join("out.npy")),
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    r.stdout
}

/// Compiles and runs the fixture at each grid, within 1e-4 of JAX's output every time.
fn matches_jax_on(dir: &Path, grids: &[&[&str]]) {
    for flags in grids {
        let line = compile_and_run(dir, flags);
        assert!(line.contains("(tolerance 1e-4): ok"), "{flags:?}: {line}");
    }
}

fn summary(dir: &Path) -> String {
    let out = ppmoe(&[
        "inspect",
        &s(&dir.join("model.mlir")),
        "--weights",
        &s(&dir.join("weights.safetensors")),
        "--summary",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
}

#[test]
fn plain_jit_gshard_layer_is_raised_and_matches_jax_on_every_strategy() {
    let dir = fixture("jax_gshard_top2");
    let sum = summary(&dir);
    assert!(
        sum.contains("softmax -> top-2, renormalised, capacity 16"),
        "{sum}"
    );
    assert!(
        sum.contains("1 MoE layer(s)") && sum.contains("gelu"),
        "{sum}"
    );
    matches_jax_on(
        &dir,
        &[
            &["--tp", "1"][..],
            &["--tp", "2", "--moe-strategy", "ppmoe"],
            &["--tp", "4", "--moe-strategy", "alltoall"],
        ],
    );
}

#[test]
fn shard_map_all_to_all_layer_is_raised_per_source_shard_and_matches_jax() {
    let dir = fixture("jax_gshard_top2_a2a");
    let sum = summary(&dir);
    // Four source shards of 16 tokens, each routed with its own capacity (4), as JAX did.
    assert_eq!(
        sum.matches("softmax -> top-2, renormalised, capacity 4")
            .count(),
        4,
        "{sum}"
    );
    matches_jax_on(
        &dir,
        &[
            &["--tp", "1"][..],
            &["--tp", "2", "--moe-strategy", "ppmoe"],
            &["--tp", "4", "--moe-strategy", "ppmoe"],
            &["--tp", "4", "--moe-strategy", "alltoall"],
        ],
    );
}

#[test]
fn with_the_ppmoe_strategy_the_compiled_program_has_no_all_to_all() {
    let dir = fixture("jax_gshard_top2_a2a");
    let ir = |strategy: &str| {
        let out = ppmoe(&[
            "inspect",
            &s(&dir.join("model.mlir")),
            "--weights",
            &s(&dir.join("weights.safetensors")),
            "--tp",
            "4",
            "--moe-strategy",
            strategy,
            "--emit",
            "pipelined",
        ]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout
    };
    let ppmoe_ir = ir("ppmoe");
    assert_eq!(ppmoe_ir.matches("all_to_all").count(), 0);
    assert!(
        ppmoe_ir.contains("shard.all_reduce"),
        "PPMoE combines with one all-reduce per layer"
    );
    assert!(
        ir("alltoall").contains("shard.all_to_all"),
        "the alltoall strategy keeps the exchange"
    );
}

#[test]
fn weights_can_be_bound_at_run_time_in_argument_order() {
    let dir = fixture("jax_gshard_top2_a2a");
    let work = tempfile::tempdir().unwrap();
    let b = work.path().join("b");
    assert_eq!(
        ppmoe(&["compile", &s(&dir.join("model.mlir")), "-o", &s(&b)]).code,
        0
    );
    let mut args = vec![
        "run".to_string(),
        s(&b),
        "--output-dir".into(),
        s(&work.path().join("o")),
        "--check".into(),
        s(&dir.join("out.npy")),
    ];
    for f in ["x", "wg", "w1", "w2"] {
        args.push("--input".into());
        args.push(s(&dir.join(format!("{f}.npy"))));
    }
    let r = ppmoe(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("(tolerance 1e-4): ok"), "{}", r.stdout);
}

/// A copy of the plain fixture's text with one edit, in a temporary file.
fn edited(from: &str, to: &str) -> (tempfile::TempDir, PathBuf) {
    let text = std::fs::read_to_string(fixture("jax_gshard_top2").join("model.mlir")).unwrap();
    assert!(text.contains(from), "the fixture no longer has {from}");
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.mlir");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    (d, p)
}

#[test]
fn bad_stablehlo_is_refused_with_the_op_and_what_was_expected() {
    let d = tempfile::tempdir().unwrap();
    let pretty = d.path().join("pretty.mlir");
    std::fs::write(&pretty, "func.func @main(%arg0: tensor<2xf32>) -> tensor<2xf32> {\n  %0 = stablehlo.add %arg0, %arg0 : tensor<2xf32>\n  return %0 : tensor<2xf32>\n}\n").unwrap();
    let out = ppmoe(&["compile", &s(&pretty), "-o", &s(&d.path().join("b"))]);
    assert_clean_failure(
        &out,
        &[
            "pretty.mlir",
            "pretty-printed StableHLO",
            "print_generic_op_form=True",
        ],
    );
    assert!(!d.path().join("b").exists());

    let (_d, unknown) = edited("\"stablehlo.exponential\"", "\"stablehlo.cbrt\"");
    let out = ppmoe(&["inspect", &s(&unknown), "--emit", "core"]);
    assert_clean_failure(
        &out,
        &[
            "bad.mlir",
            "stablehlo.cbrt",
            "is not supported",
            "dot_general",
        ],
    );

    let (_d, malformed) = edited(
        "lhs_contracting_dimensions = [1]",
        "lhs_contracting_dimensions = [one]",
    );
    let out = ppmoe(&["inspect", &s(&malformed), "--emit", "core"]);
    assert_clean_failure(
        &out,
        &[
            "bad.mlir",
            "stablehlo.dot_general",
            "'one' is not an integer",
        ],
    );

    let (_d, garbled) = edited("\"stablehlo.exponential\"(", "\"stablehlo.exponential\"((");
    let out = ppmoe(&["inspect", &s(&garbled), "--emit", "core"]);
    assert_clean_failure(&out, &["bad.mlir", "not MLIR in generic op form"]);
}

#[test]
fn weights_that_fit_no_argument_are_refused() {
    let dir = fixture("jax_gshard_top2");
    // The ONNX fixtures carry their own weights.
    let onnx = fixtures_dir().join("gshard_top2/model.onnx");
    let out = ppmoe(&[
        "inspect",
        &s(&onnx),
        "--weights",
        &s(&dir.join("weights.safetensors")),
        "--emit",
        "core",
    ]);
    assert_clean_failure(
        &out,
        &[
            "weights.safetensors",
            "--weights binds the arguments of a StableHLO program",
        ],
    );
    // The other fixture's file binds the same names and shapes; a plain .npy is no safetensors.
    let out = ppmoe(&[
        "inspect",
        &s(&dir.join("model.mlir")),
        "--weights",
        &s(&dir.join("x.npy")),
        "--emit",
        "core",
    ]);
    assert_clean_failure(&out, &["x.npy", "not a safetensors file"]);
}

#[test]
fn a_jax_transformer_block_matches_jax_and_its_moe_is_raised() {
    // RMSNorm (rsqrt), causal attention with RoPE (sine, cosine, slices, concatenate,
    // transposes), a top-k router (chlo.top_k) and SwiGLU experts computed densely.
    let dir = fixture("jax_moe_block");
    let sum = summary(&dir);
    assert!(
        sum.contains("top-2 -> softmax")
            && sum.contains("swiglu")
            && sum.contains("1 MoE layer(s)"),
        "{sum}"
    );
    matches_jax_on(
        &dir,
        &[
            &["--tp", "1"][..],
            &["--tp", "2", "--moe-strategy", "ppmoe"],
            &["--tp", "2", "--moe-strategy", "alltoall"],
            &["--tp", "4", "--moe-strategy", "auto"],
        ],
    );
}

#[test]
fn a_scatter_add_of_rows_lowers_to_scatter_nd_and_accumulates_repeated_indices() {
    use ppmoe_runtime::npy::{read_npy, write_npy};
    use ppmoe_runtime::{DType, Tensor};
    // x.at[ids].add(u) as JAX writes it for rows: repeated indices accumulate.
    let text = r#""builtin.module"() ({
  "func.func"() <{function_type = (tensor<4x2xf32>, tensor<3xi32>, tensor<3x2xf32>) -> tensor<4x2xf32>, sym_name = "main", sym_visibility = "public"}> ({
  ^bb0(%arg0: tensor<4x2xf32>, %arg1: tensor<3xi32>, %arg2: tensor<3x2xf32>):
    %0 = "stablehlo.scatter"(%arg0, %arg1, %arg2) <{scatter_dimension_numbers = #stablehlo.scatter<update_window_dims = [1], inserted_window_dims = [0], scatter_dims_to_operand_dims = [0], index_vector_dim = 1>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>):
      %s = "stablehlo.add"(%a, %b) : (tensor<f32>, tensor<f32>) -> tensor<f32>
      "stablehlo.return"(%s) : (tensor<f32>) -> ()
    }) : (tensor<4x2xf32>, tensor<3xi32>, tensor<3x2xf32>) -> tensor<4x2xf32>
    "func.return"(%0) : (tensor<4x2xf32>) -> ()
  }) : () -> ()
}) : () -> ()
"#;
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("scatter.mlir");
    std::fs::write(&m, text).unwrap();
    let core = ppmoe(&["inspect", &s(&m), "--emit", "core"]);
    assert_eq!(core.code, 0, "{}", core.stderr);
    assert!(core.stdout.contains("scatter_nd"), "{}", core.stdout);
    let (x, ids, u) = (
        d.path().join("x.npy"),
        d.path().join("ids.npy"),
        d.path().join("u.npy"),
    );
    write_npy(
        &x,
        &Tensor::f32(vec![4, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]),
    )
    .unwrap();
    write_npy(
        &ids,
        &Tensor::i64(vec![3], vec![1, 3, 1]).with_dtype(DType::I32),
    )
    .unwrap();
    write_npy(
        &u,
        &Tensor::f32(vec![3, 2], vec![10.0, 20.0, 30.0, 40.0, 50.0, 60.0]),
    )
    .unwrap();
    let b = d.path().join("b");
    assert_eq!(ppmoe(&["compile", &s(&m), "-o", &s(&b)]).code, 0);
    let r = ppmoe(&[
        "run",
        &s(&b),
        "--input",
        &s(&x),
        "--input",
        &s(&ids),
        "--input",
        &s(&u),
        "--output-dir",
        &s(&d.path().join("o")),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = read_npy(&d.path().join("o/out0.npy")).unwrap();
    // Row 1 gets 10+50 and 20+60, row 3 gets 30 and 40.
    assert_eq!(
        out.to_f32(),
        vec![1.0, 2.0, 63.0, 84.0, 5.0, 6.0, 37.0, 48.0]
    );
}

#[test]
fn malformed_ops_that_parse_are_refused_not_trusted() {
    // The ops are unregistered, so MLIR checks neither operand counts nor dimension numbers.
    let (_d, arity) = edited(
        "\"stablehlo.exponential\"(%41) : (tensor<64x4xf32>)",
        "\"stablehlo.exponential\"(%41, %41) : (tensor<64x4xf32>, tensor<64x4xf32>)",
    );
    let out = ppmoe(&["inspect", &s(&arity), "--emit", "core"]);
    assert_clean_failure(
        &out,
        &[
            "bad.mlir",
            "stablehlo.exponential",
            "2 operands where the op takes 1",
        ],
    );
    let (_d, dims) = edited(
        "lhs_contracting_dimensions = [1]",
        "lhs_contracting_dimensions = [7]",
    );
    let out = ppmoe(&["inspect", &s(&dims), "--emit", "core"]);
    assert_clean_failure(
        &out,
        &[
            "bad.mlir",
            "stablehlo.dot_general",
            "beyond the operands' ranks",
        ],
    );
    let (_d, bcast) = edited(
        "broadcast_dimensions = array<i64: 0>",
        "broadcast_dimensions = array<i64: 9>",
    );
    let out = ppmoe(&["inspect", &s(&bcast), "--emit", "core"]);
    assert_clean_failure(
        &out,
        &[
            "bad.mlir",
            "stablehlo.broadcast_in_dim",
            "broadcast_dimensions [9]",
        ],
    );
}

#[test]
fn a_nul_byte_in_mlir_text_is_an_error_not_a_panic() {
    // Found by scripts/fuzz: MLIR takes a C string, and melior panicked on an interior NUL.
    let d = tempfile::tempdir().unwrap();
    let mut text = std::fs::read(fixture("jax_moe_block").join("model.mlir")).unwrap();
    text.insert(100, 0);
    let p = d.path().join("model.mlir");
    std::fs::write(&p, text).unwrap();
    let out = ppmoe(&["inspect", &s(&p), "--emit", "core"]);
    assert_clean_failure(&out, &["model.mlir", "NUL byte at offset 100"]);
}

#[test]
fn shard_map_experts_that_call_a_private_function_are_raised_and_match_jax() {
    // jax.nn.silu lowers to a func.call inside the expert work, between the two all_to_alls:
    // its body is inlined and read like the rest (here as x / (1 + exp(-x))).
    let dir = fixture("jax_silu_a2a");
    let text = std::fs::read_to_string(dir.join("model.mlir")).unwrap();
    assert!(
        text.contains("\"func.call\""),
        "the fixture calls a function"
    );
    let sum = summary(&dir);
    assert_eq!(
        sum.matches("softmax -> top-2, renormalised, capacity 4 | silu")
            .count(),
        4,
        "{sum}"
    );
    matches_jax_on(
        &dir,
        &[
            &["--tp", "1"][..],
            &["--tp", "2", "--moe-strategy", "ppmoe"],
            &["--tp", "4", "--moe-strategy", "alltoall"],
        ],
    );
}

#[test]
fn layers_stacked_by_jax_lax_scan_are_unrolled_raised_and_match_jax() {
    // jax.lax.scan over stacked layer weights lowers to a stablehlo.while whose body slices its
    // layer's weights by the counter: unrolled, the slices static, each layer raised.
    let dir = fixture("jax_scan_layers");
    let text = std::fs::read_to_string(dir.join("model.mlir")).unwrap();
    assert!(text.contains("\"stablehlo.while\"") && text.contains("\"stablehlo.dynamic_slice\""));
    let sum = summary(&dir);
    assert!(sum.contains("2 MoE layer(s)"), "{sum}");
    assert_eq!(
        sum.matches("softmax -> top-2, renormalised | silu").count(),
        2,
        "{sum}"
    );
    matches_jax_on(
        &dir,
        &[
            &["--tp", "1"][..],
            &["--tp", "2", "--pp", "2"],
            &["--tp", "2", "--pp", "2", "--moe-strategy", "alltoall"],
        ],
    );
}

#[test]
fn a_loop_that_is_not_counted_is_refused_by_name() {
    // The scan's condition edited to compare two carried values: no constant bound.
    let text = std::fs::read_to_string(fixture("jax_scan_layers").join("model.mlir")).unwrap();
    let at = text.find("\"stablehlo.compare\"(").unwrap();
    let end = at + text[at..].find(')').unwrap();
    let args: Vec<&str> = text[at + 20..end].split(", ").collect();
    let edited = format!(
        "{}{}, {}{}",
        &text[..at + 20],
        args[0],
        args[0],
        &text[end..]
    );
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model.mlir");
    std::fs::write(&model, edited).unwrap();
    let out = ppmoe(&[
        "inspect",
        &s(&model),
        "--weights",
        &s(&fixture("jax_scan_layers").join("weights.safetensors")),
    ]);
    assert_clean_failure(
        &out,
        &["stablehlo.while", "counted loops", "counter < a constant"],
    );
}
