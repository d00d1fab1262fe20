//! The `core` stage as MLIR: one `func.func @rank<r>` per rank program, its inputs then its
//! weights as arguments, one op per instruction: upstream's where one expresses it exactly
//! (`upstream`: `linalg.matmul`, `arith.addf`, `math.exp`, ...), else a generic `"core.<op>"`
//! op with the op's attributes.
//!
//!   func.func @rank0(%arg0: tensor<16x64xf32> {core.input = "hidden_states"},
//!                    %arg1: tensor<64x4xf32> {core.weight = "gate.weight.const1"}) -> ... {
//!     %0 = tensor.empty() : tensor<16x4xf32>
//!     %1 = linalg.matmul ins(%arg0, %arg1 : ...) outs(%0 : tensor<16x4xf32>) -> tensor<16x4xf32>
//!     %2 = "core.softmax"(%1) {axis = 1 : i64} : (tensor<16x4xf32>) -> tensor<16x4xf32>

use crate::core::read::{RANK_PIECE, STRATEGY};
use crate::core::upstream::{instruction_form, upstream_form, upstream_lines, Upstream};
use ppmoe_frontend::onnx_stage::quote;
use ppmoe_runtime::program::{Buffer, BufferKind, Instruction, Program};
use ppmoe_runtime::DType;
use std::collections::HashSet;
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
    s.push_str(element_type(b.dtype));
    s.push('>');
    s
}

/// A buffer's element type as the IR spells it: unsigned integers as `ui<N>`, so that they
/// read back as themselves (`read::element_dtype`).
pub fn element_type(dtype: DType) -> &'static str {
    match dtype {
        DType::U8 => "ui8",
        DType::U16 => "ui16",
        DType::U32 => "ui32",
        DType::U64 => "ui64",
        d => d.mlir(),
    }
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
        // The tag pairs a send with its receive (the runtime matches messages by it).
        Op::Send { peer, tag } => a.extend([
            "grid_axes = array<i16: 1>".into(),
            format!("destination = array<i64: {}>", stage_of(*peer)),
            format!("ppmoe.tag = {tag} : i64"),
        ]),
        Op::Recv { peer, tag } => a.extend([
            "grid_axes = array<i16: 1>".into(),
            format!("source = array<i64: {}>", stage_of(*peer)),
            format!("ppmoe.tag = {tag} : i64"),
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

/// `print_programs_with`, under a module header (`header::IrHeader::to_mlir`): what makes
/// the printed module read back.
/// `marks` says what the IR carries beside the programs: per program the weights dense TP cut
/// for its rank (`ppmoe.rank_piece`), and each MoE layer's strategy on its `moe.dispatch`.
pub fn print_stage(
    programs: &[&Program],
    grid: Option<(&str, usize, usize)>,
    microbatches: usize,
    marks: &Marks,
    header: &str,
) -> String {
    let text = print_programs_with(programs, grid, microbatches, marks);
    match text.strip_prefix("module {") {
        Some(rest) => format!("module attributes {{{header}}} {{{rest}"),
        None => text,
    }
}

/// `grid`: the `shard.grid` declaration, and the (tp, pp) sizes that turn a peer's rank into
/// its pipeline stage.
pub fn print_programs(programs: &[&Program], grid: Option<(&str, usize, usize)>) -> String {
    print_programs_with(programs, grid, 1, &Marks::default())
}

/// What the printed IR marks beside the programs' own ops: per program, the weights dense TP
/// cut for its rank (`ppmoe.rank_piece` on their arguments, which `ppmoe-rewrite` must tell
/// from replicated weights); the strategy of the n-th `moe.dispatch` of each function
/// (`ppmoe.strategy`, which `ppmoe-rewrite` follows).
/// At the `kernels` stage, `beside` holds per program the text that follows its function: its
/// `gpu.module` of kernels and its plan.
#[derive(Default)]
pub struct Marks<'a> {
    pub rank_pieces: &'a [HashSet<String>],
    pub strategies: &'a [&'a str],
    pub beside: &'a [String],
}

