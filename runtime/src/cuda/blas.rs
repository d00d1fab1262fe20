//! The cuBLAS calls, on raw device pointers, for both element types the GEMM operands come in:
//! f32 (exact SGEMM semantics: CUBLAS_COMPUTE_32F) and bf16 (tensor cores, fp32 accumulation
//! and an f32 result). Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ, so cuBLAS gets B first.

use cudarc::cublas::sys::{
    self, cublasComputeType_t, cublasOperation_t, cublasStatus_t, cudaDataType,
};
use cudarc::cublas::CudaBlas;
use cudarc::driver::CudaStream;
use std::ffi::c_void;
use std::sync::Arc;

/// The element type of a GEMM's operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    Bf16,
}

impl Elem {
    fn cuda(self) -> cudaDataType {
        match self {
            Elem::F32 => cudaDataType::CUDA_R_32F,
            Elem::Bf16 => cudaDataType::CUDA_R_16BF,
        }
    }

    pub fn bytes(self) -> u64 {
        match self {
            Elem::F32 => 4,
            Elem::Bf16 => 2,
        }
    }
}

/// The handle's workspace, 32 MiB as cuBLAS advises for Hopper, allocated here once: a GEMM
/// captured in a CUDA graph cannot allocate one. The buffer must outlive the handle's use.
pub fn set_workspace(
    blas: &CudaBlas,
    stream: &Arc<CudaStream>,
) -> Result<cudarc::driver::CudaSlice<u8>, String> {
    const BYTES: usize = 32 << 20;
    let ws = stream
        .alloc_zeros::<u8>(BYTES)
        .map_err(|e| format!("cuBLAS workspace: {e}"))?;
    let p = super::dptr(&ws, stream);
    // SAFETY: a live handle and a device buffer of BYTES bytes kept by the caller.
    check("cublasSetWorkspace", unsafe {
        sys::cublasSetWorkspace_v2(*blas.handle(), p as *mut c_void, BYTES)
    })?;
    Ok(ws)
}

const COMPUTE: cublasComputeType_t = cublasComputeType_t::CUBLAS_COMPUTE_32F;

fn check(what: &str, s: cublasStatus_t) -> Result<(), String> {
    if s == cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what}: {s:?}"))
    }
}

/// One strided batch of row-major products C[b] = A[b] [m, k] · B[b] [k, n] (B[b] stored as
/// [n, k] and read transposed when `b_transposed`); strides in elements (0 repeats one matrix
/// over the batch).
pub struct Strided {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub b_transposed: bool,
    /// C's element type: f32, or bf16 (rounded from the fp32 accumulation).
    pub c_elem: Elem,
}

/// cuBLAS's op and leading dimension for a row-major B of a product with inner size `k` and
/// `n` columns: in the column-major view B is cuBLAS's first operand, [n, k]
/// (column-major) when stored [k, n], or a stored [n, k] taken with CUBLAS_OP_T.
fn b_operand(b_transposed: bool, k: usize, n: usize) -> (cublasOperation_t, i32) {
    if b_transposed {
        (cublasOperation_t::CUBLAS_OP_T, k as i32)
    } else {
        (cublasOperation_t::CUBLAS_OP_N, n as i32)
    }
}

/// # Safety
/// `a`, `b` and `c` are device buffers on the handle's stream holding the batch's matrices
/// (`a`, `b` of `elem`, `c` of `g.c_elem`; a bf16 C only with bf16 operands).
pub unsafe fn gemm_strided(
    blas: &CudaBlas,
    elem: Elem,
    g: &Strided,
    a: u64,
    b: u64,
    c: u64,
) -> Result<(), String> {
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (op_b, ldb) = b_operand(g.b_transposed, g.k, g.n);
    let s = sys::cublasGemmStridedBatchedEx(
        *blas.handle(),
        op_b,
        cublasOperation_t::CUBLAS_OP_N,
        g.n as i32,
        g.m as i32,
        g.k as i32,
        &alpha as *const f32 as *const c_void,
        b as *const c_void,
        elem.cuda(),
        ldb,
        g.stride_b as i64,
        a as *const c_void,
        elem.cuda(),
        g.k as i32,
        g.stride_a as i64,
        &beta as *const f32 as *const c_void,
        c as *mut c_void,
        g.c_elem.cuda(),
        g.n as i32,
        (g.m * g.n) as i64,
        g.batch as i32,
        COMPUTE,
        sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
    );
    check("cublasGemmStridedBatchedEx", s)
}

/// A batch of row-major products C[b] = A[b] [m, k] · W[b] [k, n] (W[b] stored as [n, k] and
/// read transposed when `w_transposed`), each operand given by a device array of `batch`
/// device pointers (written on the device: the device grouping's tiles).
pub struct PointerBatch {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub w_transposed: bool,
    /// C's element type (see `Strided::c_elem`).
    pub c_elem: Elem,
}

