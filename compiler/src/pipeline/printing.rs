//! How each stage prints: the `core` and `moe` stages' one program, the ranks of the later
//! ones (each under the header that makes it read back), the kernel plans and the PTX.

use super::{Compilation, DEFAULT_EVAL_LIMIT_BYTES};
use crate::core::print::Marks;
use crate::core::read::PLAN_OF;
use crate::distribute::shard_moe::RankProgram;
use crate::distribute::{Grid, Strategy};
use crate::passes::raise_moe::CapacityPolicy;
use std::collections::HashSet;
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

/// One rank's plan as a function of `kernels` ops, one per instruction.
pub(crate) fn print_plan(rp: &RankProgram, plan: &crate::codegen::KernelPlan) -> String {
    use crate::codegen::Lowered;
    let kernels = kernel_names(&plan.module);
    let r = rp.program.rank;
    let mut s = format!("  func.func @rank{r}_plan() attributes {{{PLAN_OF} = @rank{r}}} {{\n");
    for (i, (ins, l)) in rp
        .program
        .instructions
        .iter()
        .zip(&plan.lowered)
        .enumerate()
    {
        let line = match l {
            Lowered::Kernel { name, threads, bf16 } => format!("\"kernels.launch\"() {{kernel = @rank{r}_kernels::@{name}, threads = {threads} : i64, {}instruction = {i} : i64}}", bf16_params(bf16)),
            Lowered::Pointwise { name, threads, members, bf16, .. } => format!("\"kernels.launch\"() {{kernel = @rank{r}_kernels::@{name}, threads = {threads} : i64, fused = array<i64: {}>, {}instruction = {i} : i64}}", members.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", "), bf16_params(bf16)),
            Lowered::Gemm => format!("\"kernels.cublas_gemm\"() {{instruction = {i} : i64}}"),
            Lowered::Route { name, threads, .. } => format!("\"kernels.launch\"() {{kernel = @rank{r}_kernels::@{name}, threads = {threads} : i64, instruction = {i} : i64}}"),
            Lowered::Experts { prefix, bf16 } => format!(
                "\"kernels.moe_experts\"() {{gather = @rank{r}_kernels::@{prefix}_gather, act = @rank{r}_kernels::@{prefix}_act, combine = @rank{r}_kernels::@{prefix}_combine, {}, activations = \"{}\", instruction = {i} : i64}}",
                experts_path(&kernels, prefix),
                if *bf16 { "bf16" } else { "f32" }
            ),
            Lowered::LocalExperts { prefix, bf16, slice, ffn, reduce } => format!(
                "\"kernels.moe_local_experts\"() {{gather = @rank{r}_kernels::@{prefix}_gather, act = @rank{r}_kernels::@{prefix}_act, combine = @rank{r}_kernels::@{prefix}_combine, {}, activations = \"{}\", slice = {slice} : i64, ffn = {ffn} : i64, {}instruction = {i} : i64}}",
                experts_path(&kernels, prefix),
                if *bf16 { "bf16" } else { "f32" },
                reduce.map_or(String::new(), |r| format!("all_reduce = {r} : i64, overlap = \"chunked, second stream\", "))
            ),
            Lowered::ReducedBy { step } => format!("\"kernels.reduced_by\"() {{op = \"{}\", step = {step} : i64, instruction = {i} : i64}}", ins.op.name()),
            Lowered::AllToAllExperts { prefix, bf16, dispatch, exchange, ffn, .. } => format!(
                "\"kernels.moe_alltoall_experts\"() {{gather = @rank{r}_kernels::@{prefix}_gather, act = @rank{r}_kernels::@{prefix}_act, combine = @rank{r}_kernels::@{prefix}_combine, grouping = \"host\", gemms = \"cublas grouped\", exchange = \"nccl ragged send/recv\", activations = \"{}\", dispatch = {dispatch} : i64, all_to_all = {exchange} : i64, ffn = {ffn} : i64, instruction = {i} : i64}}",
                if *bf16 { "bf16" } else { "f32" }
            ),
            Lowered::Embedding { name } => format!("\"kernels.embedding\"() {{kernel = @rank{r}_kernels::@{name}, instruction = {i} : i64}}"),
            Lowered::Fused { into } => format!("\"kernels.fused\"() {{op = \"{}\", into = {into} : i64, instruction = {i} : i64}}", ins.op.name()),
            Lowered::Collective => format!("\"kernels.nccl\"() {{op = \"{}\", instruction = {i} : i64}}", ins.op.name()),
            Lowered::Alias => format!("\"kernels.alias\"() {{instruction = {i} : i64}}"),
            Lowered::Host => format!("\"kernels.host\"() {{op = \"{}\", instruction = {i} : i64}}", ins.op.name()),
        };
        s.push_str(&format!("    {line} : () -> ()\n"));
    }
    s.push_str("    func.return\n  }\n");
    s
}

