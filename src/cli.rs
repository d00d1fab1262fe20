//! Subcommands and their flags. The public interface (DESIGN.md): inspect, compile, run, plan.

use anyhow::{bail, Context as _, Result};
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
    },
    /// Compile a model into a bundle (not built yet).
    Compile {
        model: PathBuf,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Run a bundle (not built yet).
    Run { bundle: PathBuf },
    /// Print the parallel plan and its predicted cost (not built yet).
    Plan { model: PathBuf },
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
        Command::Inspect { model, emit, input_shape } => inspect(&model, emit, &input_shape),
        Command::Compile { .. } => bail!("`ppmoe compile` is not built yet (it arrives with the bundle and the CPU backend)"),
        Command::Run { .. } => bail!("`ppmoe run` is not built yet (it arrives with the bundle and the CPU backend)"),
        Command::Plan { .. } => bail!("`ppmoe plan` is not built yet (it arrives with the distribution passes)"),
    }
}

fn inspect(model: &std::path::Path, emit: Emit, input_shape: &[(String, Vec<i64>)]) -> Result<()> {
    let context = ppmoe_dialect::context();
    let (_model, _types, module) = ppmoe_frontend::import_module(&context, model, input_shape)?;
    match emit {
        Emit::Onnx => {
            println!("{}", ppmoe_dialect::print_module(&module));
            Ok(())
        }
        other => Err(anyhow::anyhow!("stage '{other:?}' is not built yet; the stages built so far: onnx"))
            .with_context(|| format!("{}", model.display())),
    }
}
