//! ppmoe's compiler: the stage pipeline (`pipeline/mod.rs` is the whole ladder on one screen), the
//! lowering to the `core` op set, the passes over rank programs, and the bundle writer.

pub mod codegen;
pub mod compile;
pub mod core;
pub mod distribute;
pub mod error;
pub mod ir_input;
pub mod moe;
pub mod passes;
pub mod pipeline;
pub mod progress;
pub mod strategy;

pub use compile::compile;
pub use error::CompileError;
