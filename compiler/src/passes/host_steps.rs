//! `ppmoe-host-steps{steps=...}` (`--host-steps`), over the `kernels` module: the plan steps
//! named run on the host instead (`kernels.host`: the CPU kernel runs the instruction, its
//! operands copied to the host and its results back), to take a kernel suspected of a wrong
//! result out of a GPU run. A step is named by its kind (the plan op without `kernels.`,
//! `pointwise` for a launch of a fused chain: `route`, `pointwise`, `moe_experts`, ..., or
//! `all`) or by its instruction's number on every rank (a member of a fused step names the
//! step). A step moves with its members; a collective it did itself (PPMoE's all-reduce,
//! all-to-all's exchanges) becomes NCCL's own (`kernels.nccl`).
//!
//!   before:  "kernels.route"() {instruction = 2 : i64, kernel = @rank0_kernels::@k2_route, ...}
//!   after:   "kernels.host"() {instruction = 2 : i64, op = "route"}
//!
//! The kernels stay in the `gpu.module`; the plan read back takes host steps in place of any
//! planned step (`pipeline/adopt_kernels.rs`).

use super::func_ops::module_ops;
use crate::core::read::{op_name, PLAN_OF};
use crate::pipeline::{adopt, print_plan, Compilation, PassError};
use melior::ir::operation::{OperationLike, OperationRef};
use melior::Context;
use ppmoe_runtime::program::{GpuOp, Program};
use std::collections::HashSet;

/// The kinds of step `steps` may name: the plan ops that run something of their own.
pub const KINDS: &[&str] = &[
    "launch",
    "pointwise",
    "route",
    "cublas_gemm",
    "moe_experts",
    "moe_local_experts",
    "moe_alltoall_experts",
    "embedding",
    "alias",
];

/// The steps to run on the host: kinds and instruction numbers (none by default).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostSteps {
    pub kinds: Vec<String>,
    pub instructions: Vec<usize>,
}

impl HostSteps {
    /// `none`, or a comma list of kinds (`all` among them) and instruction numbers.
    pub fn parse(text: &str) -> Result<HostSteps, String> {
        let mut steps = HostSteps::default();
        if text == "none" {
            return Ok(steps);
        }
        for item in text.split(',').map(str::trim) {
            if let Ok(i) = item.parse::<usize>() {
                steps.instructions.push(i);
            } else if item == "all" || KINDS.contains(&item) {
                steps.kinds.push(item.into());
            } else {
                return Err(format!(
                    "'{item}' is no step: expected an instruction's number, all, or one of {}",
                    KINDS.join(", ")
                ));
            }
        }
        Ok(steps)
    }

    /// As `parse` reads it.
    pub fn spelled(&self) -> String {
        let numbers = self.instructions.iter().map(|i| i.to_string());
        let items: Vec<String> = self.kinds.iter().cloned().chain(numbers).collect();
        match items.is_empty() {
            true => "none".into(),
            false => items.join(","),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty() && self.instructions.is_empty()
    }

    /// Whether step `i` (`step`) is named, by its kind or its number.
    fn names(&self, i: usize, step: &GpuOp) -> bool {
        let kind = crate::pipeline::step_kind(step);
        self.instructions.contains(&i)
            || self
                .kinds
                .iter()
                .any(|k| k == "all" || Some(k.as_str()) == kind)
    }
}

/// Moves the named steps of every rank's plan to the host and writes the plans into the
/// module in place of its own; returns how many steps it moved.
pub fn move_to_host(
    context: &Context,
    module: &OperationRef,
    c: &mut Compilation,
) -> Result<usize, PassError> {
    let steps = c.options.host_steps.clone();
    if steps.is_empty() {
        return Ok(0);
    }
    adopt(c, module)?;
    let longest = c.ranks.iter().map(|r| r.program.instructions.len()).max();
    if let Some(&i) = (steps.instructions.iter()).find(|&&i| longest.is_none_or(|n| i >= n)) {
        let n = longest.unwrap_or(0);
        return Err(format!(
            "--host-steps {i}: no rank has an instruction {i} (the longest program has {n})"
        )
        .into());
    }
    let mut moved = 0;
    for (rp, plan) in c.ranks.iter().zip(c.kernel_plans.iter_mut()) {
        let before = plan.lowered.clone();
        plan.lowered = on_host(&rp.program, &before, &steps);
        moved += (before.iter().zip(&plan.lowered))
            .filter(|(a, b)| a != b)
            .count();
    }
    let plans: Vec<OperationRef> = (module_ops(module)?.into_iter())
        .filter(|op| op_name(op) == "func.func" && op.attribute(PLAN_OF).is_ok())
        .collect();
    if plans.len() != c.ranks.len() {
        return Err(format!("{} plans for {} ranks", plans.len(), c.ranks.len()).into());
    }
    for ((old, rp), plan) in plans.into_iter().zip(&c.ranks).zip(&c.kernel_plans) {
        super::plan_kernels::place_after(context, &old, &print_plan(rp, plan))?;
        // SAFETY: the plan function is read by nothing (its ops name kernels, not it), and no
        // handle to it is used after.
        unsafe { super::dead_ops::erase_op(old) };
    }
    Ok(moved)
}

/// The plan with the steps `steps` names on the host, each with its members.
fn on_host(p: &Program, plan: &[GpuOp], steps: &HostSteps) -> Vec<GpuOp> {
    let owner = |i: usize| match plan[i] {
        GpuOp::Fused { into } => into,
        GpuOp::ReducedBy { step } => step,
        _ => i,
    };
    // A step that runs something of its own moves where it, or a member of it, is named.
    let named: HashSet<usize> = (0..plan.len())
        .filter(|&i| steps.names(i, &plan[i]))
        .map(owner)
        .filter(|&o| crate::pipeline::step_kind(&plan[o]).is_some())
        .collect();
    let step = |(i, g): (usize, &GpuOp)| match named.contains(&owner(i)) {
        true if p.instructions[i].op.is_communication() => GpuOp::Collective,
        true => GpuOp::Host,
        false => g.clone(),
    };
    plan.iter().enumerate().map(step).collect()
}
