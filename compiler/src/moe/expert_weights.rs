//! Expert weights in the canonical layout of `moe.experts` (w_in [E,H,N], gated N = 2F as
//! gate|up; w_out [E,F,H]; b_in [E,N]; b_out [E,H]), and the candidate readings of a layer's
//! weight stacks: which stack is which, which way round, how gate and up are packed.

use ppmoe_runtime::program::{Activation, ExpertLayout};
use ppmoe_runtime::tensor::Data;
use ppmoe_runtime::Tensor;

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

/// Copies `runs` (source, start, length) of the sources' storage, in order, into a tensor of
/// `shape`: f32 and half bits alike when the sources agree, so a bf16 stack stays bf16 bits.
fn assemble(sources: &[&Tensor], shape: Vec<usize>, runs: &[(usize, usize, usize)]) -> Tensor {
    fn copy<T: Copy>(v: &[&[T]], runs: &[(usize, usize, usize)]) -> Vec<T> {
        let mut out = Vec::with_capacity(runs.iter().map(|r| r.2).sum());
        for &(src, start, len) in runs {
            out.extend_from_slice(&v[src][start..start + len]);
        }
        out
    }
    let dtype = sources
        .first()
        .map_or(ppmoe_runtime::DType::F32, |t| t.dtype);
    let halves: Option<Vec<&[u16]>> = sources
        .iter()
        .map(|t| match &*t.data {
            Data::Half(b) if t.dtype == dtype => Some(&b[..]),
            _ => None,
        })
        .collect();
    let data = match halves {
        Some(h) => Data::Half(copy(&h, runs).into()),
        None => {
            let wide: Vec<std::borrow::Cow<[f32]>> = sources
                .iter()
                .map(|t| {
                    t.as_f32()
                        .map_or_else(|| t.to_f32().into(), std::borrow::Cow::Borrowed)
                })
                .collect();
            let refs: Vec<&[f32]> = wide.iter().map(|c| c.as_ref()).collect();
            return Tensor::f32(shape, copy(&refs, runs)).with_dtype(dtype);
        }
    };
    Tensor {
        dtype,
        shape,
        data: std::sync::Arc::new(data),
    }
}

/// Reorders the 2F gate/up entries along `axis` to [gate | up]: the last axis of an in-out
/// w_in or of a bias, axis 1 of a linear w_in (whole rows move there).
pub fn to_gate_up(t: &Tensor, p: GatePacking, axis: usize) -> Tensor {
    let n = t.shape.get(axis).copied().unwrap_or(0);
    let f = n / 2;
    let outer: usize = t.shape[..axis].iter().product();
    let inner: usize = t.shape[axis + 1..].iter().product();
    let mut runs = Vec::with_capacity(outer * n);
    for o in 0..outer {
        for c in 0..n {
            let (half, q) = (c / f.max(1), c % f.max(1));
            let src = match p {
                GatePacking::GateUp => c,
                GatePacking::UpGate => (1 - half) * f + q,
                GatePacking::Interleaved => 2 * q + half,
            };
            runs.push((0, (o * n + src) * inner, inner));
        }
    }
    assemble(&[t], t.shape.clone(), &runs)
}

/// Concatenates gate and up stacks of one shape along `axis` (2 for in-out [E,H,F] stacks,
/// 1 for linear [E,F,H] ones): gate's block, then up's, per expert.
pub fn concat_along(g: &Tensor, u: &Tensor, axis: usize) -> Tensor {
    let outer: usize = g.shape[..axis].iter().product();
    let run: usize = g.shape[axis..].iter().product();
    let runs: Vec<(usize, usize, usize)> = (0..outer)
        .flat_map(|o| [(0, o * run, run), (1, o * run, run)])
        .collect();
    let mut shape = g.shape.clone();
    shape[axis] *= 2;
    assemble(&[g, u], shape, &runs)
}

