//! The whole compiler on one screen: the ordered stages of the lowering ladder. Each stage is a
//! name and the function that takes the compilation one rung down; `--emit STAGE` stops after
//! the named stage and prints its IR. Nothing else decides the order.

use crate::core::{
    convert_initializers, lower_to_core_with, CoreProgram, DEFAULT_EVAL_LIMIT_BYTES,
};
use crate::distribute::shard_moe::RankProgram;
use crate::distribute::{Grid, Strategy};
use crate::error::CompileError;
use crate::passes::raise_moe::CapacityPolicy;
use crate::strategy::cost_model::{Choice, Hardware, LayerShape};
use ppmoe_frontend::{Model, Types};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub struct Stage {
    pub name: &'static str,
    /// Takes the compilation from the previous stage to this one.
    pub run: fn(&mut Compilation) -> Result<(), CompileError>,
    /// Prints the IR as it stands after this stage.
    pub print: fn(&Compilation) -> Option<String>,
}

/// The ladder, in order. Stages named in DESIGN.md but not built yet are in `PLANNED`.
pub const STAGES: &[Stage] = &[
    Stage {
        name: "onnx",
        run: import_onnx,
        print: |c| c.onnx_text.clone(),
    },
    Stage {
        name: "core",
        run: lower_core,
        print: |c| print_one(c, "core"),
    },
    Stage {
        name: "moe",
        run: raise_moe,
        print: |c| print_one(c, "moe"),
    },
    Stage {
        name: "sharded",
        run: shard,
        print: |c| print_ranks(c, &c.sharded, "sharded"),
    },
    Stage {
        name: "pipelined",
        run: pipeline,
        print: |c| print_ranks(c, &c.ranks, "pipelined"),
    },
    Stage {
        name: "kernels",
        run: kernels,
        print: |c| Some(print_kernels(c)),
    },
    Stage {
        name: "ptx",
        run: ptx,
        print: |c| Some(print_ptx(c)),
    },
];

/// Stages whose printed form is not MLIR (PTX text): `emit` prints them as they are.
pub const NOT_MLIR: &[&str] = &["ptx"];

/// Stages printed with a header and every op's location (naming the values): the form
/// `ir_input` reads back.
pub const WITH_LOCATIONS: &[&str] = &["core", "moe", "sharded", "pipelined"];

/// What the user asked for: the model, its input shapes, and the flags that steer the stages.
#[derive(Clone, Default)]
pub struct Options {
    pub path: PathBuf,
    pub input_shapes: Vec<(String, Vec<i64>)>,
    /// StableHLO: a safetensors file binding @main's arguments at compile time (`--weights`).
    pub weights: Option<PathBuf>,
    /// How the `moe` stage treats capacity dropping (`--moe-capacity`).
    pub capacity_policy: Option<CapacityPolicy>,
    /// The device grid (`--dp --pp --tp`); 1 x 1 x 1 when not given.
    pub grid: Option<Grid>,
    /// How MoE layers are distributed (`--moe-strategy`).
    pub strategy: Option<Strategy>,
    /// The machine the cost model assumes (`--moe-strategy auto`).
    pub hardware: Option<Hardware>,
    /// GPipe microbatches (`--microbatches`); the programs are compiled for one of them.
    pub microbatches: usize,
    /// `compile --target cuda`: the bundle carries the GPU plan and PTX.
    pub target_cuda: bool,
    /// `--dtype`: the type the weights are stored in (computation stays f32).
    pub weight_dtype: Option<ppmoe_runtime::DType>,
    /// `--eval-limit`: the largest tensor compile-time evaluation may make, in bytes.
    pub eval_limit: Option<usize>,
}

/// What the stages say beside their output, for the user.
#[derive(Default)]
pub struct Diagnostics {
    /// Near misses of the `moe` stage: layers that look like MoE but were not raised, and why.
    pub unraised: Vec<String>,
    /// Where the PPMoE rewrite kept the all-to-all form, and why.
    pub kept_all_to_all: Vec<String>,
}

