//! The program-level passes (`moe` to `pipelined`, and the kernel plan) as MLIR passes: each
//! is an external pass, registered under its name, and a run of them is one MLIR `PassManager`
//! over the module, which verifies the module after every pass. A pass takes its programs from
//! the module (`adopt`), transforms them, and writes the module back in place; so the module is
//! the IR from pass to pass, and what a later stage (kernels, the bundle) takes is read from it.

use super::pass_pipeline::{set_option, spelled_with_options};
use super::{
    adopt, print_dump, stage_text, Compilation, Pass, PassError, Stage, READABLE, STAGES,
    WITH_LOCATIONS,
};
use crate::core::header::IrHeader;
use crate::error::CompileError;
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationMutLike, OperationRef, OperationRefMut};
use melior::ir::r#type::TypeId;
use melior::ir::{Module, Operation, RegionLike};
use melior::pass::{create_external, ExternalPass, PassManager};
use melior::Context;
use std::cell::RefCell;

/// A pass to run, with the options it sets first (`ppmoe opt`'s `ppmoe-shard{tp=2}`).
pub struct Scheduled {
    pub stage: &'static Stage,
    pub pass: &'static Pass,
    pub options: Vec<(String, String)>,
}

/// Each pass's identity for MLIR: the address of its slot (8-byte aligned, as MLIR asks).
#[repr(align(8))]
struct PassId;
static PASS_IDS: [PassId; 64] = [const { PassId }; 64];

/// What the passes share while the pass manager runs: the compilation, and the first error
/// (MLIR's pass failure carries no message).
struct Shared {
    c: RefCell<Compilation>,
    error: RefCell<Option<CompileError>>,
    /// The stage of the pass that ran last (whose IR the module holds).
    stage: RefCell<&'static str>,
}

/// Runs `passes` in one pass manager over the IR of `start` (the stage the compilation holds,
/// or the IR file as written where it is at `start`), and takes the compilation's programs from
/// the module it ends with.
pub fn run_passes(
    mut c: Compilation,
    start: &'static Stage,
    passes: &[Scheduled],
) -> Result<Compilation, CompileError> {
    let context = ppmoe_dialect::context();
    // IR given as input enters as the file wrote it; otherwise the stage is printed.
    let (text, as_written) = match c.ir_text.take() {
        Some((stage, text)) if stage == start.name => (text, true),
        _ => (stage_text(&c, start)?, false),
    };
    let mut module = ppmoe_dialect::parse_verified(&context, &text)
        .map_err(|diagnostics| c.verify_error(start.name, diagnostics))?;
    if as_written {
        crate::passes::sink_constants::sink_constants(&module.as_operation())
            .map_err(|reason| ir_error(&c, reason))?;
    }
    let shared = Shared {
        c: RefCell::new(c),
        error: RefCell::new(None),
        stage: RefCell::new(start.name),
    };
    if passes.iter().any(|s| s.pass.upstream.is_some()) {
        melior::utility::register_all_passes();
        melior::utility::register_all_llvm_translations(&context);
    }
    let (result, diagnostics) = {
        let manager = PassManager::new(&context);
        manager.enable_verifier(true);
        let mut ids = 0..PASS_IDS.len();
        for s in passes {
            add(&manager, &shared, &context, s, &mut ids)?;
        }
        ppmoe_dialect::with_diagnostics(&context, || manager.run(&mut module))
    };
    let mut c = shared.c.into_inner();
    if let Some(error) = shared.error.into_inner() {
        return Err(error);
    }
    if result.is_err() {
        return Err(c.verify_error(&shared.stage.borrow(), diagnostics));
    }
    // A kernels stage made here is the compilation's own plan, printed: the programs it was
    // planned from were taken from the pipelined module the pass began with (a kernels module
    // read from a file is checked against a new plan, `adopt_kernels`). The `ptx` stage's
    // module gives the PTX, and the programs the bundle ships.
    let stage = *shared.stage.borrow();
    if c.wants_module_text {
        c.module_text = Some((
            stage.to_string(),
            printed_module(stage, &module.as_operation()),
        ));
    }
    if stage == "ptx" {
        c.ptx = crate::codegen::ptx::read_ptx(&module.as_operation())
            .map_err(|reason| ir_error(&c, reason))?;
        super::adopt::adopt_final(&mut c, &module.as_operation())
            .map_err(|reason| ir_error(&c, reason))?;
    } else if READABLE.contains(&stage) && stage != "kernels" {
        adopt(&mut c, &module.as_operation()).map_err(|reason| ir_error(&c, reason))?;
    }
    Ok(c)
}

