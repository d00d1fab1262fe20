//! onnxruntime's `com.microsoft.GroupQueryAttention` (what onnxruntime-genai's builder emits
//! for every decoder layer) in plain ops, for the cases the builder makes: packed QKV or three
//! inputs (Qwen3's, after its q/k norms), the KV
//! cache in BNSH (past length from its shape), rotary embedding from cos/sin caches
//! (non-interleaved), causal attention with an optional local window, optional attention sinks
//! (gpt-oss). Positions are past_len + 0..S for every row: unpadded sequences (seqlens_k and
//! total_sequence_length are not read). Everything else (position ids,
//! attention bias, softcap, smooth softmax, interleaved or partial rotary, a sliding-window
//! ring-buffer cache that has wrapped) is refused by name. A ring-buffer cache
//! (`sliding_window_cache`, gpt-oss's sliding layers) is read while the tokens fit its slots:
//! it then holds positions 0..total in order.

use super::{attr_f, attr_i, Lowering};
use crate::error::CompileError;
use ppmoe_frontend::Node;
use ppmoe_runtime::program::{BinaryFn, BufferId, BufferKind, Op};
use ppmoe_runtime::{DType, Tensor};

/// A KV cache input split at its valid length: the positions attention reads, and (for a
/// ring buffer with slots to spare) the slots after them.
struct CachePart {
    valid: BufferId,
    rest: Option<BufferId>,
}

/// The additive mask of a position a query may not see (finite: a row never masks all).
const MASKED: f32 = f32::MIN;

