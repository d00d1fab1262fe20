//! `ppmoe-compare-as-f32`, over the module's MLIR ops: integer constants compared with each
//! other, held as f32 where that is exact. The causal and padding masks of exported LMs
//! compare position ranges: i64 constants made from the input's shape, which grow with the
//! tokens (a [B, 1, S, S] mask folded at compile time would grow with their square), so the
//! comparisons run with every forward. The GPU holds floats and booleans, not integers, so
//! these comparisons would run on the host; comparing f32 copies of the constants gives the
//! same booleans while every value is an integer of at most 2^24 in magnitude, and a float
//! comparison is a generated kernel.
//!
//! The pass changes types: each chosen weight argument becomes an f32 tensor of its shape, and
//! each comparison that reads it is made again for f32 operands (`retype`): a `linalg.generic`
//! of `arith.cmpi` becomes one of `arith.cmpf` with the ordered predicate, which gives the same
//! booleans for integers f32 holds; a `core` comparison takes the new type as it is. The weight
//! itself is converted where the next pass binds the weights to the arguments' types
//! (`adopt`), which converts an integer weight to an f32 argument only when every value is
//! exact.
//!
//!   before:  %arg2: tensor<1x1x1x512xi64> {core.weight = "unsqueeze_12"}
//!            linalg.generic ... ins(%arg2, %arg3 : tensor<1x1x1x512xi64>, ...) {
//!              %c = arith.cmpi sle, %a, %b : i64 ...
//!   after:   %arg2: tensor<1x1x1x512xf32> {core.weight = "unsqueeze_12"}
//!            linalg.generic ... ins(%arg2, %arg3 : tensor<1x1x1x512xf32>, ...) {
//!              %c = arith.cmpf ole, %a, %b : f32 ...

use super::func_ops::{body, functions, weight_names};
use super::retype::{instruction_inputs, retype_arguments};
use crate::core::read::{handle, instruction_op, op_name, tensor_type};
use crate::pipeline::Compilation;
use melior::ir::block::{BlockLike, BlockRef};
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::{RegionLike, ValueLike};
use melior::Context;
use ppmoe_runtime::program::{exact_in_f32, Op};
use ppmoe_runtime::{DType, Tensor};
use std::collections::{HashMap, HashSet};

/// Whether `op` is a comparison: a `core` one, or a `linalg.generic` that reads back as one.
fn is_comparison(op: &OperationRef) -> bool {
    let name = op_name(op);
    if !(name.starts_with("core.") || name == "linalg.generic") {
        return false;
    }
    matches!(instruction_op(op), Ok(Op::Binary { f }) if f.is_comparison())
}

/// Whether `t`'s values are integers that f32 holds exactly.
pub fn exact_integers(t: &Tensor) -> bool {
    !t.dtype.on_device_as_f32() && t.to_i64().iter().all(|&v| exact_in_f32(v))
}

/// Makes f32 the integer weight arguments whose every use is a comparison of such arguments
/// and whose values (the compilation's weights of that name) f32 holds exactly; returns how
/// many.
pub fn compare_as_f32(
    context: &Context,
    module: &OperationRef,
    c: &mut Compilation,
) -> Result<usize, crate::pipeline::PassError> {
    let weights: HashMap<&str, &Tensor> = (c.sharded.iter())
        .flat_map(|rp| rp.weights.iter().map(|(n, t)| (n.as_str(), t)))
        .collect();
    let mut converted = 0;
    for f in functions(module)? {
        let block = body(&f)?;
        let chosen = chosen_arguments(block, &weight_names(&f), &weights)?;
        let args = (chosen.iter())
            .map(|&k| Ok((block.argument(k).map_err(|e| e.to_string())?, DType::F32)))
            .collect::<Result<Vec<_>, String>>()?;
        if !args.is_empty() {
            retype_arguments(context, (&f, block), &args, "ppmoe-compare-as-f32")?;
        }
        converted += chosen.len();
    }
    Ok(converted)
}

