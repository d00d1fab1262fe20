//! The `kernels` stage's IR read back. Its programs read as the pipelined stage's do; each
//! rank's plan is read from its plan function, op for op, and is what the bundle ships. Each
//! step must be the one `ppmoe-plan-kernels` makes for its instruction, or a step the runtime
//! can always take in its place: `kernels.host` for any instruction but a collective (the CPU
//! kernel runs it: a kernel suspected of a wrong result is so taken out of the run), and
//! `kernels.nccl` for a collective its experts step did (PPMoE's all-reduce, all-to-all's
//! exchanges) where that step now runs on the host. The runtime's own
//! checks of the plan (a fused member named by its step, and the step by each member) hold
//! for the plan read. The kernels' names and signatures must be the planned ones, their bodies
//! are the IR's: a kernel edited in the IR is what the bundle's PTX is built from.

use super::plan_ops::{print_plan, read_plan};
use super::Compilation;
use crate::codegen::KernelPlan;
use crate::core::read::{op_name, PLAN_OF};
use crate::distribute::shard_moe::RankProgram;
use crate::passes::plan_kernels::parse_in_container;
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::RegionLike;
use ppmoe_runtime::program::{GpuOp, Op};
use std::collections::{BTreeMap, BTreeSet};

/// What a module holds of the kernels stage: per plan (by the program it names) its ops, and
/// per `gpu.module` (by name) its kernels' names and signatures and its own text.
#[derive(Default)]
struct Held<'c, 'a> {
    plans: BTreeMap<String, Vec<OperationRef<'c, 'a>>>,
    kernels: BTreeMap<String, (Vec<(String, String)>, String)>,
}

/// Takes each rank's plan and kernels from the module, once they are checked against the plan
/// its program gets.
pub(super) fn adopt_plans(c: &mut Compilation, module: &OperationRef) -> Result<(), String> {
    crate::passes::plan_kernels::plan_ranks(c);
    let ir = held(module)?;
    let ranks: BTreeSet<String> = (c.ranks.iter())
        .map(|rp| format!("@rank{}", rp.program.rank))
        .collect();
    if !ir.plans.keys().eq(ranks.iter()) {
        return Err(format!(
            "plans of {:?} ({PLAN_OF}); the programs are {ranks:?}",
            ir.plans.keys().collect::<Vec<_>>()
        ));
    }
    if ir.kernels.len() != ranks.len() {
        return Err(format!(
            "{} gpu.modules, where the plan has {}",
            ir.kernels.len(),
            ranks.len()
        ));
    }
    for (rp, plan) in c.ranks.iter().zip(c.kernel_plans.iter_mut()) {
        let of = format!("@rank{}", rp.program.rank);
        let taken =
            take_plan(rp, plan, &ir.plans[&of]).map_err(|e| format!("the plan of {of}: {e}"))?;
        take_kernels(rp, plan, &ir)?;
        plan.lowered = taken;
    }
    Ok(())
}

/// The rank's plan as the module holds it: read, each step checked against the planned one,
/// the whole checked as the runtime checks a bundle's, and the ops as written checked to be
/// what the steps read print.
fn take_plan(
    rp: &RankProgram,
    planned: &KernelPlan,
    ops: &[OperationRef],
) -> Result<Vec<GpuOp>, String> {
    let program = &rp.program;
    let n = program.instructions.len();
    if ops.len() != n {
        return Err(format!(
            "{} ops, where the program has {n} instructions",
            ops.len()
        ));
    }
    let taken = read_plan(ops, program.rank)?;
    for (i, (step, want)) in taken.iter().zip(&planned.lowered).enumerate() {
        if step != want && !stands_in(&program.instructions[i].op, want, step) {
            // The planned op as MLIR prints it, made only for the error.
            let planned_ops = printed_plan(rp, planned)?;
            return Err(format!(
                "op {i} is `{}`; the plan ppmoe-plan-kernels makes for the program is `{}` (or `kernels.host` in its place)",
                ops[i], planned_ops[i]
            ));
        }
    }
    let mut checked = program.clone();
    checked.gpu = taken.clone();
    checked.validate()?;
    let taken = KernelPlan {
        lowered: taken,
        module: planned.module.clone(),
    };
    check_as_printed(rp, &taken, ops)?;
    Ok(taken.lowered)
}

