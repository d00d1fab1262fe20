//! `ppmoe-rewrite`, over the module's MLIR ops: each MoE layer marked `ppmoe` whose tokens and
//! routing are replicated over the tensor-parallel group (`distribute::ppmoe_rewrite` decides,
//! on the program the function reads as) has its all-to-all chain replaced in place by its
//! PPMoE form; a layer that keeps the all-to-all form gets a note saying why.
//!
//!   before:  %xs = "core.token_slice"(%x) ...   %d = "moe.dispatch"(%xs, %ids_s)
//!            %a = shard.all_to_all %d ...  %e = "moe.expert_ffn"(%a', %counts, %w_in, %w_out)
//!            %b = shard.all_to_all %e' ...  %c = "moe.combine"(%b, %w_s, %ids_s)
//!            %y = shard.all_gather %c on @grid grid_axes = [2] gather_axis = 0
//!   after:   %r:3 = "moe.local_slice"(%x, %ids) {first_expert = t*E/tp, num_local_experts = E/tp}
//!            %o = "moe.expert_ffn"(%r#0, %r#1, %w_in, %w_out)
//!            %p = "moe.scatter_combine"(%o, %r#2, %w) {tokens = T}
//!            %y = shard.all_reduce %p on @grid grid_axes = [2]
//!
//! The new ops are parsed from their text (the expert FFN's attributes copied from the one it
//! replaces) in a scratch module and moved before the all-gather; the all-gather's readers read
//! the all-reduce; then the chain and what only fed it (the reshapes' shapes, the token slices)
//! are erased. The strategy marks of the layers rewritten go with their dispatches.

use super::dead_ops::erase_unused_among;
use super::func_ops::{body, functions, splice_function};
use super::program_ops::ProgramOps;
use crate::core::read::{read_grid, read_programs_marked, tensor_type, ReadProgram};
use crate::distribute::ppmoe_rewrite::{plan_layers, Plan};
use crate::distribute::Grid;
use crate::pipeline::{Compilation, PassError};
use crate::strategy::cost_model::Choice;
use melior::ir::block::BlockRef;
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::{Value, ValueLike};
use melior::Context;
use ppmoe_frontend::onnx_stage::quote;
use ppmoe_runtime::program::{BufferId, BufferKind, Program};
use std::collections::HashSet;

/// Rewrites the layers the module marks `ppmoe` (or, unmarked, that the compilation chose) into
/// the PPMoE form where their precondition holds; returns how many layers it rewrote over all
/// functions.
pub fn rewrite_layers(
    context: &Context,
    module: &OperationRef,
    c: &mut Compilation,
) -> Result<usize, PassError> {
    let read = read_programs_marked(module)?;
    let originals = functions(module)?;
    let grid = read_grid(module)?;
    let tp = originals.len();
    let choices = crate::pipeline::marked_strategies(&read)?.unwrap_or_else(|| c.choices.clone());
    let wanted = |n: usize| choices.get(n) == Some(&Choice::Ppmoe);
    c.diagnostics.kept_all_to_all.clear();
    let mut rewritten = Vec::new();
    let mut count = 0;
    for (t, (f, r)) in originals.iter().zip(&read).enumerate() {
        let (plans, notes) = plan_layers(&r.program, &wanted, &rank_pieces(r));
        if t == 0 {
            c.diagnostics.kept_all_to_all.extend(notes);
            rewritten = plans.iter().map(|(layer, _)| *layer).collect();
        }
        let at = ProgramOps::new(f, r)?;
        let block = body(f)?;
        for (_, plan) in &plans {
            rewrite_layer(context, block, &at, &r.program, plan, (t, tp), grid)?;
            count += 1;
        }
    }
    // The strategies of the layers left in the all-to-all form, in order (the dispatches that
    // still carry their marks).
    c.choices = (choices.iter().enumerate())
        .filter(|(n, _)| !rewritten.contains(n))
        .map(|(_, &choice)| choice)
        .collect();
    Ok(count)
}

/// The weights the function marks as its own pieces of a dense TP split (not replicated).
fn rank_pieces(r: &ReadProgram) -> HashSet<BufferId> {
    (r.program.buffers.iter().enumerate())
        .filter(|(_, b)| b.kind == BufferKind::Weight && r.rank_pieces.contains(&b.name))
        .map(|(k, _)| k)
        .collect()
}

/// Replaces `plan`'s layer by rank `t`'s PPMoE form of it.
fn rewrite_layer(
    context: &Context,
    block: BlockRef,
    at: &ProgramOps,
    p: &Program,
    plan: &Plan,
    (t, tp): (usize, usize),
    grid: Grid,
) -> Result<(), String> {
    let ffn = &p.instructions[plan.ffn];
    let mut operands = vec![at.value(plan.x)?, at.value(plan.ids)?, at.value(plan.w)?];
    for &b in ffn.inputs[2..].iter().flatten() {
        operands.push(at.value(b)?);
    }
    let text = local_form_text(at.op(plan.ffn)?, p, plan, (t, tp), grid, &operands)?;
    let gather = at.op(plan.gather)?;
    let spliced = splice_function(context, &text, gather, &operands)?;
    let reduced = spliced.returned.first().ok_or("no all-reduce")?;
    let gathered = gather.result(0).map_err(|e| e.to_string())?;
    // SAFETY: both values live in the function; the all-gather goes below.
    unsafe { mlir_sys::mlirValueReplaceAllUsesOfWith(gathered.to_raw(), reduced.to_raw()) };
    erase_chain(block, at, plan)
}

