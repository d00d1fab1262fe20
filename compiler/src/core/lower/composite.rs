//! ONNX ops lowered to several core instructions: Gemm (a MatMul with its transposes folded
//! into the weight, then the scaled bias), IsNaN (x != x), the RMS norms (with a skip input,
//! genai's fused forms) and Clip (Max then Min).

use super::{attr_f, attr_i, runtime_dtype, Lowering};
use crate::error::CompileError;
use ppmoe_frontend::Node;
use ppmoe_runtime::program::{BinaryFn, BufferId, BufferKind, Op, ReduceFn, UnaryFn};
use ppmoe_runtime::{kernels, DType, Tensor};

impl Lowering<'_> {
    /// Y = alpha * op(A) @ op(B) + beta * C.
    pub(super) fn lower_gemm(&mut self, node: &Node) -> Result<(), CompileError> {
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
        let a = self.gemm_operand(node, &node.inputs[0], ta, dtype)?;
        let b = self.gemm_operand(node, &node.inputs[1], tb, dtype)?;
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
            let c = self.gemm_bias(node, &node.inputs[2], beta, dtype);
            self.emit(
                node,
                Op::Binary { f: BinaryFn::Add },
                vec![Some(cur), Some(c)],
                vec![final_out],
            );
        }
        Ok(())
    }

    /// A Gemm operand, transposed where `transposed`: a constant once, here; a run-time value
    /// by a transpose instruction.
    fn gemm_operand(
        &mut self,
        node: &Node,
        name: &str,
        transposed: bool,
        dtype: DType,
    ) -> Result<BufferId, CompileError> {
        if !transposed {
            return Ok(self.operand(name));
        }
        if let Some(c) = self.consts.get(name) {
            // A transposed weight is transposed once, here.
            let tt = kernels::execute(&Op::Transpose { perm: vec![1, 0] }, &[Some(c)], 1)
                .map_err(|e| self.node_err(node, e))?
                .remove(0);
            return Ok(self.const_operand(name, tt));
        }
        let src = self.operand(name);
        let ty = self.types.get(name).cloned();
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
        let tmp = self.temp(name, dtype, tshape);
        self.emit(
            node,
            Op::Transpose { perm: vec![1, 0] },
            vec![Some(src)],
            vec![tmp],
        );
        Ok(tmp)
    }

    /// Gemm's C times beta: itself where beta is 1, a scaled constant, or a run-time product.
    fn gemm_bias(&mut self, node: &Node, c_name: &str, beta: f32, dtype: DType) -> BufferId {
        if beta == 1.0 {
            return self.operand(c_name);
        }
        if let Some(cv) = self.consts.get(c_name).cloned() {
            let scaled = Tensor::f32(
                cv.shape.clone(),
                cv.to_f32().iter().map(|v| v * beta).collect(),
            )
            .with_dtype(cv.dtype);
            return self.const_operand(c_name, scaled);
        }
        let src = self.operand(c_name);
        let s = self.const_operand(c_name, Tensor::f32(vec![], vec![beta]).with_dtype(dtype));
        let cshape = self.buffers[src].shape.clone();
        let tmp = self.temp(c_name, dtype, cshape);
        self.emit(
            node,
            Op::Binary { f: BinaryFn::Mul },
            vec![Some(src), Some(s)],
            vec![tmp],
        );
        tmp
    }

    /// IsNaN(x) = not(x == x): NaN is the one value unequal to itself (exact, and both ops
    /// already run everywhere).
    pub(super) fn lower_is_nan(&mut self, node: &Node) -> Result<(), CompileError> {
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
    pub(super) fn lower_rms_norm(&mut self, node: &Node, skip: bool) -> Result<(), CompileError> {
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
        let mean = self.temp(&hint, dtype, stat_shape.clone());
        let (op, operands) = match shape.len().checked_sub(1) {
            Some(last) => (
                Op::ReduceAxes {
                    f: ReduceFn::Mean,
                    axes: vec![last],
                    keepdims: true,
                },
                vec![Some(sq)],
            ),
            None => {
                let axes = self.const_operand(&hint, Tensor::i64(vec![1], vec![-1]));
                let reduce = Op::Reduce {
                    f: ReduceFn::Mean,
                    keepdims: true,
                    noop_with_empty_axes: false,
                };
                (reduce, vec![Some(sq), Some(axes)])
            }
        };
        self.emit(node, op, operands, vec![mean]);
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

    /// Clip(x, lo, hi) = Min(Max(x, lo), hi), each bound only where given.
    pub(super) fn lower_clip(&mut self, node: &Node) -> Result<(), CompileError> {
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
