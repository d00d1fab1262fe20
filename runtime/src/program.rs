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

/// The canonical expert weight layout the `moe.experts` op reads.
pub const EXPERTS_LAYOUT: &str = "w_in[E,H,N] (gated: N=2F, gate|up), w_out[E,F,H], b_in[E,N], b_out[E,H]";

/// One `core` op. Optional operands are `None` in the instruction's input list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Unary { f: UnaryFn },
    Binary { f: BinaryFn },
    /// (cond, x, y)
    Where,
    Cast { to: DType },
    /// numpy matmul with batch broadcasting
    MatMul,
    Softmax { axis: i64, log: bool },
    /// (x, axes?)
    Reduce { f: ReduceFn, keepdims: bool, noop_with_empty_axes: bool },
    ArgMax { axis: i64, keepdims: bool, max: bool },
    /// (x, shape)
    Reshape { allowzero: bool },
    /// A reshape to a static shape (what Reshape, Squeeze, Unsqueeze and Flatten become when
    /// the compiler knows the result's shape).
    ReshapeTo { shape: Vec<usize> },
    Transpose { perm: Vec<usize> },
    Concat { axis: i64 },
    /// (x, split sizes?) -> outputs
    Split { axis: i64 },
    /// (x, starts, ends, axes?, steps?)
    Slice,
    /// (x, axes?)
    Squeeze,
    /// (x, axes)
    Unsqueeze,
    Flatten { axis: i64 },
    /// (x, shape)
    Expand,
    /// (x, repeats)
    Tile,
    Gather { axis: i64 },
    GatherElements { axis: i64 },
    GatherNd { batch_dims: usize },
    /// (data, indices, updates)
    ScatterNd { reduction: Reduction },
    ScatterElements { axis: i64, reduction: Reduction },
    /// (x, k) -> (values, indices)
    TopK { axis: i64, largest: bool },
    /// (indices, depth, values)
    OneHot { axis: i64 },
    /// (start, limit, delta)
    Range,
    Shape { start: i64, end: Option<i64> },
    /// (shape)
    ConstantOfShape { value: f64, dtype: DType },
    /// (x, k?)
    Trilu { upper: bool },
    /// (x, axis)
    CumSum { exclusive: bool, reverse: bool },
    Einsum { equation: String },
    /// (x, scale, bias?)
    LayerNorm { axis: i64, epsilon: f32 },
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
    },
    /// `moe.experts`: (x [T,H], weights [T,k], ids [T,k], w_in, w_out, b_in?, b_out?) -> [T,H],
    /// the sum over k of weight * FFN_id(x), weights in `EXPERTS_LAYOUT`.
    MoeExperts {
        activation: Activation,
        alpha: f32,
        beta: f32,
        /// The SwiGLU clamp; none when unbounded.
        limit: Option<f32>,
        layout: String,
    },
}

impl Op {
    /// The dialect an op prints in: `moe` for the MoE ops, `core` for the rest.
    pub fn dialect(&self) -> &'static str {
        match self {
            Op::MoeRoute { .. } | Op::MoeExperts { .. } => "moe",
            _ => "core",
        }
    }

    /// The op's name in the `core` stage's IR: the serde tag, or the function for the
    /// elementwise and reduction families (`core.add`, `core.reduce_sum`).
    pub fn name(&self) -> String {
        let tag = |v: serde_json::Result<serde_json::Value>| v.ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        match self {
            Op::Unary { f } => tag(serde_json::to_value(f)),
            Op::Binary { f } => tag(serde_json::to_value(f)),
            Op::Reduce { f, .. } => format!("reduce_{}", tag(serde_json::to_value(f))),
            Op::MoeRoute { .. } => "route".into(),
            Op::MoeExperts { .. } => "experts".into(),
            _ => serde_json::to_value(self).ok().and_then(|v| v.get("op").and_then(|t| t.as_str()).map(str::to_string)).unwrap_or_default(),
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
}
