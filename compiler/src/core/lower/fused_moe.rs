//! Family A: onnxruntime's fused `com.microsoft.MoE` node (onnxruntime-genai's builder, the
//! bench's layer) becomes `moe.route` + `moe.experts`: its router probabilities' softmax and
//! top k the route, its fc1/fc2 (and fc3) stacks the experts' weights, as
//! `moe::fused_ort::read` reads them.
//!
//!   onnx: %y = "com.microsoft.MoE"(%x, %router_probs, %fc1, %fc1_b, %fc2, ...) {k = 2}
//!   core: %w, %ids = "moe.route"(%router_probs) {top_k = 2}
//!         %y = "moe.experts"(%x, %w, %ids, %w_in, %w_out, ...)

use super::Lowering;
use crate::error::CompileError;
use crate::moe::fused_ort::FusedMoe;
use ppmoe_frontend::Node;
use ppmoe_runtime::program::{BufferId, BufferKind, Op, RouteOrder, Scoring};
use ppmoe_runtime::DType;

impl Lowering<'_> {
    pub(super) fn lower_fused_moe(&mut self, node: &Node) -> Result<(), CompileError> {
        let x_shape = self.static_shape(&node.inputs[0]).ok_or_else(|| {
            self.node_err(node, "the input's shape must be static (use --input-shape)")
        })?;
        let (l_rank, (t, h, e)) = self.fused_moe_sizes(node, &x_shape)?;
        let consts = &self.consts;
        let weight = |i: usize| {
            node.inputs
                .get(i)
                .filter(|n| !n.is_empty())
                .and_then(|n| consts.get(n))
                .map(|t| t.clone().with_dtype(DType::F32))
        };
        let moe =
            crate::moe::fused_ort::read(node, h, weight).map_err(|e| self.node_err(node, e))?;
        // The route picks among the probabilities' experts: the stacks must hold each of them.
        let stacked = moe.ffn.w_in.shape[0];
        if stacked != e {
            return Err(self.node_err(
                node,
                format!("router_probs score {e} experts, the expert weights hold {stacked}"),
            ));
        }
        let x = self.operand(&node.inputs[0]);
        let x2 = self.as_matrix(node, (x, x_shape.len()), (t, h));
        let l = self.operand(&node.inputs[1]);
        let l2 = self.as_matrix(node, (l, l_rank), (t, e));
        let (w, ids) = self.fused_route(node, &moe, l2, t);
        self.fused_experts(node, moe, [x2, w, ids], (&x_shape, t, e));
        Ok(())
    }

    /// The router probabilities' rank, and the node's tokens, hidden size and experts, its
    /// input and router probabilities checked to agree.
    fn fused_moe_sizes(
        &self,
        node: &Node,
        x_shape: &[usize],
    ) -> Result<(usize, (usize, usize, usize)), CompileError> {
        let l_shape = self
            .static_shape(&node.inputs[1])
            .ok_or_else(|| self.node_err(node, "router_probs' shape must be static"))?;
        let h = *x_shape
            .last()
            .ok_or_else(|| self.node_err(node, "scalar input"))?;
        let count = |s: &[usize]| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let too_large = || self.node_err(node, "the input's element count overflows");
        let t = count(x_shape).ok_or_else(too_large)? / h.max(1);
        let e = *l_shape.last().unwrap_or(&0);
        if count(&l_shape) != t.checked_mul(e) {
            return Err(self.node_err(
                node,
                format!("router_probs {l_shape:?} is not [{t}, E] for input {x_shape:?}"),
            ));
        }
        Ok((l_shape.len(), (t, h, e)))
    }

    /// `b` (of rank `rank`) as a [rows, cols] matrix: itself where it is one, else a view.
    fn as_matrix(
        &mut self,
        node: &Node,
        (b, rank): (BufferId, usize),
        (rows, cols): (usize, usize),
    ) -> BufferId {
        if rank == 2 {
            return b;
        }
        let m = self.temp(&node.name, DType::F32, vec![Some(rows), Some(cols)]);
        let view = Op::ReshapeTo {
            shape: vec![rows, cols],
        };
        self.emit(node, view, vec![Some(b)], vec![m]);
        m
    }

    /// `moe.route` over the probabilities' logits: softmax, then the top k (renormalised
    /// where the node says so).
    fn fused_route(
        &mut self,
        node: &Node,
        moe: &FusedMoe,
        logits: BufferId,
        t: usize,
    ) -> (BufferId, BufferId) {
        let k = moe.top_k;
        let name = |what: &str| format!("{}.{what}", node.name);
        let w = self.temp(&name("route_weights"), DType::F32, vec![Some(t), Some(k)]);
        let ids = self.temp(&name("route_ids"), DType::I64, vec![Some(t), Some(k)]);
        let route = Op::MoeRoute {
            top_k: k,
            scoring: Scoring::Softmax,
            order: RouteOrder::SoftmaxThenTopk,
            renormalize: moe.renormalize,
            n_group: 0,
            topk_group: 0,
            routed_scaling_factor: 1.0,
            capacity: 0,
            mask_threshold: 0.0,
        };
        self.emit(node, route, vec![Some(logits)], vec![w, ids]);
        (w, ids)
    }

    /// `moe.experts` over the routed tokens, writing the node's output (through a view where
    /// the input has more than two axes); the layer recorded for the summary.
    fn fused_experts(
        &mut self,
        node: &Node,
        moe: FusedMoe,
        [x, w, ids]: [BufferId; 3],
        (x_shape, t, e): (&[usize], usize, usize),
    ) {
        let h = *x_shape.last().unwrap_or(&0);
        let k = moe.top_k;
        let renormalised = if moe.renormalize {
            ", renormalised"
        } else {
            ""
        };
        let layer = crate::moe::MoeLayer {
            origin: node.name.clone(),
            tokens: t,
            experts: e,
            top_k: k,
            hidden: h,
            ffn: moe.ffn.ffn_size(),
            routing: format!("softmax -> top-{k}{renormalised}"),
            activation: moe.ffn.describe_activation(),
            gated: moe.ffn.activation.is_gated(),
            shared_experts: "none".into(),
            family: crate::moe::Family::FusedOrt,
            note: None,
        };
        let name = |what: &str| format!("{}.{what}", node.name);
        let ffn = moe.ffn;
        let w_in = self.const_operand(&name("w_in"), ffn.w_in);
        let w_out = self.const_operand(&name("w_out"), ffn.w_out);
        let b_in = ffn.b_in.map(|b| self.const_operand(&name("b_in"), b));
        let b_out = ffn.b_out.map(|b| self.const_operand(&name("b_out"), b));
        let op = Op::MoeExperts {
            activation: ffn.activation,
            alpha: ffn.alpha,
            beta: ffn.beta,
            limit: ffn.limit,
            layout: ffn.layout,
        };
        let out = self.buffer_for_value(&node.outputs[0], BufferKind::Temp);
        let y = if x_shape.len() == 2 {
            out
        } else {
            self.temp(&node.name, DType::F32, vec![Some(t), Some(h)])
        };
        let operands = vec![x, w, ids, w_in, w_out].into_iter().map(Some);
        let operands = operands.chain([b_in, b_out]).collect();
        self.emit(node, op, operands, vec![y]);
        if y != out {
            let view = Op::ReshapeTo {
                shape: x_shape.to_vec(),
            };
            self.emit(node, view, vec![Some(y)], vec![out]);
        }
        self.moe_layers.push(layer);
    }
}
