//! The `onnx` stage: the imported graph as MLIR text, one generic `onnx.*` op per ONNX node.
//!
//!   func.func @main(%arg0: tensor<1x16x64xf32> {onnx.name = "hidden_states"},
//!                   %arg1: tensor<4x64xf32> {onnx.weight = "gate.weight"}) -> tensor<1x16x64xf32> {
//!     %0 = "onnx.Gemm"(%x, %arg1) {transB = 1 : i64} : (...) -> tensor<16x4xf32> loc("node_Gemm_3")
//!
//! Model inputs come first among the arguments, then the weights the nodes read (by name, never
//! inline). Ops of other domains (`com.microsoft.MoE`) are kept as `onnx.<Op>` with an
//! `onnx.domain` attribute. Absent optional inputs are listed in `onnx.absent_inputs`.

use crate::graph::{AttrValue, Model, Node, TensorData};
use crate::infer::Types;
use std::collections::HashMap;
use std::fmt::Write;

/// Emits the model as MLIR text at the `onnx` stage.
pub fn emit_onnx(model: &Model, types: &Types) -> Result<String, String> {
    let g = &model.graph;
    let mut names: HashMap<&str, String> = HashMap::new();
    let args = main_args(model, types, &mut names)?;
    let mut body = String::new();
    let mut fresh = 0usize;
    for node in &g.nodes {
        emit_node(&mut body, node, types, (&mut names, &mut fresh))?;
    }
    let mut outs = Vec::new();
    let mut out_types = Vec::new();
    for o in &g.outputs {
        outs.push(
            names
                .get(o.name.as_str())
                .cloned()
                .ok_or_else(|| format!("graph output '{}' is undefined", o.name))?,
        );
        out_types.push(ty_of(types, &o.name)?);
    }
    let results_sig: Vec<String> = out_types
        .iter()
        .zip(&g.outputs)
        .map(|(t, o)| format!("{t} {{onnx.name = {}}}", quote(&o.name)))
        .collect();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "module attributes {{onnx.producer = {}, onnx.opset = {} : i64}} {{",
        quote(&model.producer),
        model.default_opset()
    );
    let _ = writeln!(
        text,
        "  func.func @main({}) -> ({}) {{",
        args.join(", "),
        results_sig.join(", ")
    );
    text.push_str(&body);
    let _ = writeln!(
        text,
        "    func.return {} : {}",
        outs.join(", "),
        out_types.join(", ")
    );
    text.push_str("  }\n}\n");
    Ok(text)
}

/// @main's arguments: the graph's inputs, then its weights in first-use order (so that the
/// argument list reads like the model), each named in `names`.
fn main_args<'m>(
    model: &'m Model,
    types: &Types,
    names: &mut HashMap<&'m str, String>,
) -> Result<Vec<String>, String> {
    let g = &model.graph;
    let mut args = Vec::new();
    for (i, v) in g.inputs.iter().enumerate() {
        names.insert(&v.name, format!("%arg{i}"));
        args.push(format!(
            "%arg{i}: {} {{onnx.name = {}}}",
            ty_of(types, &v.name)?,
            quote(&v.name)
        ));
    }
    for node in &g.nodes {
        for input in &node.inputs {
            if !input.is_empty()
                && !names.contains_key(input.as_str())
                && g.initializer(input).is_some()
            {
                let i = args.len();
                names.insert(input, format!("%arg{i}"));
                args.push(format!(
                    "%arg{i}: {} {{onnx.weight = {}}}",
                    ty_of(types, input)?,
                    quote(input)
                ));
            }
        }
    }
    Ok(args)
}

