//! The whole compiler on one screen: the ordered stages of the lowering ladder, each a list of
//! named passes (as in Triton's `compiler.py`). `--emit STAGE` stops after the named stage and
//! prints its IR; `--print-ir-after-all` prints it after every pass; `ppmoe opt` runs passes
//! by name (`pass_pipeline`). Nothing else decides the order.

mod adopt;
mod adopt_kernels;
mod pass_manager;
mod pass_pipeline;
mod plan_ops;
mod printing;
mod steps;

pub use adopt::{adopt, check_readable, READABLE};
pub use pass_manager::{run_passes, Scheduled};
pub(crate) use pass_pipeline::check_run;
pub use pass_pipeline::{opt, parse_pass_pipeline, PassRun};
pub(crate) use steps::{shard_dense, take_weights};

use crate::core::{CoreProgram, DEFAULT_EVAL_LIMIT_BYTES};
use crate::distribute::shard_moe::RankProgram;
use crate::distribute::{Grid, Strategy};
use crate::error::CompileError;
use crate::passes::raise_moe::CapacityPolicy;
use crate::strategy::cost_model::{Choice, Hardware};
use ppmoe_frontend::{Model, Types};

pub(crate) use plan_ops::{print_plan, step_kind};
use printing::{print_kernels, print_one, print_ptx, print_ranks};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use steps::*;

/// A transformation with a registered name: what `--print-ir-after-all` heads its dump with
/// and `ppmoe opt --pass-pipeline` runs.
pub struct Pass {
    pub name: &'static str,
    /// The options it takes in a pass pipeline (`ppmoe-shard{tp=2 strategy=auto}`), each the
    /// compilation option of the flag of the same name.
    pub options: &'static [&'static str],
    pub run: fn(&mut Compilation) -> Result<(), CompileError>,
    /// A pass written over the module's MLIR ops: run on the module in the pass manager, in
    /// place of `run` (which then says it needs the module).
    pub on_module: Option<OnModule>,
    /// An upstream MLIR pass, as a pass pipeline spells it (nested under the ops it runs on):
    /// added to the pass manager by that spelling.
    pub upstream: Option<&'static str>,
    /// A pass over the module's ops that also takes the IR of a stage before its input (it
    /// reads the module's programs first: `ppmoe-shard` shards a `core` program whose layers
    /// were not raised); the others take exactly their input stage's.
    pub takes_earlier: bool,
}

/// A pass over the module's ops: returns how many it changed. The compilation is there to be
/// read (the weights' values, which are not IR; the options) and to take what the pass says
/// beside the IR (`Diagnostics`); the IR is the module.
pub type OnModule = fn(
    &melior::Context,
    &melior::ir::operation::OperationRef,
    &mut Compilation,
) -> Result<usize, PassError>;

/// Why a pass over the module's ops failed: the IR is not what it takes, or the grid its
/// options ask for does not fit the model.
#[derive(Debug)]
pub enum PassError {
    Ir(String),
    Grid(String),
    /// An error the pass's program-level part already made whole (it names the source's node).
    Compile(CompileError),
}

impl std::fmt::Display for PassError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            PassError::Ir(reason) | PassError::Grid(reason) => f.write_str(reason),
            PassError::Compile(e) => write!(f, "{e}"),
        }
    }
}

impl From<CompileError> for PassError {
    fn from(e: CompileError) -> Self {
        PassError::Compile(e)
    }
}

impl From<String> for PassError {
    fn from(reason: String) -> Self {
        PassError::Ir(reason)
    }
}

impl From<&str> for PassError {
    fn from(reason: &str) -> Self {
        PassError::Ir(reason.to_string())
    }
}

pub struct Stage {
    pub name: &'static str,
    /// Take the compilation from the previous stage to this one, in order.
    pub passes: &'static [Pass],
    /// Prints the IR as it stands after this stage (and after each of its passes).
    pub print: fn(&Compilation) -> Option<String>,
}

