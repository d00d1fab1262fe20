//! Type and shape inference over the imported graph, with the small integer constants that
//! shape arithmetic needs (Shape -> Gather -> Concat -> Reshape chains) folded as it goes.
//! Where the file states a type (value_info) and ppmoe has no rule for the op, the file's word
//! is taken; where neither exists, the error names the node.

use crate::dtype::DType;
use crate::error::ImportError;
use crate::graph::{AttrValue, Dim, Model, Node, TensorData, TensorType};
use std::collections::HashMap;

mod constants;
mod contrib;
mod elementwise;
mod indexing;
mod layout;
mod linear;
mod reduce;

pub use constants::constant_value;
pub use linear::matmul_dims;

/// The inferred types of every value, and the values of small integer constants.
#[derive(Clone, Debug, Default)]
pub struct Types {
    pub types: HashMap<String, TensorType>,
    pub consts: HashMap<String, TensorData>,
}

/// Constants larger than this are not tracked: shape arithmetic never needs them.
const MAX_CONST: usize = 4096;

impl Types {
    pub fn get(&self, name: &str) -> Option<&TensorType> {
        self.types.get(name)
    }

    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.consts.get(name).and_then(TensorData::as_i64)
    }
}

/// Infers the types of all values of `model`, given the types of its inputs (which may differ
/// from the file's when `--input-shape` fixed a symbolic dimension).
pub fn infer_types(model: &Model) -> Result<Types, ImportError> {
    let g = &model.graph;
    let mut t = Types::default();
    for v in &g.inputs {
        t.types.insert(v.name.clone(), v.ty.clone());
    }
    for (name, data) in &g.initializers {
        t.types.insert(name.clone(), data.ty());
        if data.len() <= MAX_CONST && data.as_i64().is_some() {
            t.consts.insert(name.clone(), data.clone());
        }
    }
    for node in &g.nodes {
        let fail = |reason: String| ImportError::BadNode {
            path: model.path.clone(),
            node: node.name.clone(),
            op: node.qualified_op(),
            reason,
        };
        let outs = infer_node(node, &t).map_err(fail)?;
        for (i, out) in node.outputs.iter().enumerate() {
            let inferred = outs.get(i).cloned().flatten();
            let (ty, value) = match inferred {
                Some(r) => (r.ty, r.value),
                None => match g.value_info.get(out).or_else(|| g.outputs.iter().find(|o| &o.name == out).map(|o| &o.ty)) {
                    Some(ty) => (ty.clone(), None),
                    None => {
                        return Err(fail(format!("cannot infer the type of output '{out}': no rule for this op and no value_info in the file")))
                    }
                },
            };
            if let Some(v) = value {
                if v.len() <= MAX_CONST {
                    t.consts.insert(out.clone(), v);
                }
            }
            t.types.insert(out.clone(), ty);
        }
    }
    Ok(t)
}

/// One output's inferred type and, when known at compile time, its (small integer) value.
#[derive(Clone, Debug)]
pub struct Out {
    pub ty: TensorType,
    pub value: Option<TensorData>,
}

fn out(ty: TensorType) -> Option<Out> {
    Some(Out { ty, value: None })
}

/// Normalises a possibly negative axis against `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(a as usize)
}

/// As `norm_axis`, for ops that index the axis's size (Concat, Split, Slice, TopK): a scalar
/// has none.
pub fn size_axis(axis: i64, rank: usize) -> Result<usize, String> {
    if rank == 0 {
        return Err(format!(
            "axis {axis} of a scalar (the input must have rank 1 or more)"
        ));
    }
    norm_axis(axis, rank)
}

/// Numpy-style broadcast of several shapes.
pub fn broadcast(shapes: &[&[Dim]]) -> Result<Vec<Dim>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut outd = vec![Dim::Known(1); rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, d) in s.iter().enumerate() {
            let o = &mut outd[off + i];
            *o = match (&*o, d) {
                (Dim::Known(1), d) => d.clone(),
                (o, Dim::Known(1)) => o.clone(),
                (Dim::Known(a), Dim::Known(b)) if a != b => {
                    return Err(format!(
                        "shapes {} cannot be broadcast together",
                        fmt_shapes(shapes)
                    ))
                }
                (Dim::Known(a), _) | (_, Dim::Known(a)) => Dim::Known(*a),
                (a, b) if a == b => a.clone(),
                _ => Dim::Unknown,
            };
        }
    }
    Ok(outd)
}

