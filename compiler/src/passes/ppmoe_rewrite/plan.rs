//! Which MoE layers `ppmoe-rewrite` takes, decided on a rank function's ops.
//!
//! A layer is taken where its all-to-all chain is the one `ppmoe-shard` writes and its tokens
//! and routing are replicated over the tensor-parallel group (they are after attention's
//! all-reduce):
//!
//!   %xs = tensor.extract_slice %x[..] {ppmoe.token_slice = ..}   (%is of %ids, %ws of %w alike)
//!   %d = "moe.dispatch"(%xs, %is) -> shard.all_to_all -> reshape -> "moe.expert_ffn"
//!      -> reshape -> shard.all_to_all -> "moe.combine"(_, %ws, %is) -> shard.all_gather
//!
//! each op of the chain read only by the next, the three slices this rank's (axis 0, index t
//! of tp parts). The routing is then computed on every rank from the same replicated logits, so
//! every rank agrees on which rows each expert takes, and the PPMoE form is exact.

use crate::core::read::{
    attribute_text, handle, instruction_op, location_names, op_name, users, RANK_PIECE, STRATEGY,
    WIDENING,
};
use crate::passes::func_ops::{argument_attributes, block_ops, body, functions, value_name};
use crate::strategy::cost_model::Choice;
use melior::ir::attribute::{DictionaryAttribute, IntegerAttribute};
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationRef, OperationResult};
use melior::ir::Value;
use ppmoe_runtime::program::Op;
use std::collections::HashSet;

/// The ops that reshape a tensor in the chain (`core.reshape_to` as IR written at `moe` has it).
const RESHAPES: &[&str] = &["tensor.reshape", "core.reshape_to"];

/// One layer to rewrite: what its PPMoE form reads, the ops it replaces, and its names.
pub struct LayerPlan<'c, 'a> {
    /// The layer's tokens, routing ids and routing weights, whole (what its token slices read).
    pub x: Value<'c, 'a>,
    pub ids: Value<'c, 'a>,
    pub w: Value<'c, 'a>,
    pub ffn: OperationRef<'c, 'a>,
    /// The `shard.all_gather` whose result the PPMoE form makes.
    pub gather: OperationRef<'c, 'a>,
    /// The chain from the dispatch to the all-gather, in order, then its three token slices.
    pub gone: Vec<OperationRef<'c, 'a>>,
    pub experts: usize,
    /// The source node of the layer's dispatch.
    pub origin: String,
    /// The name of the all-gather's result, which the PPMoE form's values are named after.
    pub name: String,
}

/// What `plan_layers` found in a function.
pub struct Planned<'c, 'a> {
    /// The layers to rewrite, with their ordinals among the function's MoE layers.
    pub layers: Vec<(usize, LayerPlan<'c, 'a>)>,
    /// Why each other layer picked keeps its all-to-all form.
    pub notes: Vec<String>,
}

/// The layers of `f` (tp index `t` of `tp`) that `wanted` picks by ordinal and whose all-to-all
/// form can become PPMoE's; a note for each of the others it picks.
pub fn plan_layers<'c, 'a>(
    f: &OperationRef<'c, 'a>,
    (t, tp): (usize, usize),
    wanted: &dyn Fn(usize) -> bool,
) -> Result<Planned<'c, 'a>, String> {
    let ops = block_ops(body(f)?);
    let rep = replicated(f, &ops)?;
    let (mut layers, mut notes) = (Vec::new(), Vec::new());
    let dispatches = ops.iter().filter(|op| op_name(op) == "moe.dispatch");
    for (layer, dispatch) in dispatches.enumerate() {
        if !wanted(layer) {
            continue;
        }
        let origin = location_names(dispatch.location(), 1).1;
        let Some(plan) = chain(*dispatch, (t, tp), &origin) else {
            notes.push(format!("layer at \"{origin}\": kept all-to-all: its dispatch is not in the form the sharded stage writes"));
            continue;
        };
        let whole = [plan.x, plan.ids, plan.w];
        if whole.iter().all(|v| rep.contains(&handle(*v))) {
            layers.push((layer, plan));
        } else {
            notes.push(format!(
                "layer at \"{origin}\": kept all-to-all: the tokens or the routing at its input ('{}') are not replicated over the TP group",
                value_name(f, plan.x)
            ));
        }
    }
    Ok(Planned { layers, notes })
}

