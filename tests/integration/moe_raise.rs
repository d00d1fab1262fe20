//! The `moe` stage: every MoE layer of every fixture raised to moe.route + moe.experts, whatever
//! the exporter made of it (families A to D), near misses left alone with a reason, and the
//! `moe` dialect's IRDL verifier at work.

use crate::common::{fixtures, fixtures_dir, ppmoe, shape_flags};
use std::path::Path;

fn inspect(dir: &Path, extra: &[&str]) -> crate::common::Output {
    let mut args = vec![
        "inspect".to_string(),
        dir.join("model.onnx").display().to_string(),
    ];
    args.extend(shape_flags(dir));
    args.extend(extra.iter().map(|s| s.to_string()));
    ppmoe(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn expected_layers(dir: &Path) -> usize {
    crate::common::moe_layers(dir)
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
        // The routing and expert arithmetic is gone: no top_k, no per-expert gathers survive
        // (a model that returns its routing scores too keeps the ops that make them).
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("fixture.json")).unwrap())
                .unwrap();
        let returns_routing = info["outputs"].as_array().is_some_and(|o| o.len() > 1);
        assert!(
            returns_routing || !out.stdout.contains("\"core.top_k\""),
            "{}: a top_k survived",
            dir.display()
        );
        assert!(
            !out.stdout.contains("\"core.non_zero\""),
            "{}: a per-expert loop survived",
            dir.display()
        );
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
    for name in [
        "mixtral_block_ts_eager",
        "olmoe_block_ts_eager",
        "qwen2moe_block_ts_eager",
    ] {
        let s = summary_row(name);
        assert!(
            s.contains("B unrolled per-expert loop") && s.contains("1 MoE layer(s)"),
            "{name}: {s}"
        );
    }
}

#[test]
fn family_c_gather_the_weights_of_batched_mm_exports() {
    for name in [
        "mixtral_block_dynamo",
        "mixtral_block_ts_bmm",
        "olmoe_block_dynamo",
        "qwen2moe_block_ts_bmm",
    ] {
        let s = summary_row(name);
        assert!(
            s.contains("C gather-the-weights (batched_mm)") && s.contains("1 MoE layer(s)"),
            "{name}: {s}"
        );
    }
    // Mixtral renormalises the top-k weights, OLMoE (norm_topk_prob = False) does not.
    assert!(summary_row("mixtral_block_dynamo").contains("softmax -> top-2, renormalised"));
    assert!(!summary_row("olmoe_block_dynamo").contains("renormalised"));
}

#[test]
fn family_d_einsum_dispatch_with_capacity() {
    for name in ["gshard_top2", "gshard_top2_dynamo"] {
        let s = summary_row(name);
        assert!(
            s.contains("D einsum dispatch") && s.contains("capacity 8") && s.contains("gelu"),
            "{name}: {s}"
        );
        assert!(s.contains("kept (exact)"), "{name}: {s}");
    }
}

#[test]
fn shared_experts_stay_dense_beside_the_routed_ones() {
    let s = summary_row("qwen2moe_lm_dynamo");
    assert_eq!(s.matches("1 dense, sigmoid-gated").count(), 2, "{s}");
    let ir = inspect(
        &fixtures_dir().join("qwen2moe_block_dynamo"),
        &["--emit", "moe"],
    );
    // The shared expert's three matmuls and its gate's one stay dense (upstream's
    // linalg.matmul), beside the router's.
    assert_eq!(
        ir.stdout.matches("\"core.mat_mul\"").count() + ir.stdout.matches("linalg.matmul").count(),
        5,
        "{}",
        ir.stdout
    );
}

