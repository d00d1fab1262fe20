//! Expert weights in the canonical layout of `moe.experts` (w_in [E,H,N], gated N = 2F as
//! gate|up; w_out [E,F,H]; b_in [E,N]; b_out [E,H]), and the candidate readings of a layer's
//! weight stacks: which stack is which, which way round, how gate and up are packed.

use ppmoe_runtime::program::Activation;
use ppmoe_runtime::tensor::Data;
use ppmoe_runtime::Tensor;

/// Transposes the last two dimensions of [E, a, b].
pub fn swap_last(t: &Tensor) -> Tensor {
    // A copy of the storage (f32 or half bits alike), transposed in place.
    let copy = Tensor {
        data: std::sync::Arc::new((*t.data).clone()),
        ..t.clone()
    };
    swap_last_owned(copy)
}

/// How gate and up share the N = 2F columns of a fused w_in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GatePacking {
    /// [gate | up] (Hugging Face's `gate_up_proj`, `chunk(2)`).
    GateUp,
    /// [up | gate].
    UpGate,
    /// g0, u0, g1, u1, ... (gpt-oss; ORT's swiglu_fusion = 1).
    Interleaved,
}

/// Reorders the last axis (size 2F) to [gate | up].
pub fn to_gate_up(t: &Tensor, p: GatePacking) -> Tensor {
    let n = *t.shape.last().unwrap_or(&0);
    let f = n / 2;
    let src: Vec<usize> = (0..n)
        .map(|c| {
            let (half, q) = (c / f, c % f);
            match p {
                GatePacking::GateUp => c,
                GatePacking::UpGate => (1 - half) * f + q,
                GatePacking::Interleaved => 2 * q + half,
            }
        })
        .collect();
    let rows = t.len() / n.max(1);
    let owned;
    let v: &[f32] = match t.as_f32() {
        Some(v) => v,
        None => {
            owned = t.to_f32();
            &owned
        }
    };
    let mut o = Vec::with_capacity(v.len());
    for r in 0..rows {
        o.extend(src.iter().map(|&s| v[r * n + s]));
    }
    Tensor::f32(t.shape.clone(), o).with_dtype(t.dtype)
}

/// Concatenates [E,H,F] gate and up into [E,H,2F].
pub fn concat_last(g: &Tensor, u: &Tensor) -> Tensor {
    let (e, h, f) = (g.shape[0], g.shape[1], g.shape[2]);
    let (gv, uv) = (
        g.as_f32()
            .map_or_else(|| g.to_f32().into(), std::borrow::Cow::Borrowed),
        u.as_f32()
            .map_or_else(|| u.to_f32().into(), std::borrow::Cow::Borrowed),
    );
    let mut o = Vec::with_capacity(2 * gv.len());
    for r in 0..e * h {
        o.extend_from_slice(&gv[r * f..(r + 1) * f]);
        o.extend_from_slice(&uv[r * f..(r + 1) * f]);
    }
    Tensor::f32(vec![e, h, 2 * f], o).with_dtype(g.dtype)
}

#[derive(Clone, Debug)]
pub struct ExpertFfn {
    pub w_in: Tensor,
    pub w_out: Tensor,
    pub b_in: Option<Tensor>,
    pub b_out: Option<Tensor>,
    pub activation: Activation,
    pub alpha: f32,
    pub beta: f32,
    pub limit: Option<f32>,
}

impl ExpertFfn {
    pub fn ffn_size(&self) -> usize {
        self.w_out.shape[1]
    }

    pub fn describe_activation(&self) -> String {
        match self.activation {
            Activation::Swiglu if self.alpha == 1.0 && self.beta == 0.0 && self.limit.is_none() => {
                "swiglu (silu-gated)".into()
            }
            Activation::Swiglu => format!(
                "clamped swiglu (alpha {}, beta {}, limit {})",
                self.alpha,
                self.beta,
                self.limit.map_or("none".into(), |l| l.to_string())
            ),
            a => format!("{a:?}").to_lowercase(),
        }
    }
}

/// What the ops of a layer's region say about its activation.
#[derive(Clone, Debug, Default)]
pub struct ActivationHints {
    pub erf: bool,
    pub tanh: bool,
    pub sigmoid: bool,
    pub relu: bool,
    /// Scalar constants the region multiplies or clamps with (gpt-oss's 1.702 and 7.0).
    pub scalars: Vec<f32>,
}

fn activations(gated: bool, h: &ActivationHints) -> Vec<(Activation, f32, f32, Option<f32>)> {
    if gated {
        let mut v = vec![(Activation::Swiglu, 1.0, 0.0, None)];
        if h.erf {
            v.push((Activation::Geglu, 1.0, 0.0, None));
        }
        let limit = h
            .scalars
            .iter()
            .copied()
            .find(|&s| s > 1.0 && h.scalars.contains(&-s));
        for &alpha in h.scalars.iter().filter(|&&s| s > 1.0 && s < 4.0) {
            for beta in [1.0, 0.0] {
                v.push((Activation::Swiglu, alpha, beta, limit));
                v.push((Activation::Swiglu, alpha, beta, None));
            }
        }
        v
    } else {
        let mut v = Vec::new();
        if h.erf {
            v.push(Activation::Gelu);
        }
        if h.tanh {
            v.push(Activation::GeluTanh);
        }
        if h.sigmoid {
            v.push(Activation::Silu);
        }
        if h.relu {
            v.push(Activation::Relu);
        }
        v.push(Activation::Identity);
        v.into_iter().map(|a| (a, 1.0, 0.0, None)).collect()
    }
}