pub fn print_programs_with(
    programs: &[&Program],
    grid: Option<(&str, usize, usize)>,
    microbatches: usize,
    marks: &Marks,
) -> String {
    let mut text = String::from("module {\n");
    let (tp, pp) = grid.map_or((1, 1), |(_, t, p)| (t, p));
    let stage_of = move |rank: usize| (rank / tp.max(1)) % pp.max(1);
    if let Some((g, _, _)) = grid {
        let _ = writeln!(text, "  {g} loc(unknown)");
    }
    for (i, p) in programs.iter().enumerate() {
        let function_marks = (marks.rank_pieces.get(i), marks.strategies);
        print_function(&mut text, p, (microbatches, function_marks), &stage_of);
        if let Some(beside) = marks.beside.get(i) {
            text.push_str(beside);
        }
    }
    text.push_str("} loc(unknown)\n");
    text
}

/// One function's marks: its rank pieces, and the strategies of its MoE layers in order.
type FunctionMarks<'a> = (Option<&'a HashSet<String>>, &'a [&'a str]);

/// One rank's program as `func.func @rank<N>`: its inputs, then its weights, as arguments.
fn print_function(
    text: &mut String,
    p: &Program,
    (microbatches, (rank_pieces, strategies)): (usize, FunctionMarks),
    stage_of: &dyn Fn(usize) -> usize,
) {
    let mut names = vec![String::new(); p.buffers.len()];
    let args = function_args(p, rank_pieces, &mut names);
    let mut body = String::new();
    let mut layer = 0;
    for (i, ins) in p.instructions.iter().enumerate() {
        let mut mark = None;
        if let ppmoe_runtime::program::Op::MoeDispatch { .. } = ins.op {
            mark = strategies
                .get(layer)
                .map(|s| format!("{STRATEGY} = {}", quote(s)));
            layer += 1;
        }
        print_instruction(&mut body, p, (i, ins), &mut names, (stage_of, mark));
    }
    let outs: Vec<String> = p.outputs.iter().map(|&o| names[o].clone()).collect();
    let out_types: Vec<String> = p
        .outputs
        .iter()
        .map(|&o| tensor_type(&p.buffers[o]))
        .collect();
    let results: Vec<String> = p
        .outputs
        .iter()
        .map(|&o| {
            format!(
                "{} {{core.output = {}}}",
                tensor_type(&p.buffers[o]),
                quote(&p.buffers[o].name)
            )
        })
        .collect();
    let [d, st, t] = p.coords;
    let _ = writeln!(
        text,
        "  func.func @rank{}({}) -> ({}) attributes {{ppmoe.coords = array<i64: {d}, {st}, {t}>, ppmoe.schedule = \"gpipe\", ppmoe.microbatches = {microbatches} : i64}} {{",
        p.rank,
        args.join(", "),
        results.join(", ")
    );
    text.push_str(&body);
    if outs.is_empty() {
        let _ = writeln!(text, "    func.return loc(unknown)");
    } else {
        let _ = writeln!(
            text,
            "    func.return {} : {} loc(unknown)",
            outs.join(", "),
            out_types.join(", ")
        );
    }
    text.push_str("  } loc(unknown)\n");
}

