//! The rank's PTX loaded as one module, every kernel its plan launches looked up and checked
//! to fit its block (dynamic shared memory allowed where a kernel asks for more than 48 KiB).

use super::backend_err;
use crate::bundle::Bundle;
use crate::error::RuntimeError;
use crate::program::{BufferKind, GpuOp, Program};
use cudarc::driver::CudaContext;
use std::collections::HashMap;
use std::sync::Arc;

/// The buffers that are the weight side of a GEMM: B of a matmul, the expert stacks of
/// moe.experts. (Router weights are never bf16: the compiler keeps them fp32.)
pub(super) fn gemm_weight_operands(program: &Program) -> std::collections::HashSet<usize> {
    let mut set = std::collections::HashSet::new();
    for (ins, how) in program.instructions.iter().zip(&program.gpu) {
        let picks: &[usize] = match how {
            GpuOp::Gemm => &[1],
            GpuOp::Experts { .. } => &[3, 4],
            _ => &[],
        };
        // PPMoE's expert stacks are operands of the expert_ffn fused into its step.
        let picks = match (how, &ins.op) {
            (GpuOp::Fused { .. }, crate::program::Op::MoeExpertFfn { .. }) => &[2, 3],
            _ => picks,
        };
        set.extend(
            picks
                .iter()
                .filter_map(|&k| ins.inputs.get(k).copied().flatten())
                .filter(|&b| program.buffers[b].kind == BufferKind::Weight),
        );
    }
    set
}

/// The rank's kernels by name, and the threads of a block of those whose block is not fixed
/// by the runtime (the warp-specialised projections': as many as the kernel states).
#[derive(Default)]
pub(super) struct Kernels {
    pub functions: HashMap<String, cudarc::driver::CudaFunction>,
    pub block_threads: HashMap<String, usize>,
}

/// Loads the rank's PTX and looks up every kernel its plan launches.
pub(super) fn load_kernels(
    bundle: &Bundle,
    ctx: &Arc<CudaContext>,
    program: &Program,
) -> Result<Kernels, RuntimeError> {
    let mut functions = HashMap::new();
    let mut block_threads = HashMap::new();
    let Some(file) = &program.ptx_file else {
        return Ok(Kernels::default());
    };
    let ptx = std::fs::read_to_string(bundle.dir.join(file)).map_err(|cause| RuntimeError::Io {
        path: file.clone(),
        cause,
    })?;
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx.clone()))
        .map_err(|e| backend_err(format!("{file}: the PTX does not load: {e}")))?;
    let names = program.gpu.iter().flat_map(|op| match op {
        GpuOp::Route {
            name,
            capacity: true,
            ..
        } => ["", "_capacity", "_renorm"]
            .iter()
            .map(|s| format!("{name}{s}"))
            .collect(),
        GpuOp::Kernel { name, .. }
        | GpuOp::Pointwise { name, .. }
        | GpuOp::Route { name, .. }
        | GpuOp::Embedding { name } => {
            vec![name.clone()]
        }
        GpuOp::Experts { prefix, .. }
        | GpuOp::LocalExperts { prefix, .. }
        | GpuOp::AllToAllExperts { prefix, .. } => ["gather", "act", "combine"]
            .iter()
            .map(|s| format!("{prefix}_{s}"))
            .collect(),
        _ => vec![],
    });
    for name in names {
        let f = module
            .load_function(&name)
            .map_err(|e| backend_err(format!("{file}: kernel {name}: {e}")))?;
        functions.insert(name, f);
    }
    // An embedding's bits kernel, where its table and result are bf16 in the model.
    for op in &program.gpu {
        if let GpuOp::Embedding { name } = op {
            let name = format!("{name}_{}", crate::program::EMBEDDING_BITS_SUFFIX);
            if let Ok(f) = module.load_function(&name) {
                functions.insert(name, f);
            }
        }
    }
    // Present only where an all-to-all step's experts have an output bias, and where a step
    // can be routed (`device_routed`) or grouped (`device_grouped`) on the device.
    for op in &program.gpu {
        let optional: &[&str] = match op {
            GpuOp::AllToAllExperts { .. } => &["bias_out"],
            GpuOp::Experts { .. } | GpuOp::LocalExperts { .. } => {
                crate::program::OPTIONAL_EXPERT_KERNELS
            }
            _ => &[],
        };
        let (GpuOp::AllToAllExperts { prefix, .. }
        | GpuOp::Experts { prefix, .. }
        | GpuOp::LocalExperts { prefix, .. }) = op
        else {
            continue;
        };
        for s in optional {
            let name = format!("{prefix}_{s}");
            if let Ok(f) = module.load_function(&name) {
                use crate::program::WG_THREADS;
                let producer = || {
                    stated_threads(&ptx, &name).ok_or_else(|| {
                        backend_err(format!("{file}: kernel {name} states no block (.maxntid)"))
                    })
                };
                let shared = if crate::program::WG_KERNELS.contains(s) {
                    Some((crate::program::WG_SHARED_BYTES, WG_THREADS))
                } else if crate::program::SP_KERNELS.contains(s) {
                    Some((crate::program::SP_SHARED_BYTES, producer()?))
                } else if crate::program::PP_KERNELS.contains(s) {
                    Some((crate::program::PP_SHARED_BYTES, producer()?))
                } else if crate::program::QP_KERNELS.contains(s) {
                    Some((crate::program::QP_SHARED_BYTES, producer()?))
                } else {
                    None
                };
                if let Some((bytes, threads)) = shared {
                    allow_dynamic_shared(&f, &name, bytes)
                        .and_then(|()| block_fits(&f, &name, threads))
                        .map_err(|e| backend_err(format!("{file}: {e}")))?;
                    block_threads.insert(name.clone(), threads);
                }
                functions.insert(name, f);
            }
        }
    }
    // Present only where the weights are bf16.
    for name in [
        crate::program::TO_BF16_KERNEL,
        crate::program::FROM_BF16_KERNEL,
        crate::program::TO_BF16_X4_KERNEL,
        crate::program::FROM_BF16_X4_KERNEL,
    ] {
        if let Ok(f) = module.load_function(name) {
            functions.insert(name.to_string(), f);
        }
    }
    Ok(Kernels {
        functions,
        block_threads,
    })
}

