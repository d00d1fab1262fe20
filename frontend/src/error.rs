//! Typed import errors. Each one names the file and, where it applies, the node, its op and what
//! was expected, so that the CLI can print it as it is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: cannot read the file: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("{}: not a valid ONNX model ({reason})", path.display())]
    NotOnnx { path: PathBuf, reason: String },

    #[error("{}: unsupported opset: domain '{domain}' version {version} (ppmoe reads ai.onnx opsets 13 to 23)", path.display())]
    UnsupportedOpset {
        path: PathBuf,
        domain: String,
        version: i64,
    },

    #[error("{}: node \"{node}\" ({op}): input '{value}' is not defined by a graph input, an initializer or an earlier node", path.display())]
    UndefinedValue {
        path: PathBuf,
        node: String,
        op: String,
        value: String,
    },

    #[error("{}: node \"{node}\" ({op}): attribute '{attribute}': {reason}", path.display())]
    BadAttribute {
        path: PathBuf,
        node: String,
        op: String,
        attribute: String,
        reason: String,
    },

    #[error("{}: tensor '{tensor}': {reason}", path.display())]
    BadTensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },

    #[error("{}: value '{value}': {reason}", path.display())]
    BadType {
        path: PathBuf,
        value: String,
        reason: String,
    },

    #[error("{}: node \"{node}\" ({op}): {reason}", path.display())]
    BadNode {
        path: PathBuf,
        node: String,
        op: String,
        reason: String,
    },

    #[error("{}: --input-shape {name}: {reason}", path.display())]
    BadInputShape {
        path: PathBuf,
        name: String,
        reason: String,
    },

    #[error("{}: {reason}", path.display())]
    StableHlo { path: PathBuf, reason: String },

    #[error("{}: the imported IR does not verify: {diagnostics}", path.display())]
    Verify { path: PathBuf, diagnostics: String },
}
