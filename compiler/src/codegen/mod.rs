//! Code generation for the GPU: the `kernels` stage (each rank's program as kernel launches,
//! cuBLAS GEMMs, NCCL collectives, and the ops not yet generated, named as host work) and the
//! `ptx` stage (the kernel modules lowered through MLIR's gpu -> NVVM -> LLVM -> PTX, sm_90, or
//! sm_90a where a module has Hopper's warpgroup MMAs).

mod act_octets;
mod attention;
mod bf16_params;
mod combine_octets;
mod data_movement;
mod decode_experts;
mod device_grouping;
mod expert_steps;
mod experts_kernels;
mod few_tokens;
mod gather_octets;
pub mod kernel_gen;
mod masks;
mod pointwise;
pub mod ptx;
mod route;
mod row_fused;
mod sorted_rows;
mod sparsemixer;
mod switch;
mod template;
mod tensor_core_projection;
mod top_k;
mod warpgroup_projection;

pub use kernel_gen::{plan_kernels, KernelPlan, Lowered};
