//! An experts step grouped on the device, for any number of tokens: where the compiler
//! generated the step's `tgroup` kernel (see its `device_grouping`), one block lays each local
//! expert's slots in tiles of `m` rows and writes the tiles' operand pointers; the step's
//! gather, activation and combine kernels and two cuBLAS batched GEMMs (one product per tile,
//! pointers read on the device) do the rest. Nothing is read back to the host, so the forward
//! does not wait for the device here. The price: spare rows (each expert's last tile is
//! partly empty) and spare tiles (the host sizes the batch by a bound, not by the counts),
//! both computed and never combined; the tile size keeps them to about a quarter of the rows.
//! And each tile reads its expert's matrices again: the compiler generates the kernel for small
//! matrices only (see `grouping_wanted`).

use super::blas::{self, PointerBatch};
use super::device_routed::{memref_args, OnDevice};
use super::experts::{alloc, combine_rows, Combine, ExpertsCall, FfnOperands};
use super::Rank;
use crate::program::{ExpertDims, GROUP_THREADS};
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use std::ops::Range;
use std::sync::Arc;

/// A step's routing where it stays (on the device), and what its chunks are computed with
/// (the FFN's operands looked up once for all chunks).
pub(super) struct DeviceGroup {
    group: CudaFunction,
    ids: Arc<CudaSlice<f32>>,
    pub weights: Arc<CudaSlice<f32>>,
    pub dims: ExpertDims,
    pub tokens: usize,
    pub k: usize,
    pub h: usize,
    ffn: FfnOperands,
}

/// Whether a step that has the `tgroup` kernel groups on the device: by default wherever it
/// can, so that no forward reads its routing back to the host (two device-to-host copies and a
/// wait for the device per step otherwise, and no CUDA graph). `PPMOE_DEVICE_GROUPING=0`
/// groups on the host instead (a measurement aid). The compiler generates the kernel for the
/// steps the routing does not take whose matrices are small (`groups_on_device`: every tile
/// reads its expert's matrices again, which large ones pay from memory; the measurements are
/// there): fp32 and fp16 stacks, and bf16 ones such as PPMoE's local step on small matrices
/// past 32 rows per expert, whose all-reduce the chunks overlap (at tp 2, 4096 tokens: 1.461
/// against 1.712 ms on the host, session 25).
pub(super) fn grouping_wanted() -> bool {
    std::env::var("PPMOE_DEVICE_GROUPING").as_deref() != Ok("0")
}

/// The fewest rows of a tile.
const MIN_TILE: usize = 16;

/// The rows of one tile (one product of the batched GEMMs) for `slots` slots over `experts`
/// local experts: the largest of 16, 32, 64 and 128 whose spare rows (about one tile per
/// expert in use) stay within a quarter of the slots; `PPMOE_GROUP_TILE` sets it (0 or not a
/// number: unset; at most the slots: a larger tile only adds spare rows, and the row count
/// must not overflow).
pub(super) fn group_tile(slots: usize, experts: usize) -> usize {
    let set = std::env::var("PPMOE_GROUP_TILE").ok();
    group_tile_by(slots, experts, set.as_deref().and_then(|v| v.parse().ok()))
}

fn group_tile_by(slots: usize, experts: usize, set: Option<usize>) -> usize {
    if let Some(m) = set.filter(|&m| m > 0) {
        return m.min(slots.max(1));
    }
    let used = experts.min(slots).max(1);
    [128, 64, 32]
        .into_iter()
        .find(|&m| used * m * 4 <= slots)
        .unwrap_or(MIN_TILE)
}

/// The tiles the batch is sized for: every slot's tile, and one partial tile per expert that
/// can have slots (at most one per slot).
pub(super) fn group_bound(slots: usize, experts: usize, m: usize) -> usize {
    slots.div_ceil(m) + experts.min(slots)
}

/// A chunk of `slots` slots' tile size, tile bound and rows (the bound's tiles and the spare
/// tiles' target, one more).
fn group_rows(slots: usize, experts: usize) -> (usize, usize, usize) {
    let m = group_tile(slots, experts);
    let bound = group_bound(slots, experts, m);
    (m, bound, (bound + 1) * m)
}

/// A chunk's rows, laid out by the grouping kernel (see the compiler's `device_grouping`).
struct Tiles {
    perm: CudaSlice<i32>,
    rexp: CudaSlice<i32>,
    pos: CudaSlice<i32>,
    eid: CudaSlice<i32>,
    ptrs: CudaSlice<u64>,
}

