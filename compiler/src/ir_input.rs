//! IR as the compiler's input: a module printed by `--emit` from `core` to `kernels` (and
//! edited, or not) compiles like the model it came from. The programs are the module's; the
//! weights are the source's, which the module names (`ppmoe.source`): the source is lowered
//! again to the module's stage, with the options recorded beside it (and, from `sharded` on,
//! the module's grid), and each weight a program takes is checked against the type of its
//! argument. `--weights MODEL` names another source.

use crate::core::header::{parse_dtype, parse_strategy, IrHeader, SOURCE};
use crate::core::read::read_grid;
use crate::distribute::Grid;
use crate::distribute::Strategy;
use crate::error::CompileError;
use crate::pipeline::{
    adopt, check_readable, check_run, parse_pass_pipeline, run_passes, run_with, Compilation,
    Options, MODULE_STAGES, STAGES,
};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Whether `path` holds IR that ppmoe printed: MLIR text whose module (after comments and
/// alias definitions such as `#loc = loc(unknown)`) has attributes naming its stage, in the
/// custom form (`module attributes {.. ppmoe.stage ..}`) or in MLIR's generic form (a
/// `"builtin.module"() ({..}) {.. ppmoe.stage ..}` whose attributes come last, as
/// `mlir-opt --mlir-print-op-generic` prints it). (StableHLO text, also `.mlir`, has no such
/// header.)
pub fn is_ppmoe_ir(path: &Path) -> bool {
    const WINDOW: usize = 64 << 10;
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = vec![0u8; WINDOW];
    let Ok(n) = file.read(&mut head) else {
        return false;
    };
    let text = String::from_utf8_lossy(&head[..n]);
    let code = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with('#'))
        .unwrap_or_default();
    let stage = crate::core::header::STAGE;
    if code.starts_with("module attributes {") {
        return code.contains(stage);
    }
    if !code.starts_with("\"builtin.module\"()") {
        return false;
    }
    // The generic form's module attributes follow its body: read the file's end.
    use std::io::{Seek, SeekFrom};
    let Ok(size) = file.seek(SeekFrom::End(0)) else {
        return false;
    };
    let from = size.saturating_sub(WINDOW as u64);
    let mut tail = Vec::new();
    let read_tail = file
        .seek(SeekFrom::Start(from))
        .and_then(|_| file.read_to_end(&mut tail));
    read_tail.is_ok() && String::from_utf8_lossy(&tail).contains(&format!("{stage} = "))
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
    let text = std::fs::read_to_string(&path).map_err(|cause| CompileError::Io {
        path: path.clone(),
        cause,
    })?;
    let context = ppmoe_dialect::context();
    let module = ppmoe_dialect::parse_verified(&context, &text).map_err(|diagnostics| {
        CompileError::Verify {
            path: path.clone(),
            stage: "input".into(),
            diagnostics,
        }
    })?;
    let module = module.as_operation();
    crate::passes::sink_constants::sink_constants(&module).map_err(fail)?;
    let mut header = IrHeader::read(&module).map_err(fail)?;
    let stage = header.stage.clone();
    check_readable(&stage).map_err(fail)?;
    check_flags(&c.options, &header).map_err(fail)?;
    let later = matches!(stage.as_str(), "sharded" | "pipelined" | "kernels");
    relative_to(&mut header, &path);
    let mut source = source_options(&header, c.options.weights.take()).map_err(fail)?;
    if later {
        let grid = read_grid(&module).map_err(fail)?;
        source.grid = Some(layout_grid(&stage, grid, c.options.grid).map_err(fail)?);
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
    let pipeline = header.source.pipeline.as_deref();
    let lowered = lower_source(source.clone(), &stage, pipeline).map_err(|e| match e {
        Refused(reason) => fail(reason),
        Failed(e) => e,
    })?;
    take_lowered(c, lowered);
    let given = std::mem::take(&mut c.options);
    c.options = Options {
        hardware: given.hardware,
        target_cuda: given.target_cuda,
        print_ir_after_all: given.print_ir_after_all,
        ..source
    };
    if !later {
        // Before `sharded`, the grid, strategy and dtype are still the flags' to choose.
        c.options.grid = given.grid;
        c.options.strategy = given.strategy;
        c.options.weight_dtype = given.weight_dtype;
    }
    // The options are the IR's before its programs are taken: a kernels module is checked
    // against the plan printed for its own grid.
    adopt(c, &module).map_err(fail)?;
    c.ir_input = Some(path);
    c.ir_text = Some((stage.clone(), text));
    Ok(stage)
}

/// Why the source could not be lowered as the IR was: the header's pipeline is refused, or
/// the lowering failed.
enum LowerError {
    Refused(String),
    Failed(CompileError),
}
use LowerError::{Failed, Refused};

/// The source lowered as the IR was: to `core`, then the passes the header records (or, where
/// it records none, every pass of the stages up to the IR's).
fn lower_source(
    source: Options,
    stage: &str,
    pipeline: Option<&str>,
) -> Result<Compilation, LowerError> {
    let start = |last: &str| {
        let c = Compilation {
            options: source.clone(),
            ..Default::default()
        };
        run_with(c, last).map_err(Failed)
    };
    let Some(pipeline) = pipeline else {
        return start(stage);
    };
    let refused = |e: String| Refused(format!("{SOURCE}.pipeline: {e}"));
    let runs = parse_pass_pipeline(pipeline).map_err(refused)?;
    let scheduled = (runs.iter().map(check_run))
        .collect::<Result<Vec<_>, _>>()
        .map_err(refused)?;
    if let Some(s) = scheduled
        .iter()
        .find(|s| !MODULE_STAGES.contains(&s.stage.name))
    {
        return Err(refused(format!(
            "{} does not make IR that reads back",
            s.pass.name
        )));
    }
    let ends_at = scheduled.last().map_or("core", |s| s.stage.name);
    if ends_at != stage {
        return Err(refused(format!(
            "its last pass makes stage '{ends_at}', the IR is at '{stage}'"
        )));
    }
    let core = start("core")?;
    if scheduled.is_empty() {
        return Ok(core);
    }
    let core_stage = STAGES.iter().find(|s| s.name == "core").ok_or_else(|| {
        Failed(CompileError::StageNotBuilt(
            "core".into(),
            "no such stage".into(),
        ))
    })?;
    run_passes(core, core_stage, &scheduled).map_err(Failed)
}

/// The source's lowering to the IR's stage, whose programs the IR's then replace (`adopt`):
/// its weights, and the model's ports and MoE layers (what `compile` reports).
fn take_lowered(c: &mut Compilation, lowered: Compilation) {
    c.core = lowered.core;
    c.probe_core = lowered.probe_core;
    c.sharded = lowered.sharded;
    c.ranks = lowered.ranks;
    c.choices = lowered.choices;
    c.diagnostics = lowered.diagnostics;
    c.history = lowered.history;
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
