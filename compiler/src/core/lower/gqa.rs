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
        let (s, e, a) = (
            self.ints(node, &[lo as i64]),
            self.ints(node, &[hi as i64]),
            self.ints(node, &[axis as i64]),
        );
        let mut out = shape.to_vec();
        out[axis] = hi - lo;
        self.gqa_op(node, Op::Slice, vec![x, s, e, a], dtype, &out)
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
        let given = |i: usize| node.inputs.get(i).filter(|n| !n.is_empty()).cloned();
        let (heads, kv) = (
            attr_i(node, "num_heads", 0),
            attr_i(node, "kv_num_heads", 0),
        );
        let refuse = |s: &Self, why: String| s.node_err(node, why);
        if heads <= 0 || kv <= 0 || heads % kv != 0 {
            return Err(refuse(self, format!("num_heads {heads} and kv_num_heads {kv}: expected positive, the first a multiple of the second")));
        }
        self.gqa_refusals(node)?;
        let (n, kv) = (heads as usize, kv as usize);
        let qkv_name = node.inputs[0].clone();
        let qs = self.static_shape(&qkv_name).ok_or_else(|| {
            refuse(
                self,
                "the query's shape is not static (give --input-shape)".into(),
            )
        })?;
        let [b, s, w] = qs[..] else {
            return Err(refuse(
                self,
                format!("the query is {qs:?}, not [batch, sequence, width]"),
            ));
        };
        // Packed [Q | K | V] in the query, or three inputs.
        let packed = given(1).is_none();
        let d = if packed { w / (n + 2 * kv) } else { w / n };
        let want = if packed { (n + 2 * kv) * d } else { n * d };
        if d == 0 || want != w || d % 2 != 0 {
            return Err(refuse(
                self,
                format!(
                    "query width {w} is not {} x an even head size",
                    if packed {
                        "(num_heads + 2 x kv_num_heads)"
                    } else {
                        "num_heads"
                    }
                ),
            ));
        }
        if !packed {
            for i in [1, 2] {
                let shape = given(i).and_then(|k| self.static_shape(&k));
                if shape.as_deref() != Some(&[b, s, kv * d][..]) {
                    return Err(refuse(
                        self,
                        format!(
                            "key/value input {i} is {shape:?}, expected [{b}, {s}, {}]",
                            kv * d
                        ),
                    ));
                }
            }
        }
        let past = |i: usize| -> Result<Option<(String, usize)>, CompileError> {
            let Some(name) = given(i) else {
                return Ok(None);
            };
            match self.static_shape(&name).as_deref() {
                Some(&[pb, pk, p, pd]) if pb == b && pk == kv && pd == d => Ok(Some((name, p))),
                other => Err(refuse(self, format!("past key/value '{name}' is {other:?}, expected [{b}, {kv}, past, {d}] (BNSH)"))),
            }
        };
        let (past_k, past_v) = (past(3)?, past(4)?);
        let slots = past_k.as_ref().map_or(0, |x| x.1);
        if past_v.as_ref().map_or(0, |x| x.1) != slots {
            return Err(refuse(self, "past key and value lengths differ".into()));
        }
        let ring = attr_i(node, "sliding_window_cache", 0) != 0;
        // A ring buffer's valid length is the total length less this step's tokens, not its
        // slots; a linear cache's is its length.
        let p = if ring {
            self.ring_past_len(node, slots, s)?
        } else {
            slots
        };
        let t = p + s;
        let past_k = past_k.map(|(name, _)| self.cache_part(node, &name, p, t));
        let past_v = past_v.map(|(name, _)| self.cache_part(node, &name, p, t));
        let qkv = self.operand(&qkv_name);
        let dtype = self.buffers[qkv].dtype;
        // Q, K, V in BNSH: heads lo..lo + h of `x` ([B, S, width]).
        let heads_of = |this: &mut Self, x: BufferId, width: usize, lo: usize, h: usize| {
            let x = if width == h * d {
                x
            } else {
                this.gqa_slice(node, x, 2, (lo * d, (lo + h) * d), dtype, &[b, s, width])
            };
            let r = this.gqa_op(
                node,
                Op::ReshapeTo {
                    shape: vec![b, s, h, d],
                },
                vec![x],
                dtype,
                &[b, s, h, d],
            );
            this.gqa_op(
                node,
                Op::Transpose {
                    perm: vec![0, 2, 1, 3],
                },
                vec![r],
                dtype,
                &[b, h, s, d],
            )
        };
        let (mut q, mut k, v) = if packed {
            (
                heads_of(self, qkv, w, 0, n),
                heads_of(self, qkv, w, n, kv),
                heads_of(self, qkv, w, n + kv, kv),
            )
        } else {
            let (kb, vb) = (self.operand(&node.inputs[1]), self.operand(&node.inputs[2]));
            (
                heads_of(self, qkv, w, 0, n),
                heads_of(self, kb, kv * d, 0, kv),
                heads_of(self, vb, kv * d, 0, kv),
            )
        };
        // The per-head RMS norms of Q and K that genai's CUDA builds fuse into the node (Qwen3's
        // q_norm / k_norm, weights [head size]), before the rotary embedding, as the model has them.
        let qk_eps = attr_f(node, "qk_norm_epsilon", 1e-6);
        for (input, heads, own_eps) in [(14, n, "q_norm_epsilon"), (15, kv, "k_norm_epsilon")] {
            if let Some(w) = given(input) {
                let eps = attr_f(node, own_eps, qk_eps);
                let x = if input == 14 { q } else { k };
                let w = self.operand(&w);
                let out = self.temp(
                    &node.outputs[0],
                    dtype,
                    [b, heads, s, d].iter().map(|&v| Some(v)).collect(),
                );
                self.rms_norm_into(node, x, w, eps, out);
                if input == 14 {
                    q = out;
                } else {
                    k = out;
                }
            }
        }
        if attr_i(node, "do_rotary", 0) != 0 {
            let (Some(cos), Some(sin)) = (given(7), given(8)) else {
                return Err(refuse(
                    self,
                    "do_rotary without cos_cache and sin_cache".into(),
                ));
            };
            let width = self.static_shape(&cos).and_then(|c| c.get(1).copied());
            if width != Some(d / 2) {
                return Err(refuse(self, format!("cos_cache rows of {width:?}: rotary over the whole head ({} = head size / 2) is read, partial rotary is not", d / 2)));
            }
            let pos: Vec<i64> = (p as i64..t as i64).collect();
            let idx = self.ints(node, &pos);
            let (cos, sin) = (self.operand(&cos), self.operand(&sin));
            let c = self.gqa_op(
                node,
                Op::Gather { axis: 0 },
                vec![cos, idx],
                dtype,
                &[s, d / 2],
            );
            let sn = self.gqa_op(
                node,
                Op::Gather { axis: 0 },
                vec![sin, idx],
                dtype,
                &[s, d / 2],
            );
            let rotate = |this: &mut Self, x: BufferId, h: usize| {
                let full = [b, h, s, d];
                let half = [b, h, s, d / 2];
                let x1 = this.gqa_slice(node, x, 3, (0, d / 2), dtype, &full);
                let x2 = this.gqa_slice(node, x, 3, (d / 2, d), dtype, &full);
                let (a1, a2) = (
                    this.binary(node, BinaryFn::Mul, x1, c, dtype, &half),
                    this.binary(node, BinaryFn::Mul, x2, sn, dtype, &half),
                );
                let o1 = this.binary(node, BinaryFn::Sub, a1, a2, dtype, &half);
                let (b1, b2) = (
                    this.binary(node, BinaryFn::Mul, x2, c, dtype, &half),
                    this.binary(node, BinaryFn::Mul, x1, sn, dtype, &half),
                );
                let o2 = this.binary(node, BinaryFn::Add, b1, b2, dtype, &half);
                this.gqa_op(node, Op::Concat { axis: 3 }, vec![o1, o2], dtype, &full)
            };
            q = rotate(self, q, n);
            k = rotate(self, k, kv);
        }
        // The present cache: the past and this step's keys and values (what attention reads);
        // a ring buffer's output keeps all its slots, those after the total length as the past
        // had them (onnxruntime leaves them unspecified).
        let present = |this: &mut Self, past: &Option<CachePart>, x: BufferId| {
            let linear = match past {
                Some(c) if p > 0 => this.gqa_op(
                    node,
                    Op::Concat { axis: 2 },
                    vec![c.valid, x],
                    dtype,
                    &[b, kv, t, d],
                ),
                _ => x,
            };
            let output = match past {
                Some(CachePart { rest: Some(r), .. }) => this.gqa_op(
                    node,
                    Op::Concat { axis: 2 },
                    vec![linear, *r],
                    dtype,
                    &[b, kv, slots, d],
                ),
                _ => linear,
            };
            (linear, output)
        };
        let ((pk, out_k), (pv, out_v)) = (present(self, &past_k, k), present(self, &past_v, v));
        for (o, buf) in [(1, out_k), (2, out_v)] {
            if let Some(name) = node.outputs.get(o).filter(|n| !n.is_empty()) {
                self.ids.insert(name.clone(), buf);
            }
        }
        // Each query head reads kv head h / (n / kv).
        let g = n / kv;
        let expand = |this: &mut Self, x: BufferId| {
            let r = this.gqa_op(
                node,
                Op::ReshapeTo {
                    shape: vec![b, kv, 1, t, d],
                },
                vec![x],
                dtype,
                &[b, kv, 1, t, d],
            );
            let shape = this.ints(node, &[b as i64, kv as i64, g as i64, t as i64, d as i64]);
            let e = this.gqa_op(node, Op::Expand, vec![r, shape], dtype, &[b, kv, g, t, d]);
            this.gqa_op(
                node,
                Op::ReshapeTo {
                    shape: vec![b, n, t, d],
                },
                vec![e],
                dtype,
                &[b, n, t, d],
            )
        };
        let (ke, ve) = (expand(self, pk), expand(self, pv));
        let kt = self.gqa_op(
            node,
            Op::Transpose {
                perm: vec![0, 1, 3, 2],
            },
            vec![ke],
            dtype,
            &[b, n, d, t],
        );
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
        let mask = attention_mask(s, t, p, window);
        let mask = self.const_operand(&node.outputs[0], Tensor::f32(vec![s, t], mask));
        let masked = self.binary(node, BinaryFn::Add, scaled, mask, dtype, &[b, n, s, t]);
        // Attention sinks: one more logit per head in each softmax, whose weight is dropped.
        let (logits, width) = match given(11) {
            Some(sink) => {
                let sk = self.operand(&sink);
                let r = self.gqa_op(
                    node,
                    Op::ReshapeTo {
                        shape: vec![1, n, 1, 1],
                    },
                    vec![sk],
                    dtype,
                    &[1, n, 1, 1],
                );
                let shape = self.ints(node, &[b as i64, n as i64, s as i64, 1]);
                let e = self.gqa_op(node, Op::Expand, vec![r, shape], dtype, &[b, n, s, 1]);
                let cat = self.gqa_op(
                    node,
                    Op::Concat { axis: 3 },
                    vec![masked, e],
                    dtype,
                    &[b, n, s, t + 1],
                );
                (cat, t + 1)
            }
            None => (masked, t),
        };
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
        let ot = self.gqa_op(
            node,
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            vec![o],
            dtype,
            &[b, s, n, d],
        );
        let out = self.buffer_for_value(&node.outputs[0], BufferKind::Temp);
        self.emit(
            node,
            Op::ReshapeTo {
                shape: vec![b, s, n * d],
            },
            vec![Some(ot)],
            vec![out],
        );
        Ok(())
    }
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
