//! The compiler's typed errors: each names the model file and, where it applies, the node.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Import(#[from] ppmoe_frontend::ImportError),

    #[error("{}: node \"{node}\" ({op}): {reason}", path.display())]
    Node {
        path: PathBuf,
        node: String,
        op: String,
        reason: String,
    },

    #[error("{}: op {op} (node \"{node}\") is not supported by the core stage; supported: {supported}", path.display())]
    UnsupportedOp {
        path: PathBuf,
        node: String,
        op: String,
        supported: String,
    },

    #[error("{}: input '{input}' has a dimension only known at run time ({dims}); fix it with --input-shape {input}=DIMS", path.display())]
    DynamicInput {
        path: PathBuf,
        input: String,
        dims: String,
    },

    #[error("{}: stage '{stage}': the IR does not verify: {diagnostics}", path.display())]
    Verify {
        path: PathBuf,
        stage: String,
        diagnostics: String,
    },

    /// IR given as input (`inspect IR.mlir`, `compile IR.mlir`) that cannot be taken.
    #[error("{}: {reason}", path.display())]
    Ir { path: PathBuf, reason: String },

    #[error("{}: the grid does not fit the model: {reason}", path.display())]
    Grid { path: PathBuf, reason: String },

    #[error("stage '{0}' is not built yet; the stages built so far: {1}")]
    StageNotBuilt(String, String),

    #[error(transparent)]
    Runtime(#[from] ppmoe_runtime::RuntimeError),

    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
}
