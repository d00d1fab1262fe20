//! Dense tensor parallelism by MLIR's own `sharding-propagation` and `shard-partition`, over
//! the module's own ops. Upstream's propagation refuses a function holding an op without the
//! sharding interface (every `core` and `moe` op, `tensor.reshape`), so each region that the
//! interface covers (`upstream_regions`) is copied into a function of its own, its weights
//! annotated with ppmoe's split (by columns, the last by rows) and its result replicated:
//!
//!   func.func @region(%x: tensor<16x64xf32>, %w_gate: .., %w_up: .., %w_down: ..) -> .. {
//!     %cols = shard.sharding @grid split_axes = [[], [2]] : !shard.sharding
//!     %gate = shard.shard %w_gate to %cols annotate_for_users : tensor<64x128xf32>
//!     ...  (the region's ops, copied)  ...
//!     %whole = shard.sharding @grid split_axes = [[]] : !shard.sharding
//!     %y = shard.shard %down to %whole : tensor<16x64xf32>
//!
//! Upstream propagates the split, partitions the function (each weight argument now a piece)
//! and places the collective (one `shard.all_reduce` of the partial sums). Each rank's function
//! then takes the partitioned ops in the region's place, at its own process index (the
//! branches on it taken), with its own pieces of the weights as new arguments.

use super::dead_ops::erase_unused_among;
use super::func_ops::{add_weight_argument, block_ops, body, functions};
use super::upstream_regions::{OpRegion, Ops, Source};
use crate::core::read::{handle, op_name, tensor_type};
use melior::ir::attribute::IntegerAttribute;
use melior::ir::block::{BlockLike, BlockRef};
use melior::ir::operation::{
    OperationLike, OperationMutLike, OperationPrintingFlags, OperationResult,
};
use melior::ir::operation::{OperationRef, OperationRefMut};
use melior::ir::{Location, Module, Operation, RegionLike, Value, ValueLike};
use melior::Context;
use mlir_sys::MlirValue;
use ppmoe_runtime::program::Op;
use ppmoe_runtime::Tensor;
use std::collections::{HashMap, HashSet};

/// The passes that partition a region.
const PARTITION: &str =
    "builtin.module(func.func(sharding-propagation), func.func(shard-partition))";

/// Region `r` of the function whose ops are `ops` partitioned by upstream over `tp` ranks: a module in `context` whose one
/// function takes the region's tokens, then its weights (each of its piece's type), and
/// returns the region's whole result. `dump`: MLIR prints the region's module after each of
/// the two passes (`--print-ir-after-all`). `Err`: why upstream did not partition it.
fn partition<'c>(
    context: &'c Context,
    ops: &Ops<'c, '_>,
    r: &OpRegion,
    tp: usize,
    dump: bool,
) -> Result<Module<'c>, String> {
    let scratch = region_function(context, ops, r, tp)?;
    let text = (scratch.as_operation())
        .to_string_with_flags(with_locations())
        .map_err(|e| e.to_string())?;
    let partitioned = run_upstream(&text, dump)?;
    ppmoe_dialect::parse_verified(context, &partitioned)
}

/// Printing flags that keep each op's location (the names ops read back by).
fn with_locations() -> OperationPrintingFlags {
    OperationPrintingFlags::new().enable_debug_info(true, false)
}

