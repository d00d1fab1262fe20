//! `ppmoe-pipeline-split`, over the module's MLIR ops: each tensor-parallel index's function
//! cut into pp stage functions after MoE layers, the values that cross a cut sent by the
//! stage that makes them to each later stage that reads them, and the stage functions laid
//! out on the dp x pp x tp grid, one `@rank<N>` per rank.
//!
//!   before:  func.func @rank0(...) {  ...layer 0...  %h = linalg.map ...  ...layer 1...  return %y }
//!   after:   func.func @rank0(...) {  ...layer 0...  %h = linalg.map ...
//!                                     %s = shard.send %h on @grid grid_axes = [1] destination = [1] {ppmoe.tag = 71}
//!                                     return }
//!            func.func @rank1(...) {  %e = tensor.empty()
//!                                     %h = shard.recv %e on @grid grid_axes = [1] source = [0] {ppmoe.tag = 71}
//!                                     ...layer 1...  return %y }
//!
//! Where to cut is chosen on the first function's ops (`pipeline_cuts`: the boundaries after
//! MoE layers where the fewest values are live, balancing a cost of FLOPs and weight bytes),
//! as steps, each an op that computes with the ops read as part of it; the messages are tagged
//! by the order of the values the steps make and named by their ops' locations. Each stage is
//! the function cloned with the other stages' ops erased: receives first, in the order their
//! values were made (which tags them), sends last; then the ops, weights and inputs it no longer
//! reads go. The marks only `ppmoe-rewrite` reads (`ppmoe.rank_piece`, `ppmoe.strategy`) go too.

use super::dead_ops::{erase_arguments, erase_dead, erase_op, unused};
use super::func_ops::{
    block_ops, body, drop_results, functions, module_body, operands_within, result_attributes,
    splice_function, top_level, weight_names,
};
use super::pipeline_cuts::Steps;
use crate::core::read::{
    attribute_text, dictionary_entries, handle, op_name, tensor_type, RANK_PIECE, STRATEGY,
};
use crate::distribute::Grid;
use crate::pipeline::{Compilation, PassError};
use melior::ir::attribute::{Attribute, DictionaryAttribute, StringAttribute};
use melior::ir::block::{BlockLike, BlockRef};
use melior::ir::operation::{OperationLike, OperationMutLike, OperationRef, OperationRefMut};
use melior::ir::{Identifier, Location, Operation, RegionLike, Value, ValueLike};
use melior::Context;
use std::collections::{BTreeSet, HashMap};

/// Splits every function of the sharded module into its pipeline stages and lays them out on
/// the grid the options give; returns how many rank functions it made.
pub fn split_pipeline(
    context: &Context,
    module: &OperationRef,
    c: &mut Compilation,
) -> Result<usize, PassError> {
    let grid = c.options.grid.unwrap_or(Grid::ONE);
    let originals = functions(module)?;
    if originals.len() != grid.tp {
        return Err(format!(
            "{} functions, where a sharded module has one per tp index ({})",
            originals.len(),
            grid.tp
        )
        .into());
    }
    let steps: Vec<Steps> = originals.iter().map(Steps::new).collect::<Result<_, _>>()?;
    let first = steps.first().ok_or("the module holds no func.func")?;
    let cuts = first.choose_cuts(grid.pp).map_err(PassError::Grid)?;
    let mut stages: Vec<Vec<Operation>> = Vec::new();
    for (f, steps) in originals.iter().zip(&steps) {
        let cut = CutFunction::new(f, steps, &cuts)?;
        let one: Result<Vec<Operation>, String> = (0..cut.stages)
            .map(|s| cut.stage_function(context, f, s, grid))
            .collect();
        stages.push(one?);
    }
    let module_body = module_body(module)?;
    for rank in 0..grid.size() {
        let [d, s, t] = grid.coords(rank);
        let mut f = stages[t][s].clone();
        let text = format!("array<i64: {d}, {s}, {t}>");
        let coords = Attribute::parse(context, &text).ok_or("the coordinates do not parse")?;
        f.set_attribute(
            "sym_name",
            StringAttribute::new(context, &format!("rank{rank}")).into(),
        );
        f.set_attribute("ppmoe.coords", coords);
        module_body.append_operation(f);
    }
    for f in originals {
        // SAFETY: the sharded functions are replaced by the stage functions cloned from them;
        // nothing refers to them (a module's functions do not call each other).
        unsafe { erase_op(f) };
    }
    set_grid(context, module, grid)?;
    Ok(grid.size())
}

