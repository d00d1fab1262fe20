//! Arguments of a function given new element types, and the upstream ops that read them made
//! again for those types. A `core`, `moe` or `shard` op takes an operand of any type as it
//! is; an upstream op's body and form follow its operands' types (a `linalg.generic`'s block
//! arguments, `arith.cmpi` or `arith.cmpf`), so each is read as its instruction before the
//! types change and printed again as ppmoe prints that instruction for the new ones: one
//! instruction, spliced in, its destination and what only fed it erased with it.

use super::func_ops::{replace_op, set_signature, tensor_of};
use super::program_ops::one_instruction;
use crate::core::read::{instruction_op, op_name, tensor_type, users};
use crate::core::upstream::OPERAND_ONLY;
use melior::ir::block::{BlockArgument, BlockRef};
use melior::ir::operation::{OperationLike, OperationRef, OperationResult};
use melior::ir::{Value, ValueLike};
use melior::Context;
use ppmoe_runtime::program::Op;
use ppmoe_runtime::DType;
use std::collections::HashSet;

/// Gives each argument of `args` its element type `dtype` (its shape kept), resets `f`'s
/// signature and makes again the upstream ops that read them; `pass` names the pass in errors.
pub fn retype_arguments(
    context: &Context,
    (f, block): (&OperationRef, BlockRef),
    args: &[(BlockArgument, DType)],
    pass: &str,
) -> Result<(), String> {
    let values: Vec<BlockArgument> = args.iter().map(|(a, _)| *a).collect();
    // Read before the types change: an upstream op reads back only as ppmoe prints it.
    let readers = (upstream_readers(&values).into_iter())
        .map(|op| Ok((read_instruction(&op, pass)?, op)))
        .collect::<Result<Vec<_>, String>>()?;
    for (arg, dtype) in args {
        let (_, shape) = tensor_type(arg.r#type())?;
        arg.set_type(tensor_of(context, *dtype, shape)?);
    }
    set_signature(context, f, block, None)?;
    for (read, op) in readers {
        make_again(context, op, read)?;
    }
    Ok(())
}

/// The upstream ops (not `core`, `moe` or `shard`, whose operands take any type) that read the
/// arguments, each once, in the order of their first use.
fn upstream_readers<'c, 'a>(args: &[BlockArgument<'c, 'a>]) -> Vec<OperationRef<'c, 'a>> {
    let mut seen = HashSet::new();
    let mut readers = Vec::new();
    for arg in args {
        for owner in users((*arg).into()) {
            let dialect = op_name(&owner);
            let ours = ["core.", "moe.", "shard."]
                .iter()
                .any(|d| dialect.starts_with(d));
            if !ours && seen.insert(owner.to_raw().ptr as usize) {
                readers.push(owner);
            }
        }
    }
    readers
}

/// The instruction `op` (which reads an argument `pass` retypes) reads back as.
fn read_instruction(op: &OperationRef, pass: &str) -> Result<Op, String> {
    let name = op_name(op);
    if op.result_count() != 1 {
        return Err(format!(
            "{name} reads a weight {pass} converts, and makes {} results where ppmoe prints one",
            op.result_count()
        ));
    }
    instruction_op(op).map_err(|e| {
        format!("{name} reads a weight {pass} converts, and is no instruction ppmoe prints: {e}")
    })
}

/// Replaces `op`, which reads as `read`, by the ops ppmoe prints for that instruction with its
/// operands' types as they are now; its destination and what only fed it go with it.
fn make_again(context: &Context, op: OperationRef, read: Op) -> Result<(), String> {
    let name = op_name(&op);
    let text = |e: melior::Error| format!("{name}: {e}");
    let inputs = instruction_inputs(&op);
    let result = op.result(0).map_err(text)?;
    let one = one_instruction(read, &inputs, result.into(), op.location(), "v")?;
    replace_op(
        context,
        op,
        &crate::core::print::print_core(&[&one]),
        &inputs,
    )
}

/// An op's operands that are its instruction's inputs: those no destination op makes (a
/// `tensor.empty`, a fill, a reshape's shape) nor a part of it (a layer norm's rows), a
/// gather's indices as they are before their index axis is appended.
pub fn instruction_inputs<'c, 'a>(op: &OperationRef<'c, 'a>) -> Vec<Value<'c, 'a>> {
    let address = |o: &OperationRef| o.to_raw().ptr as usize;
    let parts: Vec<usize> = (crate::core::read::parts_of(op).iter())
        .map(address)
        .collect();
    (op.operands())
        .filter(|&v| {
            OperationResult::try_from(v)
                .map(|r| {
                    let maker = r.owner();
                    !OPERAND_ONLY.contains(&op_name(&maker).as_str())
                        && !parts.contains(&address(&maker))
                })
                .unwrap_or(true)
        })
        .map(expanded_from)
        .collect()
}

/// A gather's indices as its instruction takes them: what the `tensor.expand_shape` that
/// appends their index axis expands (`core::upstream::Upstream::Gather`).
fn expanded_from<'c, 'a>(v: Value<'c, 'a>) -> Value<'c, 'a> {
    let Ok(result) = OperationResult::try_from(v) else {
        return v;
    };
    let owner = result.owner();
    if op_name(&owner) != "tensor.expand_shape" || owner.operand_count() != 1 {
        return v;
    }
    // SAFETY: the expand's operand is a live value of the same function as `v`, with its
    // lifetimes.
    unsafe { Value::from_raw(mlir_sys::mlirOperationGetOperand(owner.to_raw(), 0)) }
}
