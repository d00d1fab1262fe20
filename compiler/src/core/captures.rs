//! The operands of the instruction a `linalg.generic` reads as, where they are not its operands
//! in order: the values its body reads from outside it, a one-hot's values `[off, on]` (its
//! third operand) and a gather's data (its first), which the body reads with `tensor.extract`
//! at positions it computes (no indexing map reads a tensor at a computed position); and a
//! scatter's data (its first), which is the generic's destination.

use super::read::op_name;
use crate::passes::func_ops::block_ops;
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::{RegionLike, Value};
use ppmoe_runtime::program::Op;

/// Whether `op`'s body extracts an element from a tensor.
pub fn extracts(op: &OperationRef) -> bool {
    let block = op.region(0).ok().and_then(|r| r.first_block());
    block.is_some_and(|b| block_ops(b).iter().any(|o| op_name(o) == "tensor.extract"))
}

/// The operands of the instruction `op` reads as (`read`), in the instruction's order, where
/// its body reads one of them from outside; None where `op` reads all of its operands as
/// operands.
pub fn instruction_operands<'c, 'a>(
    op: &OperationRef<'c, 'a>,
    read: &Op,
) -> Option<Result<Vec<Value<'c, 'a>>, String>> {
    if op_name(op) != "linalg.generic" {
        return None;
    }
    let operand = |k: usize| op.operand(k).map_err(|e| e.to_string());
    let outside = |v: Option<Value<'c, 'a>>, what: &str| v.ok_or(format!("a {what} without it"));
    let operands = match read {
        Op::OneHot { .. } => outside(super::one_hot::values(op), "one-hot's values")
            .and_then(|values| Ok(vec![operand(0)?, operand(1)?, values])),
        Op::ScatterElements { .. } => super::scatter_elements::operands(op),
        Op::Gather { .. } => outside(super::widening_gather::table(op), "gather's table")
            .and_then(|table| Ok(vec![table, operand(0)?])),
        Op::GatherElements { .. } => outside(super::gather_elements::data(op), "gather's data")
            .and_then(|data| Ok(vec![data, operand(0)?])),
        _ => return None,
    };
    Some(operands)
}
