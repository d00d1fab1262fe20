//! `ppmoe-rewrite`, over the module's MLIR ops: each MoE layer marked `ppmoe` whose tokens and
//! routing are replicated over the tensor-parallel group (`plan` decides, on the function's ops)
//! has its all-to-all chain replaced in place by its PPMoE form; a layer that keeps the
//! all-to-all form gets a note saying why.
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

mod plan;

pub(crate) use plan::marked_strategies;

use super::dead_ops::erase_unused_among;
use super::func_ops::{body, functions, splice_function};
use crate::core::read::{read_grid, tensor_type};
use crate::distribute::Grid;
use crate::pipeline::{Compilation, PassError};
use crate::strategy::cost_model::Choice;
use melior::ir::block::BlockRef;
use melior::ir::operation::{OperationLike, OperationRef, OperationResult};
use melior::ir::{Value, ValueLike};
use melior::Context;
use plan::{plan_layers, LayerPlan, Planned};
use ppmoe_frontend::onnx_stage::quote;
use std::collections::HashSet;

/// Rewrites the layers the module marks `ppmoe` (or, unmarked, that the compilation chose) into
/// the PPMoE form where their precondition holds; returns how many layers it rewrote over all
/// functions.
pub fn rewrite_layers(
    context: &Context,
    module: &OperationRef,
    c: &mut Compilation,
) -> Result<usize, PassError> {
    let originals = functions(module)?;
    let grid = read_grid(module)?;
    let tp = originals.len();
    let choices = marked_strategies(module)?.unwrap_or_else(|| c.choices.clone());
    let wanted = |n: usize| choices.get(n) == Some(&Choice::Ppmoe);
    c.diagnostics.kept_all_to_all.clear();
    let mut rewritten = Vec::new();
    let mut count = 0;
    for (t, f) in originals.iter().enumerate() {
        let Planned { layers, notes } = plan_layers(f, (t, tp), &wanted)?;
        if t == 0 {
            c.diagnostics.kept_all_to_all.extend(notes);
            rewritten = layers.iter().map(|(layer, _)| *layer).collect();
        }
        let block = body(f)?;
        for (_, plan) in &layers {
            rewrite_layer(context, block, plan, (t, tp), grid)?;
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

/// Replaces `plan`'s layer by rank `t`'s PPMoE form of it.
fn rewrite_layer(
    context: &Context,
    block: BlockRef,
    plan: &LayerPlan,
    (t, tp): (usize, usize),
    grid: Grid,
) -> Result<(), String> {
    let mut operands = vec![plan.x, plan.ids, plan.w];
    operands.extend(plan.ffn.operands().skip(2));
    let text = local_form_text(plan, (t, tp), grid, &operands)?;
    let spliced = splice_function(context, &text, plan.gather, &operands)?;
    let reduced = spliced.returned.first().ok_or("no all-reduce")?;
    let gathered = plan.gather.result(0).map_err(|e| e.to_string())?;
    // SAFETY: both values live in the function; the all-gather goes below.
    unsafe { mlir_sys::mlirValueReplaceAllUsesOfWith(gathered.to_raw(), reduced.to_raw()) };
    erase_chain(block, plan)
}

/// Erases the layer's chain (each op of it read only by the next, the all-gather by nothing
/// now), what only fed it (the reshapes' shapes) and the token slices nothing else reads.
fn erase_chain(block: BlockRef, plan: &LayerPlan) -> Result<(), String> {
    let key = |op: &OperationRef| op.to_raw().ptr as usize;
    let mut among: HashSet<usize> = plan.gone.iter().map(key).collect();
    for op in &plan.gone {
        let makers = (op.operands()).filter_map(|v| OperationResult::try_from(v).ok());
        among.extend(makers.map(|r| key(&r.owner())));
    }
    erase_unused_among(block, &mut among);
    if plan.gone[..8].iter().any(|op| among.contains(&key(op))) {
        return Err(format!(
            "layer at \"{}\": an op of its all-to-all chain is still read, so the chain cannot be replaced",
            plan.origin
        ));
    }
    Ok(())
}

/// The scratch module whose function takes `operands` (x, ids, the routing weights, the
/// expert weights) and returns the PPMoE form's all-reduce.
fn local_form_text(
    plan: &LayerPlan,
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
    let base = &plan.name;
    let origin = quote(&plan.origin);
    let named = |suffix: &str| format!("{}({origin})", quote(&format!("{base}.{suffix}")));
    let weights: Vec<String> = (3..operands.len()).map(|k| format!("%a{k}")).collect();
    let weight_types = types[3..].join(", ");
    let ffn_attributes: Vec<String> = (plan.ffn.attributes())
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
