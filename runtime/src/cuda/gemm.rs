//! Which row-major matmuls are one cuBLAS call: batches go to the strided-batched call when each
//! side is either one matrix (stride 0) or a full stack of the batch.

use super::blas::Strided;

pub struct GemmPlan {
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    stride_a: usize,
    stride_b: usize,
    pub out_shape: Vec<usize>,
}

impl GemmPlan {
    pub fn out_len(&self) -> usize {
        self.out_shape.iter().product::<usize>().max(1)
    }

    /// The batch as cuBLAS's strided call takes it.
    pub fn strided(&self) -> Strided {
        Strided {
            m: self.m,
            n: self.n,
            k: self.k,
            batch: self.batch,
            stride_a: self.stride_a,
            stride_b: self.stride_b,
            b_transposed: false,
            c_elem: super::blas::Elem::F32,
        }
    }
}

/// The cuBLAS form of A [.., M, K] · B [.., K, N], when there is one.
pub fn plan(a: &[usize], b: &[usize]) -> Option<GemmPlan> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
    let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
    if k != k2 || m == 0 || n == 0 || k == 0 {
        return None;
    }
    let (ba, bb) = (&a[..a.len() - 2], &b[..b.len() - 2]);
    let (na, nb): (usize, usize) = (ba.iter().product(), bb.iter().product());
    // A batch of A times one B is one tall matmul.
    if nb == 1 {
        let mut out = ba.to_vec();
        out.extend([m, n]);
        return Some(GemmPlan {
            m: na * m,
            n,
            k,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            out_shape: out,
        });
    }
    let batch_shape = if ba == bb {
        ba.to_vec()
    } else if na == 1 {
        bb.to_vec()
    } else {
        return None;
    };
    let batch: usize = batch_shape.iter().product();
    let mut out = batch_shape;
    out.extend([m, n]);
    Some(GemmPlan {
        m,
        n,
        k,
        batch,
        stride_a: if na == 1 { 0 } else { m * k },
        stride_b: k * n,
        out_shape: out,
    })
}
