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
    let costs = LayerCosts::new(shape, tokens, tp, hw);
    let layers = costs.moe_layer_plans();
    let stages = (0..pp).map(|s| costs.stage_plan(&layers, s, pp)).collect();
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

/// A layer's predicted time and weight bytes per GPU, for one model on one tp group.
struct LayerCosts<'a> {
    shape: &'a ModelShape,
    tokens: usize,
    tp: usize,
    hw: Hardware,
    /// An MoE layer's experts, and its shared expert (the experts again where it has none).
    moe: LayerShape,
    shared: LayerShape,
}

impl<'a> LayerCosts<'a> {
    fn new(shape: &'a ModelShape, tokens: usize, tp: usize, hw: Hardware) -> Self {
        let moe = LayerShape {
            tokens,
            hidden: shape.hidden,
            ffn: shape.expert_ffn,
            experts: shape.experts,
            top_k: shape.top_k,
            gated: true,
        };
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
        LayerCosts {
            shape,
            tokens,
            tp,
            hw,
            moe,
            shared,
        }
    }

    /// Each MoE layer's time under every strategy, and the e-graph's choice.
    fn moe_layer_plans(&self) -> Vec<LayerPlan> {
        let (tp, hw) = (self.tp, &self.hw);
        let moe_layers: Vec<usize> = (self.shape.dense_layers..self.shape.layers).collect();
        let shapes: Vec<LayerShape> = moe_layers.iter().map(|_| self.moe).collect();
        let picks = super::egraph::choose(&shapes, tp, *hw, &Choice::ALL);
        moe_layers
            .iter()
            .zip(&picks)
            .map(|(&l, &(choice, _))| LayerPlan {
                layer: l,
                times: Choice::ALL
                    .iter()
                    .map(|&c| (c, layer_time(&self.moe, c, tp, hw)))
                    .collect(),
                choice,
            })
            .collect()
    }

    /// Layer `l`'s time and weight bytes per GPU: its attention, and its FFN (the experts
    /// under the chosen strategy plus any shared expert, or a dense FFN).
    fn layer(&self, l: usize, layers: &[LayerPlan]) -> (f64, f64) {
        let (shape, tp, hw) = (self.shape, self.tp, &self.hw);
        let b = hw.element_bytes as f64;
        let (h, kv) = (shape.hidden as f64, shape.kv_hidden as f64);
        let attn_weights = h * (2.0 * h + 2.0 * kv) * b;
        let attn = attention_time(self.tokens, shape.hidden, shape.kv_hidden, tp, hw);
        let (ffn_t, ffn_w) = if l >= shape.dense_layers {
            self.moe_ffn(l, layers)
        } else {
            let dense = LayerShape {
                tokens: self.tokens,
                hidden: shape.hidden,
                ffn: shape.dense_ffn,
                experts: 1,
                top_k: 1,
                gated: true,
            };
            (
                layer_time(&dense, Choice::Ppmoe, tp, hw),
                dense.expert_weight_bytes(hw) / tp as f64,
            )
        };
        (attn + ffn_t, attn_weights / tp as f64 + ffn_w)
    }

    /// MoE layer `l`'s experts under their chosen strategy, plus its shared expert.
    fn moe_ffn(&self, l: usize, layers: &[LayerPlan]) -> (f64, f64) {
        let (tp, hw) = (self.tp, &self.hw);
        let pick = layers
            .iter()
            .find(|p| p.layer == l)
            .map(|p| p.choice)
            .unwrap_or(Choice::Ppmoe);
        let w = self.moe.expert_weight_bytes(hw)
            / if pick == Choice::Replicated {
                1.0
            } else {
                tp as f64
            };
        let has_shared = self.shape.shared_ffn > 0;
        let shared_t = if has_shared {
            layer_time(&self.shared, Choice::Ppmoe, tp, hw)
        } else {
            0.0
        };
        let shared_w = if has_shared {
            self.shared.expert_weight_bytes(hw) / tp as f64
        } else {
            0.0
        };
        (layer_time(&self.moe, pick, tp, hw) + shared_t, w + shared_w)
    }

    /// Stage `s` of `pp`: its layers (split as evenly as their costs allow: all layers of
    /// one model cost about the same), time and memory per GPU.
    fn stage_plan(&self, layers: &[LayerPlan], s: usize, pp: usize) -> StagePlan {
        let (shape, tp, hw) = (self.shape, self.tp, &self.hw);
        let b = hw.element_bytes as f64;
        let h = shape.hidden as f64;
        let per_stage = shape.layers as f64 / pp as f64;
        let first = (s as f64 * per_stage).round() as usize;
        let last = (((s + 1) as f64 * per_stage).round() as usize).max(first + 1) - 1;
        let (mut t, mut m) = (0.0, 0.0);
        for l in first..=last {
            let (lt, lm) = self.layer(l, layers);
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
            t += 2.0 * self.tokens as f64 * h * shape.vocab as f64 / tp as f64 / hw.flops;
        }
        m += 16.0 * self.tokens as f64 * h * b;
        StagePlan {
            stage: s,
            first_layer: first,
            last_layer: last,
            seconds: t,
            memory_bytes: m,
        }
    }
}
