//! The MoE ops: routing (scores -> top-k weights and ids, with capacity) and the expert FFNs
//! with their weighted combine. The reference the raise pass is checked against.

use super::KResult;
use crate::program::{Activation, ExpertDims, ExpertLayout, Op, RouteOrder, Scoring};
use crate::tensor::{DType, Tensor};

fn softmax(v: &[f32]) -> Vec<f32> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|&x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|&x| x / s).collect()
}

/// Indices of the k largest values, ties to the lower index.
fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| {
        v[b].partial_cmp(&v[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

/// PhiMoE's sparsemixer over one token's logits (see `Scoring::Sparsemixer`): the two
/// choices and their weights, in the order of HF's `sparsemixer` in inference.
fn sparsemixer(row: &[f32], threshold: f32) -> (Vec<usize>, Vec<f32>) {
    let first = sparsemixer_pick(row, row, threshold);
    let mut rest = row.to_vec();
    rest[first.0] = f32::NEG_INFINITY;
    let second = sparsemixer_pick(row, &rest, threshold);
    (vec![first.0, second.0], vec![first.1, second.1])
}

/// One choice of the sparsemixer among `candidates` (the logits, those chosen already at
/// -inf): the first largest, and its softmax over the candidates whose logit in `row` is within
/// `threshold` of it, relative to max(|logit|, the choice's).
fn sparsemixer_pick(row: &[f32], candidates: &[f32], threshold: f32) -> (usize, f32) {
    let choice = top_k(candidates, 1)[0];
    let m = candidates[choice];
    let kept: Vec<f32> = candidates
        .iter()
        .zip(row)
        .map(|(&c, &s)| {
            if (m - s) / s.abs().max(m) > threshold {
                f32::NEG_INFINITY
            } else {
                c
            }
        })
        .collect();
    (choice, softmax(&kept)[choice])
}

pub fn route(op: &Op, logits: &Tensor, bias: Option<&Tensor>) -> KResult<Vec<Tensor>> {
    let Op::MoeRoute {
        top_k: k,
        scoring,
        order,
        renormalize,
        n_group,
        topk_group,
        routed_scaling_factor,
        capacity,
        mask_threshold,
    } = *op
    else {
        return Err("not a route op".into());
    };
    let l = logits.as_f32().ok_or("moe.route logits must be float")?;
    let [t, e] = logits.shape[..] else {
        return Err(format!(
            "moe.route logits must be [T, E], got {:?}",
            logits.shape
        ));
    };
    if k == 0 || k > e {
        return Err(format!("moe.route top_k {k} for {e} experts"));
    }
    let bias = bias.map(|b| b.to_f32());
    if bias.as_ref().is_some_and(|b| b.len() != e) {
        return Err("moe.route bias must be [E]".into());
    }
    let mut weights = vec![0f32; t * k];
    let mut ids = vec![0i64; t * k];
    for ti in 0..t {
        let row = &l[ti * e..(ti + 1) * e];
        let (sel, w): (Vec<usize>, Vec<f32>) = match (scoring, order) {
            (Scoring::Sparsemixer, _) => {
                if k != 2 {
                    return Err(format!("moe.route: sparsemixer routes top 2, not top {k}"));
                }
                sparsemixer(row, mask_threshold)
            }
            (Scoring::Softmax, RouteOrder::TopkThenSoftmax) => {
                let sel = top_k(row, k);
                let w = softmax(&sel.iter().map(|&i| row[i]).collect::<Vec<_>>());
                (sel, w)
            }
            _ => {
                let groups = (n_group, topk_group);
                let sel = scored_choice(row, scoring, bias.as_deref(), groups, k)?;
                let mut w: Vec<f32> = sel.1;
                if renormalize && capacity == 0 {
                    let s: f32 = w.iter().sum();
                    w.iter_mut().for_each(|x| *x /= s);
                }
                (sel.0, w)
            }
        };
        for j in 0..k {
            ids[ti * k + j] = sel[j] as i64;
            weights[ti * k + j] = w[j];
        }
    }
    if capacity > 0 {
        drop_past_capacity(&mut weights, &ids, (e, k, capacity), renormalize);
    }
    if routed_scaling_factor != 1.0 {
        weights.iter_mut().for_each(|w| *w *= routed_scaling_factor);
    }
    Ok(vec![
        Tensor::f32(vec![t, k], weights),
        Tensor::i64(vec![t, k], ids),
    ])
}

/// A scored router's k choices for one token and their scores: softmax or sigmoid scores,
/// chosen by score plus `bias` (DeepSeek-V3's score correction) among the experts of the
/// groups kept (`n_group` groups ranked by their two best, `topk_group` kept) where there is a
/// group limit; the weights stay the scores.
fn scored_choice(
    row: &[f32],
    scoring: Scoring,
    bias: Option<&[f32]>,
    (n_group, topk_group): (usize, usize),
    k: usize,
) -> KResult<(Vec<usize>, Vec<f32>)> {
    let p: Vec<f32> = match scoring {
        Scoring::Softmax => softmax(row),
        Scoring::Sigmoid => row.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
        Scoring::Sparsemixer => {
            return Err("moe.route: a sparsemixer is not a scored router".into())
        }
    };
    let mut choice: Vec<f32> = match bias {
        Some(b) => p.iter().zip(b).map(|(a, b)| a + b).collect(),
        None => p.clone(),
    };
    if n_group > 1 {
        limit_to_groups(&mut choice, n_group, topk_group)?;
    }
    let sel = top_k(&choice, k);
    let w = sel.iter().map(|&i| p[i]).collect();
    Ok((sel, w))
}

/// The group limit: every expert outside the `keep` best of `n_group` groups (a group ranked
/// by the sum of its two best choices) out of the choice.
fn limit_to_groups(choice: &mut [f32], n_group: usize, keep: usize) -> KResult<()> {
    let e = choice.len();
    if !e.is_multiple_of(n_group) {
        return Err(format!("moe.route: {e} experts in {n_group} groups"));
    }
    let g = e / n_group;
    let group_score: Vec<f32> = (0..n_group)
        .map(|gi| {
            top_k(&choice[gi * g..(gi + 1) * g], 2.min(g))
                .iter()
                .map(|&i| choice[gi * g + i])
                .sum()
        })
        .collect();
    let kept = top_k(&group_score, keep);
    for gi in (0..n_group).filter(|gi| !kept.contains(gi)) {
        choice[gi * g..(gi + 1) * g]
            .iter_mut()
            .for_each(|c| *c = f32::NEG_INFINITY);
    }
    Ok(())
}

/// GShard's capacity: slot by slot (every token's first choice takes a place before any
/// second choice), the weights of the assignments past an expert's first `capacity` zeroed;
/// each token's weights then renormalised where the route renormalises.
fn drop_past_capacity(
    weights: &mut [f32],
    ids: &[i64],
    (e, k, capacity): (usize, usize, usize),
    renormalize: bool,
) {
    let t = ids.len() / k;
    let mut used = vec![0usize; e];
    let mut keep = vec![false; t * k];
    for j in 0..k {
        for ti in 0..t {
            let ex = ids[ti * k + j] as usize;
            keep[ti * k + j] = used[ex] < capacity;
            used[ex] += 1;
        }
    }
    for ti in 0..t {
        let row = &mut weights[ti * k..(ti + 1) * k];
        row.iter_mut()
            .zip(&keep[ti * k..(ti + 1) * k])
            .for_each(|(w, &kp)| {
                if !kp {
                    *w = 0.0
                }
            });
        if renormalize {
            let s: f32 = row.iter().sum::<f32>().max(f32::EPSILON);
            row.iter_mut().for_each(|w| *w /= s);
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn act(a: Activation, x: f32) -> f32 {
    match a {
        Activation::Silu => x * sigmoid(x),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2)),
        Activation::GeluTanh => 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044715 * x * x * x)).tanh()),
        Activation::Relu => x.max(0.0),
        Activation::Identity | Activation::Swiglu | Activation::Geglu => x,
    }
}

/// Sum over k of weight * FFN_id(x), the expert matrices in `layout`.
#[allow(clippy::too_many_arguments)]
pub fn experts(
    a: Activation,
    alpha: f32,
    beta: f32,
    limit: Option<f32>,
    layout: ExpertLayout,
    t: [&Tensor; 5],
    b_in: Option<&Tensor>,
    b_out: Option<&Tensor>,
) -> KResult<Tensor> {
    let [x, w, ids, w_in, w_out] = t;
    let (xv, wv, iv) = (x.to_f32(), w.to_f32(), ids.to_i64());
    if !w_in.dtype.is_float() || !w_out.dtype.is_float() {
        return Err("moe.experts weights must be float".into());
    }
    let [tokens, h] = x.shape[..] else {
        return Err(format!("moe.experts x must be [T, H], got {:?}", x.shape));
    };
    let Some(ExpertDims {
        experts: e,
        hidden: h2,
        n,
        ffn: f,
    }) = layout.dims(&w_in.shape, &w_out.shape)
    else {
        return Err(format!(
            "moe.experts weights must be {}, got w_in {:?}, w_out {:?}",
            layout.describe(),
            w_in.shape,
            w_out.shape
        ));
    };
    let gated = a.is_gated();
    if h2 != h
        || n != if gated { 2 * f } else { f }
        || w.shape != ids.shape
        || w.shape.first() != Some(&tokens)
    {
        return Err(format!(
            "moe.experts shapes do not fit: x {:?}, weights {:?}, ids {:?}, w_in {:?}, w_out {:?} ({}, {})",
            x.shape, w.shape, ids.shape, w_in.shape, w_out.shape, if gated { "gated" } else { "not gated" }, layout.describe()
        ));
    }
    let k = w.shape[1];
    // bf16 expert stacks: their GEMMs take bf16 inputs (see linalg::matmul).
    let mut xv = xv;
    if w_in.dtype == DType::BF16 {
        super::linalg::round_bf16(&mut xv);
    }
    let ffn = ExpertFfn {
        a,
        alpha,
        beta,
        lim: limit.unwrap_or(f32::INFINITY),
        transposed: layout == ExpertLayout::Linear,
        dims: (h, n, f),
        w_in,
        w_out,
        b_in: b_in.map(|b| b.to_f32()),
        b_out: b_out.map(|b| b.to_f32()),
    };
    // Slots grouped by expert, so each expert's matrices are read (or widened from bf16) once
    // and multiplied as one GEMM; the k outputs of a token are then summed in slot order.
    let groups = slots_by_expert(&wv, &iv, e)?;
    let mut slot_out = vec![0f32; tokens * k * h];
    for (ex, slots) in groups.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
        let mut xs = Vec::with_capacity(slots.len() * h);
        for &s in slots {
            xs.extend_from_slice(&xv[(s / k) * h..(s / k + 1) * h]);
        }
        let o = ffn.rows(ex, &xs, slots.len());
        for (r, &s) in slots.iter().enumerate() {
            slot_out[s * h..(s + 1) * h].copy_from_slice(&o[r * h..(r + 1) * h]);
        }
    }
    let y = weighted_sum(&slot_out, &wv, (tokens, k, h));
    Ok(Tensor::f32(vec![tokens, h], y).with_dtype(x.dtype))
}

