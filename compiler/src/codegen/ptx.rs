//! The `ptx` stage, as passes over the kernels module: `ppmoe-attach-target` marks each
//! `gpu.module` for the H200 (`sm_90`, or `sm_90a`, the H100/H200's own features, where a
//! module has warpgroup MMAs: `wgmma` exists only there), MLIR's own passes lower it (gpu ->
//! NVVM -> LLVM IR, optimised at O3, as `gpu-module-to-binary{format=llvm}` leaves it: bitcode
//! in a `gpu.binary`), and `ppmoe-nvptx` compiles each binary's bitcode to PTX with LLVM's
//! NVPTX target through inkwell, the PTX then the binary's object (`assembly`), whence the
//! bundle takes it.

use crate::passes::func_ops::top_level;
use crate::pipeline::Compilation;
use melior::ir::attribute::{ArrayAttribute, Attribute};
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationMutLike, OperationRef, OperationRefMut};
use melior::ir::RegionLike;
use melior::Context;
use ppmoe_dialect::melior;

/// The PTX target: the H200's architecture and a PTX ISA it (and CUDA 12.0 and later) reads;
/// with its architecture-specific features (wgmma), and the PTX ISA that has them.
const CHIP: (&str, &str) = ("sm_90", "+ptx78");
const CHIP_WGMMA: (&str, &str) = ("sm_90a", "+ptx80");

/// LLVM bitcode -> PTX text, with LLVM's NVPTX back end through inkwell.
fn bitcode_to_ptx(
    name: &str,
    bitcode: &[u8],
    (chip, features): (&str, &str),
) -> Result<String, String> {
    use inkwell::targets::{
        CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetTriple,
    };
    Target::initialize_nvptx(&InitializationConfig::default());
    let context = inkwell::context::Context::create();
    let buffer = inkwell::memory_buffer::MemoryBuffer::create_from_memory_range_copy(bitcode, name);
    let module = context
        .create_module_from_ir(buffer)
        .map_err(|e| format!("{name}: the LLVM bitcode does not load: {e}"))?;
    let triple = TargetTriple::create("nvptx64-nvidia-cuda");
    let target = Target::from_triple(&triple)
        .map_err(|e| format!("the NVPTX target is not in this LLVM: {e}"))?;
    let machine = target
        .create_target_machine(
            &triple,
            chip,
            features,
            inkwell::OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| format!("no NVPTX target machine for {chip}"))?;
    module.set_triple(&triple);
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    let ptx = machine
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(|e| format!("{name}: PTX generation failed: {e}"))?;
    Ok(String::from_utf8_lossy(ptx.as_slice()).into_owned())
}

/// The NVVM target of `chip`, as `nvvm-attach-target{chip=... O=3}` writes it.
fn target(chip: &str) -> String {
    format!("#nvvm.target<O = 3, chip = \"{chip}\">")
}

/// `ppmoe-attach-target`: every `gpu.module` of the module targets the H200: `sm_90a` where a
/// module has warpgroup MMAs (so that every rank's PTX is for the same chip), else `sm_90`;
/// returns how many modules it marked.
pub fn attach_target(
    context: &Context,
    module: &OperationRef,
    _: &mut Compilation,
) -> Result<usize, crate::pipeline::PassError> {
    let modules = top_level(module, "gpu.module")?;
    let wgmma = modules.iter().any(|m| holds_op_named(m, "nvvm.wgmma"));
    let chip = if wgmma { CHIP_WGMMA } else { CHIP };
    let targets = format!("[{}]", target(chip.0));
    let attribute = Attribute::parse(context, &targets).ok_or("the NVVM target does not parse")?;
    for m in &modules {
        // SAFETY: the pass manager hands this pass the module; no other handle writes the op.
        let mut m = unsafe { OperationRefMut::from_raw(m.to_raw()) };
        m.set_attribute("targets", attribute);
    }
    Ok(modules.len())
}

/// `ppmoe-nvptx`: each `gpu.binary`'s LLVM bitcode (the `offload` object that
/// `gpu-module-to-binary{format=llvm}` leaves) compiled to PTX, which becomes its object
/// (`assembly`); returns how many binaries.
pub fn nvptx(
    context: &Context,
    module: &OperationRef,
    _: &mut Compilation,
) -> Result<usize, crate::pipeline::PassError> {
    let binaries = top_level(module, "gpu.binary")?;
    for b in &binaries {
        let name = symbol(b)?;
        let object = only_object(b, &name)?;
        let bitcode = string_field(&object, "offload")
            .ok_or_else(|| format!("gpu.binary @{name}: its object holds no LLVM bitcode"))?;
        let chip = if object.contains(&format!("chip = \"{}\"", CHIP_WGMMA.0)) {
            CHIP_WGMMA
        } else {
            CHIP
        };
        let ptx = bitcode_to_ptx(&name, &bitcode, chip)?;
        let objects = format!(
            "[#gpu.object<{}, assembly = \"{}\">]",
            target(chip.0),
            escape(ptx.as_bytes())
        );
        let attribute =
            Attribute::parse(context, &objects).ok_or("the PTX object does not parse")?;
        // SAFETY: as in `attach_target`.
        let mut b = unsafe { OperationRefMut::from_raw(b.to_raw()) };
        b.set_attribute("objects", attribute);
    }
    Ok(binaries.len())
}

