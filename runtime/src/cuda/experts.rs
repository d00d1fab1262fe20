//! `moe.experts` on the GPU. The routing is small (T x k), so the grouping of slots by expert is
//! done on the host; the work is on the device: a gather of the routed rows grouped by expert,
//! one cuBLAS GEMM per expert for each projection, the activation kernel between them, and a
//! combine kernel that sums each token's k weighted expert outputs (a gather, so no atomics and
//! the same order every run).

use super::blas::{self, Elem, Grouped};
use super::Rank;
use crate::error::RuntimeError;
use crate::program::{ExpertLayout, Op, Program};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// The per-expert blocks of one projection: rows of `src` grouped by expert (in `by_expert`
/// order) times that expert's matrix of the stack `w` ([E, din, dout]), into `dst` (of
/// `dst_elem`).
fn expert_groups(
    by_expert: &[Vec<usize>],
    src: u64,
    w: u64,
    dst: u64,
    (din, dout): (usize, usize),
    elem: Elem,
    dst_elem: Elem,
) -> Vec<(u64, u64, u64, usize)> {
    let mut groups = Vec::new();
    let mut off = 0usize;
    for (ex, slots) in by_expert.iter().enumerate() {
        let r = slots.len();
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

fn launch_cfg(threads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (threads.div_ceil(256).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One grouped-experts step: its operands, and which experts of the ids are this rank's.
struct ExpertsCall {
    x: usize,
    weights: usize,
    ids: usize,
    w_in: usize,
    w_out: usize,
    b_in: Option<usize>,
    b_out: Option<usize>,
    layout: ExpertLayout,
    /// PPMoE: the first of this rank's experts; slots routed elsewhere are left out (the
    /// all-reduce after adds them). None: every id must be one of the stack's experts.
    first_local: Option<usize>,
    out: usize,
}

/// An error of instruction `i` of `program`.
fn fail_at(program: &Program, i: usize, reason: String) -> RuntimeError {
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
        self.run_experts(i, &call, prefix, bf16)
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
        let (x, w, ids, w_in, w_out) = (call.x, call.weights, call.ids, call.w_in, call.w_out);
        let (b_in, b_out, layout) = (call.b_in, call.b_out, call.layout);
        let (xs, wis, wos) = (self.shape(x), self.shape(w_in), self.shape(w_out));
        let (&[t, h], Some(dims)) = (xs.as_slice(), layout.dims(&wis, &wos)) else {
            return Err(fail(format!(
                "expert shapes x {xs:?}, w_in {wis:?}, w_out {wos:?} are not [T,H], {}",
                layout.describe()
            )));
        };
        let (e, n, f) = (dims.experts, dims.n, dims.ffn);
        let w_transposed = layout == ExpertLayout::Linear;
        let weights = self.host(w)?.to_f32();
        let experts = self.host(ids)?.to_i64();
        let k = weights.len() / t.max(1);
        // Slots grouped by expert: the rows of the grouped matrix.
        // PPMoE: ids are global, the stack holds experts first..first + e; the rest are
        // other ranks' slots.
        let first = call.first_local.unwrap_or(0) as i64;
        let mut by_expert: Vec<Vec<usize>> = vec![Vec::new(); e];
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
                by_expert[local as usize].push(s);
            }
        }
        let rows: usize = by_expert.iter().map(Vec::len).sum();
        let mut perm = Vec::with_capacity(rows);
        let mut rexp = Vec::with_capacity(rows);
        let mut pos = vec![-1i32; t * k];
        for (ex, slots) in by_expert.iter().enumerate() {
            for &s in slots {
                pos[s] = perm.len() as i32;
                perm.push((s / k) as i32);
                rexp.push(ex as i32);
            }
        }
        let stream = self.stream.clone();
        let dev = |v: &[i32]| {
            stream
                .clone_htod(if v.is_empty() { &[0][..] } else { v })
                .map_err(|e| fail(e.to_string()))
        };
        let (d_perm, d_rexp, d_pos, d_eid) = (dev(&perm)?, dev(&rexp)?, dev(&pos)?, dev(&eid)?);
        let d_w = stream
            .clone_htod(&weights)
            .map_err(|e| fail(e.to_string()))?;
        let dummy: CudaSlice<f32> = stream.alloc_zeros(1).map_err(|e| fail(e.to_string()))?;
        for b in [Some(x), b_in, b_out].into_iter().flatten() {
            self.device(b)?;
        }
        // The expert stacks: bf16 where the weights are, f32 otherwise.
        let (w_in_op, w_out_op) = (self.gemm_operand(w_in)?, self.gemm_operand(w_out)?);
        fn get<'s>(s: &'s Rank<'_>, b: usize) -> &'s CudaSlice<f32> {
            s.slots[b]
                .as_ref()
                .and_then(|sl| sl.dev.as_ref())
                .expect("uploaded above")
        }
        let func = |s: &Self, suffix: &str| {
            s.functions
                .get(&format!("{prefix}_{suffix}"))
                .cloned()
                .ok_or_else(|| fail(format!("kernel {prefix}_{suffix} is not in the PTX")))
        };
        let (g_fn, a_fn, c_fn) = (
            func(self, "gather")?,
            func(self, "act")?,
            func(self, "combine")?,
        );
        // Not zeroed: each is written whole before it is read (the gather and activation
        // kernels cover every row, the GEMMs every block of rows, the combine every token), and
        // zeroing the hidden activations alone would be rows x N x 4 bytes per layer. The
        // buffers between kernels and GEMMs hold `mid` elements (bf16: two to an f32 slot).
        let mid = if bf16 { Elem::Bf16 } else { Elem::F32 };
        let alloc = |len: usize, elem: Elem| {
            let slots = (len * elem.bytes() as usize).div_ceil(4);
            // SAFETY: uninitialised device memory, written whole before any read (above).
            unsafe { stream.alloc::<f32>(slots.max(1)) }.map_err(|e| fail(e.to_string()))
        };
        let (xg, hid, act, out, y) = (
            alloc(rows * h, mid)?,
            alloc(rows * n, mid)?,
            alloc(rows * f, mid)?,
            alloc(rows * h, mid)?,
            alloc(t * h, Elem::F32)?,
        );
        let (zero, one) = (0i64, 1i64);
        let len = |v: usize| v.max(1) as i64;
        if rows > 0 {
            let (dx, rows_i) = (get(self, x), rows as i64);
            let (lx, lp, lo) = (len(t * h), len(rows), len(rows * h));
            let mut l = stream.launch_builder(&g_fn);
            l.arg(dx).arg(dx).arg(&zero).arg(&lx).arg(&one);
            l.arg(&d_perm).arg(&d_perm).arg(&zero).arg(&lp).arg(&one);
            l.arg(&xg).arg(&xg).arg(&zero).arg(&lo).arg(&one);
            l.arg(&rows_i);
            // SAFETY: sizes as the kernel was generated for (H) and as allocated here (rows).
            unsafe { l.launch(launch_cfg(rows * h)) }.map_err(|e| fail(e.to_string()))?;
            // One grouped GEMM for all experts; the per-expert loop where cuBLAS lacks it.
            // PPMOE_GROUPED_GEMM=0 forces the loop (to compare the two).
            let grouped = blas::has_grouped_gemm(&self.blas)
                && std::env::var("PPMOE_GROUPED_GEMM").map_or(true, |v| v != "0");
            let project = |s: &Self,
                           src: &CudaSlice<f32>,
                           w: (u64, Elem),
                           dst: &CudaSlice<f32>,
                           din: usize,
                           dout: usize|
             -> Result<(), String> {
                // bf16 rows are already the GEMM's type; f32 ones are narrowed if its is bf16.
                let (sp, _narrowed) = if bf16 {
                    (super::dptr(src, &stream), None)
                } else {
                    s.activation(src, rows * din, w.1)?
                };
                let groups = expert_groups(
                    &by_expert,
                    sp,
                    w.0,
                    super::dptr(dst, &stream),
                    (din, dout),
                    w.1,
                    mid,
                );
                let g = Grouped {
                    groups: &groups,
                    din,
                    dout,
                    w_transposed,
                    c_elem: mid,
                };
                // SAFETY: each group's blocks lie inside the buffers, which were allocated for these row counts.
                unsafe {
                    let key = (w.1, groups.len(), din, dout);
                    if grouped && !s.grouped_refused.borrow().contains(&key) {
                        if blas::gemm_grouped(&s.blas, &stream, w.1, &g)? {
                            return Ok(());
                        }
                        tracing::info!(
                            "cuBLAS does not take a grouped GEMM of {:?} inputs with a {:?} result ({} groups, {din} x {dout}): one GEMM per group instead",
                            w.1,
                            mid,
                            groups.len()
                        );
                        s.grouped_refused.borrow_mut().insert(key);
                    }
                    blas::gemm_per_group(&s.blas, w.1, &g)
                }
            };
            project(self, &xg, w_in_op, &hid, h, n).map_err(&fail)?;
            let (bias, has_bias) = match b_in {
                Some(b) => (get(self, b), 1i64),
                None => (&dummy, 0i64),
            };
            let (lh, lb, lr, la) = (len(rows * n), len(bias.len()), len(rows), len(rows * f));
            let mut l = stream.launch_builder(&a_fn);
            l.arg(&hid).arg(&hid).arg(&zero).arg(&lh).arg(&one);
            l.arg(bias).arg(bias).arg(&zero).arg(&lb).arg(&one);
            l.arg(&d_rexp).arg(&d_rexp).arg(&zero).arg(&lr).arg(&one);
            l.arg(&act).arg(&act).arg(&zero).arg(&la).arg(&one);
            l.arg(&rows_i).arg(&has_bias);
            // SAFETY: as above.
            unsafe { l.launch(launch_cfg(rows * f)) }.map_err(|e| fail(e.to_string()))?;
            project(self, &act, w_out_op, &out, f, h).map_err(&fail)?;
        }
        let (bout, has_bias) = match b_out {
            Some(b) => (get(self, b), 1i64),
            None => (&dummy, 0i64),
        };
        let (lo, ls, lb, ly) = (len(rows * h), len(t * k), len(bout.len()), len(t * h));
        let mut l = stream.launch_builder(&c_fn);
        l.arg(&out).arg(&out).arg(&zero).arg(&lo).arg(&one);
        l.arg(&d_pos).arg(&d_pos).arg(&zero).arg(&ls).arg(&one);
        l.arg(&d_w).arg(&d_w).arg(&zero).arg(&ls).arg(&one);
        l.arg(&d_eid).arg(&d_eid).arg(&zero).arg(&ls).arg(&one);
        l.arg(bout).arg(bout).arg(&zero).arg(&lb).arg(&one);
        l.arg(&y).arg(&y).arg(&zero).arg(&ly).arg(&one);
        l.arg(&has_bias);
        // SAFETY: as above (T, k, H baked into the kernel; the buffers are those sizes).
        unsafe { l.launch(launch_cfg(t * h)) }.map_err(|e| fail(e.to_string()))?;
        self.put_dev(call.out, y, vec![t, h]);
        Ok(())
    }
}