/// The slots (t * k + j) of each expert, those of weight 0 left out; an error names an id out
/// of range.
fn slots_by_expert(weights: &[f32], ids: &[i64], e: usize) -> KResult<Vec<Vec<usize>>> {
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); e];
    for (slot, (&wt, &ex)) in weights.iter().zip(ids).enumerate() {
        if wt == 0.0 {
            continue;
        }
        if ex < 0 || ex as usize >= e {
            return Err(format!("expert id {ex} out of range for {e} experts"));
        }
        groups[ex as usize].push(slot);
    }
    Ok(groups)
}

/// Each token's output: the sum over its k slots, in slot order, of weight * the slot's
/// expert output (slots of weight 0 add nothing).
fn weighted_sum(
    slot_out: &[f32],
    weights: &[f32],
    (tokens, k, h): (usize, usize, usize),
) -> Vec<f32> {
    let mut y = vec![0f32; tokens * h];
    for ti in 0..tokens {
        let yr = &mut y[ti * h..(ti + 1) * h];
        for j in 0..k {
            let (wt, s) = (weights[ti * k + j], ti * k + j);
            if wt != 0.0 {
                yr.iter_mut()
                    .zip(&slot_out[s * h..(s + 1) * h])
                    .for_each(|(acc, v)| *acc += wt * v);
            }
        }
    }
    y
}