/// A compilation: its options, what the stages build up (one field per rung), and what they
/// said.
#[derive(Default)]
pub struct Compilation {
    pub options: Options,
    pub diagnostics: Diagnostics,
    pub model: Option<Model>,
    pub types: Option<Types>,
    pub onnx_text: Option<String>,
    pub core: Option<CoreProgram>,
    /// The `sharded` stage: one program per tensor-parallel index.
    pub sharded: Vec<RankProgram>,
    /// The `pipelined` stage: one program per rank of the grid.
    pub ranks: Vec<RankProgram>,
    /// The strategy each MoE layer got.
    pub choices: Vec<Choice>,
    /// The `kernels` stage: per rank, how each instruction runs on the GPU.
    pub kernel_plans: Vec<crate::codegen::KernelPlan>,
    /// The `ptx` stage: per rank's kernel module, its PTX.
    pub ptx: Vec<(String, String)>,
    /// Input shapes of a few tokens (`moe::probe`), where the `moe` stage recognises layers at
    /// a cost that does not grow with the compile size; and the `core` program at the first.
    pub probe_shapes: Vec<Vec<(String, Vec<i64>)>>,
    pub probe_core: Option<CoreProgram>,
    /// The IR file the compilation started from (`ir_input`), where it did not start from the
    /// model (`options.path` is then the model its weights come from).
    pub ir_input: Option<PathBuf>,
}

/// Stores the float weights of a rank in `dt` (rounded once, here); values stay f32 in compute.
fn kernels(c: &mut Compilation) -> Result<(), CompileError> {
    c.kernel_plans = c
        .ranks
        .iter()
        .map(|r| {
            crate::codegen::plan_kernels(
                &r.program,
                &r.weights,
                &format!("rank{}_kernels", r.program.rank),
            )
        })
        .collect();
    Ok(())
}

