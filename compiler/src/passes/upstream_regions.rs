//! The regions of a function's ops that MLIR's own `sharding-propagation` and `shard-partition`
//! take (`upstream_partition`), found on the ops: a region begins at a matmul of tokens by a
//! weight argument whose columns split over tp, takes in the elementwise `linalg.map`s over
//! its products (and the other column-split matmuls they read), and ends at the one matmul by
//! a weight argument that contracts the split axis (Megatron's split of a SwiGLU MLP: a shared
//! expert, a dense layer's feed-forward).
//!
//!   %g = linalg.matmul ins(%x, %w_gate)  %a = linalg.map ins(%g)  %u = linalg.matmul ins(%x, %w_up)
//!   %m = linalg.map { arith.mulf } ins(%a, %u)  %y = linalg.matmul ins(%m, %w_down)   <- a region
//!
//! A region is closed: nothing outside it reads a value made in it but the last matmul's, and
//! its ops read only the tokens, their weights and what the region makes (and the constants,
//! empty tensors and fills their destinations are). Ops are named by their position in the
//! function's block, values by `Source`: what a clone of the function finds them by.

use super::func_ops::{block_ops, body, operand_values_within, weight_names};
use crate::core::read::{handle, op_name};
use melior::ir::block::{BlockLike, BlockRef};
use melior::ir::operation::{OperationLike, OperationRef, OperationResult};
use melior::ir::r#type::{RankedTensorType, ShapedTypeLike};
use melior::ir::{Value, ValueLike};
use std::collections::{BTreeSet, HashMap};

/// Where a value of a function is: its argument, or a result of the op at a position of its
/// block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Argument(usize),
    Result { op: usize, index: usize },
}

/// A region upstream partitions: its ops (positions in the block, in order; the last is the
/// row-split matmul), the weight arguments split by columns and the one split by rows, and the
/// tokens it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRegion {
    pub ops: Vec<usize>,
    /// The ops a copy of the region takes, in order: its own, and the constants, empty
    /// tensors and fills their destinations are made of.
    pub copied: Vec<usize>,
    pub column_weights: Vec<usize>,
    pub row_weight: usize,
    pub inputs: Vec<Source>,
}

impl OpRegion {
    /// The region's weight arguments, each with the axis ppmoe splits it along: those split by
    /// columns, then the one split by rows.
    pub fn splits(&self) -> Vec<(usize, usize)> {
        (self.column_weights.iter().map(|&w| (w, 1)))
            .chain([(self.row_weight, 0)])
            .collect()
    }

    /// The row-split matmul that ends the region.
    pub fn terminal(&self) -> usize {
        *self.ops.last().unwrap_or(&0)
    }
}

/// A function's top-level ops, what each reads and who reads each, by position.
pub(crate) struct Ops<'c, 'a> {
    block: BlockRef<'c, 'a>,
    pub(crate) ops: Vec<OperationRef<'c, 'a>>,
    position: HashMap<usize, usize>,
    weights: Vec<Option<String>>,
    /// The block's argument handles, by number.
    arguments: HashMap<usize, usize>,
}

impl<'c, 'a> Ops<'c, 'a> {
    pub(crate) fn new(f: &OperationRef<'c, 'a>) -> Result<Self, String> {
        let block = body(f)?;
        let ops = block_ops(block);
        let position = (ops.iter().enumerate())
            .map(|(k, op)| (op.to_raw().ptr as usize, k))
            .collect();
        let arguments = (0..block.argument_count())
            .filter_map(|k| block.argument(k).ok().map(|a| (handle(a), k)))
            .collect();
        Ok(Ops {
            block,
            ops,
            position,
            weights: weight_names(f),
            arguments,
        })
    }

    /// The value at `s`.
    pub(crate) fn value(&self, s: Source) -> Result<Value<'c, 'a>, String> {
        let missing = || format!("the function has no value at {s:?}");
        match s {
            Source::Argument(k) => self.argument(k).ok_or_else(missing),
            Source::Result { op, index } => (self.ops.get(op))
                .and_then(|o| o.result(index).ok())
                .map(Into::into)
                .ok_or_else(missing),
        }
    }

    /// Argument `k` of the function's block.
    pub(crate) fn argument(&self, k: usize) -> Option<Value<'c, 'a>> {
        self.block.argument(k).ok().map(Into::into)
    }

    /// Where `v` is, if it is the function's own (an argument or a top-level op's result).
    pub(crate) fn source(&self, v: Value) -> Option<Source> {
        if let Some(&k) = self.arguments.get(&handle(v)) {
            return Some(Source::Argument(k));
        }
        let r = OperationResult::try_from(v).ok()?;
        let op = *self.position.get(&(r.owner().to_raw().ptr as usize))?;
        Some(Source::Result {
            op,
            index: r.result_number(),
        })
    }