fn fmt_shapes(shapes: &[&[Dim]]) -> String {
    shapes
        .iter()
        .map(|s| {
            TensorType {
                dtype: DType::F32,
                dims: s.to_vec(),
            }
            .mlir()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn known(dims: &[i64]) -> Vec<Dim> {
    dims.iter().map(|&d| Dim::Known(d)).collect()
}

/// A node's inferred outputs, one per output; `None` means "no rule" (the file's value_info
/// is used).
type Outs = Result<Vec<Option<Out>>, String>;

/// A node under inference, with what is known of its operands so far.
struct Ctx<'a> {
    node: &'a Node,
    t: &'a Types,
}

impl<'a> Ctx<'a> {
    fn input(&self, i: usize) -> Result<&'a TensorType, String> {
        let name = self
            .node
            .inputs
            .get(i)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("input {i} is missing"))?;
        self.t
            .types
            .get(name)
            .ok_or_else(|| format!("input '{name}' has no known type"))
    }

    /// The first input, which most ops call x.
    fn x(&self) -> Result<&'a TensorType, String> {
        self.input(0)
    }

    /// Whether optional input `i` is given.
    fn has(&self, i: usize) -> bool {
        self.node.inputs.get(i).is_some_and(|n| !n.is_empty())
    }

    /// Input `i`'s value, where it is a small integer constant.
    fn cints(&self, i: usize) -> Option<Vec<i64>> {
        self.node.inputs.get(i).and_then(|n| self.t.ints(n))
    }

    /// Input `i`'s value, where it is a tracked constant.
    fn cdata(&self, i: usize) -> Option<&'a TensorData> {
        self.node.inputs.get(i).and_then(|n| self.t.consts.get(n))
    }

    fn int_attr(&self, name: &str, default: i64) -> i64 {
        match self.node.attr(name) {
            Some(AttrValue::Int(v)) => *v,
            _ => default,
        }
    }

    fn ints_attr(&self, name: &str) -> Option<Vec<i64>> {
        match self.node.attr(name) {
            Some(AttrValue::Ints(v)) => Some(v.clone()),
            _ => None,
        }
    }

    /// The statistics outputs of the normalisations (mean, inverse std-dev): the input's
    /// shape with its last axis 1, f32.
    fn stats(&self) -> Result<Option<Out>, String> {
        let mut ty = self.x()?.clone();
        if let Some(last) = ty.dims.last_mut() {
            *last = Dim::Known(1);
        }
        ty.dtype = DType::F32;
        Ok(out(ty))
    }

    /// No rule: every output's type is the file's.
    fn unknown(&self) -> Vec<Option<Out>> {
        vec![None; self.node.outputs.len()]
    }
}

/// The input's type as the only output's.
fn same(c: &Ctx) -> Outs {
    Ok(vec![out(c.x()?.clone())])
}

/// Infers a node's outputs: one function per op family.
fn infer_node(node: &Node, t: &Types) -> Outs {
    let c = &Ctx { node, t };
    if !node.domain.is_empty() {
        return contrib::infer(c);
    }
    let op = node.op_type.as_str();
    match op {
        "Identity" => elementwise::identity(c),
        "Sqrt" | "Neg" | "Reciprocal" | "Exp" | "Log" | "Sigmoid" | "Tanh" | "Erf" | "Abs"
        | "Relu" | "Not" | "Sin" | "Cos" | "Floor" | "Ceil" | "Sign" | "Softmax" | "LogSoftmax"
        | "Clip" | "Gelu" | "LeakyRelu" | "CumSum" | "Trilu" | "HardSigmoid" => same(c),
        "SimplifiedLayerNormalization" => elementwise::norm_with_stats(c),
        "LayerNormalization" | "RMSNormalization" => elementwise::layer_norm(c),
        // The shape of the input, booleans: inferred rather than read from the file, whose
        // value_info (from an export at another size) may leave the sizes unknown.
        "IsNaN" | "IsInf" => elementwise::is_nan_or_inf(c),
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "And" | "Or" | "Xor" | "Equal"
        | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Mod" => {
            elementwise::binary(c, op)
        }
        "Where" => elementwise::select(c),
        "Cast" => elementwise::cast(c),
        "CastLike" => elementwise::cast_like(c),
        "MatMul" => linear::matmul(c),
        "Gemm" => linear::gemm(c),
        "Einsum" => linear::einsum(c),
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2"
        | "ArgMax" | "ArgMin" => reduce::reduce(c, op),
        "Reshape" => layout::reshape(c),
        "Flatten" => layout::flatten(c),
        "Transpose" => layout::transpose(c),
        "Squeeze" => layout::squeeze(c),
        "Unsqueeze" => layout::unsqueeze(c),
        "Concat" => layout::concat(c),
        "Split" => layout::split(c),
        "Slice" => layout::slice(c),
        "Expand" => layout::expand(c),
        "Tile" => layout::tile(c),
        "Gather" => indexing::gather(c),
        "GatherElements" => indexing::gather_elements(c),
        "GatherND" => indexing::gather_nd(c),
        "ScatterND" | "ScatterElements" => same(c),
        "TopK" => indexing::top_k(c),
        "OneHot" => indexing::one_hot(c),
        "NonZero" => indexing::non_zero(c),
        "Range" => constants::range(c),
        "Shape" => constants::shape(c),
        "Size" => constants::size(c),
        "ConstantOfShape" => constants::constant_of_shape(c),
        "Constant" => constants::constant(c),
        _ => Ok(c.unknown()),
    }
}

/// The rank of a result whose shape is the value of a 1-D tensor computed at run time.
fn run_time_rank(shape: &TensorType) -> Result<usize, String> {
    match shape.dims.as_slice() {
        [Dim::Known(n)] => Ok(*n as usize),
        _ => Err(format!(
            "the result's rank depends on a run-time shape tensor of type {}",
            shape.mlir()
        )),
    }
}

/// Integer constants (shape arithmetic) stored as `dtype`; other targets keep them as they are.
fn retype(t: TensorData, dtype: DType) -> TensorData {
    if dtype.is_float() {
        return t;
    }
    t.to_dtype(dtype).unwrap_or(t)
}

/// The product of sizes, None when one is unknown or the product overflows (a hostile model's
/// sizes are then unknown, never a wrapped number).
fn known_product(mut dims: impl Iterator<Item = Option<i64>>) -> Option<i64> {
    dims.try_fold(1i64, |acc, d| acc.checked_mul(d?))
}
