//! Row-major f32 GEMM for the CPU backend through `matrixmultiply` (blocked, vectorised): the
//! reference kernels stay readable, and a real-size layer runs in seconds, not hours.

/// c[m, n] += a[m, k] · b[k, n], all row-major and contiguous.
pub fn gemm_acc(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm operand sizes"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    // SAFETY: the asserts above keep every index the strides reach inside the three slices;
    // `c` is borrowed mutably, so it aliases neither input.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            1.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}
