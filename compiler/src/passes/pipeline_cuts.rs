//! Where `ppmoe-pipeline-split` cuts a function into pp stages, decided on its ops: at points
//! after MoE layers where the fewest values are live, balanced by a cost of FLOPs and weight
//! bytes. A model with L MoE layers has at most L stages.
//!
//! The function's ops are taken as steps: each op that computes (what the program the function
//! reads as holds as one instruction) is a step, with the ops read as part of it (a narrowing
//! cast after it, a gather's index expansion, a softmax's widening or a layer norm's rows
//! before it); constants, destinations and index values belong to no step (the split puts
//! them wherever they are read). A cut `c` starts a stage at step `c`:
//!
//! - **live across it**: the values made before it (the function's inputs, the steps'
//!   results) and read at or after it, or returned (the weights are no values: each stage holds
//!   its own). Read off the ops' operands, the regions' included (a body that extracts from a
//!   tensor reads it);
//! - **layer ends**: a `moe.experts`; an all-reduce of a `moe.scatter_combine` (PPMoE) or an
//!   all-gather of a `moe.combine` (the all-to-all form), either through casts. Other
//!   collectives (a dense row split's all-reduce, an all-gather of routing logits) end no
//!   layer: counted as ends, they would let a one-layer block be cut into two stages;
//! - **a boundary** after each layer: between its end and the next layer's (the last's: the
//!   function's end), the first cut where the fewest values are live (in a plain LM one, the
//!   residual stream; a decoder with a KV cache also passes on the caches' inputs and outputs);
//! - **the cost** of a step: multiply-adds of a matmul (`2 * numel(a) * cols(b)`) or of the
//!   experts (`2 * rows * weight elements / experts`), elements made by the rest, plus the
//!   bytes of the weights it reads (at 4 a element, what a stage must hold).

use super::func_ops::{block_ops, body, operands_within, weight_names};
use crate::core::read::{
    handle, instruction_op, op_name, result_name, skipped_results, tensor_type, with_absent,
    NARROWING, WIDENING,
};
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationRef, OperationResult};
use melior::ir::{Value, ValueLike};
use ppmoe_runtime::program::Op;
use std::collections::{HashMap, HashSet};

/// What an op of a function's block is to the split.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// An op that computes: a step of its own.
    Step,
    /// Read as part of the step after it (a gather's index expansion, a softmax's widening, a
    /// layer norm's or a top-k's rows).
    Before,
    /// The cast that narrows the step before it (`ppmoe.narrows`).
    After,
    /// A constant, a destination or an index value: placed wherever it is read.
    Free,
    /// The function's return.
    Return,
}

fn role(op: &OperationRef) -> Result<Role, String> {
    let name = op_name(op);
    Ok(match name.as_str() {
        "func.return" => Role::Return,
        "scf.if" => return Err("an scf.if: ppmoe-pipeline-split takes a function's own ops".into()),
        "arith.constant"
        | "tensor.empty"
        | "linalg.fill"
        | "arith.cmpi"
        | "shard.process_multi_index"
        | "shard.grid_shape" => Role::Free,
        "tensor.expand_shape" => Role::Before,
        _ if NARROWING.contains(&name.as_str()) && op.has_attribute("ppmoe.narrows") => Role::After,
        _ if name == WIDENING && op.has_attribute("ppmoe.widens") => Role::Before,
        "linalg.generic"
            if crate::core::layer_norm::is_part(op) || crate::core::top_k::is_part(op) =>
        {
            Role::Before
        }
        _ => Role::Step,
    })
}

/// A value a step makes that the runtime holds: its handle, where it is (the position among
/// the block's ops of the op whose result it is, and which result), and the name it reads
/// back as, where its op's location gives one.
#[derive(Clone)]
pub struct Held {
    pub value: usize,
    pub op: usize,
    pub result: usize,
    pub name: Option<String>,
}

/// A function's steps, and what the choice of cuts reads of them.
pub struct Steps {
    /// Per step, its op's position among the block's ops.
    pub heads: Vec<usize>,
    /// Per op of the block, the step it belongs to: none for a constant, a destination, an
    /// index value or the return, which go wherever they are read.
    pub owner: Vec<Option<usize>>,
    /// Per step, the values it makes that the runtime holds, in order.
    pub held: Vec<Vec<Held>>,
    /// Per step, its cost.
    cost: Vec<f64>,
    /// Per step, whether it ends an MoE layer.
    ends_layer: Vec<bool>,
    /// Per cut (a stage starting at step c), how many values are live across it.
    live: Vec<i64>,
}

