//! The expert work of MoE layers on the GPU: `moe.experts` (one rank), and PPMoE's local
//! experts (`GpuOp::LocalExperts`: the same, for the slots routed to this rank's experts).
//! Where the step is not routed or grouped on the device (`device_routed.rs`,
//! `device_grouped.rs`: few tokens, or small expert matrices), the slots are grouped by expert
//! on the host (the routing is small, T x k) and the work is on the device: a gather of the
//! routed rows grouped by expert (each expert's rows padded to one block size where that adds
//! little), cuBLAS GEMMs per projection over the experts' row blocks (grouped, one per
//! expert, or one strided batch over padded blocks: whichever is fastest for the shape,
//! `grouped_choice`), the activation kernel between them, and a combine kernel that sums each
//! token's k weighted expert outputs (a gather, so no atomics and the same order every run). The
//! pieces (gather, FFN over blocks, combine) are shared with the all-to-all step
//! (`alltoall_experts.rs`).

use super::blas::{Elem, Grouped};
use super::Rank;
use crate::error::RuntimeError;
use crate::program::{ExpertDims, ExpertLayout, Op, Program};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// The per-expert blocks of one projection: `blocks` (expert, rows) of `src`, laid one after
/// another, times that expert's matrix of the stack `w` ([E, din, dout]), into `dst` (of
/// `dst_elem`).
fn expert_groups(
    blocks: &[(usize, usize)],
    src: u64,
    w: u64,
    dst: u64,
    (din, dout): (usize, usize),
    elem: Elem,
    dst_elem: Elem,
) -> Vec<(u64, u64, u64, usize)> {
    let mut groups = Vec::new();
    let mut off = 0usize;
    for &(ex, r) in blocks {
        if r > 0 {
            groups.push((
                src + (off * din) as u64 * elem.bytes(),
                w + (ex * din * dout) as u64 * elem.bytes(),
                dst + (off * dout) as u64 * dst_elem.bytes(),
                r,
            ));
            off += r;
        }
    }
    groups
}

/// The kernels of one step.
pub(super) struct ExpertKernels {
    gather: CudaFunction,
    /// The gather from x's bf16 copy, where the step has it (`GATHER_BF16_SUFFIX`).
    gather_bf16: Option<CudaFunction>,
    act: CudaFunction,
    combine: CudaFunction,
    /// The combine writing y as bf16 bits, where the step has it (`COMBINE_BITS_SUFFIX`).
    combine_bits: Option<CudaFunction>,
    bias_out: Option<CudaFunction>,
}

/// The expert FFN's operands on the device.
pub(super) struct FfnOperands {
    pub w_in: (u64, Elem),
    pub w_out: (u64, Elem),
    /// The bias buffers (on the device already).
    b_in: Option<usize>,
    pub b_out: Option<usize>,
    /// The output bias goes on the expert rows (before they travel back), not in the combine.
    bias_on_rows: bool,
    /// The hidden width, the first projection's width (F, or 2F gated) and the FFN width.
    h: usize,
    pub n: usize,
    f: usize,
    pub w_transposed: bool,
    /// The element type of rows, hidden activations and outputs between kernels and GEMMs.
    pub mid: Elem,
}

/// Where each slot's row sits: `perm` (row -> token), `pos` (slot -> row, -1 for none), and the
/// rows' blocks (expert, rows), from slots grouped by expert.
pub(super) struct RowOrder {
    pub perm: Vec<i32>,
    pub pos: Vec<i32>,
    pub blocks: Vec<(usize, usize)>,
}

impl RowOrder {
    /// `groups[e]`: the slots (t * k + j, local to `slots` slots) of expert e, in order; a
    /// token's row is `token_offset + t`.
    pub(super) fn of<G: AsRef<[usize]>>(
        groups: &[G],
        slots: usize,
        k: usize,
        token_offset: usize,
    ) -> RowOrder {
        RowOrder::in_blocks(groups, slots, k, token_offset, None)
    }

    /// As `of`, each expert's rows a block of `m` (`padded_rows`), its rows first: every block
    /// the same size, so that a projection can be one strided-batched GEMM. The padding rows
    /// copy token `token_offset`'s row: they are computed through the FFN and never combined
    /// (no slot's `pos` names them).
    pub(super) fn padded<G: AsRef<[usize]>>(
        groups: &[G],
        slots: usize,
        k: usize,
        token_offset: usize,
        m: usize,
    ) -> RowOrder {
        RowOrder::in_blocks(groups, slots, k, token_offset, Some(m))
    }

    /// Each expert's rows in a block of its own rows, or of `pad` rows.
    fn in_blocks<G: AsRef<[usize]>>(
        groups: &[G],
        slots: usize,
        k: usize,
        token_offset: usize,
        pad: Option<usize>,
    ) -> RowOrder {
        let rows: usize = groups
            .iter()
            .map(|g| pad.unwrap_or(0).max(g.as_ref().len()))
            .sum();
        let mut o = RowOrder {
            perm: Vec::with_capacity(rows),
            pos: vec![-1; slots],
            blocks: Vec::with_capacity(groups.len()),
        };
        for (ex, g) in groups.iter().enumerate() {
            let g = g.as_ref();
            for &s in g {
                o.pos[s] = o.perm.len() as i32;
                o.perm.push((token_offset + s / k) as i32);
            }
            let size = pad.unwrap_or(g.len()).max(g.len());
            o.perm
                .resize(o.perm.len() + size - g.len(), token_offset as i32);
            o.blocks.push((ex, size));
        }
        o
    }
}