/// The layer whose `moe.dispatch` is `dispatch`, if its chain is the sharded stage's.
fn chain<'c, 'a>(
    dispatch: OperationRef<'c, 'a>,
    (t, tp): (usize, usize),
    origin: &str,
) -> Option<LayerPlan<'c, 'a>> {
    let a1 = next(dispatch, &["shard.all_to_all"])?;
    let r1 = next(a1, RESHAPES)?;
    let ffn = next(r1, &["moe.expert_ffn"])?;
    let r2 = next(ffn, RESHAPES)?;
    let a2 = next(r2, &["shard.all_to_all"])?;
    let combine = next(a2, &["moe.combine"])?;
    let gather = next(combine, &["shard.all_gather"])?;
    let (sx, x) = own_slice(dispatch.operand(0).ok()?, (t, tp))?;
    let (si, ids) = own_slice(dispatch.operand(1).ok()?, (t, tp))?;
    let (sw, w) = own_slice(combine.operand(1).ok()?, (t, tp))?;
    // Half-precision tokens are widened for their slice (`ppmoe.widens`): the layer reads
    // them as they are held, and the widening goes with the slice where nothing else reads it.
    let (widened_x, x) = through_widening(x);
    // The combine reads the routing the dispatch sent by.
    let same_ids = handle(combine.operand(2).ok()?) == handle(dispatch.operand(1).ok()?);
    let experts = integer(&dispatch, "num_experts")?;
    let name = location_names(gather.location(), 1).0.pop()?;
    same_ids.then(|| LayerPlan {
        x,
        ids,
        w,
        ffn,
        gather,
        gone: [dispatch, a1, r1, ffn, r2, a2, combine, gather, sx, si, sw]
            .into_iter()
            .chain(widened_x)
            .collect(),
        experts,
        origin: origin.to_string(),
        name,
    })
}

/// The one op that reads `op`'s one result, as its first operand, if it is one of `names`.
fn next<'c, 'a>(op: OperationRef<'c, 'a>, names: &[&str]) -> Option<OperationRef<'c, 'a>> {
    if op.result_count() != 1 {
        return None;
    }
    let result: Value = op.result(0).ok()?.into();
    let [reader] = users(result).try_into().ok()?;
    let first = reader.operand(0).ok().map(handle);
    (names.contains(&op_name(&reader).as_str()) && first == Some(handle(result))).then_some(reader)
}

/// The token slice (`core.token_slice`, or a `tensor.extract_slice` marked
/// `ppmoe.token_slice`) that makes `v` and what it slices, if it is tp index `t`'s slice of `tp`
/// parts along the tokens (axis 0).
fn own_slice<'c, 'a>(
    v: Value<'c, 'a>,
    (t, tp): (usize, usize),
) -> Option<(OperationRef<'c, 'a>, Value<'c, 'a>)> {
    let slice = OperationResult::try_from(v).ok()?.owner();
    let own = Op::TokenSlice {
        axis: 0,
        index: t,
        parts: tp,
    };
    (is_token_slice(&slice) && instruction_op(&slice).ok()? == own).then_some(())?;
    Some((slice, slice.operand(0).ok()?))
}

fn integer(op: &OperationRef, name: &str) -> Option<usize> {
    let a = IntegerAttribute::try_from(op.attribute(name).ok()?).ok()?;
    usize::try_from(a.value()).ok()
}

/// The half-precision value `v` widens, and the widening, where `v` is an `arith.extf` marked
/// `ppmoe.widens` (a token slice's operand); else `v` itself.
fn through_widening<'c, 'a>(v: Value<'c, 'a>) -> (Option<OperationRef<'c, 'a>>, Value<'c, 'a>) {
    let maker = OperationResult::try_from(v).ok().map(|r| r.owner());
    let widening = maker.filter(|m| op_name(m) == WIDENING && m.has_attribute("ppmoe.widens"));
    match widening.and_then(|w| Some((w, w.operand(0).ok()?))) {
        Some((w, half)) => (Some(w), half),
        None => (None, v),
    }
}

