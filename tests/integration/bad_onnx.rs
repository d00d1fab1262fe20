//! Bad ONNX input: each case is a clear error naming the file (and node, op, attribute where it
//! applies), a non-zero exit, and no panic. Broken models are made from a real fixture by editing
//! its protobuf.

use crate::common::{assert_clean_failure, fixtures_dir, ppmoe};
use ppmoe_frontend::onnx_proto::{self as pb, attribute_type};
use prost::Message;
use std::path::PathBuf;

fn fixture_proto() -> pb::ModelProto {
    let bytes = std::fs::read(fixtures_dir().join("mixtral_block_dynamo/model.onnx")).unwrap();
    pb::ModelProto::decode(bytes.as_slice()).unwrap()
}

/// Writes an edited model beside a copy of the fixture's external data file, which it refers to.
fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let data = fixtures_dir().join("mixtral_block_dynamo/model.onnx.data");
    std::fs::copy(data, dir.path().join("model.onnx.data")).unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn inspect(path: &std::path::Path) -> crate::common::Output {
    ppmoe(&["inspect", path.to_str().unwrap(), "--emit", "onnx"])
}

fn softmax_node(m: &mut pb::ModelProto) -> &mut pb::NodeProto {
    let g = m.graph.as_mut().unwrap();
    g.node
        .iter_mut()
        .find(|n| n.op_type == "Softmax")
        .expect("the fixture has a Softmax")
}

#[test]
fn missing_file_is_reported_with_its_path() {
    let out = ppmoe(&["inspect", "/nonexistent/dir/model.onnx"]);
    assert_clean_failure(&out, &["/nonexistent/dir/model.onnx", "cannot read"]);
}

#[test]
fn a_file_that_is_not_onnx_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = write(&d, "notes.onnx", b"this is a text file, not a protobuf\n");
    assert_clean_failure(&inspect(&p), &["notes.onnx", "not a valid ONNX model"]);
}

#[test]
fn a_truncated_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixtures_dir().join("mixtral_block_dynamo/model.onnx")).unwrap();
    let p = write(&d, "cut.onnx", &bytes[..bytes.len() / 2]);
    assert_clean_failure(&inspect(&p), &["cut.onnx", "not a valid ONNX model"]);
}

#[test]
fn a_node_reading_an_undefined_value_is_named() {
    let d = tempfile::tempdir().unwrap();
    let mut m = fixture_proto();
    let node = softmax_node(&mut m);
    node.input[0] = "no_such_value".into();
    let name = node.name.clone();
    let p = write(&d, "undef.onnx", &m.encode_to_vec());
    assert_clean_failure(
        &inspect(&p),
        &[
            "undef.onnx",
            &format!("node \"{name}\" (Softmax)"),
            "'no_such_value' is not defined",
        ],
    );
}

#[test]
fn an_unknown_attribute_is_named_with_what_the_op_takes() {
    let d = tempfile::tempdir().unwrap();
    let mut m = fixture_proto();
    softmax_node(&mut m).attribute.push(pb::AttributeProto {
        name: "axsi".into(),
        r#type: attribute_type::INT,
        i: 1,
        ..Default::default()
    });
    let p = write(&d, "attr.onnx", &m.encode_to_vec());
    assert_clean_failure(
        &inspect(&p),
        &[
            "attr.onnx",
            "(Softmax)",
            "attribute 'axsi'",
            "unknown attribute",
            "axis",
        ],
    );
}

#[test]
fn an_attribute_of_the_wrong_kind_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut m = fixture_proto();
    let node = softmax_node(&mut m);
    node.attribute.retain(|a| a.name != "axis");
    node.attribute.push(pb::AttributeProto {
        name: "axis".into(),
        r#type: attribute_type::FLOAT,
        f: 1.0,
        ..Default::default()
    });
    let p = write(&d, "kind.onnx", &m.encode_to_vec());
    assert_clean_failure(
        &inspect(&p),
        &[
            "kind.onnx",
            "attribute 'axis'",
            "expected a int, got a float",
        ],
    );
}

