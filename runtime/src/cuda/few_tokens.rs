//! A few tokens' experts in two kernels, where the compiler generated them (`TOKEN_KERNELS`,
//! its `few_tokens`, where `token_kernels_take` said): the slots read as the route left them
//! (no listing), the activation the first projection's epilogue and the combine the second's.
//! Four launches fewer than the listed path (`device_routed`): listing, activation, combine,
//! and the route's two memsets.

use super::blas::Elem;
use super::device_routed::{memref_args, OnDevice};
use super::experts::{alloc, Combined, ExpertsCall};
use super::Rank;
use crate::program::{
    token_out_columns, TOKEN_IN_COLUMNS, TOKEN_KERNELS, TOKEN_OUT_BITS, TOKEN_THREADS,
};
use cudarc::driver::{LaunchConfig, PushKernelArg};

impl Rank<'_> {
    /// The step's output ([T, H]) by the token kernels, or None where the step has none
    /// (too many tokens for `token_kernels_take`, biases, f32 stacks, PPMoE's local step) or
    /// x is not 16-byte aligned (the kernels read it a word at a time): the listed path then.
    /// With `bits` (every reader of y takes bf16 bits) y is written as bits where the step
    /// has that kernel (`TOKEN_OUT_BITS`), else f32.
    pub(super) fn token_experts(
        &mut self,
        call: &ExpertsCall,
        prefix: &str,
        routed: &OnDevice,
        bits: bool,
    ) -> Result<Option<Combined>, String> {
        // `PPMOE_SINGLE_TOKEN=0` takes the listed path (to time the two against each other).
        if std::env::var("PPMOE_SINGLE_TOKEN").as_deref() == Ok("0") {
            return Ok(None);
        }
        let f = |s: &str| self.functions.get(&format!("{prefix}_{s}")).cloned();
        let (Some(first_f32), Some(second_f32)) = (f(TOKEN_KERNELS[0]), f(TOKEN_KERNELS[2])) else {
            return Ok(None);
        };
        let second_bits = f(TOKEN_OUT_BITS).filter(|_| bits);
        let OnDevice {
            ids,
            weights,
            dims,
            tokens,
            ffn,
            ..
        } = routed;
        let bf16 = ffn.mid == Elem::Bf16 && ffn.w_in.1 == Elem::Bf16 && ffn.w_out.1 == Elem::Bf16;
        // (`routing_on_device` leaves no step of 0 tokens.)
        if !bf16 {
            return Ok(None);
        }
        // x held as bf16 bits: read as they are; else f32, rounded by the kernel.
        let (first, elem) = match f(TOKEN_KERNELS[1]) {
            Some(g) if self.holds_bits(call.x) => (g, Elem::Bf16),
            _ => (first_f32, Elem::F32),
        };
        let (x, _narrowed) = self.operand_as(call.x, elem)?;
        if !x.is_multiple_of(16) {
            return Ok(None);
        }
        let s = &self.stream;
        let (t, slots) = (*tokens, ids.len());
        let Some(out_columns) = token_out_columns(slots / t) else {
            return Ok(None);
        };
        let elements = |rows: usize, columns: usize| {
            rows.checked_mul(columns)
                .ok_or_else(|| format!("{rows} x {columns} elements overflow"))
        };
        let act = alloc(s, elements(slots, dims.ffn)?, Elem::Bf16)?;
        let y_elements = elements(t, dims.hidden)?;
        let (second, y) = match second_bits {
            // SAFETY: uninitialised; the kernel writes every token's row.
            Some(g) => (
                g,
                Combined::Bits(
                    unsafe { s.alloc::<u16>(y_elements.max(1)) }.map_err(|e| e.to_string())?,
                ),
            ),
            None => (second_f32, Combined::F32(alloc(s, y_elements, Elem::F32)?)),
        };
        let (pi, pw) = (
            super::dptr(ids.as_ref(), s),
            super::dptr(weights.as_ref(), s),
        );
        let pa = super::dptr(&act, s);
        let py = match &y {
            Combined::F32(y) => super::dptr(y, s),
            Combined::Bits(y) => super::dptr(y, s),
        };
        let first_expert = call.first_local.unwrap_or(0) as i64;
        // Lengths are not read (the sizes are baked in).
        let one = 1i64;
        let launch = |func: &cudarc::driver::CudaFunction,
                      (src, w, dst): (u64, u64, u64),
                      grid: (usize, usize)|
         -> Result<(), String> {
            let mut l = s.launch_builder(func);
            for p in [&src, &w, &pi, &pw, &dst] {
                memref_args(&mut l, p, &one);
            }
            l.arg(&first_expert);
            let cfg = LaunchConfig {
                grid_dim: (grid.0 as u32, grid.1 as u32, 1),
                block_dim: (TOKEN_THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the kernels were generated for these sizes; x holds T x H elements,
            // the stacks E x N x H and E x H x F, ids and weights T k, act T k x F, y T x H.
            unsafe { l.launch(cfg) }
                .map(drop)
                .map_err(|e| e.to_string())
        };
        // The slots (tokens) are the blocks' fastest index: the slots of one expert read its
        // rows at about the same time.
        let columns = dims.ffn.div_ceil(TOKEN_IN_COLUMNS);
        launch(&first, (x, ffn.w_in.0, pa), (slots, columns))?;
        self.phase("experts: first projection and activation")?;
        let columns = dims.hidden.div_ceil(out_columns);
        launch(&second, (pa, ffn.w_out.0, py), (t, columns))?;
        self.phase("experts: second projection and combine")?;
        Ok(Some(y))
    }
}