impl Steps {
    pub fn new(f: &OperationRef) -> Result<Self, String> {
        let block = body(f)?;
        let ops = block_ops(block);
        let roles: Vec<Role> = ops.iter().map(role).collect::<Result<_, _>>()?;
        let owner = owners(&roles)?;
        let heads: Vec<usize> = (0..ops.len()).filter(|&k| roles[k] == Role::Step).collect();
        let n = heads.len();
        let weights = weight_names(f);
        let mut is_weight = HashSet::new();
        // Per value: the cut from which it exists (0 for the inputs, c + 1 for step c's).
        let mut made_from: HashMap<usize, usize> = HashMap::new();
        for k in 0..block.argument_count() {
            let arg = handle(block.argument(k).map_err(|e| e.to_string())?);
            if weights.get(k).is_some_and(Option::is_some) {
                is_weight.insert(arg);
            } else {
                made_from.insert(arg, 0);
            }
        }
        let not_operands = not_operands(&ops, &roles);
        let mut cost = Vec::with_capacity(n);
        let mut ends_layer = Vec::with_capacity(n);
        let mut all_held = Vec::with_capacity(n);
        for (step, &k) in heads.iter().enumerate() {
            let held = held(&ops, &roles, k)?;
            for v in &held {
                made_from.insert(handle(*v), step + 1);
            }
            cost.push(step_cost(&ops[k], &held, &is_weight, &not_operands)?);
            ends_layer.push(ends_layer_at(&ops[k], &ops, &roles));
            all_held.push(held.iter().map(|&v| held_at(v, &ops[k], k)).collect());
        }
        let mut last_read: HashMap<usize, usize> = HashMap::new();
        for (k, op) in ops.iter().enumerate() {
            let reader = match (roles[k], owner[k]) {
                (Role::Return, _) => n,
                (_, Some(step)) => step,
                _ => continue,
            };
            for v in operands_within(op) {
                if made_from.contains_key(&v) {
                    let last = last_read.entry(v).or_insert(0);
                    *last = (*last).max(reader);
                }
            }
        }
        let mut delta = vec![0i64; n + 2];
        for (v, &from) in &made_from {
            let last = last_read.get(v).copied().unwrap_or(0);
            if last >= from {
                delta[from] += 1;
                delta[last + 1] -= 1;
            }
        }
        let live = (delta.iter().take(n))
            .scan(0i64, |acc, d| {
                *acc += d;
                Some(*acc)
            })
            .collect();
        Ok(Steps {
            heads,
            owner,
            held: all_held,
            cost,
            ends_layer,
            live,
        })
    }

    /// The cuts where a new stage may start: one after each MoE layer, the first where the
    /// fewest values are live before the next layer ends (or the function does).
    fn boundaries(&self) -> Vec<usize> {
        let n = self.heads.len();
        let layer_ends: Vec<usize> = (1..=n).filter(|&c| self.ends_layer[c - 1]).collect();
        let mut out = Vec::new();
        for (k, &start) in layer_ends.iter().enumerate() {
            let end = layer_ends.get(k + 1).copied().unwrap_or(n);
            // (Layer ends are 1..=n, so every candidate cut is past the first step.)
            let best = (start..end)
                .filter(|&c| self.live[c] > 0)
                .min_by_key(|&c| self.live[c]);
            out.extend(best);
        }
        out
    }

