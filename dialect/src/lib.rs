//! The MLIR side shared by the frontend and the compiler: the context ppmoe works in (all
//! upstream dialects registered, the `onnx.*` and `moe.*` ops allowed unregistered until the
//! `moe` IRDL dialect is loaded), and parsing with diagnostics turned into errors.

pub use melior;

mod guard;

use melior::dialect::DialectRegistry;
use melior::ir::operation::{OperationLike, OperationPrintingFlags, OperationRef};
use melior::ir::Module;
use melior::utility::register_all_dialects;
use melior::Context;
use std::cell::RefCell;
use std::rc::Rc;

/// The `moe` dialect's IRDL definition (ops, operands, results, attributes).
pub const MOE_IRDL: &str = include_str!("moe.irdl.mlir");

/// A context with every upstream dialect loaded, the `moe` dialect loaded from its IRDL
/// definition (so `moe.*` ops are verified), and other unregistered ops (`onnx.*`, `core.*`)
/// allowed.
pub fn context() -> Context {
    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    let context = Context::new();
    context.append_dialect_registry(&registry);
    context.load_all_available_dialects();
    context.set_allow_unregistered_dialects(true);
    let irdl = Module::parse(&context, MOE_IRDL)
        .expect("the moe IRDL definition parses (it is part of the build)");
    assert!(
        melior::utility::load_irdl_dialects(&irdl),
        "the moe IRDL dialect loads"
    );
    // The definition module must outlive the dialect it defines: keep it for the process.
    std::mem::forget(irdl);
    context
}

/// A context for reading generic-form text without verifying it (the StableHLO reader): only
/// `func` loaded, every other dialect unregistered (its ops generic, its attributes and types
/// opaque, kept as text). Loading all of upstream costs milliseconds per context, which the
/// reader, run once per model, does not need.
pub fn reading_context() -> Context {
    let context = Context::new();
    melior::dialect::DialectHandle::func().load_dialect(&context);
    context.set_allow_unregistered_dialects(true);
    context
}

/// Parses MLIR text and verifies it; on failure returns MLIR's own diagnostics.
pub fn parse_verified<'c>(context: &'c Context, text: &str) -> Result<Module<'c>, String> {
    parse(context, text, true)
}

/// Parses MLIR text without verifying it: for modules of unregistered ops, where verification
/// has nothing to check and takes any one-region op for a symbol table (so a `func.call` inside
/// a `sdy.manual_computation` would not find its callee).
pub fn parse_unverified<'c>(context: &'c Context, text: &str) -> Result<Module<'c>, String> {
    parse(context, text, false)
}

fn parse<'c>(context: &'c Context, text: &str, verify: bool) -> Result<Module<'c>, String> {
    // MLIR takes a C string: a NUL byte would end it early (melior panics on one).
    if let Some(at) = text.find('\0') {
        return Err(format!("a NUL byte at offset {at}: not MLIR text"));
    }
    guard::check(text)?;
    let ((module, verified), messages) = with_diagnostics(context, || {
        let module = Module::parse(context, text);
        let verified = module
            .as_ref()
            .map(|m| !verify || m.as_operation().verify())
            .unwrap_or(false);
        (module, verified)
    });
    match module {
        Some(m) if verified => Ok(m),
        Some(_) => Err(if messages.is_empty() {
            "verification failed".into()
        } else {
            messages
        }),
        None => Err(if messages.is_empty() {
            "the text does not parse".into()
        } else {
            messages
        }),
    }
}

/// What `f` returns, and the diagnostics MLIR emitted on `context` while it ran (each with
/// its location, joined by "; "): what a failed parse, verification or pass names.
pub fn with_diagnostics<T>(context: &Context, f: impl FnOnce() -> T) -> (T, String) {
    let diagnostics = Rc::new(RefCell::new(Vec::<String>::new()));
    let sink = diagnostics.clone();
    let id = context.attach_diagnostic_handler(move |d| {
        sink.borrow_mut().push(format!("{} ({})", d, d.location()));
        true
    });
    let out = f();
    context.detach_diagnostic_handler(id);
    let messages = diagnostics.borrow().join("; ");
    (out, messages)
}

/// Prints a module with large constants elided (`dense_resource<__elided__>`), as `--emit` does.
pub fn print_module(module: &Module) -> String {
    print_operation(&module.as_operation())
}

/// `print_module` of a module operation (as a pass sees the module).
pub fn print_operation(op: &OperationRef) -> String {
    let flags = OperationPrintingFlags::new().elide_large_elements_attributes(16);
    op.to_string_with_flags(flags)
        .unwrap_or_else(|e| format!("// printing failed: {e}"))
}

/// `print_module` with every op's location (`loc(...)`, as aliases at the end): the form that
/// reads back, locations naming the values.
pub fn print_module_with_locations(module: &Module) -> String {
    print_with_locations(&module.as_operation())
}

/// `print_module_with_locations` of a module operation (as a pass sees the module).
pub fn print_with_locations(op: &OperationRef) -> String {
    let flags = OperationPrintingFlags::new()
        .elide_large_elements_attributes(16)
        .enable_debug_info(true, false);
    op.to_string_with_flags(flags)
        .unwrap_or_else(|e| format!("// printing failed: {e}"))
}

/// Sets to `loc(unknown)` the location of every op under `op` that only says where its text
/// was parsed (`"-":line:col`): ops printed without a location (the generated kernels and the
/// kernel plans), whose parse positions would otherwise show in a dump and change with every
/// print.
pub fn forget_text_positions(op: &OperationRef) {
    unsafe extern "C" fn forget(
        op: mlir_sys::MlirOperation,
        _: *mut std::os::raw::c_void,
    ) -> mlir_sys::MlirWalkResult {
        use mlir_sys::*;
        // SAFETY: MLIR hands the walk a live op of the module being walked; its regions,
        // blocks and arguments are read while it lives.
        unsafe {
            let unknown = mlirLocationUnknownGet(mlirOperationGetContext(op));
            if mlirLocationIsAFileLineColRange(mlirOperationGetLocation(op)) {
                mlirOperationSetLocation(op, unknown);
            }
            // The arguments of the op's blocks (a kernel's parameters) carry positions too.
            for r in 0..mlirOperationGetNumRegions(op) {
                let mut block = mlirRegionGetFirstBlock(mlirOperationGetRegion(op, r));
                while !block.ptr.is_null() {
                    for a in 0..mlirBlockGetNumArguments(block) {
                        let arg = mlirBlockGetArgument(block, a);
                        if mlirLocationIsAFileLineColRange(mlirValueGetLocation(arg)) {
                            mlirBlockArgumentSetLocation(arg, unknown);
                        }
                    }
                    block = mlirBlockGetNextInRegion(block);
                }
            }
        }
        mlir_sys::MlirWalkResult_MlirWalkResultAdvance
    }
    // SAFETY: `op` is a live op; the callback keeps no handle past the walk.
    unsafe {
        mlir_sys::mlirOperationWalk(
            op.to_raw(),
            Some(forget),
            std::ptr::null_mut(),
            mlir_sys::MlirWalkOrder_MlirWalkPreOrder,
        )
    };
}
