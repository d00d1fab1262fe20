//! MoE recognition: the `moe` stage's analyses (regions, expert weight readings) and the
//! summary of the layers found.

pub mod expert_weights;
pub mod fused_ort;
pub mod probe;
pub mod region;

use serde::Serialize;

/// Where a raised layer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Family {
    /// A fused `com.microsoft.MoE` node (onnxruntime-genai).
    FusedOrt,
    /// An unrolled per-expert loop (TorchScript traces of eager code: NonZero, Gather, scatter).
    UnrolledLoop,
    /// Gather-the-weights routing (Hugging Face `batched_mm`).
    GatherWeights,
    /// Einsum dispatch and combine with capacity (GShard, DeepSpeed).
    EinsumDispatch,
}

impl Family {
    pub fn label(self) -> &'static str {
        match self {
            Family::FusedOrt => "A fused com.microsoft.MoE",
            Family::UnrolledLoop => "B unrolled per-expert loop",
            Family::GatherWeights => "C gather-the-weights (batched_mm)",
            Family::EinsumDispatch => "D einsum dispatch",
        }
    }
}

/// One raised MoE layer, for `ppmoe inspect --summary`.
#[derive(Clone, Debug, Serialize)]
pub struct MoeLayer {
    pub origin: String,
    pub tokens: usize,
    pub experts: usize,
    pub top_k: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub routing: String,
    pub activation: String,
    /// Whether the experts' FFN is gated (SwiGLU, GeGLU): what the cost model reads of it.
    #[serde(skip)]
    pub gated: bool,
    pub shared_experts: String,
    pub family: Family,
    /// What the raise changed, when it is not exact (capacity dropping kept or made dropless).
    pub note: Option<String>,
}
