//! An experts step routed on the device: for few tokens (one by default,
//! `program::routes_on_device`, and a few more with bf16 stacks, `routes_on_tensor_cores`;
//! `PPMOE_DEVICE_ROUTING` at compile time), where the compiler generated the step's `dgroup`
//! kernel and its `dproj_in` and `dproj_out` (CUDA cores) or tensor-core projections (the
//! `tproj` kernels, mma.sync, or above 16 rows per expert the `pproj` ones, wgmma fed by a
//! producer warp, the weights through tensor maps, a block per SM over every expert's tiles;
//! or where the compiler was asked for them the per-tile `sproj` form or the `wproj` form
//! whose threads all copy; reading x
//! narrowed to bf16, the first with the activation as its epilogue where it fits) kernels (see
//! the compiler's `decode_experts`).
//! Nothing is read back and nothing grouped on the host: the slots are listed per expert on
//! the device, each projection reads only the routed experts' matrices, the rows are indexed
//! by slot (no gather), and the step's own activation and combine kernels finish it. So the
//! forward does not wait for the device here, and its launches can run ahead of the GPU.

use super::experts::{
    alloc, combine_rows, combine_rows_bits, Combine, Combined, ExpertsCall, FfnOperands,
};
use super::Rank;
use crate::program::{DecodeTile, ExpertDims};
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Which projections a device-routed step has.
#[derive(Clone, Copy, PartialEq)]
enum Projections {
    /// The compiler's CUDA-core `dproj` kernels (sized by `DecodeTile`).
    CudaCores,
    /// Its `tproj` kernels (mma.sync, a block of 4 warps per 64 columns of an expert).
    MmaSync,
    /// Its `wproj` kernels (wgmma, a block of 2 warpgroups per 256 weight rows of an expert).
    Warpgroups,
    /// Its `sproj` kernels (the same, and a producer warp feeding them: the weights through
    /// tensor maps).
    Producer,
    /// Its `pproj` kernels (the same, persistent: a block per SM walks every expert's tiles),
    /// or (`pingpong`) its `qproj` ones: the same with a tile per warpgroup, more shared memory.
    Persistent { pingpong: bool },
}

/// The three kernels of the device-routed path.
struct RoutedKernels {
    group: CudaFunction,
    proj_in: CudaFunction,
    proj_out: CudaFunction,
    projections: Projections,
    /// The first projection is `tproj_act`, `wproj_act`, `sproj_act` or `pproj_act`: the gated
    /// activation is its epilogue.
    fused_act: bool,
    /// The persistent projections' rows sorted by expert: the kernel that sorts x's rows
    /// (`SORTED_ROWS_KERNEL`); both projections then read their rows through tensor maps, and
    /// the first writes the activations in that order.
    sort: Option<CudaFunction>,
    /// The CUDA-core first projection reading x's bf16 bits (`DPROJ_IN_BF16`), where x is
    /// bf16 in the model.
    proj_in_bf16: Option<CudaFunction>,
    /// The warp-specialised projections' blocks (threads), first and second, as the kernels
    /// state them (their producer warps are the compiler's choice).
    producer_threads: (usize, usize),
}

