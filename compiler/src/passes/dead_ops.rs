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
use crate::core::read::{handle, op_name};
use crate::pipeline::Compilation;
use melior::ir::attribute::Attribute;
use melior::ir::block::{BlockLike, BlockRef};
use melior::ir::operation::{OperationLike, OperationMutLike, OperationRef, OperationRefMut};
use melior::ir::{Operation, RegionLike};
use melior::Context;
use std::collections::HashMap;

/// The ops kept though nothing uses their results.
const KEPT: &[&str] = &["func.return", "shard.send"];

/// Erases the dead ops and unread weight arguments of every function of `module`; returns how
/// many ops it erased.
pub fn remove_dead_ops(
    context: &Context,
    module: &OperationRef,
    _: &Compilation,
) -> Result<usize, String> {
    let mut erased = 0;
    for f in functions(module)? {
        let block = body(&f)?;
        let mut uses = HashMap::new();
        count_uses(block, &mut uses, 1);
        erased += erase_dead(block, &mut uses);
        erase_unread_weights(context, &f, block, &uses)?;
    }
    Ok(erased)
}

/// Adds `by` to the use count of every operand of every op in `block`, nested ones included
/// (a body may read a value from outside it).
fn count_uses(block: BlockRef, uses: &mut HashMap<usize, isize>, by: isize) {
    let mut next = block.first_operation();
    while let Some(op) = next {
        next = op.next_in_block();
        count_op_uses(&op, uses, by);
    }
}

fn count_op_uses(op: &OperationRef, uses: &mut HashMap<usize, isize>, by: isize) {
    for v in op.operands() {
        *uses.entry(handle(v)).or_default() += by;
    }
    for r in op.regions() {
        let mut block = r.first_block();
        while let Some(b) = block {
            block = b.next_in_region();
            count_uses(b, uses, by);
        }
    }
}

/// Erases, last to first, every op of `block` whose results are all unused (but `KEPT`).
fn erase_dead(block: BlockRef, uses: &mut HashMap<usize, isize>) -> usize {
    let mut erased = 0;
    for op in block_ops(block).into_iter().rev() {
        let unused = op.result_count() > 0
            && op
                .results()
                .all(|r| uses.get(&handle(r)).copied().unwrap_or(0) <= 0);
        if !unused || KEPT.contains(&op_name(&op).as_str()) {
            continue;
        }
        count_op_uses(&op, uses, -1);
        // SAFETY: the op is in this function's block, which the pass manager hands this pass;
        // no handle to it is used after it is erased (its results have no uses).
        let mut owned = unsafe { OperationRefMut::from_raw(op.to_raw()) };
        owned.remove_from_parent();
        // SAFETY: removed from its block, the op is owned here; dropping destroys it.
        drop(unsafe { Operation::from_raw(op.to_raw()) });
        erased += 1;
    }
    erased
}

/// Erases the weight arguments (`core.weight`) nothing reads, with their types and attributes
/// in the function's signature.
fn erase_unread_weights(
    context: &Context,
    f: &OperationRef,
    block: BlockRef,
    uses: &HashMap<usize, isize>,
) -> Result<(), String> {
    let arg_attrs = argument_attributes(f);
    let weights = weight_names(f);
    let mut kept_attrs: Vec<Attribute> = Vec::new();
    let mut unread = Vec::new();
    for k in 0..block.argument_count() {
        let arg = block.argument(k).map_err(|e| e.to_string())?;
        let is_weight = weights.get(k).is_some_and(Option::is_some);
        if is_weight && uses.get(&handle(arg)).copied().unwrap_or(0) <= 0 {
            unread.push(k);
        } else if let Some(&a) = arg_attrs.get(k) {
            kept_attrs.push(a);
        }
    }
    if unread.is_empty() {
        return Ok(());
    }
    for &k in unread.iter().rev() {
        // SAFETY: the argument has no uses, and no handle to it is kept.
        unsafe { block.erase_argument(k) };
    }
    set_signature(context, f, block, Some(&kept_attrs))
}
