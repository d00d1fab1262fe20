//! The `onnx` stage: every fixture imports to verified MLIR with one op per ONNX node.

use crate::common::{fixture_field, fixtures, ppmoe};

#[test]
fn every_fixture_prints_verified_onnx_ir_with_one_op_per_node() {
    for dir in fixtures() {
        let model = dir.join("model.onnx");
        let out = ppmoe(&["inspect", model.to_str().unwrap(), "--emit", "onnx"]);
        // (Symbolic dimensions stay dynamic at this stage: no --input-shape needed.)
        assert_eq!(out.code, 0, "{}: {}", dir.display(), out.stderr);
        // Ops print as "onnx.<OpType>"(...): ONNX op types start with a capital letter.
        let ops = out
            .stdout
            .match_indices("\"onnx.")
            .filter(|(i, m)| {
                out.stdout[i + m.len()..].starts_with(|c: char| c.is_ascii_uppercase())
            })
            .count();
        // fixture.json's count was written by the onnx Python package when the model was exported.
        let nodes: usize = fixture_field(&dir, "nodes").parse().unwrap();
        assert_eq!(
            ops,
            nodes,
            "{}: ops in the IR vs nodes in the graph",
            dir.display()
        );
        assert!(out.stdout.contains("func.func @main("), "{}", dir.display());
        assert!(
            !out.stdout.contains("tensor<*x"),
            "{}: unranked type",
            dir.display()
        );
    }
}