/// The threads a block of kernel `name` in `ptx` takes, as its entry states them (the
/// `.maxntid` directive between its parameters and its body), if it does and they are a
/// whole number of warps.
fn stated_threads(ptx: &str, name: &str) -> Option<usize> {
    let entry = ptx.find(&format!(".entry {name}("))?;
    let after = &ptx[entry..];
    let params_end = after.find(')')?;
    let head = &after[params_end..after.find('{')?];
    let stated = head.split(".maxntid").nth(1)?;
    let x: usize = stated.split(',').next()?.trim().parse().ok()?;
    (x > 0 && x.is_multiple_of(32)).then_some(x)
}

/// Whether a block of `threads` threads of `f` fits on an SM with the registers the driver
/// gave it (else its launch would fail as out of resources, naming nothing).
fn block_fits(f: &cudarc::driver::CudaFunction, name: &str, threads: usize) -> Result<(), String> {
    use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK;
    let most = f
        .get_attribute(CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
        .map_err(|e| format!("{name}: {e}"))?;
    if usize::try_from(most).unwrap_or(0) >= threads {
        return Ok(());
    }
    let registers = f.num_regs().map_err(|e| format!("{name}: {e}"))?;
    Err(format!(
        "{name}: {registers} registers a thread leave room for {most} threads a block, and it launches {threads}"
    ))
}

/// Lets `f` (a warpgroup projection) take `bytes` of dynamic shared memory: more than the
/// 48 KiB a kernel has without asking.
fn allow_dynamic_shared(
    f: &cudarc::driver::CudaFunction,
    name: &str,
    bytes: usize,
) -> Result<(), String> {
    use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    let bytes = i32::try_from(bytes).map_err(|e| e.to_string())?;
    f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes)
        .map_err(|e| format!("{name}: {bytes} bytes of shared memory refused: {e}"))
}

#[cfg(test)]
mod tests {
    /// A kernel's block is read from its own entry's `.maxntid`, not another kernel's; an
    /// entry that states none, or threads that are not whole warps, gives none.
    #[test]
    fn a_kernels_block_is_what_its_entry_states() {
        let ptx = ".visible .entry a_pproj_act(\n\t.param .u64 a_0,\n\t.param .u64 a_1\n)\n.maxntid 320, 1, 1\n{\n\tret;\n}\n.visible .entry b_pproj_out(\n\t.param .u64 b_0\n)\n.maxntid 288, 1, 1\n{\n\tret;\n}\n.visible .entry c(\n\t.param .u64 c_0\n)\n{\n\tret;\n}\n.visible .entry d(\n)\n.maxntid 300, 1, 1\n{\n}\n";
        assert_eq!(super::stated_threads(ptx, "a_pproj_act"), Some(320));
        assert_eq!(super::stated_threads(ptx, "b_pproj_out"), Some(288));
        assert_eq!(super::stated_threads(ptx, "c"), None);
        assert_eq!(super::stated_threads(ptx, "d"), None);
        assert_eq!(super::stated_threads(ptx, "e"), None);
    }
}
