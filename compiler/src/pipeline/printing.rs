//! How each stage prints: the `core` and `moe` stages' one program, the ranks of the later
//! ones (each under the header that makes it read back), the kernel plans and the PTX.

use super::plan_ops::print_plan;
use super::{Compilation, DEFAULT_EVAL_LIMIT_BYTES};
use crate::core::print::Marks;
use crate::distribute::shard_moe::RankProgram;
use crate::distribute::{Grid, Strategy};
use crate::passes::raise_moe::CapacityPolicy;
use std::path::Path;

/// Per rank: its pipelined program (which reads back), its `gpu.module` of kernels, and its
/// plan, a function `@rank<N>_plan` (marked `kernels.plan_of = @rank<N>`) of its program's
/// instructions as launches, GEMMs, collectives, aliases and host work, in order.
pub(super) fn print_kernels(c: &Compilation) -> Option<String> {
    let beside: Vec<String> = (c.ranks.iter().zip(&c.kernel_plans))
        .map(|(rp, plan)| format!("{}{}", plan.module, print_plan(rp, plan)))
        .collect();
    let text = print_ranks_with(c, &c.ranks, "kernels", &beside)?;
    Some(text.replacen(
        "module attributes {",
        "module attributes {gpu.container_module, ",
        1,
    ))
}

pub(super) fn print_ptx(c: &Compilation) -> String {
    c.ptx
        .iter()
        .map(|(name, ptx)| format!("// ---- {name} ----\n{ptx}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) fn print_ranks(c: &Compilation, ranks: &[RankProgram], stage: &str) -> Option<String> {
    print_ranks_with(c, ranks, stage, &[])
}

/// `print_ranks`, with `beside` following each rank's function (its kernels and plan).
fn print_ranks_with(
    c: &Compilation,
    ranks: &[RankProgram],
    stage: &str,
    beside: &[String],
) -> Option<String> {
    let grid = c.options.grid.unwrap_or(Grid::ONE);
    let programs: Vec<&ppmoe_runtime::program::Program> =
        ranks.iter().map(|r| &r.program).collect();
    // Dense TP's pieces and the layers' strategies are marked in the sharded stage, where
    // `ppmoe-rewrite` reads them.
    let strategies: Vec<&str> = c.choices.iter().map(|choice| choice.name()).collect();
    let marks = if stage == "sharded" {
        Marks {
            rank_pieces: &c.rank_pieces,
            strategies: &strategies,
            beside,
        }
    } else {
        Marks {
            beside,
            ..Marks::default()
        }
    };
    Some(crate::core::print::print_stage(
        &programs,
        Some((&grid.mlir(), grid.tp, grid.pp)),
        c.options.microbatches.max(1),
        &marks,
        &header(c, stage).to_mlir(),
    ))
}

/// The `core` and `moe` stages: the one program, under its header.
pub(super) fn print_one(c: &Compilation, stage: &str) -> Option<String> {
    let core = c.core.as_ref()?;
    Some(crate::core::print::print_stage(
        &[&core.program],
        None,
        c.options.microbatches.max(1),
        &Marks::default(),
        &header(c, stage).to_mlir(),
    ))
}

/// The module attributes of `stage`'s header, as MLIR text.
pub(super) fn header_of(c: &Compilation, stage: &str) -> String {
    header(c, stage).to_mlir()
}

/// What the IR of `stage` says of itself: the stage, and the source of its weights with the
/// options that made them (the model's path made absolute, so the file reads back anywhere).
fn header(c: &Compilation, stage: &str) -> crate::core::header::IrHeader {
    let o = &c.options;
    let later = matches!(stage, "sharded" | "pipelined" | "kernels");
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    crate::core::header::IrHeader {
        stage: stage.into(),
        source: crate::core::header::WeightSource {
            model: absolute(&o.path),
            weights: o.weights.as_deref().map(absolute),
            input_shapes: o.input_shapes.clone(),
            microbatches: o.microbatches.max(1),
            eval_limit: o.eval_limit.unwrap_or(DEFAULT_EVAL_LIMIT_BYTES),
            capacity: o.capacity_policy.unwrap_or(CapacityPolicy::Keep),
            strategy: later.then(|| {
                crate::core::header::strategy_name(o.strategy.unwrap_or(Strategy::Ppmoe)).into()
            }),
            dtype: later.then(|| crate::core::header::dtype_name(o.weight_dtype).into()),
            pipeline: (!c.history.is_empty()).then(|| c.history.join(", ")),
        },
    }
}
