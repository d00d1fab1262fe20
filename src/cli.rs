//! Subcommands and their flags. The public interface (DESIGN.md): inspect, compile, run, plan.

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ppmoe_compiler::distribute::{Grid, Strategy};
use ppmoe_compiler::passes::raise_moe::CapacityPolicy;
use ppmoe_compiler::pipeline::Compilation;
use ppmoe_compiler::strategy::cost_model::Hardware;
use ppmoe_runtime::runner::{check_outputs, run as run_bundle, Backend, InputArg};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "ppmoe",
    version,
    about = "A compiler for Mixture-of-Experts models (Pipeline MoE)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The rungs of the lowering ladder, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    Onnx,
    Core,
    Moe,
    Sharded,
    Pipelined,
    Kernels,
    Ptx,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print a model's IR at a stage of the lowering ladder.
    Inspect {
        /// The model (.onnx).
        model: PathBuf,
        /// The stage to stop at and print.
        #[arg(long, value_enum, default_value = "onnx")]
        emit: Emit,
        /// Fix an input's shape: NAME=DIMS, e.g. input_ids=1x16 (repeatable).
        #[arg(long = "input-shape", value_parser = parse_input_shape)]
        input_shape: Vec<(String, Vec<i64>)>,
        /// Print a table of the MoE layers found (one row per layer) instead of the IR.
        #[arg(long)]
        summary: bool,
        #[command(flatten)]
        moe: MoeFlags,
    },
    /// Run named passes on IR printed by `inspect --emit` (core to kernels), as mlir-opt
    /// does, and print the IR after the last.
    Opt {
        /// The IR (.mlir) to start from.
        ir: PathBuf,
        /// The passes, e.g. 'builtin.module(ppmoe-shard{tp=2}, ppmoe-rewrite, ppmoe-dce)';
        /// `builtin.module()` prints the IR as read.
        #[arg(long = "pass-pipeline")]
        pass_pipeline: String,
        /// Print the IR after every pass, on standard error.
        #[arg(long = "print-ir-after-all")]
        print_ir_after_all: bool,
        /// Another model to take the weights from than the one the IR names.
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// Compile a model into a bundle: manifest.json, weights per rank, programs.
    Compile {
        /// The model (.onnx).
        model: PathBuf,
        /// The bundle folder to write (replaced if it is an earlier bundle).
        #[arg(short, long)]
        output: PathBuf,
        /// Fix an input's shape: NAME=DIMS (repeatable); every input must end up static.
        #[arg(long = "input-shape", value_parser = parse_input_shape)]
        input_shape: Vec<(String, Vec<i64>)>,
        #[command(flatten)]
        moe: MoeFlags,
    },
    /// Run a bundle on .npy inputs; writes <output name>.npy files.
    Run {
        /// The bundle folder.
        bundle: PathBuf,
        /// An input: FILE.npy (bound in order) or NAME=FILE.npy (repeatable).
        #[arg(long = "input")]
        input: Vec<String>,
        /// Where the outputs go.
        #[arg(long = "output-dir")]
        output_dir: PathBuf,
        /// auto (CUDA where a GPU is present, else CPU), cpu or cuda.
        #[arg(long, default_value = "auto")]
        backend: String,
        /// Compare an output with a reference .npy: FILE (in output order) or NAME=FILE;
        /// prints ‖out − ref‖ / ‖ref‖ and fails above --tolerance (repeatable).
        #[arg(long = "check")]
        check: Vec<String>,
        /// The relative error --check accepts.
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
        /// Run the bundle's ranks as N local processes, one per GPU (NCCL between them), as
        /// torchrun would; under torchrun or srun leave it out: their variables are read.
        #[arg(long = "nproc-per-node")]
        nproc_per_node: Option<usize>,
    },
    /// Time a bundle's forward on the GPU (CUDA events, warm-up, median of N), or one MoE
    /// layer of random bf16 (or, with --moe-dtype fp32, fp32) weights (--moe H,F,E,K) compiled
    /// through the same compiler.
    Bench(BenchArgs),
    /// Predict, per MoE layer, each strategy's time and the e-graph's choice; per pipeline
    /// stage, time and memory per GPU. MODEL is an .onnx file or a Hugging Face config.json.
    Plan {
        model: PathBuf,
        /// GPUs per node (the TP group stays inside a node by default).
        #[arg(long = "gpus-per-node", default_value_t = 8)]
        gpus_per_node: usize,
        /// Nodes (one pipeline stage each by default).
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Override the tensor-parallel size (default: GPUs per node).
        #[arg(long)]
        tp: Option<usize>,
        /// Override the pipeline depth (default: nodes).
        #[arg(long)]
        pp: Option<usize>,
        /// Tokens per step (default: the ONNX model's, or 4096 for a config.json).
        #[arg(long)]
        tokens: Option<usize>,
        #[command(flatten)]
        hw: HardwareFlags,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// Fix an input's shape (ONNX models): NAME=DIMS.
        #[arg(long = "input-shape", value_parser = parse_input_shape)]
        input_shape: Vec<(String, Vec<i64>)>,
    },
}

