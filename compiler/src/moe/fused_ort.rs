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
    let need = |i: usize, what: &str| {
        w(i).ok_or_else(|| format!("input {i} ({what}) must be a constant weight"))
    };
    let fc1 = need(2, "fc1_experts_weights")?;
    let fc2 = need(4, "fc2_experts_weights")?;
    let layout = layout_of(&fc1, &fc2, hidden)?;
    let (activation, alpha, beta, limit) = activation_of(node)?;
    let n_axis = if layout == ExpertLayout::InOut { 2 } else { 1 };
    let b_in = w(3);
    bias_fits(b_in.as_ref(), &fc1, n_axis, "fc1_experts_bias")?;
    let b_out = w(5);
    bias_fits(b_out.as_ref(), &fc2, n_axis, "fc2_experts_bias")?;
    let (w_in, b_in) = if activation == Activation::Swiglu {
        gate_and_up(node, (fc1, b_in), n_axis, &w)?
    } else {
        (fc1, b_in)
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

/// How the stacks lie. ORT's current layout is [E, out, in] (`nn.Linear`'s); the older one
/// [E, in, out]. fc1 tells them apart (its out size is F or 2F); where even it cannot (N ==
/// H), the current one is meant. Both are read where they lie.
fn layout_of(fc1: &Tensor, fc2: &Tensor, hidden: usize) -> Result<ExpertLayout, String> {
    if fc1.shape.len() != 3 || fc2.shape.len() != 3 {
        return Err(format!(
            "expert weights must be 3-D, got fc1 {:?} and fc2 {:?}",
            fc1.shape, fc2.shape
        ));
    }
    let legacy = fc1.shape[1] == hidden && fc1.shape[2] != hidden;
    if !legacy && fc1.shape[2] != hidden {
        return Err(format!(
            "fc1_experts_weights {:?} has no dimension of the hidden size {hidden}",
            fc1.shape
        ));
    }
    let fc2_hidden = if legacy { fc2.shape[2] } else { fc2.shape[1] };
    if fc2_hidden != hidden {
        return Err(format!(
            "fc2_experts_weights {:?} does not hold the hidden size {hidden} where the {} layout has it",
            fc2.shape,
            if legacy { "older" } else { "current" }
        ));
    }
    Ok(if legacy {
        ExpertLayout::InOut
    } else {
        ExpertLayout::Linear
    })
}

/// The activation (`activation_type`, relu where absent) with SwiGLU's alpha, beta and clamp.
fn activation_of(node: &Node) -> Result<(Activation, f32, f32, Option<f32>), String> {
    let act = match node.attr("activation_type") {
        Some(AttrValue::String(s)) => s.clone(),
        _ => "relu".into(),
    };
    Ok(match act.as_str() {
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
    })
}

/// A bias of `stack` (its experts, and its out size on `axis`), where given: [E, out].
fn bias_fits(bias: Option<&Tensor>, stack: &Tensor, axis: usize, what: &str) -> Result<(), String> {
    let want = [stack.shape[0], stack.shape[axis]];
    match bias {
        Some(b) if b.shape != want => Err(format!(
            "{what} is {:?}, expected {want:?} for weights {:?}",
            b.shape, stack.shape
        )),
        _ => Ok(()),
    }
}

/// SwiGLU's first stack (and bias) as [gate | up]: from fc1 packed interleaved
/// (`swiglu_fusion` 1) or concatenated (2), or fc1 the gate and fc3 (input 6, bias input 7)
/// the up projection (0; a bias given for one of them only, the other's is zero: the
/// reading before session 40 dropped it).
fn gate_and_up(
    node: &Node,
    (fc1, b_in): (Tensor, Option<Tensor>),
    n_axis: usize,
    w: &impl Fn(usize) -> Option<Tensor>,
) -> Result<(Tensor, Option<Tensor>), String> {
    match int(node, "swiglu_fusion", 0) {
        1 => {
            let b_in = b_in.map(|b| to_gate_up(&b, GatePacking::Interleaved, 1));
            Ok((to_gate_up(&fc1, GatePacking::Interleaved, n_axis), b_in))
        }
        2 => Ok((fc1, b_in)),
        0 => {
            let fc3 = w(6).ok_or(
                "input 6 (fc3_experts_weights (swiglu_fusion = 0)) must be a constant weight",
            )?;
            if fc3.shape != fc1.shape {
                return Err(format!(
                    "fc3_experts_weights {:?} is not of fc1's shape {:?}",
                    fc3.shape, fc1.shape
                ));
            }
            let b3 = w(7);
            bias_fits(b3.as_ref(), &fc3, n_axis, "fc3_experts_bias")?;
            // A bias given for one of the two: the other's is zero (both, or neither, kept).
            let zeros = || {
                let (e, f) = (fc1.shape[0], fc1.shape[n_axis]);
                Tensor::f32(vec![e, f], vec![0.0; e * f])
            };
            let b_in = match (b_in, b3) {
                (None, None) => None,
                (b1, b3) => Some(concat_along(
                    &b1.unwrap_or_else(zeros),
                    &b3.unwrap_or_else(zeros),
                    1,
                )),
            };
            Ok((concat_along(&fc1, &fc3, n_axis), b_in))
        }
        other => Err(format!("swiglu_fusion = {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::read;
    use ppmoe_frontend::{AttrValue, Node};
    use ppmoe_runtime::Tensor;

    /// A SwiGLU MoE node (hidden 4, ffn 2, 3 experts) with `fusion` and the given operands.
    fn node(fusion: i64) -> Node {
        Node {
            name: "moe".into(),
            op_type: "MoE".into(),
            domain: "com.microsoft".into(),
            inputs: (0..8).map(|i| format!("in{i}")).collect(),
            outputs: vec!["y".into()],
            attributes: vec![
                ("k".into(), AttrValue::Int(2)),
                ("activation_type".into(), AttrValue::String("swiglu".into())),
                ("swiglu_fusion".into(), AttrValue::Int(fusion)),
            ],
        }
    }

    fn zeros(shape: &[usize]) -> Tensor {
        Tensor::f32(shape.to_vec(), vec![0.0; shape.iter().product()])
    }

    /// Operands whose shapes disagree are refused with a reason, never a panic: fc3 of another
    /// shape than fc1, an fc3 bias shorter than fc1's, a bias that is not [E, N].
    #[test]
    fn mismatched_expert_operands_are_refused_by_name() {
        // (swiglu_fusion, each constant operand's position and shape, what the error names)
        type Case = (i64, Vec<(usize, Vec<usize>)>, &'static str);
        let cases: [Case; 4] = [
            (
                0,
                vec![(2, vec![3, 2, 4]), (4, vec![3, 4, 2]), (6, vec![3, 3, 4])],
                "fc3",
            ),
            (
                0,
                vec![
                    (2, vec![3, 2, 4]),
                    (3, vec![3, 2]),
                    (4, vec![3, 4, 2]),
                    (6, vec![3, 2, 4]),
                    (7, vec![3, 1]),
                ],
                "bias",
            ),
            (
                1,
                vec![(2, vec![3, 4, 4]), (3, vec![3]), (4, vec![3, 4, 2])],
                "bias",
            ),
            (
                1,
                vec![(2, vec![3, 4, 4]), (4, vec![3, 4, 2]), (5, vec![4])],
                "bias",
            ),
        ];
        for (fusion, operands, what) in cases {
            let w = |i: usize| {
                operands
                    .iter()
                    .find(|(k, _)| *k == i)
                    .map(|(_, s)| zeros(s))
            };
            let err = read(&node(fusion), 4, w).err();
            assert!(
                err.as_deref().is_some_and(|e| e.contains(what)),
                "fusion {fusion}, {operands:?}: {err:?}"
            );
        }
    }

    /// fc1 the gate and fc3 the up projection, a bias given for the gate only: the up part's
    /// bias is zero, so the stacked bias covers both halves ([E, 2F]), the gate's first.
    #[test]
    fn a_gate_bias_without_an_up_bias_is_kept_with_zeros_beside_it() {
        let w = |i: usize| match i {
            2 | 6 => Some(zeros(&[3, 2, 4])),
            3 => Some(Tensor::f32(vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
            4 => Some(zeros(&[3, 4, 2])),
            _ => None,
        };
        let moe = read(&node(0), 4, w).expect("reads");
        let b = moe.ffn.b_in.expect("a first bias");
        assert_eq!(b.shape, vec![3, 4]);
        let want = [1.0, 2.0, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0, 5.0, 6.0, 0.0, 0.0];
        assert_eq!(b.to_f32(), want);
    }
}
