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
use ppmoe_frontend::{AttrValue, Dim, Model, Node, TensorData, Types};
use ppmoe_runtime::program::{
    BinaryFn, Buffer, BufferId, BufferKind, Instruction, Op, Program, ReduceFn, Reduction, UnaryFn,
};
use ppmoe_runtime::tensor::Buf;
use ppmoe_runtime::{kernels, DType, Tensor};
use std::collections::{HashMap, HashSet};

mod fused_moe;
mod gqa;
mod op_table;
mod split;

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

pub fn runtime_dtype(d: ppmoe_frontend::DType) -> DType {
    use ppmoe_frontend::DType as F;
    match d {
        F::F32 => DType::F32,
        F::F16 => DType::F16,
        F::BF16 => DType::BF16,
        F::F64 => DType::F64,
        F::I8 => DType::I8,
        F::I16 => DType::I16,
        F::I32 => DType::I32,
        F::I64 => DType::I64,
        F::U8 => DType::U8,
        F::U16 => DType::U16,
        F::U32 => DType::U32,
        F::U64 => DType::U64,
        F::Bool => DType::Bool,
    }
}

/// A constant's or weight's value as a tensor (external data read here, one tensor at a time).
pub fn tensor_of(t: &TensorData) -> Result<Tensor, String> {
    if let (Some(x), true) = (&t.external, cfg!(target_endian = "little")) {
        match t.dtype {
            ppmoe_frontend::DType::F32 => {
                return read_external::<f32>(t, x).map(|(shape, v)| Tensor {
                    dtype: DType::F32,
                    shape,
                    data: std::sync::Arc::new(ppmoe_runtime::tensor::Data::F32(v)),
                })
            }
            // bf16 and f16 stay as their bits: no f32 copy of a half-precision model.
            d @ (ppmoe_frontend::DType::BF16 | ppmoe_frontend::DType::F16) => {
                let (shape, bits) = read_external::<u16>(t, x)?;
                return Ok(Tensor {
                    dtype: runtime_dtype(d),
                    shape,
                    data: std::sync::Arc::new(ppmoe_runtime::tensor::Data::Half(bits)),
                });
            }
            _ => {}
        }
    }
    let bytes = t.load_bytes().map_err(|e| match &t.external {
        Some(x) => format!(
            "cannot read {} bytes at offset {} of {}: {e}",
            x.length,
            x.offset,
            x.file.display()
        ),
        None => e.to_string(),
    })?;
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension in {:?}", t.dims)))
        .collect::<Result<Vec<_>, _>>()?;
    Tensor::from_bytes(runtime_dtype(t.dtype), shape, &bytes).ok_or_else(|| {
        format!(
            "{} bytes do not hold a {:?} tensor of shape {:?}",
            bytes.len(),
            t.dtype,
            t.dims
        )
    })
}

/// An external weight as its tensor's storage: a run of the memory-mapped file where it is
/// aligned (nothing is read until used, and then paged in and out by the kernel), else read
/// straight into an owned buffer (no byte buffer beside it).
fn read_external<T: bytemuck::Pod>(
    t: &TensorData,
    x: &ppmoe_frontend::ExternalData,
) -> Result<(Vec<usize>, Buf<T>), String> {
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension in {:?}", t.dims)))
        .collect::<Result<Vec<_>, _>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("the element count of {shape:?} overflows"))?;
    let bytes = n.checked_mul(std::mem::size_of::<T>());
    if bytes.map(|b| b as u64) != Some(x.length) {
        return Err(format!(
            "{} bytes at offset {} of {} do not hold a tensor of shape {shape:?}",
            x.length,
            x.offset,
            x.file.display()
        ));
    }
    // SAFETY: the model's files are only read, and not changed while it is compiled.
    let mapped = unsafe { ppmoe_runtime::storage::map_path(&x.file) }
        .ok()
        .zip(usize::try_from(x.offset).ok())
        .and_then(|(map, offset)| Buf::mapped(&map, offset, n));
    if let Some(run) = mapped {
        return Ok((shape, run));
    }
    let mut v = vec![T::zeroed(); n];
    x.read_into(bytemuck::cast_slice_mut(&mut v)).map_err(|e| {
        format!(
            "cannot read {} bytes at offset {} of {}: {e}",
            x.length,
            x.offset,
            x.file.display()
        )
    })?;
    Ok((shape, v.into()))
}