/// Adds `scheduled` to the pass manager: ppmoe's passes as external passes (each taking an
/// identity from `ids`), an upstream one by its spelling (and, with `--print-ir-after-all`, an
/// external pass after it that dumps the module under its name).
fn add<'a>(
    manager: &PassManager,
    shared: &'a Shared,
    context: &'a Context,
    scheduled: &'a Scheduled,
    ids: &mut std::ops::Range<usize>,
) -> Result<(), CompileError> {
    let mut next_id = || {
        ids.next().ok_or_else(|| {
            ir_error(
                &shared.c.borrow(),
                format!("more than {} passes in one pipeline", PASS_IDS.len()),
            )
        })
    };
    let Some(spelled) = scheduled.pass.upstream else {
        manager.add_pass(external(shared, context, scheduled, next_id()?));
        return Ok(());
    };
    add_upstream(manager, spelled).map_err(|e| ir_error(&shared.c.borrow(), e))?;
    if shared.c.borrow().options.print_ir_after_all {
        manager.add_pass(dump_pass(shared, scheduled, next_id()?));
    }
    Ok(())
}

/// Appends upstream passes, spelled as pipeline elements (`gpu.module(convert-gpu-to-nvvm)`).
fn add_upstream(manager: &PassManager, spelled: &str) -> Result<(), String> {
    let mut message = String::new();
    unsafe extern "C" fn collect(text: mlir_sys::MlirStringRef, data: *mut std::ffi::c_void) {
        // SAFETY: `data` is the `String` below, alive for the call.
        unsafe { (*(data as *mut String)).push_str(&crate::core::read::string_ref(text)) }
    }
    let pipeline = melior::StringRef::new(spelled);
    // SAFETY: the pass manager and the string outlive the call; `collect` only appends.
    let added = unsafe {
        mlir_sys::mlirOpPassManagerAddPipeline(
            manager.as_operation_pass_manager().to_raw(),
            pipeline.to_raw(),
            Some(collect),
            &mut message as *mut String as *mut std::ffi::c_void,
        )
    };
    if added.value == 0 {
        return Err(format!(
            "the upstream pass '{spelled}' does not parse: {message}"
        ));
    }
    Ok(())
}

/// `--print-ir-after-all`'s dump after an upstream pass, under its name.
fn dump_pass<'a>(shared: &'a Shared, scheduled: &'a Scheduled, id: usize) -> melior::pass::Pass {
    let run = move |module: OperationRef, _: ExternalPass| {
        let c = shared.c.borrow();
        dump_after(&c, scheduled.stage, scheduled.pass, &module);
    };
    create_external(
        run,
        TypeId::create(&PASS_IDS[id]),
        scheduled.pass.name,
        scheduled.pass.name,
        "",
        "builtin.module",
        &[],
    )
}

/// `scheduled` as an MLIR pass on `builtin.module`: adopt the module's programs, set the
/// pass's options, run it, write the module back (and print it, with
/// `--print-ir-after-all`).
fn external<'a>(
    shared: &'a Shared,
    context: &'a Context,
    scheduled: &'a Scheduled,
    index: usize,
) -> melior::pass::Pass {
    let id = &PASS_IDS[index];
    let name = scheduled.pass.name;
    let run = move |module: OperationRef, pass: ExternalPass| {
        let outcome = run_one(shared, context, scheduled, &module);
        if let Err(e) = outcome {
            shared.error.borrow_mut().get_or_insert(e);
            pass.signal_failure();
        }
    };
    create_external(
        run,
        TypeId::create(id),
        name,
        name,
        "",
        "builtin.module",
        &[],
    )
}