#[test]
fn an_attribute_of_undefined_type_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut m = fixture_proto();
    softmax_node(&mut m).attribute.push(pb::AttributeProto {
        name: "axis".into(),
        r#type: 0,
        ..Default::default()
    });
    let p = write(&d, "undefined_attr.onnx", &m.encode_to_vec());
    assert_clean_failure(&inspect(&p), &["undefined_attr.onnx", "UNDEFINED"]);
}

#[test]
fn an_opset_outside_13_to_23_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut m = fixture_proto();
    m.opset_import.iter_mut().for_each(|o| o.version = 9);
    let p = write(&d, "old.onnx", &m.encode_to_vec());
    assert_clean_failure(&inspect(&p), &["old.onnx", "version 9", "13 to 23"]);
}

#[test]
fn missing_external_data_file_is_reported() {
    let d = tempfile::tempdir().unwrap();
    // The dynamo fixtures keep their weights in model.onnx.data (torch's default).
    let src = fixtures_dir().join("mixtral_block_external/model.onnx");
    let p = d.path().join("model.onnx");
    std::fs::copy(src, &p).unwrap();
    assert_clean_failure(&inspect(&p), &["model.onnx.data", "cannot read"]);
}

#[test]
fn other_domains_are_kept_not_dropped() {
    let d = tempfile::tempdir().unwrap();
    let mut m = fixture_proto();
    let node = softmax_node(&mut m);
    node.domain = "com.microsoft".into();
    node.op_type = "FastSoftmax".into();
    let out_name = node.output[0].clone();
    m.opset_import.push(pb::OperatorSetIdProto {
        domain: "com.microsoft".into(),
        version: 1,
    });
    // The file states the type of the op's output, so the import can type it without a rule.
    let g = m.graph.as_mut().unwrap();
    assert!(g.value_info.iter().any(|v| v.name == out_name));
    let p = write(&d, "ms.onnx", &m.encode_to_vec());
    let out = inspect(&p);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("\"onnx.FastSoftmax\""));
    assert!(out.stdout.contains("onnx.domain = \"com.microsoft\""));
}

#[test]
fn a_large_constant_node_is_elided_in_printing() {
    // TorchScript exports hold some weights in Constant nodes: turn an initializer into one.
    let d = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixtures_dir().join("mixtral_block_ts_bmm/model.onnx")).unwrap();
    let mut m = pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let weight = g.initializer.remove(0);
    let name = weight.name.clone();
    g.input.retain(|i| i.name != name);
    g.node.insert(
        0,
        pb::NodeProto {
            output: vec![name],
            name: "weight_as_constant".into(),
            op_type: "Constant".into(),
            attribute: vec![pb::AttributeProto {
                name: "value".into(),
                r#type: attribute_type::TENSOR,
                t: Some(weight),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let p = write(&d, "const.onnx", &m.encode_to_vec());
    let out = inspect(&p);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("\"onnx.Constant\""))
        .unwrap();
    assert!(line.contains("dense_resource<__elided__>"), "{line}");
}

#[test]
fn fuzz_findings_are_clean_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if !matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("onnx" | "mlir")
        ) {
            continue;
        }
        n += 1;
        let out = crate::common::ppmoe(&["inspect", p.to_str().unwrap(), "--emit", "moe"]);
        assert!(
            !out.stderr.contains("panicked") && (out.code == 0 || out.code == 1),
            "{}: exit {} {}",
            p.display(),
            out.code,
            out.stderr
        );
        if out.code == 1 {
            assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
        }
    }
    assert!(n >= 6, "{n} regression inputs");
}

/// A fused MoE whose router scores more experts than its weight stacks hold (8 against 4) is
/// refused at compile time, naming the node: it compiled, and failed only when run, on the CPU
/// at the first expert id past the stacks (on the GPU such an id reads past them).
#[test]
fn a_fused_moe_with_fewer_experts_than_its_router_is_refused() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions/fused-moe-fewer-experts-than-router.onnx");
    let out = ppmoe(&[
        "compile",
        p.to_str().unwrap(),
        "-o",
        "/nonexistent/never-written",
    ]);
    assert_clean_failure(
        &out,
        &[
            "fused-moe-fewer-experts-than-router.onnx",
            "\"moe\"",
            "router_probs score 8 experts, the expert weights hold 4",
        ],
    );
}