/// The block size of a padded layout (`RowOrder::padded`): the most rows of any expert,
/// rounded up to 8; None where that would add more than 30% rows (routing too uneven, or too
/// few tokens for its spread). `PPMOE_EXPERT_PADDING=0` never pads, `=1` always does (to test
/// the padded path on small models).
pub(super) fn padded_rows<G: AsRef<[usize]>>(groups: &[G]) -> Option<usize> {
    let sizes: Vec<usize> = groups.iter().map(|g| g.as_ref().len()).collect();
    padded_block(&sizes)
}

/// As `padded_rows`, from each expert's row count.
pub(super) fn padded_block(sizes: &[usize]) -> Option<usize> {
    let setting = std::env::var("PPMOE_EXPERT_PADDING");
    padded_block_by(sizes, setting.as_deref().ok())
}

fn padded_block_by(sizes: &[usize], setting: Option<&str>) -> Option<usize> {
    let rows: usize = sizes.iter().sum();
    let m = sizes.iter().max()?.div_ceil(8) * 8;
    let cheap = sizes.len() * m * 10 <= rows * 13;
    let pad = match setting {
        Some("0") => false,
        Some("1") => true,
        _ => cheap,
    };
    (pad && sizes.len() > 1 && rows > 0).then_some(m)
}

/// Each expert's slots (`t * k + j`), in slot order, as one flat list: expert e's are
/// `slots[start[e]..start[e + 1]]`. Made by a counting sort (two passes over the slots, no
/// allocation per slot: a list per expert took about 0.2 ms for 32,768 slots).
pub(super) struct SlotsByExpert {
    slots: Vec<usize>,
    start: Vec<usize>,
}

impl SlotsByExpert {
    /// The slots by `expert_of[s]` (None: left out) over `experts` experts (each `Some` below).
    pub(super) fn sort(expert_of: &[Option<usize>], experts: usize) -> SlotsByExpert {
        let mut start = vec![0usize; experts + 1];
        for &e in expert_of.iter().flatten() {
            start[e + 1] += 1;
        }
        for e in 0..experts {
            start[e + 1] += start[e];
        }
        let mut next = start.clone();
        let mut slots = vec![0usize; start[experts]];
        for (s, e) in expert_of.iter().enumerate() {
            if let Some(e) = *e {
                slots[next[e]] = s;
                next[e] += 1;
            }
        }
        SlotsByExpert { slots, start }
    }

    /// Each expert's slots whose token (slot / k) lies in `tokens`: a sub-range of its own,
    /// since they are in slot order.
    pub(super) fn groups(&self, tokens: &std::ops::Range<usize>, k: usize) -> Vec<&[usize]> {
        self.start
            .windows(2)
            .map(|w| {
                let g = &self.slots[w[0]..w[1]];
                let lo = g.partition_point(|&s| s < tokens.start * k);
                let hi = g.partition_point(|&s| s < tokens.end * k);
                &g[lo..hi]
            })
            .collect()
    }
}

/// A layer's routing: on the host, each local expert's slots (`t * k + j`, in order; slots of
/// weight 0 and other ranks' experts left out); on the device, for the combine, the slots'
/// weights and local experts.
pub(super) struct Routed {
    pub tokens: usize,
    pub h: usize,
    pub k: usize,
    pub dims: ExpertDims,
    pub weights: Arc<CudaSlice<f32>>,
    pub eid: CudaSlice<i32>,
    pub by_expert: SlotsByExpert,
}

/// A step's expert outputs: computed by the device-routed path (`device_routed`), or to be
/// computed chunk by chunk from the routing grouped on the device (`device_grouped`) or on
/// the host.
pub(super) enum ExpertSource {
    Device {
        y: Option<Combined>,
        t: usize,
        h: usize,
    },
    /// Grouped on the device (`device_grouped`), chunk by chunk.
    Grouped(super::device_grouped::DeviceGroup),
    Host(Routed),
}

/// A step's combined outputs [T, H]: f32, or bf16 bits (`combine_bits`).
pub(super) enum Combined {
    F32(CudaSlice<f32>),
    Bits(CudaSlice<u16>),
}

impl ExpertSource {
    /// The outputs as bf16 bits, where the device-routed path combined them so.
    fn take_bits(&mut self) -> Option<CudaSlice<u16>> {
        match self {
            ExpertSource::Device { y, .. } => match y.take()? {
                Combined::Bits(b) => Some(b),
                f32 => {
                    *y = Some(f32);
                    None
                }
            },
            _ => None,
        }
    }

    pub(super) fn tokens_and_hidden(&self) -> (usize, usize) {
        match self {
            ExpertSource::Device { t, h, .. } => (*t, *h),
            ExpertSource::Grouped(g) => (g.tokens, g.h),
            ExpertSource::Host(r) => (r.tokens, r.h),
        }
    }

    /// The chunks of tokens to compute the outputs in: one where they are computed already.
    pub(super) fn chunks(&self, wanted: usize) -> usize {
        match self {
            ExpertSource::Device { .. } => 1,
            ExpertSource::Grouped(_) | ExpertSource::Host(_) => wanted,
        }
    }
}

/// `v` on the device (one element for an empty `v`: a kernel argument must point somewhere).
pub(super) fn upload(stream: &Arc<CudaStream>, v: &[i32]) -> Result<CudaSlice<i32>, String> {
    super::graph::upload(stream, if v.is_empty() { &[0][..] } else { v }).map_err(|e| e.to_string())
}

