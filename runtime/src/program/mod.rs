//! The instruction set of a rank's program: the `core` ops with ONNX semantics, shapes static
//! where the compiler could make them so. Shape-like operands (a Reshape's target, a Slice's
//! bounds) are buffers, folded to constants by the compiler wherever they do not depend on data.

use crate::tensor::DType;
use serde::{Deserialize, Serialize};

mod kernel_policy;
pub use kernel_policy::*;

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

impl BinaryFn {
    /// Whether the function compares its operands (its result is boolean whatever their type).
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryFn::Equal
                | BinaryFn::Less
                | BinaryFn::Greater
                | BinaryFn::LessOrEqual
                | BinaryFn::GreaterOrEqual
        )
    }
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

impl ExpertDims {
    /// Bytes of one expert's first matrix (N x H) at `element_bytes` an element, as the
    /// policies that choose by matrix size count it (saturating: a bound, never a wrap).
    pub fn first_matrix_bytes(&self, element_bytes: usize) -> usize {
        self.n
            .saturating_mul(self.hidden)
            .saturating_mul(element_bytes)
    }
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
    /// (x): a reduction over axes known at compile time, each counted from the front, in
    /// increasing order: `Reduce` with its axes operand spent. It prints as `Reduce` does
    /// (`core.reduce_sum`), its axes an attribute.
    ReduceAxes {
        f: ReduceFn,
        axes: Vec<usize>,
        keepdims: bool,
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
    /// A slice of static offsets, sizes and positive strides, one of each per axis (what Slice
    /// becomes when the compiler knows its bounds and the input's shape; upstream's
    /// `tensor.extract_slice`).
    ExtractSlice {
        offsets: Vec<usize>,
        sizes: Vec<usize>,
        strides: Vec<usize>,
    },
    /// (x, axes?)
    Squeeze,
    /// (x, axes)
    Unsqueeze,
    Flatten {
        axis: i64,
    },
    /// (x, shape)
    Expand,
    /// A broadcast to a static shape (what Expand becomes when the compiler knows the result's
    /// shape).
    ExpandTo {
        shape: Vec<usize>,
    },
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
    /// (x) -> (values, indices): the k largest (or smallest) along an axis known at compile
    /// time, counted from the front: `TopK` with its k operand spent.
    TopKAxis {
        axis: usize,
        k: usize,
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
    /// (x): running sums along an axis known at compile time, counted from the front: `CumSum`
    /// with its axis operand spent.
    CumSumAxis {
        axis: usize,
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
            Op::Reduce { f, .. } | Op::ReduceAxes { f, .. } => {
                format!("reduce_{}", tag(serde_json::to_value(f)))
            }
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
    /// A program of nothing (rank 0, no buffers or instructions): what a pass leaves in place
    /// of one it takes to rewrite.
    pub fn empty() -> Program {
        Program {
            rank: 0,
            buffers: vec![],
            inputs: vec![],
            outputs: vec![],
            instructions: vec![],
            weights_file: String::new(),
            coords: [0; 3],
            gpu: vec![],
            ptx_file: None,
        }
    }

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
                Op::TopK { .. } | Op::TopKAxis { .. } | Op::MoeRoute { .. } => Some(2),
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
            let operands = match ins.op {
                Op::Binary { .. } => Some(2),
                Op::Unary { .. } => Some(1),
                _ => None,
            };
            if let Some(k) = operands.filter(|&k| k != ins.inputs.len()) {
                return Err(format!(
                    "{} has {} operands where the op takes {k}",
                    at("inputs"),
                    ins.inputs.len()
                ));
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
        self.validate_expert_counts()?;
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

    /// Whether buffer `id` may be held as its value rounded to bf16 with nothing changed: every
    /// reader takes it as bf16 bits (`reads_as_bits`: each would round it), and neither it nor
    /// a reshape of it is a result of the program (a result is brought back as the program
    /// holds it: an f32 one unrounded).
    pub fn rounded_for_every_reader(&self, id: usize) -> bool {
        self.reads_as_bits(id) && !self.reaches_result(id)
    }

    /// Whether `id`, or a reshape of it (through reshapes), is a result of the program.
    fn reaches_result(&self, id: usize) -> bool {
        self.outputs.contains(&id)
            || self.instructions.iter().enumerate().any(|(i, ins)| {
                self.gpu.get(i) == Some(&GpuOp::Alias)
                    && ins.inputs.contains(&Some(id))
                    && ins.outputs.iter().any(|&o| self.reaches_result(o))
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
        for (i, g) in self.gpu.iter().enumerate() {
            let checked = match g {
                GpuOp::Fused { into } => self.check_fused(i, *into),
                GpuOp::Pointwise {
                    inputs, members, ..
                } => self.check_pointwise(i, inputs, members),
                GpuOp::ReducedBy { step } => self.check_reduced_by(i, *step),
                GpuOp::LocalExperts {
                    slice, ffn, reduce, ..
                } => self.check_local_experts(i, (*slice, *ffn), *reduce),
                GpuOp::AllToAllExperts {
                    dispatch,
                    exchange,
                    ffn,
                    slices,
                    members,
                    ..
                } => {
                    self.check_all_to_all_experts(i, [*dispatch, *exchange, *ffn], slices, members)
                }
                _ => Ok(()),
            };
            checked.map_err(|what| format!("GPU plan entry {i}: {what}"))?;
        }
        Ok(())
    }

    /// Each `moe.experts` whose expert ids a `moe.route` of this program makes holds every
    /// expert that route chooses among: its stacks' experts at least the logits' (a bundle
    /// saying otherwise would have the experts step read past its weights on the GPU).
    fn validate_expert_counts(&self) -> Result<(), String> {
        let made_by = |b: BufferId| {
            self.instructions
                .iter()
                .find(|ins| ins.outputs.contains(&b))
        };
        for (i, ins) in self.instructions.iter().enumerate() {
            if !matches!(ins.op, Op::MoeExperts { .. }) {
                continue;
            }
            let at = |k: usize| ins.inputs.get(k).copied().flatten();
            let route = at(2)
                .and_then(made_by)
                .filter(|r| matches!(r.op, Op::MoeRoute { .. }));
            let scored = route
                .and_then(|r| r.inputs.first().copied().flatten())
                .and_then(|l| self.buffers[l].shape.last().copied().flatten());
            let stacked = at(3).and_then(|w| self.buffers[w].shape.first().copied().flatten());
            if let (Some(scored), Some(stacked)) = (scored, stacked) {
                if stacked < scored {
                    return Err(format!(
                        "instruction {i} (experts): its route chooses among {scored} experts, its weights hold {stacked}"
                    ));
                }
            }
        }
        Ok(())
    }

    fn op_at(&self, i: usize) -> Option<&Op> {
        self.instructions.get(i).map(|ins| &ins.op)
    }

    /// A member fused into a later step that names it back.
    fn check_fused(&self, i: usize, into: usize) -> Result<(), String> {
        let names_back = match self.gpu.get(into) {
            Some(GpuOp::LocalExperts { slice, ffn, .. }) => *slice == i || *ffn == i,
            Some(GpuOp::AllToAllExperts { members, .. }) => members.contains(&i),
            Some(GpuOp::Pointwise { members, .. }) => members.contains(&i),
            _ => false,
        };
        if into <= i || !names_back {
            return Err(format!(
                "fused into {into}, which is no later step naming it"
            ));
        }
        Ok(())
    }

    /// A pointwise chain: earlier members fused into it, and inputs that are float or boolean
    /// buffers the chain reads from outside it (its shapes were baked in for those), never a
    /// member's result.
    fn check_pointwise(&self, i: usize, inputs: &[usize], members: &[usize]) -> Result<(), String> {
        let fused = members
            .iter()
            .all(|&m| m < i && self.gpu.get(m) == Some(&GpuOp::Fused { into: i }));
        let on_device = |b: &usize| {
            self.buffers
                .get(*b)
                .is_some_and(|b| b.dtype.on_device_as_f32())
        };
        let chain = || members.iter().chain([&i]).map(|&m| &self.instructions[m]);
        let read_by_chain = |b: &usize| chain().any(|ins| ins.inputs.contains(&Some(*b)));
        let made_in_chain = |b: &usize| chain().any(|ins| ins.outputs.contains(b));
        let outside = |b: &usize| read_by_chain(b) && !made_in_chain(b);
        if !fused || !inputs.iter().all(|b| on_device(b) && outside(b)) {
            return Err(format!("pointwise chain of members {members:?} and inputs {inputs:?}: expected earlier instructions fused into this one, and float or boolean buffers the chain reads from outside it"));
        }
        Ok(())
    }

    /// An all-reduce done by an earlier local-experts step that names it.
    fn check_reduced_by(&self, i: usize, step: usize) -> Result<(), String> {
        let named = matches!(self.gpu.get(step), Some(GpuOp::LocalExperts { reduce: Some(r), .. }) if *r == i);
        if step >= i || !named || !matches!(self.op_at(i), Some(Op::AllReduce { .. })) {
            return Err(format!(
                "reduced by {step}, which is no earlier local-experts step naming this all-reduce"
            ));
        }
        Ok(())
    }

    /// PPMoE's local step: a local_slice, then an expert_ffn, both fused into this
    /// scatter_combine, and an all-reduce it does of its own sum (if any) named back.
    fn check_local_experts(
        &self,
        i: usize,
        (slice, ffn): (usize, usize),
        reduce: Option<usize>,
    ) -> Result<(), String> {
        let sum = self.instructions[i].outputs.first();
        let reduced = reduce.is_none_or(|r| {
            r > i
                && self.gpu.get(r) == Some(&GpuOp::ReducedBy { step: i })
                && self.instructions[r].inputs.first().copied().flatten() == sum.copied()
        });
        let ok = reduced
            && slice < ffn
            && ffn < i
            && matches!(self.op_at(slice), Some(Op::MoeLocalSlice { .. }))
            && matches!(self.op_at(ffn), Some(Op::MoeExpertFfn { .. }))
            && matches!(self.op_at(i), Some(Op::MoeScatterCombine { .. }))
            && self.gpu.get(slice) == Some(&GpuOp::Fused { into: i })
            && self.gpu.get(ffn) == Some(&GpuOp::Fused { into: i });
        if !ok {
            return Err(format!("local experts of slice {slice} and ffn {ffn}: expected a local_slice, then an expert_ffn, both fused into this scatter_combine, and an all-reduce it does of its sum (if any) named back"));
        }
        Ok(())
    }

    /// All-to-all's step: its dispatch, exchange, expert FFN and token slices (none, or three),
    /// each an earlier instruction fused into this combine.
    fn check_all_to_all_experts(
        &self,
        i: usize,
        [dispatch, exchange, ffn]: [usize; 3],
        slices: &[usize],
        members: &[usize],
    ) -> Result<(), String> {
        let op_at = |m: usize| self.op_at(m);
        let all_fused = members
            .iter()
            .all(|&m| m < i && self.gpu.get(m) == Some(&GpuOp::Fused { into: i }));
        let ok = all_fused
            && [dispatch, exchange, ffn]
                .iter()
                .all(|m| members.contains(m))
            && slices.iter().all(|s| members.contains(s))
            && matches!(op_at(dispatch), Some(Op::MoeDispatch { .. }))
            && matches!(op_at(exchange), Some(Op::AllToAll { .. }))
            && matches!(op_at(ffn), Some(Op::MoeExpertFfn { .. }))
            && matches!(op_at(i), Some(Op::MoeCombine { .. }))
            && (slices.is_empty()
                || (slices.len() == 3
                    && slices
                        .iter()
                        .all(|&s| matches!(op_at(s), Some(Op::TokenSlice { .. })))));
        if !ok {
            return Err(format!("all-to-all experts of dispatch {dispatch}, exchange {exchange}, ffn {ffn}, slices {slices:?}, members {members:?}: expected those ops, each an earlier instruction fused into this combine"));
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
