//! The instruction set of a rank's program: the `core` ops with ONNX semantics, shapes static
//! where the compiler could make them so. Shape-like operands (a Reshape's target, a Slice's
//! bounds) are buffers, folded to constants by the compiler wherever they do not depend on data.

use crate::tensor::DType;
use serde::{Deserialize, Serialize};

pub type BufferId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnaryFn {
    Neg,
    Abs,
    Sqrt,
    Reciprocal,
    Exp,
    Log,
    Sigmoid,
    Tanh,
    Erf,
    Relu,
    Not,
    Sin,
    Cos,
    Floor,
    Ceil,
    Sign,
    /// GELU, exact (erf).
    Gelu,
    /// GELU, tanh approximation.
    GeluTanh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryFn {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    Mod,
    Equal,
    Less,
    Greater,
    LessOrEqual,
    GreaterOrEqual,
    And,
    Or,
    Xor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceFn {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    Softmax,
    Sigmoid,
    /// PhiMoE's sparsemixer (top 2, inference): each choice is the first largest logit not
    /// chosen yet, its weight that logit's softmax over the logits left, those far below it
    /// masked out: logit s is masked where (m - s) / max(|s|, m) exceeds the route's
    /// `mask_threshold` (m: the choice's logit).
    Sparsemixer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteOrder {
    /// Score all experts, then pick the top k (Mixtral, Qwen, OLMoE, DeepSeek, ORT's MoE).
    SoftmaxThenTopk,
    /// Pick the top k logits, then softmax over those k (gpt-oss); equal to the other order
    /// with renormalisation, kept apart so that the IR says what the source said.
    TopkThenSoftmax,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Gated: min(g, limit) * sigmoid(alpha * min(g, limit)) * (clamp(u, -limit, limit) + beta);
    /// alpha 1, beta 0, no limit is SiLU-gated (Mixtral); 1.702, 1, 7 is gpt-oss's.
    Swiglu,
    /// Gated with GELU (erf) on the gate.
    Geglu,
    Silu,
    Gelu,
    GeluTanh,
    Relu,
    Identity,
}

impl Activation {
    pub fn is_gated(self) -> bool {
        matches!(self, Activation::Swiglu | Activation::Geglu)
    }
}

/// How `moe.experts` and `moe.expert_ffn` hold their expert matrices (gated: N = 2F, gate|up;
/// biases b_in [E,N], b_out [E,H] in both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpertLayout {
    /// w_in [E,H,N], w_out [E,F,H]: rows times W (JAX's einsum form, ORT's older MoE).
    #[default]
    InOut,
    /// w_in [E,N,H], w_out [E,H,F]: rows times Wᵀ, each expert's matrices as `nn.Linear`
    /// stores them (Hugging Face's stacks, vLLM, ORT's current MoE). Read where they lie: a
    /// GEMM takes either orientation, so the compiler never transposes gigabytes of weights.
    Linear,
}

/// The sizes of one expert FFN, read off its weight stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertDims {
    pub experts: usize,
    pub hidden: usize,
    /// Columns of the first projection (2F when gated).
    pub n: usize,
    pub ffn: usize,
}

impl ExpertLayout {
    /// E, H, N and F of stacks `w_in` and `w_out` in this layout; None unless both are 3-D
    /// and agree on E and H.
    pub fn dims(self, w_in: &[usize], w_out: &[usize]) -> Option<ExpertDims> {
        let (&[e, a, b], &[e2, c, d]) = (w_in, w_out) else {
            return None;
        };
        let (hidden, n, ffn, h2) = match self {
            ExpertLayout::InOut => (a, b, c, d),
            ExpertLayout::Linear => (b, a, d, c),
        };
        (e == e2 && hidden == h2).then_some(ExpertDims {
            experts: e,
            hidden,
            n,
            ffn,
        })
    }

    /// The shapes this layout wants, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            ExpertLayout::InOut => "w_in [E,H,N], w_out [E,F,H]",
            ExpertLayout::Linear => "w_in [E,N,H], w_out [E,H,F]",
        }
    }
}