/// `ppmoe bench`'s flags.
#[derive(Args)]
pub struct BenchArgs {
    /// A bundle compiled with --target cuda (leave it out with --moe); one of several ranks
    /// runs with --nproc-per-node.
    pub bundle: Option<PathBuf>,
    /// One MoE layer instead: hidden, expert FFN, experts, top-k (e.g. 4096,14336,8,2):
    /// softmax router, renormalised top-k, SwiGLU experts, as the PyTorch peers compute.
    #[arg(long)]
    pub moe: Option<String>,
    /// The runtime's own NCCL all-reduce (f32) alone at these sizes instead (e.g.
    /// 32M,64M,256M), with --nproc-per-node N: time, algorithm and bus bandwidth.
    #[arg(long = "all-reduce")]
    pub all_reduce: Option<String>,
    /// --moe's element type: bf16 (the peers') or fp32 (x, y and every weight fp32; rows
    /// then give no floor, the peers' matmul rate being bf16's).
    #[arg(long = "moe-dtype", value_enum, default_value = "bf16")]
    pub moe_dtype: crate::moe_layer::LayerType,
    /// Token counts for --moe, comma-separated.
    #[arg(long, default_value = "4096")]
    pub tokens: String,
    /// A bundle's inputs, as `run` takes them; random where not given.
    #[arg(long = "input")]
    pub input: Vec<String>,
    /// Forwards run before timing.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Forwards timed; the median is the figure.
    #[arg(long, default_value_t = 50)]
    pub iters: usize,
    /// Time every instruction too (synchronised, so it adds to the total) and print the
    /// slowest.
    #[arg(long)]
    pub profile: bool,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The GPU's matmul rate, TFLOP/s, as measured on it (the peer script prints it): with
    /// --peak-tbs, each --moe row gives its floor and how far above it the layer is.
    #[arg(long = "peak-tflops", requires = "peak_tbs")]
    pub peak_tflops: Option<f64>,
    /// The GPU's copy bandwidth, TB/s, as measured on it.
    #[arg(long = "peak-tbs", requires = "peak_tflops")]
    pub peak_tbs: Option<f64>,
    /// Where --moe writes its model and bundles (default: a temporary folder, removed).
    #[arg(long = "work-dir")]
    pub work_dir: Option<PathBuf>,
    /// A multi-rank bundle: one process per GPU, as `run --nproc-per-node N`.
    #[arg(long = "nproc-per-node")]
    pub nproc_per_node: Option<usize>,
    /// --moe over this many GPUs (one process each), the experts spread as --moe-strategy
    /// says.
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// --moe with --tp > 1: ppmoe (local slice + all-reduce) or alltoall.
    #[arg(long = "moe-strategy", value_enum, default_value = "ppmoe")]
    pub moe_strategy: StrategyFlag,
}

/// The machine the cost model assumes (H200, NVLink, 400 Gb InfiniBand by default).
#[derive(clap::Args, Clone, Copy)]
pub struct HardwareFlags {
    /// Matmul rate per GPU, TFLOP/s (H200 bf16 measured: about 790).
    #[arg(long = "gpu-tflops", default_value_t = 790.0)]
    gpu_tflops: f64,
    /// All-reduce bus bandwidth inside a node, GB/s (NVLink 4 with NCCL: about 370).
    #[arg(long = "nvlink-gbps", default_value_t = 370.0)]
    nvlink_gbps: f64,
    /// Bandwidth per GPU across nodes, GB/s (400 Gb/s InfiniBand: 50).
    #[arg(long = "network-gbps", default_value_t = 50.0)]
    network_gbps: f64,
    /// The share of all-reduce bandwidth an all-to-all reaches (an assumption).
    #[arg(long = "alltoall-efficiency", default_value_t = 0.5)]
    alltoall_efficiency: f64,
}