/// One layer's expert FFN: the activation (gated: SwiGLU with its alpha, beta and clamp, or
/// GeGLU), the stacks and their biases; `dims` (hidden, the first projection's width n, ffn).
struct ExpertFfn<'a> {
    a: Activation,
    alpha: f32,
    beta: f32,
    lim: f32,
    transposed: bool,
    dims: (usize, usize, usize),
    w_in: &'a Tensor,
    w_out: &'a Tensor,
    b_in: Option<Vec<f32>>,
    b_out: Option<Vec<f32>>,
}

impl ExpertFfn<'_> {
    /// Expert `ex`'s output for `m` rows `xs` ([m, h]): two GEMMs, the activation between.
    fn rows(&self, ex: usize, xs: &[f32], m: usize) -> Vec<f32> {
        let (h, n, f) = self.dims;
        let mut hid = vec![0f32; m * n];
        super::gemm::gemm_acc_weight(
            m,
            h,
            n,
            xs,
            self.w_in,
            ex * h * n,
            self.transposed,
            &mut hid,
        );
        let mut act_out = vec![0f32; m * f];
        for r in 0..m {
            let hr = &mut hid[r * n..(r + 1) * n];
            if let Some(b) = &self.b_in {
                hr.iter_mut()
                    .zip(&b[ex * n..(ex + 1) * n])
                    .for_each(|(v, b)| *v += b);
            }
            self.activate(hr, &mut act_out[r * f..(r + 1) * f]);
        }
        if self.w_out.dtype == DType::BF16 {
            super::linalg::round_bf16(&mut act_out);
        }
        let mut o = vec![0f32; m * h];
        super::gemm::gemm_acc_weight(
            m,
            f,
            h,
            &act_out,
            self.w_out,
            ex * f * h,
            self.transposed,
            &mut o,
        );
        if let Some(b) = &self.b_out {
            for r in 0..m {
                o[r * h..(r + 1) * h]
                    .iter_mut()
                    .zip(&b[ex * h..(ex + 1) * h])
                    .for_each(|(v, b)| *v += b);
            }
        }
        o
    }

    /// One row's activation: gate(hr[q]) * (hr[f + q] + beta) where gated, else act(hr[q]).
    fn activate(&self, hr: &[f32], out: &mut [f32]) {
        let f = self.dims.2;
        let (a, lim, gated) = (self.a, self.lim, self.a.is_gated());
        for (q, o) in out.iter_mut().enumerate() {
            *o = if gated {
                let (g, u) = (hr[q].min(lim), hr[f + q].clamp(-lim, lim));
                let gate = if a == Activation::Geglu {
                    act(Activation::Gelu, g)
                } else {
                    g * sigmoid(self.alpha * g)
                };
                gate * (u + self.beta)
            } else {
                act(a, hr[q])
            };
        }
    }
}

