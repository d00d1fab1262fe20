//! End to end on the CPU backend: each fixture compiled by `ppmoe compile` and run by
//! `ppmoe run` matches PyTorch's output (recorded when the fixture was exported) within 1e-4.

use crate::common::{fixtures_dir, ppmoe};

/// ‖out − ref‖ / ‖ref‖.
pub fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    let num: f64 = out
        .iter()
        .zip(reference)
        .map(|(a, b)| ((*a - *b) as f64).powi(2))
        .sum();
    let den: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn check_fixture(name: &str) {
    let dir = fixtures_dir().join(name);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    let out_dir = work.path().join("out");
    let mut args = vec![
        "compile".to_string(),
        dir.join("model.onnx").display().to_string(),
        "-o".into(),
        bundle.display().to_string(),
    ];
    args.extend(crate::common::shape_flags(&dir));
    let c = ppmoe(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(c.code, 0, "compile {name}: {}", c.stderr);
    // The bundle runs the raised program: every fixture has its MoE layers raised.
    let layers = crate::common::moe_layers(&dir);
    assert!(
        c.stdout.contains(&format!(" {layers} MoE layer")),
        "{name}: {}",
        c.stdout
    );
    let got = crate::common::run_fixture(&dir, &bundle, &out_dir);
    let want = crate::common::reference(&dir);
    assert_eq!(got.shape, want.shape, "{name}: output shape");
    let (g, w) = (got.as_f32().unwrap(), want.as_f32().unwrap());
    assert!(
        w.iter().any(|&v| v.abs() > 1e-3),
        "{name}: the reference is not trivial"
    );
    let e = rel_err(g, w);
    let tolerance = crate::common::torch_tolerance(&dir);
    assert!(
        e < tolerance,
        "{name}: relative error {e:e} against PyTorch"
    );
}

macro_rules! fixture_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_fixture(stringify!($name));
            }
        )*

        #[test]
        fn every_fixture_has_a_numerics_test() {
            let listed = [$(stringify!($name)),*];
            for dir in crate::common::fixtures() {
                let n = dir.file_name().unwrap().to_str().unwrap().to_string();
                assert!(listed.contains(&n.as_str()), "fixture {n} has no numerics test");
            }
        }
    };
}

mod matches_pytorch_on_cpu {
    use super::check_fixture;
    for_each_fixture!(fixture_tests);
}

