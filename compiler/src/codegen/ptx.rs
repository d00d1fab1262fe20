//! The `ptx` stage: a module of `gpu.module`s lowered by MLIR's own passes (gpu -> NVVM -> LLVM
//! IR, optimised at O3, as `gpu-module-to-binary{format=llvm}` leaves it: bitcode), then the
//! bitcode compiled to PTX for sm_90 by LLVM's NVPTX target through inkwell (sm_90a, the
//! H100/H200's own features, where a module has warpgroup MMAs: `wgmma` exists only there).

use melior::pass::PassManager;
use ppmoe_dialect::melior;

/// The lowering for `chip`, as `mlir-opt --pass-pipeline` spells it.
pub fn pipeline(chip: &str) -> String {
    format!("builtin.module(nvvm-attach-target{{chip={chip} O=3}},gpu.module(convert-scf-to-cf,convert-math-to-llvm,convert-nvvm-to-llvm,convert-gpu-to-nvvm,convert-arith-to-llvm),convert-cf-to-llvm,reconcile-unrealized-casts,gpu-module-to-binary{{format=llvm}})")
}

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

/// Lowers `module_text` (a module with `gpu.container_module` and its `gpu.module`s) to PTX:
/// one (module name, PTX) pair per gpu.module.
pub fn to_ptx(module_text: &str) -> Result<Vec<(String, String)>, String> {
    let chip = if module_text.contains("nvvm.wgmma") {
        CHIP_WGMMA
    } else {
        CHIP
    };
    melior::utility::register_all_passes();
    let context = ppmoe_dialect::context();
    melior::utility::register_all_llvm_translations(&context);
    let mut module = ppmoe_dialect::parse_verified(&context, module_text)?;
    let pm = PassManager::new(&context);
    melior::utility::parse_pass_pipeline(pm.as_operation_pass_manager(), &pipeline(chip.0))
        .map_err(|e| format!("the PTX pipeline does not parse: {e}"))?;
    // MLIR's own diagnostics name the op a pass failed on: they go into the error.
    let (ran, diagnostics) = ppmoe_dialect::with_diagnostics(&context, || pm.run(&mut module));
    ran.map_err(|e| format!("lowering to PTX failed: {e}: {diagnostics}"))?;
    let text = module.as_operation().to_string();
    let mut out = Vec::new();
    for chunk in text.split("gpu.binary @").skip(1) {
        let name = chunk.split_whitespace().next().unwrap_or("").to_string();
        // format=llvm leaves the module's bitcode as the object's `offload` string.
        let Some(start) = chunk.find("offload = \"") else {
            continue;
        };
        let body = &chunk[start + "offload = \"".len()..];
        out.push((name.clone(), bitcode_to_ptx(&name, &unescape(body), chip)?));
    }
    if out.is_empty() {
        return Err("the lowering produced no gpu.binary".into());
    }
    Ok(out)
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