/// The function's arguments (the program's inputs, then its weights), each named in `names`.
fn function_args(
    p: &Program,
    rank_pieces: Option<&HashSet<String>>,
    names: &mut [String],
) -> Vec<String> {
    let mut args = Vec::new();
    for &id in &p.inputs {
        names[id] = format!("%arg{}", args.len());
        args.push(format!(
            "{}: {} {{core.input = {}}} loc(unknown)",
            names[id],
            tensor_type(&p.buffers[id]),
            quote(&p.buffers[id].name)
        ));
    }
    for (id, b) in p.buffers.iter().enumerate() {
        if b.kind == BufferKind::Weight {
            names[id] = format!("%arg{}", args.len());
            let piece = match rank_pieces {
                Some(pieces) if pieces.contains(&b.name) => format!(", {RANK_PIECE}"),
                _ => String::new(),
            };
            args.push(format!(
                "{}: {} {{core.weight = {}{piece}}} loc(unknown)",
                names[id],
                tensor_type(b),
                quote(&b.name)
            ));
        }
    }
    args
}

/// Instruction `i` in the generic form, its results named in `names`.
fn print_instruction(
    body: &mut String,
    p: &Program,
    (i, ins): (usize, &Instruction),
    names: &mut [String],
    (stage_of, mark): (&dyn Fn(usize) -> usize, Option<String>),
) {
    use ppmoe_runtime::program::Op;
    let ty = |b: usize| tensor_type(&p.buffers[b]);
    // The forms of several upstream ops (reductions, running sums, casts, arg-max, top-k,
    // layer norms).
    if let Some(printed) = super::forms::print(p, (i, ins), names, &location(p, ins, false)) {
        body.push_str(&printed.text);
        for (o, name) in printed.results {
            names[o] = name;
        }
        return;
    }
    // shard.send has a result, and shard.recv an operand, that ppmoe's runtime does not
    // need: the printed form supplies them (a tensor.empty of the received type).
    let mut extra_operand = None;
    if let Op::Recv { .. } = ins.op {
        let t = ty(ins.outputs[0]);
        let _ = writeln!(
            body,
            "    %e{i} = \"tensor.empty\"() : () -> {t} loc(unknown)"
        );
        extra_operand = Some((format!("%e{i}"), t));
    }
    let is_send = matches!(ins.op, Op::Send { .. });
    let (narrowed, narrowed_form) = narrowed(p, ins).unzip();
    let result_count = if is_send { 1 } else { ins.outputs.len() };
    let mut results: Vec<String> = (0..result_count).map(|k| format!("%v{i}_{k}")).collect();
    for (k, &o) in ins.outputs.iter().enumerate() {
        names[o] = results[k].clone();
    }
    let mut operand_types: Vec<String> = ins.inputs.iter().flatten().map(|&b| ty(b)).collect();
    let mut operand_names: Vec<String> = (ins.inputs.iter().flatten())
        .map(|&b| names[b].clone())
        .collect();
    if let Some((n, t)) = extra_operand {
        operand_names.push(n);
        operand_types.push(t);
    }
    let mut result_types: Vec<String> = if is_send {
        operand_types.clone()
    } else {
        ins.outputs.iter().map(|&o| ty(o)).collect()
    };
    if let Some(wide) = &narrowed {
        results = vec![format!("%v{i}_w")];
        result_types = vec![tensor_type(wide)];
    }
    let widened = widened_operand(p, ins);
    if let (Some((wide, _)), Some(&Some(x))) = (&widened, ins.inputs.first()) {
        // The operand's half-precision values extended to f32 (exactly), as ppmoe computes.
        let _ = writeln!(
            body,
            "    %v{i}_x = arith.extf {} {{ppmoe.widens = true}} : {} to {} loc(unknown)",
            names[x],
            ty(x),
            tensor_type(wide),
        );
        operand_names[0] = format!("%v{i}_x");
        operand_types[0] = tensor_type(wide);
    }
    let form = match (narrowed_form, widened) {
        (Some(form), _) => form,
        (None, Some((_, form))) => Some(form),
        (None, None) => instruction_form(p, ins),
    };
    if let Some(form) = form {
        let operands: Vec<(String, String)> =
            operand_names.into_iter().zip(operand_types).collect();
        let (before, line) = upstream_lines(&form, i, &results[0], &operands, &result_types[0]);
        for b in before {
            let _ = writeln!(body, "    {b} loc(unknown)");
        }
        let _ = writeln!(body, "    {line} loc({})", location(p, ins, false));
        if let Some(wide) = narrowed {
            // The matmul's or reshape's f32 result rounded once to the buffer's half precision.
            let _ = writeln!(
                body,
                "    %v{i}_0 = arith.truncf %v{i}_w {{ppmoe.narrows = true}} : {} to {} loc({})",
                tensor_type(&wide),
                ty(ins.outputs[0]),
                location(p, ins, false),
            );
        }
        return;
    }
    let mut attrs = if ins.op.dialect() == "shard" {
        shard_attributes(&ins.op, stage_of)
    } else {
        attributes(&ins.op)
    };
    attrs.extend(operand_presence(ins));
    attrs.extend(mark);
    let lhs = if results.is_empty() {
        String::new()
    } else {
        format!("{} = ", results.join(", "))
    };
    let attrs = if attrs.is_empty() {
        String::new()
    } else {
        format!(" {{{}}}", attrs.join(", "))
    };
    let _ = writeln!(
        body,
        "    {}\"{}.{}\"({}){} : ({}) -> ({}) loc({})",
        lhs,
        ins.op.dialect(),
        ins.op.name(),
        operand_names.join(", "),
        attrs,
        operand_types.join(", "),
        result_types.join(", "),
        location(p, ins, is_send),
    );
    if let Some(wide) = narrowed {
        let o = ins.outputs[0];
        let to = p.buffers[o].dtype;
        // f32 rounded to half precision as the runtime stores it (to nearest even); any other
        // narrowing of a collective's result is ppmoe's cast.
        let line = if wide.dtype == DType::F32 && matches!(to, DType::BF16 | DType::F16) {
            format!(
                "%v{i}_0 = arith.truncf %v{i}_w {{ppmoe.narrows = true}} : {} to {}",
                tensor_type(&wide),
                ty(o)
            )
        } else {
            format!(
                "%v{i}_0 = \"core.cast\"(%v{i}_w) {{{}, ppmoe.narrows = true}} : ({}) -> ({})",
                attributes(&Op::Cast { to }).join(", "),
                tensor_type(&wide),
                ty(o)
            )
        };
        let _ = writeln!(body, "    {line} loc({})", location(p, ins, false));
    }
}

