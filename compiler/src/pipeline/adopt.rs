//! The compilation takes its programs from a module: what makes the module, not the
//! compilation's own copy, the IR that the next pass transforms and the bundle ships. Weights
//! are not IR: each program read keeps the compilation's weights under the names its arguments
//! give, each checked against its argument's type (moved, never copied).

use super::Compilation;
use crate::core::header::IrHeader;
use crate::core::print::tensor_type;
use crate::core::read::{read_programs, read_programs_marked, ReadProgram};
use crate::core::CoreProgram;
use crate::distribute::shard_moe::RankProgram;
use crate::passes::int_compare::exact_integers;
use crate::passes::ppmoe_rewrite::marked_strategies;
use melior::ir::operation::OperationRef;
use ppmoe_runtime::program::{Buffer, BufferKind, Op, Program};
use ppmoe_runtime::{DType, Tensor};
use std::collections::HashMap;

/// The stages whose IR reads back.
pub const READABLE: &[&str] = &["core", "moe", "sharded", "pipelined", "kernels"];

/// Replaces the compilation's programs of the module's stage by the module's; returns the
/// stage. The compilation must hold that stage (its weights are what the programs take).
pub fn adopt(c: &mut Compilation, module: &OperationRef) -> Result<String, String> {
    let stage = IrHeader::read(module)?.stage;
    check_readable(&stage)?;
    let read = validated(read_programs_marked(module)?)?;
    match stage.as_str() {
        "core" | "moe" => adopt_one(c, read, &stage)?,
        "kernels" => {
            adopt_ranks(c, read, &stage)?;
            super::adopt_kernels::adopt_plans(c, module)?;
        }
        "sharded" => {
            if let Some(choices) = marked_strategies(module)? {
                c.choices = choices;
            }
            adopt_ranks(c, read, &stage)?
        }
        _ => adopt_ranks(c, read, &stage)?,
    }
    Ok(stage)
}

/// The ranks' programs read from the `ptx` stage's module, the last the compiler makes: what
/// the bundle ships (its rank functions are the pipelined ones, which the kernels stage and
/// upstream's GPU lowering leave as they are; the plans and the PTX are read beside them).
pub fn adopt_final(c: &mut Compilation, module: &OperationRef) -> Result<(), String> {
    let read = validated(read_programs_marked(module)?)?;
    adopt_ranks(c, read, "ptx")
}

/// The programs `read`, each checked as the runtime checks a bundle's program, before any pass,
/// kernel or bundle takes it (a body read wrongly must not reach them).
fn validated(read: Vec<ReadProgram>) -> Result<Vec<ReadProgram>, String> {
    for (k, r) in read.iter().enumerate() {
        r.program
            .validate()
            .map_err(|e| format!("function {k} (@rank{}): {e}", r.program.rank))?;
    }
    Ok(read)
}

/// Whether IR of `stage` reads back; the error names the stages whose IR does.
pub fn check_readable(stage: &str) -> Result<(), String> {
    if READABLE.contains(&stage) {
        return Ok(());
    }
    Err(format!(
        "IR of stage '{stage}' does not read back yet; IR of these stages does: {}",
        READABLE.join(", ")
    ))
}

/// The `core` or `moe` stage's one program (and, at `core`, the few-token program numbered as
/// the module's, where it has the module's structure).
fn adopt_one(c: &mut Compilation, read: Vec<ReadProgram>, stage: &str) -> Result<(), String> {
    let [one]: [ReadProgram; 1] = read.try_into().map_err(|r: Vec<ReadProgram>| {
        format!("stage '{stage}' holds one function, not {}", r.len())
    })?;
    let program = one.program;
    let held = c
        .core
        .take()
        .ok_or_else(|| format!("no program of stage '{stage}' to take the module's"))?;
    let weights = attach_weights(&program, held.weights.into_iter().collect(), stage)?;
    let layers = (program.instructions.iter())
        .filter(|i| matches!(i.op, Op::MoeExperts { .. }))
        .count();
    if layers != held.moe_layers.len() {
        return Err(format!(
            "{layers} moe.experts ops, where the source's lowering found {} MoE layers",
            held.moe_layers.len()
        ));
    }
    let name_of = |ids: &[usize]| -> Vec<String> {
        ids.iter()
            .map(|&i| program.buffers[i].name.clone())
            .collect()
    };
    let core = CoreProgram {
        input_names: name_of(&program.inputs),
        output_names: name_of(&program.outputs),
        program,
        weights,
        moe_layers: held.moe_layers,
        run_time_nodes: held.run_time_nodes,
    };
    c.probe_core = match (stage, c.probe_core.take()) {
        ("core", Some(p)) => renumbered_probe(p, &core.program),
        _ => None,
    };
    c.core = Some(core);
    Ok(())
}

