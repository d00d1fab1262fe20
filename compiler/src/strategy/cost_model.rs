//! The cost model `ppmoe plan` prints and `--moe-strategy auto` minimises: FLOPs at the GPU's
//! rate, bytes over NVLink inside a node and over the network across nodes (ring algorithms'
//! bus-bandwidth factors), per MoE layer forward.

use serde::Serialize;

/// The machine. Defaults: H200 (bf16 dense matmul measured at about 790 TFLOP/s), NVLink 4
/// (about 370 GB/s of all-reduce bus bandwidth seen by NCCL), 400 Gb/s InfiniBand per GPU.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Hardware {
    pub flops: f64,
    pub nvlink_bytes_per_s: f64,
    pub network_bytes_per_s: f64,
    pub gpus_per_node: usize,
    /// Bytes per element of activations and weights (bf16: 2).
    pub element_bytes: usize,
    /// The share of the all-reduce bus bandwidth an all-to-all of the same size reaches. An
    /// assumption (0.5 by default), not a measurement: set it from `ppmoe bench` or NCCL's
    /// own tests on the machine at hand.
    pub alltoall_efficiency: f64,
}

impl Default for Hardware {
    fn default() -> Self {
        Hardware {
            flops: 790e12,
            nvlink_bytes_per_s: 370e9,
            network_bytes_per_s: 50e9,
            gpus_per_node: 8,
            element_bytes: 2,
            alltoall_efficiency: 0.5,
        }
    }
}

/// One MoE layer's sizes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LayerShape {
    pub tokens: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub experts: usize,
    pub top_k: usize,
    pub gated: bool,
}

impl LayerShape {
    /// FLOPs of all the tokens' experts (2 per multiply-add; gated FFNs have three matrices).
    pub fn expert_flops(&self) -> f64 {
        let mats = if self.gated { 3.0 } else { 2.0 };
        2.0 * self.tokens as f64 * self.top_k as f64 * self.hidden as f64 * self.ffn as f64 * mats
    }

    pub fn expert_weight_bytes(&self, hw: &Hardware) -> f64 {
        let mats = if self.gated { 3.0 } else { 2.0 };
        self.experts as f64 * self.hidden as f64 * self.ffn as f64 * mats * hw.element_bytes as f64
    }

    fn token_bytes(&self, hw: &Hardware) -> f64 {
        (self.tokens * self.hidden * hw.element_bytes) as f64
    }
}

/// The strategies a layer can take over a group of `tp` GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
pub enum Choice {
    /// Experts split, tokens replicated: local slice, one all-reduce.
    Ppmoe,
    /// Tokens split, experts split: two all-to-alls (and an all-gather back to replicated).
    AllToAll,
    /// Experts split: all-gather the tokens, reduce-scatter the outputs.
    AllGatherReduceScatter,
    /// Every GPU holds every expert: no communication, no split of the work.
    Replicated,
}

impl Choice {
    pub const ALL: [Choice; 4] = [
        Choice::Ppmoe,
        Choice::AllToAll,
        Choice::AllGatherReduceScatter,
        Choice::Replicated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Choice::Ppmoe => "ppmoe",
            Choice::AllToAll => "alltoall",
            Choice::AllGatherReduceScatter => "allgather-reducescatter",
            Choice::Replicated => "replicated",
        }
    }
}

/// Bandwidth a group of `tp` GPUs communicates at: NVLink inside a node, the network across.
fn bandwidth(hw: &Hardware, tp: usize) -> f64 {
    if tp <= hw.gpus_per_node {
        hw.nvlink_bytes_per_s
    } else {
        hw.network_bytes_per_s
    }
}

/// Predicted seconds of one layer's forward in `choice` over `tp` GPUs.
pub fn layer_time(s: &LayerShape, choice: Choice, tp: usize, hw: &Hardware) -> f64 {
    let p = tp.max(1) as f64;
    let bw = bandwidth(hw, tp);
    let split_compute = s.expert_flops() / p / hw.flops;
    let frac = (p - 1.0) / p;
    let bytes = s.token_bytes(hw);
    match choice {
        // Ring all-reduce moves 2 (p-1)/p of the buffer through each GPU.
        Choice::Ppmoe => split_compute + 2.0 * frac * bytes / bw,
        // Each all-to-all moves (p-1)/p of a rank's k T/p rows; then an all-gather of T/p rows.
        Choice::AllToAll => {
            split_compute
                + 2.0 * frac * (s.top_k as f64 * bytes / p) / (bw * hw.alltoall_efficiency)
                + frac * bytes / bw
        }
        // All-gather the tokens in, reduce-scatter the outputs, all-gather them back.
        Choice::AllGatherReduceScatter => split_compute + 3.0 * frac * bytes / bw,
        Choice::Replicated => s.expert_flops() / hw.flops,
    }
}

/// Predicted seconds of one dense transformer block's attention over `tp` GPUs, Megatron
/// style (QKV and output projections split by heads, one all-reduce), for `plan`.
pub fn attention_time(
    tokens: usize,
    hidden: usize,
    kv_hidden: usize,
    tp: usize,
    hw: &Hardware,
) -> f64 {
    let (t, h, kv, p) = (
        tokens as f64,
        hidden as f64,
        kv_hidden as f64,
        tp.max(1) as f64,
    );
    let proj = 2.0 * t * h * (2.0 * h + 2.0 * kv);
    let scores = 2.0 * 2.0 * t * t * h;
    let comm = if tp > 1 {
        2.0 * (p - 1.0) / p * t * h * hw.element_bytes as f64 / bandwidth(hw, tp)
    } else {
        0.0
    };
    (proj + scores) / p / hw.flops + comm
}