impl Lowering<'_> {
    /// Emits `op` on `inputs` into a fresh temporary of `shape`.
    fn gqa_op(
        &mut self,
        node: &Node,
        op: Op,
        inputs: Vec<BufferId>,
        dtype: DType,
        shape: &[usize],
    ) -> BufferId {
        let t = self.temp(
            &node.outputs[0],
            dtype,
            shape.iter().map(|&d| Some(d)).collect(),
        );
        self.emit(node, op, inputs.into_iter().map(Some).collect(), vec![t]);
        t
    }

    fn ints(&mut self, node: &Node, v: &[i64]) -> BufferId {
        self.const_operand(&node.outputs[0], Tensor::i64(vec![v.len()], v.to_vec()))
    }

    /// x[..., lo..hi] along `axis`.
    fn gqa_slice(
        &mut self,
        node: &Node,
        x: BufferId,
        axis: usize,
        (lo, hi): (usize, usize),
        dtype: DType,
        shape: &[usize],
    ) -> BufferId {
        let mut out = shape.to_vec();
        out[axis] = hi - lo;
        let mut offsets = vec![0; shape.len()];
        offsets[axis] = lo;
        let op = Op::ExtractSlice {
            offsets,
            sizes: out.clone(),
            strides: vec![1; shape.len()],
        };
        self.gqa_op(node, op, vec![x], dtype, &out)
    }

    fn binary(
        &mut self,
        node: &Node,
        f: BinaryFn,
        a: BufferId,
        b: BufferId,
        dtype: DType,
        shape: &[usize],
    ) -> BufferId {
        self.gqa_op(node, Op::Binary { f }, vec![a, b], dtype, shape)
    }

    /// What the lowering does not read, refused by name.
    fn gqa_refusals(&self, node: &Node) -> Result<(), CompileError> {
        let given = |i: usize| node.inputs.get(i).is_some_and(|n| !n.is_empty());
        for (name, bad) in [
            ("a key input without a value input", given(1) != given(2)),
            ("position_ids", given(9)),
            ("attention_bias", given(10)),
            (
                "k_scale / v_scale (a quantised cache)",
                given(12) || given(13),
            ),
            (
                "query_seqlens (input 16) or inputs after it",
                node.inputs.iter().skip(16).any(|n| !n.is_empty()),
            ),
            ("causal = 0", attr_i(node, "causal", 1) == 0),
            ("qk_output", attr_i(node, "qk_output", 0) != 0),
            (
                "a quantised KV cache (kv_cache_bit_width)",
                attr_i(node, "kv_cache_bit_width", 0) != 0,
            ),
            ("softcap", attr_f(node, "softcap", 0.0) != 0.0),
            ("smooth_softmax", attr_i(node, "smooth_softmax", 0) != 0),
            (
                "interleaved rotary",
                attr_i(node, "rotary_interleaved", 0) != 0,
            ),
        ] {
            if bad {
                return Err(self.node_err(
                    node,
                    format!("GroupQueryAttention with {name} is not supported"),
                ));
            }
        }
        Ok(())
    }

    /// The valid length of a sliding-window layer's ring-buffer cache of `slots` slots: the
    /// total length (total_sequence_length, input 6, known at compile time from the attention
    /// mask's shape) less this step's `s` tokens. Until the total passes the slots, the buffer
    /// holds positions 0..total in order, as a linear cache does; past that it has wrapped,
    /// which is refused by name.
    fn ring_past_len(&self, node: &Node, slots: usize, s: usize) -> Result<usize, CompileError> {
        let total = node
            .inputs
            .get(6)
            .and_then(|n| self.consts.get(n))
            .map(|t| t.to_i64())
            .and_then(|v| (v.len() == 1).then(|| v[0]))
            .ok_or_else(|| {
                self.node_err(
                    node,
                    "a sliding-window ring-buffer cache (sliding_window_cache) needs total_sequence_length known at compile time (give the attention mask's shape with --input-shape)",
                )
            })?;
        match usize::try_from(total) {
            Ok(t) if t >= s && t <= slots => Ok(t - s),
            _ => Err(self.node_err(
                node,
                format!("GroupQueryAttention with a sliding-window ring-buffer cache of {slots} slots and {total} tokens in all is not supported: supported while the tokens fit the slots ({s} new), before the buffer wraps"),
            )),
        }
    }

    /// The past's first `valid` positions (axis 2) and, for a ring buffer with slots after the
    /// `total` this step fills, those slots.
    fn cache_part(&mut self, node: &Node, name: &str, valid: usize, total: usize) -> CachePart {
        let x = self.operand(name);
        let dtype = self.buffers[x].dtype;
        let shape: Vec<usize> = self.buffers[x]
            .shape
            .iter()
            .map(|d| d.unwrap_or(0))
            .collect();
        let slots = shape[2];
        let head = if valid == slots {
            x
        } else {
            self.gqa_slice(node, x, 2, (0, valid), dtype, &shape)
        };
        let rest =
            (total < slots).then(|| self.gqa_slice(node, x, 2, (total, slots), dtype, &shape));
        CachePart { valid: head, rest }
    }

    pub(super) fn lower_gqa(&mut self, node: &Node) -> Result<(), CompileError> {
        let q = self.gqa_query(node)?;
        let (past_k, past_v) = (self.gqa_past(node, &q, 3)?, self.gqa_past(node, &q, 4)?);
        let slots = past_k.as_ref().map_or(0, |x| x.1);
        if past_v.as_ref().map_or(0, |x| x.1) != slots {
            return Err(self.node_err(node, "past key and value lengths differ"));
        }
        // A ring buffer's valid length is the total length less this step's tokens, not its
        // slots; a linear cache's is its length.
        let p = if attr_i(node, "sliding_window_cache", 0) != 0 {
            self.ring_past_len(node, slots, q.s)?
        } else {
            slots
        };
        let past_k = past_k.map(|(name, _)| self.cache_part(node, &name, p, p + q.s));
        let past_v = past_v.map(|(name, _)| self.cache_part(node, &name, p, p + q.s));
        let qkv = self.operand(&node.inputs[0]);
        let g = Geometry {
            b: q.b,
            s: q.s,
            n: q.n,
            kv: q.kv,
            d: q.d,
            p,
            t: p + q.s,
            slots,
            dtype: self.buffers[qkv].dtype,
        };
        let (q, k, v) = self.gqa_heads(node, &g, qkv, (q.w, q.packed));
        let (q, k) = self.gqa_qk_norms(node, &g, q, k);
        let (q, k) = if attr_i(node, "do_rotary", 0) != 0 {
            self.gqa_rotary(node, &g, q, k)?
        } else {
            (q, k)
        };
        let (pk, out_k) = self.gqa_present(node, &g, &past_k, k);
        let (pv, out_v) = self.gqa_present(node, &g, &past_v, v);
        for (o, buf) in [(1, out_k), (2, out_v)] {
            if let Some(name) = node.outputs.get(o).filter(|n| !n.is_empty()) {
                self.ids.insert(name.clone(), buf);
            }
        }
        self.gqa_attend(node, &g, q, pk, pv);
        Ok(())
    }

    /// The query's layout, checked: [batch, sequence, width] with packed [Q | K | V] heads or
    /// Q alone (then the key and value are inputs 1 and 2, of the KV heads' width).
    fn gqa_query(&self, node: &Node) -> Result<QueryLayout, CompileError> {
        let refuse = |why: String| self.node_err(node, why);
        let (heads, kv) = (
            attr_i(node, "num_heads", 0),
            attr_i(node, "kv_num_heads", 0),
        );
        if heads <= 0 || kv <= 0 || heads % kv != 0 {
            return Err(refuse(format!("num_heads {heads} and kv_num_heads {kv}: expected positive, the first a multiple of the second")));
        }
        self.gqa_refusals(node)?;
        let (n, kv) = (heads as usize, kv as usize);
        let qs = self
            .static_shape(&node.inputs[0])
            .ok_or_else(|| refuse("the query's shape is not static (give --input-shape)".into()))?;
        let [b, s, w] = qs[..] else {
            return Err(refuse(format!(
                "the query is {qs:?}, not [batch, sequence, width]"
            )));
        };
        let packed = given(node, 1).is_none();
        let d = if packed { w / (n + 2 * kv) } else { w / n };
        let want = if packed { (n + 2 * kv) * d } else { n * d };
        if d == 0 || want != w || d % 2 != 0 {
            let heads = if packed {
                "(num_heads + 2 x kv_num_heads)"
            } else {
                "num_heads"
            };
            return Err(refuse(format!(
                "query width {w} is not {heads} x an even head size"
            )));
        }
        if !packed {
            for i in [1, 2] {
                let shape = given(node, i).and_then(|k| self.static_shape(&k));
                if shape.as_deref() != Some(&[b, s, kv * d][..]) {
                    return Err(refuse(format!(
                        "key/value input {i} is {shape:?}, expected [{b}, {s}, {}]",
                        kv * d
                    )));
                }
            }
        }
        Ok(QueryLayout {
            b,
            s,
            w,
            n,
            kv,
            d,
            packed,
        })
    }

    /// Past key or value input `i`, where given: its name and length, checked to be BNSH.
    fn gqa_past(
        &self,
        node: &Node,
        q: &QueryLayout,
        i: usize,
    ) -> Result<Option<(String, usize)>, CompileError> {
        let Some(name) = given(node, i) else {
            return Ok(None);
        };
        let (b, kv, d) = (q.b, q.kv, q.d);
        match self.static_shape(&name).as_deref() {
            Some(&[pb, pk, p, pd]) if pb == b && pk == kv && pd == d => Ok(Some((name, p))),
            other => Err(self.node_err(
                node,
                format!(
                    "past key/value '{name}' is {other:?}, expected [{b}, {kv}, past, {d}] (BNSH)"
                ),
            )),
        }
    }

    /// Q, K and V in BNSH, from the packed query (of `width`) or the three inputs.
    fn gqa_heads(
        &mut self,
        node: &Node,
        g: &Geometry,
        qkv: BufferId,
        (width, packed): (usize, bool),
    ) -> (BufferId, BufferId, BufferId) {
        let (n, kv, d) = (g.n, g.kv, g.d);
        if packed {
            (
                self.gqa_heads_of(node, g, qkv, width, (0, n)),
                self.gqa_heads_of(node, g, qkv, width, (n, kv)),
                self.gqa_heads_of(node, g, qkv, width, (n + kv, kv)),
            )
        } else {
            let (kb, vb) = (self.operand(&node.inputs[1]), self.operand(&node.inputs[2]));
            (
                self.gqa_heads_of(node, g, qkv, width, (0, n)),
                self.gqa_heads_of(node, g, kb, kv * d, (0, kv)),
                self.gqa_heads_of(node, g, vb, kv * d, (0, kv)),
            )
        }
    }

    /// Heads lo..lo + h of `x` ([B, S, width]) as [B, h, S, D].
    fn gqa_heads_of(
        &mut self,
        node: &Node,
        g: &Geometry,
        x: BufferId,
        width: usize,
        (lo, h): (usize, usize),
    ) -> BufferId {
        let (b, s, d, dtype) = (g.b, g.s, g.d, g.dtype);
        let x = if width == h * d {
            x
        } else {
            self.gqa_slice(node, x, 2, (lo * d, (lo + h) * d), dtype, &[b, s, width])
        };
        let shape = vec![b, s, h, d];
        let r = self.gqa_op(node, Op::ReshapeTo { shape }, vec![x], dtype, &[b, s, h, d]);
        let perm = vec![0, 2, 1, 3];
        self.gqa_op(node, Op::Transpose { perm }, vec![r], dtype, &[b, h, s, d])
    }

    /// The per-head RMS norms of Q and K that genai's CUDA builds fuse into the node (Qwen3's
    /// q_norm / k_norm, weights [head size]), before the rotary embedding, as the model has them.
    fn gqa_qk_norms(
        &mut self,
        node: &Node,
        g: &Geometry,
        mut q: BufferId,
        mut k: BufferId,
    ) -> (BufferId, BufferId) {
        let qk_eps = attr_f(node, "qk_norm_epsilon", 1e-6);
        for (input, heads, own_eps) in [(14, g.n, "q_norm_epsilon"), (15, g.kv, "k_norm_epsilon")] {
            let Some(w) = given(node, input) else {
                continue;
            };
            let eps = attr_f(node, own_eps, qk_eps);
            let x = if input == 14 { q } else { k };
            let w = self.operand(&w);
            let shape = [g.b, heads, g.s, g.d].iter().map(|&v| Some(v)).collect();
            let out = self.temp(&node.outputs[0], g.dtype, shape);
            self.rms_norm_into(node, x, w, eps, out);
            if input == 14 {
                q = out;
            } else {
                k = out;
            }
        }
        (q, k)
    }

    /// The rotary embedding of Q and K (non-interleaved, over the whole head), from the cos
    /// and sin caches' rows of positions p..t.
    fn gqa_rotary(
        &mut self,
        node: &Node,
        g: &Geometry,
        q: BufferId,
        k: BufferId,
    ) -> Result<(BufferId, BufferId), CompileError> {
        let (s, d, dtype) = (g.s, g.d, g.dtype);
        let (Some(cos), Some(sin)) = (given(node, 7), given(node, 8)) else {
            return Err(self.node_err(node, "do_rotary without cos_cache and sin_cache"));
        };
        let width = self.static_shape(&cos).and_then(|c| c.get(1).copied());
        if width != Some(d / 2) {
            return Err(self.node_err(node, format!("cos_cache rows of {width:?}: rotary over the whole head ({} = head size / 2) is read, partial rotary is not", d / 2)));
        }
        let pos: Vec<i64> = (g.p as i64..g.t as i64).collect();
        let idx = self.ints(node, &pos);
        let (cos, sin) = (self.operand(&cos), self.operand(&sin));
        let gather = Op::Gather { axis: 0 };
        let c = self.gqa_op(node, gather.clone(), vec![cos, idx], dtype, &[s, d / 2]);
        let sn = self.gqa_op(node, gather, vec![sin, idx], dtype, &[s, d / 2]);
        let q = self.gqa_rotate(node, g, q, g.n, (c, sn));
        let k = self.gqa_rotate(node, g, k, g.kv, (c, sn));
        Ok((q, k))
    }

    /// x ([B, h, S, D]) rotated: [x1 cos - x2 sin, x2 cos + x1 sin] of its halves.
    fn gqa_rotate(
        &mut self,
        node: &Node,
        g: &Geometry,
        x: BufferId,
        h: usize,
        (c, sn): (BufferId, BufferId),
    ) -> BufferId {
        let (b, s, d, dtype) = (g.b, g.s, g.d, g.dtype);
        let full = [b, h, s, d];
        let half = [b, h, s, d / 2];
        let x1 = self.gqa_slice(node, x, 3, (0, d / 2), dtype, &full);
        let x2 = self.gqa_slice(node, x, 3, (d / 2, d), dtype, &full);
        let (a1, a2) = (
            self.binary(node, BinaryFn::Mul, x1, c, dtype, &half),
            self.binary(node, BinaryFn::Mul, x2, sn, dtype, &half),
        );
        let o1 = self.binary(node, BinaryFn::Sub, a1, a2, dtype, &half);
        let (b1, b2) = (
            self.binary(node, BinaryFn::Mul, x2, c, dtype, &half),
            self.binary(node, BinaryFn::Mul, x1, sn, dtype, &half),
        );
        let o2 = self.binary(node, BinaryFn::Add, b1, b2, dtype, &half);
        self.gqa_op(node, Op::Concat { axis: 3 }, vec![o1, o2], dtype, &full)
    }

    /// The present cache: the past and this step's keys or values (what attention reads);
    /// a ring buffer's output keeps all its slots, those after the total length as the past
    /// had them (onnxruntime leaves them unspecified). Returns (what attention reads, the
    /// output).
    fn gqa_present(
        &mut self,
        node: &Node,
        g: &Geometry,
        past: &Option<CachePart>,
        x: BufferId,
    ) -> (BufferId, BufferId) {
        let (b, kv, d, dtype) = (g.b, g.kv, g.d, g.dtype);
        let cat = Op::Concat { axis: 2 };
        let linear = match past {
            Some(c) if g.p > 0 => {
                self.gqa_op(node, cat.clone(), vec![c.valid, x], dtype, &[b, kv, g.t, d])
            }
            _ => x,
        };
        let output = match past {
            Some(CachePart { rest: Some(r), .. }) => {
                self.gqa_op(node, cat, vec![linear, *r], dtype, &[b, kv, g.slots, d])
            }
            _ => linear,
        };
        (linear, output)
    }

    /// Keys or values of the KV heads ([B, kv, T, D]) for every query head ([B, n, T, D]):
    /// query head h reads kv head h / (n / kv).
    fn gqa_expand_kv(&mut self, node: &Node, g: &Geometry, x: BufferId) -> BufferId {
        let (b, n, kv, t, d, dtype) = (g.b, g.n, g.kv, g.t, g.d, g.dtype);
        let group = n / kv;
        let shape = vec![b, kv, 1, t, d];
        let r = self.gqa_op(
            node,
            Op::ReshapeTo { shape },
            vec![x],
            dtype,
            &[b, kv, 1, t, d],
        );
        let shape = vec![b, kv, group, t, d];
        let e = self.gqa_op(
            node,
            Op::ExpandTo { shape },
            vec![r],
            dtype,
            &[b, kv, group, t, d],
        );
        let shape = vec![b, n, t, d];
        self.gqa_op(node, Op::ReshapeTo { shape }, vec![e], dtype, &[b, n, t, d])
    }

    /// softmax(Q Kᵀ scale + mask [, sinks]) V, written to the node's output as [B, S, n D].
    fn gqa_attend(&mut self, node: &Node, g: &Geometry, q: BufferId, k: BufferId, v: BufferId) {
        let (b, n, s, t, d, dtype) = (g.b, g.n, g.s, g.t, g.d, g.dtype);
        let (ke, ve) = (
            self.gqa_expand_kv(node, g, k),
            self.gqa_expand_kv(node, g, v),
        );
        let perm = vec![0, 1, 3, 2];
        let kt = self.gqa_op(node, Op::Transpose { perm }, vec![ke], dtype, &[b, n, d, t]);
        let scores = self.gqa_op(node, Op::MatMul, vec![q, kt], dtype, &[b, n, s, t]);
        let scale = match attr_f(node, "scale", 0.0) {
            0.0 => 1.0 / (d as f32).sqrt(),
            x => x,
        };
        let sc = self.const_operand(&node.outputs[0], Tensor::f32(vec![], vec![scale]));
        let scaled = self.binary(node, BinaryFn::Mul, scores, sc, dtype, &[b, n, s, t]);
        // Causal, and within the local window where there is one: query i (position p + i)
        // sees key j when j <= p + i and p + i - j < window.
        let window = attr_i(node, "local_window_size", -1);
        let mask = attention_mask(s, t, g.p, window);
        let mask = self.const_operand(&node.outputs[0], Tensor::f32(vec![s, t], mask));
        let masked = self.binary(node, BinaryFn::Add, scaled, mask, dtype, &[b, n, s, t]);
        let (logits, width) = self.gqa_sinks(node, g, masked);
        let softmax = Op::Softmax {
            axis: -1,
            log: false,
        };
        let sm = self.gqa_op(node, softmax, vec![logits], dtype, &[b, n, s, width]);
        let probs = if width > t {
            self.gqa_slice(node, sm, 3, (0, t), dtype, &[b, n, s, width])
        } else {
            sm
        };
        let o = self.gqa_op(node, Op::MatMul, vec![probs, ve], dtype, &[b, n, s, d]);
        let perm = vec![0, 2, 1, 3];
        let ot = self.gqa_op(node, Op::Transpose { perm }, vec![o], dtype, &[b, s, n, d]);
        let out = self.buffer_for_value(&node.outputs[0], BufferKind::Temp);
        let shape = vec![b, s, n * d];
        self.emit(node, Op::ReshapeTo { shape }, vec![Some(ot)], vec![out]);
    }

    /// Attention sinks (input 11): one more logit per head in each softmax, whose weight is
    /// dropped. Returns the logits and their width.
    fn gqa_sinks(&mut self, node: &Node, g: &Geometry, masked: BufferId) -> (BufferId, usize) {
        let (b, n, s, t, dtype) = (g.b, g.n, g.s, g.t, g.dtype);
        let Some(sink) = given(node, 11) else {
            return (masked, t);
        };
        let sk = self.operand(&sink);
        let shape = vec![1, n, 1, 1];
        let r = self.gqa_op(
            node,
            Op::ReshapeTo { shape },
            vec![sk],
            dtype,
            &[1, n, 1, 1],
        );
        let shape = vec![b, n, s, 1];
        let e = self.gqa_op(node, Op::ExpandTo { shape }, vec![r], dtype, &[b, n, s, 1]);
        let cat = Op::Concat { axis: 3 };
        let logits = self.gqa_op(node, cat, vec![masked, e], dtype, &[b, n, s, t + 1]);
        (logits, t + 1)
    }
}

