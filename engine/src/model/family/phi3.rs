//! Phi-3, Phi-3.5 and Phi-4-mini (`Phi3ForCausalLM`): fused `qkv_proj` and `gate_up_proj`
//! weights (split at load into the usual q/k/v and gate/up outputs), LongRoPE on the 128k
//! variants, partial rotary on Phi-4-mini (`partial_rotary_factor`), and a sliding window on
//! every layer when `sliding_window` is set (Phi-3-mini-4k: 2047).

use super::{ConfigIssue, MapResult, require_silu, uniform_windows};
use crate::model::gguf::GgufMeta;
use crate::model::hf_config::HfConfig;
use crate::model::{ModelConfig, RopeScaling};
use serde_json::Value as Json;

pub(super) fn from_hf(hf: &HfConfig, mut c: ModelConfig) -> MapResult {
    require_silu(hf)?;
    let fraction = hf.f64_field("partial_rotary_factor")?.unwrap_or(1.0);
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(ConfigIssue::new(
            "partial_rotary_factor",
            "must be in (0, 1]",
        ));
    }
    let rotary = (c.head_dim as f64 * fraction) as usize;
    if rotary != c.head_dim {
        c.rotary_dim = Some(rotary);
    }
    c.layer_windows = uniform_windows(c.num_layers, hf.sliding_window);
    if let Some(scaling) = hf.rope_scaling_json() {
        c.rope_scaling = longrope_from_hf(hf, scaling, &c)?;
    }
    Ok(c)
}

fn longrope_from_hf(
    hf: &HfConfig,
    scaling: &Json,
    c: &ModelConfig,
) -> Result<RopeScaling, ConfigIssue> {
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    match kind {
        "default" => return Ok(RopeScaling::None),
        "longrope" | "su" => {}
        other => {
            return Err(ConfigIssue::new(
                "rope_scaling",
                format!("rope type '{other}' is not supported for phi3 (longrope)"),
            ));
        }
    }
    let factors = |key: &str| -> Result<Vec<f32>, ConfigIssue> {
        let list = scaling.get(key).and_then(Json::as_array).ok_or_else(|| {
            ConfigIssue::new(
                format!("rope_scaling.{key}"),
                "LongRoPE needs a list of numbers",
            )
        })?;
        list.iter()
            .map(|v| v.as_f64().map(|f| f as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| ConfigIssue::new(format!("rope_scaling.{key}"), "not all numbers"))
    };
    let original = hf
        .usize_field("original_max_position_embeddings")?
        .or_else(|| {
            scaling
                .get("original_max_position_embeddings")
                .and_then(Json::as_u64)
                .map(|n| n as usize)
        })
        .ok_or_else(|| ConfigIssue::new("original_max_position_embeddings", "LongRoPE needs it"))?;
    if original == 0 {
        return Err(ConfigIssue::new(
            "original_max_position_embeddings",
            "must be positive",
        ));
    }
    let attention_factor = match scaling.get("attention_factor").and_then(Json::as_f64) {
        Some(f) => f as f32,
        None => longrope_attention_factor(c.max_position_embeddings, original),
    };
    Ok(RopeScaling::LongRope {
        short: factors("short_factor")?,
        long: factors("long_factor")?,
        original_max_position_embeddings: original,
        attention_factor,
    })
}

/// transformers' default: `sqrt(1 + ln(s) / ln(original))` with `s = max / original`, or 1
/// when the model does not extend its context.
fn longrope_attention_factor(max_positions: usize, original: usize) -> f32 {
    let factor = max_positions as f64 / original as f64;
    if factor <= 1.0 {
        1.0
    } else {
        (1.0 + factor.ln() / (original as f64).ln()).sqrt() as f32
    }
}

pub(super) fn from_gguf(meta: &GgufMeta, mut c: ModelConfig) -> MapResult {
    c.layer_windows = uniform_windows(c.num_layers, meta.usize_opt("attention.sliding_window")?);
    let has_long = meta.has_tensor("rope_factors_long.weight");
    let has_short = meta.has_tensor("rope_factors_short.weight");
    if has_long != has_short {
        return Err(ConfigIssue::new(
            "rope_factors_long.weight",
            "LongRoPE needs both rope_factors_long and rope_factors_short",
        ));
    }
    if has_long {
        let original = meta
            .usize_opt("rope.scaling.original_context_length")?
            .ok_or_else(|| {
                ConfigIssue::new(meta.key("rope.scaling.original_context_length"), "missing")
            })?;
        let attention_factor = match meta.f32_opt("rope.scaling.attn_factor")? {
            Some(f) => f,
            None => longrope_attention_factor(c.max_position_embeddings, original),
        };
        // The factor tensors are read with the weights (see `gguf::GgufReader::parts`).
        c.rope_scaling = RopeScaling::LongRope {
            short: Vec::new(),
            long: Vec::new(),
            original_max_position_embeddings: original,
            attention_factor,
        };
    }
    Ok(c)
}