impl RoutedKernels {
    /// The blocks of the first and the second projection over `tokens` tokens.
    fn blocks(&self, tokens: usize) -> (Blocks, Blocks) {
        use crate::program::{
            PP_SHARED_BYTES, QP_SHARED_BYTES, SP_SHARED_BYTES, TC_ACT_BLOCK_COLUMNS,
            TC_BLOCK_COLUMNS, TC_WARPS, WG_ACT_BLOCK_COLUMNS, WG_BLOCK_COLUMNS, WG_SHARED_BYTES,
            WG_THREADS,
        };
        let (plain, fused, warps, shared) = match self.projections {
            Projections::CudaCores => {
                let tile = DecodeTile::for_tokens(tokens);
                let b = Blocks {
                    columns: tile.block_columns(),
                    warps: crate::program::DECODE_WARPS,
                    shared: 0,
                    persistent: false,
                };
                return (b, b);
            }
            Projections::MmaSync => (TC_BLOCK_COLUMNS, TC_ACT_BLOCK_COLUMNS, TC_WARPS, 0),
            Projections::Warpgroups => (
                WG_BLOCK_COLUMNS,
                WG_ACT_BLOCK_COLUMNS,
                WG_THREADS / 32,
                WG_SHARED_BYTES,
            ),
            Projections::Producer => (
                WG_BLOCK_COLUMNS,
                WG_ACT_BLOCK_COLUMNS,
                self.producer_threads.0 / 32,
                SP_SHARED_BYTES,
            ),
            Projections::Persistent { pingpong } => (
                WG_BLOCK_COLUMNS,
                WG_ACT_BLOCK_COLUMNS,
                self.producer_threads.0 / 32,
                if pingpong {
                    QP_SHARED_BYTES
                } else {
                    PP_SHARED_BYTES
                },
            ),
        };
        let first = Blocks {
            columns: if self.fused_act { fused } else { plain },
            warps,
            shared,
            persistent: matches!(self.projections, Projections::Persistent { .. }),
        };
        let second = Blocks {
            columns: plain,
            warps: match self.projections {
                Projections::Producer | Projections::Persistent { .. } => {
                    self.producer_threads.1 / 32
                }
                _ => warps,
            },
            ..first
        };
        (first, second)
    }
}

/// The slots listed per expert: `lists[e * slots ..][.. counts[e]]`, each slot's combine row
/// (`pos`, itself or -1) and local expert (`eid`).
struct SlotLists {
    lists: CudaSlice<i32>,
    counts: CudaSlice<i32>,
    pos: CudaSlice<i32>,
    eid: CudaSlice<i32>,
}

/// What the first projection reads: x (bf16, or f32 for the CUDA-core kernels), the stack's
/// tensor map where the kernel reads it so, the sorted rows where it reads those, its output's
/// width and the local experts, its blocks.
struct FirstProjection {
    x: u64,
    map: Option<u64>,
    sorted: Option<Sorted>,
    shape: (usize, usize),
    blocks: Blocks,
}

/// The sorted rows' workspaces: the activations' address (the first projection's output),
/// and the tensor maps of the rows and the activations.
#[derive(Clone, Copy)]
struct Sorted {
    act: u64,
    rows_map: u64,
    act_map: u64,
}

/// A projection kernel's blocks: the output columns of one, and its warps.
#[derive(Clone, Copy)]
struct Blocks {
    columns: usize,
    warps: usize,
    /// Dynamic shared memory per block.
    shared: usize,
    /// A block per SM, each walking the tiles of every expert (else a block per tile).
    persistent: bool,
}

/// A buffer as a kernel's memref operand (base, aligned base, offset, length, stride).
pub(super) fn memref_args<'a>(l: &mut cudarc::driver::LaunchArgs<'a>, ptr: &'a u64, len: &'a i64) {
    const ZERO: i64 = 0;
    const ONE: i64 = 1;
    l.arg(ptr).arg(ptr).arg(&ZERO).arg(len).arg(&ONE);
}

/// A step's routing where the route left it (on the device), with the step's sizes and FFN
/// operands: what both device paths start from.
pub(super) struct OnDevice {
    pub ids: Arc<CudaSlice<f32>>,
    pub weights: Arc<CudaSlice<f32>>,
    pub dims: ExpertDims,
    pub tokens: usize,
    pub hidden: usize,
    pub ffn: FfnOperands,
}