/// One cublasGemmBatchedEx call over device pointer arrays `a`, `w` and `c`.
///
/// # Safety
/// `a`, `w` and `c` are device arrays of `g.batch` pointers, each to a matrix of the product's
/// size (`a`, `w` of `elem`, `c` of `g.c_elem`), on the handle's stream.
pub unsafe fn gemm_pointer_batch(
    blas: &CudaBlas,
    elem: Elem,
    g: &PointerBatch,
    (a, w, c): (u64, u64, u64),
) -> Result<(), String> {
    if g.batch == 0 || g.m == 0 {
        return Ok(());
    }
    let (alpha, beta) = (1.0f32, 0.0f32);
    // Column-major view: C[b]ᵀ = W[b]ᵀ · A[b]ᵀ, so cuBLAS's A is the product's W.
    let (op_w, ld_w) = b_operand(g.w_transposed, g.k, g.n);
    let s = sys::cublasGemmBatchedEx(
        *blas.handle(),
        op_w,
        cublasOperation_t::CUBLAS_OP_N,
        g.n as i32,
        g.m as i32,
        g.k as i32,
        &alpha as *const f32 as *const c_void,
        w as *const *const c_void,
        elem.cuda(),
        ld_w,
        a as *const *const c_void,
        elem.cuda(),
        g.k as i32,
        &beta as *const f32 as *const c_void,
        c as *const *mut c_void,
        g.c_elem.cuda(),
        g.n as i32,
        g.batch as i32,
        COMPUTE,
        sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
    );
    check("cublasGemmBatchedEx", s)
}

/// One product per group: C_g [rows_g, dout] = A_g [rows_g, din] · W_g [din, dout] (W_g stored
/// as [dout, din] and read transposed when `w_transposed`), each group given as (A, W, C)
/// device pointers and its row count.
pub struct Grouped<'a> {
    pub groups: &'a [(u64, u64, u64, usize)],
    pub din: usize,
    pub dout: usize,
    pub w_transposed: bool,
    /// C's element type (see `Strided::c_elem`).
    pub c_elem: Elem,
}

/// Whether cuBLAS has grouped GEMMs (12.5 and later): older libraries lack the symbol, and a
/// missing symbol would abort the process, so it is asked first.
pub fn has_grouped_gemm(blas: &CudaBlas) -> bool {
    let mut v: std::ffi::c_int = 0;
    // SAFETY: a version query on a live handle.
    let s = unsafe { sys::cublasGetVersion_v2(*blas.handle(), &mut v) };
    s == cublasStatus_t::CUBLAS_STATUS_SUCCESS && v >= 120500
}

/// All groups in one cublasGemmGroupedBatchedEx call (one launch for every expert). Ok(false)
/// when cuBLAS does not do this type combination grouped (bf16 inputs with an f32 result are
/// refused by some versions): the caller then loops.
///
/// # Safety
/// Every pointer addresses a block of the right size, on the handle's stream.
pub unsafe fn gemm_grouped(
    blas: &CudaBlas,
    stream: &Arc<CudaStream>,
    elem: Elem,
    g: &Grouped,
) -> Result<bool, String> {
    let n = g.groups.len();
    if n == 0 {
        return Ok(true);
    }
    // Column-major view: C_gᵀ = W_gᵀ · A_gᵀ, so cuBLAS's A is the group's W.
    let upload = |v: Vec<u64>| super::graph::upload(stream, &v).map_err(|e| e.to_string());
    let da = upload(g.groups.iter().map(|x| x.1).collect())?;
    let db = upload(g.groups.iter().map(|x| x.0).collect())?;
    let dc = upload(g.groups.iter().map(|x| x.2).collect())?;
    use cudarc::driver::DevicePtr;
    let (pa, _ga) = da.device_ptr(stream);
    let (pb, _gb) = db.device_ptr(stream);
    let (pc, _gc) = dc.device_ptr(stream);
    let ops = vec![cublasOperation_t::CUBLAS_OP_N; n];
    let (op_w, ld_w) = b_operand(g.w_transposed, g.din, g.dout);
    let ops_w = vec![op_w; n];
    let m = vec![g.dout as i32; n];
    let rows: Vec<i32> = g.groups.iter().map(|x| x.3 as i32).collect();
    let k = vec![g.din as i32; n];
    let (alpha, beta) = (vec![1.0f32; n], vec![0.0f32; n]);
    let (lda, ldb, ldc) = (vec![ld_w; n], vec![g.din as i32; n], vec![g.dout as i32; n]);
    let sizes = vec![1i32; n];
    let s = sys::cublasGemmGroupedBatchedEx(
        *blas.handle(),
        ops_w.as_ptr(),
        ops.as_ptr(),
        m.as_ptr(),
        rows.as_ptr(),
        k.as_ptr(),
        alpha.as_ptr() as *const c_void,
        pa as *const *const c_void,
        elem.cuda(),
        lda.as_ptr(),
        pb as *const *const c_void,
        elem.cuda(),
        ldb.as_ptr(),
        beta.as_ptr() as *const c_void,
        pc as *const *mut c_void,
        g.c_elem.cuda(),
        ldc.as_ptr(),
        n as i32,
        sizes.as_ptr(),
        COMPUTE,
    );
    if s == cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED {
        return Ok(false);
    }
    check("cublasGemmGroupedBatchedEx", s).map(|_| true)
}

