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
use crate::program::{FROM_BF16_KERNEL, FROM_BF16_X4_KERNEL, TO_BF16_KERNEL, TO_BF16_X4_KERNEL};
use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

/// The two conversions, for a step whose reduction runs in bf16.
pub(super) struct Bf16Reduction {
    pub narrow: Conversion,
    pub widen: Conversion,
}

/// One direction of the conversion between f32 and bf16: the kernel of one element a thread
/// and, where the rank has it, the one of four (16-byte f32 accesses and 8-byte bf16 ones: the
/// one-element kernel's 2-byte accesses reach about a third of the copy bandwidth). Both round
/// (or widen) each element alike.
#[derive(Clone)]
pub(super) struct Conversion {
    one: CudaFunction,
    four: Option<CudaFunction>,
}

/// Which way a `Conversion` goes.
#[derive(Clone, Copy)]
pub(super) enum Direction {
    /// f32 to bf16, to nearest even.
    Narrow,
    /// bf16 to f32, exact.
    Widen,
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
            narrow: self.conversion(Direction::Narrow)?,
            widen: self.conversion(Direction::Widen)?,
        })
    }

    /// The rank's kernels for `d` (None: its weights are not bf16, so it has none).
    pub(super) fn conversion(&self, d: Direction) -> Option<Conversion> {
        let (one, four) = match d {
            Direction::Narrow => (TO_BF16_KERNEL, TO_BF16_X4_KERNEL),
            Direction::Widen => (FROM_BF16_KERNEL, FROM_BF16_X4_KERNEL),
        };
        Some(Conversion {
            one: self.functions.get(one)?.clone(),
            four: self.functions.get(four).cloned(),
        })
    }

    /// `n` elements at device address `src` converted by `c` to `dst`, on the rank's stream:
    /// four a thread where the rank has that kernel, `n` is a multiple of four and both
    /// addresses are 16-byte aligned (the four-element accesses need their own alignment).
    pub(super) fn convert(
        &self,
        c: &Conversion,
        (src, dst): (u64, u64),
        n: usize,
    ) -> Result<(), String> {
        let (f, threads) = match &c.four {
            Some(four)
                if n.is_multiple_of(4) && src.is_multiple_of(16) && dst.is_multiple_of(16) =>
            {
                (four, n / 4)
            }
            _ => (&c.one, n),
        };
        let (len, count) = (threads.max(1) as i64, threads as i64);
        let mut l = self.stream.launch_builder(f);
        memref_args(&mut l, &src, &len);
        memref_args(&mut l, &dst, &len);
        l.arg(&count);
        let cfg = LaunchConfig {
            grid_dim: (threads.div_ceil(256).max(1) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the caller's src and dst hold n elements of the kernel's types (four a
        // thread: n / 4 groups of four, each group's address aligned); the kernel guards its
        // index against the count.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
