//! Why a model could not be loaded or a forward step could not run.

use std::path::PathBuf;

/// One error type for loading and running models. Load errors name the file and say
/// what was expected, so a user can fix the input without reading code.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid GGUF file ({reason})")]
    BadGguf { path: PathBuf, reason: String },
    #[error("{path}: not valid safetensors weights ({reason})")]
    BadSafetensors { path: PathBuf, reason: String },
    #[error("{path}: unsupported architecture '{found}'; supported: {supported}")]
    UnsupportedArchitecture {
        path: PathBuf,
        found: String,
        supported: String,
    },
    #[error("{path}: {key}: {reason}")]
    BadConfig {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: missing tensor '{name}'")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor '{name}' has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor '{name}' has dtype {found}, expected f32, f16 or bf16")]
    UnsupportedTensorDType {
        path: PathBuf,
        name: String,
        found: String,
    },
    #[error("unsupported dtype '{0}': expected auto, f32, f16 or bf16")]
    UnsupportedDType(String),
    #[error("unknown synthetic model '{name}': expected one of {}", crate::model::SYNTHETIC_MODELS.join(", "))]
    UnknownSynthetic { name: String },
    #[error("invalid forward batch: {0}")]
    BadBatch(String),
    #[error("KV cache: {0}")]
    KvCache(String),
    /// A loader produced weights that do not fit the config's flags (a bug, not bad input).
    #[error("model assembly: {0}")]
    Assembly(String),
    /// A tensor operation failed on the device (out of memory, a kernel error).
    #[error("tensor op: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