const fn pass(
    name: &'static str,
    options: &'static [&'static str],
    run: fn(&mut Compilation) -> Result<(), CompileError>,
) -> Pass {
    Pass {
        name,
        options,
        run,
        on_module: None,
        upstream: None,
        takes_earlier: false,
    }
}

/// A pass over the module's ops (`OnModule`), which runs in the pass manager only.
const fn module_pass(name: &'static str, on_module: OnModule) -> Pass {
    module_pass_with(name, &[], on_module)
}

/// `module_pass`, taking `options`.
const fn module_pass_with(
    name: &'static str,
    options: &'static [&'static str],
    on_module: OnModule,
) -> Pass {
    Pass {
        name,
        options,
        run: needs_module,
        on_module: Some(on_module),
        upstream: None,
        takes_earlier: false,
    }
}

/// Upstream MLIR's pass `name`, spelled as a pass pipeline nests it (`gpu.module(NAME)`).
const fn upstream(name: &'static str, spelled: &'static str) -> Pass {
    Pass {
        name,
        options: &[],
        run: needs_module,
        on_module: None,
        upstream: Some(spelled),
        takes_earlier: false,
    }
}

/// The ladder, in order.
pub const STAGES: &[Stage] = &[
    Stage {
        name: "onnx",
        passes: &[pass("ppmoe-import", &[], import_onnx)],
        print: |c| c.onnx_text.clone(),
    },
    Stage {
        name: "core",
        passes: &[pass("ppmoe-lower-core", &[], lower_core)],
        print: |c| print_one(c, "core"),
    },
    Stage {
        name: "moe",
        passes: &[module_pass_with(
            "ppmoe-raise-moe",
            &["capacity"],
            crate::passes::raise_moe::raise_moe_layers,
        )],
        print: |c| print_one(c, "moe"),
    },
    Stage {
        name: "sharded",
        passes: &[
            Pass {
                takes_earlier: true,
                ..module_pass_with(
                    "ppmoe-shard",
                    &["tp", "strategy"],
                    crate::passes::shard::shard_layers,
                )
            },
            module_pass(
                "ppmoe-rewrite",
                crate::passes::ppmoe_rewrite::rewrite_layers,
            ),
            module_pass("ppmoe-dce", crate::passes::dead_ops::remove_dead_ops),
            module_pass_with(
                "ppmoe-weight-dtype",
                &["dtype"],
                crate::passes::weight_dtype::weights_in_dtype,
            ),
            module_pass(
                "ppmoe-einsum-to-matmul",
                crate::passes::einsum_matmul::einsums_as_matmuls,
            ),
            module_pass(
                "ppmoe-compare-as-f32",
                crate::passes::int_compare::compare_as_f32,
            ),
        ],
        print: |c| print_ranks(c, &c.sharded, "sharded"),
    },
    Stage {
        name: "pipelined",
        passes: &[module_pass_with(
            "ppmoe-pipeline-split",
            &["pp", "dp"],
            crate::passes::pipeline_split::split_pipeline,
        )],
        print: |c| print_ranks(c, &c.ranks, "pipelined"),
    },
    Stage {
        name: "kernels",
        passes: &[
            module_pass(
                "ppmoe-plan-kernels",
                crate::passes::plan_kernels::plan_kernels,
            ),
            module_pass_with(
                "ppmoe-host-steps",
                &["steps"],
                crate::passes::host_steps::move_to_host,
            ),
        ],
        print: print_kernels,
    },
    Stage {
        name: "ptx",
        passes: &[
            module_pass("ppmoe-attach-target", crate::codegen::ptx::attach_target),
            upstream("convert-scf-to-cf", "gpu.module(convert-scf-to-cf)"),
            upstream("convert-math-to-llvm", "gpu.module(convert-math-to-llvm)"),
            upstream("convert-nvvm-to-llvm", "gpu.module(convert-nvvm-to-llvm)"),
            upstream("convert-gpu-to-nvvm", "gpu.module(convert-gpu-to-nvvm)"),
            upstream("convert-arith-to-llvm", "gpu.module(convert-arith-to-llvm)"),
            upstream("convert-cf-to-llvm", "convert-cf-to-llvm"),
            upstream("reconcile-unrealized-casts", "reconcile-unrealized-casts"),
            upstream("gpu-module-to-binary", "gpu-module-to-binary{format=isa}"),
        ],
        print: |c| Some(print_ptx(c)),
    },
];