/// The module's `shard.grid @grid` sized dp x pp x tp.
fn set_grid(context: &Context, module: &OperationRef, grid: Grid) -> Result<(), String> {
    let shape = format!("array<i64: {}, {}, {}>", grid.dp, grid.pp, grid.tp);
    let shape = Attribute::parse(context, &shape).ok_or("the grid's shape does not parse")?;
    let declared = top_level(module, "shard.grid")?;
    let g = declared
        .first()
        .ok_or("the module declares no shard.grid")?;
    // SAFETY: the pass manager hands this pass the module; no other handle writes the op.
    let mut g = unsafe { OperationRefMut::from_raw(g.to_raw()) };
    g.set_attribute("shape", shape);
    Ok(())
}

/// A value a step makes: the stage that makes it, where among the values the steps make it
/// comes (which orders and tags the messages), the name it reads back as (a function output's
/// where the return reads it), and where it is (the op's position in the function's block, and
/// its result).
#[derive(Clone)]
struct Made {
    stage: usize,
    at: usize,
    name: Option<String>,
    op: usize,
    result: usize,
}

/// A function and where its ops go: per op of its block, the stage it belongs to (none for an
/// op that only feeds others, a destination or a constant, which goes wherever it is used);
/// per value that an op of one stage makes and another reads, that stage and the stages
/// that read it.
struct CutFunction {
    stages: usize,
    stage_of: Vec<Option<usize>>,
    made: HashMap<usize, Made>,
    /// `(value, reading stage)` for every value read by a later stage than its own.
    crossing: BTreeSet<(usize, usize)>,
}

impl CutFunction {
    fn new(f: &OperationRef, steps: &Steps, cuts: &[usize]) -> Result<Self, String> {
        let ops = block_ops(body(f)?);
        let n = steps.heads.len();
        if let Some(&c) = cuts.last().filter(|&&c| c >= n) {
            return Err(format!(
                "a stage starting at step {c}, past the function's {n} steps"
            ));
        }
        let bounds: Vec<usize> = std::iter::once(0).chain(cuts.iter().copied()).collect();
        let stage_at = |step: usize| bounds.iter().rposition(|&b| step >= b).unwrap_or(0);
        let stage_of: Vec<Option<usize>> = steps.owner.iter().map(|o| o.map(stage_at)).collect();
        let outputs = output_names(f, &ops)?;
        let mut made = HashMap::new();
        let held = steps.held.iter().enumerate();
        let values = held.flat_map(|(step, vs)| vs.iter().map(move |h| (stage_at(step), h)));
        for (at, (stage, h)) in values.enumerate() {
            let name = outputs.get(&h.value).cloned().or_else(|| h.name.clone());
            let value = Made {
                stage,
                at,
                name,
                op: h.op,
                result: h.result,
            };
            made.insert(h.value, value);
        }
        let stages = bounds.len();
        let mut crossing = BTreeSet::new();
        for (k, op) in ops.iter().enumerate() {
            let reader = match (stage_of[k], op_name(op).as_str()) {
                (Some(s), _) => s,
                (None, "func.return") => stages - 1,
                (None, _) => {
                    if let Some(v) = operands_within(op).find(|v| made.contains_key(v)) {
                        let name = made[&v].name.as_deref().unwrap_or("a value");
                        return Err(format!("{} reads '{name}', which an instruction makes: the split places only instructions and what feeds them", op_name(op)));
                    }
                    continue;
                }
            };
            for v in operands_within(op) {
                if made.get(&v).is_some_and(|m| m.stage < reader) {
                    crossing.insert((v, reader));
                }
            }
        }
        Ok(CutFunction {
            stages,
            stage_of,
            made,
            crossing,
        })
    }

