//! Lowering the ONNX graph to a `core` program (one rank).
//!
//!   onnx:  %y = "onnx.Gemm"(%x, %w, %b) {transB = 1}     (w: [out, in], a weight)
//!   core:  %y0 = "core.mat_mul"(%x, %wT)                  (wT: [in, out], folded at compile time)
//!          %y  = "core.add"(%y0, %b)
//!
//! Every node whose operands are all known at compile time (weights, constants, shapes of
//! static tensors) is evaluated here with the runtime's own kernels, so the program keeps only
//! data-dependent work. Gemm becomes MatMul (+ Mul, Add), Clip becomes Max/Min, Identity an
//! alias, and Reshape/Squeeze/Unsqueeze/Flatten a `reshape_to` with the static shape as an
//! attribute wherever the result's shape is known.

use crate::error::CompileError;
use ppmoe_frontend::{AttrValue, Dim, Model, Node, Types};
use ppmoe_runtime::program::{Buffer, BufferId, BufferKind, Instruction, Op, Program, Reduction};
use ppmoe_runtime::{kernels, DType, Tensor};
use std::collections::{HashMap, HashSet};

mod composite;
mod fused_moe;
mod gqa;
mod op_table;
mod split;
mod weights;

pub use weights::{convert_initializers, runtime_dtype, tensor_of};

/// A lowered program with the weights it reads.
pub struct CoreProgram {
    pub program: Program,
    pub weights: Vec<(String, Tensor)>,
    /// The MoE layers raised so far (fused source ops are read during lowering).
    pub moe_layers: Vec<crate::moe::MoeLayer>,
    /// The model's input and output names with their buffer ids.
    pub input_names: Vec<String>,
    pub output_names: Vec<String>,
    /// Nodes whose values could have been computed at compile time but were left to run time
    /// for their size (see `Lowering::fold`): another lowering of the model (the few-token
    /// probe) leaves the same ones, so that the two programs have the same instructions.
    pub run_time_nodes: HashSet<String>,
}

/// A value computed at compile time from the shape of a run-time input (a position range, a
/// mask) grows with the token count: it is folded only up to this size.
const SHAPE_DERIVED_FOLD_BYTES: usize = 64 << 10;

/// How large a tensor compile-time evaluation may make (`--eval-limit`, MiB on the CLI).
pub const DEFAULT_EVAL_LIMIT_BYTES: usize = 256 << 20;

/// The bytes of a tensor of `shape` and `dtype`; None when the count overflows or is unknown.
pub fn static_bytes(shape: &[Option<usize>], dtype: DType) -> Option<usize> {
    shape
        .iter()
        .try_fold(dtype.size(), |acc, d| d.and_then(|d| acc.checked_mul(d)))
}

/// The ops the core stage accepts (for the error message on anything else).
pub const SUPPORTED: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "Cast",
    "CastLike",
    "Ceil",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Cos",
    "CumSum",
    "Div",
    "Einsum",
    "Equal",
    "IsNaN",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "Gelu",
    "GatherElements",
    "GatherND",
    "Gemm",
    "Greater",
    "GreaterOrEqual",
    "Identity",
    "LayerNormalization",
    "RMSNormalization",
    "SimplifiedLayerNormalization",
    "com.microsoft.SkipSimplifiedLayerNormalization",
    "com.microsoft.GroupQueryAttention",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "Min",
    "Mod",
    "Mul",
    "Neg",
    "NonZero",
    "Not",
    "OneHot",
    "Or",
    "Pow",
    "Range",
    "Reciprocal",
    "ReduceL2",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "Relu",
    "Reshape",
    "ScatterElements",
    "ScatterND",
    "Shape",
    "Sigmoid",
    "Sign",
    "Sin",
    "Size",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Tile",
    "TopK",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Where",
    "Xor",
];

struct Lowering<'m> {
    model: &'m Model,
    types: &'m Types,
    buffers: Vec<Buffer>,
    ids: HashMap<String, BufferId>,
    /// Values known at compile time.
    consts: HashMap<String, Tensor>,
    instructions: Vec<Instruction>,
    weights: Vec<(String, Tensor)>,
    fresh: usize,
    moe_layers: Vec<crate::moe::MoeLayer>,
    /// Folding never makes a tensor larger than this; a larger value stays a run-time op.
    eval_limit: usize,
    /// Constants computed from the shape of a run-time input (they grow with its sizes).
    shape_derived: HashSet<String>,
    /// Nodes never folded (another lowering left them to run time); and those this one left.
    keep_run_time: &'m HashSet<String>,
    run_time_nodes: HashSet<String>,
}

