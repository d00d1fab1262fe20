//! Constants put back into the linalg bodies that read them, on IR given as input: mlir-opt's
//! `-canonicalize` hoists a body's `arith.constant` to the function (and CSE shares it), where
//! ppmoe prints it in the body, just before the op that reads it. A constant is a value, so
//! reading a copy in the body computes the same; the readers then see the body as ppmoe prints
//! it. A hoisted constant that nothing else reads goes.
//!
//!   before:  %one = arith.constant 1.0 : f32   linalg.map .. { %r = arith.divf %one, %in }
//!   after:   linalg.map .. { %one = arith.constant 1.0 : f32   %r = arith.divf %one, %in }

use super::dead_ops::{erase_op, unused};
use super::func_ops::{block_ops, body, functions, region_blocks};
use crate::core::read::op_name;
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationRef, OperationResult};
use melior::ir::Operation;
use std::collections::HashMap;

/// Copies into each body of each function's ops the constants it reads from outside; returns
/// how many copies it made.
pub fn sink_constants(module: &OperationRef) -> Result<usize, String> {
    let mut made = 0;
    for f in functions(module)? {
        let mut hoisted: Vec<OperationRef> = Vec::new();
        for op in block_ops(body(&f)?) {
            for r in 0..op.region_count() {
                let region = op.region(r).map_err(|e| e.to_string())?;
                for block in region_blocks(region) {
                    made += sink_into(block, &mut hoisted);
                }
            }
        }
        for constant in hoisted.into_iter().rev() {
            if constant.results().all(unused) {
                // SAFETY: the constant is live, of the function's block, and nothing reads it.
                unsafe { erase_op(constant) };
            }
        }
    }
    Ok(made)
}

/// Gives `block` a copy of each constant from outside it that its ops read, just before the
/// first op that reads it; the originals are added to `hoisted`.
fn sink_into<'c, 'a>(
    block: melior::ir::BlockRef<'c, 'a>,
    hoisted: &mut Vec<OperationRef<'c, 'a>>,
) -> usize {
    let mut copies: HashMap<usize, mlir_sys::MlirValue> = HashMap::new();
    for user in block_ops(block) {
        for k in 0..user.operand_count() {
            let Ok(value) = user.operand(k) else { continue };
            let Ok(result) = OperationResult::try_from(value) else {
                continue;
            };
            let constant = result.owner();
            let outside = constant.block().map(|b| b.to_raw().ptr) != Some(block.to_raw().ptr);
            if op_name(&constant) != "arith.constant" || !outside {
                continue;
            }
            let key = constant.to_raw().ptr as usize;
            let copy = *copies.entry(key).or_insert_with(|| {
                // SAFETY: cloning copies the constant; the block takes the copy over.
                let clone =
                    unsafe { Operation::from_raw(mlir_sys::mlirOperationClone(constant.to_raw())) };
                let placed = block.insert_operation_before(user, clone);
                if !hoisted
                    .iter()
                    .any(|h| h.to_raw().ptr == constant.to_raw().ptr)
                {
                    hoisted.push(constant);
                }
                // SAFETY: a constant has its one result.
                unsafe { mlir_sys::mlirOperationGetResult(placed.to_raw(), 0) }
            });
            // SAFETY: the copy lives in the user's block, before the user.
            unsafe { mlir_sys::mlirOperationSetOperand(user.to_raw(), k as isize, copy) };
        }
    }
    copies.len()
}