/// The stage a pass belongs to, and the pass, by its registered name.
pub fn find_pass(name: &str) -> Option<(&'static Stage, &'static Pass)> {
    STAGES
        .iter()
        .flat_map(|s| s.passes.iter().map(move |p| (s, p)))
        .find(|(_, p)| p.name == name)
}

/// The stages whose passes transform programs (and plan their kernels, and lower them): they
/// run as MLIR passes in one pass manager over the module (`pass_manager`), from the IR of the
/// stage before them.
pub const MODULE_STAGES: &[&str] = &["moe", "sharded", "pipelined", "kernels", "ptx"];

/// The upstream passes of `stage`, as a pass pipeline spells them.
pub fn upstream_passes(stage: &str) -> impl Iterator<Item = &'static str> + '_ {
    STAGES
        .iter()
        .filter(move |s| s.name == stage)
        .flat_map(|s| s.passes.iter().filter_map(|p| p.upstream))
}

/// Stages whose printed form is not MLIR (PTX text): `emit` prints them as they are.
pub const NOT_MLIR: &[&str] = &["ptx"];

/// Stages printed with a header and every op's location (naming the values): the form
/// `ir_input` reads back.
pub const WITH_LOCATIONS: &[&str] = &["core", "moe", "sharded", "pipelined", "kernels"];

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
    /// `--print-ir-after-all`: the IR after every pass, on standard error.
    pub print_ir_after_all: bool,
    /// `--host-steps`: the plan steps run on the host (`ppmoe-host-steps`).
    pub host_steps: crate::passes::host_steps::HostSteps,
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
    /// Per tensor-parallel index, the weights dense TP cut into rank pieces, by name
    /// (`ppmoe-rewrite` reads them; the sharded IR marks them `ppmoe.rank_piece`).
    pub rank_pieces: Vec<HashSet<String>>,
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
    /// The IR file's text and its stage, until the pass manager takes it: the first passes
    /// over a module run on the module as the file wrote it (its attributes and locations kept
    /// where a pass keeps the op), not on its programs printed again.
    pub ir_text: Option<(String, String)>,
    /// The module the pass manager last left, printed, with its stage, where
    /// `wants_module_text`: what `opt` prints.
    pub module_text: Option<(String, String)>,
    pub wants_module_text: bool,
    /// The program-level passes run since `core`, each with its options as a pass pipeline
    /// spells it: the IR's header records them, and reading the IR back runs them on the source.
    pub history: Vec<String>,
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
                reason: format!(
                    "the IR is at stage '{reached}'; '{last}' comes before it{}",
                    if reached == "kernels" {
                        " (a kernels module compiles with --target cuda)"
                    } else {
                        ""
                    }
                ),
            });
        }
        start = at + 1;
    }
    let mut at = start;
    while at <= end {
        let stage = &STAGES[at];
        tracing::info!("stage {} ({})", stage.name, memory_now());
        if at > 0 && MODULE_STAGES.contains(&stage.name) {
            // This stage and the program-level ones after it (up to `last`): one pass manager.
            let until = (at..=end)
                .take_while(|&i| MODULE_STAGES.contains(&STAGES[i].name))
                .last()
                .unwrap_or(at);
            let passes: Vec<Scheduled> = STAGES[at..=until]
                .iter()
                .flat_map(|stage| {
                    stage.passes.iter().map(move |pass| Scheduled {
                        stage,
                        pass,
                        options: vec![],
                    })
                })
                .collect();
            c = run_passes(c, &STAGES[at - 1], &passes)?;
            at = until + 1;
        } else {
            for pass in stage.passes {
                run_pass(&mut c, stage, pass)?;
            }
            verify(&c, stage)?;
            at += 1;
        }
    }
    Ok(c)
}

