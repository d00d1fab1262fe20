//! The runtime op of each plain ONNX op: one-to-one ops from tables, the rest (attributes to
//! read or refuse) one small function each. Ops lowered to several instructions (Gemm, the
//! norms, attention, the fused MoE) are `lower_node`'s, not these.

use super::{attr_f, attr_i, reduction, runtime_dtype, tensor_of, Lowering};
use crate::error::CompileError;
use ppmoe_frontend::{AttrValue, Node};
use ppmoe_runtime::program::{BinaryFn, Op, ReduceFn, UnaryFn};
use ppmoe_runtime::DType;

const UNARY: &[(&str, UnaryFn)] = &[
    ("Neg", UnaryFn::Neg),
    ("Abs", UnaryFn::Abs),
    ("Sqrt", UnaryFn::Sqrt),
    ("Reciprocal", UnaryFn::Reciprocal),
    ("Exp", UnaryFn::Exp),
    ("Log", UnaryFn::Log),
    ("Sigmoid", UnaryFn::Sigmoid),
    ("Tanh", UnaryFn::Tanh),
    ("Erf", UnaryFn::Erf),
    ("Relu", UnaryFn::Relu),
    ("Not", UnaryFn::Not),
    ("Sin", UnaryFn::Sin),
    ("Cos", UnaryFn::Cos),
    ("Floor", UnaryFn::Floor),
    ("Ceil", UnaryFn::Ceil),
    ("Sign", UnaryFn::Sign),
];

const BINARY: &[(&str, BinaryFn)] = &[
    ("Add", BinaryFn::Add),
    ("Sub", BinaryFn::Sub),
    ("Mul", BinaryFn::Mul),
    ("Div", BinaryFn::Div),
    ("Pow", BinaryFn::Pow),
    ("Max", BinaryFn::Max),
    ("Min", BinaryFn::Min),
    ("Mod", BinaryFn::Mod),
    ("Equal", BinaryFn::Equal),
    ("Less", BinaryFn::Less),
    ("Greater", BinaryFn::Greater),
    ("LessOrEqual", BinaryFn::LessOrEqual),
    ("GreaterOrEqual", BinaryFn::GreaterOrEqual),
    ("And", BinaryFn::And),
    ("Or", BinaryFn::Or),
    ("Xor", BinaryFn::Xor),
];

const REDUCE: &[(&str, ReduceFn)] = &[
    ("ReduceSum", ReduceFn::Sum),
    ("ReduceMean", ReduceFn::Mean),
    ("ReduceMax", ReduceFn::Max),
    ("ReduceMin", ReduceFn::Min),
    ("ReduceProd", ReduceFn::Prod),
    ("ReduceL2", ReduceFn::L2),
];

fn find<T: Copy>(table: &[(&str, T)], op: &str) -> Option<T> {
    table.iter().find(|(n, _)| *n == op).map(|&(_, f)| f)
}