/// Erases the layer's replaced instructions and what only fed them; refuses a chain that
/// something outside it still reads.
fn erase_chain(block: BlockRef, at: &ProgramOps, plan: &Plan) -> Result<(), String> {
    let instructions: HashSet<usize> = (at.instruction_at.iter())
        .map(|&k| at.ops[k].to_raw().ptr as usize)
        .collect();
    let gone: Vec<OperationRef> = (plan.gone.iter())
        .map(|&i| at.op(i))
        .collect::<Result<_, _>>()?;
    let mut among: HashSet<usize> = gone.iter().map(|op| op.to_raw().ptr as usize).collect();
    // What only feeds the chain: its destinations and constants (no instructions).
    let mut pending = gone.clone();
    while let Some(op) = pending.pop() {
        for v in op.operands() {
            let Ok(result) = melior::ir::operation::OperationResult::try_from(v) else {
                continue;
            };
            let owner = result.owner();
            let key = owner.to_raw().ptr as usize;
            if !instructions.contains(&key) && among.insert(key) {
                pending.push(owner);
            }
        }
    }
    let gone_keys: HashSet<usize> = gone.iter().map(|op| op.to_raw().ptr as usize).collect();
    erase_unused_among(block, &mut among);
    if among.iter().any(|k| gone_keys.contains(k)) {
        return Err(format!(
            "layer at \"{}\": an op of its all-to-all chain is read outside it, so the chain cannot be replaced",
            plan.origin
        ));
    }
    Ok(())
}

/// The scratch module whose function takes `operands` (x, ids, the routing weights, the
/// expert weights) and returns the PPMoE form's all-reduce.
fn local_form_text(
    ffn: OperationRef,
    p: &Program,
    plan: &Plan,
    (t, tp): (usize, usize),
    grid: Grid,
    operands: &[Value],
) -> Result<String, String> {
    let el = plan.experts / tp;
    let (_, x_shape) = tensor_type(operands[0].r#type())?;
    let (Some(Some(tokens)), Some(Some(h))) = (x_shape.first(), x_shape.get(1)) else {
        return Err("the layer's tokens have no static [tokens, hidden] shape".into());
    };
    let types: Vec<String> = operands.iter().map(|v| v.r#type().to_string()).collect();
    let args: Vec<String> = (types.iter().enumerate())
        .map(|(k, ty)| format!("%a{k}: {ty}"))
        .collect();
    let rows = format!("tensor<?x{h}xf32>");
    let offsets = format!("tensor<{}xi64>", el + 1);
    let slots = "tensor<?xi64>";
    let partial = format!("tensor<{tokens}x{h}xf32>");
    let base = &p.buffers[plan.y].name;
    let origin = quote(&plan.origin);
    let named = |suffix: &str| format!("{}({origin})", quote(&format!("{base}.{suffix}")));
    let weights: Vec<String> = (3..operands.len()).map(|k| format!("%a{k}")).collect();
    let weight_types = types[3..].join(", ");
    let ffn_attributes: Vec<String> = ffn
        .attributes()
        .map(|(name, value)| {
            let name = name
                .as_string_ref()
                .as_str()
                .unwrap_or_default()
                .to_string();
            format!("{name} = {value}")
        })
        .collect();
    let lines = [
        format!(
            "%r:3 = \"moe.local_slice\"(%a0, %a1) {{first_expert = {} : i64, num_local_experts = {el} : i64}} : ({}, {}) -> ({rows}, {offsets}, {slots}) loc(fused[{}, {}, {}])",
            t * el, types[0], types[1], named("local_rows"), named("local_offsets"), named("local_slots")
        ),
        format!(
            "%o = \"moe.expert_ffn\"(%r#0, %r#1, {}) {{{}}} : ({rows}, {offsets}, {weight_types}) -> {rows} loc({})",
            weights.join(", "), ffn_attributes.join(", "), named("local_out")
        ),
        format!(
            "%p = \"moe.scatter_combine\"(%o, %r#2, %a2) {{tokens = {tokens} : i64}} : ({rows}, {slots}, {}) -> {partial} loc({})",
            types[2], named("partial")
        ),
        format!(
            "%y = \"shard.all_reduce\"(%p) {{grid = @grid, grid_axes = array<i16: 2>, reduction = #shard<partial sum>}} : ({partial}) -> {partial} loc({}({origin}))",
            quote(base)
        ),
    ];
    Ok(format!(
        "module {{\n  {}\n  func.func @layer({}) -> {partial} {{\n    {}\n    func.return %y : {partial}\n  }}\n}}\n",
        grid.mlir(),
        args.join(", "),
        lines.join("\n    ")
    ))
}