/// The model's initializers as tensors, converted once and shared (by reference count) by every
/// program lowered from the model.
pub fn convert_initializers(model: &Model) -> Result<Vec<(String, Tensor)>, CompileError> {
    let bar = crate::progress::bar(model.graph.initializers.len() as u64, "reading weights");
    let mut out = Vec::with_capacity(model.graph.initializers.len());
    for (name, data) in &model.graph.initializers {
        bar.set_message(name.clone());
        let t = tensor_of(data).map_err(|reason| CompileError::Node {
            path: model.path.clone(),
            node: name.clone(),
            op: "initializer".into(),
            reason,
        })?;
        out.push((name.clone(), t));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

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
        // Shape and Size of a tensor whose shape is static are constants, whatever its values.
        if matches!(node.op_type.as_str(), "Shape" | "Size") {
            if let Some(shape) = self.static_shape(&node.inputs[0]) {
                let t = match self.op_for(node)? {
                    Op::Shape { start, end } => kernels::shape_values(&shape, start, end),
                    _ => {
                        let n = shape
                            .iter()
                            .try_fold(1usize, |a, &d| a.checked_mul(d))
                            .ok_or_else(|| {
                                self.node_err(
                                    node,
                                    format!("the element count of {shape:?} overflows"),
                                )
                            })?;
                        let n = i64::try_from(n).map_err(|_| {
                            self.node_err(node, format!("the element count of {shape:?} overflows"))
                        })?;
                        Tensor::i64(vec![], vec![n])
                    }
                };
                self.consts.insert(node.outputs[0].clone(), t);
                if !self.consts.contains_key(&node.inputs[0]) {
                    self.shape_derived.insert(node.outputs[0].clone());
                }
                return Ok(true);
            }
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
        let limit = if derived {
            SHAPE_DERIVED_FOLD_BYTES.min(self.eval_limit)
        } else {
            self.eval_limit
        };
        if self.keep_run_time.contains(&node.name) {
            return Ok(false);
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
            _ => {
                let op = self.op_for(node)?;
                let ins = self.operands(node);
                let outs = self.outputs(node);
                self.emit(node, op, ins, outs);
                Ok(())
            }
        }
    }

    /// Y = alpha * op(A) @ op(B) + beta * C.
    fn lower_gemm(&mut self, node: &Node) -> Result<(), CompileError> {
        let (ta, tb) = (
            attr_i(node, "transA", 0) != 0,
            attr_i(node, "transB", 0) != 0,
        );
        let (alpha, beta) = (attr_f(node, "alpha", 1.0), attr_f(node, "beta", 1.0));
        let out_ty = self
            .types
            .get(&node.outputs[0])
            .ok_or_else(|| self.node_err(node, "untyped output"))?
            .clone();
        let dtype = runtime_dtype(out_ty.dtype);
        let shape: Vec<Option<usize>> = out_ty
            .dims
            .iter()
            .map(|d| d.known().map(|v| v as usize))
            .collect();
        let operand_t = |this: &mut Self, name: &str, t: bool| -> Result<BufferId, CompileError> {
            if !t {
                return Ok(this.operand(name));
            }
            if let Some(c) = this.consts.get(name) {
                // A transposed weight is transposed once, here.
                let tt = kernels::execute(&Op::Transpose { perm: vec![1, 0] }, &[Some(c)], 1)
                    .map_err(|e| this.node_err(node, e))?
                    .remove(0);
                return Ok(this.const_operand(name, tt));
            }
            let src = this.operand(name);
            let ty = this.types.get(name).cloned();
            let tshape = ty
                .as_ref()
                .map(|t| {
                    t.dims
                        .iter()
                        .rev()
                        .map(|d| d.known().map(|v| v as usize))
                        .collect()
                })
                .unwrap_or_default();
            let tmp = this.temp(name, dtype, tshape);
            this.emit(
                node,
                Op::Transpose { perm: vec![1, 0] },
                vec![Some(src)],
                vec![tmp],
            );
            Ok(tmp)
        };
        let a = operand_t(self, &node.inputs[0], ta)?;
        let b = operand_t(self, &node.inputs[1], tb)?;
        let has_c = node.inputs.get(2).is_some_and(|c| !c.is_empty());
        let final_out = self.buffer_for_value(&node.outputs[0], BufferKind::Temp);
        let needs_more = alpha != 1.0 || has_c;
        let mm = if needs_more {
            self.temp(&node.outputs[0], dtype, shape.clone())
        } else {
            final_out
        };
        self.emit(node, Op::MatMul, vec![Some(a), Some(b)], vec![mm]);
        let mut cur = mm;
        if alpha != 1.0 {
            let s = self.const_operand(
                &node.outputs[0],
                Tensor::f32(vec![], vec![alpha]).with_dtype(dtype),
            );
            let next = if has_c {
                self.temp(&node.outputs[0], dtype, shape.clone())
            } else {
                final_out
            };
            self.emit(
                node,
                Op::Binary { f: BinaryFn::Mul },
                vec![Some(cur), Some(s)],
                vec![next],
            );
            cur = next;
        }
        if has_c {
            let c_name = node.inputs[2].clone();
            let c = if beta == 1.0 {
                self.operand(&c_name)
            } else if let Some(cv) = self.consts.get(&c_name).cloned() {
                let scaled = Tensor::f32(
                    cv.shape.clone(),
                    cv.to_f32().iter().map(|v| v * beta).collect(),
                )
                .with_dtype(cv.dtype);
                self.const_operand(&c_name, scaled)
            } else {
                let src = self.operand(&c_name);
                let s =
                    self.const_operand(&c_name, Tensor::f32(vec![], vec![beta]).with_dtype(dtype));
                let cshape = self.buffers[src].shape.clone();
                let tmp = self.temp(&c_name, dtype, cshape);
                self.emit(
                    node,
                    Op::Binary { f: BinaryFn::Mul },
                    vec![Some(src), Some(s)],
                    vec![tmp],
                );
                tmp
            };
            self.emit(
                node,
                Op::Binary { f: BinaryFn::Add },
                vec![Some(cur), Some(c)],
                vec![final_out],
            );
        }
        Ok(())
    }

    /// Clip(x, lo, hi) = Min(Max(x, lo), hi), each bound only where given.
    /// IsNaN(x) = not(x == x): NaN is the one value unequal to itself (exact, and both ops
    /// already run everywhere).
    fn lower_is_nan(&mut self, node: &Node) -> Result<(), CompileError> {
        let x = self.operand(&node.inputs[0]);
        let out = self.buffer_for_value(&node.outputs[0], BufferKind::Temp);
        let shape = self.buffers[out].shape.clone();
        let eq = self.temp(&node.outputs[0], DType::Bool, shape);
        self.emit(
            node,
            Op::Binary { f: BinaryFn::Equal },
            vec![Some(x), Some(x)],
            vec![eq],
        );
        self.emit(
            node,
            Op::Unary { f: UnaryFn::Not },
            vec![Some(eq)],
            vec![out],
        );
        Ok(())
    }

    /// RMS normalisation over the last axis, as ONNX's RMSNormalization, onnxruntime's
    /// SimplifiedLayerNormalization (x, scale) and SkipSimplifiedLayerNormalization (x, skip,
    /// gamma, bias?; the sum x + skip + bias normalised, and given as output 3 where asked):
    /// y = s / sqrt(mean(s^2) + epsilon) * scale, in ops the backends have. The statistics
    /// outputs (mean, inverse std-dev) are for training: read by another node, they are refused.
    fn lower_rms_norm(&mut self, node: &Node, skip: bool) -> Result<(), CompileError> {
        let given = |i: usize| node.inputs.get(i).filter(|n| !n.is_empty()).cloned();
        let axis = attr_i(node, "axis", -1);
        if axis != -1 {
            let rank = self.static_shape(&node.inputs[0]).map(|s| s.len() as i64);
            if rank.is_none_or(|r| axis != r - 1) {
                return Err(self.node_err(
                    node,
                    format!("normalisation over axis {axis}: only the last axis is supported"),
                ));
            }
        }
        let stats: &[usize] = if skip { &[1, 2] } else { &[1] };
        for &k in stats {
            if let Some(name) = node.outputs.get(k).filter(|n| !n.is_empty()) {
                let read = self
                    .model
                    .graph
                    .nodes
                    .iter()
                    .any(|n| n.inputs.contains(name))
                    || self.model.graph.outputs.iter().any(|o| &o.name == name);
                if read {
                    return Err(self.node_err(
                        node,
                        format!(
                            "output {k} ('{name}', a training statistic) is read: not supported"
                        ),
                    ));
                }
            }
        }
        let (x_name, scale_name) = if skip {
            (node.inputs[0].clone(), given(2))
        } else {
            (node.inputs[0].clone(), given(1))
        };
        let scale_name =
            scale_name.ok_or_else(|| self.node_err(node, "the scale (gamma) input is missing"))?;
        let out = self.buffer_for_value(&node.outputs[0], BufferKind::Temp);
        let (dtype, shape) = (self.buffers[out].dtype, self.buffers[out].shape.clone());
        let hint = node.outputs[0].clone();
        let mut cur = self.operand(&x_name);
        if skip {
            let others = [given(1), given(3)];
            for other in others.into_iter().flatten() {
                let b = self.operand(&other);
                let sum = self.temp(&hint, dtype, shape.clone());
                self.emit(
                    node,
                    Op::Binary { f: BinaryFn::Add },
                    vec![Some(cur), Some(b)],
                    vec![sum],
                );
                cur = sum;
            }
            if let Some(name) = node.outputs.get(3).filter(|n| !n.is_empty()) {
                self.ids.insert(name.clone(), cur);
            }
        }
        let epsilon = attr_f(node, "epsilon", 1e-5);
        let scale = self.operand(&scale_name);
        self.rms_norm_into(node, cur, scale, epsilon, out);
        Ok(())
    }

    /// out = x / sqrt(mean(x^2 over the last axis) + epsilon) * scale, in ops both backends
    /// have (x's type and shape are out's).
    pub(super) fn rms_norm_into(
        &mut self,
        node: &Node,
        cur: BufferId,
        scale: BufferId,
        epsilon: f32,
        out: BufferId,
    ) {
        let (dtype, shape) = (self.buffers[out].dtype, self.buffers[out].shape.clone());
        let mut stat_shape = shape.clone();
        if let Some(last) = stat_shape.last_mut() {
            *last = Some(1);
        }
        let hint = self.buffers[out].name.clone();
        let sq = self.temp(&hint, dtype, shape.clone());
        self.emit(
            node,
            Op::Binary { f: BinaryFn::Mul },
            vec![Some(cur), Some(cur)],
            vec![sq],
        );
        let axes = self.const_operand(&hint, Tensor::i64(vec![1], vec![-1]));
        let mean = self.temp(&hint, dtype, stat_shape.clone());
        self.emit(
            node,
            Op::Reduce {
                f: ReduceFn::Mean,
                keepdims: true,
                noop_with_empty_axes: false,
            },
            vec![Some(sq), Some(axes)],
            vec![mean],
        );
        let eps = self.const_operand(&hint, Tensor::f32(vec![], vec![epsilon]));
        let shifted = self.temp(&hint, dtype, stat_shape.clone());
        self.emit(
            node,
            Op::Binary { f: BinaryFn::Add },
            vec![Some(mean), Some(eps)],
            vec![shifted],
        );
        let root = self.temp(&hint, dtype, stat_shape);
        self.emit(
            node,
            Op::Unary { f: UnaryFn::Sqrt },
            vec![Some(shifted)],
            vec![root],
        );
        let normed = self.temp(&hint, dtype, shape);
        self.emit(
            node,
            Op::Binary { f: BinaryFn::Div },
            vec![Some(cur), Some(root)],
            vec![normed],
        );
        self.emit(
            node,
            Op::Binary { f: BinaryFn::Mul },
            vec![Some(normed), Some(scale)],
            vec![out],
        );
    }

    fn lower_clip(&mut self, node: &Node) -> Result<(), CompileError> {
        let x = self.operand(&node.inputs[0]);
        let lo = node.inputs.get(1).filter(|n| !n.is_empty()).cloned();
        let hi = node.inputs.get(2).filter(|n| !n.is_empty()).cloned();
        if node.attr("min").is_some() || node.attr("max").is_some() {
            return Err(self.node_err(
                node,
                "Clip's min/max attributes (opset < 11) are not supported",
            ));
        }
        let out = self.buffer_for_value(&node.outputs[0], BufferKind::Temp);
        let (dtype, shape) = (self.buffers[out].dtype, self.buffers[out].shape.clone());
        let mut cur = x;
        let steps: Vec<(BinaryFn, String)> = [(BinaryFn::Max, lo), (BinaryFn::Min, hi)]
            .into_iter()
            .filter_map(|(f, b)| b.map(|b| (f, b)))
            .collect();
        if steps.is_empty() {
            self.ids.insert(node.outputs[0].clone(), x);
            return Ok(());
        }
        for (i, (f, bound)) in steps.iter().enumerate() {
            let b = self.operand(bound);
            let dst = if i + 1 == steps.len() {
                out
            } else {
                self.temp(&node.outputs[0], dtype, shape.clone())
            };
            self.emit(
                node,
                Op::Binary { f: *f },
                vec![Some(cur), Some(b)],
                vec![dst],
            );
            cur = dst;
        }
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