/// The region as a function of its own, annotated for upstream (see the module's doc).
fn region_function<'c>(
    context: &'c Context,
    ops: &Ops<'c, '_>,
    r: &OpRegion,
    tp: usize,
) -> Result<Module<'c>, String> {
    let splits = r.splits();
    let mut arguments = Vec::new();
    for &s in &r.inputs {
        arguments.push(ops.value(s)?.r#type().to_string());
    }
    for &(w, _) in &splits {
        arguments.push(ops.value(Source::Argument(w))?.r#type().to_string());
    }
    let terminal = ops.ops[r.terminal()];
    let result = terminal.result(0).map_err(|e| e.to_string())?;
    let text = skeleton(
        &arguments,
        r.inputs.len(),
        &splits,
        tp,
        &result.r#type().to_string(),
    );
    let scratch = ppmoe_dialect::parse_verified(context, &text)?;
    let [g]: [OperationRef; 1] = (functions(&scratch.as_operation())?)
        .try_into()
        .map_err(|_| "the region's module holds one function")?;
    let block = body(&g)?;
    let placed = block_ops(block);
    // The skeleton's ops: the splits and their shards, the whole sharding, the stand-in for
    // the result, its shard and the return.
    let [.., stand_in, whole_result, _] = placed[..] else {
        return Err("the region's skeleton".into());
    };
    let mut map: HashMap<usize, MlirValue> = HashMap::new();
    for (k, &s) in r.inputs.iter().enumerate() {
        let arg = block.argument(k).map_err(|e| e.to_string())?;
        map.insert(handle(ops.value(s)?), arg.to_raw());
    }
    for (k, &(w, _)) in splits.iter().enumerate() {
        let piece = placed[2 * k + 1].result(0).map_err(|e| e.to_string())?;
        map.insert(handle(ops.value(Source::Argument(w))?), piece.to_raw());
    }
    for &k in &r.copied {
        copy_before(&ops.ops[k], stand_in, block, &mut map)?;
    }
    let product = *map.get(&handle(result)).ok_or("the region's result")?;
    // SAFETY: both are live ops of the scratch function; the stand-in is then unused.
    unsafe {
        mlir_sys::mlirOperationSetOperand(whole_result.to_raw(), 0, product);
        super::dead_ops::erase_op(stand_in);
    }
    Ok(scratch)
}

/// The region's function before its ops are copied in: the weights annotated with their
/// splits (`splits`: argument and axis; the arguments after the `inputs` tokens), a stand-in
/// for the result through a replicated sharding.
fn skeleton(
    arguments: &[String],
    inputs: usize,
    splits: &[(usize, usize)],
    tp: usize,
    result: &str,
) -> String {
    use std::fmt::Write;
    let args: Vec<String> = (arguments.iter().enumerate())
        .map(|(k, t)| format!("%arg{k}: {t}"))
        .collect();
    let mut text = format!(
        "module {{\n  shard.grid @grid(shape = 1x1x{tp})\n  func.func @region({}) -> {result} {{\n",
        args.join(", ")
    );
    for (k, &(_, axis)) in splits.iter().enumerate() {
        let axes: Vec<&str> = (0..axis).map(|_| "[]").chain(["[2]"]).collect();
        let _ = writeln!(
            text,
            "    %split{k} = shard.sharding @grid split_axes = [{}] : !shard.sharding\n    %piece{k} = shard.shard %arg{} to %split{k} annotate_for_users : {}",
            axes.join(", "),
            inputs + k,
            arguments[inputs + k]
        );
    }
    let _ = writeln!(
        text,
        "    %whole = shard.sharding @grid split_axes = [[]] : !shard.sharding\n    %stand_in = tensor.empty() : {result}\n    %result = shard.shard %stand_in to %whole : {result}\n    return %result : {result}\n  }}\n}}"
    );
    text
}

/// Copies `op` before `before` (in `block`), its free operands (its own, and those its body
/// captures) read through `map`, and maps its results to the copy's; refuses a free operand
/// `map` does not give (then nothing is copied).
fn copy_before<'c, 'a>(
    op: &OperationRef<'c, '_>,
    before: OperationRef<'c, 'a>,
    block: BlockRef<'c, 'a>,
    map: &mut HashMap<usize, MlirValue>,
) -> Result<OperationRef<'c, 'a>, String> {
    // SAFETY: cloning copies the op, detached; it is dropped unless the block takes it over.
    let copy = unsafe { Operation::from_raw(mlir_sys::mlirOperationClone(op.to_raw())) };
    // SAFETY: the copy is live (owned here) while its handle is used.
    let free = free_operands(&unsafe { OperationRef::from_raw(copy.to_raw()) });
    for (user, k, v) in &free {
        let now = *map
            .get(&handle(*v))
            .ok_or_else(|| format!("'{}' reads a value the copy does not have", op_name(op)))?;
        // SAFETY: `user` is the copy or an op of its body; the value is live where the copy
        // goes, before it.
        unsafe { mlir_sys::mlirOperationSetOperand(*user, *k as isize, now) };
    }
    let copy = block.insert_operation_before(before, copy);
    for (was, now) in op.results().zip(copy.results()) {
        map.insert(handle(was), now.to_raw());
    }
    Ok(copy)
}

/// The operands of `op` and of the ops in its body that are not made inside `op` (its own
/// operands, and the values its body captures): each with the op that reads it and where.
fn free_operands<'c, 'a>(
    op: &OperationRef<'c, 'a>,
) -> Vec<(mlir_sys::MlirOperation, usize, Value<'c, 'a>)> {
    let mut inside = HashSet::new();
    let mut reads = Vec::new();
    visit(op, &mut inside, &mut reads);
    reads.retain(|(_, _, v)| !inside.contains(&handle(*v)));
    reads
}

/// Collects the values made within `op`'s body and every operand read at or within `op`.
fn visit<'c, 'a>(
    op: &OperationRef<'c, 'a>,
    inside: &mut HashSet<usize>,
    reads: &mut Vec<(mlir_sys::MlirOperation, usize, Value<'c, 'a>)>,
) {
    reads.extend((op.operands().enumerate()).map(|(k, v)| (op.to_raw(), k, v)));
    for block in op.regions().flat_map(super::func_ops::region_blocks) {
        inside
            .extend((0..block.argument_count()).filter_map(|k| block.argument(k).ok().map(handle)));
        for inner in block_ops(block) {
            inside.extend(inner.results().map(handle));
            visit(&inner, inside, reads);
        }
    }
}

/// The region's module text partitioned by upstream, printed with its locations: run in a
/// context of its own (IR printing needs one that runs on one thread).
fn run_upstream(text: &str, dump: bool) -> Result<String, String> {
    melior::utility::register_all_passes();
    let context = ppmoe_dialect::context();
    let mut module = ppmoe_dialect::parse_verified(&context, text)?;
    let pm = melior::pass::PassManager::new(&context);
    melior::utility::parse_pass_pipeline(pm.as_operation_pass_manager(), PARTITION)
        .map_err(|e| format!("{PARTITION} does not parse: {e}"))?;
    if dump {
        // MLIR prints from one thread only.
        context.enable_multi_threading(false);
        pm.enable_ir_printing(&melior::pass::PassIrPrintingOptions {
            before_all: false,
            after_all: true,
            module_scope: true,
            on_change: false,
            on_failure: false,
            flags: OperationPrintingFlags::new(),
            tree_printing_path: Default::default(),
        });
    }
    let (ran, diagnostics) = ppmoe_dialect::with_diagnostics(&context, || pm.run(&mut module));
    ran.map_err(|e| format!("{PARTITION}: {e}: {diagnostics}"))?;
    (module.as_operation())
        .to_string_with_flags(with_locations())
        .map_err(|e| e.to_string())
}

/// Partitions by upstream each region of the rank functions that the sharding interface
/// covers (`upstream_regions`; the functions are clones of one, their ops in the same places),
/// and splices each rank's form in; `weights`: each rank's, which take its pieces. A region
/// upstream does not partition as asked (MLIR's diagnostics, a piece of another shape, a branch
/// on something other than the process index) is left whole, for ppmoe's rules, with a
/// warning. `dump`: each region's module printed after each upstream pass. Returns how many
/// regions upstream partitioned.
pub fn partition_regions(
    context: &Context,
    ranks: &[OperationRef],
    weights: &mut [Vec<(String, Tensor)>],
    dump: bool,
) -> Result<usize, String> {
    let tp = ranks.len();
    // Each function's ops as they are now: a region's ops are found by their places in it
    // while the regions after it are spliced (last first).
    let snapshots: Vec<Ops> = ranks.iter().map(Ops::new).collect::<Result<_, _>>()?;
    let Some(first) = snapshots.first() else {
        return Ok(0);
    };
    let regions = super::upstream_regions::regions_in(first, tp);
    let partitioned: Vec<_> = (regions.iter())
        .map(|r| partition(context, first, r, tp, dump))
        .collect();
    let mut taken = 0;
    for (r, module) in regions.iter().zip(partitioned).rev() {
        let terminal = &first.ops[r.terminal()];
        let origin = crate::core::read::location_names(terminal.location(), 1).1;
        let left = |why: String| {
            tracing::warn!(
                "dense TP: the region ending at \"{origin}\" is left to ppmoe's rules: {why}"
            );
        };
        let module = match module {
            Ok(m) => m,
            Err(why) => {
                left(why);
                continue;
            }
        };
        // All ranks or none: each rank's copy is decided (and its pieces cut) before any
        // function changes.
        let prepared = (ranks.iter().zip(&snapshots).enumerate())
            .map(|(t, (f, ops))| prepare((f, ops), r, &module, &weights[t], (t, tp)))
            .collect::<Result<Vec<_>, _>>();
        let prepared = match prepared {
            Ok(p) => p,
            Err(why) => {
                left(why);
                continue;
            }
        };
        for (t, ((f, ops), copy)) in ranks.iter().zip(&snapshots).zip(prepared).enumerate() {
            splice_rank(context, (f, ops), r, copy, &mut weights[t])?;
        }
        taken += 1;
    }
    tracing::info!("dense TP: {taken} regions partitioned by upstream shard-partition");
    Ok(taken)
}

/// Rank t's copy of a partitioned region, decided: the partitioned function's body, the steps
/// that copy it at process index t, the value it returns (a handle), and the rank's pieces of
/// the region's weights, each with the argument that takes it there and its name.
struct Prepared<'c, 'a> {
    from: BlockRef<'c, 'a>,
    steps: Vec<Step<'c, 'a>>,
    product: usize,
    pieces: Vec<(Value<'c, 'a>, String, Tensor)>,
}

/// Rank t's copy of region `r` of `f` (whose ops are `ops`) as `partitioned` makes it, its
/// weights' pieces cut from `weights`; `Err` where the copy cannot be made.
fn prepare<'c, 'a>(
    (f, ops): (&OperationRef, &Ops),
    r: &OpRegion,
    partitioned: &'a Module<'c>,
    weights: &[(String, Tensor)],
    (t, tp): (usize, usize),
) -> Result<Prepared<'c, 'a>, String> {
    let g = partitioned_function(partitioned)?;
    let (steps, product) = plan(&g, t, tp)?;
    let pieces = pieces(f, ops, r, &g, weights, (t, tp))?;
    Ok(Prepared {
        from: body(&g)?,
        steps,
        product,
        pieces,
    })
}

/// Rank t's function `f` (a clone of the one the region was found in) with region `r`
/// replaced by its prepared copy: the partitioned ops at process index t (the branches on the
/// index taken), the weights' pieces (named `<weight>.tp<t>_<axis>`) bound by new arguments
/// marked as the rank's pieces and added to `weights`. The all-reduce takes the region's last
/// op's location (its result reads back under that name), the partial sum `<name>.partial`.
fn splice_rank<'c, 'a>(
    context: &'c Context,
    (f, ops): (&OperationRef<'c, 'a>, &Ops<'c, 'a>),
    r: &OpRegion,
    copy: Prepared<'c, '_>,
    weights: &mut Vec<(String, Tensor)>,
) -> Result<(), String> {
    let block = body(f)?;
    let mut map: HashMap<usize, MlirValue> = HashMap::new();
    for (k, &s) in r.inputs.iter().enumerate() {
        let arg = copy.from.argument(k).map_err(|e| e.to_string())?;
        map.insert(handle(arg), ops.value(s)?.to_raw());
    }
    for (arg, name, piece) in copy.pieces {
        let bound = add_weight_argument(context, f, block, arg.r#type(), (&name, true))?;
        weights.push((name, piece));
        map.insert(handle(arg), bound.to_raw());
    }
    let terminal = ops.ops[r.terminal()];
    let mut copies = HashSet::new();
    for step in copy.steps {
        match step {
            Step::Copy(op) => {
                let made = copy_before(&op, terminal, block, &mut map)?;
                copies.insert(made.to_raw().ptr as usize);
            }
            Step::Alias { result, value } => {
                let now = *map
                    .get(&value)
                    .ok_or("a branch yields a value not copied")?;
                map.insert(result, now);
            }
        }
    }
    let product = *map
        .get(&copy.product)
        .ok_or("the partitioned function's result")?;
    name_partial_sum(context, product, terminal)?;
    let result = terminal.result(0).map_err(|e| e.to_string())?;
    // SAFETY: both values live in `f`; the product is made before the terminal's readers.
    unsafe { mlir_sys::mlirValueReplaceAllUsesOfWith(result.to_raw(), product) };
    // The region's ops go (nothing reads them now), with what only fed them, and the copies
    // nothing reads (the constants the branches compared).
    let mut among: HashSet<usize> = (r.copied.iter())
        .map(|&k| ops.ops[k].to_raw().ptr as usize)
        .collect();
    among.extend(copies);
    erase_unused_among(block, &mut among);
    Ok(())
}

/// The partitioned module's one function.
fn partitioned_function<'c, 'a>(m: &'a Module<'c>) -> Result<OperationRef<'c, 'a>, String> {
    let [g]: [OperationRef; 1] = (functions(&m.as_operation())?)
        .try_into()
        .map_err(|_| "the partitioned module holds one function")?;
    Ok(g)
}

/// Rank t's copy of the partitioned function `g`: its steps, and the value it returns.
fn plan<'c, 'a>(
    g: &OperationRef<'c, 'a>,
    t: usize,
    tp: usize,
) -> Result<(Vec<Step<'c, 'a>>, usize), String> {
    let from = body(g)?;
    let mut plan = Plan {
        steps: Vec::new(),
        known: HashMap::new(),
        bound: (0..from.argument_count())
            .filter_map(|k| from.argument(k).ok().map(handle))
            .collect(),
        t,
        tp,
    };
    let [product] = plan.block(from)?[..] else {
        return Err("the partitioned function returns other than one value".into());
    };
    let returned = (from.terminator()).and_then(|r| r.operand(0).ok());
    all_reduce_and_partial(returned.ok_or("the partitioned function returns nothing")?)?;
    Ok((plan.steps, product))
}

/// Rank t's pieces of region `r`'s weights, as the partitioned function `g` takes them: each
/// with its argument there and its name.
fn pieces<'c, 'a>(
    f: &OperationRef,
    ops: &Ops,
    r: &OpRegion,
    g: &OperationRef<'c, 'a>,
    weights: &[(String, Tensor)],
    (t, tp): (usize, usize),
) -> Result<Vec<(Value<'c, 'a>, String, Tensor)>, String> {
    let from = body(g)?;
    let mut pieces = Vec::new();
    for (k, (w, axis)) in r.splits().into_iter().enumerate() {
        let arg = from
            .argument(r.inputs.len() + k)
            .map_err(|e| e.to_string())?;
        let name = super::func_ops::value_name(f, ops.value(Source::Argument(w))?);
        let piece = cut_piece(weights, &name, arg.r#type(), (axis, t, tp))?;
        pieces.push((arg.into(), format!("{name}.tp{t}_{axis}"), piece));
    }
    Ok(pieces)
}

/// Rank t's piece of weight `name` along `axis` (of the grid's `tp` parts), checked against
/// the type upstream gave it.
fn cut_piece(
    weights: &[(String, Tensor)],
    name: &str,
    ty: melior::ir::Type,
    (axis, t, tp): (usize, usize, usize),
) -> Result<Tensor, String> {
    let tensor = (weights.iter())
        .find(|(n, _)| n == name)
        .map(|(_, x)| x.clone())
        .ok_or_else(|| format!("weight '{name}' has no values"))?;
    let slice = Op::TokenSlice {
        axis,
        index: t,
        parts: tp,
    };
    let cut = ppmoe_runtime::kernels::execute(&slice, &[Some(&tensor)], 1)
        .map_err(|e| format!("cutting weight '{name}': {e}"))?
        .remove(0);
    let (_, shape) = tensor_type(ty)?;
    if cut.shape.iter().map(|&d| Some(d)).collect::<Vec<_>>() != shape {
        return Err(format!(
            "upstream gave weight '{name}' the piece shape {shape:?}, where ppmoe cut {:?}",
            cut.shape
        ));
    }
    Ok(cut)
}

/// The `shard.all_reduce` that makes `v`, and the op that makes the partial sum it reduces.
fn all_reduce_and_partial<'c, 'a>(
    v: Value<'c, 'a>,
) -> Result<(OperationRef<'c, 'a>, OperationRef<'c, 'a>), String> {
    let maker = |v: Value<'c, 'a>| OperationResult::try_from(v).ok().map(|r| r.owner());
    let all_reduce = maker(v)
        .filter(|op| op_name(op) == "shard.all_reduce")
        .ok_or("the partitioned region does not end in a shard.all_reduce")?;
    let partial = (all_reduce.operand(0).ok())
        .and_then(maker)
        .ok_or("the all-reduce reads no op's result")?;
    Ok((all_reduce, partial))
}

/// The all-reduce that makes `product` takes `terminal`'s location, and the partial sum it
/// reduces the name `<terminal's name>.partial` (from the same source node), where the
/// terminal has a name.
fn name_partial_sum(
    context: &Context,
    product: MlirValue,
    terminal: OperationRef,
) -> Result<(), String> {
    // SAFETY: a live value of the function.
    let (all_reduce, partial) = all_reduce_and_partial(unsafe { Value::from_raw(product) })?;
    let location = terminal.location();
    // SAFETY: the two ops are live in the rank's function, which this pass changes.
    unsafe { OperationRefMut::from_raw(all_reduce.to_raw()).set_location(location) };
    if let Some(name) = crate::core::read::location_names(location, 1).0.pop() {
        let origin = location.name_child_location();
        let partial_name = Location::name(context, &format!("{name}.partial"), origin);
        // SAFETY: as above.
        unsafe { OperationRefMut::from_raw(partial.to_raw()).set_location(partial_name) };
    }
    Ok(())
}

/// What rank t copies of a partitioned function, in order.
enum Step<'c, 'a> {
    /// An op, copied as it is.
    Copy(OperationRef<'c, 'a>),
    /// An `scf.if`'s result (a handle), read from the value its taken branch yields.
    Alias { result: usize, value: usize },
}

/// The steps of rank t's copy of a partitioned function, decided before anything is copied:
/// the process index and the grid's size are known, so are the comparisons of them, and each
/// `scf.if` on them takes one branch.
struct Plan<'c, 'a> {
    steps: Vec<Step<'c, 'a>>,
    /// The integers known at this rank: the process index, the grid's size, constants, and
    /// the comparisons of them.
    known: HashMap<usize, i64>,
    /// The partitioned function's values that the copy will have.
    bound: HashSet<usize>,
    t: usize,
    tp: usize,
}

impl<'c, 'a> Plan<'c, 'a> {
    /// Plans `from`'s ops (the function's, or a branch's) and returns the values its
    /// terminator (`func.return`, `scf.yield`) gives.
    fn block(&mut self, from: BlockRef<'c, 'a>) -> Result<Vec<usize>, String> {
        for op in block_ops(from) {
            match op_name(&op).as_str() {
                "func.return" | "scf.yield" => {
                    let given: Vec<usize> = op.operands().map(handle).collect();
                    if !given.iter().all(|v| self.bound.contains(v)) {
                        return Err("a value returned that the copy does not have".into());
                    }
                    return Ok(given);
                }
                "shard.process_multi_index" => self.know(&op, self.t as i64)?,
                "shard.grid_shape" => self.know(&op, self.tp as i64)?,
                "scf.if" => self.take_branch(&op)?,
                "arith.cmpi" => match self.compare(&op) {
                    Some(truth) => self.know(&op, i64::from(truth))?,
                    None => self.copy(op)?,
                },
                _ => {
                    if let Some(n) = integer_constant(&op) {
                        self.known
                            .insert(handle(op.result(0).map_err(|e| e.to_string())?), n);
                    }
                    self.copy(op)?;
                }
            }
        }
        Err("a block without its terminator".into())
    }

    /// `op`'s one result is `value` at this rank.
    fn know(&mut self, op: &OperationRef, value: i64) -> Result<(), String> {
        if op.result_count() != 1 {
            return Err(format!("'{}' with other than one result", op_name(op)));
        }
        let result = op.result(0).map_err(|e| e.to_string())?;
        self.known.insert(handle(result), value);
        Ok(())
    }

    /// An `arith.cmpi` of two integers known at this rank.
    fn compare(&self, op: &OperationRef) -> Option<bool> {
        let side = |k: usize| self.known.get(&handle(op.operand(k).ok()?)).copied();
        let (a, b) = (side(0)?, side(1)?);
        let predicate = IntegerAttribute::try_from(op.attribute("predicate").ok()?).ok()?;
        // arith.cmpi's predicates, by number: eq, ne, slt, sle, sgt, sge, ult, ule, ugt, uge
        // (the process index and the grid's size are never negative).
        Some(match predicate.value() {
            0 => a == b,
            1 => a != b,
            2 | 6 => a < b,
            3 | 7 => a <= b,
            4 | 8 => a > b,
            5 | 9 => a >= b,
            _ => return None,
        })
    }

    /// The branch of `op` (an `scf.if`) this rank takes, planned in its place.
    fn take_branch(&mut self, op: &OperationRef<'c, 'a>) -> Result<(), String> {
        let condition = op.operand(0).map_err(|e| e.to_string())?;
        let taken = *self
            .known
            .get(&handle(condition))
            .ok_or("scf.if on a condition not known at this rank")?;
        let region = op
            .region(if taken != 0 { 0 } else { 1 })
            .map_err(|e| e.to_string())?;
        let Some(branch) = region.first_block() else {
            return match op.result_count() {
                0 => Ok(()),
                _ => Err("scf.if without the branch taken".into()),
            };
        };
        let yielded = self.block(branch)?;
        if yielded.len() != op.result_count() {
            return Err("scf.if yields other than its results".into());
        }
        for (result, value) in op.results().zip(yielded) {
            self.bound.insert(handle(result));
            self.steps.push(Step::Alias {
                result: handle(result),
                value,
            });
        }
        Ok(())
    }

    /// Plans a copy of `op`, whose free operands the copy must have.
    fn copy(&mut self, op: OperationRef<'c, 'a>) -> Result<(), String> {
        let free = free_operands(&op);
        if let Some((_, _, v)) = free
            .iter()
            .find(|(_, _, v)| !self.bound.contains(&handle(*v)))
        {
            let why = match self.known.contains_key(&handle(*v)) {
                true => "the process index, which each rank knows",
                false => "a value the copy does not have",
            };
            return Err(format!("'{}' reads {why}", op_name(&op)));
        }
        self.bound.extend(op.results().map(handle));
        self.steps.push(Step::Copy(op));
        Ok(())
    }
}

/// The value of an `arith.constant` of an integer or index.
fn integer_constant(op: &OperationRef) -> Option<i64> {
    if op_name(op) != "arith.constant" {
        return None;
    }
    IntegerAttribute::try_from(op.attribute("value").ok()?)
        .ok()
        .map(|a| a.value())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distribute::Grid;
    use crate::passes::shard_dense::one_function_per_rank;

    /// `y = (act(x w1) * x w1) w2`: x [4, 8], w1 [8, 6], w2 [6, 8]; `act` the body of a
    /// `linalg.map` over one operand, or a whole op over `%h` making `%a`.
    fn mlp(act: &str) -> String {
        format!(
            r#"module {{
  func.func @rank0(%x: tensor<4x8xf32> {{core.input = "x"}}, %w1: tensor<8x6xf32> {{core.weight = "w1"}}, %w2: tensor<6x8xf32> {{core.weight = "w2"}}) -> (tensor<4x8xf32> {{core.output = "y"}}) attributes {{ppmoe.coords = array<i64: 0, 0, 0>}} {{
    %zero = arith.constant 0.0 : f32
    %e0 = tensor.empty() : tensor<4x6xf32>
    %f0 = linalg.fill ins(%zero : f32) outs(%e0 : tensor<4x6xf32>) -> tensor<4x6xf32>
    %h = linalg.matmul ins(%x, %w1 : tensor<4x8xf32>, tensor<8x6xf32>) outs(%f0 : tensor<4x6xf32>) -> tensor<4x6xf32>
    %e1 = tensor.empty() : tensor<4x6xf32>
    {act}
    %e2 = tensor.empty() : tensor<4x6xf32>
    %m = linalg.map {{ arith.mulf }} ins(%h, %a : tensor<4x6xf32>, tensor<4x6xf32>) outs(%e2 : tensor<4x6xf32>)
    %e3 = tensor.empty() : tensor<4x8xf32>
    %f3 = linalg.fill ins(%zero : f32) outs(%e3 : tensor<4x8xf32>) -> tensor<4x8xf32>
    %y = linalg.matmul ins(%m, %w2 : tensor<4x6xf32>, tensor<6x8xf32>) outs(%f3 : tensor<4x8xf32>) -> tensor<4x8xf32>
    return %y : tensor<4x8xf32>
  }}
}}"#
        )
    }

    const NEG: &str =
        "%a = linalg.map { arith.negf } ins(%h : tensor<4x6xf32>) outs(%e1 : tensor<4x6xf32>)";
    const SOFTMAX: &str = "%a = linalg.softmax dimension(1) ins(%h : tensor<4x6xf32>) outs(%e1 : tensor<4x6xf32>) -> tensor<4x6xf32>";

    fn weights() -> Vec<(String, Tensor)> {
        let values = |n: usize| (0..n).map(|i| i as f32).collect::<Vec<_>>();
        vec![
            ("w1".to_string(), Tensor::f32(vec![8, 6], values(48))),
            ("w2".to_string(), Tensor::f32(vec![6, 8], values(48))),
        ]
    }

    /// The MLP with `act` parsed, its one region (checked to be the only one), and the module
    /// made into two ranks' functions with the region partitioned by upstream in each (checked
    /// to verify); each rank's weights after.
    fn partitioned_at_tp_2<'c>(
        context: &'c Context,
        act: &str,
    ) -> (Module<'c>, OpRegion, Vec<Vec<(String, Tensor)>>) {
        let module = ppmoe_dialect::parse_verified(context, &mlp(act)).unwrap();
        let op = module.as_operation();
        let one = functions(&op).unwrap()[0];
        let regions = super::super::upstream_regions::find_regions(&one, 2).unwrap();
        assert_eq!(regions.len(), 1, "{regions:?}");
        let grid = Grid {
            dp: 1,
            pp: 1,
            tp: 2,
        };
        let ranks = one_function_per_rank(context, &op, grid).unwrap();
        let mut held = vec![weights(), weights()];
        assert_eq!(partition_regions(context, &ranks, &mut held, false), Ok(1));
        assert!(op.verify());
        let region = regions.into_iter().next().unwrap();
        (module, region, held)
    }

    #[test]
    fn a_swiglu_mlp_is_partitioned_by_upstream_into_pieces_and_one_all_reduce() {
        let context = ppmoe_dialect::context();
        let (module, region, held) = partitioned_at_tp_2(&context, NEG);
        assert_eq!((region.column_weights, region.row_weight), (vec![1], 2));
        let module = module.as_operation();
        let ranks = functions(&module).unwrap();
        for (t, f) in ranks.iter().enumerate() {
            let ops: Vec<String> = block_ops(body(f).unwrap()).iter().map(op_name).collect();
            let at = |name: &str| ops.iter().position(|o| o == name);
            // No branch on the process index is left; the all-reduce ends the MLP.
            assert_eq!(
                (at("scf.if"), at("shard.process_multi_index")),
                (None, None),
                "{ops:?}"
            );
            assert_eq!(ops[ops.len() - 2], "shard.all_reduce", "{ops:?}");
            let named = |n: &str| held[t].iter().find(|(w, _)| w == n).map(|(_, x)| x.clone());
            let w1 = named(&format!("w1.tp{t}_1")).unwrap();
            let w2 = named(&format!("w2.tp{t}_0")).unwrap();
            assert_eq!(
                (w1.shape.clone(), w2.shape.clone()),
                (vec![8, 3], vec![3, 8])
            );
            // Rank t's columns of w1 (row r: 6r + 3t ..) and rows of w2 (from 24t).
            let t = t as f32;
            assert_eq!(w1.to_f32()[..3], [3.0 * t, 3.0 * t + 1.0, 3.0 * t + 2.0]);
            assert_eq!(w2.to_f32()[0], 24.0 * t);
        }
        let text = module.to_string();
        assert!(
            text.contains("core.weight = \"w1.tp1_1\", ppmoe.rank_piece"),
            "{text}"
        );
    }

    #[test]
    fn one_weight_read_by_two_column_matmuls_is_cut_once() {
        // `%a` a second matmul by w1: the region's column weights are w1 once.
        let twice = "%a = linalg.matmul ins(%x, %w1 : tensor<4x8xf32>, tensor<8x6xf32>) outs(%f0 : tensor<4x6xf32>) -> tensor<4x6xf32>";
        let context = ppmoe_dialect::context();
        let (_module, region, held) = partitioned_at_tp_2(&context, twice);
        assert_eq!(region.splits(), [(1, 1), (2, 0)]);
        let names: Vec<&str> = held[1].iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["w1", "w2", "w1.tp1_1", "w2.tp1_0"]);
    }

    #[test]
    fn a_region_with_an_op_upstream_cannot_split_is_left_to_ppmoes_rules() {
        let context = ppmoe_dialect::context();
        let softmax = ppmoe_dialect::parse_verified(&context, &mlp(SOFTMAX)).unwrap();
        let f = functions(&softmax.as_operation()).unwrap()[0];
        assert_eq!(
            super::super::upstream_regions::find_regions(&f, 2),
            Ok(vec![])
        );
        let neg = ppmoe_dialect::parse_verified(&context, &mlp(NEG)).unwrap();
        let f = functions(&neg.as_operation()).unwrap()[0];
        assert_eq!(
            super::super::upstream_regions::find_regions(&f, 1),
            Ok(vec![])
        );
    }
}