/// Uninitialised device memory for `len` elements of `elem`, in f32 slots (bf16: two to a
/// slot). Not zeroed: every buffer between the kernels and GEMMs is written whole before it
/// is read (the gather and activation kernels cover every row, the GEMMs every block, the
/// combine every token), and zeroing the hidden activations alone would cost rows x N x 4
/// bytes per layer.
pub(super) fn alloc(
    stream: &Arc<CudaStream>,
    len: usize,
    elem: Elem,
) -> Result<CudaSlice<f32>, String> {
    let slots = (len * elem.bytes() as usize).div_ceil(4);
    // SAFETY: uninitialised device memory, written whole before any read (above).
    unsafe { stream.alloc::<f32>(slots.max(1)) }.map_err(|e| e.to_string())
}

/// Rows `perm` of x ([T, H] f32) into a new [rows, H] of `mid`.
pub(super) fn gather_rows(
    stream: &Arc<CudaStream>,
    kernels: &ExpertKernels,
    x: &CudaSlice<f32>,
    perm: &CudaSlice<i32>,
    rows: usize,
    h: usize,
    mid: Elem,
) -> Result<CudaSlice<f32>, String> {
    let out = alloc(stream, rows * h, mid)?;
    gather_into(stream, kernels, x, perm, &out, (rows, h), mid)?;
    Ok(out)
}

/// Rows `perm` of x ([T, H] f32) into `out` ([rows, H] of `mid`).
pub(super) fn gather_into(
    stream: &Arc<CudaStream>,
    kernels: &ExpertKernels,
    x: &CudaSlice<f32>,
    perm: &CudaSlice<i32>,
    out: &CudaSlice<f32>,
    (rows, h): (usize, usize),
    mid: Elem,
) -> Result<(), String> {
    if rows == 0 {
        return Ok(());
    }
    let (zero, one, rows_i) = (0i64, 1i64, rows as i64);
    let (lx, lp, lo) = (x.len().max(1) as i64, rows as i64, (rows * h) as i64);
    let mut l = stream.launch_builder(&kernels.gather);
    l.arg(x).arg(x).arg(&zero).arg(&lx).arg(&one);
    l.arg(perm).arg(perm).arg(&zero).arg(&lp).arg(&one);
    l.arg(out).arg(out).arg(&zero).arg(&lo).arg(&one);
    l.arg(&rows_i);
    let threads = row_threads(rows, h, mid);
    // SAFETY: H baked into the kernel; perm's entries are rows of x; out holds rows x H.
    unsafe { l.launch(launch_cfg(threads)) }.map_err(|e| e.to_string())?;
    Ok(())
}

impl Rank<'_> {
    /// Rows `perm` of step input `x` (a buffer id) into `out` ([rows, H] of `mid`): from x's
    /// bf16 copy, eight columns a thread, where the step has that gather (the copy made once,
    /// and kept where another instruction reads x too, as the router's GEMM does); else from
    /// x itself.
    pub(super) fn gather_step_rows(
        &mut self,
        kernels: &ExpertKernels,
        x: usize,
        perm: &CudaSlice<i32>,
        out: &CudaSlice<f32>,
        (rows, h): (usize, usize),
        mid: Elem,
    ) -> Result<(), String> {
        let stream = self.stream.clone();
        let octets = crate::program::bf16_octets(mid == Elem::Bf16, h);
        let Some(gather) = kernels.gather_bf16.as_ref().filter(|_| octets) else {
            self.device(x).map_err(|e| e.to_string())?;
            return gather_into(
                &stream,
                kernels,
                self.dev_ref(x)?,
                perm,
                out,
                (rows, h),
                mid,
            );
        };
        if rows == 0 {
            return Ok(());
        }
        let (xb, _narrowed) = self.operand_as(x, Elem::Bf16)?;
        let words = |elements: usize| (elements / 8).max(1) as i64;
        let (zero, one, rows_i) = (0i64, 1i64, rows as i64);
        let x_elements = self.shape(x).iter().product::<usize>();
        let (lx, lp, lo) = (words(x_elements), rows as i64, words(rows * h));
        let mut l = stream.launch_builder(gather);
        l.arg(&xb).arg(&xb).arg(&zero).arg(&lx).arg(&one);
        l.arg(perm).arg(perm).arg(&zero).arg(&lp).arg(&one);
        l.arg(out).arg(out).arg(&zero).arg(&lo).arg(&one);
        l.arg(&rows_i);
        // SAFETY: H baked into the kernel; perm's entries are rows of x, whose bf16 copy
        // holds [T, H] (16-byte aligned rows, H a multiple of eight); out holds rows x H bf16.
        unsafe { l.launch(launch_cfg(rows * h / 8)) }.map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The threads of a step's row kernel over `rows` rows of `width` columns of `mid`: one per
/// element, or one per two where the kernel takes bf16 columns in pairs (`bf16_pairs`).
fn row_threads(rows: usize, width: usize, mid: Elem) -> usize {
    match crate::program::bf16_pairs(mid == Elem::Bf16, width) {
        true => rows * width / 2,
        false => rows * width,
    }
}

/// What the combine reads besides the expert rows.
pub(super) struct Combine<'a> {
    pub pos: &'a CudaSlice<i32>,
    pub weights: &'a CudaSlice<f32>,
    pub eid: &'a CudaSlice<i32>,
    /// The output bias, added per slot here (none when it went on the rows).
    pub b_out: Option<&'a CudaSlice<f32>>,
    pub tokens: usize,
    pub k: usize,
    pub h: usize,
    /// The expert rows' element type (bf16 rows of an even width are read in pairs).
    pub mid: Elem,
}

