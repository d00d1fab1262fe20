//! ppmoe's one integration-test binary (each extra binary re-links MLIR). Each module holds one
//! concern; fixtures live in tests/fixtures (see its README).

mod bad_onnx;
mod common;
mod onnx_stage;