    /// The position of the top-level op that makes `v`, where one does.
    fn made_by(&self, v: Value) -> Option<usize> {
        match self.source(v)? {
            Source::Result { op, .. } => Some(op),
            Source::Argument(_) => None,
        }
    }

    /// The weight argument `v` is, if it is one.
    fn weight_argument(&self, v: Value) -> Option<usize> {
        match self.source(v)? {
            Source::Argument(k) => self.weights.get(k)?.as_ref().map(|_| k),
            Source::Result { .. } => None,
        }
    }

    /// The tokens and the weight argument of the op at `k`, where it is a matmul of tokens (a
    /// matrix, or a stack of them whose maps broadcast the weight) by a 2-D weight.
    fn weight_matmul(&self, k: usize) -> Option<(Value<'c, 'a>, usize)> {
        let op = &self.ops[k];
        if !["linalg.matmul", "linalg.batch_matmul"].contains(&op_name(op).as_str()) {
            return None;
        }
        let (x, w) = (op.operand(0).ok()?, op.operand(1).ok()?);
        let two_d = dims(w).is_some_and(|d| d.len() == 2);
        let w_arg = self.weight_argument(w)?;
        (two_d && self.weight_argument(x).is_none()).then_some((x, w_arg))
    }

    /// Whether the op at `k` is an elementwise `linalg.map` over f32 operands and a result of
    /// one type.
    fn elementwise(&self, k: usize) -> bool {
        let op = &self.ops[k];
        let Ok(result) = op.result(0) else {
            return false;
        };
        let ty = result.r#type();
        let f32s = RankedTensorType::try_from(ty).is_ok_and(|t| t.element().to_string() == "f32");
        op_name(op) == "linalg.map" && f32s && op.operands().all(|v| v.r#type() == ty)
    }

    /// The `ins` of the op at `k` (every operand but the destination).
    fn ins(&self, k: usize) -> Vec<Value<'c, 'a>> {
        let op = &self.ops[k];
        let n = op.operand_count().saturating_sub(1);
        op.operands().take(n).collect()
    }

    /// The positions of the top-level ops that read the op at `k`'s result 0 (in their own
    /// ops or in their regions), in order; `None` where the function returns it.
    fn readers(&self, k: usize) -> Option<Vec<usize>> {
        let result = self.ops[k].result(0).ok()?;
        let mut readers = BTreeSet::new();
        // SAFETY: walking a live value's use list.
        let mut use_ = unsafe { mlir_sys::mlirValueGetFirstUse(result.to_raw()) };
        // SAFETY: as above; each use is live while the function is unchanged.
        while !unsafe { mlir_sys::mlirOpOperandIsNull(use_) } {
            // SAFETY: a live use's owner.
            let owner = unsafe { mlir_sys::mlirOpOperandGetOwner(use_) };
            let top = self.top_level_of(owner)?;
            if op_name(&self.ops[top]) == "func.return" {
                return None;
            }
            readers.insert(top);
            // SAFETY: as above.
            use_ = unsafe { mlir_sys::mlirOpOperandGetNextUse(use_) };
        }
        Some(readers.into_iter().collect())
    }

    /// The position of the top-level op that holds `op` (itself, or an op in its regions).
    fn top_level_of(&self, mut op: mlir_sys::MlirOperation) -> Option<usize> {
        loop {
            if let Some(&k) = self.position.get(&(op.ptr as usize)) {
                return Some(k);
            }
            // SAFETY: a live op's parent; null at the top.
            op = unsafe { mlir_sys::mlirOperationGetParentOperation(op) };
            if op.ptr.is_null() {
                return None;
            }
        }
    }
}

/// The static dimensions of a tensor value.
fn dims(v: Value) -> Option<Vec<u64>> {
    let t = RankedTensorType::try_from(v.r#type()).ok()?;
    (0..t.rank())
        .map(|i| match t.dim_size(i) {
            Ok(melior::ir::r#type::DimSize::Static(n)) => Some(n),
            _ => None,
        })
        .collect()
}

/// The regions of `f` upstream partitions over `tp` ranks (none at tp 1), in order.
pub fn find_regions(f: &OperationRef, tp: usize) -> Result<Vec<OpRegion>, String> {
    if tp < 2 {
        return Ok(Vec::new());
    }
    Ok(regions_in(&Ops::new(f)?, tp))
}

/// The regions of the function whose ops are `ops` upstream partitions over `tp` ranks (none
/// at tp 1), in order.
pub(crate) fn regions_in(ops: &Ops, tp: usize) -> Vec<OpRegion> {
    if tp < 2 {
        return Vec::new();
    }
    let mut regions: Vec<OpRegion> = Vec::new();
    for k in 0..ops.ops.len() {
        // Regions do not interleave (each is replaced where its last op was).
        let after = regions.last().map_or(0, |r| r.terminal() + 1);
        if k < after {
            continue;
        }
        if let Some(region) = grow(ops, k, tp).filter(|r| r.ops[0] >= after) {
            regions.push(region);
        }
    }
    regions
}

/// The region that a column-split matmul at `seed` begins, if Megatron's split closes it.
fn grow(ops: &Ops, seed: usize, tp: usize) -> Option<OpRegion> {
    let width = |w: usize, axis: usize| dims(ops.argument(w)?)?.get(axis).copied();
    let splittable = |k: usize| {
        let (_, w) = ops.weight_matmul(k)?;
        width(w, 1).filter(|&n| n % tp as u64 == 0).map(|_| ())
    };
    splittable(seed)?;
    let last_dim = |k: usize| dims(ops.ops[k].result(0).ok()?.into())?.last().copied();
    let mut members = BTreeSet::from([seed]);
    let mut work = vec![seed];
    let mut terminal = None;
    while let Some(i) = work.pop() {
        for u in ops.readers(i)? {
            if members.contains(&u) || terminal == Some(u) {
                continue;
            }
            let contracts = ops.weight_matmul(u).filter(|&(x, w)| {
                ops.made_by(x) == Some(i) && width(w, 0).is_some() && width(w, 0) == last_dim(i)
            });
            if contracts.is_some() && terminal.is_none() {
                terminal = Some(u);
                continue;
            }
            if !ops.elementwise(u) {
                return None;
            }
            // Every operand of an elementwise member is split alike: made in the region, or
            // by another column-split matmul or elementwise map, which joins it.
            for v in ops.ins(u) {
                let maker = ops.made_by(v)?;
                if !members.contains(&maker) {
                    if splittable(maker).is_none() && !ops.elementwise(maker) {
                        return None;
                    }
                    members.insert(maker);
                    work.push(maker);
                }
            }
            members.insert(u);
            work.push(u);
        }
    }
    region_of(ops, members, terminal?)
}

/// The region of `members` closed by `terminal`, checked: every member's value read only in
/// the region, every member's operand made in it but the column matmuls' tokens.
fn region_of(ops: &Ops, members: BTreeSet<usize>, terminal: usize) -> Option<OpRegion> {
    let mut column_weights = Vec::new();
    let mut inputs = Vec::new();
    for &k in &members {
        let column = ops
            .weight_matmul(k)
            .filter(|(x, _)| !ops.made_by(*x).is_some_and(|m| members.contains(&m)));
        if let Some((x, w)) = column {
            // Two matmuls by one weight (IR edited by hand) read one piece of it.
            if !column_weights.contains(&w) {
                column_weights.push(w);
            }
            let x = ops.source(x)?;
            if !inputs.contains(&x) {
                inputs.push(x);
            }
        } else if !(ops.ins(k).into_iter())
            .all(|v| ops.made_by(v).is_some_and(|m| members.contains(&m)))
        {
            return None;
        }
    }
    let read_outside = (members.iter()).any(|&k| {
        ops.readers(k)
            .is_none_or(|r| r.iter().any(|u| !members.contains(u) && *u != terminal))
    });
    let (_, row_weight) = ops.weight_matmul(terminal)?;
    // A weight cannot be cut by its columns and by its rows in one region.
    if column_weights.contains(&row_weight) {
        return None;
    }
    // The region is replaced where its last op, the row-split matmul, was.
    let ends_at_terminal = members.iter().all(|&k| k < terminal);
    if read_outside || column_weights.is_empty() || !ends_at_terminal {
        return None;
    }
    let mut region = OpRegion {
        ops: members.into_iter().chain([terminal]).collect(),
        copied: Vec::new(),
        column_weights,
        row_weight,
        inputs,
    };
    region.copied = with_destinations(ops, &region)?;
    Some(region)
}

/// The ops a copy of the region `r` takes beside its own: what their destinations (and any
/// value their bodies capture) are made of, which must be constants, empty tensors and fills;
/// `None` where an op reads anything else but the region's tokens and weights.
fn with_destinations(ops: &Ops, r: &OpRegion) -> Option<Vec<usize>> {
    const DESTINATIONS: &[&str] = &["arith.constant", "tensor.empty", "linalg.fill"];
    let weights: Vec<usize> = r.splits().into_iter().map(|(w, _)| w).collect();
    let mut copied: BTreeSet<usize> = r.ops.iter().copied().collect();
    let mut work = r.ops.clone();
    while let Some(k) = work.pop() {
        for v in operand_values_within(&ops.ops[k]) {
            // A value made inside the op (its body's) is copied with it.
            let Some(s) = ops.source(v).filter(|s| !r.inputs.contains(s)) else {
                continue;
            };
            match s {
                Source::Argument(a) if weights.contains(&a) => {}
                Source::Argument(_) => return None,
                Source::Result { op, .. } => {
                    if !copied.contains(&op) {
                        DESTINATIONS
                            .contains(&op_name(&ops.ops[op]).as_str())
                            .then_some(())?;
                        copied.insert(op);
                        work.push(op);
                    }
                }
            }
        }
    }
    Some(copied.into_iter().collect())
}