/// y [T, H] f32: per token, the sum over its k slots of weight x (row + output bias).
pub(super) fn combine_rows(
    stream: &Arc<CudaStream>,
    kernels: &ExpertKernels,
    out: &CudaSlice<f32>,
    rows: usize,
    c: &Combine,
) -> Result<CudaSlice<f32>, String> {
    let y = alloc(stream, c.tokens * c.h, Elem::F32)?;
    launch_combine(stream, &kernels.combine, (out, rows), c, &y)?;
    Ok(y)
}

/// y [T, H] as bf16 bits (each sum rounded to nearest even, as narrowing the f32 y would), by
/// the step's `combine_bits` kernel; None where it has none.
pub(super) fn combine_rows_bits(
    stream: &Arc<CudaStream>,
    kernels: &ExpertKernels,
    out: &CudaSlice<f32>,
    rows: usize,
    c: &Combine,
) -> Result<Option<CudaSlice<u16>>, String> {
    let Some(func) = &kernels.combine_bits else {
        return Ok(None);
    };
    // SAFETY: uninitialised; the kernel writes every token's row.
    let y = unsafe { stream.alloc::<u16>((c.tokens * c.h).max(1)) }.map_err(|e| e.to_string())?;
    launch_combine(stream, func, (out, rows), c, &y)?;
    Ok(Some(y))
}

/// The combine kernel `func` over `rows` expert rows `out`, into `y` (f32 or bf16 bits, as
/// the kernel writes).
fn launch_combine<Y: cudarc::driver::DeviceRepr>(
    stream: &Arc<CudaStream>,
    func: &CudaFunction,
    (out, rows): (&CudaSlice<f32>, usize),
    c: &Combine,
    y: &CudaSlice<Y>,
) -> Result<(), String> {
    // Kernels that read a slot's row whether or not it has one (adding 0 for none) read the
    // first: with no rows, a zero row in its place.
    let spare;
    let out = match rows {
        0 => {
            spare = stream
                .alloc_zeros::<f32>(c.h.max(1))
                .map_err(|e| e.to_string())?;
            &spare
        }
        _ => out,
    };
    // Without a bias the kernel reads none: the weights stand in for it (no buffer made and
    // zeroed, which in a captured forward were three graph nodes).
    let (bout, has_bias) = match c.b_out {
        Some(b) => (b, 1i64),
        None => (c.weights, 0i64),
    };
    let len = |v: usize| v.max(1) as i64;
    let (zero, one) = (0i64, 1i64);
    let (lo, ls, lb, ly) = (
        len(rows * c.h),
        len(c.tokens * c.k),
        len(bout.len()),
        len(c.tokens * c.h),
    );
    let mut l = stream.launch_builder(func);
    l.arg(out).arg(out).arg(&zero).arg(&lo).arg(&one);
    l.arg(c.pos).arg(c.pos).arg(&zero).arg(&ls).arg(&one);
    l.arg(c.weights)
        .arg(c.weights)
        .arg(&zero)
        .arg(&ls)
        .arg(&one);
    l.arg(c.eid).arg(c.eid).arg(&zero).arg(&ls).arg(&one);
    l.arg(bout).arg(bout).arg(&zero).arg(&lb).arg(&one);
    l.arg(y).arg(y).arg(&zero).arg(&ly).arg(&one);
    l.arg(&has_bias);
    let threads = c.tokens * c.h / crate::program::row_columns(c.mid == Elem::Bf16, c.h);
    // SAFETY: T, k, H baked into the kernel; the buffers are those sizes (eight columns a
    // thread: each row's and y's start 16-byte aligned, H being a multiple of eight).
    unsafe { l.launch(launch_cfg(threads)) }.map_err(|e| e.to_string())?;
    Ok(())
}

