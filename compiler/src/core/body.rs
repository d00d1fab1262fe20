//! Reading back the body of a `linalg.generic` ppmoe printed: the ops in order, each reading
//! the block's arguments or earlier ops' results, with the attributes (a comparison's
//! predicate, a loop index's dimension, a constant's value) it was printed with. Anything
//! else (another op, other wiring, another attribute) is not that body.

use super::read::{handle, op_name};
use crate::passes::func_ops::block_ops;
use melior::ir::attribute::{FloatAttribute, IntegerAttribute};
use melior::ir::block::{BlockArgument, BlockLike, BlockRef};
use melior::ir::operation::{OperationLike, OperationRef, OperationResult};
use melior::ir::RegionLike;

/// A value an op of the body reads: the block's argument `k`, the result of step `k`, or a
/// value defined outside the body (which the form reads as one of its instruction's
/// operands: `captures`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Use {
    Arg(usize),
    Step(usize),
    Outside,
}

/// An attribute's value: an integer, or a float (compared bit for bit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Integer(i64),
    Float(f64),
}

/// One op of the body: its name, what it reads (all of its operands, in order) and, where
/// the form fixes one, an attribute and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: &'static str,
    pub reads: Vec<Use>,
    pub attribute: Option<(&'static str, Value)>,
}

impl Step {
    pub fn new(name: &'static str, reads: &[Use]) -> Step {
        Step {
            name,
            reads: reads.to_vec(),
            attribute: None,
        }
    }

    pub fn with(mut self, key: &'static str, value: i64) -> Step {
        self.attribute = Some((key, Value::Integer(value)));
        self
    }

    /// A float constant of this value.
    pub fn float(value: f64) -> Step {
        let mut step = Step::new("arith.constant", &[]);
        step.attribute = Some(("value", Value::Float(value)));
        step
    }
}

/// Whether the body of `op` (its first region's one block) is `steps`, its last the yield.
pub fn body_is(op: &OperationRef, steps: &[Step]) -> bool {
    let Some(block) = op.region(0).ok().and_then(|r| r.first_block()) else {
        return false;
    };
    let ops = block_ops(block);
    if ops.len() != steps.len() {
        return false;
    }
    let value = |u: Use| match u {
        Use::Arg(k) => block.argument(k).map(handle).ok(),
        Use::Step(k) => ops.get(k).and_then(|o| o.result(0).map(handle).ok()),
        Use::Outside => None,
    };
    let reads_it = |o: &OperationRef, k: usize, u: Use| match u {
        Use::Outside => o.operand(k).is_ok_and(|v| !defined_in(block, v)),
        _ => value(u).is_some() && o.operand(k).map(handle).ok() == value(u),
    };
    ops.iter().zip(steps).all(|(o, step)| {
        let reads = o.operand_count() == step.reads.len()
            && (step.reads.iter().enumerate()).all(|(k, &u)| reads_it(o, k, u));
        let attribute = step.attribute.is_none_or(|(key, want)| {
            let a = o.attribute(key).ok();
            match want {
                Value::Integer(want) => (a.and_then(|a| IntegerAttribute::try_from(a).ok()))
                    .is_some_and(|v| v.value() == want),
                Value::Float(want) => (a.and_then(|a| FloatAttribute::try_from(a).ok()))
                    .is_some_and(|v| v.value().to_bits() == want.to_bits()),
            }
        });
        op_name(o) == step.name && reads && attribute
    })
}

/// Whether `v` is defined in `block`: one of its arguments, or a result of one of its ops.
fn defined_in(block: BlockRef, v: melior::ir::Value) -> bool {
    let owner = match (OperationResult::try_from(v), BlockArgument::try_from(v)) {
        (Ok(result), _) => result.owner().block().map(|b| b.to_raw().ptr),
        (_, Ok(argument)) => Some(argument.owner().to_raw().ptr),
        _ => None,
    };
    owner == Some(block.to_raw().ptr)
}
