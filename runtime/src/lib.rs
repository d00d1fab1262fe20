//! ppmoe's runtime: the bundle format and its backends. It links no MLIR and no LLVM, so that it
//! travels to GPU machines as a small binary (`ppmoe-run`).

pub mod bench;
pub mod bundle;
pub mod collectives;
pub mod cpu;
pub mod cuda;
pub mod distributed;
pub mod error;
pub mod kernels;
pub mod microbatch;
pub mod npy;
pub mod peer_watch;
pub mod port_handoff;
pub mod program;
pub mod runner;
pub mod safetensors_io;
pub mod storage;
pub mod tensor;

pub use error::RuntimeError;
pub use tensor::{DType, Tensor};