/// One `core` op. Optional operands are `None` in the instruction's input list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Unary {
        f: UnaryFn,
    },
    Binary {
        f: BinaryFn,
    },
    /// (cond, x, y)
    Where,
    Cast {
        to: DType,
    },
    /// numpy matmul with batch broadcasting
    MatMul,
    Softmax {
        axis: i64,
        log: bool,
    },
    /// (x, axes?)
    Reduce {
        f: ReduceFn,
        keepdims: bool,
        noop_with_empty_axes: bool,
    },
    ArgMax {
        axis: i64,
        keepdims: bool,
        max: bool,
    },
    /// (x, shape)
    Reshape {
        allowzero: bool,
    },
    /// A reshape to a static shape (what Reshape, Squeeze, Unsqueeze and Flatten become when
    /// the compiler knows the result's shape).
    ReshapeTo {
        shape: Vec<usize>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    Concat {
        axis: i64,
    },
    /// (x, split sizes?) -> outputs
    Split {
        axis: i64,
    },
    /// (x, starts, ends, axes?, steps?)
    Slice,
    /// (x, axes?)
    Squeeze,
    /// (x, axes)
    Unsqueeze,
    Flatten {
        axis: i64,
    },
    /// (x, shape)
    Expand,
    /// (x, repeats)
    Tile,
    Gather {
        axis: i64,
    },
    GatherElements {
        axis: i64,
    },
    GatherNd {
        batch_dims: usize,
    },
    /// (data, indices, updates)
    ScatterNd {
        reduction: Reduction,
    },
    ScatterElements {
        axis: i64,
        reduction: Reduction,
    },
    /// (x, k) -> (values, indices)
    TopK {
        axis: i64,
        largest: bool,
    },
    /// (indices, depth, values)
    OneHot {
        axis: i64,
    },
    /// (start, limit, delta)
    Range,
    Shape {
        start: i64,
        end: Option<i64>,
    },
    /// (shape)
    ConstantOfShape {
        value: f64,
        dtype: DType,
    },
    /// (x, k?)
    Trilu {
        upper: bool,
    },
    /// (x, axis)
    CumSum {
        exclusive: bool,
        reverse: bool,
    },
    Einsum {
        equation: String,
    },
    /// (x, scale, bias?)
    LayerNorm {
        axis: i64,
        epsilon: f32,
    },
    NonZero,
    /// `moe.route`: (logits [T,E], score-correction bias [E]?) -> (weights [T,k], ids [T,k]).
    /// capacity 0 is dropless; otherwise each expert keeps its first `capacity` assignments,
    /// taken slot by slot (all tokens' first choices before any second choice, as GShard).
    MoeRoute {
        top_k: usize,
        scoring: Scoring,
        order: RouteOrder,
        renormalize: bool,
        n_group: usize,
        topk_group: usize,
        routed_scaling_factor: f32,
        capacity: usize,
        /// Sparsemixer scoring's masking threshold (2 x PhiMoE's jitter_eps); 0 otherwise.
        #[serde(default, skip_serializing_if = "is_zero")]
        mask_threshold: f32,
    },
    /// `moe.experts`: (x [T,H], weights [T,k], ids [T,k], w_in, w_out, b_in?, b_out?) -> [T,H],
    /// the sum over k of weight * FFN_id(x), weights in `layout`.
    MoeExperts {
        activation: Activation,
        alpha: f32,
        beta: f32,
        /// The SwiGLU clamp; none when unbounded.
        limit: Option<f32>,
        #[serde(default)]
        layout: ExpertLayout,
    },
    /// `moe.local_slice` (PPMoE): (x [T,H], ids [T,k]) -> (rows [N,H] of the slots routed to
    /// experts [first, first + count), grouped by expert; offsets [count + 1]; slots [N], each
    /// row's t * k + j).
    MoeLocalSlice {
        first_expert: usize,
        num_local_experts: usize,
    },
    /// `moe.expert_ffn`: (rows [N,H], offsets [L+1], w_in, w_out, b_in?, b_out?) -> [N,H]: rows
    /// offsets[l]..offsets[l+1] through local expert l, weights in `layout`.
    MoeExpertFfn {
        activation: Activation,
        alpha: f32,
        beta: f32,
        limit: Option<f32>,
        #[serde(default)]
        layout: ExpertLayout,
    },
    /// `moe.scatter_combine` (PPMoE): (out [N,H], slots [N], weights [T,k]) -> partial [T,H],
    /// each row scaled by its slot's weight and added to its token.
    MoeScatterCombine {
        tokens: usize,
    },
    /// `moe.dispatch` (all-to-all): (x [T,H], ids [T,k]) -> buckets [E, C, H], slot-major
    /// positions; C = T * k holds every slot, so nothing is dropped here.
    MoeDispatch {
        num_experts: usize,
        capacity: usize,
    },
    /// `moe.combine` (all-to-all): (buckets [E,C,H], weights [T,k], ids [T,k]) -> [T,H].
    MoeCombine {
        capacity: usize,
    },
    /// `shard.all_reduce` (sum) over the ranks of `group`.
    AllReduce {
        group: Vec<usize>,
    },
    /// `shard.all_gather` along `axis`, in group order.
    AllGather {
        group: Vec<usize>,
        axis: usize,
    },
    /// `shard.all_to_all`: split `split_axis` into group-size pieces, piece i to the i-th rank,
    /// received pieces concatenated along `concat_axis` in group order.
    AllToAll {
        group: Vec<usize>,
        split_axis: usize,
        concat_axis: usize,
    },
    /// `shard.send` to rank `peer` (pipeline boundary); `tag` pairs it with its `recv`.
    Send {
        peer: usize,
        tag: u64,
    },
    /// `shard.recv` from rank `peer`; the result has the output buffer's type.
    Recv {
        peer: usize,
        tag: u64,
    },
    /// A slice of the token axis (axis `axis`, piece `index` of `parts`), for token-split work.
    TokenSlice {
        axis: usize,
        index: usize,
        parts: usize,
    },
}

