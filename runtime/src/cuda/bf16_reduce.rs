//! PPMoE's all-reduce in bf16 for a bf16 model: the step's result is a bf16 activation of the
//! model (PyTorch's bf16 layer rounds it so, and Megatron all-reduces its bf16 partial sums in
//! bf16), so each rank's partial sum is rounded to bf16 before the reduction, NCCL adds the
//! bf16 values (in f32, rounding the sum), and the sum is widened back for the kernels after.
//! Half the bytes on the link; against the f32 reduction each output element differs by at most
//! about two bf16 roundings (relative 2^-8), where the bf16 model's tolerance is 2e-2. An fp32
//! model's reduction stays f32 (exact to the single-rank program within float rounding).
//! `PPMOE_ALLREDUCE_BF16=0` keeps f32 for bf16 models too.

use super::device_routed::memref_args;
use super::Rank;
use crate::program::{FROM_BF16_KERNEL, TO_BF16_KERNEL};
use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

/// The two conversion kernels, for a step whose reduction runs in bf16.
pub(super) struct Bf16Reduction {
    pub narrow: CudaFunction,
    pub widen: CudaFunction,
}

fn wanted_by_env() -> bool {
    std::env::var("PPMOE_ALLREDUCE_BF16").map_or(true, |v| v.trim() != "0")
}

impl Rank<'_> {
    /// The conversions where the step's result `out` is bf16 in the model and the rank has
    /// both kernels (bf16 weights); None: the reduction stays f32.
    pub(super) fn bf16_reduction(&self, out: usize) -> Option<Bf16Reduction> {
        let bf16 = self.program.buffers[out].dtype == crate::DType::BF16;
        if !bf16 || !wanted_by_env() {
            return None;
        }
        Some(Bf16Reduction {
            narrow: self.functions.get(TO_BF16_KERNEL)?.clone(),
            widen: self.functions.get(FROM_BF16_KERNEL)?.clone(),
        })
    }

    /// `n` elements at device address `src` converted by `f` (one of the two) to `dst`, on
    /// the rank's stream.
    pub(super) fn convert(
        &self,
        f: &CudaFunction,
        (src, dst): (u64, u64),
        n: usize,
    ) -> Result<(), String> {
        let (len, count) = (n.max(1) as i64, n as i64);
        let mut l = self.stream.launch_builder(f);
        memref_args(&mut l, &src, &len);
        memref_args(&mut l, &dst, &len);
        l.arg(&count);
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(256).max(1) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the caller's src and dst hold n elements of the kernel's types; the kernel
        // guards its index against n.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
