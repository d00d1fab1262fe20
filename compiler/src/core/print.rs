//! The `core` stage as MLIR: one `func.func @rank<r>` per rank program, its inputs then its
//! weights as arguments, one generic `"core.<op>"` op per instruction with the op's attributes.
//!
//!   func.func @rank0(%arg0: tensor<16x64xf32> {core.input = "hidden_states"},
//!                    %arg1: tensor<64x4xf32> {core.weight = "gate.weight.const1"}) -> ... {
//!     %0 = "core.mat_mul"(%arg0, %arg1) : (...) -> tensor<16x4xf32>

use ppmoe_frontend::onnx_stage::quote;
use ppmoe_runtime::program::{Buffer, BufferKind, Program};
use std::fmt::Write;

pub fn tensor_type(b: &Buffer) -> String {
    let mut s = String::from("tensor<");
    for d in &b.shape {
        match d {
            Some(n) => s.push_str(&n.to_string()),
            None => s.push('?'),
        }
        s.push('x');
    }
    s.push_str(b.dtype.mlir());
    s.push('>');
    s
}

/// An op's attributes from its serde form (everything but the tag).
fn attributes(op: &ppmoe_runtime::program::Op) -> Vec<String> {
    let Ok(serde_json::Value::Object(map)) = serde_json::to_value(op) else {
        return vec![];
    };
    let mut out = Vec::new();
    for (k, v) in map {
        // The tag is the op's name; `f` is in the name too (core.add, core.reduce_sum).
        if k == "op" || k == "f" {
            continue;
        }
        let text = match &v {
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => format!("{n} : i64"),
            serde_json::Value::Number(n) => {
                let f = n.as_f64().unwrap_or(0.0);
                format!("0x{:016X} : f64", f.to_bits())
            }
            serde_json::Value::String(s) => quote(s),
            serde_json::Value::Array(a) => {
                let ints: Vec<String> = a.iter().map(|x| x.to_string()).collect();
                if ints.is_empty() {
                    "array<i64>".into()
                } else {
                    format!("array<i64: {}>", ints.join(", "))
                }
            }
            serde_json::Value::Null => continue,
            serde_json::Value::Object(_) => quote(&v.to_string()),
        };
        out.push(format!("{k} = {text}"));
    }
    out
}

/// The attributes of a communication op as the upstream `shard` dialect spells them; the grid
/// is dp x pp x tp, so the TP group is grid axis 2 and the pipeline axis 1.
fn shard_attributes(
    op: &ppmoe_runtime::program::Op,
    stage_of: &dyn Fn(usize) -> usize,
) -> Vec<String> {
    use ppmoe_runtime::program::Op;
    let mut a = vec!["grid = @grid".to_string()];
    match op {
        Op::AllReduce { .. } => a.extend([
            "grid_axes = array<i16: 2>".into(),
            "reduction = #shard<partial sum>".into(),
        ]),
        Op::AllGather { axis, .. } => a.extend([
            "grid_axes = array<i16: 2>".into(),
            format!("gather_axis = {axis} : index"),
        ]),
        Op::AllToAll {
            split_axis,
            concat_axis,
            ..
        } => a.extend([
            "grid_axes = array<i16: 2>".into(),
            format!("split_axis = {split_axis} : index"),
            format!("concat_axis = {concat_axis} : index"),
        ]),
        Op::Send { peer, .. } => a.extend([
            "grid_axes = array<i16: 1>".into(),
            format!("destination = array<i64: {}>", stage_of(*peer)),
        ]),
        Op::Recv { peer, .. } => a.extend([
            "grid_axes = array<i16: 1>".into(),
            format!("source = array<i64: {}>", stage_of(*peer)),
        ]),
        _ => {}
    }
    a
}

/// Prints programs as one MLIR module at the `core` stage (and, with a grid, the later ones:
/// one function per rank, communication as `shard` ops on `@grid`).
pub fn print_core(programs: &[&Program]) -> String {
    print_programs(programs, None)
}

/// `grid`: the `shard.grid` declaration, and the (tp, pp) sizes that turn a peer's rank into
/// its pipeline stage.
pub fn print_programs(programs: &[&Program], grid: Option<(&str, usize, usize)>) -> String {
    print_programs_with(programs, grid, 1)
}