    /// pp - 1 boundaries (steps that start a stage) that keep the costliest stage small:
    /// greedy on the ideal split points, each the nearest boundary still free after the last.
    pub fn choose_cuts(&self, pp: usize) -> Result<Vec<usize>, String> {
        if pp == 1 {
            return Ok(vec![]);
        }
        let layers = self.ends_layer.iter().filter(|&&end| end).count();
        if pp > layers {
            return Err(format!("{pp} pipeline stages for a model of {layers} MoE layer(s): at most one stage per layer"));
        }
        let mut free = self.boundaries();
        if free.len() + 1 < pp {
            return Err(format!(
                "{pp} pipeline stages need {} boundaries after MoE layers; the model has {}",
                pp - 1,
                free.len()
            ));
        }
        let prefix: Vec<f64> = std::iter::once(0.0)
            .chain(self.cost.iter().scan(0.0, |acc, c| {
                *acc += c;
                Some(*acc)
            }))
            .collect();
        let total = *prefix.last().unwrap_or(&0.0);
        let mut cuts: Vec<usize> = Vec::new();
        for s in 1..pp {
            let target = total * s as f64 / pp as f64;
            let (at, &best) = (free.iter().enumerate())
                .filter(|(_, &c)| cuts.last().is_none_or(|&l| c > l))
                .min_by(|(_, &x), (_, &y)| {
                    (prefix[x] - target)
                        .abs()
                        .total_cmp(&(prefix[y] - target).abs())
                })
                .ok_or("no boundary left")?;
            cuts.push(best);
            free.remove(at);
        }
        cuts.sort();
        Ok(cuts)
    }
}

/// Per op, the step it belongs to: a step its own, a narrowing cast the step before it, what
/// is read as part of a step the step after it; none for the rest.
fn owners(roles: &[Role]) -> Result<Vec<Option<usize>>, String> {
    let mut owner = vec![None; roles.len()];
    let mut step = 0;
    let mut waiting = Vec::new();
    for (k, &r) in roles.iter().enumerate() {
        match r {
            Role::Step => {
                for w in waiting.drain(..) {
                    owner[w] = Some(step);
                }
                owner[k] = Some(step);
                step += 1;
            }
            Role::Before => waiting.push(k),
            Role::After if step > 0 => owner[k] = Some(step - 1),
            Role::After => return Err("a ppmoe.narrows cast before any op it narrows".into()),
            Role::Free | Role::Return => {}
        }
    }
    match waiting.is_empty() {
        true => Ok(owner),
        false => Err("an op read as part of the op after it, with none after it".into()),
    }
}

/// The values step op `k` holds: its narrowing cast's result where one follows it, else its
/// results but those the runtime does not hold (an arg-max's best values; a send's).
fn held<'c, 'a>(
    ops: &[OperationRef<'c, 'a>],
    roles: &[Role],
    k: usize,
) -> Result<Vec<Value<'c, 'a>>, String> {
    let op = &ops[k];
    if op_name(op) == "shard.send" {
        return Ok(Vec::new());
    }
    let narrowing = ops
        .get(k + 1)
        .filter(|_| roles.get(k + 1) == Some(&Role::After));
    if let Some(cast) = narrowing.filter(|c| super::program_ops::narrows(c, op)) {
        return Ok(vec![cast.result(0).map_err(|e| e.to_string())?.into()]);
    }
    Ok(op
        .results()
        .skip(skipped_results(op))
        .map(Into::into)
        .collect())
}

/// Value `v` of step op `step` (at `k` among the block's ops) as held: a result of the step's
/// op, or of the narrowing cast after it.
fn held_at(v: Value, step: &OperationRef, k: usize) -> Held {
    let (op, result) = match OperationResult::try_from(v) {
        Ok(r) if r.owner().to_raw().ptr != step.to_raw().ptr => (k + 1, r.result_number()),
        Ok(r) => (k, r.result_number()),
        Err(_) => (k, 0),
    };
    Held {
        value: handle(v),
        op,
        result,
        name: result_name(v),
    }
}

/// The handles of the values no step's instruction reads as an operand: the constants,
/// destinations and fills, and a layer norm's or top-k's rows.
fn not_operands(ops: &[OperationRef], roles: &[Role]) -> HashSet<usize> {
    let mut none = HashSet::new();
    for (op, &r) in ops.iter().zip(roles) {
        let rows = r == Role::Before && op_name(op) == "linalg.generic";
        if r == Role::Free || rows {
            none.extend(op.results().map(handle));
        }
    }
    none
}

/// The operands of the instruction step op `op` reads as (`None` for an absent optional one),
/// with `not_operands` the values no instruction reads.
fn instruction_inputs<'c, 'a>(
    op: &OperationRef<'c, 'a>,
    read: Option<&Op>,
    not_operands: &HashSet<usize>,
) -> Result<Vec<Option<Value<'c, 'a>>>, String> {
    if let Some(captured) = read.and_then(|r| crate::core::captures::instruction_operands(op, r)) {
        return Ok(captured?.into_iter().map(Some).collect());
    }
    let present: Vec<Value> = (op.operands())
        .filter(|v| !not_operands.contains(&handle(*v)))
        .collect();
    match op_name(op).starts_with("moe.") || op_name(op).starts_with("core.") {
        true => with_absent(op, present),
        false => Ok(present.into_iter().map(Some).collect()),
    }
}

