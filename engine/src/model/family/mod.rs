//! Per-family config mappings: each file turns one family's `config.json` fields and GGUF
//! metadata keys into [`ModelConfig`] fields and [`crate::model::ArchSpec`] flags, on top of
//! the fields every family shares (read by `hf_config` and `gguf`). Tensor names are not
//! here: transformers and llama.cpp name the same parts the same way across these families,
//! so the two weight loaders read them by flag.
//!
//! | file | families |
//! | --- | --- |
//! | `llama` | Llama, Mistral |
//! | `qwen` | Qwen2 / Qwen2.5, Qwen3 (dense) |
//! | `gemma` | Gemma 2, Gemma 3 (text) |
//! | `phi3` | Phi-3, Phi-3.5, Phi-4-mini |
//! | `moe` | the expert fields of Mixtral and Qwen3-MoE (their attention is Llama's / Qwen3's) |

mod gemma;
mod llama;
mod moe;
mod phi3;
mod qwen;

use crate::model::ModelConfig;
use crate::model::arch::Family;
use crate::model::gguf::GgufMeta;
use crate::model::hf_config::HfConfig;

/// A config field that is missing, malformed or contradictory: the field's name as the
/// checkpoint spells it, and why.
#[derive(Debug)]
pub(crate) struct ConfigIssue {
    pub key: String,
    pub reason: String,
}

impl ConfigIssue {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> ConfigIssue {
        ConfigIssue {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

pub(crate) type MapResult = Result<ModelConfig, ConfigIssue>;

/// The family's reading of `config.json` over the shared fields in `base`.
pub(crate) fn from_hf(family: Family, hf: &HfConfig, base: ModelConfig) -> MapResult {
    match family {
        Family::Llama | Family::Mistral => llama::from_hf(hf, base),
        Family::Qwen2 | Family::Qwen3 => qwen::from_hf(hf, base),
        Family::Mixtral => moe::mixtral_from_hf(hf, base),
        Family::Qwen3Moe => moe::qwen3_moe_from_hf(hf, base),
        Family::Gemma2 | Family::Gemma3 => gemma::from_hf(hf, base),
        Family::Phi3 => phi3::from_hf(hf, base),
    }
}

/// The family's reading of GGUF metadata over the shared fields in `base`.
pub(crate) fn from_gguf(family: Family, meta: &GgufMeta, base: ModelConfig) -> MapResult {
    match family {
        Family::Llama | Family::Mistral | Family::Mixtral => llama::from_gguf(meta, base),
        Family::Qwen2 | Family::Qwen3 => qwen::from_gguf(meta, base),
        Family::Qwen3Moe => moe::qwen3_moe_from_gguf(meta, base),
        Family::Gemma2 | Family::Gemma3 => gemma::from_gguf(meta, base),
        Family::Phi3 => phi3::from_gguf(meta, base),
    }
}

/// Every family but Gemma uses SwiGLU; a config naming anything else is refused, never run
/// with the wrong activation.
pub(crate) fn require_silu(hf: &HfConfig) -> Result<(), ConfigIssue> {
    match crate::model::hf_config::activation_name(hf) {
        None | Some("silu") => Ok(()),
        Some(other) => Err(ConfigIssue::new(
            "hidden_act",
            format!("'{other}' is not supported for this family (silu)"),
        )),
    }
}

/// The same window on every layer (Mistral, Phi-3), or none (also for a window of 0, which
/// llama.cpp writes for "no window").
pub(crate) fn uniform_windows(num_layers: usize, window: Option<usize>) -> Vec<Option<usize>> {
    match window {
        Some(w) if w > 0 => vec![Some(w); num_layers],
        _ => Vec::new(),
    }
}

/// Windows for the pattern "every `period`-th layer is global, the rest slide" (Gemma 2:
/// period 2; Gemma 3: period 6), as transformers and llama.cpp both define it.
pub(crate) fn periodic_windows(
    num_layers: usize,
    window: usize,
    period: usize,
) -> Vec<Option<usize>> {
    (0..num_layers)
        .map(|i| (!(i + 1).is_multiple_of(period)).then_some(window))
        .collect()
}
