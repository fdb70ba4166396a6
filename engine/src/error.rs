//! What failed while the engine ran: a forward pass, a grammar, the draft model. Callers match
//! on the variant (a failed forward is fatal, a grammar error ends one request, a draft model
//! failure costs one step its drafts); users see `Display`, which says what failed and why.
//!
//! Parse errors stay `String` (`FromStr` impls and clap value parsers, `hf_config`,
//! `gguf_header`, `hub::reachable`, `speculative::config::parse`, a grammar's compile error
//! for the 400): their message is the whole product, shown to the user as it is.

use crate::loader::LoadError;
use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A forward pass failed: a device error (out of memory, a failed kernel launch) or a
    /// batch the model cannot run. Fatal for the engine (see `engine_loop`).
    #[error("forward pass failed: {0}")]
    Forward(#[from] ModelError),
    /// The fault a test armed with `EngineHandle::inject_fault` (only builds with the
    /// `fault-injection` feature can arm one): stands for a device error, so it is fatal too.
    #[error("injected fault: the forward pass failed")]
    Fault,
    /// A structured-output grammar could not be set up for the vocabulary, or could not go on
    /// with the reply (no allowed token, a refused token). Ends that one request.
    #[error("grammar error: {0}")]
    Grammar(String),
    /// A model could not be loaded: resolving `model`, its weights or its tokenizer.
    #[error("cannot load {model:?}: {source}")]
    Load {
        model: String,
        #[source]
        source: Box<LoadError>,
    },
    /// The speculative draft model cannot draft for the target (another tokenizer, more
    /// parameters), or a draft forward failed (then that step has no drafts).
    #[error("draft model: {0}")]
    DraftModel(String),
}

impl EngineError {
    /// A [`EngineError::Load`] of `model` failing with `source`.
    pub fn load(model: &str, source: impl Into<LoadError>) -> EngineError {
        EngineError::Load {
            model: model.to_string(),
            source: Box::new(source.into()),
        }
    }
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> EngineError {
        EngineError::Forward(ModelError::Candle(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_says_what_failed() {
        let cases = [
            (
                EngineError::Forward(ModelError::KvCache("block 7 out of range".into())),
                "forward pass failed: KV cache: block 7 out of range",
            ),
            (
                EngineError::from(candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY".into())),
                "forward pass failed: tensor op: CUDA_ERROR_OUT_OF_MEMORY",
            ),
            (
                EngineError::Fault,
                "injected fault: the forward pass failed",
            ),
            (
                EngineError::Grammar("token 5 refused".into()),
                "grammar error: token 5 refused",
            ),
            (
                EngineError::load(
                    "synthetic:nope",
                    ModelError::UnknownSynthetic {
                        name: "nope".into(),
                    },
                ),
                "cannot load \"synthetic:nope\": unknown synthetic model 'nope'",
            ),
            (
                EngineError::DraftModel("its vocabulary differs from the target's".into()),
                "draft model: its vocabulary differs from the target's",
            ),
        ];
        for (error, expected) in cases {
            let shown = error.to_string();
            assert!(shown.starts_with(expected), "{shown:?} vs {expected:?}");
            // Display, never a Debug dump of the variant.
            assert!(
                !shown.contains("EngineError") && !shown.contains("Forward("),
                "{shown}"
            );
        }
    }

    #[test]
    fn a_load_error_keeps_its_source() {
        let error = EngineError::load("x", ModelError::UnsupportedDType("f8".into()));
        let source = std::error::Error::source(&error).expect("a load error has a source");
        assert!(
            source.to_string().contains("unsupported dtype 'f8'"),
            "{source}"
        );
    }
}