/// The PTX of each `gpu.binary` of the module (`ppmoe-nvptx`'s objects): (module name, PTX).
pub fn read_ptx(module: &OperationRef) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for b in top_level(module, "gpu.binary")? {
        let name = symbol(&b)?;
        let ptx = string_field(&only_object(&b, &name)?, "assembly")
            .ok_or_else(|| format!("gpu.binary @{name}: its object holds no PTX"))?;
        out.push((name, String::from_utf8_lossy(&ptx).into_owned()));
    }
    if out.is_empty() {
        return Err("the lowering produced no gpu.binary".into());
    }
    Ok(out)
}

/// Whether an op named `prefix...` is anywhere inside `op`.
fn holds_op_named(op: &OperationRef, prefix: &str) -> bool {
    op.regions().any(|r| {
        let mut block = r.first_block();
        while let Some(b) = block {
            block = b.next_in_region();
            let mut next = b.first_operation();
            while let Some(inner) = next {
                next = inner.next_in_block();
                if crate::core::read::op_name(&inner).starts_with(prefix)
                    || holds_op_named(&inner, prefix)
                {
                    return true;
                }
            }
        }
        false
    })
}

fn symbol(op: &OperationRef) -> Result<String, String> {
    op.attribute("sym_name")
        .ok()
        .and_then(crate::core::read::attribute_text)
        .ok_or_else(|| "a gpu.binary without its name".to_string())
}

/// A binary's one object, as MLIR prints it.
fn only_object(b: &OperationRef, name: &str) -> Result<String, String> {
    let objects = b
        .attribute("objects")
        .ok()
        .and_then(|a| ArrayAttribute::try_from(a).ok())
        .ok_or_else(|| format!("gpu.binary @{name} without its objects"))?;
    match objects.len() {
        1 => Ok(objects.element(0).map_err(|e| e.to_string())?.to_string()),
        n => Err(format!(
            "gpu.binary @{name}: {n} objects, where one target makes one"
        )),
    }
}

/// The bytes of the string `field = "..."` of a printed object.
fn string_field(object: &str, field: &str) -> Option<Vec<u8>> {
    let key = format!("{field} = \"");
    let start = object.find(&key)? + key.len();
    Some(unescape(&object[start..]))
}

/// `bytes` as the inside of an MLIR string literal: printable ASCII as it is, but for `"` and
/// `\`, every other byte as `\XX` (as MLIR prints its own).
fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + bytes.len() / 8);
    for &b in bytes {
        match b {
            b'"' | b'\\' => out.push_str(&format!("\\{b:02X}")),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:02X}")),
        }
    }
    out
}

/// Lowers `module_text` (a module with `gpu.container_module` and its `gpu.module`s) to PTX
/// with the `ptx` stage's passes: one (module name, PTX) pair per gpu.module.
#[cfg(test)]
pub(crate) fn to_ptx(module_text: &str) -> Result<Vec<(String, String)>, String> {
    use melior::pass::PassManager;
    melior::utility::register_all_passes();
    let context = ppmoe_dialect::context();
    melior::utility::register_all_llvm_translations(&context);
    let mut module = ppmoe_dialect::parse_verified(&context, module_text)?;
    let mut c = Compilation::default();
    attach_target(&context, &module.as_operation(), &mut c).map_err(|e| e.to_string())?;
    let pm = PassManager::new(&context);
    let lowering: Vec<&str> = crate::pipeline::upstream_passes("ptx").collect();
    let pipeline = format!("builtin.module({})", lowering.join(","));
    melior::utility::parse_pass_pipeline(pm.as_operation_pass_manager(), &pipeline)
        .map_err(|e| format!("the PTX pipeline does not parse: {e}"))?;
    let (ran, diagnostics) = ppmoe_dialect::with_diagnostics(&context, || pm.run(&mut module));
    ran.map_err(|e| format!("lowering to PTX failed: {e}: {diagnostics}"))?;
    nvptx(&context, &module.as_operation(), &mut c).map_err(|e| e.to_string())?;
    read_ptx(&module.as_operation())
}

/// An MLIR string literal's bytes up to its closing quote, escapes (\0A, \09, \22, \\) undone.
fn unescape(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => break,
            b'\\' if i + 1 < bytes.len() && bytes[i + 1] == b'\\' => {
                out.push(b'\\');
                i += 2;
            }
            b'\\' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(bytes[i + 1]);
                        i += 2;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The PTX of one generated kernel (`gpu.func` text), alone in a module: for the kernels'
/// tests.
#[cfg(test)]
pub(crate) fn kernel_ptx(kernel: &str) -> String {
    let text = format!(
        "module attributes {{gpu.container_module}} {{\n  gpu.module @m {{\n{kernel}  }}\n}}\n"
    );
    to_ptx(&text).expect("lowers").remove(0).1
}

#[cfg(test)]
mod tests {
    #[test]
    fn bitcode_that_is_not_llvm_is_refused_by_name() {
        let e = super::bitcode_to_ptx("rank0_kernels", b"not bitcode", super::CHIP).unwrap_err();
        assert!(
            e.contains("rank0_kernels") && e.contains("does not load"),
            "{e}"
        );
    }
}