/// One thread per element, in blocks of 256.
pub(super) fn launch_cfg(threads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (threads.div_ceil(256).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One grouped-experts step: its operands, and which experts of the ids are this rank's.
pub(super) struct ExpertsCall {
    pub(super) x: usize,
    pub(super) weights: usize,
    pub(super) ids: usize,
    pub(super) w_in: usize,
    pub(super) w_out: usize,
    pub(super) b_in: Option<usize>,
    pub(super) b_out: Option<usize>,
    pub(super) layout: ExpertLayout,
    /// PPMoE: the first of this rank's experts; slots routed elsewhere are left out (the
    /// all-reduce after adds them). None: every id must be one of the stack's experts.
    pub(super) first_local: Option<usize>,
    pub(super) out: usize,
}

/// An error of instruction `i` of `program`.
pub(super) fn fail_at(program: &Program, i: usize, reason: String) -> RuntimeError {
    let ins = &program.instructions[i];
    RuntimeError::Execute {
        rank: program.rank,
        index: i,
        op: ins.op.name(),
        origin: ins.origin.clone(),
        reason,
    }
}

impl Rank<'_> {
    /// `moe.experts` (see `GpuOp::Experts`).
    pub(super) fn experts(
        &mut self,
        i: usize,
        prefix: &str,
        bf16: bool,
    ) -> Result<(), RuntimeError> {
        let ins = &self.program.instructions[i];
        let program = self.program;
        let fail = |reason: String| fail_at(program, i, reason);
        let Op::MoeExperts { layout, .. } = ins.op else {
            return Err(fail("not moe.experts".into()));
        };
        let arg = |k: usize| ins.inputs.get(k).copied().flatten();
        let need = |k: usize| arg(k).ok_or_else(|| fail(format!("operand {k} is missing")));
        let call = ExpertsCall {
            x: need(0)?,
            weights: need(1)?,
            ids: need(2)?,
            w_in: need(3)?,
            w_out: need(4)?,
            b_in: arg(5),
            b_out: arg(6),
            layout,
            first_local: None,
            out: ins.outputs[0],
        };
        self.run_experts(i, &call, prefix, bf16)
    }

    /// PPMoE's local_slice, expert_ffn and scatter_combine as one step (see
    /// `GpuOp::LocalExperts`), run at the scatter_combine `i`.
    pub(super) fn local_experts(
        &mut self,
        i: usize,
        prefix: &str,
        bf16: bool,
        (slice, ffn): (usize, usize),
        reduce: Option<usize>,
    ) -> Result<(), RuntimeError> {
        let program = self.program;
        let fail = |reason: String| fail_at(program, i, reason);
        let ins = |j: usize| &self.program.instructions[j];
        let (s, f, c) = (ins(slice), ins(ffn), ins(i));
        let (Op::MoeLocalSlice { first_expert, .. }, Op::MoeExpertFfn { layout, .. }) =
            (&s.op, &f.op)
        else {
            return Err(fail(format!(
                "instructions {slice} and {ffn} are not a local_slice and an expert_ffn"
            )));
        };
        let arg =
            |ins: &crate::program::Instruction, k: usize| ins.inputs.get(k).copied().flatten();
        let need = |ins: &crate::program::Instruction, k: usize| {
            arg(ins, k).ok_or_else(|| fail(format!("operand {k} of {} is missing", ins.op.name())))
        };
        let call = ExpertsCall {
            x: need(s, 0)?,
            ids: need(s, 1)?,
            weights: need(c, 2)?,
            w_in: need(f, 2)?,
            w_out: need(f, 3)?,
            b_in: arg(f, 4),
            b_out: arg(f, 5),
            layout: *layout,
            first_local: Some(*first_expert),
            out: c.outputs[0],
        };
        let Some(r) = reduce else {
            return self.run_experts(i, &call, prefix, bf16);
        };
        let reduction = &self.program.instructions[r];
        let (Op::AllReduce { group }, Some(&out)) = (&reduction.op, reduction.outputs.first())
        else {
            return Err(fail(format!(
                "instruction {r} is not an all-reduce with a result"
            )));
        };
        let call = ExpertsCall { out, ..call };
        self.run_experts_reduced(i, &call, prefix, bf16, group)
    }

    /// With `bf16` (both stacks bf16, the kernels generated so), the grouped rows, hidden
    /// activations and expert outputs are bf16: the GEMMs read and write bf16 (fp32
    /// accumulation), which also lets cuBLAS take each projection as one grouped GEMM.
    fn run_experts(
        &mut self,
        i: usize,
        call: &ExpertsCall,
        prefix: &str,
        bf16: bool,
    ) -> Result<(), RuntimeError> {
        let program = self.program;
        let fail = |reason: String| fail_at(program, i, reason);
        // Where every reader of y takes bf16 bits, the device-routed combine writes them.
        let bits = self.bits_combines.contains(&call.out);
        let mut source = self.expert_source(i, call, (prefix, bf16), bits)?;
        let (t, h) = source.tokens_and_hidden();
        if let Some(y) = source.take_bits() {
            self.put_bits(call.out, Arc::new(y), vec![t, h]);
            return Ok(());
        }
        let y = self
            .chunk_experts(i, call, prefix, bf16, &mut source, 0..t)
            .map_err(&fail)?;
        self.put_dev(call.out, y, vec![t, h]);
        Ok(())
    }

    /// Where a step's expert outputs come from: computed already (routed on the device), or
    /// the routing grouped on the device or on the host, for the caller to compute chunk by
    /// chunk. `bits`: a device-routed step combines into bf16 bits where it has that kernel.
    pub(super) fn expert_source(
        &mut self,
        i: usize,
        call: &ExpertsCall,
        (prefix, bf16): (&str, bool),
        bits: bool,
    ) -> Result<ExpertSource, RuntimeError> {
        let program = self.program;
        let fail = |reason: String| fail_at(program, i, reason);
        let h = self.shape(call.x).last().copied().unwrap_or(0);
        match self
            .device_routed_experts(call, prefix, bf16, bits)
            .map_err(&fail)?
        {
            Some((y, t)) => Ok(ExpertSource::Device { y: Some(y), t, h }),
            None => match self.device_group(call, prefix, bf16).map_err(&fail)? {
                Some(g) => Ok(ExpertSource::Grouped(g)),
                None => Ok(ExpertSource::Host(self.routed(i, call)?)),
            },
        }
    }

    /// [T, H] f32: the combined outputs of `tokens` from `source` (a device-routed step's
    /// whole output, once: its caller takes all tokens as one chunk).
    pub(super) fn chunk_experts(
        &mut self,
        i: usize,
        call: &ExpertsCall,
        prefix: &str,
        bf16: bool,
        source: &mut ExpertSource,
        tokens: std::ops::Range<usize>,
    ) -> Result<CudaSlice<f32>, String> {
        match source {
            ExpertSource::Host(r) => self.experts_of_tokens(i, call, prefix, bf16, r, tokens),
            ExpertSource::Grouped(g) => self.device_grouped_experts(call, prefix, g, tokens),
            ExpertSource::Device { y, .. } => match y.take() {
                Some(Combined::F32(y)) => Ok(y),
                Some(Combined::Bits(_)) => Err("a device-routed step's bits taken as f32".into()),
                None => Err("a device-routed step's output taken twice".into()),
            },
        }
    }

    /// The slots grouped by expert (see `Routed`), from the routing on the host.
    pub(super) fn routed(&mut self, i: usize, call: &ExpertsCall) -> Result<Routed, RuntimeError> {
        let program = self.program;
        let fail = |reason: String| fail_at(program, i, reason);
        let (xs, dims) = self
            .expert_dims(call.x, call.w_in, call.w_out, call.layout)
            .map_err(&fail)?;
        let (t, h, e) = (xs[0], xs[1], dims.experts);
        let weights = self.host(call.weights)?.to_f32();
        let experts = self.host(call.ids)?.to_i64();
        self.phase("experts: routing read to the host")
            .map_err(&fail)?;
        let k = weights.len() / t.max(1);
        // Slots grouped by expert: the rows of the grouped matrix. PPMoE: ids are global, the
        // stack holds experts first..first + e; the rest are other ranks' slots.
        let first = call.first_local.unwrap_or(0) as i64;
        let mut expert_of = vec![None; experts.len()];
        let mut eid = vec![0i32; experts.len()];
        for (s, (&wt, &ex)) in weights.iter().zip(&experts).enumerate() {
            let local = ex - first;
            if local < 0 || local as usize >= e {
                if call.first_local.is_none() {
                    return Err(fail(format!("expert id {ex} out of range for {e} experts")));
                }
                continue;
            }
            eid[s] = local as i32;
            if wt != 0.0 {
                expert_of[s] = Some(local as usize);
            }
        }
        let by_expert = SlotsByExpert::sort(&expert_of, e);
        // For every chunk's combine: the weights where the routing left them on the device
        // (else uploaded once), each slot's local expert only where an output bias is added
        // by expert (else one unread word).
        let on_device = self
            .shared_dev(call.weights)
            .filter(|d| d.len() == weights.len());
        let weights = match on_device {
            Some(d) => d,
            None => Arc::new(
                super::graph::upload(&self.stream, &weights).map_err(|e| fail(e.to_string()))?,
            ),
        };
        let eid = match call.b_out {
            Some(_) => upload(&self.stream, &eid),
            None => self.stream.alloc_zeros::<i32>(1).map_err(|e| e.to_string()),
        }
        .map_err(&fail)?;
        self.phase("experts: slots grouped on the host")
            .map_err(&fail)?;
        Ok(Routed {
            tokens: t,
            h,
            k,
            dims,
            weights,
            eid,
            by_expert,
        })
    }

    /// [T, H] f32: the combined expert outputs of `tokens` (a range of the T tokens; the other
    /// tokens' rows are 0), on the rank's stream.
    pub(super) fn experts_of_tokens(
        &mut self,
        i: usize,
        call: &ExpertsCall,
        prefix: &str,
        bf16: bool,
        r: &Routed,
        tokens: std::ops::Range<usize>,
    ) -> Result<CudaSlice<f32>, String> {
        let (t, h, k) = (r.tokens, r.h, r.k);
        let groups = r.by_expert.groups(&tokens, k);
        let order = match padded_rows(&groups) {
            Some(m) => RowOrder::padded(&groups, t * k, k, 0, m),
            None => RowOrder::of(&groups, t * k, k, 0),
        };
        let kernels = self.expert_kernels(prefix, false)?;
        let stream = self.stream.clone();
        let dev = |v: &[i32]| upload(&stream, v);
        let (d_perm, d_pos) = (dev(&order.perm)?, dev(&order.pos)?);
        let ffn = self
            .ffn_operands(call, r.dims, bf16, false)
            .map_err(|e| format!("instruction {i}: {e}"))?;
        let rows = order.perm.len();
        self.phase("experts: rows laid out, uploaded")?;
        let xg = alloc(&stream, rows * h, ffn.mid)?;
        self.gather_step_rows(&kernels, call.x, &d_perm, &xg, (rows, h), ffn.mid)?;
        self.phase("experts: gather")?;
        let out = self.ffn_blocks(&kernels, &xg, &order.blocks, &ffn)?;
        let comb = Combine {
            pos: &d_pos,
            weights: &r.weights,
            eid: &r.eid,
            b_out: ffn.b_out.map(|b| self.dev_ref(b)).transpose()?,
            tokens: t,
            k,
            h,
            mid: ffn.mid,
        };
        let y = combine_rows(&stream, &kernels, &out, rows, &comb)?;
        self.phase("experts: combine")?;
        Ok(y)
    }

    /// A float buffer already on the device.
    pub(super) fn dev_ref(&self, id: usize) -> Result<&CudaSlice<f32>, String> {
        self.slots[id]
            .as_ref()
            .and_then(|s| s.dev.as_deref())
            .ok_or_else(|| {
                format!(
                    "buffer '{}' is not on the device",
                    self.program.buffers[id].name
                )
            })
    }

    /// x's [T, H] and the stacks' sizes, or an error naming them.
    pub(super) fn expert_dims(
        &self,
        x: usize,
        w_in: usize,
        w_out: usize,
        layout: ExpertLayout,
    ) -> Result<(Vec<usize>, ExpertDims), String> {
        let (xs, wis, wos) = (self.shape(x), self.shape(w_in), self.shape(w_out));
        match (xs.len(), layout.dims(&wis, &wos)) {
            (2, Some(d)) => Ok((xs, d)),
            _ => Err(format!(
                "expert shapes x {xs:?}, w_in {wis:?}, w_out {wos:?} are not [T,H], {}",
                layout.describe()
            )),
        }
    }

    /// The step's kernels from the PTX (`bias_out` too where the step adds the output bias on
    /// the expert's side).
    pub(super) fn expert_kernels(
        &self,
        prefix: &str,
        bias_out: bool,
    ) -> Result<ExpertKernels, String> {
        let func = |suffix: &str| {
            self.functions
                .get(&format!("{prefix}_{suffix}"))
                .cloned()
                .ok_or_else(|| format!("kernel {prefix}_{suffix} is not in the PTX"))
        };
        let gather_bf16 = crate::program::GATHER_BF16_SUFFIX;
        Ok(ExpertKernels {
            gather: func("gather")?,
            gather_bf16: self
                .functions
                .get(&format!("{prefix}_{gather_bf16}"))
                .cloned(),
            act: func("act")?,
            combine: func("combine")?,
            combine_bits: self
                .functions
                .get(&format!("{prefix}_{}", crate::program::COMBINE_BITS_SUFFIX))
                .cloned(),
            bias_out: if bias_out {
                Some(func("bias_out")?)
            } else {
                None
            },
        })
    }

    /// The FFN's weights and biases on the device; `bias_on_rows`: the output bias is added to
    /// the expert rows (all-to-all) rather than in the combine.
    pub(super) fn ffn_operands(
        &mut self,
        call: &ExpertsCall,
        dims: ExpertDims,
        bf16: bool,
        bias_on_rows: bool,
    ) -> Result<FfnOperands, String> {
        let err = |e: RuntimeError| e.to_string();
        for b in [call.b_in, call.b_out].into_iter().flatten() {
            self.device(b).map_err(err)?;
        }
        let (w_in, w_out) = (
            self.gemm_operand(call.w_in).map_err(err)?,
            self.gemm_operand(call.w_out).map_err(err)?,
        );
        Ok(FfnOperands {
            w_in,
            w_out,
            b_in: call.b_in,
            b_out: call.b_out,
            bias_on_rows,
            h: dims.hidden,
            n: dims.n,
            f: dims.ffn,
            w_transposed: call.layout == ExpertLayout::Linear,
            mid: if bf16 { Elem::Bf16 } else { Elem::F32 },
        })
    }

    /// The FFN over `src` ([rows, H] of `mid` elements in `blocks`, one expert's rows each):
    /// the first projection, the activation (with the input bias), the second projection
    /// (with the output bias where it goes on the rows). Returns [rows, H] of `mid`.
    pub(super) fn ffn_blocks(
        &self,
        kernels: &ExpertKernels,
        src: &CudaSlice<f32>,
        blocks: &[(usize, usize)],
        ffn: &FfnOperands,
    ) -> Result<CudaSlice<f32>, String> {
        let stream = self.stream.clone();
        let rows: usize = blocks.iter().map(|b| b.1).sum();
        let h = ffn.h;
        let (hid, act, out) = (
            alloc(&stream, rows * ffn.n, ffn.mid)?,
            alloc(&stream, rows * ffn.f, ffn.mid)?,
            alloc(&stream, rows * h, ffn.mid)?,
        );
        if rows == 0 {
            return Ok(out);
        }
        let rexp: Vec<i32> = blocks
            .iter()
            .flat_map(|&(e, r)| std::iter::repeat_n(e as i32, r))
            .collect();
        let d_rexp = upload(&stream, &rexp)?;
        self.phase("experts: row experts uploaded")?;
        self.project(src, ffn.w_in, &hid, (h, ffn.n), blocks, ffn)?;
        self.phase("experts: first projection")?;
        self.launch_act(kernels, &hid, &act, &d_rexp, rows, ffn)?;
        self.phase("experts: activation")?;
        self.project(&act, ffn.w_out, &out, (ffn.f, h), blocks, ffn)?;
        self.phase("experts: second projection")?;
        if let (true, Some(b), Some(k)) = (ffn.bias_on_rows, ffn.b_out, &kernels.bias_out) {
            let b = self.dev_ref(b)?;
            let (zero, one, rows_i) = (0i64, 1i64, rows as i64);
            let len = |v: usize| v.max(1) as i64;
            let lr = len(rows);
            let (lo, lb) = (len(rows * h), len(b.len()));
            let mut l = stream.launch_builder(k);
            l.arg(&out).arg(&out).arg(&zero).arg(&lo).arg(&one);
            l.arg(b).arg(b).arg(&zero).arg(&lb).arg(&one);
            l.arg(&d_rexp).arg(&d_rexp).arg(&zero).arg(&lr).arg(&one);
            l.arg(&rows_i);
            // SAFETY: as above (H baked in; out holds rows x H).
            unsafe { l.launch(launch_cfg(rows * h)) }.map_err(|e| e.to_string())?;
        }
        Ok(out)
    }

    /// The activation kernel over `rows` rows of `hid` into `act`, each row's input bias
    /// that of its expert `rexp[row]`.
    pub(super) fn launch_act(
        &self,
        kernels: &ExpertKernels,
        hid: &CudaSlice<f32>,
        act: &CudaSlice<f32>,
        rexp: &CudaSlice<i32>,
        rows: usize,
        ffn: &FfnOperands,
    ) -> Result<(), String> {
        // Without a bias the kernel reads none: act stands in for it (as in `combine_rows`).
        let (bias, has_bias) = match ffn.b_in {
            Some(b) => (self.dev_ref(b)?, 1i64),
            None => (act, 0i64),
        };
        let (zero, one, rows_i) = (0i64, 1i64, rows as i64);
        let len = |v: usize| v.max(1) as i64;
        let (lh, lb, lr, la) = (
            len(rows * ffn.n),
            len(bias.len()),
            len(rows),
            len(rows * ffn.f),
        );
        let mut l = self.stream.launch_builder(&kernels.act);
        l.arg(hid).arg(hid).arg(&zero).arg(&lh).arg(&one);
        l.arg(bias).arg(bias).arg(&zero).arg(&lb).arg(&one);
        l.arg(rexp).arg(rexp).arg(&zero).arg(&lr).arg(&one);
        l.arg(act).arg(act).arg(&zero).arg(&la).arg(&one);
        l.arg(&rows_i).arg(&has_bias);
        // SAFETY: sizes as the kernel was generated for (F, N) and as allocated here (rows).
        let act_threads = rows * ffn.f / crate::program::row_columns(ffn.mid == Elem::Bf16, ffn.f);
        unsafe { l.launch(launch_cfg(act_threads)) }.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// [slots, F] of `mid`: the activation of `hid` ([slots, N], rows indexed by slot), each
    /// slot's input bias that of its local expert `eid[slot]` (the device-routed path).
    pub(super) fn activate(
        &self,
        kernels: &ExpertKernels,
        hid: &CudaSlice<f32>,
        eid: &CudaSlice<i32>,
        slots: usize,
        ffn: &FfnOperands,
    ) -> Result<CudaSlice<f32>, String> {
        let act = alloc(&self.stream, slots * ffn.f, ffn.mid)?;
        self.launch_act(kernels, hid, &act, eid, slots, ffn)?;
        Ok(act)
    }

    /// One projection of every block: one grouped GEMM for all experts, or one GEMM per
    /// expert, whichever is faster for the shape (see `grouped_choice`).
    fn project(
        &self,
        src: &CudaSlice<f32>,
        w: (u64, Elem),
        dst: &CudaSlice<f32>,
        (din, dout): (usize, usize),
        blocks: &[(usize, usize)],
        ffn: &FfnOperands,
    ) -> Result<(), String> {
        let stream = &self.stream;
        let rows: usize = blocks.iter().map(|b| b.1).sum();
        // bf16 rows are already the GEMM's type; f32 ones are narrowed if its is bf16.
        let (sp, _narrowed) = if ffn.mid == Elem::Bf16 {
            (super::dptr(src, stream), None)
        } else {
            self.activation(src, rows * din, w.1)?
        };
        let groups = expert_groups(
            blocks,
            sp,
            w.0,
            super::dptr(dst, stream),
            (din, dout),
            w.1,
            ffn.mid,
        );
        let g = Grouped {
            groups: &groups,
            din,
            dout,
            w_transposed: ffn.w_transposed,
            c_elem: ffn.mid,
        };
        // SAFETY: each group's blocks lie inside the buffers, which were allocated for these
        // row counts.
        unsafe { self.grouped_gemm(w.1, &g) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_sort_by_expert_in_slot_order_and_cut_by_tokens() {
        // k = 2, 4 tokens: slots 0..8; slot 5 left out (weight 0 or another rank's expert).
        let expert_of = [
            Some(1),
            Some(0),
            Some(1),
            None,
            Some(0),
            None,
            Some(1),
            Some(1),
        ];
        let by = SlotsByExpert::sort(&expert_of, 3);
        let all = by.groups(&(0..4), 2);
        assert_eq!(all, vec![&[1, 4][..], &[0, 2, 6, 7][..], &[][..]]);
        // Tokens 1..3 are slots 2..6.
        let some = by.groups(&(1..3), 2);
        assert_eq!(some, vec![&[4][..], &[2][..], &[][..]]);
    }

    #[test]
    fn padded_rows_lay_each_expert_in_an_equal_block_its_slots_first() {
        // Slots t * k + j of 3 tokens, k = 2: expert 0 has slots 0 and 3, expert 1 slot 1.
        let groups = vec![vec![0, 3], vec![1]];
        let o = RowOrder::padded(&groups, 6, 2, 10, 4);
        assert_eq!(o.blocks, vec![(0, 4), (1, 4)]);
        assert_eq!(o.perm, vec![10, 11, 10, 10, 10, 10, 10, 10]);
        assert_eq!(o.pos, vec![0, 4, -1, 1, -1, -1]);
    }

    #[test]
    fn padding_is_taken_only_where_it_adds_at_most_30_percent() {
        let even = [16, 16, 15, 16];
        assert_eq!(padded_block_by(&even, None), Some(16));
        let skewed = [36, 16, 16, 16];
        assert_eq!(padded_block_by(&skewed, None), None);
        assert_eq!(padded_block_by(&skewed, Some("1")), Some(40));
        assert_eq!(padded_block_by(&even, Some("0")), None);
        assert_eq!(padded_block_by(&[2], None), None);
        assert_eq!(padded_block_by(&[0, 0], Some("1")), None);
    }
}
