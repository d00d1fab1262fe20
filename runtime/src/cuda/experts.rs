//! `moe.experts` on the GPU. The routing is small (T x k), so the grouping of slots by expert is
//! done on the host; the work is on the device: a gather of the routed rows grouped by expert,
//! one cuBLAS GEMM per expert for each projection, the activation kernel between them, and a
//! combine kernel that sums each token's k weighted expert outputs (a gather, so no atomics and
//! the same order every run).

use super::Rank;
use crate::error::RuntimeError;
use crate::program::Op;
use cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

/// C [m, n] = A [m, k] · B [k, n], row-major, on views into larger buffers.
fn gemm_rows<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(blas: &cudarc::cublas::CudaBlas, a: &A, b: &B, c: &mut C, m: usize, k: usize, n: usize) -> Result<(), String> {
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: m as i32,
        k: k as i32,
        alpha: 1.0f32,
        lda: n as i32,
        ldb: k as i32,
        beta: 0.0f32,
        ldc: n as i32,
    };
    // SAFETY: the views were cut to exactly these sizes by the caller.
    unsafe { blas.gemm(cfg, b, a, c) }.map_err(|e| format!("cuBLAS sgemm: {e}"))
}

/// One GEMM per expert on its block of rows: dst[rows of e] = src[rows of e] · w[e], where
/// w holds E matrices [din, dout] and the rows are grouped by expert in `by_expert` order.
fn per_expert_gemms(blas: &cudarc::cublas::CudaBlas, by_expert: &[Vec<usize>], src: &CudaSlice<f32>, w: &CudaSlice<f32>, dst: &mut CudaSlice<f32>, din: usize, dout: usize) -> Result<(), String> {
    let mut off = 0;
    for (ex, slots) in by_expert.iter().enumerate() {
        let r = slots.len();
        if r == 0 {
            continue;
        }
        let we = w.slice(ex * din * dout..(ex + 1) * din * dout);
        let a = src.slice(off * din..(off + r) * din);
        let mut c = dst.slice_mut(off * dout..(off + r) * dout);
        gemm_rows(blas, &a, &we, &mut c, r, din, dout)?;
        off += r;
    }
    Ok(())
}

/// The same products as `per_expert_gemms` in one cuBLAS call (cublasSgemmGroupedBatched, one
/// group per expert with rows): what a grouped GEMM is for, a launch for all the experts.
/// Whether cuBLAS has grouped GEMMs (12.5 and later): older libraries lack the symbol, and a
/// missing symbol would abort the process, so it is asked first.
fn has_grouped_gemm(blas: &cudarc::cublas::CudaBlas) -> bool {
    let mut v: std::ffi::c_int = 0;
    // SAFETY: a version query on a live handle.
    let s = unsafe { cudarc::cublas::sys::cublasGetVersion_v2(*blas.handle(), &mut v) };
    s == cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && v >= 120500
}