/// The static slice of a tensor of `shape` that ONNX Slice's `ranges` take (axis, first index,
/// step, count: `shape::slice_ranges`), one offset, size and stride per axis; None where a step
/// is negative (upstream's slices step forward) or an axis is sliced twice.
pub(crate) fn extract_slice(shape: &[usize], ranges: &[(usize, i64, i64, usize)]) -> Option<Op> {
    let mut offsets = vec![0; shape.len()];
    let mut sizes = shape.to_vec();
    let mut strides = vec![1; shape.len()];
    let mut seen = vec![false; shape.len()];
    for &(a, first, step, count) in ranges {
        if step <= 0 || std::mem::replace(seen.get_mut(a)?, true) {
            return None;
        }
        offsets[a] = usize::try_from(first).ok()?;
        sizes[a] = count;
        strides[a] = usize::try_from(step).ok()?;
    }
    Some(Op::ExtractSlice {
        offsets,
        sizes,
        strides,
    })
}

fn attr_i(n: &Node, k: &str, d: i64) -> i64 {
    match n.attr(k) {
        Some(AttrValue::Int(v)) => *v,
        _ => d,
    }
}

fn attr_f(n: &Node, k: &str, d: f32) -> f32 {
    match n.attr(k) {
        Some(AttrValue::Float(v)) => *v,
        _ => d,
    }
}

fn reduction(n: &Node) -> Result<Reduction, String> {
    Ok(match n.attr("reduction") {
        None => Reduction::None,
        Some(AttrValue::String(s)) => match s.as_str() {
            "none" => Reduction::None,
            "add" => Reduction::Add,
            "mul" => Reduction::Mul,
            "max" => Reduction::Max,
            "min" => Reduction::Min,
            other => return Err(format!("unknown reduction '{other}'")),
        },
        Some(_) => return Err("reduction must be a string".into()),
    })
}

impl<'m> Lowering<'m> {
    fn node_err(&self, node: &Node, reason: impl Into<String>) -> CompileError {
        CompileError::Node {
            path: self.model.path.clone(),
            node: node.name.clone(),
            op: node.qualified_op(),
            reason: reason.into(),
        }
    }