/// The names of the kernels a `gpu.module`'s text defines.
fn kernel_names(module: &str) -> HashSet<&str> {
    module
        .split("gpu.func @")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .collect()
}

/// Where an experts step's slots are grouped by expert and what multiplies them, as the
/// kernels generated for it say (the runtime takes the first it has, see its
/// `expert_source`): routed on the device where it has the slot listing `dgroup` (generated
/// projections: on the tensor cores, else on the CUDA cores; a few tokens' two kernels come
/// only beside it), grouped on the device for cuBLAS's pointer-batched GEMMs, or on the host
/// (the routing read back) for cuBLAS's grouped GEMMs.
fn experts_path(kernels: &HashSet<&str>, prefix: &str) -> String {
    use ppmoe_runtime::program::{PP_KERNELS, QP_KERNELS, SP_KERNELS, TC_KERNELS, WG_KERNELS};
    let has = |suffix: &str| kernels.contains(format!("{prefix}_{suffix}").as_str());
    let (grouping, gemms) = if has("dgroup") {
        let tensor = [TC_KERNELS, WG_KERNELS, SP_KERNELS, PP_KERNELS, QP_KERNELS]
            .iter()
            .flatten()
            .any(|k| has(k));
        let gemms = if tensor {
            "generated, tensor cores"
        } else {
            "generated, cuda cores"
        };
        ("device, routed", gemms)
    } else if has("tgroup") {
        ("device", "cublas pointer-batched")
    } else {
        ("host", "cublas grouped")
    };
    format!("grouping = \"{grouping}\", gemms = \"{gemms}\"")
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

/// A kernel launch's bf16 parameters as an attribute (`bf16 = array<i64: ..>, `), or nothing.
fn bf16_params(list: &[usize]) -> String {
    if list.is_empty() {
        return String::new();
    }
    let list: Vec<String> = list.iter().map(|k| k.to_string()).collect();
    format!("bf16 = array<i64: {}>, ", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::{experts_path, kernel_names};

    #[test]
    fn an_experts_steps_path_is_read_from_its_kernels() {
        let func = |name: &str| {
            format!("    gpu.func @k3_experts_{name}(%arg0: memref<?xf32>) kernel {{\n")
        };
        let module = |names: &[&str]| names.iter().map(|n| func(n)).collect::<String>();
        let path = |names: &[&str]| experts_path(&kernel_names(&module(names)), "k3_experts");
        // The persistent projections with the activation fused have no `_in` kernel.
        let tensor = path(&["gather", "dgroup", "pproj_act", "pproj_out", "tgroup"]);
        assert_eq!(
            tensor,
            "grouping = \"device, routed\", gemms = \"generated, tensor cores\""
        );
        let cuda = path(&["dgroup", "dproj_in", "dproj_out", "tgroup"]);
        assert_eq!(
            cuda,
            "grouping = \"device, routed\", gemms = \"generated, cuda cores\""
        );
        let few = path(&[
            "dgroup",
            "dproj_in",
            "dproj_out",
            "dtok_in_bf16",
            "dtok_out",
        ]);
        assert_eq!(
            few,
            "grouping = \"device, routed\", gemms = \"generated, cuda cores\""
        );
        let grouped = path(&["gather", "act", "combine", "tgroup"]);
        assert_eq!(
            grouped,
            "grouping = \"device\", gemms = \"cublas pointer-batched\""
        );
        assert_eq!(
            path(&["gather", "act", "combine"]),
            "grouping = \"host\", gemms = \"cublas grouped\""
        );
        // Another step's kernels are not this one's.
        let module = func("dgroup").replace("k3_", "k30_");
        let other = experts_path(&kernel_names(&module), "k3_experts");
        assert_eq!(other, "grouping = \"host\", gemms = \"cublas grouped\"");
    }
}