/// The kernel modules and, per rank, its program as launches, GEMMs, collectives, aliases and
/// host work, in order.
fn print_kernels(c: &Compilation) -> String {
    use crate::codegen::Lowered;
    let mut s = String::from("module attributes {gpu.container_module} {\n");
    for (rp, plan) in c.ranks.iter().zip(&c.kernel_plans) {
        s.push_str(&plan.module);
        let kernels = kernel_names(&plan.module);
        let r = rp.program.rank;
        s.push_str(&format!("  func.func @rank{r}() {{\n"));
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
    }
    s.push_str("}\n");
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

fn ptx(c: &mut Compilation) -> Result<(), CompileError> {
    let mut text = String::from("module attributes {gpu.container_module} {\n");
    for plan in &c.kernel_plans {
        text.push_str(&plan.module);
    }
    text.push_str("}\n");
    c.ptx = crate::codegen::ptx::to_ptx(&text).map_err(|diagnostics| CompileError::Verify {
        path: c.options.path.clone(),
        stage: "ptx".into(),
        diagnostics,
    })?;
    Ok(())
}

fn print_ptx(c: &Compilation) -> String {
    c.ptx
        .iter()
        .map(|(name, ptx)| format!("// ---- {name} ----\n{ptx}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn print_ranks(c: &Compilation, ranks: &[RankProgram], stage: &str) -> Option<String> {
    let grid = c.options.grid.unwrap_or(Grid {
        dp: 1,
        pp: 1,
        tp: 1,
    });
    let programs: Vec<&ppmoe_runtime::program::Program> =
        ranks.iter().map(|r| &r.program).collect();
    Some(crate::core::print::print_stage(
        &programs,
        Some((&grid.mlir(), grid.tp, grid.pp)),
        c.options.microbatches.max(1),
        &header(c, stage).to_mlir(),
    ))
}

/// The `core` and `moe` stages: the one program, under its header.
fn print_one(c: &Compilation, stage: &str) -> Option<String> {
    let core = c.core.as_ref()?;
    Some(crate::core::print::print_stage(
        &[&core.program],
        None,
        c.options.microbatches.max(1),
        &header(c, stage).to_mlir(),
    ))
}

/// What the IR of `stage` says of itself: the stage, and the source of its weights with the
/// options that made them (the model's path made absolute, so the file reads back anywhere).
fn header(c: &Compilation, stage: &str) -> crate::core::header::IrHeader {
    let o = &c.options;
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
        },
    }
}

fn shard(c: &mut Compilation) -> Result<(), CompileError> {
    let grid = c.options.grid.unwrap_or(Grid {
        dp: 1,
        pp: 1,
        tp: 1,
    });
    let strategy = c.options.strategy.unwrap_or(Strategy::Ppmoe);
    let Some(core) = c.core.as_mut() else {
        return Err(CompileError::StageNotBuilt(
            "sharded".into(),
            "it needs the moe stage first".into(),
        ));
    };
    // The ranks' programs take the weights over: expert stacks are cut into rank blocks here,
    // one stack at a time, so no weight is held twice; the rest is shared between ranks.
    let mut weights = std::mem::take(&mut core.weights);
    let mut blocks = if grid.tp > 1 {
        crate::distribute::shard_moe::cut_expert_weights(&core.program, &mut weights, grid.tp)
    } else {
        Default::default()
    };
    let one = RankProgram {
        program: core.program.clone(),
        weights,
    };
    c.sharded.clear();
    c.diagnostics.kept_all_to_all.clear();
    // auto: the e-graph picks per layer among the forms codegen has (ppmoe, alltoall).
    let picks: Vec<Choice> = match strategy {
        Strategy::Ppmoe => vec![Choice::Ppmoe; core.moe_layers.len()],
        Strategy::AllToAll => vec![Choice::AllToAll; core.moe_layers.len()],
        Strategy::Auto => {
            let shapes: Vec<LayerShape> = core
                .moe_layers
                .iter()
                .map(|l| LayerShape {
                    tokens: l.tokens,
                    hidden: l.hidden,
                    ffn: l.ffn,
                    experts: l.experts,
                    top_k: l.top_k,
                    gated: l.gated,
                })
                .collect();
            crate::strategy::egraph::choose(
                &shapes,
                grid.tp,
                c.options.hardware.unwrap_or_default(),
                &[Choice::Ppmoe, Choice::AllToAll],
            )
            .into_iter()
            .map(|(c, _)| c)
            .collect()
        }
    };
    c.choices = picks.clone();
    for t in 0..grid.tp {
        let (dense, rank_pieces) = crate::distribute::dense_tp::dense_tp(&one, grid.tp, t);
        let mut rp = crate::distribute::shard_moe::shard_moe(
            &c.options.path,
            &dense,
            grid.tp,
            t,
            &mut blocks,
        )?;
        rp.program.coords = [0, 0, t];
        rp.program.rank = t;
        if strategy != Strategy::AllToAll {
            let wanted = |n: usize| picks.get(n) == Some(&Choice::Ppmoe);
            let notes = crate::distribute::ppmoe_rewrite::ppmoe_rewrite(
                &mut rp,
                (t, grid.tp),
                &wanted,
                &rank_pieces,
            );
            if t == 0 {
                c.diagnostics.kept_all_to_all.extend(notes);
            }
        }
        let mut weights = rp.weights;
        let program = crate::passes::dead_code::remove_dead_code(rp.program, &mut weights);
        c.sharded.push(RankProgram { program, weights });
    }
    Ok(())
}

fn pipeline(c: &mut Compilation) -> Result<(), CompileError> {
    let grid = c.options.grid.unwrap_or(Grid {
        dp: 1,
        pp: 1,
        tp: 1,
    });
    let first = c.sharded.first().ok_or_else(|| {
        CompileError::StageNotBuilt(
            "pipelined".into(),
            "it needs the sharded stage first".into(),
        )
    })?;
    let cuts = crate::distribute::pipeline_split::choose_cuts(&first.program, grid.pp).map_err(
        |reason| CompileError::Grid {
            path: c.options.path.clone(),
            reason,
        },
    )?;
    // Converted once per tp index, before the stages and replicas share the tensors: each
    // weight is replaced as it is converted, so no second copy of the weights is held.
    if let Some(dt) = c.options.weight_dtype {
        for rp in &mut c.sharded {
            crate::passes::weight_dtype::convert_weights(rp, dt);
        }
    }
    // The masks' integer comparisons as float ones (exact; then generated kernels on the GPU),
    // the einsums left after the raise as matmuls (cuBLAS on the GPU).
    for rp in &mut c.sharded {
        let n = crate::passes::einsum_matmul::einsums_as_matmuls(rp);
        if n > 0 {
            tracing::debug!("{n} einsums as batched matmuls");
        }
        let n = crate::passes::int_compare::compare_as_f32(rp);
        if n > 0 {
            tracing::debug!("{n} integer constants compared as f32 (exact)");
        }
    }
    let stages: Vec<Vec<RankProgram>> = c
        .sharded
        .iter()
        .map(|rp| crate::distribute::pipeline_split::split_stages(rp, &cuts))
        .collect();
    c.ranks = crate::distribute::layout::layout(grid, &stages);
    Ok(())
}

fn import_onnx(c: &mut Compilation) -> Result<(), CompileError> {
    let shapes = microbatch_shapes(c)?;
    let loaded = ppmoe_frontend::load_model(&c.options.path, c.options.weights.as_deref())?;
    c.probe_shapes = crate::moe::probe::candidate_shapes(&loaded, &shapes);
    let (model, types, text) = ppmoe_frontend::import_loaded(loaded, &shapes)?;
    c.model = Some(model);
    c.types = Some(types);
    c.onnx_text = Some(text);
    Ok(())
}

/// The input shapes to compile at: with K microbatches, axis 0 (the batch) of every input is
/// cut by K, so the programs run one microbatch at a time.
fn microbatch_shapes(c: &Compilation) -> Result<Vec<(String, Vec<i64>)>, CompileError> {
    let k = c.options.microbatches.max(1) as i64;
    if k == 1 {
        return Ok(c.options.input_shapes.clone());
    }
    let model = ppmoe_frontend::load_model(&c.options.path, c.options.weights.as_deref())?;
    let bad = |reason: String| CompileError::Grid {
        path: c.options.path.clone(),
        reason,
    };
    let mut out = Vec::new();
    for input in &model.graph.inputs {
        let given = c
            .options
            .input_shapes
            .iter()
            .find(|(n, _)| n == &input.name)
            .map(|(_, d)| d.clone());
        if let Some(ppmoe_frontend::Dim::Known(b)) = input.ty.dims.first() {
            return Err(bad(format!(
                "--microbatches {k}: input '{}' has its batch fixed at {b} by the model: it cannot be cut into microbatches (export it with a dynamic batch)",
                input.name
            )));
        }
        let Some(mut dims) = given else {
            return Err(bad(format!(
                "--microbatches {k}: give the full shape of input '{}' with --input-shape",
                input.name
            )));
        };
        if dims.is_empty() || dims[0] % k != 0 {
            return Err(bad(format!("--microbatches {k}: input '{}' has a batch of {}, which {k} microbatches do not divide", input.name, dims.first().copied().unwrap_or(0))));
        }
        dims[0] /= k;
        out.push((input.name.clone(), dims));
    }
    Ok(out)
}

fn lower_core(c: &mut Compilation) -> Result<(), CompileError> {
    let (Some(model), Some(types)) = (c.model.as_mut(), &c.types) else {
        return Err(CompileError::StageNotBuilt(
            "core".into(),
            "it needs the onnx stage first".into(),
        ));
    };
    let limit = c.options.eval_limit.unwrap_or(DEFAULT_EVAL_LIMIT_BYTES);
    let initializers = convert_initializers(model)?;
    let core = lower_to_core_with(model, types, &initializers, limit, &Default::default())?;
    c.probe_core =
        crate::moe::probe::probe_program(model, &c.probe_shapes, &initializers, limit, &core);
    c.core = Some(core);
    Ok(())
}

fn raise_moe(c: &mut Compilation) -> Result<(), CompileError> {
    let policy = c.options.capacity_policy.unwrap_or(CapacityPolicy::Keep);
    let Some(core) = c.core.as_mut() else {
        return Err(CompileError::StageNotBuilt(
            "moe".into(),
            "it needs the core stage first".into(),
        ));
    };
    let limit = c.options.eval_limit.unwrap_or(DEFAULT_EVAL_LIMIT_BYTES);
    // The few-token program is only a means of recognition: dropped once used.
    let outcome = match c.probe_core.take() {
        Some(mut probe) => {
            crate::passes::raise_moe::raise_moe_probed(core, &mut probe, policy, limit)
        }
        None => crate::passes::raise_moe::raise_moe(core, policy, limit),
    };
    for u in &outcome.unraised {
        tracing::warn!("not raised: {u}");
    }
    core.moe_layers.extend(outcome.raised);
    c.diagnostics.unraised = outcome.unraised;
    Ok(())
}

/// This process's resident and peak resident memory, for the log (Linux; empty elsewhere).
fn memory_now() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map(|l| l[k.len()..].trim().to_string())
            .unwrap_or_default()
    };
    // Weights mapped from the model's files count as resident once read, but the kernel can
    // drop them at will: the anonymous part is what the compiler itself holds.
    format!(
        "resident {} (anonymous {}), peak {}",
        field("VmRSS:"),
        field("RssAnon:"),
        field("VmHWM:")
    )
}

