//! Strategy choice: the cost model, the e-graph of each MoE layer's implementations, and the
//! plan `ppmoe plan` prints.

pub mod cost_model;
pub mod egraph;
pub mod hf_config;
pub mod plan;
