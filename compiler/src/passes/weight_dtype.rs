//! `ppmoe-weight-dtype`, over the module's MLIR ops: the float weights stored in `--dtype`
//! (`dtype=bf16`). Router gate weights stay fp32: their logits pick the experts, and a logit
//! moved by bf16 rounding can flip a top-k choice and send a token to another expert
//! (Megatron's and DeepSeek's routers run in fp32 for this reason).
//!
//! The pass changes types: each chosen weight argument takes the new element type, and each
//! upstream op that reads one is made again as ppmoe prints its instruction for the operand
//! types it now has (a `linalg` op's body follows its operands' types: a matmul takes the
//! mixed operands with `arith.extf` in its body, an elementwise op of mixed types is a `core`
//! op); `core` and `moe` ops take the new operand type as they are. The compilation's weights
//! of those names are rounded with them, once per tp index, each replaced as it is converted,
//! so no second copy of the weights is held.
//!
//!   before:  %arg5: tensor<64x16xf32> {core.weight = "w1"}
//!            linalg.batch_matmul ins(%x, %arg5 : tensor<1x16x64xf32>, tensor<64x16xf32>) ...
//!   after:   %arg5: tensor<64x16xbf16> {core.weight = "w1"}
//!            linalg.batch_matmul ins(%x, %arg5 : tensor<1x16x64xf32>, tensor<64x16xbf16>) ...

use super::func_ops::{body, functions, weight_names};
use super::retype::retype_arguments;
use crate::core::read::{handle, instruction_op, op_name, tensor_type};
use crate::pipeline::{Compilation, PassError};
use melior::ir::block::{BlockArgument, BlockLike, BlockRef};
use melior::ir::operation::{OperationLike, OperationRef, OperationResult};
use melior::ir::ValueLike;
use melior::Context;
use ppmoe_runtime::program::Op;
use ppmoe_runtime::{DType, Tensor};
use std::collections::HashSet;

/// Gives every float weight argument but the routers' the element type `--dtype` names, and
/// makes again the upstream ops that read them; returns how many arguments it changed.
pub fn weights_in_dtype(
    context: &Context,
    module: &OperationRef,
    c: &mut Compilation,
) -> Result<usize, PassError> {
    let Some(dtype) = c.options.weight_dtype else {
        return Ok(0);
    };
    let originals = functions(module)?;
    if originals.len() != c.sharded.len() {
        return Err(format!(
            "{} functions, where the compilation holds the weights of {} tp indices",
            originals.len(),
            c.sharded.len()
        )
        .into());
    }
    let mut changed = 0;
    for (f, held) in originals.iter().zip(&mut c.sharded) {
        let block = body(f)?;
        let names = weight_names(f);
        let chosen = chosen_arguments(block, &names, dtype)?;
        if chosen.is_empty() {
            continue;
        }
        let args: Vec<(BlockArgument, DType)> = chosen.iter().map(|&(_, a)| (a, dtype)).collect();
        retype_arguments(context, (f, block), &args, "ppmoe-weight-dtype")?;
        let converted: HashSet<&str> = (chosen.iter())
            .filter_map(|(k, _)| names.get(*k)?.as_deref())
            .collect();
        for (name, t) in &mut held.weights {
            if converted.contains(name.as_str()) {
                *t = in_float_type(t.clone(), dtype);
            }
        }
        changed += chosen.len();
    }
    Ok(changed)
}

/// The weight arguments to convert (with their positions): float, not already `dtype`, not a
/// router's.
fn chosen_arguments<'c, 'a>(
    block: BlockRef<'c, 'a>,
    names: &[Option<String>],
    dtype: DType,
) -> Result<Vec<(usize, BlockArgument<'c, 'a>)>, String> {
    let routers = router_arguments(block)?;
    let mut chosen = Vec::new();
    for k in 0..block.argument_count() {
        let arg = block.argument(k).map_err(|e| e.to_string())?;
        let (held, _) = tensor_type(arg.r#type())?;
        let is_weight = names.get(k).is_some_and(Option::is_some);
        if is_weight && held.is_float() && held != dtype && !routers.contains(&handle(arg)) {
            chosen.push((k, arg));
        }
    }
    Ok(chosen)
}

/// The arguments that are a router's gate weight: the second operand of the matmul whose
/// result, through reshapes, is a `moe.route`'s logits.
fn router_arguments(block: BlockRef) -> Result<HashSet<usize>, String> {
    let mut routers = HashSet::new();
    let mut next = block.first_operation();
    while let Some(op) = next {
        next = op.next_in_block();
        if op_name(&op) != "moe.route" || op.operand_count() == 0 {
            continue;
        }
        let mut logits = op.operand(0).map_err(|e| e.to_string())?;
        while let Ok(made) = OperationResult::try_from(logits) {
            let producer = made.owner();
            // A matmul's narrowing cast is part of its instruction.
            if producer.has_attribute("ppmoe.narrows") && producer.operand_count() > 0 {
                logits = producer.operand(0).map_err(|e| e.to_string())?;
                continue;
            }
            let read = instruction_op(&producer);
            match read {
                Ok(Op::ReshapeTo { .. }) if producer.operand_count() > 0 => {
                    logits = producer.operand(0).map_err(|e| e.to_string())?;
                }
                Ok(Op::MatMul) if producer.operand_count() > 1 => {
                    let gate = producer.operand(1).map_err(|e| e.to_string())?;
                    if BlockArgument::try_from(gate).is_ok() {
                        routers.insert(handle(gate));
                    }
                    break;
                }
                _ => break,
            }
        }
    }
    Ok(routers)
}

/// A float weight rounded to `dtype` (stored as half-precision bits where `dtype` is one: the
/// converted weights take half the room); as it is where the runtime cannot cast it (the
/// argument's type then refuses it where the next pass binds the weights).
fn in_float_type(t: Tensor, dtype: DType) -> Tensor {
    match dtype {
        DType::F16 | DType::BF16 => Tensor::half(t.shape.clone(), &t.f32_values(), dtype),
        _ => match ppmoe_runtime::kernels::execute(&Op::Cast { to: dtype }, &[Some(&t)], 1) {
            Ok(mut v) if !v.is_empty() => v.remove(0),
            _ => t,
        },
    }
}
