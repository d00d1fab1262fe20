//! `ppmoe plan`: per MoE layer the predicted time of each strategy and the e-graph's choice, per
//! pipeline stage its predicted time and memory per GPU. From an ONNX model (its raised MoE
//! layers) or a Hugging Face config.json (shapes only).

use super::cost_model::{attention_time, layer_time, Choice, Hardware, LayerShape};
use super::hf_config::ModelShape;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct LayerPlan {
    pub layer: usize,
    pub times: Vec<(Choice, f64)>,
    pub choice: Choice,
}

#[derive(Clone, Debug, Serialize)]
pub struct StagePlan {
    pub stage: usize,
    pub first_layer: usize,
    pub last_layer: usize,
    pub seconds: f64,
    pub memory_bytes: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub model: String,
    pub tokens: usize,
    pub tp: usize,
    pub pp: usize,
    pub dp: usize,
    pub hardware: Hardware,
    pub layers: Vec<LayerPlan>,
    pub stages: Vec<StagePlan>,
}

/// Plans `shape` on a dp x pp x tp grid for `tokens` tokens per step.
pub fn plan(
    shape: &ModelShape,
    tokens: usize,
    tp: usize,
    pp: usize,
    dp: usize,
    hw: Hardware,
) -> Result<Plan, String> {
    if pp == 0 || tp == 0 || pp > shape.layers {
        return Err(format!("{pp} pipeline stages for {} layers", shape.layers));
    }
    if !shape.experts.is_multiple_of(tp) {
        return Err(format!(
            "{} experts cannot be split evenly over tp = {tp}",
            shape.experts
        ));
    }
    let moe = LayerShape {
        tokens,
        hidden: shape.hidden,
        ffn: shape.expert_ffn,
        experts: shape.experts,
        top_k: shape.top_k,
        gated: true,
    };
    let moe_layers: Vec<usize> = (shape.dense_layers..shape.layers).collect();
    let shapes: Vec<LayerShape> = moe_layers.iter().map(|_| moe).collect();
    let picks = super::egraph::choose(&shapes, tp, hw, &Choice::ALL);
    let layers: Vec<LayerPlan> = moe_layers
        .iter()
        .zip(&picks)
        .map(|(&l, &(choice, _))| LayerPlan {
            layer: l,
            times: Choice::ALL
                .iter()
                .map(|&c| (c, layer_time(&moe, c, tp, &hw)))
                .collect(),
            choice,
        })
        .collect();
    let b = hw.element_bytes as f64;
    let (h, kv) = (shape.hidden as f64, shape.kv_hidden as f64);
    let attn_weights = h * (2.0 * h + 2.0 * kv) * b;
    let shared = if shape.shared_ffn > 0 {
        LayerShape {
            tokens,
            hidden: shape.hidden,
            ffn: shape.shared_ffn,
            experts: 1,
            top_k: 1,
            gated: true,
        }
    } else {
        moe
    };
    let per_layer = |l: usize| -> (f64, f64) {
        let attn = attention_time(tokens, shape.hidden, shape.kv_hidden, tp, &hw);
        let is_moe = l >= shape.dense_layers;
        let (ffn_t, ffn_w) = if is_moe {
            let pick = layers
                .iter()
                .find(|p| p.layer == l)
                .map(|p| p.choice)
                .unwrap_or(Choice::Ppmoe);
            let w = moe.expert_weight_bytes(&hw)
                / if pick == Choice::Replicated {
                    1.0
                } else {
                    tp as f64
                };
            let shared_t = if shape.shared_ffn > 0 {
                layer_time(&shared, Choice::Ppmoe, tp, &hw)
            } else {
                0.0
            };
            let shared_w = if shape.shared_ffn > 0 {
                shared.expert_weight_bytes(&hw) / tp as f64
            } else {
                0.0
            };
            (layer_time(&moe, pick, tp, &hw) + shared_t, w + shared_w)
        } else {
            let dense = LayerShape {
                tokens,
                hidden: shape.hidden,
                ffn: shape.dense_ffn,
                experts: 1,
                top_k: 1,
                gated: true,
            };
            (
                layer_time(&dense, Choice::Ppmoe, tp, &hw),
                dense.expert_weight_bytes(&hw) / tp as f64,
            )
        };
        (attn + ffn_t, attn_weights / tp as f64 + ffn_w)
    };
    // Layers split as evenly as their costs allow (all layers of one model cost about the same).
    let mut stages = Vec::new();
    let per_stage = shape.layers as f64 / pp as f64;
    for s in 0..pp {
        let first = (s as f64 * per_stage).round() as usize;
        let last = (((s + 1) as f64 * per_stage).round() as usize).max(first + 1) - 1;
        let (mut t, mut m) = (0.0, 0.0);
        for l in first..=last {
            let (lt, lm) = per_layer(l);
            t += lt;
            m += lm;
        }
        // Embedding on the first stage, LM head on the last (split over tp), and the
        // activations a stage keeps for one microbatch (about 16 values per token and hidden).
        let table = shape.vocab as f64 * h * b / tp as f64;
        if s == 0 {
            m += table;
        }
        if s + 1 == pp {
            m += table;
            t += 2.0 * tokens as f64 * h * shape.vocab as f64 / tp as f64 / hw.flops;
        }
        m += 16.0 * tokens as f64 * h * b;
        stages.push(StagePlan {
            stage: s,
            first_layer: first,
            last_layer: last,
            seconds: t,
            memory_bytes: m,
        });
    }
    Ok(Plan {
        model: shape.name.clone(),
        tokens,
        tp,
        pp,
        dp,
        hardware: hw,
        layers,
        stages,
    })
}
