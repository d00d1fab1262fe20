//! Size as an input: compile-time work that does not grow with the token count, a bound on what
//! compile-time evaluation may make, and half-precision weights kept as they are. (Real-size
//! models are checked by scripts/scale-check, not here: they are gigabytes.)

use crate::common::{fixtures_dir, ppmoe};
use ppmoe_frontend::onnx_proto as pb;
use prost::Message;

/// The bf16 Mixtral LM fixture, exported with a dynamic sequence and the default (sdpa)
/// attention.
const DYNAMIC_LM: &str = "mixtral_lm_bf16_sdpa";

#[test]
fn a_model_with_a_dynamic_sequence_compiles_at_a_million_tokens_with_its_layers_raised() {
    // A raise or a fold that grew with the token count would need terabytes here (the
    // batched_mm slice alone gathers [tokens x 2, 256, 64] weights): it would abort.
    let dir = fixtures_dir().join(DYNAMIC_LM);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    let out = ppmoe(&[
        "compile",
        dir.join("model.onnx").to_str().unwrap(),
        "--input-shape",
        "input_ids=1x1000000",
        "--tp",
        "2",
        "-o",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("2 MoE layers"), "{}", out.stdout);
    let manifest = std::fs::read_to_string(bundle.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("1000000"),
        "the compiled shape is in the manifest"
    );
    // Nothing token-sized became a constant: the weights files hold the model's weights alone.
    let bytes: u64 = (0..2)
        .map(|r| {
            std::fs::metadata(bundle.join(format!("rank{r}.safetensors")))
                .unwrap()
                .len()
        })
        .sum();
    assert!(bytes < 2 << 20, "{bytes} bytes of weights");
}

#[test]
fn bf16_weights_stay_bf16_from_the_onnx_file_to_the_bundle() {
    let dir = fixtures_dir().join(DYNAMIC_LM);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    let out = ppmoe(&[
        "compile",
        dir.join("model.onnx").to_str().unwrap(),
        "--input-shape",
        "input_ids=1x16",
        "-o",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let bytes = std::fs::read(bundle.join("rank0.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut experts = 0;
    for (name, view) in st.tensors() {
        if name.ends_with(".w_in") || name.ends_with(".w_out") {
            assert_eq!(view.dtype(), safetensors::Dtype::BF16, "{name}");
            experts += 1;
        }
    }
    assert_eq!(experts, 4, "w_in and w_out of two layers");
    // The file is the size of the model's bf16 weights (the routers' gates included), not twice.
    let onnx_weights = std::fs::metadata(dir.join("model.onnx.data"))
        .unwrap()
        .len();
    assert!(
        (bytes.len() as u64) < onnx_weights + onnx_weights / 10,
        "{} bytes for {onnx_weights} bytes of weights",
        bytes.len()
    );
}

#[test]
fn a_trial_over_the_evaluation_limit_leaves_the_layer_unraised_naming_the_node_and_size() {
    let dir = fixtures_dir().join("mixtral_block_dynamo");
    let model = dir.join("model.onnx");
    let out = ppmoe(&[
        "inspect",
        model.to_str().unwrap(),
        "--input-shape",
        "hidden_states=1x16x64",
        "--eval-limit",
        "0",
        "--summary",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("0 MoE layer(s)"), "{}", out.stdout);
    assert!(
        out.stdout.contains("(gather_nd) would make a")
            && out
                .stdout
                .contains("over the compile-time evaluation limit")
            && out.stdout.contains("node \""),
        "{}",
        out.stdout
    );
    // The layer stays ordinary ops, and they still give PyTorch's output.
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    let c = ppmoe(&[
        "compile",
        model.to_str().unwrap(),
        "--input-shape",
        "hidden_states=1x16x64",
        "--eval-limit",
        "0",
        "-o",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let got = crate::common::run_fixture(&dir, &bundle, &work.path().join("out"));
    let want = crate::common::reference(&dir);
    let e = crate::core_numerics::rel_err(got.as_f32().unwrap(), want.as_f32().unwrap());
    assert!(e < 1e-4, "{e:e}");
}

fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: output.into(),
        op_type: op.into(),
        ..Default::default()
    }
}

fn i64_init(name: &str, v: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: 7,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A value of one dimension (`n`, else symbolic) and ONNX element type `elem_type`.
fn value(name: &str, elem_type: i32, n: Option<i64>) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = match n {
        Some(n) => Value::DimValue(n),
        None => Value::DimParam("n".into()),
    };
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(
                pb::type_proto::TensorTypeProto {
                    elem_type,
                    shape: Some(pb::TensorShapeProto {
                        dim: vec![Dimension { value: Some(dim) }],
                    }),
                },
            )),
        }),
    }
}

#[test]
fn constants_too_large_to_fold_stay_run_time_ops() {
    // 10^11 floats from a ConstantOfShape, and a Range of 10^12: folding either would abort on
    // the allocation; each must stay an op of the program.
    let graph = pb::GraphProto {
        name: "huge_constants".into(),
        node: vec![
            node("ConstantOfShape", &["shape"], "zeros"),
            node("Add", &["zeros", "x"], "y"),
            node("Range", &["start", "limit", "delta"], "r"),
        ],
        initializer: vec![
            i64_init("shape", &[100_000, 100_000, 10]),
            i64_init("start", &[0]),
            i64_init("limit", &[1_000_000_000_000]),
            i64_init("delta", &[1]),
        ],
        input: vec![value("x", 1, Some(1))],
        output: vec![value("y", 1, None), value("r", 7, None)],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: "".into(),
            version: 17,
        }],
        graph: Some(graph),
        ..Default::default()
    };
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("model.onnx");
    std::fs::write(&p, model.encode_to_vec()).unwrap();
    let out = ppmoe(&["inspect", p.to_str().unwrap(), "--emit", "core"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("\"core.constant_of_shape\"") && out.stdout.contains("\"core.range\""),
        "{}",
        out.stdout
    );
}