fn grouped_gemms(blas: &cudarc::cublas::CudaBlas, stream: &std::sync::Arc<cudarc::driver::CudaStream>, by_expert: &[Vec<usize>], src: &CudaSlice<f32>, w: &CudaSlice<f32>, dst: &mut CudaSlice<f32>, din: usize, dout: usize) -> Result<(), String> {
    use cudarc::cublas::sys;
    let mut groups = Vec::new();
    let mut off = 0usize;
    for (ex, slots) in by_expert.iter().enumerate() {
        if !slots.is_empty() {
            groups.push((ex, off, slots.len()));
            off += slots.len();
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    let g = groups.len();
    let (src_p, _s) = src.device_ptr(stream);
    let (w_p, _w) = w.device_ptr(stream);
    let (dst_p, _d) = dst.device_ptr_mut(stream);
    // Column-major view of row-major C = A · W: C^T = W^T · A^T, so cuBLAS's A is the expert's W.
    let f = std::mem::size_of::<f32>() as u64;
    let a_ptrs: Vec<u64> = groups.iter().map(|&(e, _, _)| w_p + (e * din * dout) as u64 * f).collect();
    let b_ptrs: Vec<u64> = groups.iter().map(|&(_, o, _)| src_p + (o * din) as u64 * f).collect();
    let c_ptrs: Vec<u64> = groups.iter().map(|&(_, o, _)| dst_p + (o * dout) as u64 * f).collect();
    let upload = |v: &[u64]| stream.clone_htod(v).map_err(|e| e.to_string());
    let (da, db, dc) = (upload(&a_ptrs)?, upload(&b_ptrs)?, upload(&c_ptrs)?);
    let (pa, _ga) = da.device_ptr(stream);
    let (pb, _gb) = db.device_ptr(stream);
    let (pc, _gc) = dc.device_ptr(stream);
    let ops = vec![sys::cublasOperation_t::CUBLAS_OP_N; g];
    let m = vec![dout as i32; g];
    let n: Vec<i32> = groups.iter().map(|&(_, _, r)| r as i32).collect();
    let k = vec![din as i32; g];
    let (alpha, beta) = (vec![1.0f32; g], vec![0.0f32; g]);
    let (lda, ldb, ldc) = (vec![dout as i32; g], vec![din as i32; g], vec![dout as i32; g]);
    let sizes = vec![1i32; g];
    // SAFETY: every pointer addresses a block of the right size inside its buffer (grouped above
    // from the same row counts the buffers were allocated with); the arrays live past the call.
    let status = unsafe {
        sys::cublasSgemmGroupedBatched(
            *blas.handle(),
            ops.as_ptr(),
            ops.as_ptr(),
            m.as_ptr(),
            n.as_ptr(),
            k.as_ptr(),
            alpha.as_ptr(),
            pa as *const *const f32,
            lda.as_ptr(),
            pb as *const *const f32,
            ldb.as_ptr(),
            beta.as_ptr(),
            pc as *const *mut f32,
            ldc.as_ptr(),
            g as i32,
            sizes.as_ptr(),
        )
    };
    if status != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Err(format!("cublasSgemmGroupedBatched: {status:?}"));
    }
    Ok(())
}

fn launch_cfg(threads: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (threads.div_ceil(256).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

impl Rank<'_> {
    pub(super) fn experts(&mut self, i: usize, prefix: &str) -> Result<(), RuntimeError> {
        let ins = &self.program.instructions[i];
        let fail = |reason: String| RuntimeError::Execute { rank: self.program.rank, index: i, op: ins.op.name(), origin: ins.origin.clone(), reason };
        let Op::MoeExperts { .. } = ins.op else { return Err(fail("not moe.experts".into())) };
        let arg = |k: usize| ins.inputs.get(k).copied().flatten();
        let need = |k: usize| arg(k).ok_or_else(|| fail(format!("operand {k} is missing")));
        let (x, w, ids, w_in, w_out) = (need(0)?, need(1)?, need(2)?, need(3)?, need(4)?);
        let (b_in, b_out) = (arg(5), arg(6));
        let (xs, wis, wos) = (self.shape(x), self.shape(w_in), self.shape(w_out));
        let (&[t, h], &[e, _, n], &[_, f, _]) = (xs.as_slice(), wis.as_slice(), wos.as_slice()) else {
            return Err(fail(format!("moe.experts shapes x {xs:?}, w_in {wis:?}, w_out {wos:?} are not [T,H], [E,H,N], [E,F,H]")));
        };
        let weights = self.host(w)?.to_f32();
        let experts = self.host(ids)?.to_i64();
        let k = weights.len() / t.max(1);
        // Slots grouped by expert: the rows of the grouped matrix.
        let mut by_expert: Vec<Vec<usize>> = vec![Vec::new(); e];
        for (s, (&wt, &ex)) in weights.iter().zip(&experts).enumerate() {
            if ex < 0 || ex as usize >= e {
                return Err(fail(format!("expert id {ex} out of range for {e} experts")));
            }
            if wt != 0.0 {
                by_expert[ex as usize].push(s);
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
        let eid: Vec<i32> = experts.iter().map(|&v| v as i32).collect();
        let stream = self.stream.clone();
        let dev = |v: &[i32]| stream.clone_htod(if v.is_empty() { &[0][..] } else { v }).map_err(|e| fail(e.to_string()));
        let (d_perm, d_rexp, d_pos, d_eid) = (dev(&perm)?, dev(&rexp)?, dev(&pos)?, dev(&eid)?);
        let d_w = stream.clone_htod(&weights).map_err(|e| fail(e.to_string()))?;
        let dummy: CudaSlice<f32> = stream.alloc_zeros(1).map_err(|e| fail(e.to_string()))?;
        for b in [Some(x), Some(w_in), Some(w_out), b_in, b_out].into_iter().flatten() {
            self.device(b)?;
        }
        fn get<'s>(s: &'s Rank<'_>, b: usize) -> &'s CudaSlice<f32> {
            s.slots[b].as_ref().and_then(|sl| sl.dev.as_ref()).expect("uploaded above")
        }
        let func = |s: &Self, suffix: &str| s.functions.get(&format!("{prefix}_{suffix}")).cloned().ok_or_else(|| fail(format!("kernel {prefix}_{suffix} is not in the PTX")));
        let (g_fn, a_fn, c_fn) = (func(self, "gather")?, func(self, "act")?, func(self, "combine")?);
        let alloc = |len: usize| stream.alloc_zeros::<f32>(len.max(1)).map_err(|e| fail(e.to_string()));
        let (xg, mut hid, act, mut out, y) = (alloc(rows * h)?, alloc(rows * n)?, alloc(rows * f)?, alloc(rows * h)?, alloc(t * h)?);
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
            let grouped = has_grouped_gemm(&self.blas) && std::env::var("PPMOE_GROUPED_GEMM").map_or(true, |v| v != "0");
            if grouped {
                grouped_gemms(&self.blas, &stream, &by_expert, &xg, get(self, w_in), &mut hid, h, n).map_err(&fail)?;
            } else {
                per_expert_gemms(&self.blas, &by_expert, &xg, get(self, w_in), &mut hid, h, n).map_err(&fail)?;
            }
            let (bias, has_bias) = match b_in { Some(b) => (get(self, b), 1i64), None => (&dummy, 0i64) };
            let (lh, lb, lr, la) = (len(rows * n), len(bias.len()), len(rows), len(rows * f));
            let mut l = stream.launch_builder(&a_fn);
            l.arg(&hid).arg(&hid).arg(&zero).arg(&lh).arg(&one);
            l.arg(bias).arg(bias).arg(&zero).arg(&lb).arg(&one);
            l.arg(&d_rexp).arg(&d_rexp).arg(&zero).arg(&lr).arg(&one);
            l.arg(&act).arg(&act).arg(&zero).arg(&la).arg(&one);
            l.arg(&rows_i).arg(&has_bias);
            // SAFETY: as above.
            unsafe { l.launch(launch_cfg(rows * f)) }.map_err(|e| fail(e.to_string()))?;
            if grouped {
                grouped_gemms(&self.blas, &stream, &by_expert, &act, get(self, w_out), &mut out, f, h).map_err(&fail)?;
            } else {
                per_expert_gemms(&self.blas, &by_expert, &act, get(self, w_out), &mut out, f, h).map_err(&fail)?;
            }
        }
        let (bout, has_bias) = match b_out { Some(b) => (get(self, b), 1i64), None => (&dummy, 0i64) };
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
        self.put_dev(ins.outputs[0], y, vec![t, h]);
        Ok(())
    }
}
