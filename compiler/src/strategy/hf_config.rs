//! A Hugging Face `config.json` read for its shapes alone, so that a plan for a 90 GB model needs
//! no weights: Mixtral, Qwen-MoE, OLMoE, DeepSeek, gpt-oss key names.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    pub name: String,
    pub layers: usize,
    /// Leading layers that are dense, not MoE (DeepSeek's first_k_dense_replace).
    pub dense_layers: usize,
    pub hidden: usize,
    pub kv_hidden: usize,
    pub expert_ffn: usize,
    pub dense_ffn: usize,
    pub experts: usize,
    pub top_k: usize,
    pub shared_ffn: usize,
    pub vocab: usize,
}

pub fn read_config(text: &str, name: &str) -> Result<ModelShape, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| v.get(*k).and_then(Value::as_u64))
            .map(|x| x as usize)
    };
    let need =
        |keys: &[&str]| get(keys).ok_or_else(|| format!("no {} in the config", keys.join(" or ")));
    let hidden = need(&["hidden_size", "d_model"])?;
    let heads = need(&["num_attention_heads"])?;
    let kv_heads = get(&["num_key_value_heads"]).unwrap_or(heads);
    let head_dim = get(&["head_dim"]).unwrap_or(hidden / heads.max(1));
    let dense_ffn = need(&["intermediate_size"])?;
    let experts = need(&["num_local_experts", "num_experts", "n_routed_experts"])?;
    let expert_ffn = get(&["moe_intermediate_size"]).unwrap_or(dense_ffn);
    let shared = get(&["shared_expert_intermediate_size"])
        .unwrap_or_else(|| get(&["n_shared_experts"]).unwrap_or(0) * expert_ffn);
    Ok(ModelShape {
        name: v
            .get("model_type")
            .and_then(Value::as_str)
            .map(|m| format!("{name} ({m})"))
            .unwrap_or_else(|| name.to_string()),
        layers: need(&["num_hidden_layers", "num_layers"])?,
        dense_layers: get(&["first_k_dense_replace"]).unwrap_or(0),
        hidden,
        kv_hidden: kv_heads * head_dim,
        expert_ffn,
        dense_ffn,
        experts,
        top_k: need(&["num_experts_per_tok", "experts_per_token", "moe_topk"])?,
        shared_ffn: shared,
        vocab: get(&["vocab_size"]).unwrap_or(0),
    })
}