impl Lowering<'_> {
    /// The runtime op computing `node` (default domain) as one instruction.
    pub(super) fn op_for(&self, node: &Node) -> Result<Op, CompileError> {
        if !node.domain.is_empty() {
            return Err(self.unsupported(node));
        }
        let op = node.op_type.as_str();
        if let Some(f) = find(UNARY, op) {
            return Ok(Op::Unary { f });
        }
        if let Some(f) = find(BINARY, op) {
            return Ok(Op::Binary { f });
        }
        if let Some(f) = find(REDUCE, op) {
            return Ok(Op::Reduce {
                f,
                keepdims: attr_i(node, "keepdims", 1) != 0,
                noop_with_empty_axes: attr_i(node, "noop_with_empty_axes", 0) != 0,
            });
        }
        let axis = |default: i64| attr_i(node, "axis", default);
        Ok(match op {
            "Gelu" => self.gelu(node)?,
            "Where" => Op::Where,
            "Cast" => self.cast(node)?,
            "CastLike" => self.cast_like(node)?,
            "MatMul" => Op::MatMul,
            "Softmax" | "LogSoftmax" => Op::Softmax {
                axis: axis(-1),
                log: op == "LogSoftmax",
            },
            "ArgMax" | "ArgMin" => self.arg_max(node)?,
            "Reshape" => Op::Reshape {
                allowzero: attr_i(node, "allowzero", 0) != 0,
            },
            "Transpose" => self.transpose(node),
            "Concat" => Op::Concat { axis: axis(0) },
            "Split" => self.split(node)?,
            "Slice" => Op::Slice,
            "Squeeze" => Op::Squeeze,
            "Unsqueeze" => Op::Unsqueeze,
            "Flatten" => Op::Flatten { axis: axis(1) },
            "Expand" => Op::Expand,
            "Tile" => Op::Tile,
            "Gather" => Op::Gather { axis: axis(0) },
            "GatherElements" => Op::GatherElements { axis: axis(0) },
            "GatherND" => Op::GatherNd {
                batch_dims: attr_i(node, "batch_dims", 0).max(0) as usize,
            },
            "ScatterND" => Op::ScatterNd {
                reduction: reduction(node).map_err(|e| self.node_err(node, e))?,
            },
            "ScatterElements" => Op::ScatterElements {
                axis: axis(0),
                reduction: reduction(node).map_err(|e| self.node_err(node, e))?,
            },
            "TopK" => top_k(node),
            "OneHot" => Op::OneHot { axis: axis(-1) },
            "Range" => Op::Range,
            "Shape" => Op::Shape {
                start: attr_i(node, "start", 0),
                end: match node.attr("end") {
                    Some(AttrValue::Int(e)) => Some(*e),
                    _ => None,
                },
            },
            "ConstantOfShape" => self.constant_of_shape(node)?,
            "Trilu" => Op::Trilu {
                upper: attr_i(node, "upper", 1) != 0,
            },
            "CumSum" => Op::CumSum {
                exclusive: attr_i(node, "exclusive", 0) != 0,
                reverse: attr_i(node, "reverse", 0) != 0,
            },
            "Einsum" => match node.attr("equation") {
                Some(AttrValue::String(e)) => Op::Einsum {
                    equation: e.clone(),
                },
                _ => return Err(self.node_err(node, "Einsum needs an equation")),
            },
            "LayerNormalization" => self.layer_norm(node)?,
            "NonZero" => Op::NonZero,
            _ => return Err(self.unsupported(node)),
        })
    }

    fn gelu(&self, node: &Node) -> Result<Op, CompileError> {
        let f = match node.attr("approximate") {
            None => UnaryFn::Gelu,
            Some(AttrValue::String(a)) if a == "none" => UnaryFn::Gelu,
            Some(AttrValue::String(a)) if a == "tanh" => UnaryFn::GeluTanh,
            Some(other) => return Err(self.node_err(node, format!("Gelu approximate = {other:?}"))),
        };
        Ok(Op::Unary { f })
    }

    fn cast(&self, node: &Node) -> Result<Op, CompileError> {
        let to = attr_i(node, "to", 0);
        let d = ppmoe_frontend::DType::from_onnx(to as i32)
            .ok_or_else(|| self.node_err(node, format!("Cast to unsupported type {to}")))?;
        Ok(Op::Cast {
            to: runtime_dtype(d),
        })
    }

    fn cast_like(&self, node: &Node) -> Result<Op, CompileError> {
        let to = self
            .types
            .get(&node.inputs[1])
            .map(|t| runtime_dtype(t.dtype))
            .ok_or_else(|| self.node_err(node, "untyped operand"))?;
        Ok(Op::Cast { to })
    }

    fn arg_max(&self, node: &Node) -> Result<Op, CompileError> {
        if attr_i(node, "select_last_index", 0) != 0 {
            return Err(self.node_err(node, "select_last_index = 1 is not supported"));
        }
        Ok(Op::ArgMax {
            axis: attr_i(node, "axis", 0),
            keepdims: attr_i(node, "keepdims", 1) != 0,
            max: node.op_type == "ArgMax",
        })
    }

    /// The permutation, or the axes reversed where the node gives none.
    fn transpose(&self, node: &Node) -> Op {
        let rank = self
            .types
            .get(&node.inputs[0])
            .map(|t| t.dims.len())
            .unwrap_or(0);
        let perm = match node.attr("perm") {
            Some(AttrValue::Ints(p)) => p.iter().map(|&v| v as usize).collect(),
            _ => (0..rank).rev().collect(),
        };
        Op::Transpose { perm }
    }

    fn split(&self, node: &Node) -> Result<Op, CompileError> {
        if node.attr("split").is_some() {
            return Err(self.node_err(
                node,
                "the 'split' attribute (opset < 13) is not supported; use the input",
            ));
        }
        Ok(Op::Split {
            axis: attr_i(node, "axis", 0),
        })
    }

    fn constant_of_shape(&self, node: &Node) -> Result<Op, CompileError> {
        let (value, dtype) = match node.attr("value") {
            Some(AttrValue::Tensor(t)) => {
                let v = tensor_of(t)
                    .map(|t| t.to_f32().first().copied().unwrap_or(0.0) as f64)
                    .map_err(|e| self.node_err(node, e))?;
                (v, runtime_dtype(t.dtype))
            }
            _ => (0.0, DType::F32),
        };
        Ok(Op::ConstantOfShape { value, dtype })
    }

    fn layer_norm(&self, node: &Node) -> Result<Op, CompileError> {
        if node.outputs.len() > 1 {
            return Err(self.node_err(
                node,
                "the mean and inverse-std-dev outputs (training) are not supported",
            ));
        }
        Ok(Op::LayerNorm {
            axis: attr_i(node, "axis", -1),
            epsilon: attr_f(node, "epsilon", 1e-5),
        })
    }
}

fn top_k(node: &Node) -> Op {
    if attr_i(node, "sorted", 1) == 0 {
        // Sorted output is a valid answer to an unsorted request.
        tracing::debug!("TopK {}: sorted=0 computed sorted", node.name);
    }
    Op::TopK {
        axis: attr_i(node, "axis", -1),
        largest: attr_i(node, "largest", 1) != 0,
    }
}