/// An instruction whose result the runtime writes in another element type than the op
/// computes it in, printed as the op in that type (this buffer) followed by a cast marked
/// `ppmoe.narrows`, which `read` folds back into the instruction (with the upstream form of
/// the wide op, where it has one):
/// - a collective whose operand is wider than its result (an f32 partial narrowed into a bf16
///   output as it is gathered; the `shard` ops take one element type): an `arith.truncf` from
///   f32 to half precision, a `core.cast` otherwise;
/// - a matmul with a half-precision result that linalg takes with an f32 one (ppmoe
///   accumulates in f32 and rounds once, where a half-precision linalg result would accumulate
///   in half precision): an `arith.truncf`;
/// - a reshape of an f32 tensor into a half-precision buffer (`tensor.reshape` keeps the
///   element type): the f32 `tensor.reshape` and an `arith.truncf`, which rounds to nearest
///   even as the runtime stores it;
/// - a softmax into a half-precision buffer, which ppmoe computes in f32 and rounds once: the
///   f32 `linalg.softmax` (of its operand widened: `widened_operand`) and an `arith.truncf`.
fn narrowed(p: &Program, ins: &Instruction) -> Option<(Buffer, Option<Upstream>)> {
    use ppmoe_runtime::program::Op;
    let output = p.buffers.get(*ins.outputs.first()?)?;
    match ins.op {
        Op::AllReduce { .. } | Op::AllGather { .. } | Op::AllToAll { .. } => {
            let input = p.buffers.get((*ins.inputs.first()?)?)?;
            let wide = Buffer {
                dtype: input.dtype,
                ..output.clone()
            };
            (input.dtype != output.dtype).then_some((wide, None))
        }
        Op::MatMul | Op::Softmax { .. } | Op::ReshapeTo { .. } | Op::Unary { .. }
            if matches!(output.dtype, DType::BF16 | DType::F16) && widens_or_narrows(&ins.op) =>
        {
            // A reshape narrows only an f32 operand (`tensor.reshape` keeps the element type).
            let input = p.buffers.get((*ins.inputs.first()?)?)?;
            let is_reshape = matches!(ins.op, Op::ReshapeTo { .. });
            if is_reshape && input.dtype != DType::F32 {
                return None;
            }
            let wide = Buffer {
                dtype: DType::F32,
                ..output.clone()
            };
            let form = wide_form(p, ins, &wide)?;
            Some((wide, Some(form)))
        }
        _ => None,
    }
}

