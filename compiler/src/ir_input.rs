//! IR as the compiler's input: a module printed by `--emit` from `core` to `pipelined` (and
//! edited, or not) compiles like the model it came from. The programs are the module's; the
//! weights are the source's, which the module names (`ppmoe.source`): the source is lowered
//! again to the module's stage, with the options recorded beside it (and, from `sharded` on,
//! the module's grid), and each weight a program takes is checked against the type of its
//! argument. `--weights MODEL` names another source.

use crate::core::header::{parse_dtype, parse_strategy, IrHeader};
use crate::core::print::tensor_type;
use crate::core::read::{read_grid, read_programs};
use crate::core::CoreProgram;
use crate::distribute::shard_moe::RankProgram;
use crate::distribute::Grid;
use crate::distribute::Strategy;
use crate::error::CompileError;
use crate::pipeline::{run_with, Compilation, Options};
use ppmoe_runtime::program::{Buffer, BufferKind, Op, Program};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The stages whose IR reads back.
pub const READABLE: &[&str] = &["core", "moe", "sharded", "pipelined"];

/// Whether `path` holds IR that ppmoe printed: MLIR text whose module (after comments and
/// alias definitions such as `#loc = loc(unknown)`) has attributes naming its stage.
/// (StableHLO text, also `.mlir`, has no such header.)
pub fn is_ppmoe_ir(path: &Path) -> bool {
    let mut head = vec![0u8; 64 << 10];
    let Ok(n) = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) else {
        return false;
    };
    let text = String::from_utf8_lossy(&head[..n]);
    let code = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with('#'))
        .unwrap_or_default();
    code.starts_with("module attributes {") && code.contains(crate::core::header::STAGE)
}

/// Takes the compilation to the stage its IR file was printed at; returns that stage's name.
/// The options the file records (input shapes, microbatches, the evaluation limit, capacity)
/// replace the compilation's, the source's path included: what later stages print names it.
pub fn resume(c: &mut Compilation) -> Result<String, CompileError> {
    let path = c.options.path.clone();
    let fail = |reason: String| CompileError::Ir {
        path: path.clone(),
        reason,
    };
    let ir = read_ir(&path)?;
    check_flags(&c.options, &ir.header).map_err(fail)?;
    let stage = ir.header.stage.clone();
    let later = matches!(stage.as_str(), "sharded" | "pipelined");
    let mut header = ir.header;
    relative_to(&mut header, &path);
    let mut source = source_options(&header, c.options.weights.take()).map_err(fail)?;
    if later {
        source.grid = Some(layout_grid(&stage, ir.grid, c.options.grid).map_err(fail)?);
    }
    if is_ppmoe_ir(&source.path) {
        return Err(fail(format!(
            "its weights' source {} is IR itself; name the model with --weights",
            source.path.display()
        )));
    }
    tracing::info!(
        "weights: {} lowered again to stage {stage}",
        source.path.display()
    );
    let lowered = run_with(
        Compilation {
            options: source.clone(),
            ..Default::default()
        },
        &stage,
    )?;
    if later {
        install_ranks(c, ir.programs, lowered, &stage).map_err(fail)?;
        c.options = Options {
            hardware: c.options.hardware,
            target_cuda: c.options.target_cuda,
            print_ir_after_all: c.options.print_ir_after_all,
            ..source
        };
    } else {
        install_core(c, ir.programs, lowered, &stage).map_err(fail)?;
        c.options = Options {
            grid: c.options.grid,
            strategy: c.options.strategy,
            hardware: c.options.hardware,
            target_cuda: c.options.target_cuda,
            weight_dtype: c.options.weight_dtype,
            print_ir_after_all: c.options.print_ir_after_all,
            ..source
        };
    }
    c.ir_input = Some(path);
    Ok(stage)
}

/// An IR file as read: its header, its grid (1 x 1 x 1 before `sharded`) and its programs.
struct ReadIr {
    header: IrHeader,
    grid: Grid,
    programs: Vec<Program>,
}

