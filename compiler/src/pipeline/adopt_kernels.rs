//! The `kernels` stage's IR read back. Its programs read as the pipelined stage's do; each
//! rank's plan is made again from its program (`ppmoe-plan-kernels`) and must be the plan the
//! IR holds, op for op, with kernels of the same names and signatures; the kernels' bodies are
//! the IR's. So a kernel edited in the IR is what the bundle's PTX is built from, while a plan
//! that no longer fits its program (a launch of another kernel, a step moved) is refused by
//! name.

use super::Compilation;
use crate::core::read::{op_name, PLAN_OF};
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::RegionLike;
use std::collections::BTreeMap;

/// What the checks compare of a module: per plan (by the program it names) its ops as printed,
/// and per `gpu.module` (by name) its kernels' names and signatures and its own text.
#[derive(Default)]
struct Held {
    plans: BTreeMap<String, Vec<String>>,
    kernels: BTreeMap<String, (Vec<(String, String)>, String)>,
}

/// Plans the programs just read again and checks the module holds that plan; the kernels are
/// taken from the module.
pub(super) fn adopt_plans(c: &mut Compilation, module: &OperationRef) -> Result<(), String> {
    crate::passes::plan_kernels::plan_ranks(c);
    let text = super::printing::print_kernels(c).ok_or("no kernel plans to compare")?;
    let context = ppmoe_dialect::context();
    let planned = ppmoe_dialect::parse_verified(&context, &text)?;
    let (ir, expected) = (held(module)?, held(&planned.as_operation())?);
    check_plans(&ir, &expected)?;
    for (rp, plan) in c.ranks.iter().zip(c.kernel_plans.iter_mut()) {
        let name = format!("rank{}_kernels", rp.program.rank);
        let (ir_kernels, ir_text) = ir
            .kernels
            .get(&name)
            .ok_or_else(|| format!("the module has no gpu.module @{name}"))?;
        let (planned_kernels, _) = expected.kernels.get(&name).ok_or("planned kernels")?;
        if ir_kernels != planned_kernels {
            return Err(format!(
                "gpu.module @{name}: its kernels and their signatures are not those its plan launches ({}); edit the kernels' bodies, not their names or parameters",
                differing(ir_kernels, planned_kernels)
            ));
        }
        plan.module = format!("  {ir_text}\n");
    }
    if ir.kernels.len() != expected.kernels.len() {
        return Err(format!(
            "{} gpu.modules, where the plan has {}",
            ir.kernels.len(),
            expected.kernels.len()
        ));
    }
    Ok(())
}

/// The module's plans must be the planned ones, op for op.
fn check_plans(ir: &Held, expected: &Held) -> Result<(), String> {
    if ir.plans.keys().ne(expected.plans.keys()) {
        return Err(format!(
            "plans of {:?} ({PLAN_OF}); the programs are {:?}",
            ir.plans.keys().collect::<Vec<_>>(),
            expected.plans.keys().collect::<Vec<_>>()
        ));
    }
    for (of, ops) in &ir.plans {
        let planned = &expected.plans[of];
        let at = ops.iter().zip(planned).position(|(a, b)| a != b);
        if let Some(i) = at {
            return Err(format!(
                "the plan of {of}: op {i} is `{}`; the plan ppmoe-plan-kernels makes for the program is `{}`",
                ops[i], planned[i]
            ));
        }
        if ops.len() != planned.len() {
            return Err(format!(
                "the plan of {of} has {} ops; the plan for the program has {}",
                ops.len(),
                planned.len()
            ));
        }
    }
    Ok(())
}

/// The first kernel that differs, for the error.
fn differing(ir: &[(String, String)], planned: &[(String, String)]) -> String {
    match ir.iter().zip(planned).find(|(a, b)| a != b) {
        Some((a, b)) => format!("@{} {} where the plan has @{} {}", a.0, a.1, b.0, b.1),
        None => format!("{} kernels, where the plan has {}", ir.len(), planned.len()),
    }
}

fn held(module: &OperationRef) -> Result<Held, String> {
    let mut held = Held::default();
    for op in crate::passes::func_ops::module_ops(module)? {
        match op_name(&op).as_str() {
            "func.func" => {
                if let Ok(of) = op.attribute(PLAN_OF) {
                    held.plans.insert(of.to_string(), ops_of(&op));
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

/// A plan function's ops, as printed.
fn ops_of(f: &OperationRef) -> Vec<String> {
    ops_in(f).iter().map(|o| o.to_string()).collect()
}
