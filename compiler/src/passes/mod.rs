//! Passes over a rank's program, one per file.

pub mod buffer_values;
pub mod dead_code;
pub mod dead_ops;
pub mod einsum_matmul;
pub mod func_ops;
pub mod host_steps;
pub mod int_compare;
pub mod pipeline_cuts;
pub mod pipeline_split;
pub mod plan_kernels;
pub mod ppmoe_rewrite;
pub mod program_ops;
pub mod raise_moe;
pub mod retype;
pub mod shard;
pub mod shard_dense;
pub mod sink_constants;
pub mod upstream_partition;
pub mod upstream_regions;
pub mod weight_dtype;
