//! Distribution: the grid, the `sharded` stage (each MoE layer in the all-to-all form, then
//! the PPMoE rewrite where its precondition holds), and the `pipelined` stage.

pub mod dense_tp;
pub mod grid;
pub mod shard_moe;

pub use grid::Grid;

/// How MoE layers are distributed over the tensor-parallel group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Tokens split over the group, two all-to-alls (DeepSpeed-MoE / GShard).
    AllToAll,
    /// Tokens replicated, experts split, a local slice and one all-reduce (PPMoE).
    Ppmoe,
    /// Per layer, whichever of the two the cost model (an e-graph extraction) finds faster.
    Auto,
}