    fn buffer_for_value(&mut self, name: &str, kind: BufferKind) -> BufferId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let ty = self.types.get(name);
        let (dtype, shape) = match ty {
            Some(t) => (
                runtime_dtype(t.dtype),
                t.dims
                    .iter()
                    .map(|d| d.known().map(|v| v as usize))
                    .collect(),
            ),
            None => (DType::F32, vec![]),
        };
        self.push_buffer(name, dtype, shape, kind)
    }

    fn push_buffer(
        &mut self,
        name: &str,
        dtype: DType,
        shape: Vec<Option<usize>>,
        kind: BufferKind,
    ) -> BufferId {
        let id = self.buffers.len();
        self.buffers.push(Buffer {
            name: name.to_string(),
            dtype,
            shape,
            kind,
        });
        self.ids.insert(name.to_string(), id);
        id
    }

    /// The buffer holding `name`: a constant becomes a weight buffer on first use.
    fn operand(&mut self, name: &str) -> BufferId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        if let Some(t) = self.consts.get(name).cloned() {
            let id = self.push_buffer(
                name,
                t.dtype,
                t.shape.iter().map(|&d| Some(d)).collect(),
                BufferKind::Weight,
            );
            self.weights.push((name.to_string(), t));
            return id;
        }
        self.buffer_for_value(name, BufferKind::Temp)
    }

    fn operands(&mut self, node: &Node) -> Vec<Option<BufferId>> {
        node.inputs
            .iter()
            .map(|n| {
                if n.is_empty() {
                    None
                } else {
                    Some(self.operand(n))
                }
            })
            .collect()
    }

    /// A new constant (a Reshape's target shape, say) as a weight buffer.
    fn const_operand(&mut self, hint: &str, t: Tensor) -> BufferId {
        self.fresh += 1;
        let name = format!("{hint}.const{}", self.fresh);
        self.consts.insert(name.clone(), t);
        self.operand(&name)
    }

    /// A fresh temporary with the given type.
    fn temp(&mut self, hint: &str, dtype: DType, shape: Vec<Option<usize>>) -> BufferId {
        self.fresh += 1;
        self.push_buffer(
            &format!("{hint}.tmp{}", self.fresh),
            dtype,
            shape,
            BufferKind::Temp,
        )
    }

    fn emit(&mut self, node: &Node, op: Op, inputs: Vec<Option<BufferId>>, outputs: Vec<BufferId>) {
        self.instructions.push(Instruction {
            op,
            inputs,
            outputs,
            origin: node.name.clone(),
        });
    }

    fn outputs(&mut self, node: &Node) -> Vec<BufferId> {
        node.outputs
            .iter()
            .map(|o| self.buffer_for_value(o, BufferKind::Temp))
            .collect()
    }

    fn static_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.types.get(name).and_then(|t| {
            t.dims
                .iter()
                .map(|d| d.known().map(|v| v as usize))
                .collect()
        })
    }

    /// A reduction whose axes operand is a known constant naming at least one axis, as the
    /// reduction over those axes (`reduce_axes`), counted from the front, in order.
    fn static_reduce(&self, node: &Node) -> Result<Option<Op>, CompileError> {
        let Op::Reduce { f, keepdims, .. } = self.op_for(node)? else {
            return Ok(None);
        };
        let rank = node
            .inputs
            .first()
            .and_then(|x| self.types.get(x))
            .map(|t| t.dims.len());
        let axes = node
            .inputs
            .get(1)
            .filter(|n| !n.is_empty())
            .and_then(|n| self.consts.get(n));
        let (Some(rank), Some(axes)) = (rank, axes) else {
            return Ok(None);
        };
        let mut from_front = Vec::new();
        for a in axes.to_i64() {
            let a = ppmoe_runtime::kernels::axis(a, rank).map_err(|e| self.node_err(node, e))?;
            from_front.push(a);
        }
        from_front.sort_unstable();
        from_front.dedup();
        Ok((!from_front.is_empty()).then_some(Op::ReduceAxes {
            f,
            axes: from_front,
            keepdims,
        }))
    }

    /// The rank of the node's first operand and the value of its second where that is a
    /// known constant (a CumSum's axis, a TopK's k).
    fn rank_and_constant(&self, node: &Node) -> Option<(usize, i64)> {
        let rank = self.types.get(node.inputs.first()?)?.dims.len();
        let value = self.consts.get(node.inputs.get(1)?)?.to_i64();
        Some((rank, *value.first()?))
    }

    /// A CumSum whose axis operand is a known constant, as the running sum along that axis
    /// (`cum_sum_axis`), counted from the front.
    fn static_cum_sum(&self, node: &Node) -> Result<Option<Op>, CompileError> {
        let Op::CumSum { exclusive, reverse } = self.op_for(node)? else {
            return Ok(None);
        };
        let Some((rank, axis)) = self.rank_and_constant(node) else {
            return Ok(None);
        };
        let axis = ppmoe_runtime::kernels::axis(axis, rank).map_err(|e| self.node_err(node, e))?;
        Ok(Some(Op::CumSumAxis {
            axis,
            exclusive,
            reverse,
        }))
    }

    /// A TopK whose k operand is a known constant, as the top-k along its axis (`top_k_axis`),
    /// counted from the front.
    fn static_top_k(&self, node: &Node) -> Result<Option<Op>, CompileError> {
        let Op::TopK { axis, largest } = self.op_for(node)? else {
            return Ok(None);
        };
        let Some((rank, k)) = self.rank_and_constant(node) else {
            return Ok(None);
        };
        let Ok(k) = usize::try_from(k) else {
            return Ok(None);
        };
        let axis = ppmoe_runtime::kernels::axis(axis, rank).map_err(|e| self.node_err(node, e))?;
        Ok(Some(Op::TopKAxis { axis, k, largest }))
    }

    /// A Slice whose input's shape and every bound (starts, ends, axes, steps) are known, as
    /// the static slice it is (`extract_slice`), where its steps are positive.
    fn static_slice(&self, node: &Node) -> Option<Op> {
        let shape = self.static_shape(node.inputs.first()?)?;
        let bound = |k: usize| -> Option<Option<Vec<i64>>> {
            match node.inputs.get(k).filter(|n| !n.is_empty()) {
                None => Some(None),
                Some(name) => Some(Some(self.consts.get(name)?.to_i64())),
            }
        };
        let (starts, ends) = (bound(1)??, bound(2)??);
        let (axes, steps) = (bound(3)?, bound(4)?);
        let ranges = ppmoe_runtime::kernels::slice_ranges(
            &shape,
            (&starts, &ends),
            axes.as_deref(),
            steps.as_deref(),
        )
        .ok()?;
        extract_slice(&shape, &ranges)
    }

    /// Tries to evaluate a node at compile time; true when it was.
    fn fold(&mut self, node: &Node) -> Result<bool, CompileError> {
        if node.op_type == "Constant" {
            let data =
                ppmoe_frontend::infer::constant_value(node).map_err(|e| self.node_err(node, e))?;
            let t = tensor_of(&data)
                .map_err(|e| self.node_err(node, format!("malformed constant: {e}")))?;
            self.consts.insert(node.outputs[0].clone(), t);
            return Ok(true);
        }
        if matches!(node.op_type.as_str(), "Shape" | "Size") && self.fold_shape(node)? {
            return Ok(true);
        }
        let all_const = node
            .inputs
            .iter()
            .all(|i| i.is_empty() || self.consts.contains_key(i));
        if !all_const {
            return Ok(false);
        }
        let op = match self.op_for(node) {
            Ok(op) => op,
            // Gemm and Clip lower to several ops: fold them through their lowering instead.
            Err(_) => return Ok(false),
        };
        let derived = node.inputs.iter().any(|i| self.shape_derived.contains(i));
        if !self.may_fold(node, derived) {
            return Ok(false);
        }
        let args: Vec<Option<&Tensor>> = node
            .inputs
            .iter()
            .map(|i| {
                if i.is_empty() {
                    None
                } else {
                    self.consts.get(i)
                }
            })
            .collect();
        let outs =
            kernels::execute(&op, &args, node.outputs.len()).map_err(|e| self.node_err(node, e))?;
        for (name, t) in node.outputs.iter().zip(outs) {
            let want = self
                .types
                .get(name)
                .map(|t| runtime_dtype(t.dtype))
                .unwrap_or(t.dtype);
            self.consts.insert(name.clone(), t.with_dtype(want));
            if derived {
                self.shape_derived.insert(name.clone());
            }
        }
        Ok(true)
    }

    /// Shape and Size of a tensor whose shape is static are constants, whatever its values:
    /// folded (and marked as grown from a run-time input's shape where it is one); false where
    /// the shape is not static.
    fn fold_shape(&mut self, node: &Node) -> Result<bool, CompileError> {
        let Some(shape) = self.static_shape(&node.inputs[0]) else {
            return Ok(false);
        };
        let t = match self.op_for(node)? {
            Op::Shape { start, end } => kernels::shape_values(&shape, start, end),
            _ => {
                let overflows =
                    || self.node_err(node, format!("the element count of {shape:?} overflows"));
                let n = shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .ok_or_else(overflows)?;
                let n = i64::try_from(n).map_err(|_| overflows())?;
                Tensor::i64(vec![], vec![n])
            }
        };
        self.consts.insert(node.outputs[0].clone(), t);
        if !self.consts.contains_key(&node.inputs[0]) {
            self.shape_derived.insert(node.outputs[0].clone());
        }
        Ok(true)
    }

    /// Whether a node of constant operands may be folded: not one another lowering left to
    /// run time, and its result within the evaluation limit (smaller where it grows with a
    /// run-time input's shape: `derived`); a node left for its size is remembered.
    fn may_fold(&mut self, node: &Node, derived: bool) -> bool {
        let limit = if derived {
            SHAPE_DERIVED_FOLD_BYTES.min(self.eval_limit)
        } else {
            self.eval_limit
        };
        if self.keep_run_time.contains(&node.name) {
            return false;
        }
        if !self.fits(node, limit) {
            tracing::debug!(
                "node \"{}\" ({}): not folded: its result is over {} KiB{}; it runs at run time",
                node.name,
                node.op_type,
                limit >> 10,
                if derived {
                    " and grows with the input's sizes"
                } else {
                    " (--eval-limit)"
                }
            );
            self.run_time_nodes.insert(node.name.clone());
            return false;
        }
        true
    }

    /// Whether every output's inferred size is known and within `limit` bytes.
    fn fits(&self, node: &Node, limit: usize) -> bool {
        node.outputs.iter().all(|o| {
            let Some(ty) = self.types.get(o) else {
                return false;
            };
            let dims: Vec<Option<usize>> = ty
                .dims
                .iter()
                .map(|d| d.known().and_then(|v| usize::try_from(v).ok()))
                .collect();
            static_bytes(&dims, runtime_dtype(ty.dtype)).is_some_and(|b| b <= limit)
        })
    }

    /// Whether `node`'s operand and output have the same known element type.
    fn casts_to_own_type(&self, node: &Node) -> bool {
        let dtype = |name: &String| self.types.get(name).map(|t| t.dtype);
        match (node.inputs.first(), node.outputs.first()) {
            (Some(i), Some(o)) => dtype(i).is_some_and(|d| Some(d) == dtype(o)),
            _ => false,
        }
    }

    fn unsupported(&self, node: &Node) -> CompileError {
        CompileError::UnsupportedOp {
            path: self.model.path.clone(),
            node: node.name.clone(),
            op: node.qualified_op(),
            supported: SUPPORTED.join(", "),
        }
    }

    fn lower_node(&mut self, node: &Node) -> Result<(), CompileError> {
        if self.fold(node)? {
            return Ok(());
        }
        match node.op_type.as_str() {
            "Identity" if node.domain.is_empty() => {
                let src = self.operand(&node.inputs[0]);
                self.ids.insert(node.outputs[0].clone(), src);
                Ok(())
            }
            // A cast to the type its operand has is the operand (there is no upstream
            // identity op to print it as).
            "Cast" | "CastLike" if node.domain.is_empty() && self.casts_to_own_type(node) => {
                let src = self.operand(&node.inputs[0]);
                self.ids.insert(node.outputs[0].clone(), src);
                Ok(())
            }
            "Gemm" if node.domain.is_empty() => self.lower_gemm(node),
            "MoE" if node.domain == "com.microsoft" => self.lower_fused_moe(node),
            "SimplifiedLayerNormalization" | "RMSNormalization"
                if node.domain.is_empty() || node.domain == "com.microsoft" =>
            {
                self.lower_rms_norm(node, false)
            }
            "GroupQueryAttention" if node.domain == "com.microsoft" => self.lower_gqa(node),
            "SkipSimplifiedLayerNormalization" if node.domain == "com.microsoft" => {
                self.lower_rms_norm(node, true)
            }
            "Clip" if node.domain.is_empty() => self.lower_clip(node),
            "IsNaN" if node.domain.is_empty() => self.lower_is_nan(node),
            "Split" if node.domain.is_empty() && self.lower_split_as_slices(node)? => Ok(()),
            "Reshape" | "Squeeze" | "Unsqueeze" | "Flatten"
                if node.domain.is_empty() && self.static_shape(&node.outputs[0]).is_some() =>
            {
                let shape = self.static_shape(&node.outputs[0]).unwrap_or_default();
                let x = self.operand(&node.inputs[0]);
                if self.buffers[x]
                    .shape
                    .iter()
                    .map(|d| d.unwrap_or(usize::MAX))
                    .eq(shape.iter().copied())
                {
                    // A reshape to the shape it already has is the value itself.
                    self.ids.insert(node.outputs[0].clone(), x);
                    return Ok(());
                }
                let out = self.outputs(node);
                self.emit(node, Op::ReshapeTo { shape }, vec![Some(x)], out);
                Ok(())
            }
            "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2"
                if node.domain.is_empty() =>
            {
                let op = self.static_reduce(node)?;
                self.lower_static(node, op)
            }
            "TopK" if node.domain.is_empty() => {
                let op = self.static_top_k(node)?;
                self.lower_static(node, op)
            }
            "CumSum" if node.domain.is_empty() => {
                let op = self.static_cum_sum(node)?;
                self.lower_static(node, op)
            }
            "Slice" if node.domain.is_empty() => {
                let op = self.static_slice(node);
                self.lower_static(node, op)
            }
            "Expand" if node.domain.is_empty() && self.static_shape(&node.outputs[0]).is_some() => {
                // The result's shape is the broadcast's: the shape operand is spent.
                let shape = self.static_shape(&node.outputs[0]).unwrap_or_default();
                let x = self.operand(&node.inputs[0]);
                let out = self.outputs(node);
                self.emit(node, Op::ExpandTo { shape }, vec![Some(x)], out);
                Ok(())
            }
            "Tile" if node.domain.is_empty() && self.tile_as_broadcast(node).is_some() => {
                // Only axes of one element repeat: the tile is their broadcast to its shape.
                let shape = self.tile_as_broadcast(node).unwrap_or_default();
                let x = self.operand(&node.inputs[0]);
                let out = self.outputs(node);
                self.emit(node, Op::ExpandTo { shape }, vec![Some(x)], out);
                Ok(())
            }
            _ => self.lower_as_op(node),
        }
    }

    /// The result's shape of a Tile of static shapes that repeats only axes of one element
    /// (any other keeps its extent): a broadcast of its operand to that shape.
    fn tile_as_broadcast(&self, node: &Node) -> Option<Vec<usize>> {
        let x = self.static_shape(node.inputs.first()?)?;
        let out = self.static_shape(node.outputs.first()?)?;
        let broadcast = x.len() == out.len() && x.iter().zip(&out).all(|(&a, &b)| a == b || a == 1);
        broadcast.then_some(out)
    }

    /// The node as `op`, its static form over its first operand alone (the operands that gave
    /// the axes or bounds spent), where it has one; else as the `core` op of its type.
    fn lower_static(&mut self, node: &Node, op: Option<Op>) -> Result<(), CompileError> {
        let Some(op) = op else {
            return self.lower_as_op(node);
        };
        let x = self.operand(&node.inputs[0]);
        let out = self.outputs(node);
        self.emit(node, op, vec![Some(x)], out);
        Ok(())
    }

    /// The node as the one `core` op of its type, its operands and outputs as they are.
    fn lower_as_op(&mut self, node: &Node) -> Result<(), CompileError> {
        let op = self.op_for(node)?;
        let ins = self.operands(node);
        let outs = self.outputs(node);
        self.emit(node, op, ins, outs);
        Ok(())
    }
}