/// The upstream form of `ins` were its result `wide` (and its operand f32, where it widens
/// one: `widened_operand`).
fn wide_form(p: &Program, ins: &Instruction, wide: &Buffer) -> Option<Upstream> {
    let inputs: Option<Vec<Buffer>> = (ins.inputs.iter())
        .map(|b| b.map(|b| widening(&ins.op, &p.buffers[b])))
        .collect();
    let inputs = inputs?;
    upstream_form(&ins.op, &inputs.iter().collect::<Vec<_>>(), wide)
}

/// Whether ppmoe computes `op` of half-precision values in f32 and rounds its result once:
/// a softmax, and a function of one operand (a sigmoid, an exponential; not a negation or a
/// boolean not, which print in their own type); any other op where `narrowed` takes it.
fn widens_or_narrows(op: &ppmoe_runtime::program::Op) -> bool {
    use ppmoe_runtime::program::{Op, UnaryFn};
    !matches!(
        op,
        Op::Unary {
            f: UnaryFn::Neg | UnaryFn::Not
        }
    )
}

/// `b` as an operand of `op` is read: a softmax's or a one-operand function's half-precision
/// operand in f32 (ppmoe computes them in f32); anything else as it is.
fn widening(op: &ppmoe_runtime::program::Op, b: &Buffer) -> Buffer {
    use ppmoe_runtime::program::Op;
    let computed_in_f32 =
        matches!(op, Op::Softmax { .. } | Op::Unary { .. }) && widens_or_narrows(op);
    let widens = computed_in_f32 && matches!(b.dtype, DType::BF16 | DType::F16);
    Buffer {
        dtype: if widens { DType::F32 } else { b.dtype },
        ..b.clone()
    }
}

/// An instruction whose (first) operand ppmoe computes in f32 where it is held in half
/// precision, printed as an `arith.extf` marked `ppmoe.widens` (exact), which `read` folds
/// back into the instruction, before the op in f32 (a softmax, as `linalg.softmax`; a token
/// slice into f32, as the marked `tensor.extract_slice`): the operand in f32 and the upstream
/// form over it.
fn widened_operand(p: &Program, ins: &Instruction) -> Option<(Buffer, Upstream)> {
    let x = &p.buffers[(*ins.inputs.first()?)?];
    if let ppmoe_runtime::program::Op::TokenSlice { .. } = ins.op {
        return widened_token_slice(p, ins, x);
    }
    let wide = widening(&ins.op, x);
    if wide.dtype == x.dtype {
        return None;
    }
    let output = p.buffers.get(*ins.outputs.first()?)?;
    let form = wide_form(p, ins, &widening(&ins.op, output))?;
    Some((wide, form))
}