impl Op {
    /// The dialect an op prints in: `moe` for the MoE ops, `core` for the rest.
    pub fn dialect(&self) -> &'static str {
        match self {
            Op::MoeRoute { .. }
            | Op::MoeExperts { .. }
            | Op::MoeLocalSlice { .. }
            | Op::MoeExpertFfn { .. }
            | Op::MoeScatterCombine { .. }
            | Op::MoeDispatch { .. }
            | Op::MoeCombine { .. } => "moe",
            Op::AllReduce { .. }
            | Op::AllGather { .. }
            | Op::AllToAll { .. }
            | Op::Send { .. }
            | Op::Recv { .. } => "shard",
            _ => "core",
        }
    }

    /// The op's name in the `core` stage's IR: the serde tag, or the function for the
    /// elementwise and reduction families (`core.add`, `core.reduce_sum`).
    pub fn name(&self) -> String {
        let tag = |v: serde_json::Result<serde_json::Value>| {
            v.ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        match self {
            Op::Unary { f } => tag(serde_json::to_value(f)),
            Op::Binary { f } => tag(serde_json::to_value(f)),
            Op::Reduce { f, .. } => format!("reduce_{}", tag(serde_json::to_value(f))),
            Op::MoeRoute { .. } => "route".into(),
            Op::MoeExperts { .. } => "experts".into(),
            Op::MoeLocalSlice { .. } => "local_slice".into(),
            Op::MoeExpertFfn { .. } => "expert_ffn".into(),
            Op::MoeScatterCombine { .. } => "scatter_combine".into(),
            Op::MoeDispatch { .. } => "dispatch".into(),
            Op::MoeCombine { .. } => "combine".into(),
            Op::AllReduce { .. } => "all_reduce".into(),
            Op::AllGather { .. } => "all_gather".into(),
            Op::AllToAll { .. } => "all_to_all".into(),
            Op::Send { .. } => "send".into(),
            Op::Recv { .. } => "recv".into(),
            _ => serde_json::to_value(self)
                .ok()
                .and_then(|v| v.get("op").and_then(|t| t.as_str()).map(str::to_string))
                .unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instruction {
    #[serde(flatten)]
    pub op: Op,
    pub inputs: Vec<Option<BufferId>>,
    pub outputs: Vec<BufferId>,
    /// The source node, for messages.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub origin: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferKind {
    Input,
    Weight,
    Temp,
    Output,
}

/// A buffer of the program; `shape` entries are `None` where a size is only known at run time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Buffer {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Option<usize>>,
    pub kind: BufferKind,
}

/// One rank's program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub rank: usize,
    pub buffers: Vec<Buffer>,
    pub inputs: Vec<BufferId>,
    pub outputs: Vec<BufferId>,
    pub instructions: Vec<Instruction>,
    /// The safetensors file (relative to the bundle) holding this rank's weights.
    pub weights_file: String,
    /// Where the rank sits in the grid: (dp, pp stage, tp index).
    #[serde(default)]
    pub coords: [usize; 3],
    /// For the CUDA backend (`compile --target cuda`): how each instruction runs on the GPU,
    /// and the file holding this rank's kernels as PTX.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu: Vec<GpuOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptx_file: Option<String>,
}

impl Program {
    /// Checks the program against its own tables before anything runs: every buffer id in
    /// range, each op's result count, transpose permutations, one GPU plan entry per
    /// instruction. The error names the instruction and the field.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.buffers.len();
        let check = |what: String, id: BufferId| {
            if id < n {
                Ok(())
            } else {
                Err(format!(
                    "{what} names buffer {id}, past the buffer table ({n} buffers)"
                ))
            }
        };
        for &id in &self.inputs {
            check("the program's inputs".into(), id)?;
        }
        for &id in &self.outputs {
            check("the program's outputs".into(), id)?;
        }
        for (i, ins) in self.instructions.iter().enumerate() {
            let at = |field: &str| format!("instruction {i} ({}) {field}", ins.op.name());
            for id in ins.inputs.iter().flatten() {
                check(at("inputs"), *id)?;
            }
            for &id in &ins.outputs {
                check(at("outputs"), id)?;
            }
            let results = match ins.op {
                Op::Send { .. } => Some(0),
                Op::TopK { .. } | Op::MoeRoute { .. } => Some(2),
                Op::MoeLocalSlice { .. } => Some(3),
                Op::Split { .. } => None,
                _ => Some(1),
            };
            if let Some(r) = results.filter(|&r| r != ins.outputs.len()) {
                return Err(format!(
                    "{} has {} results where the op makes {r}",
                    at("outputs"),
                    ins.outputs.len()
                ));
            }
            if ins.inputs.is_empty() && !matches!(ins.op, Op::Recv { .. }) {
                return Err(format!("{} is empty", at("inputs")));
            }
            if let Op::Transpose { perm } = &ins.op {
                let rank = ins
                    .inputs
                    .first()
                    .copied()
                    .flatten()
                    .map_or(perm.len(), |b| self.buffers[b].shape.len());
                if !crate::kernels::shape::is_permutation(perm, rank) {
                    return Err(format!(
                        "{}: {perm:?} is not a permutation of {rank} axes",
                        at("perm")
                    ));
                }
            }
        }
        if !self.gpu.is_empty() && self.gpu.len() != self.instructions.len() {
            return Err(format!(
                "the GPU plan has {} entries for {} instructions",
                self.gpu.len(),
                self.instructions.len()
            ));
        }
        self.validate_fusions()
    }

    /// Whether this rank sends and its sends are its only communication (no receives or
    /// collectives, fused into a step or not): the first stage of a pure pipeline, whose sends
    /// can then go on a stream of their own (the CUDA backend's `pipeline_send`).
    pub fn communicates_only_by_sends(&self) -> bool {
        let send = |ins: &Instruction| matches!(ins.op, Op::Send { .. });
        self.instructions.iter().any(send)
            && self
                .instructions
                .iter()
                .all(|ins| !ins.op.is_communication() || send(ins))
    }

    /// Whether the program sends or receives pipeline messages (point to point, tagged by
    /// microbatch), beside or instead of collectives.
    pub fn communicates_point_to_point(&self) -> bool {
        self.instructions
            .iter()
            .any(|ins| matches!(ins.op, Op::Send { .. } | Op::Recv { .. }))
    }

    /// The buffers a generated kernel step (`Kernel`, `Pointwise`) of instruction `i` takes as
    /// its parameters, in order: the float and boolean inputs (a concat's every input: it
    /// moves integers exact in f32 too), then the results (a chain's one).
    pub fn generated_params(&self, i: usize, how: &GpuOp) -> Option<Vec<usize>> {
        let (inputs, results) = self.generated_operands(i, how)?;
        Some(inputs.into_iter().chain(results.iter().copied()).collect())
    }

    /// `generated_params` as (inputs, results): what the CUDA backend passes the kernel.
    pub fn generated_operands(&self, i: usize, how: &GpuOp) -> Option<(Vec<usize>, &[usize])> {
        let ins = self.instructions.get(i)?;
        match how {
            GpuOp::Kernel { .. } => {
                let concat = matches!(ins.op, Op::Concat { .. });
                let on_device = |&b: &usize| concat || self.buffers[b].dtype.on_device_as_f32();
                let inputs = ins.inputs.iter().flatten().copied().filter(on_device);
                Some((inputs.collect(), &ins.outputs[..]))
            }
            GpuOp::Pointwise { inputs, .. } => {
                Some((inputs.clone(), &ins.outputs[..ins.outputs.len().min(1)]))
            }
            _ => None,
        }
    }

    /// Whether every reader of buffer `id` takes it as bf16 bits: a route (its logits), a
    /// GEMM (a bf16 GEMM's operand), a generated kernel whose parameters for it are all bf16
    /// (for a member of a fused chain, the chain's kernel), a reshape whose result is so read;
    /// a result of the program counts as such a reader (it is widened when it is brought back).
    /// The CUDA backend keeps such a buffer, a bf16 GEMM's result, as its rounded bits.
    pub fn reads_as_bits(&self, id: usize) -> bool {
        let output = self.outputs.contains(&id);
        let mut readers = self
            .instructions
            .iter()
            .enumerate()
            .filter(|(_, ins)| ins.inputs.contains(&Some(id)))
            .peekable();
        (output || readers.peek().is_some())
            && readers.all(|(i, ins)| match self.gpu.get(i) {
                Some(GpuOp::Route { .. }) => {
                    ins.inputs.first() == Some(&Some(id)) && !ins.inputs[1..].contains(&Some(id))
                }
                Some(GpuOp::Gemm) => true,
                Some(GpuOp::Alias) => ins.outputs.iter().all(|&o| self.reads_as_bits(o)),
                Some(GpuOp::Fused { into }) => self.takes_bits(*into, id),
                Some(_) => self.takes_bits(i, id),
                None => false,
            })
    }

    /// Whether generated kernel step `i` takes buffer `id` only through bf16 parameters.
    fn takes_bits(&self, i: usize, id: usize) -> bool {
        match self.gpu.get(i) {
            Some(how @ (GpuOp::Kernel { bf16, .. } | GpuOp::Pointwise { bf16, .. })) => {
                self.generated_params(i, how).is_some_and(|ps| {
                    let mut at = ps.iter().enumerate().filter(|(_, &b)| b == id).peekable();
                    at.peek().is_some() && at.all(|(k, _)| bf16.contains(&k))
                })
            }
            _ => false,
        }
    }

    /// Each `Fused` entry points at a later step (`LocalExperts`, `AllToAllExperts` or
    /// `Pointwise`) that names it back, and each such step names members of the right ops
    /// before it.
    fn validate_fusions(&self) -> Result<(), String> {
        let op_at = |i: usize| self.instructions.get(i).map(|ins| &ins.op);
        for (i, g) in self.gpu.iter().enumerate() {
            let at = |what: String| format!("GPU plan entry {i}: {what}");
            match g {
                GpuOp::Fused { into } => {
                    let names_back = match self.gpu.get(*into) {
                        Some(GpuOp::LocalExperts { slice, ffn, .. }) => *slice == i || *ffn == i,
                        Some(GpuOp::AllToAllExperts { members, .. }) => members.contains(&i),
                        Some(GpuOp::Pointwise { members, .. }) => members.contains(&i),
                        _ => false,
                    };
                    if *into <= i || !names_back {
                        return Err(at(format!(
                            "fused into {into}, which is no later step naming it"
                        )));
                    }
                }
                GpuOp::Pointwise {
                    inputs, members, ..
                } => {
                    let fused = members
                        .iter()
                        .all(|&m| m < i && self.gpu.get(m) == Some(&GpuOp::Fused { into: i }));
                    let on_device = |b: &usize| {
                        self.buffers
                            .get(*b)
                            .is_some_and(|b| b.dtype.on_device_as_f32())
                    };
                    // The kernel reads only the chain's operands from outside it (its shapes
                    // were baked in for those), never a member's result.
                    let chain = || members.iter().chain([&i]).map(|&m| &self.instructions[m]);
                    let read_by_chain =
                        |b: &usize| chain().any(|ins| ins.inputs.contains(&Some(*b)));
                    let made_in_chain = |b: &usize| chain().any(|ins| ins.outputs.contains(b));
                    let outside = |b: &usize| read_by_chain(b) && !made_in_chain(b);
                    if !fused || !inputs.iter().all(|b| on_device(b) && outside(b)) {
                        return Err(at(format!("pointwise chain of members {members:?} and inputs {inputs:?}: expected earlier instructions fused into this one, and float or boolean buffers the chain reads from outside it")));
                    }
                }
                GpuOp::ReducedBy { step } => {
                    let named = matches!(self.gpu.get(*step), Some(GpuOp::LocalExperts { reduce: Some(r), .. }) if *r == i);
                    if *step >= i || !named || !matches!(op_at(i), Some(Op::AllReduce { .. })) {
                        return Err(at(format!(
                            "reduced by {step}, which is no earlier local-experts step naming this all-reduce"
                        )));
                    }
                }
                GpuOp::LocalExperts {
                    slice, ffn, reduce, ..
                } => {
                    // The all-reduce it does reduces its own sum.
                    let sum = self.instructions[i].outputs.first();
                    let reduced = reduce.is_none_or(|r| {
                        r > i
                            && self.gpu.get(r) == Some(&GpuOp::ReducedBy { step: i })
                            && self.instructions[r].inputs.first().copied().flatten()
                                == sum.copied()
                    });
                    let ok = reduced
                        && slice < ffn
                        && ffn < &i
                        && matches!(op_at(*slice), Some(Op::MoeLocalSlice { .. }))
                        && matches!(op_at(*ffn), Some(Op::MoeExpertFfn { .. }))
                        && matches!(op_at(i), Some(Op::MoeScatterCombine { .. }))
                        && self.gpu.get(*slice) == Some(&GpuOp::Fused { into: i })
                        && self.gpu.get(*ffn) == Some(&GpuOp::Fused { into: i });
                    if !ok {
                        return Err(at(format!("local experts of slice {slice} and ffn {ffn}: expected a local_slice, then an expert_ffn, both fused into this scatter_combine, and an all-reduce it does of its sum (if any) named back")));
                    }
                }
                GpuOp::AllToAllExperts {
                    dispatch,
                    exchange,
                    ffn,
                    slices,
                    members,
                    ..
                } => {
                    let all_fused = members
                        .iter()
                        .all(|&m| m < i && self.gpu.get(m) == Some(&GpuOp::Fused { into: i }));
                    let ok = all_fused
                        && [dispatch, exchange, ffn]
                            .iter()
                            .all(|m| members.contains(m))
                        && slices.iter().all(|s| members.contains(s))
                        && matches!(op_at(*dispatch), Some(Op::MoeDispatch { .. }))
                        && matches!(op_at(*exchange), Some(Op::AllToAll { .. }))
                        && matches!(op_at(*ffn), Some(Op::MoeExpertFfn { .. }))
                        && matches!(op_at(i), Some(Op::MoeCombine { .. }))
                        && (slices.is_empty()
                            || (slices.len() == 3
                                && slices
                                    .iter()
                                    .all(|&s| matches!(op_at(s), Some(Op::TokenSlice { .. })))));
                    if !ok {
                        return Err(at(format!("all-to-all experts of dispatch {dispatch}, exchange {exchange}, ffn {ffn}, slices {slices:?}, members {members:?}: expected those ops, each an earlier instruction fused into this combine")));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// How one instruction runs on the CUDA backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GpuOp {
    /// A generated kernel of the rank's PTX, launched with one thread per `threads`; `bf16`:
    /// its parameters (`Program::generated_params`' positions) it reads or writes as bf16.
    Kernel {
        name: String,
        threads: usize,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        bf16: Vec<usize>,
    },
    /// A cuBLAS GEMM.
    Gemm,
    /// `moe.route` as a generated kernel: (logits) -> (weights, ids); the ids come out as
    /// f32 (exact for expert numbers) and are read back as integers. With `capacity`, two
    /// more: `<name>_capacity` (one thread per expert: its assignments past the capacity, in
    /// slot order, weigh 0) and `<name>_renorm` (one thread per token: renormalisation and
    /// scaling after the drop). With `bf16_logits` the kernel reads the logits as bf16 (they
    /// are bf16 in the model: a bf16 router GEMM's result, held as its bits), widening each.
    Route {
        name: String,
        threads: usize,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        capacity: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        bf16_logits: bool,
    },
    /// `moe.experts` on the GPU: rows grouped by expert (on the host, or on the device by the
    /// `<prefix>_tgroup` kernel where the compiler generated it and it pays; one token is
    /// routed on the device by `<prefix>_dgroup` and its projections instead), then the
    /// `<prefix>_gather` kernel, cuBLAS GEMMs per projection over the experts' rows, the
    /// `<prefix>_act` kernel between them, and the `<prefix>_combine` kernel.
    Experts {
        prefix: String,
        /// bf16 expert stacks: the grouped rows, the hidden activations and the expert outputs
        /// are bf16 between the kernels and the GEMMs (fp32 accumulation inside each), as in
        /// PyTorch's bf16 experts; f32 otherwise.
        #[serde(default)]
        bf16: bool,
    },
    /// PPMoE's `moe.local_slice` -> `moe.expert_ffn` -> `moe.scatter_combine` as one step on
    /// this (the scatter_combine) instruction, with the kernels of `Experts`: the slots routed
    /// to this rank's experts are grouped (as `Experts`), gathered, run through GEMMs and
    /// summed per token into the rank's partial output (the all-reduce follows). `slice` and
    /// `ffn` are the other two instructions, each planned as `Fused` into this one.
    LocalExperts {
        prefix: String,
        bf16: bool,
        slice: usize,
        ffn: usize,
        /// The all-reduce after the scatter_combine, where it reads only the combined sum:
        /// the step does it too, chunk by chunk of tokens on a second stream, each chunk's
        /// reduction behind the next chunk's experts (that instruction is `ReducedBy` this
        /// step, and the scatter_combine's own result is never made).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reduce: Option<usize>,
    },
    /// Done by an earlier `LocalExperts` step (`step`), which names this all-reduce back.
    ReducedBy { step: usize },
    /// All-to-all expert parallelism's token slices, dispatch, all_to_all, expert_ffn,
    /// all_to_all and combine as one step on this (the combine) instruction, with the kernels
    /// of `Experts`: the routed rows are grouped by destination rank and expert on the host, the
    /// counts exchanged over the group, and only those rows sent (one ragged exchange each way,
    /// NCCL sends and receives in a group); grouped GEMMs over the received blocks; the rows
    /// back and summed per token. `members` are the instructions fused into it; `slices` the
    /// token slices of tokens, weights and ids among them (empty: it reads the slices).
    AllToAllExperts {
        prefix: String,
        bf16: bool,
        dispatch: usize,
        exchange: usize,
        ffn: usize,
        slices: Vec<usize>,
        members: Vec<usize>,
    },
    /// A chain of pointwise instructions (elementwise math, comparisons, `where`, casts) as one
    /// generated kernel on this (the chain's last) instruction: `members` are the earlier ones,
    /// each `Fused` into this step, whose results only the chain reads; `inputs` the buffers
    /// the kernel reads, in its parameter order (the chain's operands from outside it), then
    /// this instruction's result. One thread per result element; where a softmax is a member
    /// (with the chains before and after it), or the root is a last-axis reduction (with the
    /// chain before it), one warp per row, `threads` as launched.
    Pointwise {
        name: String,
        threads: usize,
        inputs: Vec<usize>,
        members: Vec<usize>,
        /// Its parameters read or written as bf16 (as `Kernel::bf16`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        bf16: Vec<usize>,
    },
    /// Done by a later instruction's step (`into`): nothing runs here, and no result of this
    /// instruction is made (only that step reads them).
    Fused { into: usize },
    /// A row lookup (`Gather` on axis 0 of a float weight table, integer indices: the token
    /// embedding): the indices, which come from the host, are checked there and uploaded, and
    /// the generated kernel `name` copies the rows.
    Embedding { name: String },
    /// An NCCL collective or point-to-point op.
    Collective,
    /// A reshape: the same data under another shape.
    Alias,
    /// Not generated yet: the operands come to the host, the CPU kernel runs, the results go back.
    Host,
}

impl Op {
    /// Collectives and point-to-point ops run in the executor, not as kernels.
    pub fn is_communication(&self) -> bool {
        matches!(
            self,
            Op::AllReduce { .. }
                | Op::AllGather { .. }
                | Op::AllToAll { .. }
                | Op::Send { .. }
                | Op::Recv { .. }
        )
    }
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

/// Whether f32 holds integer `v` exactly (magnitude at most 2^24): integers the device may
/// keep as f32 (the routing's expert ids, small constants).
pub fn exact_in_f32(v: i64) -> bool {
    v.unsigned_abs() <= 1 << 24
}

/// Whether an experts step's gather, activation and combine kernels, over bf16 rows `width`
/// columns wide (H for the gather and combine, the FFN width for the activation), take the
/// columns in pairs, one
/// thread per two columns, each two bf16 values one 4-byte word: the rows are bf16 and the
/// width even. The compiler generates those kernels so, and the runtime launches them with
/// that many threads.
pub fn bf16_pairs(bf16_rows: bool, width: usize) -> bool {
    bf16_rows && width.is_multiple_of(2)
}

/// Whether an experts step's combine over bf16 rows `width` (H) columns wide takes them eight
/// a thread (each slot's eight one 16-byte load, the eight sums two 16-byte stores): the rows
/// are bf16 and H a multiple of eight. Otherwise it takes pairs where `bf16_pairs` says.
pub fn bf16_octets(bf16_rows: bool, width: usize) -> bool {
    bf16_rows && width.is_multiple_of(8)
}

/// The suffix of an experts step's second gather (`{prefix}_gather8`), made where the rows are
/// bf16 and H a multiple of eight (`bf16_octets`): rows of x's bf16 copy, eight columns a
/// thread. The runtime takes it where it has x's copy; the step's `{prefix}_gather` reads x.
pub const GATHER_BF16_SUFFIX: &str = "gather8";

/// The columns a thread of an experts step's combine (over rows `width` = H columns wide) or
/// activation (over rows of `width` = F activations) takes: eight (`bf16_octets`), two
/// (`bf16_pairs`) or one. The compiler generates those kernels so, and the runtime launches
/// them with that many threads fewer.
pub fn row_columns(bf16_rows: bool, width: usize) -> usize {
    if bf16_octets(bf16_rows, width) {
        8
    } else if bf16_pairs(bf16_rows, width) {
        2
    } else {
        1
    }
}

/// The device-routed step's slot listing (`dgroup` in the compiler): 256 threads a block, each
/// thread reading `LIST_SLOTS_PER_THREAD` slots at once (their loads in flight together: one
/// at a time, a block's walk over 32768 slots took about 0.04 ms on an H200). One block per
/// local expert lists its slots; `list_blocks` more write each slot's row and expert.
pub const LIST_THREADS: usize = 256;
pub const LIST_SLOTS_PER_THREAD: usize = 16;

/// The blocks of the slot listing over `slots` slots and `experts` local experts.
pub fn list_blocks(slots: usize, experts: usize) -> usize {
    experts + slots.div_ceil(LIST_THREADS * LIST_SLOTS_PER_THREAD).max(1)
}

/// The warps of a block of the device-routed expert projections (`decode_experts` in the
/// compiler): each warp computes a few output columns, its lanes splitting the inner
/// dimension.
pub const DECODE_WARPS: usize = 8;

/// The tile of the device-routed expert projections for `tokens` tokens: an expert's rows are
/// taken `rows` at a time (a token picks an expert at most once, so no expert has more rows
/// than tokens), each warp computing `warp_columns` output columns. The compiler bakes it
/// into the kernels; the runtime sizes their grids by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeTile {
    pub rows: usize,
    pub warp_columns: usize,
}

impl DecodeTile {
    pub fn for_tokens(tokens: usize) -> DecodeTile {
        let rows = tokens.clamp(1, 8);
        DecodeTile {
            rows,
            warp_columns: if rows <= 4 { 4 } else { 2 },
        }
    }

    /// The output columns of one block.
    pub fn block_columns(self) -> usize {
        DECODE_WARPS * self.warp_columns
    }
}

/// The warps of a block of the device-routed tensor-core projections (the compiler's
/// `tensor_core_projection`), and the output columns a block computes (16 per warp).
pub const TC_WARPS: usize = 4;
pub const TC_BLOCK_COLUMNS: usize = 64;
/// The activation columns a block of the fused first projection (`tproj_act`) computes: 8
/// gate columns per warp, paired with their up columns.
pub const TC_ACT_BLOCK_COLUMNS: usize = 32;

/// The threads of a block of the device-routed warpgroup projections (the compiler's
/// `warpgroup_projection`: two warpgroups), and the output columns a block computes (the
/// wgmma's n = 256 weight rows; fused, 128 gate rows and their up rows give 128 activations).
pub const WG_THREADS: usize = 256;
pub const WG_BLOCK_COLUMNS: usize = 256;
pub const WG_ACT_BLOCK_COLUMNS: usize = 128;
/// The dynamic shared memory a block of them takes: four stages of 48 KiB, and 1 KiB to align
/// the first to 1024 bytes (the 128-byte swizzle's period); the H200 allows a block 227 KiB.
pub const WG_SHARED_BYTES: usize = 4 * 49152 + 1024;
/// The suffixes of the tensor-core projection kernels: the first projection with the
/// activation as its epilogue, the first without, the second (mma.sync, and warpgroups, whose
/// dynamic shared memory is allowed at load).
pub const TC_KERNELS: [&str; 3] = ["tproj_act", "tproj_in", "tproj_out"];
pub const WG_KERNELS: [&str; 3] = ["wproj_act", "wproj_in", "wproj_out"];
/// The warp-specialised form of the warpgroup projections (the compiler's
/// `PPMOE_TENSOR_PROJECTIONS=wgmma-per-tile`; `=wgmma-cp-async` the form whose threads all
/// copy): the same blocks' columns and stages, a ninth
/// warp that feeds the stages (the weights through a tensor map), and the stages' mbarriers
/// (9 of 8 bytes) after them.
pub const SP_KERNELS: [&str; 3] = ["sproj_act", "sproj_in", "sproj_out"];
pub const SP_THREADS: usize = WG_THREADS + 32;
/// After the barriers (128 bytes), each consumer warp's 16 rows of 64 output columns (bf16,
/// rows 144 bytes apart), through which the results go out as whole 128-byte rows.
pub const EPILOGUE_STAGING_BYTES: usize = 8 * 16 * 144;
pub const SP_SHARED_BYTES: usize = WG_SHARED_BYTES + 128 + EPILOGUE_STAGING_BYTES;
/// Their persistent form (the policy's, up to `PP_MAX_EXPERTS` local experts): a block
/// per SM, each walking the tiles of every local expert (up to `PP_MAX_EXPERTS`), whose
/// prefix sums it keeps after the barriers (4 bytes each, and the total), and with sorted
/// rows (`SORTED_ROWS_KERNEL`) those of the experts' rows after them.
pub const PP_KERNELS: [&str; 3] = ["pproj_act", "pproj_in", "pproj_out"];
pub const PP_MAX_EXPERTS: usize = 1024;
pub const PP_SHARED_BYTES: usize = SP_SHARED_BYTES + 8 * (PP_MAX_EXPERTS + 1);
/// The rows of a persistent projection's tile (a box of its sorted rows' tensor map).
pub const PP_TILE_ROWS: usize = 128;
/// The kernel (suffix) that writes an experts step's rows sorted by expert for the persistent
/// projections (the compiler's `sorted_rows`): expert e's listed rows, in its list's order,
/// from its running row sum; a block of `SORT_THREADS` per (local expert, one of a few).
pub const SORTED_ROWS_KERNEL: &str = "psort";
pub const SORT_THREADS: usize = 256;

/// Whether a step's persistent projections (fused) read their rows sorted by expert, by the
/// experts' `ffn` columns: the sort writes and reads the rows once, and saves on every pass of
/// the first projection's column tiles (ffn / 128) over them, so it pays on wide experts only.
/// Measured on an H200 (session 37, docs/bench-h200-s37.txt, the same run): Mixtral-8x7B's
/// layer (ffn 14336) at 4096 tokens, profiled, 4.797 ms against 4.965 (the first projection
/// 2.982 against 3.126, the sort 0.054), at 512 tokens 0.981 against 1.021; Qwen3-30B-A3B's
/// (ffn 768) at 4096 tokens 0.811 against 0.806, at 16384 2.723 against 2.588. The compiler's
/// `PPMOE_SORTED_ROWS` (0 or 1) overrides it.
pub fn sorts_rows(ffn: usize) -> bool {
    ffn >= 8192
}
/// The persistent form's ping-pong trial (the compiler's `PPMOE_PPROJ=pingpong`: a 64-row
/// tile per warpgroup, so one's epilogue runs under the other's wgmmas): its kernels, its
/// stages (of 64 rows' and 256 weight rows' 64 inner elements, 40 KiB each) and its shared
/// memory (the stages, the alignment, the barriers, the epilogue's staging, the tile sums).
pub const QP_KERNELS: [&str; 3] = ["qproj_act", "qproj_in", "qproj_out"];
pub const PINGPONG_STAGES: usize = 5;
pub const QP_SHARED_BYTES: usize = PINGPONG_STAGES * (64 + 256) * 128
    + 1024
    + 128
    + EPILOGUE_STAGING_BYTES
    + 4 * (PP_MAX_EXPERTS + 1);

/// Whether a device-routed tensor-core step of `slots` slots over `experts` experts, whose
/// first matrices are `matrix_bytes` each, takes the warpgroup projections (wgmma, 128 rows a
/// pass) rather than the mma.sync ones (64 rows a pass, m16 granularity). On small matrices
/// (16 MiB or less) from 2 rows per expert on average: measured on an H200 (session 32,
/// Qwen3-30B-A3B's layer, the persistent form against mma.sync in the same call) 0.346
/// against 0.363 ms at 32 tokens (2 rows each), 0.375 against 0.407 at 64, 0.373 against 0.421
/// at 128, 0.377 against 0.444 at 256, and level at 1 row (16 tokens: 0.259 against 0.266).
/// On larger matrices more than 4 rows: at 16 (Mixtral-8x7B's layer at 64 tokens) the
/// persistent form took 0.838 ms (session 35, docs/bench-h200-s35.txt) where mma.sync took
/// 1.02 (session 28); at 2 rows (8 tokens) mma.sync 0.654 (session 33); 5 to 15 rows are not
/// measured. More than 32 in PPMoE's `local` step at tp > 1 (not measured there).
pub fn projects_on_warpgroups(
    slots: usize,
    experts: usize,
    matrix_bytes: usize,
    local: bool,
) -> bool {
    let rows = slots.div_ceil(experts.max(1));
    rows > match (local, matrix_bytes <= SMALL_MATRIX) {
        (true, _) => 32,
        (false, true) => 1,
        (false, false) => 4,
    }
}

/// The largest first matrix (bytes) an expert step's policies count as small (the tensor-core
/// routing, the warpgroup boundary, and the runtime's device grouping): Qwen3-30B-A3B's
/// (6 MiB) are, Mixtral-8x7B's (112 MiB) and the DeepSeek-like layer's (56 MiB) are not.
pub const SMALL_MATRIX: usize = 16 << 20;

/// Whether an experts step of bf16 stacks over `tokens` tokens (more than one), `slots` of
/// them over `experts` experts whose first matrices are `matrix_bytes` each, runs routed on
/// the device with the tensor-core projections by default (the compiler's
/// `PPMOE_DEVICE_ROUTING` overrides it): always on one rank's whole step, so its forward reads
/// nothing back to the host (no synchronisation, a CUDA graph). Measured on an H200 (bf16, one
/// layer), against cuBLAS over rows grouped on the host (two copies back per forward):
/// Qwen3-30B-A3B's 6 MiB matrices 0.490 against 0.537 ms at 512 tokens, 0.481 against 0.673
/// at 1024, 1.272 against 1.614 at 4096 and 4.600 against 5.465 at 16384 (sessions 27-29);
/// the DeepSeek-like layer (56 MiB) 1.642 against 1.799 at 512 (session 29), 5.918 against
/// 6.259 at 4096 (session 34); Mixtral-8x7B (117 MB matrices) at 8 tokens 0.651-0.664 against
/// 0.628 (session 28), and in session 35 (docs/bench-h200-s35.txt) 0.838 against 0.827 at 64
/// tokens, 1.033 against 1.000 at 512 and 5.140 against 4.677 at 4096 in one run, 1.027
/// against 0.907 and 5.282 against 4.711 in another: 10-13% slower there, the price of no host
/// round trip (`PPMOE_DEVICE_ROUTING=0` groups on the host). `local`: PPMoE's step of a rank's
/// experts at tp > 1, whose all-reduce the chunks of the host or device grouping overlap
/// (measured at 4096 tokens in session 26: 1.461 against 1.712 ms), which the routed path
/// cannot; the routed path has not been measured there, so such a step keeps session 27's
/// boundaries: 4 rows per expert, 32 on small matrices.
pub fn routes_on_tensor_cores(
    tokens: usize,
    slots: usize,
    experts: usize,
    matrix_bytes: usize,
    local: bool,
) -> bool {
    let rows = slots.div_ceil(experts.max(1));
    let small = matrix_bytes <= SMALL_MATRIX;
    tokens > 1 && (!local || rows <= 4 || (small && rows <= 32))
}

/// The CUDA-core first projection reading x's bf16 bits (`dproj_in` reads f32 x).
pub const DPROJ_IN_BF16: &str = "dproj_in_bf16";

/// One token's experts in two kernels, the slots indexed as the route left them (the
/// compiler's `single_token`): the first projection with the activation as its epilogue
/// (reading f32 x, or x's bf16 bits), and the second with the combine as its epilogue.
pub const TOKEN_KERNELS: [&str; 3] = ["dtok_in", "dtok_in_bf16", "dtok_out"];
/// Their blocks: threads, activation columns of a block of the first (two a warp), output
/// columns of a block of the second (one a warp).
pub const TOKEN_THREADS: usize = 256;
pub const TOKEN_IN_COLUMNS: usize = 16;
pub const TOKEN_OUT_COLUMNS: usize = TOKEN_THREADS / 32;

/// Whether one token's experts of `hidden` columns take the two single-token kernels rather
/// than the listed ones (`dgroup`, `dproj`, activation, combine): measured on an H200 (bf16,
/// one layer, a CUDA graph each, same run; `docs/bench-h200-s39.txt` call 2), Qwen3-30B-A3B's
/// (hidden 2048) 0.038 against 0.047 ms, Mixtral-8x7B's (4096) 0.182 against 0.203, the
/// DeepSeek-V3-like layer's (7168) 0.207 against 0.193: up to 4096 columns.
pub fn single_token_pays(hidden: usize) -> bool {
    hidden <= 4096
}

/// The kernels an experts step may have besides its gather, activation and combine (which
/// it always has), by their suffix after the step's prefix: the device routing's and the
/// device grouping's (`device_routed`, `device_grouped`), the gather of x's bf16 copy. The
/// runtime loads those present.
pub const OPTIONAL_EXPERT_KERNELS: &[&str] = &[
    "dgroup",
    "dproj_in",
    DPROJ_IN_BF16,
    "dproj_out",
    TOKEN_KERNELS[0],
    TOKEN_KERNELS[1],
    TOKEN_KERNELS[2],
    TC_KERNELS[0],
    TC_KERNELS[1],
    TC_KERNELS[2],
    WG_KERNELS[0],
    WG_KERNELS[1],
    WG_KERNELS[2],
    SP_KERNELS[0],
    SP_KERNELS[1],
    SP_KERNELS[2],
    PP_KERNELS[0],
    PP_KERNELS[1],
    PP_KERNELS[2],
    QP_KERNELS[0],
    QP_KERNELS[1],
    QP_KERNELS[2],
    "tgroup",
    GATHER_BF16_SUFFIX,
    SORTED_ROWS_KERNEL,
];

/// The threads of the one block of an experts step's device grouping (the compiler's
/// `device_grouping`): its loops over slots and rows step by it.
pub const GROUP_THREADS: usize = 1024;

/// Whether an experts step over `tokens` tokens runs routed on the device by default (the
/// compiler's `PPMOE_DEVICE_ROUTING` overrides it): for one token, where it was measured
/// faster than grouping on the host for cuBLAS (H200, bf16, one layer: Qwen3-30B-A3B's 0.081
/// against 0.158 ms, Mixtral-8x7B's 0.242 against 0.261 ms). At 8 tokens its CUDA-core
/// projections, each expert's rows taken together, were slower than cuBLAS's tensor cores
/// (0.549 against 0.284 ms, and 1.848 against 0.716 ms).
pub fn routes_on_device(tokens: usize) -> bool {
    tokens == 1
}

/// The generated kernel that narrows f32 activations to bf16 before a bf16 GEMM (present in a
/// rank's PTX when its weights are bf16).
pub const TO_BF16_KERNEL: &str = "to_bf16";

/// Its inverse, bf16 widened to f32 (exact): present beside it.
pub const FROM_BF16_KERNEL: &str = "from_bf16";

/// The two conversions four elements a thread (a count of groups of four, each 16-byte
/// aligned in f32): present beside them; the runtime takes them where the count and the
/// addresses allow.
pub const TO_BF16_X4_KERNEL: &str = "to_bf16_x4";
pub const FROM_BF16_X4_KERNEL: &str = "from_bf16_x4";

#[cfg(test)]
mod tests {
    use super::{projects_on_warpgroups, routes_on_tensor_cores};

    /// The measured boundaries (H200, bf16, sessions 27 to 35): one rank's whole step routed
    /// on the device from 2 tokens, whatever its matrices; PPMoE's local step within its
    /// boundaries only.
    #[test]
    fn tensor_core_routing_is_every_whole_steps_and_few_rows_of_a_local_one() {
        let qwen3 = 1536 * 2048 * 2;
        let mixtral = 28672 * 4096 * 2;
        let deepseek = 4096 * 7168 * 2;
        // Qwen3-30B-A3B (128 experts, k 8): from 8 tokens on (not 1: the CUDA-core kernels);
        // the wgmma projections from 2 rows per expert (32 tokens).
        for (t, yes) in [
            (1, false),
            (8, true),
            (16, true),
            (32, true),
            (64, true),
            (512, true),
            (1024, true),
            (16384, true),
        ] {
            assert_eq!(
                routes_on_tensor_cores(t, t * 8, 128, qwen3, false),
                yes,
                "qwen3 {t}"
            );
            assert_eq!(
                projects_on_warpgroups(t * 8, 128, qwen3, false),
                t >= 32,
                "qwen3 {t}"
            );
        }
        // Mixtral-8x7B (8 experts, k 2) and the DeepSeek-like layer: from 2 tokens at every
        // count; on their large matrices mma.sync up to 4 rows each, wgmma from 5.
        for t in [2, 8, 64, 512, 4096, 16384] {
            assert!(routes_on_tensor_cores(t, 2 * t, 8, mixtral, false), "{t}");
            assert!(routes_on_tensor_cores(t, 8 * t, 64, deepseek, false), "{t}");
        }
        assert!(!routes_on_tensor_cores(1, 2, 8, mixtral, false));
        assert!(!projects_on_warpgroups(16, 8, mixtral, false));
        assert!(!projects_on_warpgroups(32, 8, mixtral, false));
        assert!(projects_on_warpgroups(40, 8, mixtral, false));
        assert!(projects_on_warpgroups(128, 8, mixtral, false));
        assert!(projects_on_warpgroups(512, 64, deepseek, false));
        // PPMoE's local step at tp 2 (64 of Qwen3's experts): up to 32 rows each, on mma.sync.
        assert!(routes_on_tensor_cores(256, 2048, 64, qwen3 / 2, true));
        assert!(!projects_on_warpgroups(2048, 64, qwen3 / 2, true));
        assert!(!routes_on_tensor_cores(4096, 32768, 64, qwen3 / 2, true));
        // Its large matrices: up to 4 rows each (Mixtral's 4 experts a rank at 8 tokens).
        assert!(routes_on_tensor_cores(8, 16, 4, mixtral, true));
        assert!(!routes_on_tensor_cores(64, 128, 4, mixtral, true));
    }
}