#[derive(Clone, Debug)]
pub struct ExpertFfn {
    /// How w_in and w_out lie (see `ExpertLayout`).
    pub layout: ExpertLayout,
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
        self.layout
            .dims(&self.w_in.shape, &self.w_out.shape)
            .map_or(0, |d| d.ffn)
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
            // Integer or boolean stacks are no expert weights; transposed element by element.
            let t = Tensor {
                data: std::sync::Arc::new(other),
                ..t
            };
            let idx = (0..e)
                .flat_map(|x| (0..b).flat_map(move |j| (0..a).map(move |i| (x * a + i) * b + j)));
            return t.pick(vec![e, b, a], idx);
        }
    };
    Tensor {
        dtype: t.dtype,
        shape: vec![e, b, a],
        data: std::sync::Arc::new(data),
    }
}

impl Orient {
    /// The layout a stack read this way is already in: swapped is an `nn.Linear` stack.
    fn layout(self) -> ExpertLayout {
        match self {
            Orient::AsIs => ExpertLayout::InOut,
            Orient::Swapped => ExpertLayout::Linear,
        }
    }
}

/// A stack read as `o`, brought to `layout`: as it lies where they agree (shared, no copy),
/// else transposed (in place when nothing else holds it).
fn in_layout(t: Tensor, o: Orient, layout: ExpertLayout) -> Tensor {
    if o.layout() == layout {
        t
    } else {
        swap_last_owned(t)
    }
}

impl Reading {
    /// The layout this reading keeps: the one w_in's stack lies in (the larger stack), so a
    /// model's experts are read where they lie and at most w_out is ever transposed.
    pub fn layout(&self) -> ExpertLayout {
        match &self.w_in {
            InSource::One(_, o) => o.layout(),
            InSource::Concat { gate, .. } => gate.1.layout(),
        }
    }

    /// The axis of w_in that holds N in this reading's layout.
    fn n_axis(&self) -> usize {
        match self.layout() {
            ExpertLayout::InOut => 2,
            ExpertLayout::Linear => 1,
        }
    }

    /// w_in from its stacks (already the experts wanted), gate and up packed as [gate | up].
    fn assemble_w_in(&self, mut take: impl FnMut(usize, Orient) -> Tensor) -> Tensor {
        let w_in = match &self.w_in {
            InSource::One(i, o) => take(*i, *o),
            InSource::Concat { gate, up } => {
                concat_along(&take(gate.0, gate.1), &take(up.0, up.1), self.n_axis())
            }
        };
        self.packed(w_in, self.n_axis())
    }

    fn packed(&self, t: Tensor, axis: usize) -> Tensor {
        if self.packing == GatePacking::GateUp {
            t
        } else {
            to_gate_up(&t, self.packing, axis)
        }
    }

    fn ffn(
        &self,
        w_in: Tensor,
        w_out: Tensor,
        b_in: Option<Tensor>,
        b_out: Option<Tensor>,
    ) -> ExpertFfn {
        ExpertFfn {
            layout: self.layout(),
            w_in,
            w_out,
            b_in: b_in.map(|b| self.packed(b, 1)),
            b_out,
            activation: self.activation,
            alpha: self.alpha,
            beta: self.beta,
            limit: self.limit,
        }
    }

    /// The whole reading, taking the stacks over: stacks are kept where they lie (read in
    /// their own layout), so the raise neither copies nor transposes a model's usual weights.
    /// The stored type of each stack is kept (bf16 stays bf16).
    pub fn materialize_owned(&self, stacks: Vec<Tensor>, biases: &[Tensor]) -> ExpertFfn {
        let layout = self.layout();
        let mut slots: Vec<Option<Tensor>> = stacks.into_iter().map(Some).collect();
        let mut take = |i: usize, o: Orient| {
            let t = slots[i]
                .take()
                .unwrap_or_else(|| Tensor::f32(vec![0, 0, 0], vec![]));
            in_layout(t, o, layout)
        };
        let w_in = self.assemble_w_in(&mut take);
        let w_out = take(self.w_out.0, self.w_out.1);
        self.ffn(
            w_in,
            w_out,
            self.b_in.map(|b| biases[b].clone()),
            self.b_out.map(|b| biases[b].clone()),
        )
    }

