//! `ppmoe-dce` as a pass over the module's MLIR ops (not through ppmoe's programs): in each
//! function, the ops whose results nothing uses are erased, last to first (so the ops that
//! only fed them go too: their destinations, their constants), and then the weight arguments
//! nothing reads. A `shard.send` is kept for what it does, not for a result; the function's
//! inputs stay (they are the model's). What the pass leaves is what `dead_code` leaves of the
//! same program: the weights nothing reads are not attached when the next pass adopts the
//! module, so they are dropped there.
//!
//!   before:  %t = linalg.transpose ins(%arg2 ...)   (unused)   %y = linalg.matmul ins(%x, %arg1 ...)
//!   after:                                                     %y = linalg.matmul ins(%x, %arg1 ...)

use super::func_ops::{
    argument_attributes, block_ops, body, functions, set_signature, weight_names,
};
use crate::core::read::op_name;
use crate::pipeline::Compilation;
use melior::ir::attribute::Attribute;
use melior::ir::block::{BlockLike, BlockRef};
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::ValueLike;
use melior::Context;

/// The ops kept though nothing uses their results.
const KEPT: &[&str] = &["func.return", "shard.send"];

/// Erases the dead ops and unread weight arguments of every function of `module`; returns how
/// many ops it erased.
pub fn remove_dead_ops(
    context: &Context,
    module: &OperationRef,
    _: &mut Compilation,
) -> Result<usize, crate::pipeline::PassError> {
    let mut erased = 0;
    for f in functions(module)? {
        let block = body(&f)?;
        erased += erase_dead(block);
        erase_unread_weights(context, &f, block)?;
    }
    Ok(erased)
}

/// Whether nothing uses `v` (by MLIR's use lists, which count the uses in nested regions).
pub(crate) fn unused<'c>(v: impl ValueLike<'c>) -> bool {
    // SAFETY: reading a live value's use list.
    unsafe { mlir_sys::mlirOpOperandIsNull(mlir_sys::mlirValueGetFirstUse(v.to_raw())) }
}

/// Whether `op` makes results and nothing uses any of them.
fn results_unused(op: &OperationRef) -> bool {
    op.result_count() > 0 && op.results().all(unused)
}

/// Erases, last to first, every op of `block` whose results are all unused (but `KEPT`): an op
/// erased drops its uses, so what only fed it goes too.
pub(crate) fn erase_dead(block: BlockRef) -> usize {
    let mut erased = 0;
    for op in block_ops(block).into_iter().rev() {
        if !results_unused(&op) || KEPT.contains(&op_name(&op).as_str()) {
            continue;
        }
        // SAFETY: the op is in a function's block that the caller may change; its results
        // have no uses, and no handle to it is used after.
        unsafe { erase_op(op) };
        erased += 1;
    }
    erased
}

/// Erases the ops of `block` in `among` (by handle) whose results nothing uses, until none is
/// left: an op erased drops its uses, so what only fed it may follow. What is erased leaves
/// `among`.
pub(crate) fn erase_unused_among(block: BlockRef, among: &mut std::collections::HashSet<usize>) {
    loop {
        let dead: Vec<OperationRef> = (block_ops(block).into_iter())
            .filter(|op| among.contains(&(op.to_raw().ptr as usize)) && results_unused(op))
            .collect();
        if dead.is_empty() {
            return;
        }
        for op in dead.into_iter().rev() {
            among.remove(&(op.to_raw().ptr as usize));
            // SAFETY: the op is in a block the caller may change, and nothing uses its results;
            // no handle to it is used after.
            unsafe { erase_op(op) };
        }
    }
}

/// Removes `op` from its block and destroys it.
///
/// # Safety
/// Nothing uses `op`'s results (its readers went first), and no handle to it is used after.
pub(crate) unsafe fn erase_op(op: OperationRef) {
    // SAFETY: the caller's promise: the op is live, in a block it may change, and unused.
    unsafe {
        mlir_sys::mlirOperationRemoveFromParent(op.to_raw());
        mlir_sys::mlirOperationDestroy(op.to_raw());
    }
}

/// Erases `op`, then each op that defined one of its operands and whose results nothing uses
/// any more, in turn (a `linalg.contract`'s destination: its fill, the fill's empty tensor and
/// zero).
///
/// # Safety
/// `op`'s results have no uses, and no handle to the erased ops is used after.
pub(crate) unsafe fn erase_with_unused_producers(op: mlir_sys::MlirOperation) {
    use mlir_sys::*;
    let mut seen = std::collections::HashSet::from([op.ptr as usize]);
    let mut pending = vec![op];
    while let Some(op) = pending.pop() {
        // SAFETY: the op is live: queued once, and erased only when taken from the queue.
        let op_ref = unsafe { OperationRef::from_raw(op) };
        if !op_ref.results().all(unused) {
            continue;
        }
        let producers: Vec<MlirOperation> = (op_ref.operands())
            .filter_map(|v| melior::ir::operation::OperationResult::try_from(v).ok())
            .map(|r| r.owner().to_raw())
            .collect();
        // SAFETY: the op's results have no uses; it leaves the queue here.
        unsafe { erase_op(op_ref) };
        for p in producers {
            if seen.insert(p.ptr as usize) {
                pending.push(p);
            }
        }
    }
}

/// Erases the weight arguments (`core.weight`) nothing reads, with their types and attributes
/// in the function's signature.
pub(crate) fn erase_unread_weights(
    context: &Context,
    f: &OperationRef,
    block: BlockRef,
) -> Result<(), String> {
    let weights = weight_names(f);
    let unread_weight = |k: usize| -> Result<bool, String> {
        let is_weight = weights.get(k).is_some_and(Option::is_some);
        Ok(is_weight && unused(block.argument(k).map_err(|e| e.to_string())?))
    };
    erase_arguments(context, f, block, unread_weight, |a| a)
}

/// Erases the arguments of `f` that `goes` picks (nothing may read them), keeps the
/// attributes of the others as `kept_attributes` makes them, and rewrites the signature to
/// match; leaves `f` as it is when nothing changes.
pub(crate) fn erase_arguments<'c>(
    context: &'c Context,
    f: &OperationRef<'c, '_>,
    block: BlockRef<'c, '_>,
    goes: impl Fn(usize) -> Result<bool, String>,
    kept_attributes: impl Fn(Attribute<'c>) -> Attribute<'c>,
) -> Result<(), String> {
    let attributes = argument_attributes(f);
    let mut kept: Vec<Attribute> = Vec::new();
    let mut erased = Vec::new();
    for k in 0..block.argument_count() {
        if goes(k)? {
            erased.push(k);
        } else if let Some(&a) = attributes.get(k) {
            kept.push(kept_attributes(a));
        }
    }
    if erased.is_empty() && kept == attributes {
        return Ok(());
    }
    for &k in erased.iter().rev() {
        let arg = block.argument(k).map_err(|e| e.to_string())?;
        if !unused(arg) {
            return Err(format!("argument {k} is still read; it cannot be erased"));
        }
        // SAFETY: the argument has no uses, and no handle to it is kept.
        unsafe { block.erase_argument(k) };
    }
    set_signature(context, f, block, Some(&kept))
}
