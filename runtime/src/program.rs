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
}

impl Op {
    /// The op's name in the `core` stage's IR: the serde tag, or the function for the
    /// elementwise and reduction families (`core.add`, `core.reduce_sum`).
    pub fn name(&self) -> String {
        let tag = |v: serde_json::Result<serde_json::Value>| v.ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        match self {
            Op::Unary { f } => tag(serde_json::to_value(f)),
            Op::Binary { f } => tag(serde_json::to_value(f)),
            Op::Reduce { f, .. } => format!("reduce_{}", tag(serde_json::to_value(f))),
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