    /// The weights of this reading for the given experts (renumbered 0..), copied: what a
    /// check runs (the raise takes the whole reading with `materialize_owned`).
    pub fn materialize(
        &self,
        stacks: &[Tensor],
        biases: &[Tensor],
        experts: &[usize],
    ) -> ExpertFfn {
        let layout = self.layout();
        let pick = |i: usize, o: Orient| in_layout(select_experts(&stacks[i], experts), o, layout);
        let w_in = self.assemble_w_in(pick);
        let w_out = pick(self.w_out.0, self.w_out.1);
        self.ffn(
            w_in,
            w_out,
            self.b_in.map(|b| select_experts(&biases[b], experts)),
            self.b_out.map(|b| select_experts(&biases[b], experts)),
        )
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
    let layouts = match stacks.len() {
        2 => two_stack_layouts(stacks, h),
        3 => three_stack_layouts(stacks, h),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for Layout {
        w_in,
        n,
        w_out,
        gated,
    } in layouts
    {
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

/// One way the stacks can be the two projections: the first's source and width N, the
/// second's stack and orientation, and whether the FFN is gated (N = 2F).
struct Layout {
    w_in: InSource,
    n: usize,
    w_out: (usize, Orient),
    gated: bool,
}

/// Every orientation of stack `i` that puts the hidden size where the first projection
/// (`first`: [E, H, N]) or the second ([E, F, H]) wants it (both when the other size equals it
/// too), with the shape it gives.
fn orientations(stacks: &[Tensor], i: usize, h: usize, first: bool) -> Vec<(Orient, [usize; 3])> {
    let s = &stacks[i].shape;
    let (as_is, swapped) = if first { (s[1], s[2]) } else { (s[2], s[1]) };
    let mut v = Vec::new();
    if as_is == h {
        v.push((Orient::AsIs, [s[0], s[1], s[2]]));
    }
    if swapped == h {
        v.push((Orient::Swapped, [s[0], s[2], s[1]]));
    }
    v
}

/// Two stacks: either is the first projection (gated or not), the other the second.
fn two_stack_layouts(stacks: &[Tensor], h: usize) -> Vec<Layout> {
    let mut layouts = Vec::new();
    for (i, o) in [(0, 1), (1, 0)] {
        for (oi, si) in orientations(stacks, i, h, true) {
            for (oo, so) in orientations(stacks, o, h, false) {
                let (n, f) = (si[2], so[1]);
                for gated in [true, false] {
                    if n == if gated { 2 * f } else { f } {
                        layouts.push(Layout {
                            w_in: InSource::One(i, oi),
                            n,
                            w_out: (o, oo),
                            gated,
                        });
                    }
                }
            }
        }
    }
    layouts
}

/// Three stacks: one is the second projection, the other two gate and up (either way round)
/// of one shape, concatenated into the first.
fn three_stack_layouts(stacks: &[Tensor], h: usize) -> Vec<Layout> {
    let mut layouts = Vec::new();
    for o in 0..3 {
        let rest: Vec<usize> = (0..3).filter(|&x| x != o).collect();
        for (g, u) in [(rest[0], rest[1]), (rest[1], rest[0])] {
            for (og, sg) in orientations(stacks, g, h, true) {
                for (ou, su) in orientations(stacks, u, h, true) {
                    for (oo, so) in orientations(stacks, o, h, false) {
                        if sg == su && sg[2] == so[1] {
                            layouts.push(Layout {
                                w_in: InSource::Concat {
                                    gate: (g, og),
                                    up: (u, ou),
                                },
                                n: 2 * sg[2],
                                w_out: (o, oo),
                                gated: true,
                            });
                        }
                    }
                }
            }
        }
    }
    layouts
}
