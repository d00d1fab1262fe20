//! Family A: onnxruntime-genai's fused `com.microsoft.MoE` node, read into `moe.route` +
//! `moe.experts` during lowering (the source op already is one MoE layer).
//!
//!   onnx: %y = "onnx.MoE"(%x, %logits, %fc1, %fc1_b, %fc2, %fc2_b) {k = 2, swiglu_fusion = 1, ...}
//!   core: %w, %ids = "moe.route"(%logits) {top_k = 2, scoring = "softmax", ...}
//!         %y = "moe.experts"(%x, %w, %ids, %w_in, %w_out, %b_in, %b_out) {activation = "swiglu"}
//!
//! ORT's semantics (contrib_ops/cpu/moe): softmax over all experts, top-k, optional
//! renormalisation; fc1 [E, N, H] (or the older [E, H, N]), fc2 [E, H, F] (or [E, F, H]);
//! SwiGLU packed interleaved (swiglu_fusion 1), concatenated (2) or as fc1 + fc3 (0):
//! min(g, limit) * sigmoid(alpha * min(g, limit)) * (clamp(u, -limit, limit) + beta);
//! its "gelu" is the tanh approximation.

use super::expert_weights::{concat_along, to_gate_up, ExpertFfn, GatePacking};
use ppmoe_frontend::{AttrValue, Node};
use ppmoe_runtime::program::{Activation, ExpertLayout};
use ppmoe_runtime::Tensor;

fn int(n: &Node, k: &str, d: i64) -> i64 {
    match n.attr(k) {
        Some(AttrValue::Int(v)) => *v,
        _ => d,
    }
}

fn float(n: &Node, k: &str) -> Option<f32> {
    match n.attr(k) {
        Some(AttrValue::Float(v)) => Some(*v),
        _ => None,
    }
}

pub struct FusedMoe {
    pub top_k: usize,
    pub renormalize: bool,
    pub ffn: ExpertFfn,
}

/// Reads the node's attributes and weights (`w(i)`: the constant operand i, if any).
pub fn read(
    node: &Node,
    hidden: usize,
    w: impl Fn(usize) -> Option<Tensor>,
) -> Result<FusedMoe, String> {
    if int(node, "use_sparse_mixer", 0) != 0 {
        return Err("use_sparse_mixer = 1 (SparseMixer routing) is not supported".into());
    }
    let k = int(node, "k", 1);
    if k < 1 {
        return Err(format!("k = {k}"));
    }
    let act = match node.attr("activation_type") {
        Some(AttrValue::String(s)) => s.clone(),
        _ => "relu".into(),
    };
    let need = |i: usize, what: &str| {
        w(i).ok_or_else(|| format!("input {i} ({what}) must be a constant weight"))
    };
    let fc1 = need(2, "fc1_experts_weights")?;
    let fc2 = need(4, "fc2_experts_weights")?;
    if fc1.shape.len() != 3 || fc2.shape.len() != 3 {
        return Err(format!(
            "expert weights must be 3-D, got fc1 {:?} and fc2 {:?}",
            fc1.shape, fc2.shape
        ));
    }
    // ORT's current layout is [E, out, in]; the older one [E, in, out]. fc1 tells them apart
    // (its out size is F or 2F); where even it cannot (N == H), the current one is meant.
    let legacy = fc1.shape[1] == hidden && fc1.shape[2] != hidden;
    if !legacy && fc1.shape[2] != hidden {
        return Err(format!(
            "fc1_experts_weights {:?} has no dimension of the hidden size {hidden}",
            fc1.shape
        ));
    }
    // Both are read where they lie: the current layout is `nn.Linear`'s, the older in-out.
    let layout = if legacy {
        ExpertLayout::InOut
    } else {
        ExpertLayout::Linear
    };
    let n_axis = if legacy { 2 } else { 1 };
    let fc2_hidden = if legacy { fc2.shape[2] } else { fc2.shape[1] };
    if fc2_hidden != hidden {
        return Err(format!(
            "fc2_experts_weights {:?} does not hold the hidden size {hidden} where the {} layout has it",
            fc2.shape,
            if legacy { "older" } else { "current" }
        ));
    }
    let mut b_in = w(3);
    let b_out = w(5);
    let (activation, alpha, beta, limit) = match act.as_str() {
        "swiglu" => (
            Activation::Swiglu,
            float(node, "activation_alpha").unwrap_or(1.0),
            float(node, "activation_beta").unwrap_or(0.0),
            float(node, "swiglu_limit").filter(|l| l.is_finite()),
        ),
        "silu" => (Activation::Silu, 1.0, 0.0, None),
        "gelu" => (Activation::GeluTanh, 1.0, 0.0, None),
        "relu" => (Activation::Relu, 1.0, 0.0, None),
        "identity" => (Activation::Identity, 1.0, 0.0, None),
        other => return Err(format!("activation_type '{other}' is not supported")),
    };
    let w_in = if activation == Activation::Swiglu {
        match int(node, "swiglu_fusion", 0) {
            1 => {
                b_in = b_in.map(|b| to_gate_up(&b, GatePacking::Interleaved, 1));
                to_gate_up(&fc1, GatePacking::Interleaved, n_axis)
            }
            2 => fc1,
            0 => {
                let fc3 = need(6, "fc3_experts_weights (swiglu_fusion = 0)")?;
                if let (Some(b1), Some(b3)) = (b_in.take(), w(7)) {
                    let n = b1.shape[1];
                    let (v1, v3) = (b1.to_f32(), b3.to_f32());
                    let mut v = Vec::new();
                    for e in 0..b1.shape[0] {
                        v.extend_from_slice(&v1[e * n..(e + 1) * n]);
                        v.extend_from_slice(&v3[e * n..(e + 1) * n]);
                    }
                    b_in = Some(Tensor::f32(vec![b1.shape[0], 2 * n], v));
                }
                concat_along(&fc1, &fc3, n_axis)
            }
            other => return Err(format!("swiglu_fusion = {other}")),
        }
    } else {
        fc1
    };
    let fits = layout.dims(&w_in.shape, &fc2.shape).is_some_and(|d| {
        d.n == if activation.is_gated() {
            2 * d.ffn
        } else {
            d.ffn
        }
    });
    if !fits {
        return Err(format!(
            "fc1 {:?} and fc2 {:?} do not fit one another",
            w_in.shape, fc2.shape
        ));
    }
    Ok(FusedMoe {
        top_k: k as usize,
        renormalize: int(node, "normalize_routing_weights", 0) != 0,
        ffn: ExpertFfn {
            layout,
            w_in,
            w_out: fc2,
            b_in,
            b_out,
            activation,
            alpha,
            beta,
            limit,
        },
    })
}