/// Whether `op` is a token slice: a `core.token_slice`, or the `tensor.extract_slice` one
/// prints as (`ppmoe.token_slice`).
fn is_token_slice(op: &OperationRef) -> bool {
    match op_name(op).as_str() {
        "core.token_slice" => true,
        "tensor.extract_slice" => op.has_attribute(crate::core::token_slice::MARK),
        _ => false,
    }
}

/// The values of `f` (by handle) that are the same on every rank of the group: its inputs,
/// its weights but the experts' (split over the group) and the rank's pieces of a dense split,
/// and what is computed from them alone; token slices, expert outputs, all-to-alls and
/// receives are not, all-gathers and all-reduces are again.
fn replicated(f: &OperationRef, ops: &[OperationRef]) -> Result<HashSet<usize>, String> {
    let experts_weights: HashSet<usize> = (ops.iter())
        .filter(|op| op_name(op) == "moe.expert_ffn")
        .flat_map(|op| op.operands().skip(2).map(handle).collect::<Vec<_>>())
        .collect();
    let block = body(f)?;
    let pieces = rank_pieces(f);
    let mut rep = HashSet::new();
    for k in 0..block.argument_count() {
        let arg = handle(block.argument(k).map_err(|e| e.to_string())?);
        if !pieces.contains(&k) && !experts_weights.contains(&arg) {
            rep.insert(arg);
        }
    }
    for op in ops {
        let makes_replicated = match op_name(op).as_str() {
            "shard.all_gather" | "shard.all_reduce" => true,
            _ if is_token_slice(op) => false,
            "moe.expert_ffn" | "shard.all_to_all" | "shard.recv" => false,
            _ => op.operands().all(|v| rep.contains(&handle(v))),
        };
        if makes_replicated {
            rep.extend(op.results().map(handle));
        }
    }
    Ok(rep)
}

/// The arguments (by position) that `f` marks as its own pieces of a dense TP split.
fn rank_pieces(f: &OperationRef) -> HashSet<usize> {
    (argument_attributes(f).into_iter().enumerate())
        .filter(|(_, a)| {
            DictionaryAttribute::try_from(*a).is_ok_and(|d| d.element_by_name(RANK_PIECE).is_some())
        })
        .map(|(k, _)| k)
        .collect()
}

/// The strategies the module marks on its MoE layers' `moe.dispatch` ops (`ppmoe.strategy`),
/// which `ppmoe-rewrite` follows: the same in every function, on every dispatch or none (then
/// the strategies the source's lowering chose stand).
pub(crate) fn marked_strategies(module: &OperationRef) -> Result<Option<Vec<Choice>>, String> {
    let mut first: Option<(String, Vec<String>)> = None;
    for f in functions(module)? {
        let name = f.attribute("sym_name").ok().and_then(attribute_text);
        let name = name.unwrap_or_default();
        let dispatches: Vec<OperationRef> = (block_ops(body(&f)?).into_iter())
            .filter(|op| op_name(op) == "moe.dispatch")
            .collect();
        let mut marks = Vec::new();
        for d in &dispatches {
            if let Ok(mark) = d.attribute(STRATEGY) {
                marks.push(attribute_text(mark).ok_or("ppmoe.strategy is not a string")?);
            }
        }
        if !marks.is_empty() && marks.len() != dispatches.len() {
            return Err(format!(
                "@{name}: {} of its {} moe.dispatch ops carry {STRATEGY}; every one or none",
                marks.len(),
                dispatches.len()
            ));
        }
        match &first {
            None => first = Some((name, marks)),
            Some((first_name, first_marks)) if *first_marks != marks => {
                return Err(format!(
                    "@{name}: its {STRATEGY} marks differ from @{first_name}'s; a layer has one strategy on every rank"
                ))
            }
            Some(_) => {}
        }
    }
    let Some((_, marks)) = first.filter(|(_, marks)| !marks.is_empty()) else {
        return Ok(None);
    };
    marks
        .iter()
        .map(|m| choice(m))
        .collect::<Result<_, _>>()
        .map(Some)
}