/// The same products as `gemm_grouped`, one call per group (cuBLAS before 12.5, or to compare).
///
/// # Safety
/// As `gemm_grouped`.
pub unsafe fn gemm_per_group(blas: &CudaBlas, elem: Elem, g: &Grouped) -> Result<(), String> {
    for &(a, w, c, rows) in g.groups {
        gemm_strided(
            blas,
            elem,
            &Strided {
                m: rows,
                n: g.dout,
                k: g.din,
                batch: 1,
                stride_a: 0,
                stride_b: 0,
                b_transposed: g.w_transposed,
                c_elem: g.c_elem,
            },
            a,
            w,
            c,
        )?;
    }
    Ok(())
}

/// The groups as one strided batch where they are blocks of equal rows, evenly spaced in A, W
/// and C (the padded layout of `experts::RowOrder::padded`): (the batch, A, W, C).
fn as_strided(elem: Elem, g: &Grouped) -> Option<(Strided, u64, u64, u64)> {
    let &(a0, w0, c0, rows) = g.groups.first()?;
    let n = g.groups.len();
    let step = |elems: usize, e: Elem| elems as u64 * e.bytes();
    let (sa, sw, sc) = (
        step(rows * g.din, elem),
        step(g.din * g.dout, elem),
        step(rows * g.dout, g.c_elem),
    );
    let even = g.groups.iter().enumerate().all(|(i, &(a, w, c, r))| {
        let i = i as u64;
        r == rows && a == a0 + i * sa && w == w0 + i * sw && c == c0 + i * sc
    });
    (n > 1 && rows > 0 && even).then_some((
        Strided {
            m: rows,
            n: g.dout,
            k: g.din,
            batch: n,
            stride_a: rows * g.din,
            stride_b: g.din * g.dout,
            b_transposed: g.w_transposed,
            c_elem: g.c_elem,
        },
        a0,
        w0,
        c0,
    ))
}

/// Whether the groups can run as one strided batch (see `as_strided`).
pub fn batchable(elem: Elem, g: &Grouped) -> bool {
    as_strided(elem, g).is_some()
}

/// The groups as one cublasGemmStridedBatchedEx call: Ok(false) where they are not equal,
/// evenly spaced blocks.
///
/// # Safety
/// As `gemm_grouped`.
pub unsafe fn gemm_batched(blas: &CudaBlas, elem: Elem, g: &Grouped) -> Result<bool, String> {
    let Some((batch, a, w, c)) = as_strided(elem, g) else {
        return Ok(false);
    };
    // SAFETY: as the caller promises; the batch's blocks are the groups'.
    unsafe { gemm_strided(blas, elem, &batch, a, w, c) }.map(|_| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grouped(groups: &[(u64, u64, u64, usize)]) -> Grouped<'_> {
        Grouped {
            groups,
            din: 4,
            dout: 3,
            w_transposed: false,
            c_elem: Elem::F32,
        }
    }

    #[test]
    fn equal_evenly_spaced_blocks_are_one_strided_batch() {
        // bf16 A and W, f32 C; blocks of 2 rows: A steps 2*4*2 bytes, W 4*3*2, C 2*3*4.
        let g = [
            (1000, 5000, 9000, 2),
            (1016, 5024, 9024, 2),
            (1032, 5048, 9048, 2),
        ];
        let (b, a, w, c) = as_strided(Elem::Bf16, &grouped(&g)).expect("one batch");
        assert_eq!((b.m, b.n, b.k, b.batch), (2, 3, 4, 3));
        assert_eq!((b.stride_a, b.stride_b), (8, 12));
        assert_eq!((a, w, c), (1000, 5000, 9000));
        // Unequal rows, a skipped expert, or one group: not a batch.
        let uneven = [(1000, 5000, 9000, 2), (1016, 5024, 9024, 1)];
        assert!(as_strided(Elem::Bf16, &grouped(&uneven)).is_none());
        let skipped = [(1000, 5000, 9000, 2), (1016, 5048, 9024, 2)];
        assert!(as_strided(Elem::Bf16, &grouped(&skipped)).is_none());
        assert!(as_strided(Elem::Bf16, &grouped(&g[..1])).is_none());
    }
}