/// Runs the stages up to and including `last`.
pub fn run_until(
    path: &Path,
    input_shapes: &[(String, Vec<i64>)],
    last: &str,
) -> Result<Compilation, CompileError> {
    run_with(Compilation::new(path, input_shapes), last)
}

/// Runs the stages up to and including `last` on a prepared compilation (options set).
pub fn run_with(mut c: Compilation, last: &str) -> Result<Compilation, CompileError> {
    let Some(end) = STAGES.iter().position(|s| s.name == last) else {
        let built: Vec<&str> = STAGES.iter().map(|s| s.name).collect();
        return Err(CompileError::StageNotBuilt(last.into(), built.join(", ")));
    };
    let mut start = 0;
    if c.ir_input.is_none() && crate::ir_input::is_ppmoe_ir(&c.options.path) {
        let ir = c.options.path.clone();
        let reached = crate::ir_input::resume(&mut c)?;
        let at = STAGES.iter().position(|s| s.name == reached).unwrap_or(0);
        if end < at {
            return Err(CompileError::Ir {
                path: ir,
                reason: format!("the IR is at stage '{reached}'; '{last}' comes before it"),
            });
        }
        start = at + 1;
    }
    for stage in &STAGES[start..=end] {
        tracing::info!("stage {} ({})", stage.name, memory_now());
        (stage.run)(&mut c)?;
    }
    Ok(c)
}