fn choice(name: &str) -> Result<Choice, String> {
    match name {
        "ppmoe" => Ok(Choice::Ppmoe),
        "alltoall" => Ok(Choice::AllToAll),
        other => Err(format!(
            "{STRATEGY} = \"{other}\": the strategies ppmoe-rewrite takes are ppmoe and alltoall"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rank 0 of 2's all-to-all form of one layer of 4 experts, over tokens `x` (replicated,
    /// an input, unless `split`: then rank 0's half of a wider input) and replicated routing;
    /// `extra`: ops put before the return.
    fn module(split: bool, slice_index: usize, extra: &str) -> String {
        let (x_arg, x) = if split {
            ("tensor<32x64xf32>", "%x = \"core.token_slice\"(%arg0) {axis = 0 : i64, index = 0 : i64, parts = 2 : i64} : (tensor<32x64xf32>) -> tensor<16x64xf32> loc(\"half\"(\"node_half\"))")
        } else {
            ("tensor<16x64xf32>", "%x = tensor.reshape %arg0(%shape) : (tensor<16x64xf32>, tensor<2xi64>) -> tensor<16x64xf32> loc(\"x\"(\"node_x\"))")
        };
        // The rank's half of 16 rows of `cols` columns of `element`, as ppmoe-shard writes it.
        let slice = |v: &str, cols: usize, element: &str, name: &str| {
            let offset = slice_index * 8;
            format!("%{name} = tensor.extract_slice {v}[{offset}, 0] [8, {cols}] [1, 1] {{ppmoe.token_slice = array<i64: 0, 2>}} : tensor<16x{cols}x{element}> to tensor<8x{cols}x{element}> loc(\"{name}\"(\"node_y\"))")
        };
        let lines = [
            "%shape = arith.constant dense<[16, 64]> : tensor<2xi64>".to_string(),
            x.to_string(),
            "%r:2 = \"moe.route\"(%arg1) {capacity = 0 : i64, n_group = 0 : i64, order = \"softmax_then_topk\", renormalize = true, routed_scaling_factor = 1.0 : f64, scoring = \"softmax\", top_k = 2 : i64, topk_group = 0 : i64} : (tensor<16x4xf32>) -> (tensor<16x2xf32>, tensor<16x2xi64>)".into(),
            slice("%x", 64, "f32", "xs"),
            slice("%r#0", 2, "f32", "ws"),
            slice("%r#1", 2, "i64", "is"),
            "%d = \"moe.dispatch\"(%xs, %is) {capacity = 16 : i64, num_experts = 4 : i64} : (tensor<8x64xf32>, tensor<8x2xi64>) -> tensor<4x16x64xf32> loc(\"y.buckets\"(\"node_y\"))".into(),
            "%a = shard.all_to_all %d on @grid grid_axes = [2] split_axis = 0 concat_axis = 1 : tensor<4x16x64xf32> -> tensor<2x32x64xf32>".into(),
            "%rows_shape = arith.constant dense<64> : tensor<2xi64>".into(),
            "%rows = tensor.reshape %a(%rows_shape) : (tensor<2x32x64xf32>, tensor<2xi64>) -> tensor<64x64xf32>".into(),
            "%e = \"moe.expert_ffn\"(%rows, %arg4, %arg2, %arg3) {activation = \"swiglu\", alpha = 1.0 : f64, beta = 0.0 : f64, layout = \"linear\", operandSegmentSizes = array<i32: 1, 1, 1, 1, 0, 0>} : (tensor<64x64xf32>, tensor<3xi64>, tensor<2x256x64xf32>, tensor<2x64x128xf32>) -> tensor<64x64xf32>".into(),
            "%back_shape = arith.constant dense<[2, 32, 64]> : tensor<3xi64>".into(),
            "%back = tensor.reshape %e(%back_shape) : (tensor<64x64xf32>, tensor<3xi64>) -> tensor<2x32x64xf32>".into(),
            "%b = shard.all_to_all %back on @grid grid_axes = [2] split_axis = 1 concat_axis = 0 : tensor<2x32x64xf32> -> tensor<4x16x64xf32>".into(),
            "%c = \"moe.combine\"(%b, %ws, %is) {capacity = 16 : i64} : (tensor<4x16x64xf32>, tensor<8x2xf32>, tensor<8x2xi64>) -> tensor<8x64xf32>".into(),
            "%y = shard.all_gather %c on @grid grid_axes = [2] gather_axis = 0 : tensor<8x64xf32> -> tensor<16x64xf32> loc(\"y\"(\"node_y\"))".into(),
            extra.to_string(),
        ];
        format!(
            "module {{\n  shard.grid @grid(shape = 1x1x2)\n  func.func @rank0(%arg0: {x_arg} {{core.input = \"x\"}}, %arg1: tensor<16x4xf32> {{core.input = \"logits\"}}, %arg2: tensor<2x256x64xf32> {{core.weight = \"w_in\"}}, %arg3: tensor<2x64x128xf32> {{core.weight = \"w_out\"}}, %arg4: tensor<3xi64> {{core.weight = \"offsets\"}}) -> tensor<16x64xf32> {{\n    {}\n    return %y : tensor<16x64xf32>\n  }}\n}}\n",
            lines.join("\n    ")
        )
    }

    /// A layer planned: its ordinal, how many ops go, its expert count and its name.
    type Summary = (usize, usize, usize, String);

    /// The layers planned and the notes, for rank 0 of 2 of `text`.
    fn planned(text: &str) -> (Vec<Summary>, Vec<String>) {
        let context = ppmoe_dialect::context();
        let module = ppmoe_dialect::parse_verified(&context, text).unwrap();
        let module = module.as_operation();
        let f = functions(&module).unwrap().remove(0);
        let Planned { layers, notes } = plan_layers(&f, (0, 2), &|_| true).unwrap();
        let plans = (layers.iter())
            .map(|(n, p)| (*n, p.gone.len(), p.experts, p.name.clone()))
            .collect();
        (plans, notes)
    }

    #[test]
    fn a_layer_over_replicated_tokens_is_planned_with_its_whole_chain() {
        let (plans, notes) = planned(&module(false, 0, ""));
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(plans, vec![(0, 11, 4, "y".to_string())]);
    }

    #[test]
    fn a_layer_over_split_tokens_keeps_all_to_all_and_says_why() {
        let (plans, notes) = planned(&module(true, 0, ""));
        assert!(plans.is_empty());
        assert_eq!(notes, vec!["layer at \"node_y\": kept all-to-all: the tokens or the routing at its input ('half') are not replicated over the TP group"]);
    }

    #[test]
    fn a_chain_read_elsewhere_or_sliced_for_another_rank_is_not_the_sharded_form() {
        let not_ours = "layer at \"node_y\": kept all-to-all: its dispatch is not in the form the sharded stage writes";
        // The experts' output read besides the chain.
        let read_elsewhere = "%z = \"shard.all_reduce\"(%e) {grid = @grid, grid_axes = array<i16: 2>, reduction = #shard<partial sum>} : (tensor<64x64xf32>) -> tensor<64x64xf32>";
        for text in [module(false, 1, ""), module(false, 0, read_elsewhere)] {
            let (plans, notes) = planned(&text);
            assert!(plans.is_empty());
            assert_eq!(notes, vec![not_ours]);
        }
    }

    #[test]
    fn strategy_marks_must_be_on_every_dispatch_or_none() {
        let context = ppmoe_dialect::context();
        let text = module(false, 0, "").replace(
            "{capacity = 16 : i64, num_experts",
            "{capacity = 16 : i64, ppmoe.strategy = \"alltoall\", num_experts",
        );
        let marked = ppmoe_dialect::parse_verified(&context, &text).unwrap();
        let choices = marked_strategies(&marked.as_operation()).unwrap();
        assert_eq!(choices, Some(vec![Choice::AllToAll]));
        let odd = ppmoe_dialect::parse_verified(&context, &text.replace("alltoall", "fast"));
        let err = marked_strategies(&odd.unwrap().as_operation()).unwrap_err();
        assert!(err.contains("ppmoe.strategy = \"fast\""), "{err}");
        let plain = ppmoe_dialect::parse_verified(&context, &module(false, 0, "")).unwrap();
        assert_eq!(marked_strategies(&plain.as_operation()).unwrap(), None);
    }
}