impl Rank<'_> {
    /// The step's routing on the device (None: on the host, sizes that do not divide, or
    /// stacks of another type than the rows between the kernels).
    pub(super) fn routing_on_device(
        &mut self,
        call: &ExpertsCall,
        bf16: bool,
    ) -> Result<Option<OnDevice>, String> {
        let (Some(ids), Some(weights)) = (self.shared_dev(call.ids), self.shared_dev(call.weights))
        else {
            return Ok(None);
        };
        let (xs, dims) = self.expert_dims(call.x, call.w_in, call.w_out, call.layout)?;
        let (t, slots) = (xs[0], ids.len());
        if t == 0 || slots != weights.len() || slots % t != 0 {
            return Ok(None);
        }
        let ffn = self.ffn_operands(call, dims, bf16, false)?;
        if ffn.w_in.1 != ffn.mid || ffn.w_out.1 != ffn.mid {
            return Ok(None);
        }
        Ok(Some(OnDevice {
            ids,
            weights,
            dims,
            tokens: t,
            hidden: xs[1],
            ffn,
        }))
    }

    /// The step's combined expert outputs ([T, H] f32) computed as the module's comment says,
    /// or None where the step is not routed on the device (no such kernels in the PTX,
    /// `PPMOE_DEVICE_ROUTING=0`, the routing not on the device, or stacks of another type than
    /// the kernels were made for): the caller groups on the host.
    pub(super) fn device_routed_experts(
        &mut self,
        call: &ExpertsCall,
        prefix: &str,
        bf16: bool,
        bits: bool,
    ) -> Result<Option<(Combined, usize)>, String> {
        let Some(mut kernels) = self.routed_kernels(prefix) else {
            return Ok(None);
        };
        let Some(routed) = self.routing_on_device(call, bf16)? else {
            return Ok(None);
        };
        if let Some(y) = self.token_experts(call, prefix, &routed, bits)? {
            return Ok(Some((y, routed.tokens)));
        }
        let OnDevice {
            ids,
            weights,
            dims,
            tokens: t,
            ffn,
            ..
        } = routed;
        let slots = ids.len();
        let first = call.first_local.unwrap_or(0);
        let lists = self.list_slots(&kernels.group, (&ids, &weights), dims.experts, first)?;
        self.phase("experts: slots listed on the device")?;
        let (first_blocks, second_blocks) = kernels.blocks(t);
        // The tensor-core kernels read bf16 rows: x narrowed as a bf16 GEMM's activation is
        // (once, where the router's GEMM read it too).
        let elem = match kernels.projections {
            // x held as bf16 bits (a bf16 input): read as they are, not widened for the f32
            // projection.
            Projections::CudaCores => match kernels.proj_in_bf16.take() {
                Some(f) if self.holds_bits(call.x) => {
                    kernels.proj_in = f;
                    super::blas::Elem::Bf16
                }
                _ => super::blas::Elem::F32,
            },
            _ => super::blas::Elem::Bf16,
        };
        let (x, _narrowed) = self.operand_as(call.x, elem)?;
        let step = self.expert_kernels(prefix, false)?;
        // The warp-specialised kernels read the stacks through tensor maps: boxes of a
        // block's weight rows, one per output column (fused, its gate rows and their up rows:
        // two boxes of a row per activation).
        let producer = matches!(
            kernels.projections,
            Projections::Producer | Projections::Persistent { .. }
        );
        let map = |w: u64, (rows, inner): (usize, usize), blocks: Blocks| {
            producer
                .then(|| {
                    let box_rows = u32::try_from(blocks.columns).map_err(|e| e.to_string())?;
                    self.bf16_tensor_map(w, rows * dims.experts, inner, box_rows)
                })
                .transpose()
        };
        let map_in = map(ffn.w_in.0, (ffn.n, dims.hidden), first_blocks)?;
        let map_out = map(ffn.w_out.0, (dims.hidden, dims.ffn), second_blocks)?;
        let sorted = match &kernels.sort {
            Some(sort) => Some(self.sort_rows(sort, x, &lists, (slots, dims))?),
            None => None,
        };
        // Fused, the first projection's epilogue is the activation: [slots, F] straight away.
        let width = if kernels.fused_act { dims.ffn } else { ffn.n };
        let first = FirstProjection {
            x,
            map: map_in,
            sorted,
            shape: (width, dims.experts),
            blocks: first_blocks,
        };
        let (act, _held) = self.project_first(&kernels, &step, first, &lists, &ffn)?;
        let out = alloc(&self.stream, slots * dims.hidden, ffn.mid)?;
        let w = (act, ffn.w_out.0, map_out, sorted.map(|s| s.act_map));
        self.project_listed(
            &kernels.proj_out,
            w,
            super::dptr(&out, &self.stream),
            &lists,
            (dims.hidden, dims.experts),
            second_blocks,
        )?;
        self.phase("experts: second projection")?;
        let comb = Combine {
            pos: &lists.pos,
            weights: &weights,
            eid: &lists.eid,
            b_out: ffn.b_out.map(|b| self.dev_ref(b)).transpose()?,
            tokens: t,
            k: slots / t,
            h: dims.hidden,
            mid: ffn.mid,
        };
        // Where y's readers take bf16 bits (`bits`), the combine writes them.
        let y = match bits {
            true => combine_rows_bits(&self.stream, &step, &out, slots, &comb)?.map(Combined::Bits),
            false => None,
        };
        let y = match y {
            Some(y) => y,
            None => Combined::F32(combine_rows(&self.stream, &step, &out, slots, &comb)?),
        };
        self.phase("experts: combine")?;
        Ok(Some((y, t)))
    }

    /// The step's device-routing kernels, unless absent or turned off.
    fn routed_kernels(&self, prefix: &str) -> Option<RoutedKernels> {
        if std::env::var("PPMOE_DEVICE_ROUTING").as_deref() == Ok("0") {
            return None;
        }
        let f = |s: &str| self.functions.get(&format!("{prefix}_{s}")).cloned();
        let group = f("dgroup")?;
        let pair = |[act, plain, out]: [&str; 3]| {
            let fused = f(act);
            let fused_act = fused.is_some();
            Some((fused.or_else(|| f(plain))?, f(out)?, fused_act))
        };
        let (proj_in, proj_out, fused_act, projections) =
            if let Some((i, o, a)) = pair(crate::program::QP_KERNELS) {
                (i, o, a, Projections::Persistent { pingpong: true })
            } else if let Some((i, o, a)) = pair(crate::program::PP_KERNELS) {
                (i, o, a, Projections::Persistent { pingpong: false })
            } else if let Some((i, o, a)) = pair(crate::program::SP_KERNELS) {
                (i, o, a, Projections::Producer)
            } else if let Some((i, o, a)) = pair(crate::program::WG_KERNELS) {
                (i, o, a, Projections::Warpgroups)
            } else if let Some((i, o, a)) = pair(crate::program::TC_KERNELS) {
                (i, o, a, Projections::MmaSync)
            } else {
                (
                    f("dproj_in")?,
                    f("dproj_out")?,
                    false,
                    Projections::CudaCores,
                )
            };
        // The warp-specialised kernels' blocks, as they state them (`load_kernels` read
        // every one).
        let threads = |s: &str| {
            let name = format!("{prefix}_{s}");
            self.block_threads.get(&name).copied().unwrap_or(0)
        };
        let producer_names = match projections {
            Projections::Persistent { pingpong: true } => Some(crate::program::QP_KERNELS),
            Projections::Persistent { pingpong: false } => Some(crate::program::PP_KERNELS),
            Projections::Producer => Some(crate::program::SP_KERNELS),
            _ => None,
        };
        let producer_threads = producer_names.map_or((0, 0), |[act, plain, out]| {
            (threads(if fused_act { act } else { plain }), threads(out))
        });
        // Only the cooperative persistent kernels, fused, are generated for sorted rows.
        let sort = f(crate::program::SORTED_ROWS_KERNEL)
            .filter(|_| fused_act && projections == Projections::Persistent { pingpong: false });
        let proj_in_bf16 =
            f(crate::program::DPROJ_IN_BF16).filter(|_| projections == Projections::CudaCores);
        let kernels = RoutedKernels {
            group,
            proj_in,
            proj_out,
            projections,
            fused_act,
            sort,
            proj_in_bf16,
            producer_threads,
        };
        tracing::debug!(
            "{prefix}: routed on the device ({})",
            match projections {
                Projections::CudaCores => "CUDA cores",
                Projections::MmaSync => "tensor cores, mma.sync",
                Projections::Warpgroups => "tensor cores, wgmma",
                Projections::Producer => "tensor cores, wgmma, a producer warp",
                Projections::Persistent { pingpong: false } => {
                    "tensor cores, wgmma, a producer warp, persistent"
                }
                Projections::Persistent { pingpong: true } => {
                    "tensor cores, wgmma, a producer warp, persistent, a tile per warpgroup"
                }
            }
        );
        Some(kernels)
    }

    /// The device's multiprocessors (a persistent kernel's blocks), asked once per rank.
    fn multiprocessors(&self) -> Result<u32, String> {
        use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
        if let Some(n) = self.multiprocessors.get() {
            return Ok(*n);
        }
        let n = self
            .stream
            .context()
            .attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| e.to_string())?;
        Ok(*self.multiprocessors.get_or_init(|| n.max(1) as u32))
    }

    /// The `dgroup` kernel: one block per local expert, and `list_blocks`' others for `pos`
    /// and `eid`.
    fn list_slots(
        &self,
        group: &CudaFunction,
        (ids, weights): (&CudaSlice<f32>, &CudaSlice<f32>),
        experts: usize,
        first: usize,
    ) -> Result<SlotLists, String> {
        let s = &self.stream;
        let slots = ids.len();
        let int = |n: usize| {
            // SAFETY: written by the kernel before any read (lists up to each count; counts,
            // pos and eid whole).
            unsafe { s.alloc::<i32>(n.max(1)) }.map_err(|e| e.to_string())
        };
        let lists = SlotLists {
            lists: int(experts * slots)?,
            counts: int(experts)?,
            pos: int(slots)?,
            eid: int(slots)?,
        };
        let p = |b: &CudaSlice<i32>| super::dptr(b, s);
        let (pi, pw) = (super::dptr(ids, s), super::dptr(weights, s));
        let (pl, pc, pp, pe) = (
            p(&lists.lists),
            p(&lists.counts),
            p(&lists.pos),
            p(&lists.eid),
        );
        let len = |n: usize| n.max(1) as i64;
        let (ls, ll, lc, first) = (len(slots), len(experts * slots), len(experts), first as i64);
        let mut l = s.launch_builder(group);
        memref_args(&mut l, &pi, &ls);
        memref_args(&mut l, &pw, &ls);
        memref_args(&mut l, &pl, &ll);
        memref_args(&mut l, &pc, &lc);
        memref_args(&mut l, &pp, &ls);
        memref_args(&mut l, &pe, &ls);
        l.arg(&first);
        let blocks = crate::program::list_blocks(slots, experts);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (crate::program::LIST_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel was generated for these slots and experts; the buffers hold them.
        unsafe { l.launch(cfg) }.map_err(|e| e.to_string())?;
        Ok(lists)
    }

    /// The first projection of the listed rows, and the activation where it is not its
    /// epilogue: the activations' address, and their buffer where the step holds it (sorted,
    /// the rank's workspace holds them).
    fn project_first(
        &mut self,
        kernels: &RoutedKernels,
        step: &super::experts::ExpertKernels,
        first: FirstProjection,
        lists: &SlotLists,
        ffn: &FfnOperands,
    ) -> Result<(u64, Option<CudaSlice<f32>>), String> {
        let (width, slots) = (first.shape.0, lists.pos.len());
        let w = (
            first.x,
            ffn.w_in.0,
            first.map,
            first.sorted.map(|s| s.rows_map),
        );
        let shape = first.shape;
        if let Some(sorted) = first.sorted {
            self.project_listed(&kernels.proj_in, w, sorted.act, lists, shape, first.blocks)?;
            self.phase("experts: first projection and activation")?;
            return Ok((sorted.act, None));
        }
        let out = alloc(&self.stream, slots * width, ffn.mid)?;
        let at = super::dptr(&out, &self.stream);
        self.project_listed(&kernels.proj_in, w, at, lists, shape, first.blocks)?;
        if kernels.fused_act {
            self.phase("experts: first projection and activation")?;
            return Ok((at, Some(out)));
        }
        self.phase("experts: first projection")?;
        let act = self.activate(step, &out, &lists.eid, slots, ffn)?;
        self.phase("experts: activation")?;
        Ok((super::dptr(&act, &self.stream), Some(act)))
    }

    /// x's rows sorted by expert (`sort`, the step's `SORTED_ROWS_KERNEL`) into the rank's
    /// workspace, and the tensor maps of it and of the activations' workspace, which the
    /// first projection writes in the same order: boxes of a tile's rows.
    fn sort_rows(
        &self,
        sort: &CudaFunction,
        x: u64,
        lists: &SlotLists,
        (slots, dims): (usize, ExpertDims),
    ) -> Result<Sorted, String> {
        use crate::program::{PP_TILE_ROWS, SORT_THREADS};
        let elems = |inner: usize| {
            slots
                .checked_mul(inner)
                .ok_or_else(|| format!("{slots} sorted rows of {inner}: too many elements"))
        };
        let rows = self.workspace("sorted rows", elems(dims.hidden)?)?;
        let act = self.workspace("sorted activations", elems(dims.ffn)?)?;
        let s = &self.stream;
        let (pl, pc) = (super::dptr(&lists.lists, s), super::dptr(&lists.counts, s));
        let one = 1i64;
        let mut l = s.launch_builder(sort);
        memref_args(&mut l, &x, &one);
        memref_args(&mut l, &pl, &one);
        memref_args(&mut l, &pc, &one);
        memref_args(&mut l, &rows, &one);
        // A few blocks per expert, about four per SM in all.
        let sms = self.multiprocessors()? as usize;
        let per_expert = (4 * sms).div_ceil(dims.experts.max(1)).max(1);
        let cfg = LaunchConfig {
            grid_dim: (dims.experts as u32, per_expert as u32, 1),
            block_dim: (SORT_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel was generated for these slots and rows; x holds the tokens' bf16
        // rows, the workspace [slots, hidden].
        unsafe { l.launch(cfg) }.map_err(|e| e.to_string())?;
        self.phase("experts: rows sorted by expert")?;
        let tile = u32::try_from(PP_TILE_ROWS).map_err(|e| e.to_string())?;
        Ok(Sorted {
            act,
            rows_map: self.bf16_tensor_map(rows, slots, dims.hidden, tile)?,
            act_map: self.bf16_tensor_map(act, slots, dims.ffn, tile)?,
        })
    }

    /// One projection of the listed rows (`src` and the stack `w` as device pointers, the
    /// stack's tensor map where the kernel reads it so, and the sorted rows' where it reads
    /// them so) into `dst` ([slots, dout]): a block per (column tile, local expert), or per SM.
    fn project_listed(
        &self,
        f: &CudaFunction,
        (src, w, map, rows_map): (u64, u64, Option<u64>, Option<u64>),
        pd: u64,
        lists: &SlotLists,
        (dout, experts): (usize, usize),
        blocks: Blocks,
    ) -> Result<(), String> {
        let s = &self.stream;
        let p = |b: &CudaSlice<i32>| super::dptr(b, s);
        let (pl, pc) = (p(&lists.lists), p(&lists.counts));
        // Lengths are not read by the kernels (sizes are baked in; any positive value serves),
        // but for the counts': the persistent kernels walk that many experts.
        let one = 1i64;
        let experts_len = experts as i64;
        let mut l = s.launch_builder(f);
        memref_args(&mut l, &src, &one);
        memref_args(&mut l, &w, &one);
        memref_args(&mut l, &pl, &one);
        memref_args(&mut l, &pc, &experts_len);
        memref_args(&mut l, &pd, &one);
        if let Some(map) = &map {
            memref_args(&mut l, map, &one);
        }
        if let Some(map) = &rows_map {
            memref_args(&mut l, map, &one);
        }
        let grid_dim = if blocks.persistent {
            (self.multiprocessors()?, 1, 1)
        } else {
            (dout.div_ceil(blocks.columns) as u32, experts as u32, 1)
        };
        let cfg = LaunchConfig {
            grid_dim,
            block_dim: (blocks.warps as u32 * 32, 1, 1),
            shared_mem_bytes: blocks.shared as u32,
        };
        // SAFETY: the kernel was generated for these sizes and tile; src holds the rows it
        // reads (x's tokens, or the slots' hidden rows), dst [slots, dout].
        unsafe { l.launch(cfg) }.map_err(|e| e.to_string())?;
        Ok(())
    }
}