#[test]
fn core_stage_has_static_shapes_except_data_dependent_counts() {
    let dir = fixtures_dir().join("mixtral_lm_dynamo");
    let out = ppmoe(&[
        "inspect",
        dir.join("model.onnx").to_str().unwrap(),
        "--emit",
        "core",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("func.func @rank0("));
    assert!(
        !out.stdout.contains('?'),
        "a dynamo export at a fixed input shape is fully static"
    );
    assert!(
        !out.stdout.contains("\"onnx."),
        "no onnx op survives the core stage"
    );
    assert!(
        !out.stdout.contains("core.gemm") && !out.stdout.contains("core.clip"),
        "Gemm and Clip are normalised away"
    );
    assert!(
        !out.stdout.contains("core.shape"),
        "shape arithmetic of static tensors is folded"
    );
    // The eager export keeps its data-dependent NonZero and the sizes that follow from it.
    let eager = ppmoe(&[
        "inspect",
        fixtures_dir()
            .join("mixtral_block_ts_eager/model.onnx")
            .to_str()
            .unwrap(),
        "--emit",
        "core",
    ]);
    assert_eq!(eager.code, 0, "{}", eager.stderr);
    assert!(eager.stdout.contains("\"core.non_zero\""));
    assert!(eager.stdout.contains("tensor<?x64xf32>"));
}

#[test]
fn an_op_outside_the_core_set_is_named_with_its_node() {
    use ppmoe_frontend::onnx_proto as pb;
    use prost::Message;
    let d = tempfile::tempdir().unwrap();
    // A dynamo export states every value's type, so the import accepts the unknown op.
    let src = fixtures_dir().join("olmoe_block_dynamo/model.onnx");
    std::fs::copy(
        fixtures_dir().join("olmoe_block_dynamo/model.onnx.data"),
        d.path().join("model.onnx.data"),
    )
    .unwrap();
    let mut m = pb::ModelProto::decode(std::fs::read(src).unwrap().as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let node = g.node.iter_mut().find(|n| n.op_type == "Sigmoid").unwrap();
    node.op_type = "HardSwish".into();
    let name = node.name.clone();
    let p = d.path().join("hs.onnx");
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let out = ppmoe(&[
        "compile",
        p.to_str().unwrap(),
        "-o",
        d.path().join("b").to_str().unwrap(),
    ]);
    crate::common::assert_clean_failure(
        &out,
        &[
            "hs.onnx",
            "HardSwish",
            &name,
            "not supported by the core stage",
        ],
    );
    assert!(!d.path().join("b").exists(), "no bundle is left behind");
}

#[test]
fn bf16_weights_stay_within_2e_2_of_pytorch_and_halve_the_weights_file() {
    let dir = fixtures_dir().join("mixtral_block_dynamo");
    let work = tempfile::tempdir().unwrap();
    let m = dir.join("model.onnx");
    for dtype in ["fp32", "bf16"] {
        let b = work.path().join(dtype);
        let c = ppmoe(&[
            "compile",
            m.to_str().unwrap(),
            "-o",
            b.to_str().unwrap(),
            "--dtype",
            dtype,
        ]);
        assert_eq!(c.code, 0, "{}", c.stderr);
    }
    let size = |d: &str| {
        std::fs::metadata(work.path().join(d).join("rank0.safetensors"))
            .unwrap()
            .len() as f64
    };
    let ratio = size("bf16") / size("fp32");
    assert!(
        ratio > 0.49 && ratio < 0.52,
        "bf16 weights file is {ratio} of fp32's"
    );
    let got = crate::common::run_fixture(&dir, &work.path().join("bf16"), &work.path().join("out"));
    let e = rel_err(
        got.as_f32().unwrap(),
        crate::common::reference(&dir).as_f32().unwrap(),
    );
    assert!(
        e > 1e-5 && e < 2e-2,
        "bf16 weights: {e:e} from PyTorch's fp32 output"
    );
}

#[test]
fn bf16_keeps_the_router_gates_fp32_and_stays_within_2e_2_of_pytorch_on_a_whole_lm() {
    let dir = fixtures_dir().join("qwen2moe_lm_dynamo");
    let work = tempfile::tempdir().unwrap();
    let b = work.path().join("bf16");
    let c = ppmoe(&[
        "compile",
        dir.join("model.onnx").to_str().unwrap(),
        "-o",
        b.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("manifest.json")).unwrap()).unwrap();
    let weights: Vec<(String, String)> = m["programs"][0]["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| {
            b["kind"] == "weight" && ["f32", "bf16"].contains(&b["dtype"].as_str().unwrap())
        })
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["dtype"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let fp32: Vec<&str> = weights
        .iter()
        .filter(|(_, d)| d == "f32")
        .map(|(n, _)| n.as_str())
        .collect();
    // The two layers' router gates (and nothing else) stay fp32.
    assert_eq!(fp32.len(), 2, "{fp32:?}");
    assert!(
        fp32.iter().all(|n| n.contains("mlp.gate.weight")),
        "{fp32:?}"
    );
    assert!(weights.len() > 20);
    let got = crate::common::run_fixture(&dir, &b, &work.path().join("out"));
    let e = rel_err(
        got.as_f32().unwrap(),
        crate::common::reference(&dir).as_f32().unwrap(),
    );
    assert!(
        e > 1e-5 && e < 2e-2,
        "bf16 weights and GEMMs: {e:e} from PyTorch's fp32 output"
    );
}

/// Every ONNX fixture of static shapes prints its `core` IR in upstream's dialects alone: not
/// one `core` op (one-hots, gathers and scatters of elements among them, and the tiles that
/// only broadcast); the TorchScript eager exports, whose NonZero makes their sizes dynamic,
/// keep theirs.
#[test]
fn the_core_ir_of_static_shapes_holds_no_core_op() {
    for dir in crate::common::fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let model = dir.join("model.onnx").display().to_string();
        let mut args = vec!["inspect".to_string(), model, "--emit".into(), "core".into()];
        args.extend(crate::common::shape_flags(&dir));
        let out = ppmoe(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        let core_ops: Vec<&str> = (out.stdout.lines())
            .filter(|l| l.contains(" = \"core."))
            .collect();
        if name.contains("_ts_eager") {
            assert!(out.stdout.contains("\"core.non_zero\""), "{name}");
        } else {
            assert!(core_ops.is_empty(), "{name}: {core_ops:#?}");
        }
    }
}
