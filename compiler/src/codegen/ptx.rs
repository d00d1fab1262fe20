//! The `ptx` stage: a module of `gpu.module`s lowered by MLIR's own passes (gpu -> NVVM ->
//! LLVM IR -> PTX through LLVM's NVPTX back end, for sm_90) and the PTX text taken out of the
//! resulting `gpu.binary` ops.

use melior::pass::PassManager;
use ppmoe_dialect::melior;

/// The lowering, as `mlir-opt --pass-pipeline` spells it.
pub const PIPELINE: &str = "builtin.module(nvvm-attach-target{chip=sm_90 O=3},gpu.module(convert-scf-to-cf,convert-math-to-llvm,convert-gpu-to-nvvm,convert-arith-to-llvm),convert-cf-to-llvm,reconcile-unrealized-casts,gpu-module-to-binary{format=isa})";

/// Lowers `module_text` (a module with `gpu.container_module` and its `gpu.module`s) to PTX:
/// one (module name, PTX) pair per gpu.module.
pub fn to_ptx(module_text: &str) -> Result<Vec<(String, String)>, String> {
    melior::utility::register_all_passes();
    let context = ppmoe_dialect::context();
    melior::utility::register_all_llvm_translations(&context);
    let mut module = ppmoe_dialect::parse_verified(&context, module_text)?;
    let pm = PassManager::new(&context);
    melior::utility::parse_pass_pipeline(pm.as_operation_pass_manager(), PIPELINE).map_err(|e| format!("the PTX pipeline does not parse: {e}"))?;
    pm.run(&mut module).map_err(|e| format!("lowering to PTX failed: {e}"))?;
    let text = module.as_operation().to_string();
    let mut out = Vec::new();
    for chunk in text.split("gpu.binary @").skip(1) {
        let name = chunk.split_whitespace().next().unwrap_or("").to_string();
        let Some(start) = chunk.find("assembly = \"") else { continue };
        let body = &chunk[start + "assembly = \"".len()..];
        out.push((name, unescape(body)));
    }
    if out.is_empty() {
        return Err("the lowering produced no gpu.binary".into());
    }
    Ok(out)
}

/// An MLIR string literal's contents up to its closing quote, escapes (\0A, \09, \22, \\) undone.
fn unescape(s: &str) -> String {
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
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
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
    String::from_utf8_lossy(&out).into_owned()
}
