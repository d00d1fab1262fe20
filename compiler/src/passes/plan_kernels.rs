//! `ppmoe-plan-kernels`, over the module's MLIR ops: each rank function of the pipelined module
//! gets its kernels (`gpu.module @rank<N>_kernels`) and its plan (`func.func @rank<N>_plan`, one
//! `kernels` op per instruction: which kernel, cuBLAS GEMM or host step runs it) placed after
//! it; the rank functions stay as they are, and the module becomes a GPU container.
//!
//!   before:  func.func @rank0(...) { ... }
//!   after:   func.func @rank0(...) { ... }
//!            gpu.module @rank0_kernels { gpu.func @k0_embedding(...) kernel { ... } ... }
//!            func.func @rank0_plan() attributes {kernels.plan_of = @rank0} {
//!              "kernels.embedding"() {instruction = 0 : i64, kernel = @rank0_kernels::@k0_embedding} ...
//!
//! The plan is made per instruction of the program each function reads as (the runtime runs
//! programs, and the plan names their instructions); the kernels and the plan are parsed from
//! their text (the kernels' bodies from `.mlir` templates and the lines the generator writes)
//! and moved in.

use super::func_ops::{block_ops, functions};
use crate::pipeline::{adopt, Compilation, PassError};
use melior::ir::attribute::Attribute;
use melior::ir::operation::{OperationLike, OperationMutLike, OperationRef, OperationRefMut};
use melior::Context;

/// Plans every rank's kernels and places them, with the plan, after the rank's function;
/// returns how many ranks it planned.
pub fn plan_kernels(
    context: &Context,
    module: &OperationRef,
    c: &mut Compilation,
) -> Result<usize, PassError> {
    adopt(c, module)?;
    plan_ranks(c);
    let ranks = functions(module)?;
    if ranks.len() != c.ranks.len() {
        return Err(format!(
            "{} functions, where the pipelined module read as {} ranks",
            ranks.len(),
            c.ranks.len()
        )
        .into());
    }
    for ((f, rp), plan) in ranks.iter().zip(&c.ranks).zip(&c.kernel_plans) {
        let beside = format!("{}{}", plan.module, crate::pipeline::print_plan(rp, plan));
        place_after(context, f, &beside)?;
    }
    // SAFETY: the pass manager hands this pass the module; no other handle writes the op.
    let mut target = unsafe { OperationRefMut::from_raw(module.to_raw()) };
    let unit = Attribute::unit(context);
    target.set_attribute("gpu.container_module", unit);
    Ok(c.ranks.len())
}

/// Plans the kernels of every rank's program the compilation holds.
pub fn plan_ranks(c: &mut Compilation) {
    c.kernel_plans = (c.ranks.iter())
        .map(|r| {
            let name = format!("rank{}_kernels", r.program.rank);
            crate::codegen::plan_kernels(&r.program, &r.weights, &name)
        })
        .collect();
}

/// `text` (top-level ops: `gpu.module`s and `func.func`s, as a rank's kernels and plan print)
/// parsed and verified in a module of its own, a GPU container as the kernels stage's is.
pub(crate) fn parse_in_container<'c>(
    context: &'c Context,
    text: &str,
) -> Result<melior::ir::Module<'c>, String> {
    let wrapped = format!("module attributes {{gpu.container_module}} {{\n{text}}}\n");
    ppmoe_dialect::parse_verified(context, &wrapped)
}

/// Parses `text` (top-level ops: a `gpu.module` and a `func.func`) and moves its ops after `f`,
/// in order.
pub(crate) fn place_after(context: &Context, f: &OperationRef, text: &str) -> Result<(), String> {
    let scratch = parse_in_container(context, text)?;
    ppmoe_dialect::forget_text_positions(&scratch.as_operation());
    let mut after = *f;
    for op in block_ops(scratch.body()) {
        // SAFETY: the scratch module and `f`'s share the context; each op is moved once, and
        // used after only through the module it is moved to.
        let mut moved = unsafe { OperationRefMut::from_raw(op.to_raw()) };
        moved.move_after(after);
        // SAFETY: as above: the op now lives in `f`'s module.
        after = unsafe { OperationRef::from_raw(op.to_raw()) };
    }
    Ok(())
}