#[test]
fn dropless_flag_says_what_it_changed() {
    let out = inspect(
        &fixtures_dir().join("gshard_top2"),
        &["--summary", "--moe-capacity", "dropless"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("made dropless")
            && out
                .stdout
                .contains("results differ where the source dropped"),
        "{}",
        out.stdout
    );
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
    let sig = g
        .node
        .iter_mut()
        .find(|n| n.op_type == "Sigmoid")
        .expect("SiLU's sigmoid");
    sig.op_type = "Tanh".into();
    let p = d.path().join("model.onnx");
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let out = ppmoe(&["inspect", p.to_str().unwrap(), "--summary"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("0 MoE layer(s)"), "{}", out.stdout);
    assert!(
        out.stdout.contains("not raised: router at node") && out.stdout.contains("matches none of"),
        "{}",
        out.stdout
    );
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

#[test]
fn the_moe_dialect_verifier_takes_only_the_two_expert_layouts() {
    let context = ppmoe_dialect::context();
    let op = |layout: &str| {
        format!(
            r#"func.func @f(%x: tensor<4x8xf32>, %w: tensor<4x2xf32>, %i: tensor<4x2xi64>, %a: tensor<3x32x8xf32>, %b: tensor<3x8x16xf32>) -> tensor<4x8xf32> {{
  %y = "moe.experts"(%x, %w, %i, %a, %b) {{activation = "swiglu", layout = "{layout}", operandSegmentSizes = array<i32: 1, 1, 1, 1, 1, 0, 0>}} : (tensor<4x8xf32>, tensor<4x2xf32>, tensor<4x2xi64>, tensor<3x32x8xf32>, tensor<3x8x16xf32>) -> tensor<4x8xf32>
  return %y : tensor<4x8xf32>
}}"#
        )
    };
    for good in ["linear", "in_out"] {
        let r = ppmoe_dialect::parse_verified(&context, &op(good));
        assert!(r.is_ok(), "{good}: {:?}", r.err());
    }
    assert!(ppmoe_dialect::parse_verified(&context, &op("transposed")).is_err());
}

/// The gpt-oss fixture's fused MoE node, rewritten into the other forms ORT's MoE op takes: the
/// same layer must come out of each, and give PyTorch's output.
mod fused_ort_variants {
    use crate::common::{fixtures_dir, ppmoe, shape_flags};
    use ppmoe_frontend::onnx_proto as pb;
    use prost::Message;

    const FC1: &str = "model.layers.0.moe.experts.gate_up_proj.weight";
    const FC1_B: &str = "model.layers.0.moe.experts.gate_up_proj.bias";
    const FC2: &str = "model.layers.0.moe.experts.down_proj.weight";

    fn load() -> pb::ModelProto {
        pb::ModelProto::decode(
            std::fs::read(fixtures_dir().join("gptoss_genai_moe/model.onnx"))
                .unwrap()
                .as_slice(),
        )
        .unwrap()
    }

    fn get(m: &pb::ModelProto, name: &str) -> (Vec<i64>, Vec<f32>) {
        let t = m
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .find(|t| t.name == name)
            .unwrap();
        let v = if t.raw_data.is_empty() {
            t.float_data.clone()
        } else {
            t.raw_data
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        (t.dims.clone(), v)
    }

    fn set(m: &mut pb::ModelProto, name: &str, dims: Vec<i64>, v: &[f32]) {
        let g = m.graph.as_mut().unwrap();
        g.initializer.retain(|t| t.name != name);
        g.initializer.push(pb::TensorProto {
            name: name.into(),
            dims,
            data_type: 1,
            raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..Default::default()
        });
    }

    /// [E, a, b] -> [E, b, a]
    fn swap(dims: &[i64], v: &[f32]) -> (Vec<i64>, Vec<f32>) {
        let (e, a, b) = (dims[0] as usize, dims[1] as usize, dims[2] as usize);
        let mut o = vec![0f32; v.len()];
        for x in 0..e {
            for i in 0..a {
                for j in 0..b {
                    o[x * a * b + j * a + i] = v[x * a * b + i * b + j];
                }
            }
        }
        (vec![dims[0], dims[2], dims[1]], o)
    }

    /// Rows (axis 1 of [E, 2F, ...]) from interleaved g0,u0,g1,u1... to (gate rows, up rows).
    fn deinterleave(dims: &[i64], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (e, n) = (dims[0] as usize, dims[1] as usize);
        let row = v.len() / (e * n);
        let (mut g, mut u) = (Vec::new(), Vec::new());
        for x in 0..e {
            for r in 0..n {
                let src = &v[(x * n + r) * row..(x * n + r + 1) * row];
                if r % 2 == 0 {
                    g.extend_from_slice(src)
                } else {
                    u.extend_from_slice(src)
                }
            }
        }
        (g, u)
    }

    fn moe_node(m: &mut pb::ModelProto) -> &mut pb::NodeProto {
        m.graph
            .as_mut()
            .unwrap()
            .node
            .iter_mut()
            .find(|n| n.op_type == "MoE")
            .unwrap()
    }

    fn set_int(m: &mut pb::ModelProto, attr: &str, v: i64) {
        let n = moe_node(m);
        n.attribute.retain(|a| a.name != attr);
        n.attribute.push(pb::AttributeProto {
            name: attr.into(),
            r#type: pb::attribute_type::INT,
            i: v,
            ..Default::default()
        });
    }

    /// Compiles and runs the variant; returns (summary, relative error against PyTorch).
    fn run(m: &pb::ModelProto) -> (String, f64) {
        let dir = fixtures_dir().join("gptoss_genai_moe");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("model.onnx");
        std::fs::write(&p, m.encode_to_vec()).unwrap();
        let mut args = vec![
            "compile".to_string(),
            p.display().to_string(),
            "-o".into(),
            d.path().join("b").display().to_string(),
        ];
        args.extend(shape_flags(&dir));
        let c = ppmoe(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(c.code, 0, "{}", c.stderr);
        let input = dir.join("_model_layers.0_post_attention_layernorm_output_0.npy");
        let reference = dir.join("_model_layers.0_moe_MoE_output_0.npy");
        let out = d.path().join("out");
        let r = ppmoe(&[
            "run",
            d.path().join("b").to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--check",
            reference.to_str().unwrap(),
            "--tolerance",
            "1e9",
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let e: f64 = r
            .stdout
            .split("relative error ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        (c.stdout, e)
    }

    #[test]
    fn the_builders_own_form_interleaved_swiglu_fusion_1() {
        let (_, e) = run(&load());
        assert!(e < 1e-5, "{e}");
    }

    #[test]
    fn the_older_weight_layout_gives_the_same_layer() {
        let mut m = load();
        for name in [FC1, FC2] {
            let (dims, v) = get(&m, name);
            let (d2, v2) = swap(&dims, &v);
            set(&mut m, name, d2, &v2);
        }
        let (_, e) = run(&m);
        assert!(e < 1e-5, "{e}");
    }

    #[test]
    fn concatenated_swiglu_fusion_2_gives_the_same_layer() {
        let mut m = load();
        // Per expert the rows become [gate rows | up rows].
        let (dims, v) = get(&m, FC1);
        let (e, n, row) = (dims[0] as usize, dims[1] as usize, dims[2] as usize);
        let (g, u) = deinterleave(&dims, &v);
        let half = n / 2 * row;
        let packed: Vec<f32> = (0..e)
            .flat_map(|x| [&g[x * half..(x + 1) * half], &u[x * half..(x + 1) * half]].concat())
            .collect();
        set(&mut m, FC1, dims.clone(), &packed);
        let (bd, bv) = get(&load(), FC1_B);
        let (bg, bu) = deinterleave(&[bd[0], bd[1], 1], &bv);
        let bf = bd[1] as usize / 2;
        let bpacked: Vec<f32> = (0..e)
            .flat_map(|x| [&bg[x * bf..(x + 1) * bf], &bu[x * bf..(x + 1) * bf]].concat())
            .collect();
        set(&mut m, FC1_B, bd, &bpacked);
        set_int(&mut m, "swiglu_fusion", 2);
        let (_, err) = run(&m);
        assert!(err < 1e-5, "{err}");
    }

    #[test]
    fn separate_gate_and_up_swiglu_fusion_0_gives_the_same_layer() {
        let mut m = load();
        let (dims, v) = get(&m, FC1);
        let (g, u) = deinterleave(&dims, &v);
        let gd = vec![dims[0], dims[1] / 2, dims[2]];
        set(&mut m, FC1, gd.clone(), &g);
        set(&mut m, "fc3", gd, &u);
        let (bd, bv) = get(&m, FC1_B);
        let (bg, bu) = deinterleave(&[bd[0], bd[1], 1], &bv);
        set(&mut m, FC1_B, vec![bd[0], bd[1] / 2], &bg);
        set(&mut m, "fc3_bias", vec![bd[0], bd[1] / 2], &bu);
        let n = moe_node(&mut m);
        n.input.truncate(6);
        n.input.push("fc3".into());
        n.input.push("fc3_bias".into());
        set_int(&mut m, "swiglu_fusion", 0);
        let (_, err) = run(&m);
        assert!(err < 1e-5, "{err}");
    }

    #[test]
    fn normalize_routing_weights_0_is_honoured() {
        let mut m = load();
        set_int(&mut m, "normalize_routing_weights", 0);
        let (summary, err) = run(&m);
        // The reference renormalises the top-2 weights; without it every output shrinks.
        assert!(err > 1e-2, "{err}: {summary}");
    }
}

/// PhiMoE's sparsemixer (arg_max straight over the router logits, each choice's weight a
/// softmax with the logits far below it masked out) is raised to `moe.route` with its
/// scoring and the exported graph's masking threshold (2 x jitter_eps = 0.02), checked against
/// the layer's own ops on random logits like any reading.
#[test]
fn phimoe_sparsemixer_routing_is_raised_with_its_mask_threshold() {
    let s = summary_row("phimoe_lm_sdpa");
    assert!(s.contains("2 MoE layer(s)"), "{s}");
    assert_eq!(
        s.matches("sparsemixer top-2 (mask threshold 0.02)").count(),
        2,
        "{s}"
    );
    assert!(!s.contains("not raised"), "{s}");
    let ir = inspect(&fixtures_dir().join("phimoe_lm_sdpa"), &["--emit", "moe"]).stdout;
    assert_eq!(ir.matches("scoring = \"sparsemixer\"").count(), 2, "{ir}");
    assert_eq!(
        ir.matches("mask_threshold = 0.0199999995").count(),
        2,
        "{ir}"
    );
}

#[test]
fn deepseek_v3_group_limited_biased_sigmoid_routing_is_raised_with_its_shared_expert() {
    let s = summary_row("deepseekv3_block_dynamo");
    assert!(s.contains("1 MoE layer(s)"), "{s}");
    assert!(
        s.contains("sigmoid -> top-2, renormalised, score bias, best 1 of 2 groups, x2.5"),
        "{s}"
    );
    assert!(
        s.contains("1 dense, sigmoid-gated"),
        "the shared expert: {s}"
    );
    // The group top-ks were tried as routers first and raised with the layer: no reason left.
    assert!(!s.contains("not raised"), "{s}");
    let ir = inspect(
        &fixtures_dir().join("deepseekv3_block_dynamo"),
        &["--emit", "moe"],
    );
    let route = ir
        .stdout
        .lines()
        .find(|l| l.contains("\"moe.route\""))
        .expect("a moe.route");
    // The score-correction bias is the route's second operand.
    assert!(
        route.contains("n_group = 2") && route.contains("topk_group = 1"),
        "{route}"
    );
    assert!(route.contains("scoring = \"sigmoid\""), "{route}");
    assert!(
        route.contains("(tensor<16x8xf32>, tensor<8xf32>)"),
        "{route}"
    );
}

#[test]
fn a_block_that_also_returns_its_router_scores_is_raised_and_returns_them() {
    let dir = fixtures_dir().join("gptoss_block_dynamo");
    let s = summary_row("gptoss_block_dynamo");
    assert!(s.contains("1 MoE layer(s)"), "{s}");
    let work = tempfile::tempdir().unwrap();
    let (bundle, out) = (work.path().join("b"), work.path().join("o"));
    let c = ppmoe(&[
        "compile",
        dir.join("model.onnx").to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    // Both outputs against PyTorch's: the layer's (raised) and the routing scores (kept as
    // the model computes them, from the router's logits).
    let r = ppmoe(&[
        "run",
        bundle.to_str().unwrap(),
        "--input",
        dir.join("hidden_states.npy").to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--check",
        &format!("view_4={}", dir.join("view_4.npy").display()),
        "--check",
        &format!("softmax={}", dir.join("softmax.npy").display()),
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.matches(": ok").count(), 2, "{}", r.stdout);
}
