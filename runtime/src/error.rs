//! The runtime's typed errors.

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {reason}")]
    Bundle { path: String, reason: String },
    #[error("{path}: checksum mismatch: the manifest records sha256 {expected}, the file has {actual} (the bundle was altered or is incomplete)")]
    Checksum {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: bundle format version {found} is not supported (this runtime reads version {supported}; compile the model again with this ppmoe)")]
    FormatVersion {
        path: String,
        found: u64,
        supported: u64,
    },
    #[error("input '{name}': {reason}")]
    Input { name: String, reason: String },
    #[error("rank {rank}, instruction {index} ({op}, from node \"{origin}\"): {reason}")]
    Execute {
        rank: usize,
        index: usize,
        op: String,
        origin: String,
        reason: String,
    },
    #[error(transparent)]
    Npy(#[from] crate::npy::NpyError),
    #[error("{path}: cannot read or write: {cause}")]
    Io { path: String, cause: std::io::Error },
    /// The backend cannot be used here (no driver, no GPU).
    #[error("backend '{backend}' is not available: {reason}")]
    Unavailable { backend: String, reason: String },
    /// The backend failed while running (a driver error, a kernel fault, a rank's thread).
    #[error("backend '{backend}': {reason}")]
    Backend { backend: String, reason: String },
}
