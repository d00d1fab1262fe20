//! Matrix products: numpy matmul with batch broadcasting, and explicit einsum.

use super::{broadcast_map, broadcast_shape, KResult};
use crate::tensor::{numel, DType, Data, Tensor};
use std::collections::HashMap;

/// Rounds to bf16 (nearest even) and back: what a bf16 GEMM does to its f32 operand.
pub fn round_bf16(v: &mut [f32]) {
    v.iter_mut()
        .for_each(|x| *x = half::bf16::from_f32(*x).to_f32());
}

/// A · B in f32. With one operand bf16 (a weight stored bf16, on either side) the other is
/// rounded to bf16 first, as the GPU's bf16 GEMM does, and the products accumulate in f32.
pub fn matmul(a: &Tensor, b: &Tensor) -> KResult<Tensor> {
    let (round_a, round_b) = (
        b.dtype == DType::BF16 && a.dtype != DType::BF16,
        a.dtype == DType::BF16 && b.dtype != DType::BF16,
    );
    // One batch's matrix as f32 (widened from bf16 bits a matrix at a time: a gathered stack of
    // expert weights is never widened whole), rounded where the other operand is bf16.
    fn matrix(t: &Tensor, i: usize, len: usize, round: bool) -> std::borrow::Cow<'_, [f32]> {
        let mut v = t.f32_range(i * len..(i + 1) * len);
        if round {
            round_bf16(v.to_mut());
        }
        v
    }
    if a.shape.is_empty() || b.shape.is_empty() {
        return Err("MatMul of a scalar".into());
    }
    // 1-D operands become matrices, and the added dimension is dropped from the result.
    let a_sh: Vec<usize> = if a.shape.len() == 1 {
        vec![1, a.shape[0]]
    } else {
        a.shape.clone()
    };
    let b_sh: Vec<usize> = if b.shape.len() == 1 {
        vec![b.shape[0], 1]
    } else {
        b.shape.clone()
    };
    let (m, k) = (a_sh[a_sh.len() - 2], a_sh[a_sh.len() - 1]);
    let (k2, n) = (b_sh[b_sh.len() - 2], b_sh[b_sh.len() - 1]);
    if k != k2 {
        return Err(format!(
            "MatMul of {:?} and {:?}: contraction sizes {k} and {k2} differ",
            a.shape, b.shape
        ));
    }
    let (ab, bb) = (&a_sh[..a_sh.len() - 2], &b_sh[..b_sh.len() - 2]);
    let batch = broadcast_shape(ab, bb)?;
    let nb = numel(&batch);
    let (ma, mb) = (broadcast_map(ab, &batch), broadcast_map(bb, &batch));
    let mut out = vec![0f32; nb * m * n];
    for bi in 0..nb {
        let o = &mut out[bi * m * n..(bi + 1) * m * n];
        // The larger half-bits operand (a weight, on either side) is read where it lies,
        // widened a block at a time; the other is widened (and rounded) whole.
        let a_is_weight = matches!(*a.data, Data::Half(_)) && !round_a && m * k > k * n;
        if round_b || a_is_weight {
            let y = matrix(b, mb[bi], k * n, round_b);
            super::gemm::gemm_acc_weight_left(m, k, n, a, ma[bi] * m * k, &y, o);
        } else {
            let x = matrix(a, ma[bi], m * k, round_a);
            super::gemm::gemm_acc_weight(m, k, n, &x, b, mb[bi] * k * n, false, o);
        }
    }
    let mut shape = batch;
    if a.shape.len() > 1 {
        shape.push(m);
    }
    if b.shape.len() > 1 {
        shape.push(n);
    }
    Ok(Tensor::f32(shape, out).with_dtype(a.dtype))
}

/// Explicit einsum (`ij,jk->ik`), by summing over every index combination: a reference, not fast.
pub fn einsum(equation: &str, ins: &[&Tensor]) -> KResult<Tensor> {
    let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = eq
        .split_once("->")
        .ok_or("einsum needs an explicit output ('->')")?;
    let terms: Vec<Vec<char>> = lhs.split(',').map(|t| t.chars().collect()).collect();
    if terms.len() != ins.len() {
        return Err(format!(
            "einsum '{eq}' has {} terms for {} operands",
            terms.len(),
            ins.len()
        ));
    }
    let mut size: HashMap<char, usize> = HashMap::new();
    for (t, x) in terms.iter().zip(ins) {
        if t.len() != x.shape.len() {
            return Err(format!(
                "einsum term '{}' does not match shape {:?}",
                t.iter().collect::<String>(),
                x.shape
            ));
        }
        for (c, &d) in t.iter().zip(&x.shape) {
            if *size.entry(*c).or_insert(d) != d {
                return Err(format!("einsum index '{c}' has two sizes"));
            }
        }
    }
    let out_idx: Vec<char> = rhs.chars().collect();
    let mut all: Vec<char> = out_idx.clone();
    for t in &terms {
        for c in t {
            if !all.contains(c) {
                all.push(*c);
            }
        }
    }
    let dims: Vec<usize> = all
        .iter()
        .map(|c| {
            size.get(c)
                .copied()
                .ok_or(format!("einsum index '{c}' has no size"))
        })
        .collect::<KResult<_>>()?;
    let out_shape: Vec<usize> = dims[..out_idx.len()].to_vec();
    let vals: Vec<Vec<f32>> = ins.iter().map(|t| t.to_f32()).collect();
    let pos: Vec<Vec<usize>> = terms
        .iter()
        .map(|t| {
            t.iter()
                .map(|c| all.iter().position(|a| a == c).unwrap_or(0))
                .collect()
        })
        .collect();
    let strides: Vec<Vec<usize>> = ins
        .iter()
        .map(|t| crate::tensor::strides(&t.shape))
        .collect();
    // Sums start from -0.0, the identity of IEEE addition (0.0 + -0.0 is 0.0): an einsum that
    // sums over no label is then each product exactly, as a multiplication is.
    let mut out = vec![-0f32; numel(&out_shape)];
    let total = numel(&dims);
    let mut ctr = vec![0usize; dims.len()];
    for _ in 0..total {
        let mut prod = 1f32;
        for (i, v) in vals.iter().enumerate() {
            let off: usize = pos[i]
                .iter()
                .zip(&strides[i])
                .map(|(&p, &s)| ctr[p] * s)
                .sum();
            prod *= v[off];
        }
        let o: usize = (0..out_idx.len()).fold(0, |acc, d| acc * dims[d] + ctr[d]);
        out[o] += prod;
        for d in (0..dims.len()).rev() {
            ctr[d] += 1;
            if ctr[d] < dims[d] {
                break;
            }
            ctr[d] = 0;
        }
    }
    Ok(Tensor::f32(out_shape, out).with_dtype(ins[0].dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_einsum_that_sums_nothing_is_each_product_exactly() {
        let x = Tensor::f32(vec![2], vec![-0.0, 3.0]);
        let y = Tensor::f32(vec![2, 2], vec![1.5, -2.0, 0.0, 7.0]);
        let out = einsum("a,ab->ab", &[&x, &y]).unwrap();
        let bits: Vec<u32> = out.to_f32().iter().map(|v| v.to_bits()).collect();
        let products = [-0.0f32 * 1.5, -0.0 * -2.0, 3.0 * 0.0, 3.0 * 7.0];
        assert_eq!(bits, products.map(f32::to_bits));
    }
}