/// Rows of the slots routed to experts [first, first + count), grouped by expert, with the
/// group offsets and each row's slot (t * k + j).
pub fn local_slice(x: &Tensor, ids: &Tensor, first: usize, count: usize) -> KResult<Vec<Tensor>> {
    let [t, h] = x.shape[..] else {
        return Err(format!(
            "moe.local_slice x must be [T, H], got {:?}",
            x.shape
        ));
    };
    let iv = ids.to_i64();
    let xv = x.to_f32();
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (slot, &e) in iv.iter().enumerate() {
        let e = e as usize;
        if e >= first && e < first + count {
            groups[e - first].push(slot);
        }
    }
    let k = iv.len() / t.max(1);
    let mut rows = Vec::new();
    let mut slots = Vec::new();
    let mut offsets = vec![0i64];
    for g in &groups {
        for &slot in g {
            let tok = slot / k.max(1);
            rows.extend_from_slice(&xv[tok * h..(tok + 1) * h]);
            slots.push(slot as i64);
        }
        offsets.push(slots.len() as i64);
    }
    let n = slots.len();
    Ok(vec![
        Tensor::f32(vec![n, h], rows),
        Tensor::i64(vec![count + 1], offsets),
        Tensor::i64(vec![n], slots),
    ])
}

/// Rows offsets[l]..offsets[l+1] through local expert l.
#[allow(clippy::too_many_arguments)]
pub fn expert_ffn(
    a: Activation,
    alpha: f32,
    beta: f32,
    limit: Option<f32>,
    layout: ExpertLayout,
    t: [&Tensor; 4],
    b_in: Option<&Tensor>,
    b_out: Option<&Tensor>,
) -> KResult<Tensor> {
    let [rows, offsets, w_in, w_out] = t;
    let [n_rows, _] = rows.shape[..] else {
        return Err(format!(
            "moe.expert_ffn rows must be [N, H], got {:?}",
            rows.shape
        ));
    };
    let off = offsets.to_i64();
    let l = w_in.shape[0];
    if off.len() != l + 1 || off.last().copied() != Some(n_rows as i64) {
        return Err(format!(
            "moe.expert_ffn offsets {off:?} do not cover {n_rows} rows of {l} experts"
        ));
    }
    // Each row is one token routed to one expert with weight 1: the experts kernel does the rest.
    let ids: Vec<i64> = (0..l)
        .flat_map(|e| std::iter::repeat_n(e as i64, (off[e + 1] - off[e]).max(0) as usize))
        .collect();
    let w = Tensor::f32(vec![n_rows, 1], vec![1.0; n_rows]);
    let ids = Tensor::i64(vec![n_rows, 1], ids);
    experts(
        a,
        alpha,
        beta,
        limit,
        layout,
        [rows, &w, &ids, w_in, w_out],
        b_in,
        b_out,
    )
}