/// Which way round a stack [E, a, b] is read.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Orient {
    AsIs,
    Swapped,
}

/// Where a reading's w_in comes from.
#[derive(Clone, Debug, PartialEq)]
enum InSource {
    One(usize, Orient),
    /// Separate gate and up stacks, concatenated along the last axis.
    Concat {
        gate: (usize, Orient),
        up: (usize, Orient),
    },
}

/// One reading of a layer's weight stacks as `moe.experts` weights, not yet materialised: a
/// check materialises only the experts its trial routing reaches, the raise the whole reading
/// once, so no wrong reading ever costs a copy of the weights.
#[derive(Clone, Debug)]
pub struct Reading {
    w_in: InSource,
    w_out: (usize, Orient),
    packing: GatePacking,
    b_in: Option<usize>,
    b_out: Option<usize>,
    pub activation: Activation,
    pub alpha: f32,
    pub beta: f32,
    pub limit: Option<f32>,
}

fn oriented(t: &Tensor, o: Orient) -> Tensor {
    match o {
        Orient::AsIs => t.clone(),
        Orient::Swapped => swap_last(t),
    }
}

/// Rows `ids` of the leading axis of `t`, in that order.
pub fn select_experts(t: &Tensor, ids: &[usize]) -> Tensor {
    let row = t.len() / t.shape[0].max(1);
    let mut shape = t.shape.clone();
    shape[0] = ids.len();
    let starts: Vec<usize> = ids.iter().map(|&e| e * row).collect();
    t.pick_runs(shape, &starts, row)
}

/// Transposes each [a, b] matrix of `v` (e of them) in place, through one matrix of scratch.
fn transpose_each<T: Copy + Default>(v: &mut [T], e: usize, a: usize, b: usize) {
    const TILE: usize = 32;
    let mut scratch = vec![T::default(); a * b];
    for m in v.chunks_exact_mut(a * b).take(e) {
        scratch.copy_from_slice(m);
        for i0 in (0..a).step_by(TILE) {
            for j0 in (0..b).step_by(TILE) {
                for i in i0..(i0 + TILE).min(a) {
                    for j in j0..(j0 + TILE).min(b) {
                        m[j * a + i] = scratch[i * b + j];
                    }
                }
            }
        }
    }
}

/// [E, a, b] -> [E, b, a], in place when nothing else holds the storage (else on a copy of
/// it); f32 or half-precision bits alike.
fn swap_last_owned(t: Tensor) -> Tensor {
    let (e, a, b) = (t.shape[0], t.shape[1], t.shape[2]);
    let data = std::sync::Arc::try_unwrap(t.data).unwrap_or_else(|shared| (*shared).clone());
    let data = match data {
        Data::F32(mut v) => {
            transpose_each(&mut v, e, a, b);
            Data::F32(v)
        }
        Data::Half(mut v) => {
            transpose_each(&mut v, e, a, b);
            Data::Half(v)
        }
        other => {
            let t = Tensor {
                data: std::sync::Arc::new(other),
                ..t
            };
            return swap_last(&t);
        }
    };
    Tensor {
        dtype: t.dtype,
        shape: vec![e, b, a],
        data: std::sync::Arc::new(data),
    }
}

fn oriented_owned(t: Tensor, o: Orient) -> Tensor {
    match o {
        Orient::AsIs => t,
        Orient::Swapped => swap_last_owned(t),
    }
}

impl Reading {
    /// The whole reading, taking the stacks over: a stack nothing else holds is reoriented in
    /// place (one expert's scratch beside it), so the raise never holds the weights twice.
    /// The stored type of each stack is kept (bf16 stays bf16).
    pub fn materialize_owned(&self, stacks: Vec<Tensor>, biases: &[Tensor]) -> ExpertFfn {
        let mut slots: Vec<Option<Tensor>> = stacks.into_iter().map(Some).collect();
        let mut take = |i: usize, o: Orient| {
            oriented_owned(
                slots[i]
                    .take()
                    .unwrap_or_else(|| Tensor::f32(vec![0, 0, 0], vec![])),
                o,
            )
        };
        let wi = match &self.w_in {
            InSource::One(i, o) => take(*i, *o),
            InSource::Concat { gate, up } => {
                let g = take(gate.0, gate.1);
                let u = take(up.0, up.1);
                let dtype = g.dtype;
                concat_last(&g, &u).with_dtype(dtype)
            }
        };
        let w_out = take(self.w_out.0, self.w_out.1);
        let pack = |t: Tensor| {
            if self.packing == GatePacking::GateUp {
                t
            } else {
                let dtype = t.dtype;
                to_gate_up(&t, self.packing).with_dtype(dtype)
            }
        };
        ExpertFfn {
            w_in: pack(wi),
            w_out,
            b_in: self.b_in.map(|b| pack(biases[b].clone())),
            b_out: self.b_out.map(|b| biases[b].clone()),
            activation: self.activation,
            alpha: self.alpha,
            beta: self.beta,
            limit: self.limit,
        }
    }