/// The chunk's row buffers: gathered rows, hidden activations, activations, expert outputs.
struct RowBuffers {
    xg: CudaSlice<f32>,
    hid: CudaSlice<f32>,
    act: CudaSlice<f32>,
    out: CudaSlice<f32>,
}

impl Rank<'_> {
    /// The step's routing on the device, to group there (None: no `tgroup` kernel, the
    /// routing on the host, stacks of another type than the rows, or `PPMOE_DEVICE_GROUPING=0`
    /// (`grouping_wanted`): the caller groups on the host).
    pub(super) fn device_group(
        &mut self,
        call: &ExpertsCall,
        prefix: &str,
        bf16: bool,
    ) -> Result<Option<DeviceGroup>, String> {
        let Some(group) = self.functions.get(&format!("{prefix}_tgroup")).cloned() else {
            return Ok(None);
        };
        let Some(OnDevice {
            ids,
            weights,
            dims,
            tokens: t,
            hidden,
            ffn,
        }) = self.routing_on_device(call, bf16)?
        else {
            return Ok(None);
        };
        let slots = ids.len();
        // The kernel indexes rows and slots as i32.
        if group_rows(slots, dims.experts).2 > i32::MAX as usize {
            return Ok(None);
        }
        if !grouping_wanted() {
            return Ok(None);
        }
        tracing::debug!("{prefix}: grouped on the device");
        Ok(Some(DeviceGroup {
            group,
            ids,
            weights,
            dims,
            tokens: t,
            k: slots / t,
            h: hidden,
            ffn,
        }))
    }

    /// [T, H] f32: the combined expert outputs of `tokens` (the other tokens' rows 0), grouped
    /// on the device, on the rank's stream.
    pub(super) fn device_grouped_experts(
        &mut self,
        call: &ExpertsCall,
        prefix: &str,
        g: &DeviceGroup,
        tokens: Range<usize>,
    ) -> Result<CudaSlice<f32>, String> {
        let ffn = &g.ffn;
        let (lo, hi) = (tokens.start * g.k, tokens.end * g.k);
        let e = g.dims.experts;
        let (m, bound, rows) = group_rows(hi - lo, e);
        let s = self.stream.clone();
        let cells = |width: usize| {
            rows.checked_mul(width)
                .ok_or_else(|| format!("{rows} grouped rows of {width} overflow"))
        };
        let bufs = RowBuffers {
            xg: alloc(&s, cells(g.h)?, ffn.mid)?,
            hid: alloc(&s, cells(ffn.n)?, ffn.mid)?,
            act: alloc(&s, cells(g.dims.ffn)?, ffn.mid)?,
            out: alloc(&s, cells(g.h)?, ffn.mid)?,
        };
        let first = call.first_local.unwrap_or(0);
        let tiles = self.lay_tiles(g, &bufs, (lo..hi, first), (m, bound))?;
        self.phase("experts: grouped on the device")?;
        let kernels = self.expert_kernels(prefix, false)?;
        self.gather_step_rows(
            &kernels,
            call.x,
            &tiles.perm,
            &bufs.xg,
            (rows, g.h),
            ffn.mid,
        )?;
        self.phase("experts: gather")?;
        let ptr = |j: u64| super::dptr(&tiles.ptrs, &s) + j * bound as u64 * 8;
        let batch = |n: usize, k: usize| PointerBatch {
            m,
            n,
            k,
            batch: bound,
            w_transposed: ffn.w_transposed,
            c_elem: ffn.mid,
        };
        // SAFETY: the kernel wrote `bound` pointers per array, each to a tile of m rows inside
        // the row buffers (rows = (bound + 1) * m) or to an expert's matrix of the stack.
        unsafe {
            blas::gemm_pointer_batch(
                &self.blas,
                ffn.mid,
                &batch(ffn.n, g.h),
                (ptr(0), ptr(1), ptr(2)),
            )
        }?;
        self.phase("experts: first projection")?;
        self.launch_act(&kernels, &bufs.hid, &bufs.act, &tiles.rexp, rows, ffn)?;
        self.phase("experts: activation")?;
        // SAFETY: as above.
        unsafe {
            blas::gemm_pointer_batch(
                &self.blas,
                ffn.mid,
                &batch(g.h, g.dims.ffn),
                (ptr(3), ptr(4), ptr(5)),
            )
        }?;
        self.phase("experts: second projection")?;
        let comb = Combine {
            pos: &tiles.pos,
            weights: &g.weights,
            eid: &tiles.eid,
            b_out: ffn.b_out.map(|b| self.dev_ref(b)).transpose()?,
            tokens: g.tokens,
            k: g.k,
            h: g.h,
            mid: ffn.mid,
        };
        let y = combine_rows(&s, &kernels, &bufs.out, rows, &comb)?;
        self.phase("experts: combine")?;
        Ok(y)
    }

    /// The grouping kernel over slots `lo..hi` (PPMoE: local experts from `first`), tiles of
    /// `m` rows, `bound` of them.
    fn lay_tiles(
        &self,
        g: &DeviceGroup,
        bufs: &RowBuffers,
        (chunk, first): (Range<usize>, usize),
        (m, bound): (usize, usize),
    ) -> Result<Tiles, String> {
        let s = &self.stream;
        let slots = g.ids.len();
        let rows = (bound + 1) * m;
        let int = |n: usize| {
            // SAFETY: written whole by the kernel before any read (rows, slots, pointers).
            unsafe { s.alloc::<i32>(n.max(1)) }.map_err(|e| e.to_string())
        };
        let tiles = Tiles {
            perm: int(rows)?,
            rexp: int(rows)?,
            pos: int(slots)?,
            eid: int(slots)?,
            // SAFETY: as above.
            ptrs: unsafe { s.alloc::<u64>(6 * bound.max(1)) }.map_err(|e| e.to_string())?,
        };
        let p = |b: &CudaSlice<i32>| super::dptr(b, s);
        let (pi, pw) = (super::dptr(&g.ids, s), super::dptr(&g.weights, s));
        let (pp, pr, ps, pe) = (p(&tiles.perm), p(&tiles.rexp), p(&tiles.pos), p(&tiles.eid));
        let pt = super::dptr(&tiles.ptrs, s);
        let len = |n: usize| n.max(1) as i64;
        let (ls, lr, lp) = (len(slots), len(rows), len(6 * bound));
        let sizes = [first, chunk.start, chunk.end, m, bound].map(|v| v as i64);
        let d = |b: &CudaSlice<f32>| super::dptr(b, s);
        let bases = [
            d(&bufs.xg),
            g.ffn.w_in.0,
            d(&bufs.hid),
            d(&bufs.act),
            g.ffn.w_out.0,
            d(&bufs.out),
        ];
        let mut l = s.launch_builder(&g.group);
        memref_args(&mut l, &pi, &ls);
        memref_args(&mut l, &pw, &ls);
        memref_args(&mut l, &pp, &lr);
        memref_args(&mut l, &pr, &lr);
        memref_args(&mut l, &ps, &ls);
        memref_args(&mut l, &pe, &ls);
        memref_args(&mut l, &pt, &lp);
        for v in &sizes {
            l.arg(v);
        }
        for b in &bases {
            l.arg(b);
        }
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (GROUP_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel was generated for these slots, experts and sizes; the buffers
        // hold what it writes (rows, slots, 6 x bound pointers).
        unsafe { l.launch(cfg) }.map_err(|e| e.to_string())?;
        Ok(tiles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_keep_spare_rows_near_a_quarter_and_the_bound_holds_every_layout() {
        // Qwen3's 128 experts: 4096 tokens x 8 slots take 64-row tiles, 512 tokens 16.
        assert_eq!(group_tile_by(32_768, 128, None), 64);
        assert_eq!(group_tile_by(4_096, 128, None), 16);
        // Mixtral's 8 experts at 4096 tokens x 2: 128.
        assert_eq!(group_tile_by(8_192, 8, None), 128);
        // A set tile within 1..=slots.
        assert_eq!(group_tile_by(8_192, 8, Some(64)), 64);
        assert_eq!(group_tile_by(100, 8, Some(usize::MAX)), 100);
        assert_eq!(group_tile_by(100, 8, Some(0)), group_tile_by(100, 8, None));
        // The bound holds the worst layout: every expert with one slot past a full tile.
        let (slots, experts, m) = (100, 7, 16);
        let worst: usize = (0..experts)
            .map(|e| if e == 0 { slots - (experts - 1) } else { 1 })
            .map(|c: usize| c.div_ceil(m))
            .sum();
        assert!(worst <= group_bound(slots, experts, m));
        // Fewer slots than experts: at most one tile per slot.
        assert_eq!(group_bound(3, 128, 16), 1 + 3);
    }
}