    /// Stage `s` as a function of its own (named and placed by the caller).
    fn stage_function<'c>(
        &self,
        context: &'c Context,
        f: &OperationRef<'c, '_>,
        s: usize,
        grid: Grid,
    ) -> Result<Operation<'c>, String> {
        // SAFETY: cloning copies the function; the copy is owned here.
        let stage = unsafe { Operation::from_raw(mlir_sys::mlirOperationClone(f.to_raw())) };
        let block = stage
            .region(0)
            .ok()
            .and_then(|r| r.first_block())
            .ok_or("a func.func without a body")?;
        let ops = block_ops(block);
        let value = |m: &Made| -> Result<Value, String> {
            let op = ops.get(m.op).ok_or("the clone lost an op")?;
            Ok(op.result(m.result).map_err(|e| e.to_string())?.into())
        };
        let mut receives: Vec<&Made> = (self.crossing.iter())
            .filter(|&&(_, reader)| reader == s)
            .map(|(v, _)| &self.made[v])
            .collect();
        receives.sort_by_key(|m| m.at);
        let mut sends: Vec<(&Made, usize)> = (self.crossing.iter())
            .map(|&(v, reader)| (&self.made[&v], reader))
            .filter(|(m, _)| m.stage == s)
            .collect();
        sends.sort_by_key(|&(m, reader)| (m.at, reader));
        let received: Vec<(Message, Location)> = receives
            .iter()
            .map(|m| {
                let attrs = format!("source = [{}] {{ppmoe.tag = {} : i64}}", m.stage, m.at);
                let origin = format!("stage {s} receives");
                let origin = Location::name(context, &origin, Location::unknown(context));
                let location = match &m.name {
                    Some(name) => Location::name(context, name, origin),
                    None => origin,
                };
                Ok(((value(m)?, attrs), location))
            })
            .collect::<Result<_, String>>()?;
        let sent: Vec<Message> = sends
            .iter()
            .map(|&(m, to)| {
                let attrs = format!("destination = [{to}] {{ppmoe.tag = {} : i64}}", m.at);
                Ok((value(m)?, attrs))
            })
            .collect::<Result<_, String>>()?;
        let origin = format!("stage {s} sends");
        let send_location = Location::name(context, &origin, Location::unknown(context));
        place_messages(context, block, grid, &received, &sent, send_location)?;
        // SAFETY: a view of the stage function owned here, used while it lives.
        let stage_ref = unsafe { OperationRef::from_raw(stage.to_raw()) };
        if s + 1 != self.stages {
            drop_results(context, &stage_ref)?;
        }
        for (k, op) in ops.iter().enumerate().rev() {
            if self.stage_of[k].is_some_and(|x| x != s) {
                // SAFETY: the op is another stage's: its results' readers in this stage read
                // the receives instead, and its readers of later stages went before it.
                unsafe { erase_op(*op) };
            }
        }
        erase_dead(block);
        keep_read_arguments(context, &stage_ref, block)?;
        for op in block_ops(block) {
            if op_name(&op) == "moe.dispatch" {
                // SAFETY: the op is in the stage function owned here.
                let mut op = unsafe { OperationRefMut::from_raw(op.to_raw()) };
                let _ = op.remove_attribute(STRATEGY);
            }
        }
        Ok(stage)
    }
}

/// The names the function's outputs read back as (`core.output`), by the handle of the value
/// its return gives for each.
fn output_names(f: &OperationRef, ops: &[OperationRef]) -> Result<HashMap<usize, String>, String> {
    let ret = ops.last().filter(|op| op_name(op) == "func.return");
    let ret = ret.ok_or("a function without its return")?;
    let attributes = result_attributes(f);
    Ok((ret.operands().zip(attributes))
        .filter_map(|(v, a)| {
            let d = DictionaryAttribute::try_from(a).ok()?;
            let name = attribute_text(d.element_by_name("core.output")?)?;
            Some((handle(v), name))
        })
        .collect())
}

/// Erases the arguments stage function `f` no longer reads: the weights it does not read, and
/// its inputs where it reads none (a stage after the first may read none: the values it needs
/// are received); the rank-piece marks dropped from what stays.
fn keep_read_arguments(context: &Context, f: &OperationRef, block: BlockRef) -> Result<(), String> {
    let weights = weight_names(f);
    let is_weight = |k: usize| weights.get(k).is_some_and(Option::is_some);
    let read = |k: usize| -> Result<bool, String> {
        Ok(!unused(block.argument(k).map_err(|e| e.to_string())?))
    };
    let mut reads_an_input = false;
    for k in 0..block.argument_count() {
        reads_an_input |= !is_weight(k) && read(k)?;
    }
    let goes = |k: usize| -> Result<bool, String> {
        Ok(if is_weight(k) {
            !read(k)?
        } else {
            !reads_an_input
        })
    };
    erase_arguments(context, f, block, goes, |a| without_rank_piece(context, a))
}