/// A token slice of half-precision tokens into f32 (the runtime slices the bits and widens
/// them where its result is stored): the tokens widened (exactly), then sliced in f32.
fn widened_token_slice(p: &Program, ins: &Instruction, x: &Buffer) -> Option<(Buffer, Upstream)> {
    let output = p.buffers.get(*ins.outputs.first()?)?;
    let half = matches!(x.dtype, DType::BF16 | DType::F16);
    if !half || output.dtype != DType::F32 {
        return None;
    }
    let wide = Buffer {
        dtype: DType::F32,
        ..x.clone()
    };
    let form = upstream_form(&ins.op, &[&wide], output)?;
    Some((wide, form))
}

/// An instruction's location: each result's buffer name with the source node inside
/// (`"name"("node")`, fused when there are several), or the node alone without results. It is
/// what `read` names the buffers by.
fn location(p: &Program, ins: &Instruction, is_send: bool) -> String {
    let origin = quote(&ins.origin);
    let named: Vec<String> = ins
        .outputs
        .iter()
        .map(|&o| format!("{}({origin})", quote(&p.buffers[o].name)))
        .collect();
    match named.as_slice() {
        _ if is_send => origin,
        [] => origin,
        [one] => one.clone(),
        many => format!("fused[{}]", many.join(", ")),
    }
}

/// Which optional operands an instruction leaves out: moe.experts / moe.expert_ffn by
/// segment sizes (two optional operands, the biases), any other op by the absent positions.
fn operand_presence(ins: &Instruction) -> Option<String> {
    use ppmoe_runtime::program::Op;
    if matches!(ins.op, Op::MoeExperts { .. } | Op::MoeExpertFfn { .. }) {
        let sizes: Vec<&str> = (ins.inputs.iter())
            .map(|o| if o.is_some() { "1" } else { "0" })
            .collect();
        return Some(format!(
            "operandSegmentSizes = array<i32: {}>",
            sizes.join(", ")
        ));
    }
    let absent: Vec<String> = (ins.inputs.iter().enumerate())
        .filter(|(_, o)| o.is_none())
        .map(|(k, _)| k.to_string())
        .collect();
    (!absent.is_empty()).then(|| format!("core.absent_inputs = array<i64: {}>", absent.join(", ")))
}

#[cfg(test)]
mod tests {
    use crate::core::one_instruction::{program, round_trip};
    use ppmoe_runtime::program::Op;
    use ppmoe_runtime::DType::{BF16, F16, F32};

    /// A softmax of half precision (computed in f32), into half precision or f32, and a reshape
    /// of f32 into half precision print as upstream ops in f32 between a widening `arith.extf`
    /// and a narrowing `arith.truncf`, and read back as the one instruction with its types.
    #[test]
    fn half_precision_computed_in_f32_prints_widened_and_narrowed_and_reads_back() {
        let softmax = Op::Softmax {
            axis: 1,
            log: false,
        };
        let reshape = Op::ReshapeTo { shape: vec![6] };
        let cases = [
            (
                softmax.clone(),
                (BF16, &[2, 3][..]),
                (BF16, &[2, 3][..]),
                1,
                1,
            ),
            (softmax, (F16, &[2, 3][..]), (F32, &[2, 3][..]), 1, 0),
            (reshape, (F32, &[2, 3][..]), (BF16, &[6][..]), 0, 1),
        ];
        for (op, x, y, widens, narrows) in cases {
            let (text, read) = round_trip(&program(op.clone(), x, y));
            assert_eq!(text.matches("ppmoe.widens").count(), widens, "{text}");
            assert_eq!(text.matches("ppmoe.narrows").count(), narrows, "{text}");
            assert!(!text.contains("\"core."), "{text}");
            let ins = &read.instructions;
            assert_eq!(ins.len(), 1, "{text}");
            assert_eq!(ins[0].op, op, "{text}");
            let dtype = |b: Option<usize>| b.map(|b| read.buffers[b].dtype);
            assert_eq!(dtype(ins[0].inputs[0]), Some(x.0), "{text}");
            assert_eq!(dtype(ins[0].outputs.first().copied()), Some(y.0), "{text}");
        }
    }
}