/// The arguments (by index) to hold as f32: integer weights whose values are exact in f32,
/// used only by comparisons whose operands are all such weights. Dropping one can
/// disqualify others (it is compared with them), so the choice is repeated until it stands.
fn chosen_arguments(
    block: BlockRef,
    names: &[Option<String>],
    weights: &HashMap<&str, &Tensor>,
) -> Result<Vec<usize>, String> {
    let mut chosen: HashMap<usize, usize> = HashMap::new();
    for (k, name) in names.iter().enumerate() {
        let Some(t) = name.as_deref().and_then(|n| weights.get(n)) else {
            continue;
        };
        let arg = block.argument(k).map_err(|e| e.to_string())?;
        let (dtype, _) = tensor_type(arg.r#type())?;
        if !dtype.on_device_as_f32() && exact_integers(t) {
            chosen.insert(handle(arg), k);
        }
    }
    let mut uses = Vec::new();
    collect_uses(block, true, &mut uses);
    loop {
        let before = chosen.len();
        for (top_level_comparison, operands) in &uses {
            let keeps = *top_level_comparison && operands.iter().all(|v| chosen.contains_key(v));
            if !keeps {
                for v in operands {
                    chosen.remove(v);
                }
            }
        }
        if chosen.len() == before {
            break;
        }
    }
    let mut ks: Vec<usize> = chosen.into_values().collect();
    ks.sort_unstable();
    Ok(ks)
}

/// Every op of `block` and the regions in it: whether it is a comparison of the function's
/// own block, and its operands' handles.
fn collect_uses(block: BlockRef, top_level: bool, uses: &mut Vec<(bool, HashSet<usize>)>) {
    let mut next = block.first_operation();
    while let Some(op) = next {
        next = op.next_in_block();
        let comparison = top_level && is_comparison(&op);
        let operands = if comparison {
            instruction_inputs(&op).into_iter().map(handle).collect()
        } else {
            op.operands().map(handle).collect()
        };
        uses.push((comparison, operands));
        for r in op.regions() {
            let mut inner = r.first_block();
            while let Some(b) = inner {
                inner = b.next_in_region();
                collect_uses(b, false, uses);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distribute::shard_moe::RankProgram;
    use ppmoe_runtime::program::Program;

    /// pos <= lim (a `linalg.generic` of `arith.cmpi`, as ppmoe prints it) and pos == idx (a
    /// `core` op), weights all; with `with_big`, also big > pos, where big (2^25 + 1) is an
    /// integer f32 cannot hold.
    fn module_text(with_big: bool) -> String {
        let (t, b) = ("tensor<3xi64>", "tensor<3xi1>");
        let weight = |n: &str| format!("%{n}: {t} {{core.weight = \"{n}\"}}");
        let compare = |r: &str, op: &str, x: &str, y: &str| {
            format!("    %{r} = \"core.{op}\"(%{x}, %{y}) : ({t}, {t}) -> {b}\n")
        };
        let mut args = vec![weight("pos"), weight("lim"), weight("idx")];
        let map = "affine_map<(d0) -> (d0)>";
        let generic = format!(
            "    %d = tensor.empty() : {b}\n    %le = linalg.generic {{indexing_maps = [{map}, {map}, {map}], iterator_types = [\"parallel\"]}} ins(%pos, %lim : {t}, {t}) outs(%d : {b}) {{\n    ^bb0(%x: i64, %y: i64, %o: i1):\n      %c = arith.cmpi sle, %x, %y : i64\n      linalg.yield %c : i1\n    }} -> {b}\n"
        );
        let mut ops = generic + &compare("eq", "equal", "pos", "idx");
        let mut results = vec!["%le", "%eq"];
        if with_big {
            args.push(weight("big"));
            ops += &compare("gt", "greater", "big", "pos");
            results.push("%gt");
        }
        let types = vec![b; results.len()].join(", ");
        format!(
            "module {{\n  func.func @rank0({}) -> ({types}) {{\n{ops}    return {} : {types}\n  }}\n}}\n",
            args.join(", "),
            results.join(", ")
        )
    }

    fn compilation(with_big: bool) -> Compilation {
        let mut weights = vec![
            ("pos".to_string(), Tensor::i64(vec![3], vec![0, 1, 2])),
            ("lim".to_string(), Tensor::i64(vec![3], vec![2, 1, 0])),
            ("idx".to_string(), Tensor::i64(vec![3], vec![0, 5, 2])),
        ];
        if with_big {
            weights.push(("big".into(), Tensor::i64(vec![3], vec![(1 << 25) + 1; 3])));
        }
        Compilation {
            sharded: vec![RankProgram {
                program: Program::empty(),
                weights,
            }],
            ..Default::default()
        }
    }

    fn run(with_big: bool) -> (usize, String) {
        let context = ppmoe_dialect::context();
        let module = ppmoe_dialect::parse_verified(&context, &module_text(with_big)).unwrap();
        let n =
            compare_as_f32(&context, &module.as_operation(), &mut compilation(with_big)).unwrap();
        assert!(
            module.as_operation().verify(),
            "the module verifies after the pass"
        );
        (n, module.as_operation().to_string())
    }

    #[test]
    fn exact_integer_weights_compared_with_each_other_become_f32_arguments() {
        let (n, text) = run(false);
        assert_eq!(n, 3);
        let signature = "(%arg0: tensor<3xf32> {core.weight = \"pos\"}, %arg1: tensor<3xf32>";
        let equal = "(%arg0, %arg2) : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xi1>";
        assert!(text.contains(signature) && text.contains(equal), "{text}");
        assert!(text.contains("arith.cmpf ole"), "{text}");
        assert!(!text.contains("i64"), "{text}");
    }

    #[test]
    fn a_value_f32_cannot_hold_keeps_every_weight_it_is_compared_with() {
        // big stays i64, so pos (compared with it) does, so do lim and idx (compared
        // with pos): nothing converted.
        let (n, text) = run(true);
        assert_eq!(n, 0);
        assert!(!text.contains("xf32"), "{text}");
    }
}
