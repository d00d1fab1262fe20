//! ppmoe's one integration-test binary (each extra binary re-links MLIR). Each module holds one
//! concern; fixtures live in tests/fixtures (see its README).

#[macro_use]
mod common;
mod bad_bundle;
mod bad_onnx;
mod cli_output;
mod codegen;
mod core_numerics;
mod distribute;
mod ir_input;
mod moe_raise;
mod onnx_stage;
mod scale;
mod stablehlo;
mod upstream_semantics;