/// The IR after `stage`, parsed and verified by MLIR, printed with large constants elided;
/// with the compilation itself, for what else the caller reports (the MoE summary).
pub fn emit(c: Compilation, stage: &str) -> Result<(String, Compilation), CompileError> {
    let path = c.options.path.clone();
    let c = run_with(c, stage)?;
    let s = STAGES
        .iter()
        .find(|s| s.name == stage)
        .expect("run_with checked the name");
    let text = (s.print)(&c).unwrap_or_default();
    if NOT_MLIR.contains(&stage) {
        return Ok((text, c));
    }
    let context = ppmoe_dialect::context();
    let module = ppmoe_dialect::parse_verified(&context, &text).map_err(|diagnostics| {
        CompileError::Verify {
            path,
            stage: stage.into(),
            diagnostics,
        }
    })?;
    let printed = if WITH_LOCATIONS.contains(&stage) {
        ppmoe_dialect::print_module_with_locations(&module)
    } else {
        ppmoe_dialect::print_module(&module)
    };
    Ok((printed, c))
}

impl Compilation {
    pub fn new(path: &Path, input_shapes: &[(String, Vec<i64>)]) -> Compilation {
        Compilation {
            options: Options {
                path: path.to_owned(),
                input_shapes: input_shapes.to_vec(),
                ..Default::default()
            },
            ..Default::default()
        }
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
