//! The `moe` stage: every MoE layer of every fixture raised to moe.route + moe.experts, whatever
//! the exporter made of it (families A to D), near misses left alone with a reason, and the
//! `moe` dialect's IRDL verifier at work.

use crate::common::{fixture_field, fixtures, fixtures_dir, ppmoe, shape_flags};
use std::path::Path;

fn inspect(dir: &Path, extra: &[&str]) -> crate::common::Output {
    let mut args = vec!["inspect".to_string(), dir.join("model.onnx").display().to_string()];
    args.extend(shape_flags(dir));
    args.extend(extra.iter().map(|s| s.to_string()));
    ppmoe(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// MoE layers in a fixture: two for the whole LMs (two decoder layers, all MoE), else one.
fn expected_layers(dir: &Path) -> usize {
    if fixture_field(dir, "kind") == "lm" { 2 } else { 1 }
}

#[test]
fn every_fixture_has_one_moe_experts_op_per_moe_layer() {
    for dir in fixtures() {
        let out = inspect(&dir, &["--emit", "moe"]);
        assert_eq!(out.code, 0, "{}: {}", dir.display(), out.stderr);
        let experts = out.stdout.matches("\"moe.experts\"").count();
        let routes = out.stdout.matches("\"moe.route\"").count();
        let want = expected_layers(&dir);
        assert_eq!(experts, want, "{}: moe.experts ops", dir.display());
        assert_eq!(routes, want, "{}: moe.route ops", dir.display());
        // The routing and expert arithmetic is gone: no top_k, no per-expert gathers survive.
        assert!(!out.stdout.contains("\"core.top_k\""), "{}: a top_k survived", dir.display());
        assert!(!out.stdout.contains("\"core.non_zero\""), "{}: a per-expert loop survived", dir.display());
    }
}

fn summary_row(name: &str) -> String {
    let out = inspect(&fixtures_dir().join(name), &["--summary"]);
    assert_eq!(out.code, 0, "{name}: {}", out.stderr);
    out.stdout
}

#[test]
fn family_a_fused_ort_moe_from_onnxruntime_genai_builder() {
    let s = summary_row("gptoss_genai_moe");
    assert!(s.contains("A fused com.microsoft.MoE"), "{s}");
    assert!(s.contains("clamped swiglu (alpha 1.702, beta 1"), "{s}");
    assert!(s.contains("| 4       | 2     | 64     | 64 "), "{s}");
}

#[test]
fn family_b_unrolled_loops_of_torchscript_eager_traces() {
    for name in ["mixtral_block_ts_eager", "olmoe_block_ts_eager", "qwen2moe_block_ts_eager"] {
        let s = summary_row(name);
        assert!(s.contains("B unrolled per-expert loop") && s.contains("1 MoE layer(s)"), "{name}: {s}");
    }
}

#[test]
fn family_c_gather_the_weights_of_batched_mm_exports() {
    for name in ["mixtral_block_dynamo", "mixtral_block_ts_bmm", "olmoe_block_dynamo", "qwen2moe_block_ts_bmm"] {
        let s = summary_row(name);
        assert!(s.contains("C gather-the-weights (batched_mm)") && s.contains("1 MoE layer(s)"), "{name}: {s}");
    }
    // Mixtral renormalises the top-k weights, OLMoE (norm_topk_prob = False) does not.
    assert!(summary_row("mixtral_block_dynamo").contains("softmax -> top-2, renormalised"));
    assert!(!summary_row("olmoe_block_dynamo").contains("renormalised"));
}

#[test]
fn family_d_einsum_dispatch_with_capacity() {
    for name in ["gshard_top2", "gshard_top2_dynamo"] {
        let s = summary_row(name);
        assert!(s.contains("D einsum dispatch") && s.contains("capacity 8") && s.contains("gelu"), "{name}: {s}");
        assert!(s.contains("kept (exact)"), "{name}: {s}");
    }
}

#[test]
fn shared_experts_stay_dense_beside_the_routed_ones() {
    let s = summary_row("qwen2moe_lm_dynamo");
    assert_eq!(s.matches("1 dense, sigmoid-gated").count(), 2, "{s}");
    let ir = inspect(&fixtures_dir().join("qwen2moe_block_dynamo"), &["--emit", "moe"]);
    // The shared expert's three matmuls and its gate's one stay as core ops, beside the router's.
    assert_eq!(ir.stdout.matches("\"core.mat_mul\"").count(), 5, "{}", ir.stdout);
}

#[test]
fn dropless_flag_says_what_it_changed() {
    let out = inspect(&fixtures_dir().join("gshard_top2"), &["--summary", "--moe-capacity", "dropless"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("made dropless") && out.stdout.contains("results differ where the source dropped"), "{}", out.stdout);
    assert!(!out.stdout.contains("capacity 8"), "{}", out.stdout);
}

#[test]
fn a_layer_that_looks_like_moe_but_differs_stays_unraised_with_the_reason() {
    use ppmoe_frontend::onnx_proto as pb;
    use prost::Message;
    // Mixtral's experts with the gate's SiLU turned into tanh-times-x: routed like MoE, but no
    // expert activation ppmoe knows computes it. A wrong raise would be the worst outcome.
    let d = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("mixtral_block_ts_bmm/model.onnx");
    let mut m = pb::ModelProto::decode(std::fs::read(src).unwrap().as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let sig = g.node.iter_mut().find(|n| n.op_type == "Sigmoid").expect("SiLU's sigmoid");
    sig.op_type = "Tanh".into();
    let p = d.path().join("model.onnx");
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let out = ppmoe(&["inspect", p.to_str().unwrap(), "--summary"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("0 MoE layer(s)"), "{}", out.stdout);
    assert!(out.stdout.contains("not raised: router at node") && out.stdout.contains("matches none of"), "{}", out.stdout);
    // It still compiles and runs: unraised layers stay ordinary core ops.
    let b = d.path().join("bundle");
    let c = ppmoe(&["compile", p.to_str().unwrap(), "-o", b.to_str().unwrap()]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert!(c.stdout.contains("0 MoE layers"), "{}", c.stdout);
}

#[test]
fn the_moe_dialect_verifier_rejects_a_route_without_top_k() {
    let context = ppmoe_dialect::context();
    let good = r#"func.func @f(%l: tensor<16x4xf32>) -> tensor<16x2xf32> {
  %w, %i = "moe.route"(%l) {top_k = 2 : i64, scoring = "softmax", order = "softmax_then_topk", renormalize = true, n_group = 0 : i64, topk_group = 0 : i64, routed_scaling_factor = 1.0 : f32, capacity = 0 : i64} : (tensor<16x4xf32>) -> (tensor<16x2xf32>, tensor<16x2xi64>)
  return %w : tensor<16x2xf32>
}"#;
    assert!(ppmoe_dialect::parse_verified(&context, good).is_ok());
    let bad = good.replace("top_k = 2 : i64, ", "");
    let err = ppmoe_dialect::parse_verified(&context, &bad).unwrap_err();
    assert!(err.contains("top_k"), "{err}");
    let not_bool = good.replace("renormalize = true", "renormalize = 3 : i64");
    assert!(ppmoe_dialect::parse_verified(&context, &not_bool).is_err());
}