/// Parses and verifies the file (MLIR), and reads its header and programs.
fn read_ir(path: &Path) -> Result<ReadIr, CompileError> {
    let fail = |reason: String| CompileError::Ir {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|cause| CompileError::Io {
        path: path.to_owned(),
        cause,
    })?;
    let context = ppmoe_dialect::context();
    let module = ppmoe_dialect::parse_verified(&context, &text).map_err(|diagnostics| {
        CompileError::Verify {
            path: path.to_owned(),
            stage: "input".into(),
            diagnostics,
        }
    })?;
    let header = IrHeader::read(&module).map_err(fail)?;
    if !READABLE.contains(&header.stage.as_str()) {
        return Err(fail(format!(
            "IR of stage '{}' does not read back yet; IR of these stages does: {}",
            header.stage,
            READABLE.join(", ")
        )));
    }
    Ok(ReadIr {
        grid: read_grid(&module).map_err(fail)?,
        programs: read_programs(&module).map_err(fail)?,
        header,
    })
}

/// The flags that the IR fixed must agree with it (or be left out): input shapes and
/// microbatches.
fn check_flags(options: &Options, header: &IrHeader) -> Result<(), String> {
    let given = options.microbatches.max(1);
    if given != 1 && given != header.source.microbatches {
        return Err(format!(
            "--microbatches {given}: the IR was printed for {} microbatches",
            header.source.microbatches
        ));
    }
    let shapes = &options.input_shapes;
    if !shapes.is_empty() && *shapes != header.source.input_shapes {
        return Err(format!(
            "--input-shape: the IR was printed at {:?}; its shapes are fixed",
            header.source.input_shapes
        ));
    }
    Ok(())
}

/// A later stage's programs with the source's weights, in place of the compilation's; the
/// model's ports and MoE layers (what `compile` reports) are the source's.
fn install_ranks(
    c: &mut Compilation,
    programs: Vec<Program>,
    mut lowered: Compilation,
    stage: &str,
) -> Result<(), String> {
    let ranks = match stage {
        "sharded" => std::mem::take(&mut lowered.sharded),
        _ => std::mem::take(&mut lowered.ranks),
    };
    let ranks = with_weights(programs, ranks, stage)?;
    match stage {
        "sharded" => c.sharded = ranks,
        _ => c.ranks = ranks,
    }
    c.core = lowered.core.take();
    c.choices = std::mem::take(&mut lowered.choices);
    c.diagnostics = std::mem::take(&mut lowered.diagnostics);
    Ok(())
}

/// The `core` or `moe` stage's one program with the source's weights (and, at `core`, the
/// source's few-token program where it fits).
fn install_core(
    c: &mut Compilation,
    programs: Vec<Program>,
    lowered: Compilation,
    stage: &str,
) -> Result<(), String> {
    let [program]: [Program; 1] = programs.try_into().map_err(|p: Vec<Program>| {
        format!("stage '{stage}' holds one function, not {}", p.len())
    })?;
    let (core, probe) = take_weights(program, lowered, stage)?;
    c.probe_core = probe;
    c.core = Some(core);
    Ok(())
}

/// The grid a later stage's IR runs on: the IR's own at `pipelined`; at `sharded` its tp, and
/// the pp and dp the flags give (the pipeline is not laid out yet). Flags that contradict the
/// IR are refused.
fn layout_grid(stage: &str, ir: Grid, flags: Option<Grid>) -> Result<Grid, String> {
    let flags = flags.unwrap_or(Grid::ONE);
    let pick = |what: &str, given: usize, fixed: usize, free: bool| {
        if given == 1 {
            Ok(fixed)
        } else if given == fixed || free {
            Ok(given)
        } else {
            Err(format!(
                "--{what} {given}: the IR is laid out on {}",
                ir.mlir()
            ))
        }
    };
    let free = stage == "sharded";
    Ok(Grid {
        tp: pick("tp", flags.tp, ir.tp, false)?,
        pp: pick("pp", flags.pp, ir.pp, free)?,
        dp: pick("dp", flags.dp, ir.dp, free)?,
    })
}