/// Runs one pass, and prints the IR after it where `--print-ir-after-all` asks.
pub(crate) fn run_pass(
    c: &mut Compilation,
    stage: &Stage,
    pass: &Pass,
) -> Result<(), CompileError> {
    tracing::debug!("pass {}", pass.name);
    (pass.run)(c)?;
    if c.options.print_ir_after_all {
        print_dump(pass, stage, &printed(c, stage)?);
    }
    Ok(())
}

/// `--print-ir-after-all`'s dump of the IR after `pass`, headed as mlir-opt heads its own.
fn print_dump(pass: &Pass, stage: &Stage, text: &str) {
    eprintln!(
        "// -----// IR Dump After {} ({}) //----- //",
        pass.name, stage.name
    );
    eprintln!("{text}");
}

/// The stage's IR verified by MLIR (the `moe` ops against their IRDL definitions, `shard` ops
/// against upstream's): what `compile` ships is IR that verifies. The stages in the pass manager
/// are verified after every pass there; the `onnx` stage's text is the reader's own print.
fn verify(c: &Compilation, stage: &Stage) -> Result<(), CompileError> {
    if WITH_LOCATIONS.contains(&stage.name) {
        printed(c, stage)?;
    }
    Ok(())
}

/// The text `stage` prints the compilation as (not yet parsed).
fn stage_text(c: &Compilation, stage: &Stage) -> Result<String, CompileError> {
    (stage.print)(c).ok_or_else(|| {
        CompileError::StageNotBuilt(
            stage.name.into(),
            "the compilation has not reached it".into(),
        )
    })
}

/// The IR as `stage` prints it, parsed and verified by MLIR, printed with large constants
/// elided (and, where it reads back, every op's location).
fn printed(c: &Compilation, stage: &Stage) -> Result<String, CompileError> {
    let text = (stage.print)(c).unwrap_or_default();
    if NOT_MLIR.contains(&stage.name) {
        return Ok(text);
    }
    let context = ppmoe_dialect::context();
    let module = ppmoe_dialect::parse_verified(&context, &text)
        .map_err(|diagnostics| c.verify_error(stage.name, diagnostics))?;
    ppmoe_dialect::forget_text_positions(&module.as_operation());
    Ok(if WITH_LOCATIONS.contains(&stage.name) {
        ppmoe_dialect::print_module_with_locations(&module)
    } else {
        ppmoe_dialect::print_module(&module)
    })
}

/// The IR after `stage`, parsed and verified by MLIR, printed with large constants elided;
/// with the compilation itself, for what else the caller reports (the MoE summary).
pub fn emit(c: Compilation, stage: &str) -> Result<(String, Compilation), CompileError> {
    let c = run_with(c, stage)?;
    let s = STAGES
        .iter()
        .find(|s| s.name == stage)
        .expect("run_with checked the name");
    Ok((printed(&c, s)?, c))
}

impl Compilation {
    /// The file an error names: the IR given as input where there is one (it is what did not
    /// verify, not the model its weights come from), else the model.
    pub(crate) fn error_path(&self) -> PathBuf {
        self.ir_input
            .clone()
            .unwrap_or_else(|| self.options.path.clone())
    }

    /// MLIR's diagnostics on the IR of `stage`, with the file they are about.
    pub(crate) fn verify_error(&self, stage: &str, diagnostics: String) -> CompileError {
        CompileError::Verify {
            path: self.error_path(),
            stage: stage.into(),
            diagnostics,
        }
    }

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
