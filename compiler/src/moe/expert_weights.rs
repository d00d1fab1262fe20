//! Expert weights in the canonical layout of `moe.experts` (w_in [E,H,N], gated N = 2F as
//! gate|up; w_out [E,F,H]; b_in [E,N]; b_out [E,H]), and the candidate readings of a layer's
//! weight stacks: which stack is which, which way round, how gate and up are packed.

use ppmoe_runtime::program::Activation;
use ppmoe_runtime::Tensor;

/// Transposes the last two dimensions of [E, a, b].
pub fn swap_last(t: &Tensor) -> Tensor {
    let (e, a, b) = (t.shape[0], t.shape[1], t.shape[2]);
    let v = t.to_f32();
    let mut o = vec![0f32; v.len()];
    for x in 0..e {
        for i in 0..a {
            for j in 0..b {
                o[x * a * b + j * a + i] = v[x * a * b + i * b + j];
            }
        }
    }
    Tensor::f32(vec![e, b, a], o)
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
    let v = t.to_f32();
    let mut o = Vec::with_capacity(v.len());
    for r in 0..rows {
        o.extend(src.iter().map(|&s| v[r * n + s]));
    }
    Tensor::f32(t.shape.clone(), o)
}

/// Concatenates [E,H,F] gate and up into [E,H,2F].
pub fn concat_last(g: &Tensor, u: &Tensor) -> Tensor {
    let (e, h, f) = (g.shape[0], g.shape[1], g.shape[2]);
    let (gv, uv) = (g.to_f32(), u.to_f32());
    let mut o = Vec::with_capacity(2 * gv.len());
    for r in 0..e * h {
        o.extend_from_slice(&gv[r * f..(r + 1) * f]);
        o.extend_from_slice(&uv[r * f..(r + 1) * f]);
    }
    Tensor::f32(vec![e, h, 2 * f], o)
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
            Activation::Swiglu if self.alpha == 1.0 && self.beta == 0.0 && self.limit.is_none() => "swiglu (silu-gated)".into(),
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
        let limit = h.scalars.iter().copied().find(|&s| s > 1.0 && h.scalars.contains(&-s));
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

/// The readings of `stacks` ([E,a,b] weights) and `biases` ([E,n]) as one layer's experts,
/// for hidden size `h`. Each is checked numerically by the caller; most are wrong.
pub fn candidates(stacks: &[Tensor], biases: &[Tensor], h: usize, hints: &ActivationHints) -> Vec<ExpertFfn> {
    // Every orientation that puts the hidden size where the layout wants it (both when the
    // other size equals it too).
    let as_in = |t: &Tensor| -> Vec<Tensor> {
        let mut v = Vec::new();
        if t.shape[1] == h {
            v.push(t.clone());
        }
        if t.shape[2] == h {
            v.push(swap_last(t));
        }
        v
    };
    let as_out = |t: &Tensor| -> Vec<Tensor> {
        let mut v = Vec::new();
        if t.shape[2] == h {
            v.push(t.clone());
        }
        if t.shape[1] == h {
            v.push(swap_last(t));
        }
        v
    };
    // (w_in [E,H,N] before packing fixes, w_out [E,F,H], packing choices)
    let mut layouts: Vec<(Tensor, Tensor, bool)> = Vec::new();
    match stacks.len() {
        2 => {
            for (i, o) in [(0, 1), (1, 0)] {
                for wi in as_in(&stacks[i]) {
                    for wo in as_out(&stacks[o]) {
                        let (n, f) = (wi.shape[2], wo.shape[1]);
                        if n == 2 * f {
                            layouts.push((wi.clone(), wo.clone(), true));
                        }
                        if n == f {
                            layouts.push((wi.clone(), wo.clone(), false));
                        }
                    }
                }
            }
        }
        3 => {
            for o in 0..3 {
                let rest: Vec<usize> = (0..3).filter(|&x| x != o).collect();
                for (g, u) in [(rest[0], rest[1]), (rest[1], rest[0])] {
                    for wg in as_in(&stacks[g]) {
                        for wu in as_in(&stacks[u]) {
                            for wo in as_out(&stacks[o]) {
                                if wg.shape == wu.shape && wg.shape[2] == wo.shape[1] {
                                    layouts.push((concat_last(&wg, &wu), wo.clone(), true));
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
    for (wi, wo, gated) in layouts {
        let n = wi.shape[2];
        let packings: &[GatePacking] = if gated && stacks.len() == 2 { &[GatePacking::GateUp, GatePacking::Interleaved, GatePacking::UpGate] } else { &[GatePacking::GateUp] };
        for &p in packings {
            let w_in = if p == GatePacking::GateUp { wi.clone() } else { to_gate_up(&wi, p) };
            let b_in = biases.iter().find(|b| b.shape[1] == n).map(|b| if p == GatePacking::GateUp { b.clone() } else { to_gate_up(b, p) });
            let b_out = biases.iter().find(|b| b.shape[1] == h && (b.shape[1] != n || biases.len() > 1)).cloned();
            for (activation, alpha, beta, limit) in activations(gated, hints) {
                out.push(ExpertFfn { w_in: w_in.clone(), w_out: wo.clone(), b_in: b_in.clone(), b_out: b_out.clone(), activation, alpha, beta, limit });
            }
        }
    }
    out
}