/// The later stages' programs, each with the weights of the source's program of the same rank
/// under the names its arguments give.
fn with_weights(
    programs: Vec<Program>,
    ranks: Vec<RankProgram>,
    stage: &str,
) -> Result<Vec<RankProgram>, String> {
    if programs.len() != ranks.len() {
        return Err(format!(
            "{} functions, where the source's lowering to stage {stage} has {} ranks",
            programs.len(),
            ranks.len()
        ));
    }
    programs
        .into_iter()
        .zip(ranks)
        .map(|(program, rp)| {
            let weights = attach_weights(&program, rp.weights.into_iter().collect(), stage)
                .map_err(|e| format!("@rank{}: {e}", program.rank))?;
            Ok(RankProgram { program, weights })
        })
        .collect()
}

/// The source's paths, where relative, are relative to the IR file (as a hand-written test
/// names its fixture); `--emit` writes them absolute.
fn relative_to(header: &mut IrHeader, ir: &Path) {
    let dir = ir.parent().unwrap_or(Path::new("."));
    let s = &mut header.source;
    if s.model.is_relative() {
        s.model = dir.join(&s.model);
    }
    if let Some(w) = s.weights.as_mut().filter(|w| w.is_relative()) {
        *w = dir.join(&*w);
    }
}

/// The options that lowered the source to the module's stage; `--weights` names another model.
fn source_options(header: &IrHeader, weights: Option<PathBuf>) -> Result<Options, String> {
    let s = &header.source;
    let strategy = match s.strategy.as_deref() {
        None => Strategy::Ppmoe,
        Some(text) => {
            parse_strategy(text).ok_or_else(|| format!("ppmoe.source.strategy '{text}'"))?
        }
    };
    let weight_dtype = match s.dtype.as_deref() {
        None => None,
        Some(text) => parse_dtype(text).ok_or_else(|| format!("ppmoe.source.dtype '{text}'"))?,
    };
    Ok(Options {
        strategy: Some(strategy),
        weight_dtype,
        path: weights.unwrap_or_else(|| s.model.clone()),
        input_shapes: s.input_shapes.clone(),
        weights: s.weights.clone(),
        capacity_policy: Some(s.capacity),
        microbatches: s.microbatches,
        eval_limit: Some(s.eval_limit),
        ..Default::default()
    })
}

/// The module's program with the source's weights under the names its arguments give, each
/// checked for type; the MoE layers and run-time nodes the source's lowering found; and, at
/// `core`, the source's few-token program where it has the module's structure.
fn take_weights(
    program: Program,
    mut lowered: Compilation,
    stage: &str,
) -> Result<(CoreProgram, Option<CoreProgram>), String> {
    let source = lowered.core.take().ok_or("the source did not lower")?;
    let weights = attach_weights(&program, source.weights.into_iter().collect(), stage)?;
    let layers = (program.instructions.iter())
        .filter(|i| matches!(i.op, Op::MoeExperts { .. }))
        .count();
    if layers != source.moe_layers.len() {
        return Err(format!(
            "{layers} moe.experts ops, where the source's lowering found {} MoE layers",
            source.moe_layers.len()
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
        moe_layers: source.moe_layers,
        run_time_nodes: source.run_time_nodes,
    };
    let probe = match (stage, lowered.probe_core.take()) {
        ("core", Some(p)) => renumbered_probe(p, &core.program),
        _ => None,
    };
    Ok((core, probe))
}

/// The weights `program`'s arguments name, taken from `by_name`, each checked against its
/// argument's type.
fn attach_weights(
    program: &Program,
    mut by_name: HashMap<String, ppmoe_runtime::Tensor>,
    stage: &str,
) -> Result<Vec<(String, ppmoe_runtime::Tensor)>, String> {
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

/// The source's few-token program numbered as the module's (printed and read back, as the
/// module was), where the two have the same structure; else none, and the raise works at the
/// compile size.
fn renumbered_probe(probe: CoreProgram, program: &Program) -> Option<CoreProgram> {
    let text = crate::core::print::print_core(&[&probe.program]);
    let context = ppmoe_dialect::context();
    let module = ppmoe_dialect::parse_verified(&context, &text).ok()?;
    let read = read_programs(&module).ok()?.pop()?;
    match crate::moe::probe::same_structure(program, &read) {
        Ok(()) => Some(CoreProgram {
            program: read,
            ..probe
        }),
        Err(why) => {
            tracing::info!("moe: the IR's program is not the source's few-token one ({why})");
            None
        }
    }
}
