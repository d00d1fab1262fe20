//! The `ptx` stage, as passes over the kernels module: `ppmoe-attach-target` marks each
//! `gpu.module` for the H200 (`sm_90`, or `sm_90a`, the H100/H200's own features, where a
//! module has warpgroup MMAs: `wgmma` exists only there), and MLIR's own passes lower it: gpu
//! -> NVVM -> LLVM IR, optimised at O3 and compiled by LLVM's NVPTX target to PTX, which
//! `gpu-module-to-binary{format=isa}` leaves as each `gpu.binary`'s object (`assembly`),
//! whence the bundle takes it.

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

/// The NVVM target of `chip` with `features`, optimised at O3.
fn target((chip, features): (&str, &str)) -> String {
    format!("#nvvm.target<O = 3, chip = \"{chip}\", features = \"{features}\">")
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
    let targets = format!("[{}]", target(chip));
    let attribute = Attribute::parse(context, &targets).ok_or("the NVVM target does not parse")?;
    for m in &modules {
        // SAFETY: the pass manager hands this pass the module; no other handle writes the op.
        let mut m = unsafe { OperationRefMut::from_raw(m.to_raw()) };
        m.set_attribute("targets", attribute);
    }
    Ok(modules.len())
}

/// The PTX of each `gpu.binary` of the module (the objects `gpu-module-to-binary{format=isa}`
/// makes): (module name, PTX).
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
    /// A binary whose object is not PTX (a cubin, or bitcode) is refused by its name; a
    /// module without binaries is refused too.
    #[test]
    fn a_binary_without_ptx_is_refused_by_name() {
        let context = ppmoe_dialect::context();
        let binary = |object: &str| {
            format!("module attributes {{gpu.container_module}} {{\n  gpu.binary @rank0_kernels [#gpu.object<#nvvm.target<chip = \"sm_90\">, {object}>]\n}}\n")
        };
        let ptx = binary("assembly = \".version 7.8\\0A.target sm_90\"");
        let module = ppmoe_dialect::parse_verified(&context, &ptx).unwrap();
        let read = super::read_ptx(&module.as_operation()).unwrap();
        assert_eq!(
            read,
            vec![(
                "rank0_kernels".to_string(),
                ".version 7.8\n.target sm_90".to_string()
            )]
        );
        let cubin = binary("bin = \"\\7FELF\"");
        let module = ppmoe_dialect::parse_verified(&context, &cubin).unwrap();
        let e = super::read_ptx(&module.as_operation()).unwrap_err();
        assert!(
            e.contains("gpu.binary @rank0_kernels: its object holds no PTX"),
            "{e}"
        );
        let empty = "module attributes {gpu.container_module} {\n}\n";
        let module = ppmoe_dialect::parse_verified(&context, empty).unwrap();
        let e = super::read_ptx(&module.as_operation()).unwrap_err();
        assert!(e.contains("no gpu.binary"), "{e}");
    }
}
