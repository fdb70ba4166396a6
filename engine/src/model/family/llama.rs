//! Llama and Mistral: the baseline decoder. Mistral adds a sliding window on every layer when
//! its config sets `sliding_window` (v0.1; later versions set it to null). llama.cpp converts
//! both as GGUF `llama`, with q/k rows permuted for interleaved RoPE; a `llama` file with
//! `llama.expert_count` is Mixtral (its expert fields are read by `moe`).

use metrum_kernels::RopeStyle;

use super::{ConfigIssue, MapResult, require_silu, uniform_windows};
use crate::model::arch::Family;
use crate::model::gguf::GgufMeta;
use crate::model::hf_config::HfConfig;
use crate::model::{ModelConfig, RopeScaling};

pub(super) fn from_hf(hf: &HfConfig, mut c: ModelConfig) -> MapResult {
    require_silu(hf)?;
    for key in ["attention_bias", "mlp_bias"] {
        if hf.bool_field(key)?.unwrap_or(false) {
            return Err(ConfigIssue::new(
                key,
                "biased projections are not supported for llama",
            ));
        }
    }
    if matches!(c.family(), Family::Mistral | Family::Mixtral) {
        c.layer_windows = uniform_windows(c.num_layers, hf.sliding_window);
    }
    Ok(c)
}

pub(super) fn from_gguf(meta: &GgufMeta, mut c: ModelConfig) -> MapResult {
    if super::moe::is_mixtral(meta)? {
        c.arch.family = Family::Mixtral;
        c.moe = Some(super::moe::gguf_experts(meta, &c)?);
    }
    if c.rotary_dim() != c.head_dim {
        return Err(ConfigIssue::new(
            meta.key("rope.dimension_count"),
            format!(
                "partial rotary ({} of {} dims) is not supported for llama",
                c.rotary_dim(),
                c.head_dim
            ),
        ));
    }
    c.rope_scaling = match meta.string("rope.scaling.type").as_deref() {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: meta.f32_opt("rope.scaling.factor")?.unwrap_or(1.0),
        },
        Some(other) => {
            return Err(ConfigIssue::new(
                meta.key("rope.scaling.type"),
                format!("'{other}' is not supported (none or linear)"),
            ));
        }
    };
    // llama.cpp permutes q/k rows at conversion so GGUF llama pairs adjacent elements.
    c.rope_style = RopeStyle::Interleaved;
    c.layer_windows = uniform_windows(c.num_layers, meta.usize_opt("attention.sliding_window")?);
    Ok(c)
}