/// A later stage's programs, each with the weights of the held program of the same rank;
/// at `sharded`, the rank pieces the module marks.
fn adopt_ranks(c: &mut Compilation, read: Vec<ReadProgram>, stage: &str) -> Result<(), String> {
    if stage != "sharded" && c.ranks.is_empty() {
        c.ranks = laid_out(&c.sharded, &read)?;
    }
    let held = match stage {
        "sharded" => &mut c.sharded,
        _ => &mut c.ranks,
    };
    if read.len() != held.len() {
        return Err(format!(
            "{} functions, where the lowering to stage {stage} has {} ranks",
            read.len(),
            held.len()
        ));
    }
    if stage == "sharded" {
        c.rank_pieces = read.iter().map(|r| r.rank_pieces.clone()).collect();
    }
    let ranks = std::mem::take(held);
    *held = read
        .into_iter()
        .zip(ranks)
        .map(|(r, rp)| {
            let weights = attach_weights(&r.program, rp.weights.into_iter().collect(), stage)
                .map_err(|e| format!("@rank{}: {e}", r.program.rank))?;
            Ok(RankProgram {
                program: r.program,
                weights,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(())
}

/// Where the ranks' programs come from the sharded stage (`ppmoe-pipeline-split` lays the
/// sharded functions out on the grid): each rank holds, until its program takes its own, the
/// weights of its tp index's sharded program (shared, not copied).
fn laid_out(sharded: &[RankProgram], read: &[ReadProgram]) -> Result<Vec<RankProgram>, String> {
    (read.iter())
        .map(|r| {
            let [_, _, t] = r.program.coords;
            let of_t = sharded.get(t).ok_or_else(|| {
                format!(
                    "@rank{}: tp index {t}, where the sharded stage has {} programs",
                    r.program.rank,
                    sharded.len()
                )
            })?;
            Ok(RankProgram {
                program: Program::empty(),
                weights: of_t.weights.clone(),
            })
        })
        .collect()
}

/// The weights `program`'s arguments name, taken from `by_name`, each checked against its
/// argument's type (an exact integer weight taken as the f32 its argument declares).
fn attach_weights(
    program: &Program,
    mut by_name: HashMap<String, Tensor>,
    stage: &str,
) -> Result<Vec<(String, Tensor)>, String> {
    let mut weights = Vec::new();
    for b in program
        .buffers
        .iter()
        .filter(|b| b.kind == BufferKind::Weight)
    {
        let t = by_name.remove(&b.name).ok_or_else(|| {
            format!(
                "weight '{}' is not among the source's weights at stage {stage}",
                b.name
            )
        })?;
        let t = as_declared(t, b);
        let held = Buffer {
            shape: t.shape.iter().copied().map(Some).collect(),
            dtype: t.dtype,
            ..b.clone()
        };
        if held.dtype != b.dtype || held.shape != b.shape {
            return Err(format!(
                "weight '{}': the IR takes {}, the source holds {}",
                b.name,
                tensor_type(b),
                tensor_type(&held)
            ));
        }
        weights.push((b.name.clone(), t));
    }
    Ok(weights)
}

/// An integer weight whose argument is f32 (`ppmoe-compare-as-f32` declares it so) converted,
/// where every value is exact in f32; any other weight as it is (checked by the caller).
fn as_declared(t: Tensor, b: &Buffer) -> Tensor {
    let shape_held = t
        .shape
        .iter()
        .copied()
        .map(Some)
        .eq(b.shape.iter().copied());
    if b.dtype == DType::F32 && shape_held && exact_integers(&t) {
        let values = t.to_i64().iter().map(|&v| v as f32).collect();
        return Tensor::f32(t.shape, values);
    }
    t
}

/// The few-token program numbered as the module's (printed and read back, as the module was),
/// where the two have the same structure; else none, and the raise works at the compile size.
fn renumbered_probe(probe: CoreProgram, program: &Program) -> Option<CoreProgram> {
    let text = crate::core::print::print_core(&[&probe.program]);
    let context = ppmoe_dialect::context();
    let module = ppmoe_dialect::parse_verified(&context, &text).ok()?;
    let read = read_programs(&module.as_operation()).ok()?.pop()?;
    match crate::moe::probe::same_structure(program, &read) {
        Ok(()) => Some(CoreProgram {
            program: read,
            ..probe
        }),
        Err(why) => {
            tracing::info!("moe: the IR's program is not the few-token one ({why})");
            None
        }
    }
}