/// partial[slot / k] += weights[slot] * out[row].
pub fn scatter_combine(
    out: &Tensor,
    slots: &Tensor,
    weights: &Tensor,
    tokens: usize,
) -> KResult<Tensor> {
    let h = *out.shape.last().unwrap_or(&0);
    let (ov, sv, wv) = (out.to_f32(), slots.to_i64(), weights.to_f32());
    let k = wv.len() / tokens.max(1);
    let mut y = vec![0f32; tokens * h];
    for (r, &slot) in sv.iter().enumerate() {
        let (slot, tok) = (slot as usize, slot as usize / k.max(1));
        if tok >= tokens {
            return Err(format!("slot {slot} out of range for {tokens} tokens"));
        }
        let w = wv[slot];
        y[tok * h..(tok + 1) * h]
            .iter_mut()
            .zip(&ov[r * h..(r + 1) * h])
            .for_each(|(a, b)| *a += w * b);
    }
    Ok(Tensor::f32(vec![tokens, h], y))
}

/// Bucket position of each slot: slot-major, per expert (what dispatch and combine agree on).
fn positions(ids: &[i64], t: usize, k: usize, e: usize) -> KResult<Vec<usize>> {
    let mut used = vec![0usize; e];
    let mut pos = vec![0usize; t * k];
    for j in 0..k {
        for ti in 0..t {
            let ex = ids[ti * k + j];
            if ex < 0 || ex as usize >= e {
                return Err(format!("expert id {ex} out of range for {e} experts"));
            }
            pos[ti * k + j] = used[ex as usize];
            used[ex as usize] += 1;
        }
    }
    Ok(pos)
}

pub fn dispatch(x: &Tensor, ids: &Tensor, e: usize, c: usize) -> KResult<Tensor> {
    let [t, h] = x.shape[..] else {
        return Err(format!("moe.dispatch x must be [T, H], got {:?}", x.shape));
    };
    let iv = ids.to_i64();
    let k = iv.len() / t.max(1);
    let pos = positions(&iv, t, k, e)?;
    let xv = x.to_f32();
    let mut b = vec![0f32; e * c * h];
    for slot in 0..t * k {
        if pos[slot] >= c {
            return Err(format!("moe.dispatch: capacity {c} is too small"));
        }
        let (ex, tok) = (iv[slot] as usize, slot / k);
        b[(ex * c + pos[slot]) * h..(ex * c + pos[slot] + 1) * h]
            .copy_from_slice(&xv[tok * h..(tok + 1) * h]);
    }
    Ok(Tensor::f32(vec![e, c, h], b))
}