/// An argument's attributes without `ppmoe.rank_piece`.
fn without_rank_piece<'c>(context: &'c Context, a: Attribute<'c>) -> Attribute<'c> {
    let Some(entries) = dictionary_entries(a) else {
        return a;
    };
    let kept: Vec<(Identifier, Attribute)> = entries
        .into_iter()
        .filter(|(name, _)| name != RANK_PIECE)
        .map(|(name, value)| (Identifier::new(context, &name), value))
        .collect();
    DictionaryAttribute::new(context, &kept).into()
}

/// A message of a stage: the value, and the shard op's attributes (`source = [0] {...}`).
type Message<'c, 'a> = (Value<'c, 'a>, String);

/// Puts stage `block`'s receives first (each replacing the value it receives, at its
/// location) and its sends before its return. The ops are parsed from their text in a scratch
/// module (with the grid the shard ops' verifier checks them against) and moved into the block.
fn place_messages(
    context: &Context,
    block: BlockRef,
    grid: Grid,
    receives: &[(Message, Location)],
    sends: &[Message],
    send_location: Location,
) -> Result<(), String> {
    let text = messages_text(grid, receives.iter().map(|(m, _)| m), sends)?;
    let first = block.first_operation().ok_or("an empty function")?;
    let terminator = block.terminator().ok_or("a function without its return")?;
    let sent: Vec<Value> = sends.iter().map(|&(v, _)| v).collect();
    let ops = splice_function(context, &text, first, &sent)?.ops;
    for (k, ((old, _), location)) in receives.iter().enumerate() {
        // SAFETY: the ops were just moved into the stage, which the caller owns.
        let (mut empty, mut recv) = unsafe {
            (
                OperationRefMut::from_raw(ops[2 * k].to_raw()),
                OperationRefMut::from_raw(ops[2 * k + 1].to_raw()),
            )
        };
        empty.set_location(Location::unknown(context));
        recv.set_location(*location);
        let received = recv.result(0).map_err(|e| e.to_string())?;
        // SAFETY: both values live in the stage function: the receive stands for the value an
        // earlier stage makes, whose op the caller erases.
        unsafe { mlir_sys::mlirValueReplaceAllUsesOfWith(old.to_raw(), received.to_raw()) };
    }
    for send in &ops[2 * receives.len()..] {
        // SAFETY: as for the receives.
        let mut send = unsafe { OperationRefMut::from_raw(send.to_raw()) };
        send.move_before(terminator);
        send.set_location(send_location);
    }
    Ok(())
}

/// A scratch module of a function whose ops are the receives (each a `tensor.empty` and a
/// `shard.recv`) and then the sends (each of an argument of the function).
fn messages_text<'m, 'c: 'm, 'a: 'm>(
    grid: Grid,
    receives: impl Iterator<Item = &'m Message<'c, 'a>>,
    sends: &[Message],
) -> Result<String, String> {
    let type_of = |v: &Value| -> Result<String, String> {
        let (_, shape) = tensor_type(v.r#type())?;
        if shape.iter().any(Option::is_none) {
            return Err("a value of dynamic shape crosses a pipeline cut".into());
        }
        Ok(v.r#type().to_string())
    };
    let mut args = Vec::new();
    let mut lines = Vec::new();
    for (k, (v, attrs)) in receives.enumerate() {
        let t = type_of(v)?;
        lines.push(format!("    %e{k} = tensor.empty() : {t}"));
        lines.push(format!(
            "    %r{k} = shard.recv %e{k} on @grid grid_axes = [1] {attrs} : ({t}) -> {t}"
        ));
    }
    for (k, (v, attrs)) in sends.iter().enumerate() {
        let t = type_of(v)?;
        args.push(format!("%x{k}: {t}"));
        lines.push(format!(
            "    %s{k} = shard.send %x{k} on @grid grid_axes = [1] {attrs} : ({t}) -> {t}"
        ));
    }
    Ok(format!(
        "module {{\n  {}\n  func.func @messages({}) {{\n{}\n    func.return\n  }}\n}}\n",
        grid.mlir(),
        args.join(", "),
        lines.join("\n")
    ))
}