    /// The weights of this reading for the given experts (renumbered 0..), copied: what a
    /// check runs (the raise takes the whole reading with `materialize_owned`).
    pub fn materialize(
        &self,
        stacks: &[Tensor],
        biases: &[Tensor],
        experts: &[usize],
    ) -> ExpertFfn {
        let pick = |i: usize, o: Orient| oriented(&select_experts(&stacks[i], experts), o);
        let wi = match &self.w_in {
            InSource::One(i, o) => pick(*i, *o),
            InSource::Concat { gate, up } => concat_last(&pick(gate.0, gate.1), &pick(up.0, up.1)),
        };
        let pack = |t: Tensor| {
            if self.packing == GatePacking::GateUp {
                t
            } else {
                to_gate_up(&t, self.packing)
            }
        };
        ExpertFfn {
            w_in: pack(wi),
            w_out: pick(self.w_out.0, self.w_out.1),
            b_in: self.b_in.map(|b| pack(select_experts(&biases[b], experts))),
            b_out: self.b_out.map(|b| select_experts(&biases[b], experts)),
            activation: self.activation,
            alpha: self.alpha,
            beta: self.beta,
            limit: self.limit,
        }
    }
}

/// The readings of `stacks` ([E,a,b] weights) and `biases` ([E,n]) as one layer's experts,
/// for hidden size `h`. Each is checked numerically by the caller; most are wrong.
pub fn candidates(
    stacks: &[Tensor],
    biases: &[Tensor],
    h: usize,
    hints: &ActivationHints,
) -> Vec<Reading> {
    // Every orientation that puts the hidden size where the layout wants it (both when the
    // other size equals it too), with the [E, H, N] / [E, F, H] shape it gives.
    let as_in = |i: usize| -> Vec<(Orient, [usize; 3])> {
        let s = &stacks[i].shape;
        let mut v = Vec::new();
        if s[1] == h {
            v.push((Orient::AsIs, [s[0], s[1], s[2]]));
        }
        if s[2] == h {
            v.push((Orient::Swapped, [s[0], s[2], s[1]]));
        }
        v
    };
    let as_out = |i: usize| -> Vec<(Orient, [usize; 3])> {
        let s = &stacks[i].shape;
        let mut v = Vec::new();
        if s[2] == h {
            v.push((Orient::AsIs, [s[0], s[1], s[2]]));
        }
        if s[1] == h {
            v.push((Orient::Swapped, [s[0], s[2], s[1]]));
        }
        v
    };
    // (w_in source, its N, w_out, gated)
    let mut layouts: Vec<(InSource, usize, (usize, Orient), bool)> = Vec::new();
    match stacks.len() {
        2 => {
            for (i, o) in [(0, 1), (1, 0)] {
                for (oi, si) in as_in(i) {
                    for (oo, so) in as_out(o) {
                        let (n, f) = (si[2], so[1]);
                        if n == 2 * f {
                            layouts.push((InSource::One(i, oi), n, (o, oo), true));
                        }
                        if n == f {
                            layouts.push((InSource::One(i, oi), n, (o, oo), false));
                        }
                    }
                }
            }
        }
        3 => {
            for o in 0..3 {
                let rest: Vec<usize> = (0..3).filter(|&x| x != o).collect();
                for (g, u) in [(rest[0], rest[1]), (rest[1], rest[0])] {
                    for (og, sg) in as_in(g) {
                        for (ou, su) in as_in(u) {
                            for (oo, so) in as_out(o) {
                                if sg == su && sg[2] == so[1] {
                                    layouts.push((
                                        InSource::Concat {
                                            gate: (g, og),
                                            up: (u, ou),
                                        },
                                        2 * sg[2],
                                        (o, oo),
                                        true,
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        _ => {}
    }
    let mut out = Vec::new();
    for (w_in, n, w_out, gated) in layouts {
        let packings: &[GatePacking] = if gated && stacks.len() == 2 {
            &[
                GatePacking::GateUp,
                GatePacking::Interleaved,
                GatePacking::UpGate,
            ]
        } else {
            &[GatePacking::GateUp]
        };
        for &packing in packings {
            let b_in = biases.iter().position(|b| b.shape[1] == n);
            let b_out = biases
                .iter()
                .position(|b| b.shape[1] == h && (b.shape[1] != n || biases.len() > 1));
            for (activation, alpha, beta, limit) in activations(gated, hints) {
                out.push(Reading {
                    w_in: w_in.clone(),
                    w_out,
                    packing,
                    b_in,
                    b_out,
                    activation,
                    alpha,
                    beta,
                    limit,
                });
            }
        }
    }
    out
}