/// Input `i` of `node`, where given (not absent or empty).
fn given(node: &Node, i: usize) -> Option<String> {
    node.inputs.get(i).filter(|n| !n.is_empty()).cloned()
}

/// The query's layout: batch, sequence, width; heads, KV heads, head size; whether Q, K and V
/// are packed in it.
struct QueryLayout {
    b: usize,
    s: usize,
    w: usize,
    n: usize,
    kv: usize,
    d: usize,
    packed: bool,
}

/// The attention's sizes: batch, this step's tokens, heads, KV heads, head size; the past's
/// valid length, the total, the cache's slots; the element type.
struct Geometry {
    b: usize,
    s: usize,
    n: usize,
    kv: usize,
    d: usize,
    p: usize,
    t: usize,
    slots: usize,
    dtype: DType,
}

/// The additive mask of queries 0..s (positions past + i) over keys 0..t: causal, and within
/// the local window where there is one (key j seen when j <= past + i and past + i - j < window).
fn attention_mask(s: usize, t: usize, past: usize, window: i64) -> Vec<f32> {
    (0..s)
        .flat_map(|i| {
            (0..t).map(move |j| {
                let at = (past + i) as i64;
                let seen = (j as i64) <= at && (window <= 0 || at - (j as i64) < window);
                if seen {
                    0.0
                } else {
                    MASKED
                }
            })
        })
        .collect()
}