/// A value's elements (a dynamic axis counted as 1).
fn elements(v: Value) -> f64 {
    tensor_type(v.r#type()).map_or(1.0, |(_, shape)| {
        shape.iter().map(|d| d.unwrap_or(1) as f64).product()
    })
}

/// Axis `axis` of a value (a dynamic or missing one counted as 1).
fn extent(v: Option<&Option<Value>>, axis: impl Fn(usize) -> Option<usize>) -> f64 {
    let shape = v
        .copied()
        .flatten()
        .and_then(|v| tensor_type(v.r#type()).ok());
    shape.map_or(1.0, |(_, shape)| {
        axis(shape.len())
            .and_then(|a| shape.get(a).copied().flatten())
            .unwrap_or(1) as f64
    })
}

/// Step op `op`'s cost (see the module's comment); `held` its results.
fn step_cost(
    op: &OperationRef,
    held: &[Value],
    is_weight: &HashSet<usize>,
    not_operands: &HashSet<usize>,
) -> Result<f64, String> {
    let read = match op_name(op).starts_with("shard.") {
        true => None,
        false => instruction_op(op).ok(),
    };
    let inputs = instruction_inputs(op, read.as_ref(), not_operands)?;
    let numel = |k: usize| inputs.get(k).copied().flatten().map_or(0.0, elements);
    let last = |rank: usize| rank.checked_sub(1);
    let flops = match read {
        Some(Op::MatMul) => 2.0 * numel(0) * extent(inputs.get(1), last),
        Some(Op::MoeExperts { .. } | Op::MoeExpertFfn { .. }) => {
            let w: f64 = (inputs.get(3..5).into_iter().flatten().flatten())
                .map(|&v| elements(v))
                .sum();
            let rows = numel(0) / extent(inputs.first(), last);
            2.0 * rows * w / extent(inputs.get(3), |_| Some(0))
        }
        _ => held.iter().map(|&v| elements(v)).sum(),
    };
    let weight_bytes: f64 = (inputs.iter().flatten())
        .filter(|v| is_weight.contains(&handle(**v)))
        .map(|&v| elements(v) * 4.0)
        .sum();
    Ok(flops + weight_bytes)
}

/// Whether step op `op` ends an MoE layer (see the module's comment).
fn ends_layer_at(op: &OperationRef, ops: &[OperationRef], roles: &[Role]) -> bool {
    match op_name(op).as_str() {
        "moe.experts" => true,
        "shard.all_reduce" | "shard.all_gather" => {
            let made_by = op.operand(0).ok().and_then(|v| source(v, ops, roles));
            made_by.is_some_and(|m| matches!(m.as_str(), "moe.scatter_combine" | "moe.combine"))
        }
        _ => false,
    }
}

/// The name of the op that makes `v`, seen through narrowing casts and cast steps.
fn source<'c: 'a, 'a>(
    mut v: Value<'c, 'a>,
    ops: &[OperationRef],
    roles: &[Role],
) -> Option<String> {
    loop {
        let maker = OperationResult::try_from(v).ok()?.owner();
        let at = ops
            .iter()
            .position(|o| o.to_raw().ptr == maker.to_raw().ptr);
        let cast = match at.map(|k| roles[k]) {
            Some(Role::After) => true,
            Some(Role::Step) => matches!(instruction_op(&maker), Ok(Op::Cast { .. })),
            _ => false,
        };
        if !cast {
            return Some(op_name(&maker));
        }
        v = maker.operand(0).ok()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::func_ops::functions;

    /// Two layers of 4 experts over one routing: `%h` is the first layer's output plus its input
    /// (the residual), `%z` the second's plus `%h`.
    fn two_layers() -> String {
        let experts = |x: &str, w_in: &str, w_out: &str, name: &str| {
            format!("%{name} = \"moe.experts\"({x}, %r#0, %r#1, {w_in}, {w_out}) {{activation = \"swiglu\", alpha = 1.000000e+00 : f64, beta = 0.000000e+00 : f64, layout = \"linear\", operandSegmentSizes = array<i32: 1, 1, 1, 1, 1, 0, 0>}} : (tensor<16x64xf32>, tensor<16x2xf32>, tensor<16x2xi64>, tensor<4x256x64xf32>, tensor<4x64x128xf32>) -> tensor<16x64xf32>")
        };
        let add = |a: &str, b: &str, name: &str| {
            format!("%{name}_d = tensor.empty() : tensor<16x64xf32>\n    %{name} = linalg.map {{ arith.addf }} ins({a}, {b} : tensor<16x64xf32>, tensor<16x64xf32>) outs(%{name}_d : tensor<16x64xf32>) loc(\"{name}\"(\"node_{name}\"))")
        };
        let lines = [
            "%r:2 = \"moe.route\"(%arg1) {capacity = 0 : i64, n_group = 0 : i64, order = \"softmax_then_topk\", renormalize = true, routed_scaling_factor = 1.0 : f64, scoring = \"softmax\", top_k = 2 : i64, topk_group = 0 : i64} : (tensor<16x4xf32>) -> (tensor<16x2xf32>, tensor<16x2xi64>)".to_string(),
            experts("%arg0", "%arg2", "%arg3", "y0"),
            add("%y0", "%arg0", "h"),
            experts("%h", "%arg4", "%arg5", "y1"),
            add("%y1", "%h", "z"),
        ];
        let w = |k: usize, name: &str, shape: &str| {
            format!("%arg{k}: tensor<{shape}xf32> {{core.weight = \"{name}\"}}")
        };
        format!(
            "module {{\n  shard.grid @grid(shape = 1x1x1)\n  func.func @rank0(%arg0: tensor<16x64xf32> {{core.input = \"x\"}}, %arg1: tensor<16x4xf32> {{core.input = \"logits\"}}, {}, {}, {}, {}) -> tensor<16x64xf32> {{\n    {}\n    return %z : tensor<16x64xf32>\n  }}\n}}\n",
            w(2, "w_in0", "4x256x64"),
            w(3, "w_out0", "4x64x128"),
            w(4, "w_in1", "4x256x64"),
            w(5, "w_out1", "4x64x128"),
            lines.join("\n    ")
        )
    }

    /// The steps are the route, the two layers and the two sums (not the destinations); the
    /// first boundary is after the residual sum, where the routing and `%h` are live (3 values:
    /// before it, `%y0` and `%x` are too); two stages are cut there; three are refused.
    #[test]
    fn cuts_are_chosen_after_layers_where_the_fewest_values_are_live() {
        let context = ppmoe_dialect::context();
        let module = ppmoe_dialect::parse_verified(&context, &two_layers()).unwrap();
        let module = module.as_operation();
        let f = functions(&module).unwrap().remove(0);
        let steps = Steps::new(&f).unwrap();
        assert_eq!(steps.heads, vec![0, 1, 3, 4, 6]);
        let owner = [
            Some(0),
            Some(1),
            None,
            Some(2),
            Some(3),
            None,
            Some(4),
            None,
        ];
        assert_eq!(steps.owner, owner);
        // The route's two results, each layer's output (unnamed: the reader numbers them) and
        // each sum's, named by its location.
        let held: Vec<Vec<(usize, usize, Option<&str>)>> = (steps.held.iter())
            .map(|h| (h.iter().map(|h| (h.op, h.result, h.name.as_deref()))).collect())
            .collect();
        let sum = |op, name| vec![(op, 0, Some(name))];
        let route = vec![(0, 0, None), (0, 1, None)];
        let layer = |op| vec![(op, 0, None)];
        let expected = vec![route, layer(1), sum(3, "h"), layer(4), sum(6, "z")];
        assert_eq!(held, expected);
        assert_eq!(steps.ends_layer, vec![false, true, false, true, false]);
        assert_eq!(steps.live, vec![2, 3, 4, 3, 2]);
        assert_eq!(steps.boundaries(), vec![3, 4]);
        assert_eq!(steps.choose_cuts(2).unwrap(), vec![3]);
        assert_eq!(steps.choose_cuts(1).unwrap(), Vec::<usize>::new());
        let refused = steps.choose_cuts(3).unwrap_err();
        assert!(
            refused.contains("3 pipeline stages for a model of 2 MoE layer(s)"),
            "{refused}"
        );
    }
}