/// Each op is what the step it reads as prints: a field the step does not read (an experts
/// step's `grouping`, which its kernels decide; an instruction's `op`) is the one it prints.
fn check_as_printed(
    rp: &RankProgram,
    taken: &KernelPlan,
    ops: &[OperationRef],
) -> Result<(), String> {
    let reprinted = printed_plan(rp, taken)?;
    for (i, (op, printed)) in ops.iter().zip(&reprinted).enumerate() {
        if op.to_string() != *printed {
            return Err(format!(
                "op {i} is `{op}`, where the step it reads as prints `{printed}`: a field is not the one its kernels or its instruction give"
            ));
        }
    }
    Ok(())
}

/// Whether `step` may run an instruction planned as `planned`: on the host (any op but a
/// collective), or a collective planned as done by an experts step (PPMoE's all-reduce,
/// all-to-all's exchange) done by NCCL on its own.
fn stands_in(op: &Op, planned: &GpuOp, step: &GpuOp) -> bool {
    match step {
        GpuOp::Host => !op.is_communication(),
        GpuOp::Collective => {
            op.is_communication()
                && matches!(planned, GpuOp::ReducedBy { .. } | GpuOp::Fused { .. })
        }
        _ => false,
    }
}

/// A plan's ops as MLIR prints them, for comparison with a module's.
fn printed_plan(rp: &RankProgram, plan: &KernelPlan) -> Result<Vec<String>, String> {
    let context = ppmoe_dialect::context();
    let parsed = parse_in_container(&context, &print_plan(rp, plan))?;
    let held = held(&parsed.as_operation())?;
    let ops = held.plans.into_values().next().ok_or("a plan")?;
    Ok(ops.iter().map(|o| o.to_string()).collect())
}

/// The rank's kernels' bodies taken from the module, their names and signatures the planned
/// ones.
fn take_kernels(rp: &RankProgram, plan: &mut KernelPlan, ir: &Held) -> Result<(), String> {
    let name = format!("rank{}_kernels", rp.program.rank);
    let (ir_kernels, ir_text) = ir
        .kernels
        .get(&name)
        .ok_or_else(|| format!("the module has no gpu.module @{name}"))?;
    let context = ppmoe_dialect::context();
    let parsed = parse_in_container(&context, &plan.module)?;
    let planned = held(&parsed.as_operation())?;
    let (planned_kernels, _) = planned.kernels.get(&name).ok_or("planned kernels")?;
    if ir_kernels != planned_kernels {
        return Err(format!(
            "gpu.module @{name}: its kernels and their signatures are not those its plan launches ({}); edit the kernels' bodies, not their names or parameters",
            differing(ir_kernels, planned_kernels)
        ));
    }
    plan.module = format!("  {ir_text}\n");
    Ok(())
}

/// The first kernel that differs, for the error.
fn differing(ir: &[(String, String)], planned: &[(String, String)]) -> String {
    match ir.iter().zip(planned).find(|(a, b)| a != b) {
        Some((a, b)) => format!("@{} {} where the plan has @{} {}", a.0, a.1, b.0, b.1),
        None => format!("{} kernels, where the plan has {}", ir.len(), planned.len()),
    }
}

fn held<'c, 'a>(module: &OperationRef<'c, 'a>) -> Result<Held<'c, 'a>, String> {
    let mut held = Held::default();
    for op in crate::passes::func_ops::module_ops(module)? {
        match op_name(&op).as_str() {
            "func.func" => {
                if let Ok(of) = op.attribute(PLAN_OF) {
                    let ops = ops_in(&op);
                    let steps = ops.into_iter().filter(|o| op_name(o) != "func.return");
                    held.plans.insert(of.to_string(), steps.collect());
                }
            }
            "gpu.module" => {
                let name = symbol(&op).ok_or("a gpu.module without its name")?;
                let kernels = (ops_in(&op).into_iter())
                    .filter(|k| op_name(k) == "gpu.func")
                    .map(|k| {
                        let signature = k.attribute("function_type").map(|t| t.to_string());
                        (
                            symbol(&k).unwrap_or_default(),
                            signature.unwrap_or_default(),
                        )
                    })
                    .collect();
                held.kernels.insert(name, (kernels, op.to_string()));
            }
            _ => {}
        }
    }
    Ok(held)
}

fn symbol(op: &OperationRef) -> Option<String> {
    op.attribute("sym_name")
        .ok()
        .and_then(crate::core::read::attribute_text)
}

/// The ops of an op's first region's first block.
fn ops_in<'c, 'a>(op: &OperationRef<'c, 'a>) -> Vec<OperationRef<'c, 'a>> {
    let block = op.region(0).ok().and_then(|r| r.first_block());
    block
        .map(crate::passes::func_ops::block_ops)
        .unwrap_or_default()
}
