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

use crate::core::read::{handle, op_name};
use melior::ir::attribute::{ArrayAttribute, Attribute, DictionaryAttribute, TypeAttribute};
use melior::ir::block::{BlockLike, BlockRef};
use melior::ir::operation::{OperationLike, OperationMutLike, OperationRef, OperationRefMut};
use melior::ir::r#type::FunctionType;
use melior::ir::{Operation, RegionLike, Type, ValueLike};
use melior::Context;
use std::collections::HashMap;

/// The ops kept though nothing uses their results.
const KEPT: &[&str] = &["func.return", "shard.send"];

/// Erases the dead ops and unread weight arguments of every function of `module`; returns how
/// many ops it erased.
pub fn remove_dead_ops(context: &Context, module: &OperationRef) -> Result<usize, String> {
    let body = module
        .region(0)
        .ok()
        .and_then(|r| r.first_block())
        .ok_or("the module has no body")?;
    let mut erased = 0;
    let mut next = body.first_operation();
    while let Some(f) = next {
        next = f.next_in_block();
        if op_name(&f) != "func.func" {
            continue;
        }
        let block = f
            .region(0)
            .ok()
            .and_then(|r| r.first_block())
            .ok_or("a func.func without a body")?;
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
    let mut ops = Vec::new();
    let mut next = block.first_operation();
    while let Some(op) = next {
        next = op.next_in_block();
        ops.push(op);
    }
    let mut erased = 0;
    for op in ops.into_iter().rev() {
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
    let arg_attrs: Vec<Attribute> = f
        .attribute("arg_attrs")
        .ok()
        .and_then(|a| ArrayAttribute::try_from(a).ok())
        .map(|a| (0..a.len()).filter_map(|k| a.element(k).ok()).collect())
        .unwrap_or_default();
    let is_weight = |k: usize| {
        arg_attrs.get(k).is_some_and(|&d| {
            DictionaryAttribute::try_from(d)
                .is_ok_and(|d| d.element_by_name("core.weight").is_some())
        })
    };
    let mut kept_types: Vec<Type> = Vec::new();
    let mut kept_attrs: Vec<Attribute> = Vec::new();
    let mut unread = Vec::new();
    for k in 0..block.argument_count() {
        let arg = block.argument(k).map_err(|e| e.to_string())?;
        if is_weight(k) && uses.get(&handle(arg)).copied().unwrap_or(0) <= 0 {
            unread.push(k);
        } else {
            kept_types.push(arg.r#type());
            if let Some(&a) = arg_attrs.get(k) {
                kept_attrs.push(a);
            }
        }
    }
    if unread.is_empty() {
        return Ok(());
    }
    let results: Vec<Type> = f
        .attribute("function_type")
        .ok()
        .and_then(|a| TypeAttribute::try_from(a).ok())
        .and_then(|t| FunctionType::try_from(t.value()).ok())
        .map(|t| {
            (0..t.result_count())
                .filter_map(|k| t.result(k).ok())
                .collect()
        })
        .ok_or("a func.func without its function_type")?;
    for &k in unread.iter().rev() {
        // SAFETY: the argument has no uses, and no handle to it is kept.
        unsafe { block.erase_argument(k) };
    }
    // SAFETY: as for the ops: the pass manager hands this pass the module.
    let mut f = unsafe { OperationRefMut::from_raw(f.to_raw()) };
    let signature = FunctionType::new(context, &kept_types, &results);
    f.set_attribute("function_type", TypeAttribute::new(signature.into()).into());
    f.set_attribute(
        "arg_attrs",
        ArrayAttribute::new(context, &kept_attrs).into(),
    );
    Ok(())
}
