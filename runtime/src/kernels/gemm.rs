//! Row-major f32 GEMM for the CPU backend through `matrixmultiply` (blocked, vectorised): the
//! reference kernels stay readable, and a real-size layer runs in seconds, not hours. A weight
//! stored as half-precision bits is widened a block of rows at a time into a small scratch
//! buffer, never whole: a real expert matrix is hundreds of MB in f32.

use crate::tensor::{widen, Data, Tensor};

/// A row-major view of f32 values: element (i, j) at `i * rs + j * cs`.
#[derive(Clone, Copy)]
struct View<'a> {
    v: &'a [f32],
    rs: usize,
    cs: usize,
}

/// Elements of half-bits scratch per block (4 MiB of f32).
const BLOCK: usize = 1 << 20;

/// c[m, n] += a[m, k] · b[k, n] over strided views; c row-major with row stride `rsc`.
fn sgemm(m: usize, k: usize, n: usize, a: View, b: View, c: &mut [f32], rsc: usize) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let last = |v: &View, r: usize, q: usize| (r - 1) * v.rs + (q - 1) * v.cs;
    assert!(
        last(&a, m, k) < a.v.len() && last(&b, k, n) < b.v.len() && (m - 1) * rsc + n <= c.len(),
        "gemm operand sizes"
    );
    // SAFETY: the assert keeps every index the strides reach inside the three slices; `c` is
    // borrowed mutably, so it aliases neither input.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.v.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.v.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            1.0,
            c.as_mut_ptr(),
            rsc as isize,
            1,
        );
    }
}

/// c[m, n] += a[m, k] · b[k, n], all row-major and contiguous.
pub fn gemm_acc(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    gemm_acc_oriented(m, k, n, a, b, false, c);
}

/// c[m, n] += a[m, k] · op(b): b is [k, n], or with `b_transposed` [n, k] read as its
/// transpose (an `nn.Linear` weight, used where it lies).
pub fn gemm_acc_oriented(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    b_transposed: bool,
    c: &mut [f32],
) {
    let b = if b_transposed {
        View { v: b, rs: 1, cs: k }
    } else {
        View { v: b, rs: n, cs: 1 }
    };
    sgemm(m, k, n, View { v: a, rs: k, cs: 1 }, b, c, n);
}

/// c[m, n] += a[m, k] · op(b) with b the matrix at element `offset` of tensor `w` ([k, n], or
/// [n, k] with `b_transposed`): f32 storage is read in place, half bits a block of rows at a time.
#[allow(clippy::too_many_arguments)]
pub fn gemm_acc_weight(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    w: &Tensor,
    offset: usize,
    b_transposed: bool,
    c: &mut [f32],
) {
    let bits = match &*w.data {
        Data::Half(bits) => &bits[offset..offset + k * n],
        _ => {
            let b = w.f32_range(offset..offset + k * n);
            return gemm_acc_oriented(m, k, n, a, &b, b_transposed, c);
        }
    };
    let a_view = |from: usize| View {
        v: &a[from..],
        rs: k,
        cs: 1,
    };
    if b_transposed {
        // Stored [n, k]: output columns j0..j1 from rows j0..j1.
        let rows = (BLOCK / k.max(1)).max(1);
        for j0 in (0..n).step_by(rows) {
            let j1 = (j0 + rows).min(n);
            let s = widen(&bits[j0 * k..j1 * k], w.dtype);
            let b = View {
                v: &s,
                rs: 1,
                cs: k,
            };
            sgemm(m, k, j1 - j0, a_view(0), b, &mut c[j0..], n);
        }
    } else {
        // Stored [k, n]: the contraction in blocks of rows i0..i1, accumulated.
        let rows = (BLOCK / n.max(1)).max(1);
        for i0 in (0..k).step_by(rows) {
            let i1 = (i0 + rows).min(k);
            let s = widen(&bits[i0 * n..i1 * n], w.dtype);
            let b = View {
                v: &s,
                rs: n,
                cs: 1,
            };
            sgemm(m, i1 - i0, n, a_view(i0), b, c, n);
        }
    }
}

/// c[m, n] += a · b[k, n] with a the [m, k] matrix at element `offset` of tensor `w` (a
/// stack of weights on the left, as batched_mm exports put it): half bits widened a block of
/// rows at a time.
pub fn gemm_acc_weight_left(
    m: usize,
    k: usize,
    n: usize,
    w: &Tensor,
    offset: usize,
    b: &[f32],
    c: &mut [f32],
) {
    let bits = match &*w.data {
        Data::Half(bits) => &bits[offset..offset + m * k],
        _ => {
            let a = w.f32_range(offset..offset + m * k);
            return gemm_acc(m, k, n, &a, b, c);
        }
    };
    let rows = (BLOCK / k.max(1)).max(1);
    for r0 in (0..m).step_by(rows) {
        let r1 = (r0 + rows).min(m);
        let s = widen(&bits[r0 * k..r1 * k], w.dtype);
        gemm_acc(r1 - r0, k, n, &s, b, &mut c[r0 * n..r1 * n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    fn naive(m: usize, k: usize, n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|q| a[i * k + q] * b[q * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn half_weights_widened_in_blocks_give_the_whole_product() {
        // Sizes past one block, so the blocking itself is exercised.
        let (m, k, n) = (3, 700, 1600);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        let want = naive(m, k, n, &a, &b);
        let w = Tensor::half(vec![k, n], &b, DType::BF16);
        let mut c = vec![0f32; m * n];
        gemm_acc_weight(m, k, n, &a, &w, 0, false, &mut c);
        assert_eq!(c, want);
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let wt = Tensor::half(vec![n, k], &bt, DType::BF16);
        let mut c = vec![0f32; m * n];
        gemm_acc_weight(m, k, n, &a, &wt, 0, true, &mut c);
        assert_eq!(c, want);
        // The weight on the left: [n, k] · a^T.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let want_t = naive(n, k, m, &bt, &at);
        let mut c = vec![0f32; n * m];
        gemm_acc_weight_left(n, k, m, &wt, 0, &at, &mut c);
        assert_eq!(c, want_t);
    }
}