#[test]
fn weights_are_arguments_named_after_initializers_not_inline_constants() {
    let dir = crate::common::fixtures_dir().join("mixtral_block_dynamo");
    let out = ppmoe(&["inspect", dir.join("model.onnx").to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("tensor<4x256x64xf32> {onnx.weight = \"val_25\"}"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("{onnx.name = \"hidden_states\"}"));
    assert!(
        !out.stdout.contains("dense<"),
        "no weight may be printed inline"
    );
}

#[test]
fn external_data_is_read_relative_to_the_model() {
    let dir = crate::common::fixtures_dir().join("mixtral_block_external");
    assert!(dir.join("model.onnx.data").exists());
    let inline = ppmoe_frontend::load_onnx(
        &crate::common::fixtures_dir().join("mixtral_block_dynamo/model.onnx"),
    )
    .unwrap();
    // Run from another working directory: the data file must be found beside the model.
    let external =
        ppmoe_frontend::load_onnx(&std::fs::canonicalize(dir.join("model.onnx")).unwrap()).unwrap();
    assert_eq!(
        inline.graph.initializers.len(),
        external.graph.initializers.len()
    );
    for ((n1, t1), (n2, t2)) in inline
        .graph
        .initializers
        .iter()
        .zip(&external.graph.initializers)
    {
        assert_eq!(n1, n2);
        assert_eq!(
            (t1.dtype, &t1.dims),
            (t2.dtype, &t2.dims),
            "initializer {n1}"
        );
        assert_eq!(
            t1.load_bytes().unwrap(),
            t2.load_bytes().unwrap(),
            "initializer {n1} differs between the inline and the external-data model"
        );
    }
}

#[test]
fn torchscript_constants_keep_their_values_and_run_time_sizes_stay_dynamic() {
    let dir = crate::common::fixtures_dir().join("mixtral_block_ts_eager");
    let out = ppmoe(&["inspect", dir.join("model.onnx").to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("{value = dense<[-1, 64]> : tensor<2xi64>}"),
        "small constants are printed"
    );
    assert!(out.stdout.contains("\"onnx.NonZero\""));
    // NonZero's count is only known at run time: the type stays dynamic, the rank is known.
    assert!(
        out.stdout.contains("-> tensor<2x?xi64>"),
        "NonZero result type"
    );
}

#[test]
fn input_shape_flag_fixes_dimensions_and_rejects_a_wrong_rank() {
    let model = crate::common::fixtures_dir().join("mixtral_lm_dynamo/model.onnx");
    let m = model.to_str().unwrap();
    let ok = ppmoe(&["inspect", m, "--input-shape", "input_ids=1x16"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok
        .stdout
        .contains("%arg0: tensor<1x16xi64> {onnx.name = \"input_ids\"}"));
    let bad = ppmoe(&["inspect", m, "--input-shape", "input_ids=1x16x3"]);
    crate::common::assert_clean_failure(&bad, &["input_ids", "rank 2"]);
    let unknown = ppmoe(&["inspect", m, "--input-shape", "tokens=1x16"]);
    crate::common::assert_clean_failure(&unknown, &["no input of that name", "input_ids"]);
}

#[test]
fn an_unknown_stage_is_refused_with_the_ladder_listed() {
    let model = crate::common::fixtures_dir().join("mixtral_block_dynamo/model.onnx");
    let out = ppmoe(&["inspect", model.to_str().unwrap(), "--emit", "llvm"]);
    assert_ne!(out.code, 0);
    assert!(!out.stderr.contains("panicked"));
    assert!(
        out.stderr
            .contains("onnx, core, moe, sharded, pipelined, kernels, ptx"),
        "{}",
        out.stderr
    );
}

/// Compiles the single-op graph `tests/ops/NAME`, runs it on its `inputs` and checks each of
/// `outputs` against onnxruntime's (within 1e-6); all are `<name>.npy` beside the model.
fn matches_onnxruntime(name: &str, inputs: &[&str], outputs: &[&str]) {
    let dir = crate::common::fixtures_dir().join("../ops").join(name);
    let work = tempfile::tempdir().unwrap();
    let b = work.path().join("b");
    let p = |f: &str| dir.join(f).display().to_string();
    let c = ppmoe(&["compile", &p("model.onnx"), "-o", b.to_str().unwrap()]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let mut args = vec![
        "run".to_string(),
        b.display().to_string(),
        "--output-dir".into(),
        work.path().join("o").display().to_string(),
        "--tolerance".into(),
        "1e-6".into(),
    ];
    for i in inputs {
        args.extend(["--input".into(), format!("{i}={}", p(&format!("{i}.npy")))]);
    }
    for o in outputs {
        args.extend(["--check".into(), format!("{o}={}", p(&format!("{o}.npy")))]);
    }
    run_checked(&args, outputs.len(), "");
}

/// `ppmoe run ARGS` with its `--check`s: it succeeds and every one of `checks` outputs is ok.
fn run_checked(args: &[String], checks: usize, context: &str) {
    let r = ppmoe(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "{context}: {}\n{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.matches(": ok").count(), checks, "{}", r.stdout);
}

#[test]
fn onnxruntime_genai_rms_norms_match_onnxruntime() {
    // SkipSimplifiedLayerNormalization (its sum as output 3, its statistics unused) feeding
    // SimplifiedLayerNormalization, as onnxruntime-genai's builder emits them; reference:
    // onnxruntime's own outputs (examples/export_op_checks.py).
    matches_onnxruntime("rms_norms", &["x", "skip"], &["y", "sum", "z"]);
}

/// Compiles onnxruntime-genai's decoder in `dir` for the inputs of `case` (prompt or step) and
/// checks every output against onnxruntime's.
/// One reference case of a genai decoder: `past` cached tokens (each layer's cache `slots[l]`
/// long: the past length, or a ring buffer's slots), `tokens` new ones.
struct GenaiCase<'a> {
    case: &'a str,
    past: usize,
    tokens: usize,
    slots: [usize; 2],
}

fn genai_case(dir: &std::path::Path, c: GenaiCase, grid: &[&str]) {
    let GenaiCase {
        case,
        past,
        tokens,
        slots,
    } = c;
    let work = tempfile::tempdir().unwrap();
    let b = work.path().join("b");
    let model = dir.join("model.onnx").display().to_string();
    let mut args: Vec<String> = vec![
        "compile".into(),
        model,
        "-o".into(),
        b.display().to_string(),
    ];
    let inputs = ["input_ids", "attention_mask"];
    args.extend([
        "--input-shape".into(),
        format!("input_ids=1x{tokens}"),
        "--input-shape".into(),
        format!("attention_mask=1x{}", past + tokens),
    ]);
    let mut kv = Vec::new();
    for (layer, n) in slots.iter().enumerate() {
        for part in ["key", "value"] {
            let name = format!("past_key_values.{layer}.{part}");
            args.extend(["--input-shape".into(), format!("{name}=1x2x{n}x16")]);
            kv.push(name);
        }
    }
    args.extend(grid.iter().map(|g| g.to_string()));
    let c = ppmoe(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(c.code, 0, "{case}: {}", c.stderr);
    let refs = dir.join(case);
    let mut run: Vec<String> = vec!["run".into(), b.display().to_string()];
    for name in inputs.iter().map(|s| s.to_string()).chain(kv) {
        run.extend([
            "--input".into(),
            format!("{name}={}", refs.join(format!("{name}.npy")).display()),
        ]);
    }
    // A CUDA fp16 build against its fp32 build's reference: within fp16's precision.
    let fp16 = dir.to_string_lossy().ends_with("_cuda_fp16");
    run.extend([
        "--output-dir".into(),
        work.path().join("o").display().to_string(),
        "--tolerance".into(),
        if fp16 { "2e-3" } else { "1e-4" }.into(),
    ]);
    let outputs = [
        "logits",
        "present.0.key",
        "present.0.value",
        "present.1.key",
        "present.1.value",
    ];
    for o in outputs {
        run.extend([
            "--check".into(),
            format!("{o}={}", refs.join(format!("{o}.npy")).display()),
        ]);
    }
    run_checked(&run, outputs.len(), &format!("{case} {grid:?}"));
}

#[test]
fn onnxruntime_genai_decoder_matches_onnxruntime_on_a_prompt_and_a_cached_step() {
    // GroupQueryAttention (separate Q, K, V after Qwen3's q/k norms; rotary caches; the KV
    // cache in and out), SkipSimplifiedLayerNormalization and SimplifiedLayerNormalization, as
    // onnxruntime-genai 0.18's builder makes them (examples/export_genai_decoders.py).
    let dir = crate::common::fixtures_dir().join("../genai/qwen3_decoder");
    let prompt = GenaiCase {
        case: "prompt",
        past: 0,
        tokens: 16,
        slots: [0, 0],
    };
    let step = GenaiCase {
        case: "step",
        past: 16,
        tokens: 1,
        slots: [16, 16],
    };
    genai_case(&dir, prompt, &[]);
    genai_case(&dir, step, &[]);
    let prompt = GenaiCase {
        case: "prompt",
        past: 0,
        tokens: 16,
        slots: [0, 0],
    };
    genai_case(&dir, prompt, &["--tp", "2"]);
}

#[test]
fn gptoss_genai_decoder_with_a_ring_buffer_cache_matches_onnxruntime() {
    // gpt-oss as genai's builder makes it: a sliding-window layer whose cache is a ring buffer
    // of 128 slots (sliding_window_cache), a full-attention layer, attention sinks, the MoE
    // (com.microsoft.MoE); a prompt on an empty cache and a step on it, the step at pp 2 too,
    // the prompt at tp 2 x pp 2 with either strategy (the stages pass on the caches' inputs and
    // outputs and the residual sum as well as the hidden state).
    let dir = crate::common::fixtures_dir().join("../genai/gptoss_decoder");
    let case = |case, past, tokens| GenaiCase {
        case,
        past,
        tokens,
        slots: [128, past],
    };
    genai_case(&dir, case("prompt", 0, 16), &[]);
    genai_case(&dir, case("step", 16, 1), &[]);
    genai_case(&dir, case("step", 16, 1), &["--pp", "2"]);
    for strategy in ["ppmoe", "alltoall"] {
        let grid = ["--tp", "2", "--pp", "2", "--moe-strategy", strategy];
        genai_case(&dir, case("prompt", 0, 16), &grid);
    }
}

#[test]
fn genai_cuda_fp16_builds_match_their_fp32_builds() {
    // What genai's builder makes for a GPU (`-p fp16 -e cuda`): fp16 weights, activations and
    // caches; Qwen3's q/k RMS norms fused into GroupQueryAttention (inputs 14 and 15), which
    // onnxruntime's CPU provider refuses, so the reference is the fp32 build's output (the
    // same weights). A prompt and a step each; gpt-oss's sliding layer has its 128-slot ring.
    let genai = crate::common::fixtures_dir().join("../genai");
    for (name, ring) in [
        ("qwen3_decoder_cuda_fp16", 0),
        ("gptoss_decoder_cuda_fp16", 128),
    ] {
        let dir = genai.join(name);
        let case = |case, past, tokens| GenaiCase {
            case,
            past,
            tokens,
            slots: [if ring > 0 { ring } else { past }, past],
        };
        genai_case(&dir, case("prompt", 0, 16), &[]);
        genai_case(&dir, case("step", 16, 1), &[]);
    }
}

#[test]
fn a_ring_buffer_cache_that_has_wrapped_is_refused_by_name() {
    // 140 tokens in all: more than the sliding layer's 128 slots hold in order.
    let dir = crate::common::fixtures_dir().join("../genai/gptoss_decoder");
    let mut args = vec![
        "inspect".to_string(),
        dir.join("model.onnx").display().to_string(),
        "--emit".into(),
        "core".into(),
        "--input-shape".into(),
        "input_ids=1x16".into(),
        "--input-shape".into(),
        "attention_mask=1x140".into(),
    ];
    for (layer, slots) in [(0, 128), (1, 124)] {
        for part in ["key", "value"] {
            args.extend([
                "--input-shape".into(),
                format!("past_key_values.{layer}.{part}=1x2x{slots}x16"),
            ]);
        }
    }
    let out = ppmoe(&args.iter().map(String::as_str).collect::<Vec<_>>());
    crate::common::assert_clean_failure(
        &out,
        &[
            "GroupQueryAttention",
            "ring-buffer cache of 128 slots and 140 tokens",
            "before the buffer wraps",
        ],
    );
}

#[test]
fn group_query_attention_with_a_local_window_and_sinks_matches_onnxruntime() {
    // A window of 3 over 8 tokens and a sink logit per head: the parts of the lowering that the
    // genai decoder fixture does not reach (examples/export_op_checks.py).
    matches_onnxruntime(
        "gqa_window_sinks",
        &["qkv"],
        &["out", "present_key", "present_value"],
    );
}