pub fn print_programs_with(
    programs: &[&Program],
    grid: Option<(&str, usize, usize)>,
    microbatches: usize,
) -> String {
    let mut text = String::from("module {\n");
    let (tp, pp) = grid.map_or((1, 1), |(_, t, p)| (t, p));
    let stage_of = move |rank: usize| (rank / tp.max(1)) % pp.max(1);
    if let Some((g, _, _)) = grid {
        let _ = writeln!(text, "  {g}");
    }
    for p in programs {
        let mut names = vec![String::new(); p.buffers.len()];
        let mut args = Vec::new();
        for &id in &p.inputs {
            names[id] = format!("%arg{}", args.len());
            args.push(format!(
                "{}: {} {{core.input = {}}}",
                names[id],
                tensor_type(&p.buffers[id]),
                quote(&p.buffers[id].name)
            ));
        }
        for (id, b) in p.buffers.iter().enumerate() {
            if b.kind == BufferKind::Weight {
                names[id] = format!("%arg{}", args.len());
                args.push(format!(
                    "{}: {} {{core.weight = {}}}",
                    names[id],
                    tensor_type(b),
                    quote(&b.name)
                ));
            }
        }
        let mut body = String::new();
        for (i, ins) in p.instructions.iter().enumerate() {
            let is_shard = ins.op.dialect() == "shard";
            // shard.send has a result, and shard.recv an operand, that ppmoe's runtime does not
            // need: the printed form supplies them (a tensor.empty of the received type).
            let mut extra_operand = None;
            if let ppmoe_runtime::program::Op::Recv { .. } = ins.op {
                let ty = tensor_type(&p.buffers[ins.outputs[0]]);
                let _ = writeln!(body, "    %e{i} = \"tensor.empty\"() : () -> {ty}");
                extra_operand = Some((format!("%e{i}"), ty));
            }
            let result_count = if let ppmoe_runtime::program::Op::Send { .. } = ins.op {
                1
            } else {
                ins.outputs.len()
            };
            let results: Vec<String> = (0..result_count).map(|k| format!("%v{i}_{k}")).collect();
            for (k, &o) in ins.outputs.iter().enumerate() {
                names[o] = results[k].clone();
            }
            let mut operand_types: Vec<String> = ins
                .inputs
                .iter()
                .flatten()
                .map(|&id| tensor_type(&p.buffers[id]))
                .collect();
            let mut operand_names: Vec<String> = ins
                .inputs
                .iter()
                .flatten()
                .map(|&id| names[id].clone())
                .collect();
            if let Some((n, t)) = extra_operand {
                operand_names.push(n);
                operand_types.push(t);
            }
            let mut result_types: Vec<String> = ins
                .outputs
                .iter()
                .map(|&o| tensor_type(&p.buffers[o]))
                .collect();
            if let ppmoe_runtime::program::Op::Send { .. } = ins.op {
                result_types = operand_types.clone();
            }
            let mut attrs = if is_shard {
                shard_attributes(&ins.op, &stage_of)
            } else {
                attributes(&ins.op)
            };
            let optional_biases = matches!(
                ins.op,
                ppmoe_runtime::program::Op::MoeExperts { .. }
                    | ppmoe_runtime::program::Op::MoeExpertFfn { .. }
            );
            if optional_biases {
                // moe.experts / moe.expert_ffn: two optional operands (the biases), told apart
                // by segment sizes.
                let sizes: Vec<&str> = ins
                    .inputs
                    .iter()
                    .map(|o| if o.is_some() { "1" } else { "0" })
                    .collect();
                attrs.push(format!(
                    "operandSegmentSizes = array<i32: {}>",
                    sizes.join(", ")
                ));
            } else if ins.inputs.iter().any(Option::is_none) {
                let absent: Vec<String> = ins
                    .inputs
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.is_none())
                    .map(|(k, _)| k.to_string())
                    .collect();
                attrs.push(format!(
                    "core.absent_inputs = array<i64: {}>",
                    absent.join(", ")
                ));
            }
            let lhs = if results.is_empty() {
                String::new()
            } else {
                format!("{} = ", results.join(", "))
            };
            let _ = writeln!(
                body,
                "    {}\"{}.{}\"({}){} : ({}) -> ({}) loc({})",
                lhs,
                ins.op.dialect(),
                ins.op.name(),
                operand_names.join(", "),
                if attrs.is_empty() {
                    String::new()
                } else {
                    format!(" {{{}}}", attrs.join(", "))
                },
                operand_types.join(", "),
                result_types.join(", "),
                quote(&ins.origin),
            );
        }
        let outs: Vec<String> = p.outputs.iter().map(|&o| names[o].clone()).collect();
        let out_types: Vec<String> = p
            .outputs
            .iter()
            .map(|&o| tensor_type(&p.buffers[o]))
            .collect();
        let [d, st, t] = p.coords;
        let _ = writeln!(
            text,
            "  func.func @rank{}({}) -> ({}) attributes {{ppmoe.coords = array<i64: {d}, {st}, {t}>, ppmoe.schedule = \"gpipe\", ppmoe.microbatches = {microbatches} : i64}} {{",
            p.rank,
            args.join(", "),
            out_types.join(", ")
        );
        text.push_str(&body);
        if outs.is_empty() {
            let _ = writeln!(text, "    func.return");
        } else {
            let _ = writeln!(
                text,
                "    func.return {} : {}",
                outs.join(", "),
                out_types.join(", ")
            );
        }
        text.push_str("  }\n");
    }
    text.push_str("}\n");
    text
}