/// Lowers a model (with its inferred types) to a one-rank `core` program.
pub fn lower_to_core(model: &Model, types: &Types) -> Result<CoreProgram, CompileError> {
    lower_to_core_with(
        model,
        types,
        &convert_initializers(model)?,
        DEFAULT_EVAL_LIMIT_BYTES,
        &HashSet::new(),
    )
}

/// As [`lower_to_core`], with the initializers already converted (shared, not copied), a
/// limit on the size of what compile-time evaluation may make, and nodes to leave to run time
/// whatever their size (another lowering's `run_time_nodes`).
pub fn lower_to_core_with(
    model: &Model,
    types: &Types,
    initializers: &[(String, Tensor)],
    eval_limit: usize,
    keep_run_time: &HashSet<String>,
) -> Result<CoreProgram, CompileError> {
    let g = &model.graph;
    for input in &g.inputs {
        if input.ty.dims.iter().any(|d| !matches!(d, Dim::Known(_))) {
            return Err(CompileError::DynamicInput {
                path: model.path.clone(),
                input: input.name.clone(),
                dims: input.ty.mlir(),
            });
        }
    }
    let mut l = Lowering {
        model,
        types,
        buffers: vec![],
        ids: HashMap::new(),
        consts: HashMap::new(),
        instructions: vec![],
        weights: vec![],
        fresh: 0,
        moe_layers: vec![],
        eval_limit,
        shape_derived: HashSet::new(),
        keep_run_time,
        run_time_nodes: HashSet::new(),
    };
    let inputs: Vec<BufferId> = g
        .inputs
        .iter()
        .map(|i| l.buffer_for_value(&i.name, BufferKind::Input))
        .collect();
    for (name, t) in initializers {
        l.consts.insert(name.clone(), t.clone());
    }
    for node in &g.nodes {
        l.lower_node(node)?;
    }
    let mut outputs = Vec::new();
    for o in &g.outputs {
        let id = match l.ids.get(&o.name) {
            Some(&id) => id,
            None => l.operand(&o.name),
        };
        if l.buffers[id].kind != BufferKind::Temp {
            return Err(CompileError::Node {
                path: model.path.clone(),
                node: o.name.clone(),
                op: "output".into(),
                reason: "the output is an input or a constant of the model, not computed: nothing to compile".into(),
            });
        }
        l.buffers[id].kind = BufferKind::Output;
        l.buffers[id].name = o.name.clone();
        outputs.push(id);
    }
    let program = Program {
        rank: 0,
        buffers: l.buffers,
        inputs,
        outputs,
        instructions: l.instructions,
        weights_file: "rank0.safetensors".into(),
        coords: [0; 3],
        gpu: vec![],
        ptx_file: None,
    };
    let program = crate::passes::dead_code::remove_dead_code(program, &mut l.weights);
    Ok(CoreProgram {
        program,
        weights: l.weights,
        moe_layers: l.moe_layers,
        input_names: g.inputs.iter().map(|i| i.name.clone()).collect(),
        output_names: g.outputs.iter().map(|o| o.name.clone()).collect(),
        run_time_nodes: l.run_time_nodes,
    })
}