pub fn combine(buckets: &Tensor, weights: &Tensor, ids: &Tensor, c: usize) -> KResult<Tensor> {
    let [e, c2, h] = buckets.shape[..] else {
        return Err(format!(
            "moe.combine buckets must be [E, C, H], got {:?}",
            buckets.shape
        ));
    };
    if c2 != c {
        return Err(format!("moe.combine: buckets of {c2} for capacity {c}"));
    }
    let [t, k] = weights.shape[..] else {
        return Err("moe.combine weights must be [T, k]".into());
    };
    let (bv, wv, iv) = (buckets.to_f32(), weights.to_f32(), ids.to_i64());
    let pos = positions(&iv, t, k, e)?;
    let mut y = vec![0f32; t * h];
    for slot in 0..t * k {
        let (ex, tok, w) = (iv[slot] as usize, slot / k, wv[slot]);
        let src = &bv[(ex * c + pos[slot]) * h..(ex * c + pos[slot] + 1) * h];
        y[tok * h..(tok + 1) * h]
            .iter_mut()
            .zip(src)
            .for_each(|(a, b)| *a += w * b);
    }
    Ok(Tensor::f32(vec![t, h], y))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HF's inference sparsemixer on one row, worked by hand (threshold 0.02 = 2 x 0.01):
    /// the first choice 0 (logit 2) keeps 1.99 beside it ((2 - 1.99) / 2 = 0.005) and masks
    /// -1 and 0.5 (1.5 and 0.75 relative), so its weight is 1 / (1 + e^-0.01); the second, 1
    /// (1.99), has only itself left (expert 0 is -inf among the candidates), weight 1.
    #[test]
    fn sparsemixer_masks_each_choices_softmax_by_relative_distance() {
        let sparsemixer = |top_k| Op::MoeRoute {
            top_k,
            scoring: Scoring::Sparsemixer,
            order: RouteOrder::SoftmaxThenTopk,
            renormalize: false,
            n_group: 0,
            topk_group: 0,
            routed_scaling_factor: 1.0,
            capacity: 0,
            mask_threshold: 0.02,
        };
        let op = sparsemixer(2);
        let logits = Tensor::f32(vec![1, 4], vec![2.0, 1.99, -1.0, 0.5]);
        let out = route(&op, &logits, None).unwrap();
        assert_eq!(out[1].to_i64(), [0, 1]);
        let w = out[0].to_f32();
        let first = 1.0 / (1.0 + (-0.01f32).exp());
        assert!((w[0] - first).abs() < 1e-6, "{w:?}");
        assert!((w[1] - 1.0).abs() < 1e-6, "{w:?}");
        // Top 2 only.
        let three = sparsemixer(3);
        let four = Tensor::f32(vec![1, 4], vec![0.0; 4]);
        assert!(route(&three, &four, None).is_err());
    }

    /// [E, a, b] -> [E, b, a].
    fn transposed(t: &Tensor) -> Tensor {
        let (e, a, b) = (t.shape[0], t.shape[1], t.shape[2]);
        let v = t.to_f32();
        let mut o = vec![0f32; v.len()];
        for x in 0..e {
            for i in 0..a {
                for j in 0..b {
                    o[(x * b + j) * a + i] = v[(x * a + i) * b + j];
                }
            }
        }
        Tensor::f32(vec![e, b, a], o)
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                    / 16_777_216.0
                    - 0.5
            })
            .collect()
    }

    #[test]
    fn linear_stacks_give_what_their_transposes_give_in_out() {
        let (t, h, f, e) = (5, 6, 4, 3);
        let x = Tensor::f32(vec![t, h], values(t * h, 1));
        let w = Tensor::f32(vec![t, 2], values(t * 2, 2));
        let ids = Tensor::i64(vec![t, 2], vec![0, 2, 1, 0, 2, 1, 0, 1, 2, 2]);
        let w_in = Tensor::f32(vec![e, h, 2 * f], values(e * h * 2 * f, 3));
        let w_out = Tensor::f32(vec![e, f, h], values(e * f * h, 4));
        let run = |layout, a: &Tensor, b: &Tensor| {
            experts(
                Activation::Swiglu,
                1.0,
                0.0,
                None,
                layout,
                [&x, &w, &ids, a, b],
                None,
                None,
            )
            .unwrap()
            .to_f32()
        };
        let in_out = run(ExpertLayout::InOut, &w_in, &w_out);
        let linear = run(
            ExpertLayout::Linear,
            &transposed(&w_in),
            &transposed(&w_out),
        );
        assert!(in_out.iter().any(|v| v.abs() > 1e-3));
        for (a, b) in in_out.iter().zip(&linear) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
        }
        // Stacks that fit only the other layout are refused, not misread.
        let wrong = experts(
            Activation::Swiglu,
            1.0,
            0.0,
            None,
            ExpertLayout::Linear,
            [&x, &w, &ids, &w_in, &w_out],
            None,
            None,
        );
        assert!(wrong.is_err());
    }
}