/// One node as a generic `onnx.<Op>` operation, its results named `%v<fresh>` in `names`.
fn emit_node<'m>(
    body: &mut String,
    node: &'m Node,
    types: &Types,
    (names, fresh): (&mut HashMap<&'m str, String>, &mut usize),
) -> Result<(), String> {
    let mut operands = Vec::new();
    let mut operand_types = Vec::new();
    for input in node.inputs.iter().filter(|n| !n.is_empty()) {
        operands.push(
            names
                .get(input.as_str())
                .cloned()
                .ok_or_else(|| format!("value '{input}' is undefined"))?,
        );
        operand_types.push(ty_of(types, input)?);
    }
    let mut results = Vec::new();
    let mut result_types = Vec::new();
    for out in &node.outputs {
        let name = format!("%v{fresh}");
        *fresh += 1;
        result_types.push(ty_of(types, out)?);
        names.insert(out, name.clone());
        results.push(name);
    }
    let mut attrs: Vec<String> = (node.attributes.iter())
        .map(|(k, v)| format!("{} = {}", attr_name(k), attr_value(v)))
        .collect();
    if !node.domain.is_empty() {
        attrs.push(format!("onnx.domain = {}", quote(&node.domain)));
    }
    let absent = inner_absent_inputs(node);
    if !absent.is_empty() {
        attrs.push(format!(
            "onnx.absent_inputs = array<i64: {}>",
            absent.join(", ")
        ));
    }
    body.push_str("    ");
    if !results.is_empty() {
        let _ = write!(body, "{} = ", results.join(", "));
    }
    let _ = write!(body, "\"onnx.{}\"({})", node.op_type, operands.join(", "));
    if !attrs.is_empty() {
        let _ = write!(body, " {{{}}}", attrs.join(", "));
    }
    let _ = writeln!(
        body,
        " : ({}) -> ({}) loc({})",
        operand_types.join(", "),
        result_types.join(", "),
        quote(&node.name)
    );
    Ok(())
}

/// The positions of a node's absent inputs before its last present one (trailing absent
/// inputs are simply not there; only inner gaps need recording).
fn inner_absent_inputs(node: &Node) -> Vec<String> {
    let present_upto = node
        .inputs
        .iter()
        .rposition(|n| !n.is_empty())
        .map_or(0, |p| p + 1);
    (node.inputs[..present_upto].iter().enumerate())
        .filter(|(_, n)| n.is_empty())
        .map(|(i, _)| i.to_string())
        .collect()
}

fn ty_of(types: &Types, name: &str) -> Result<String, String> {
    types
        .get(name)
        .map(|t| t.mlir())
        .ok_or_else(|| format!("value '{name}' has no inferred type"))
}

/// ONNX attribute names are identifiers; anything else is quoted.
fn attr_name(k: &str) -> String {
    if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && k.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
    {
        k.to_string()
    } else {
        quote(k)
    }
}

/// An MLIR string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:02X}");
            }
        }
    }
    out.push('"');
    out
}

fn f32_attr(v: f32) -> String {
    // The bit pattern: exact, and it also carries inf and NaN.
    format!("0x{:08X} : f32", v.to_bits())
}

fn attr_value(v: &AttrValue) -> String {
    match v {
        AttrValue::Int(i) => format!("{i} : i64"),
        AttrValue::Float(f) => f32_attr(*f),
        AttrValue::String(s) => quote(s),
        AttrValue::Ints(v) if v.is_empty() => "array<i64>".into(),
        AttrValue::Ints(v) => format!(
            "array<i64: {}>",
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AttrValue::Floats(v) => format!(
            "[{}]",
            v.iter()
                .map(|f| f32_attr(*f))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AttrValue::Strings(v) => format!(
            "[{}]",
            v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
        ),
        AttrValue::Tensor(t) => dense(t),
    }
}

/// A tensor as a `dense<...>` attribute: hex bytes (exact and compact), lists for bool and empty.
pub fn dense(t: &TensorData) -> String {
    let ty = t.ty().mlir();
    if t.is_empty() {
        return format!("dense<[]> : {ty}");
    }
    if t.dtype == crate::dtype::DType::Bool {
        let v: Vec<&str> = t
            .bytes
            .iter()
            .map(|&b| if b != 0 { "true" } else { "false" })
            .collect();
        return if t.dims.is_empty() {
            format!("dense<{}> : {ty}", v[0])
        } else {
            format!("dense<{}> : {ty}", nest(&v, &t.dims))
        };
    }
    let mut hex = String::with_capacity(2 + 2 * t.bytes.len());
    hex.push_str("0x");
    for b in &t.bytes {
        let _ = write!(hex, "{b:02X}");
    }
    format!("dense<\"{hex}\"> : {ty}")
}

fn nest(v: &[&str], dims: &[i64]) -> String {
    if dims.len() <= 1 {
        return format!("[{}]", v.join(", "));
    }
    let chunk = v.len() / dims[0].max(1) as usize;
    let parts: Vec<String> = v
        .chunks(chunk.max(1))
        .map(|c| nest(c, &dims[1..]))
        .collect();
    format!("[{}]", parts.join(", "))
}
