//! The `core` stage: the imported graph normalised to the runtime's `core` op set with static
//! shapes (shape arithmetic and weight-only subgraphs folded at compile time), and its MLIR form.

pub mod arg_max;
pub mod body;
pub mod captures;
pub mod cast_map;
pub mod cum_sum;
mod forms;
pub mod gather_elements;
pub mod generic;
pub mod header;
pub mod layer_norm;
pub mod lower;
pub mod mixed_concat;
pub mod one_hot;
#[cfg(test)]
pub mod one_instruction;
pub mod print;
pub mod read;
pub mod reduce;
pub mod scatter_elements;
pub mod token_slice;
pub mod top_k;
pub mod upstream;
pub mod widening_gather;

pub use lower::{
    convert_initializers, lower_to_core, lower_to_core_with, static_bytes, CoreProgram,
    DEFAULT_EVAL_LIMIT_BYTES,
};
