//! Subcommands and their flags. The public interface (DESIGN.md): inspect, compile, run, plan.

use anyhow::{bail, Result};
use ppmoe_compiler::distribute::{Grid, Strategy};
use ppmoe_compiler::passes::raise_moe::CapacityPolicy;
use ppmoe_compiler::pipeline::Compilation;
use ppmoe_runtime::runner::{check_outputs, run as run_bundle, Backend, InputArg};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "ppmoe", version, about = "A compiler for Mixture-of-Experts models (Pipeline MoE)")]
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
    },
    /// Print the parallel plan and its predicted cost (not built yet).
    Plan { model: PathBuf },
}

/// Flags of the MoE stages.
#[derive(clap::Args, Clone, Copy)]
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
    /// How MoE layers are distributed over the tp group: ppmoe (experts split, one all-reduce)
    /// or alltoall (tokens split, two all-to-alls).
    #[arg(long = "moe-strategy", value_enum, default_value = "ppmoe")]
    strategy: StrategyFlag,
    /// Microbatches of the GPipe schedule (must divide the batch).
    #[arg(long, default_value_t = 1)]
    microbatches: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StrategyFlag {
    Ppmoe,
    Alltoall,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CapacityFlag {
    Keep,
    Dropless,
}

impl MoeFlags {
    fn compilation(self, model: &std::path::Path, input_shape: &[(String, Vec<i64>)]) -> Result<Compilation> {
        if self.tp == 0 || self.pp == 0 || self.dp == 0 || self.microbatches == 0 {
            bail!("--tp, --pp, --dp and --microbatches must be at least 1");
        }
        if self.microbatches > 1 {
            bail!("--microbatches {}: only one microbatch is supported yet (the fixtures have batch 1)", self.microbatches);
        }
        let mut c = Compilation::new(model, input_shape);
        c.capacity_policy = Some(match self.capacity {
            CapacityFlag::Keep => CapacityPolicy::Keep,
            CapacityFlag::Dropless => CapacityPolicy::Dropless,
        });
        c.grid = Some(Grid { dp: self.dp, pp: self.pp, tp: self.tp });
        c.strategy = Some(match self.strategy {
            StrategyFlag::Ppmoe => Strategy::Ppmoe,
            StrategyFlag::Alltoall => Strategy::AllToAll,
        });
        Ok(c)
    }
}

/// `NAME=1x16` -> ("NAME", [1, 16]).
fn parse_input_shape(s: &str) -> Result<(String, Vec<i64>), String> {
    let (name, dims) = s.split_once('=').ok_or_else(|| format!("'{s}': expected NAME=DIMS, e.g. input_ids=1x16"))?;
    let dims = dims
        .split('x')
        .map(|d| d.parse::<i64>().ok().filter(|&d| d >= 0).ok_or_else(|| format!("'{s}': '{d}' is not a dimension")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), dims))
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { model, emit, input_shape, summary, moe } => {
            let c = moe.compilation(&model, &input_shape)?;
            if summary {
                return print_summary(c);
            }
            let (text, _) = ppmoe_compiler::pipeline::emit(c, stage_name(emit))?;
            println!("{text}");
            Ok(())
        }
        Command::Compile { model, output, input_shape, moe } => {
            let r = ppmoe_compiler::compile(moe.compilation(&model, &input_shape)?, &output)?;
            let total: usize = r.weight_bytes.iter().sum();
            println!(
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
                println!("note: {note}");
            }
            Ok(())
        }
        Command::Run { bundle, input, output_dir, backend, check, tolerance } => {
            let backend: Backend = backend.parse().map_err(anyhow::Error::msg)?;
            let inputs: Vec<InputArg> = input.iter().map(|s| InputArg::parse(s)).collect();
            let report = run_bundle(&bundle, &inputs, &output_dir, backend)?;
            for (name, path) in &report.outputs {
                println!("{name} -> {} ({} backend)", path.display(), report.backend);
            }
            let refs: Vec<InputArg> = check.iter().map(|s| InputArg::parse(s)).collect();
            let (lines, ok) = check_outputs(&bundle, &report, &refs, tolerance)?;
            for l in &lines {
                println!("{l}");
            }
            if !ok {
                bail!("an output differs from its reference by more than {tolerance:e}");
            }
            Ok(())
        }
        Command::Plan { .. } => bail!("`ppmoe plan` is not built yet (it arrives with the distribution passes)"),
    }
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

/// One row per MoE layer found, then the near misses.
fn print_summary(c: Compilation) -> Result<()> {
    let c = ppmoe_compiler::pipeline::run_with(c, "moe")?;
    let layers = c.core.as_ref().map(|p| p.moe_layers.clone()).unwrap_or_default();
    let header = ["layer", "experts", "top-k", "hidden", "expert ffn", "routing", "activation", "shared experts", "source family"];
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
    let line = |cells: &[String]| cells.iter().zip(&width).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join(" | ");
    println!("{}", line(&header.map(String::from)));
    println!("{}", width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-|-"));
    for r in &rows {
        println!("{}", line(r));
    }
    println!("{} MoE layer(s)", rows.len());
    for l in &layers {
        if let Some(n) = &l.note {
            println!("note: layer {}: {n}", l.origin);
        }
    }
    for u in &c.unraised {
        println!("not raised: {u}");
    }
    Ok(())
}