impl HardwareFlags {
    fn hardware(self, gpus_per_node: usize) -> Hardware {
        Hardware {
            flops: self.gpu_tflops * 1e12,
            nvlink_bytes_per_s: self.nvlink_gbps * 1e9,
            network_bytes_per_s: self.network_gbps * 1e9,
            gpus_per_node,
            element_bytes: 2,
            alltoall_efficiency: self.alltoall_efficiency,
        }
    }
}

/// Flags of the MoE stages.
#[derive(clap::Args, Clone)]
pub struct MoeFlags {
    /// A source layer that drops tokens beyond an expert's capacity (GShard): `keep` that
    /// dropping (exact), or make the layer `dropless` (not exact; the summary says so).
    #[arg(long = "moe-capacity", value_enum, default_value = "keep")]
    capacity: CapacityFlag,
    /// Tensor-parallel ranks (experts are spread over them).
    #[arg(long, default_value_t = 1)]
    tp: usize,
    /// Pipeline stages (at most one per MoE layer).
    #[arg(long, default_value_t = 1)]
    pp: usize,
    /// Data-parallel replicas.
    #[arg(long, default_value_t = 1)]
    dp: usize,
    /// How MoE layers are distributed over the tp group: ppmoe (experts split, one all-reduce),
    /// alltoall (tokens split, two all-to-alls), or auto (per layer, by the cost model).
    #[arg(long = "moe-strategy", value_enum, default_value = "ppmoe")]
    strategy: StrategyFlag,
    /// Microbatches of the GPipe schedule (must divide the batch).
    #[arg(long, default_value_t = 1)]
    microbatches: usize,
    /// What the bundle runs on: cpu, or cuda (adds each rank's PTX and GPU plan).
    #[arg(long, value_enum, default_value = "cpu")]
    target: TargetFlag,
    /// The type weights are stored in. On the GPU, bf16 weights make the GEMMs bf16 on tensor
    /// cores (activations rounded to bf16, fp32 accumulation and results); every other kernel,
    /// and fp16 weights, compute in fp32.
    #[arg(long, value_enum, default_value = "fp32")]
    dtype: DtypeFlag,
    /// StableHLO: bind @main's arguments at compile time from a safetensors file whose tensors
    /// are named arg0, arg1, ... (they become weights; the rest stay run-time inputs).
    #[arg(long)]
    weights: Option<std::path::PathBuf>,
    /// The largest tensor compile-time evaluation (constant folding, the MoE raise's numeric
    /// check) may make, in MiB; a larger constant stays a run-time computation, a larger trial
    /// leaves the layer unraised with the reason.
    #[arg(long = "eval-limit", default_value_t = 256, value_name = "MIB")]
    eval_limit: usize,
    /// Print the IR after every pass (each headed by the pass's name), on standard error.
    #[arg(long = "print-ir-after-all")]
    print_ir_after_all: bool,
    /// With --target cuda: plan steps to run on the host instead (the CPU kernel), to take a
    /// kernel out of a GPU run: a comma list of step kinds (launch, pointwise, route,
    /// cublas_gemm, moe_experts, moe_local_experts, moe_alltoall_experts, embedding, alias, or
    /// all) and instruction numbers, as `--emit kernels` names them.
    #[arg(long = "host-steps", value_name = "STEPS")]
    host_steps: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TargetFlag {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DtypeFlag {
    Fp32,
    Bf16,
    Fp16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum StrategyFlag {
    Ppmoe,
    Alltoall,
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CapacityFlag {
    Keep,
    Dropless,
}

impl MoeFlags {
    fn compilation(
        self,
        model: &std::path::Path,
        input_shape: &[(String, Vec<i64>)],
    ) -> Result<Compilation> {
        if self.tp == 0 || self.pp == 0 || self.dp == 0 || self.microbatches == 0 {
            bail!("--tp, --pp, --dp and --microbatches must be at least 1");
        }
        let mut c = Compilation::new(model, input_shape);
        c.options.capacity_policy = Some(match self.capacity {
            CapacityFlag::Keep => CapacityPolicy::Keep,
            CapacityFlag::Dropless => CapacityPolicy::Dropless,
        });
        c.options.grid = Some(Grid {
            dp: self.dp,
            pp: self.pp,
            tp: self.tp,
        });
        c.options.microbatches = self.microbatches;
        c.options.weights = self.weights;
        c.options.eval_limit =
            Some(self.eval_limit.checked_mul(1 << 20).ok_or_else(|| {
                anyhow::anyhow!("--eval-limit {} MiB is too large", self.eval_limit)
            })?);
        c.options.target_cuda = self.target == TargetFlag::Cuda;
        c.options.print_ir_after_all = self.print_ir_after_all;
        if let Some(steps) = &self.host_steps {
            c.options.host_steps = ppmoe_compiler::passes::host_steps::HostSteps::parse(steps)
                .map_err(|e| anyhow::anyhow!("--host-steps {steps}: {e}"))?;
        }
        c.options.weight_dtype = match self.dtype {
            DtypeFlag::Fp32 => None,
            DtypeFlag::Bf16 => Some(ppmoe_runtime::DType::BF16),
            DtypeFlag::Fp16 => Some(ppmoe_runtime::DType::F16),
        };
        c.options.strategy = Some(match self.strategy {
            StrategyFlag::Ppmoe => Strategy::Ppmoe,
            StrategyFlag::Alltoall => Strategy::AllToAll,
            StrategyFlag::Auto => Strategy::Auto,
        });
        Ok(c)
    }
}

/// `NAME=1x16` -> ("NAME", [1, 16]).
fn parse_input_shape(s: &str) -> Result<(String, Vec<i64>), String> {
    let (name, dims) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': expected NAME=DIMS, e.g. input_ids=1x16"))?;
    let dims = dims
        .split('x')
        .map(|d| {
            d.parse::<i64>()
                .ok()
                .filter(|&d| d >= 0)
                .ok_or_else(|| format!("'{s}': '{d}' is not a dimension"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), dims))
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect {
            model,
            emit,
            input_shape,
            summary,
            moe,
        } => {
            let c = moe.compilation(&model, &input_shape)?;
            let stage = stage_name(emit);
            reaches_kernels(&c, !summary && matches!(stage, "kernels" | "ptx"))?;
            if summary {
                return print_summary(c);
            }
            let (text, _) = ppmoe_compiler::pipeline::emit(c, stage)?;
            out!("{text}");
            Ok(())
        }
        Command::Opt {
            ir,
            pass_pipeline,
            print_ir_after_all,
            weights,
        } => {
            let mut c = Compilation::new(&ir, &[]);
            c.options.print_ir_after_all = print_ir_after_all;
            c.options.weights = weights;
            let (text, c) = ppmoe_compiler::pipeline::opt(c, &pass_pipeline)?;
            for note in &c.diagnostics.kept_all_to_all {
                eprintln!("note: {note}");
            }
            out!("{text}");
            Ok(())
        }
        Command::Compile {
            model,
            output,
            input_shape,
            moe,
        } => {
            let c = moe.compilation(&model, &input_shape)?;
            reaches_kernels(&c, c.options.target_cuda)?;
            compile(&model, &output, c)
        }
        Command::Run {
            bundle,
            input,
            output_dir,
            backend,
            check,
            tolerance,
            nproc_per_node,
        } => match nproc_per_node {
            Some(n) => launch_ranks(n),
            None => run_checked(
                &bundle,
                (&input, &output_dir),
                &backend,
                (&check, tolerance),
            ),
        },
        Command::Bench(args) => bench(args),
        Command::Plan {
            model,
            gpus_per_node,
            nodes,
            tp,
            pp,
            tokens,
            hw,
            json,
            input_shape,
        } => plan(
            &model,
            gpus_per_node,
            nodes,
            tp,
            pp,
            tokens,
            hw.hardware(gpus_per_node),
            json,
            &input_shape,
        ),
    }
}

/// `compile`: the bundle written, and what it holds.
fn compile(model: &Path, output: &Path, c: ppmoe_compiler::pipeline::Compilation) -> Result<()> {
    let r = ppmoe_compiler::compile(c, output)?;
    let total: usize = r.weight_bytes.iter().sum();
    out!(
        "compiled {} -> {} ({} rank(s), {} MoE layers, {} instructions on rank 0, {} weights, {:.1} KiB in all)",
        model.display(),
        output.display(),
        r.ranks,
        r.moe_layers,
        r.instructions,
        r.weights,
        total as f64 / 1024.0
    );
    for note in &r.kept_all_to_all {
        out!("note: {note}");
    }
    for (rank, steps) in &r.host_steps {
        let list: Vec<String> = steps.iter().map(|i| i.to_string()).collect();
        let noun = if steps.len() == 1 {
            "instruction"
        } else {
            "instructions"
        };
        out!(
            "note: rank {rank} runs {noun} {} on the host (the CPU kernel; operands copied there, results back)",
            list.join(", ")
        );
    }
    Ok(())
}

/// `run` on one process: the bundle run, its outputs written, and checked against the
/// references given.
fn run_checked(
    bundle: &Path,
    (input, output_dir): (&[String], &Path),
    backend: &str,
    (check, tolerance): (&[String], f64),
) -> Result<()> {
    let backend: Backend = backend.parse().map_err(anyhow::Error::msg)?;
    let inputs: Vec<InputArg> = input.iter().map(|s| InputArg::parse(s)).collect();
    let report = run_bundle(bundle, &inputs, output_dir, backend)?;
    for line in report.lines() {
        out!("{line}");
    }
    let refs: Vec<InputArg> = check.iter().map(|s| InputArg::parse(s)).collect();
    let (lines, ok) = check_outputs(bundle, &report, &refs, tolerance)?;
    for l in &lines {
        out!("{l}");
    }
    if !ok {
        bail!("an output differs from its reference by more than {tolerance:e}");
    }
    Ok(())
}

/// `bench`: a bundle, one MoE layer or the all-reduce alone, timed; rank 0 writes the JSON.
fn bench(a: BenchArgs) -> Result<()> {
    if let Some(n) = a.nproc_per_node {
        return launch_ranks(n);
    }
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let o = crate::bench::Options {
        warmup: a.warmup,
        iters: a.iters,
        profile: a.profile,
        peak: a.peak_tflops.zip(a.peak_tbs),
    };
    let rows = match (a.bundle, a.moe, a.all_reduce) {
        (None, None, Some(sizes)) => crate::bench::all_reduce(&sizes, &o)?,
        (Some(b), None, None) => crate::bench::bundle(&b, &a.input, &o)?,
        (None, Some(spec), None) => {
            let grid = crate::bench::MoeGrid {
                tp: a.tp,
                strategy: match a.moe_strategy {
                    StrategyFlag::Ppmoe => Strategy::Ppmoe,
                    StrategyFlag::Alltoall => Strategy::AllToAll,
                    StrategyFlag::Auto => Strategy::Auto,
                },
            };
            if a.tp == 0 {
                bail!("--tp must be at least 1");
            }
            crate::bench::moe((&spec, a.moe_dtype), &a.tokens, &grid, a.work_dir, &o)?
        }
        _ => bail!("bench takes a BUNDLE, --moe H,F,E,K or --all-reduce SIZES (one of the three)"),
    };
    // Ranks other than 0 report nothing (rank 0 holds every rank's times).
    if let Some(path) = a.json.filter(|_| !rows.is_empty()) {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `--host-steps` edits the kernels stage's plan: refused where the command never plans kernels
/// (it would change nothing).
fn reaches_kernels(c: &Compilation, plans: bool) -> Result<()> {
    if !plans && !c.options.host_steps.is_empty() {
        bail!("--host-steps moves steps of the GPU plan: it needs compile --target cuda, or inspect --emit kernels or ptx");
    }
    Ok(())
}

fn stage_name(e: Emit) -> &'static str {
    match e {
        Emit::Onnx => "onnx",
        Emit::Core => "core",
        Emit::Moe => "moe",
        Emit::Sharded => "sharded",
        Emit::Pipelined => "pipelined",
        Emit::Kernels => "kernels",
        Emit::Ptx => "ptx",
    }
}

#[allow(clippy::too_many_arguments)]
fn plan(
    model: &std::path::Path,
    gpus_per_node: usize,
    nodes: usize,
    tp: Option<usize>,
    pp: Option<usize>,
    tokens: Option<usize>,
    hw: Hardware,
    json: bool,
    input_shape: &[(String, Vec<i64>)],
) -> Result<()> {
    if gpus_per_node == 0 || nodes == 0 {
        bail!("--gpus-per-node and --nodes must be at least 1");
    }
    let (shape, model_tokens) = model_shape(model, input_shape)?;
    let tp = tp.unwrap_or(gpus_per_node.min(shape.experts));
    let pp = pp.unwrap_or(nodes);
    let total = gpus_per_node * nodes;
    if tp * pp > total || !total.is_multiple_of(tp * pp) {
        bail!("tp {tp} x pp {pp} does not tile {nodes} node(s) x {gpus_per_node} GPUs");
    }
    let dp = total / (tp * pp);
    let tokens = tokens.unwrap_or(model_tokens);
    let p = ppmoe_compiler::strategy::plan::plan(&shape, tokens, tp, pp, dp, hw)
        .map_err(|e| anyhow::anyhow!("{}: {e}", model.display()))?;
    if json {
        out!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    out!(
        "plan for {}: {} layers ({} MoE), hidden {}, {} experts top-{}, expert ffn {}; {tokens} tokens per step",
        p.model, shape.layers, p.layers.len(), shape.hidden, shape.experts, shape.top_k, shape.expert_ffn
    );
    out!(
        "grid: dp {} x pp {} x tp {} on {nodes} node(s) x {gpus_per_node} GPUs; {:.0} TFLOP/s, NVLink {:.0} GB/s, network {:.0} GB/s, all-to-all at {:.0}% of all-reduce bandwidth",
        p.dp, p.pp, p.tp, hw.flops / 1e12, hw.nvlink_bytes_per_s / 1e9, hw.network_bytes_per_s / 1e9, hw.alltoall_efficiency * 100.0
    );
    out!();
    print_layer_rows(&p);
    out!();
    out!("stage | layers  | predicted time | memory per GPU");
    for s in &p.stages {
        out!(
            "{:>5} | {:>3}-{:<3} | {:>14} | {:>10.3} GiB",
            s.stage,
            s.first_layer,
            s.last_layer,
            seconds(s.seconds),
            s.memory_bytes / (1u64 << 30) as f64
        );
    }
    Ok(())
}

/// What `plan` plans for: a Hugging Face config.json's shape (at 4096 tokens), or the MoE
/// layers an .onnx model's raise finds (at the model's own tokens).
fn model_shape(
    model: &Path,
    input_shape: &[(String, Vec<i64>)],
) -> Result<(ppmoe_compiler::strategy::hf_config::ModelShape, usize)> {
    use ppmoe_compiler::strategy::hf_config::{read_config, ModelShape};
    if model.extension().is_some_and(|e| e == "json") {
        let text = std::fs::read_to_string(model)
            .with_context(|| format!("{}: cannot read", model.display()))?;
        // A config.json is usually named after nothing; its folder names the model.
        let stem = model
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = if stem == "config" {
            model
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(stem)
        } else {
            stem
        };
        let shape =
            read_config(&text, &name).map_err(|e| anyhow::anyhow!("{}: {e}", model.display()))?;
        return Ok((shape, 4096));
    }
    let c = ppmoe_compiler::pipeline::run_with(Compilation::new(model, input_shape), "moe")?;
    let layers = c
        .core
        .as_ref()
        .map(|p| p.moe_layers.clone())
        .unwrap_or_default();
    let Some(first) = layers.first() else {
        bail!("{}: no MoE layer found: nothing to plan", model.display())
    };
    let shape = ModelShape {
        name: model.display().to_string(),
        layers: layers.len(),
        dense_layers: 0,
        hidden: first.hidden,
        kv_hidden: first.hidden,
        expert_ffn: first.ffn,
        dense_ffn: first.ffn,
        experts: first.experts,
        top_k: first.top_k,
        shared_ffn: 0,
        vocab: 0,
    };
    Ok((shape, first.tokens))
}

/// Each strategy's predicted time per MoE layer and the choice; consecutive layers with the
/// same predictions share a row.
fn print_layer_rows(p: &ppmoe_compiler::strategy::plan::Plan) {
    let names: Vec<&str> = p
        .layers
        .first()
        .map(|l| l.times.iter().map(|(c, _)| c.name()).collect())
        .unwrap_or_default();
    out!(
        "MoE layers | {} | choice",
        names
            .iter()
            .map(|n| format!("{n:>23}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let mut i = 0;
    while i < p.layers.len() {
        let l = &p.layers[i];
        let mut j = i;
        while j + 1 < p.layers.len()
            && p.layers[j + 1].times == l.times
            && p.layers[j + 1].choice == l.choice
        {
            j += 1;
        }
        let cells: Vec<String> = l
            .times
            .iter()
            .map(|(_, t)| format!("{:>23}", seconds(*t)))
            .collect();
        let span = if j > i {
            format!("{}-{}", l.layer, p.layers[j].layer)
        } else {
            l.layer.to_string()
        };
        out!("{span:>10} | {} | {}", cells.join(" | "), l.choice.name());
        i = j + 1;
    }
}

/// A duration in the unit that keeps four significant digits readable.
fn seconds(t: f64) -> String {
    if t >= 1e-3 {
        format!("{:.3} ms", t * 1e3)
    } else if t >= 1e-6 {
        format!("{:.3} us", t * 1e6)
    } else {
        format!("{:.1} ns", t * 1e9)
    }
}

/// One row per MoE layer found, then the near misses.
fn print_summary(c: Compilation) -> Result<()> {
    let c = ppmoe_compiler::pipeline::run_with(c, "moe")?;
    let layers = c
        .core
        .as_ref()
        .map(|p| p.moe_layers.clone())
        .unwrap_or_default();
    let header = [
        "layer",
        "experts",
        "top-k",
        "hidden",
        "expert ffn",
        "routing",
        "activation",
        "shared experts",
        "source family",
    ];
    let rows: Vec<[String; 9]> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            [
                format!("{i} ({})", l.origin),
                l.experts.to_string(),
                l.top_k.to_string(),
                l.hidden.to_string(),
                l.ffn.to_string(),
                l.routing.clone(),
                l.activation.clone(),
                l.shared_experts.clone(),
                l.family.label().to_string(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    out!("{}", line(&header.map(String::from)));
    out!(
        "{}",
        width
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-|-")
    );
    for r in &rows {
        out!("{}", line(r));
    }
    out!("{} MoE layer(s)", rows.len());
    for l in &layers {
        if let Some(n) = &l.note {
            out!("note: layer {}: {n}", l.origin);
        }
    }
    for u in &c.diagnostics.unraised {
        out!("not raised: {u}");
    }
    Ok(())
}

/// `--nproc-per-node N`: this same command once per GPU, without the flag, as ranks 0..N.
fn launch_ranks(n: usize) -> Result<()> {
    if n == 0 {
        bail!("--nproc-per-node 0: at least one process is needed");
    }
    // One process per GPU: never more processes than GPUs where CUDA works, and a sane number
    // where it does not (each rank then fails and says why).
    const CAP_WITHOUT_GPUS: usize = 64;
    match ppmoe_runtime::cuda::gpu_count() {
        Some(gpus) if n > gpus => {
            bail!("--nproc-per-node {n}: this machine has {gpus} GPU(s), one process per GPU")
        }
        None if n > CAP_WITHOUT_GPUS => bail!(
            "--nproc-per-node {n}: no GPU can be used here, and more than {CAP_WITHOUT_GPUS} processes are refused"
        ),
        _ => {}
    }
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    ppmoe_runtime::distributed::take_nproc_flag(&mut args).map_err(anyhow::Error::msg)?;
    let code = ppmoe_runtime::distributed::launch_local(n, &args).map_err(anyhow::Error::msg)?;
    if code != 0 {
        bail!("the run failed on at least one rank (exit code {code})");
    }
    Ok(())
}