fn run_one(
    shared: &Shared,
    context: &Context,
    scheduled: &Scheduled,
    module: &OperationRef,
) -> Result<(), CompileError> {
    let (stage, pass) = (scheduled.stage, scheduled.pass);
    if let Some(on_module) = pass.on_module {
        return run_on_module(shared, context, scheduled, module, on_module);
    }
    let mut c = shared.c.borrow_mut();
    let at = adopt(&mut c, module).map_err(|reason| ir_error(&c, reason))?;
    if let Some(reason) = past_its_input(stage, pass, &at) {
        return Err(ir_error(&c, reason));
    }
    set_options(&mut c, scheduled)?;
    tracing::info!("pass {} ({})", pass.name, super::memory_now());
    (pass.run)(&mut c)?;
    let spelled = spelled_with_options(pass, &c.options);
    c.history.push(spelled);
    let text = stage_text(&c, stage)?;
    let fresh = ppmoe_dialect::parse_verified(context, &text)
        .map_err(|diagnostics| c.verify_error(stage.name, diagnostics))?;
    ppmoe_dialect::forget_text_positions(&fresh.as_operation());
    replace_contents(module, fresh);
    *shared.stage.borrow_mut() = stage.name;
    dump_after(&c, stage, pass, module);
    Ok(())
}

/// The options `scheduled` sets before its pass runs (`ppmoe-shard{tp=2}`).
fn set_options(c: &mut Compilation, scheduled: &Scheduled) -> Result<(), CompileError> {
    for (key, value) in &scheduled.options {
        set_option(c, key, value)
            .map_err(|e| ir_error(c, format!("{}{{{key}={value}}}: {e}", scheduled.pass.name)))?;
    }
    Ok(())
}

/// A pass written over the module's ops: it transforms the module in place (the compilation's
/// programs are taken from it by the next pass), and the header records it.
fn run_on_module(
    shared: &Shared,
    context: &Context,
    scheduled: &Scheduled,
    module: &OperationRef,
    on_module: super::OnModule,
) -> Result<(), CompileError> {
    let (stage, pass) = (scheduled.stage, scheduled.pass);
    let mut c = shared.c.borrow_mut();
    let at = IrHeader::read(module)
        .map_err(|reason| ir_error(&c, reason))?
        .stage;
    // A pass over the module's ops takes exactly its input stage's IR (there is no program
    // step of its own to refuse IR before it), but one that reads the module's programs first
    // and can take an earlier stage's (`takes_earlier`).
    if pass.takes_earlier {
        if let Some(reason) = past_its_input(stage, pass, &at) {
            return Err(ir_error(&c, reason));
        }
    } else if let Some(takes) = input_stage(stage, pass).filter(|&t| STAGES[t].name != at) {
        return Err(ir_error(&c, takes_other_ir(pass, takes, &at)));
    }
    set_options(&mut c, scheduled)?;
    tracing::info!("pass {} ({})", pass.name, super::memory_now());
    let changed = on_module(context, module, &mut c).map_err(|e| match e {
        PassError::Ir(reason) => ir_error(&c, reason),
        PassError::Grid(reason) => CompileError::Grid {
            path: c.options.path.clone(),
            reason,
        },
        PassError::Compile(e) => e,
    })?;
    tracing::debug!("{}: {changed} ops", pass.name);
    let spelled = spelled_with_options(pass, &c.options);
    c.history.push(spelled);
    // The header only: the module's ops are already the pass's (a module of kernels stays
    // their container).
    let container = module.attribute("gpu.container_module").is_ok();
    let header = format!(
        "module attributes {{{}{}}} {{}}",
        if container {
            "gpu.container_module, "
        } else {
            ""
        },
        super::printing::header_of(&c, stage.name)
    );
    let fresh = ppmoe_dialect::parse_verified(context, &header)
        .map_err(|diagnostics| c.verify_error(stage.name, diagnostics))?;
    replace_attributes(module, &fresh);
    *shared.stage.borrow_mut() = stage.name;
    dump_after(&c, stage, pass, module);
    Ok(())
}

/// `--print-ir-after-all`'s dump of the module after `pass`.
fn dump_after(c: &Compilation, stage: &Stage, pass: &Pass, module: &OperationRef) {
    if c.options.print_ir_after_all {
        print_dump(pass, stage, &printed_module(stage.name, module));
    }
}

/// The module of `stage` as a dump or `opt` prints it: large constants elided, every op's
/// location where the stage's IR reads back.
fn printed_module(stage: &str, module: &OperationRef) -> String {
    if WITH_LOCATIONS.contains(&stage) {
        ppmoe_dialect::print_with_locations(module)
    } else {
        ppmoe_dialect::print_operation(module)
    }
}

/// The stage whose IR `pass` takes: the first pass of a stage takes the stage before's IR
/// (ppmoe-shard the `moe` stage's), the others their own stage's.
fn input_stage(stage: &Stage, pass: &Pass) -> Option<usize> {
    let own = STAGES.iter().position(|s| s.name == stage.name)?;
    let first = stage.passes.first().map(|p| p.name) == Some(pass.name);
    if first {
        own.checked_sub(1)
    } else {
        Some(own)
    }
}

fn takes_other_ir(pass: &Pass, takes: usize, at: &str) -> String {
    format!(
        "{} takes IR of stage '{}'; this IR is at stage '{at}'",
        pass.name, STAGES[takes].name
    )
}

/// Where the IR is past what `pass` transforms (IR before it is refused by the pass itself,
/// which names the pass it needs first).
fn past_its_input(stage: &Stage, pass: &Pass, at: &str) -> Option<String> {
    let takes = input_stage(stage, pass)?;
    let position = STAGES.iter().position(|s| s.name == at)?;
    (position > takes).then(|| takes_other_ir(pass, takes, at))
}

/// The module's header and body replaced by `fresh`'s (its operations moved, not copied).
fn replace_contents(module: &OperationRef, fresh: Module) {
    replace_attributes(module, &fresh);
    let Some(body) = module.region(0).ok().and_then(|r| r.first_block()) else {
        return;
    };
    while let Some(op) = body.first_operation() {
        // SAFETY: the module's old contents go whole (nothing outside reads them); no handle
        // to the op is used after.
        unsafe { crate::passes::dead_ops::erase_op(op) };
    }
    let from = fresh.body();
    while let Some(mut op) = from.first_operation_mut() {
        op.remove_from_parent();
        // SAFETY: removed from `fresh`, the operation is owned until the block takes it.
        body.append_operation(unsafe { Operation::from_raw(op.to_raw()) });
    }
}

/// The module's attributes replaced by `fresh`'s.
fn replace_attributes(module: &OperationRef, fresh: &Module) {
    // SAFETY: the pass manager hands this pass the module to transform; nothing else holds a
    // reference into it while the pass runs.
    let mut target = unsafe { OperationRefMut::from_raw(module.to_raw()) };
    // The header, and the kernels stage's `gpu.container_module`: the fresh module's
    // attributes, and none of the old module's besides.
    let name_of = |id: melior::ir::Identifier| id.as_string_ref().as_str().map(str::to_owned);
    let old: Vec<String> = module
        .attributes()
        .filter_map(|(id, _)| name_of(id).ok())
        .collect();
    for name in old {
        let _ = target.remove_attribute(&name);
    }
    for (id, value) in fresh.as_operation().attributes() {
        if let Ok(name) = name_of(id) {
            target.set_attribute(&name, value);
        }
    }
}

fn ir_error(c: &Compilation, reason: String) -> CompileError {
    CompileError::Ir {
        path: c.error_path(),
        reason,
    }
}
