//! Qwen2 / Qwen2.5 (biases on q, k, v) and Qwen3 dense (per-head q/k RMSNorm before RoPE, an
//! explicit `head_dim`, no biases unless `attention_bias`). Both may slide a window over the
//! layers from `max_window_layers` on when `use_sliding_window` is set (no released
//! checkpoint does). GGUF: `qwen2` / `qwen3`, NeoX RoPE (llama.cpp does not permute).

use super::{ConfigIssue, MapResult, require_silu};
use crate::model::ModelConfig;
use crate::model::arch::Family;
use crate::model::gguf::GgufMeta;
use crate::model::hf_config::HfConfig;

pub(super) fn from_hf(hf: &HfConfig, mut c: ModelConfig) -> MapResult {
    require_silu(hf)?;
    match c.family() {
        Family::Qwen2 => c.arch.qkv_bias = true,
        _ => {
            c.arch.qk_norm = true;
            c.arch.qkv_bias = hf.bool_field("attention_bias")?.unwrap_or(false);
        }
    }
    c.layer_windows = match hf.windows_from_layer_types()? {
        Some(windows) => windows,
        None if hf.bool_field("use_sliding_window")?.unwrap_or(false) => {
            let window = hf.sliding_window.ok_or_else(|| {
                ConfigIssue::new(
                    "sliding_window",
                    "use_sliding_window is set without a window",
                )
            })?;
            let first = hf.usize_field("max_window_layers")?.unwrap_or(0);
            (0..c.num_layers)
                .map(|i| (i >= first).then_some(window))
                .collect()
        }
        None => Vec::new(),
    };
    Ok(c)
}

pub(super) fn from_gguf(meta: &GgufMeta, mut c: ModelConfig) -> MapResult {
    match c.family() {
        Family::Qwen2 => c.arch.qkv_bias = true,
        _ => {
            c.arch.qk_norm = true;
            c.arch.qkv_bias = meta.has_tensor("blk.0.attn_q.bias");
        }
    }
    if c.rotary_dim() != c.head_dim {
        return Err(ConfigIssue::new(
            meta.key("rope.dimension_count"),
            "partial rotary is not supported for qwen",
        ));
    }
    Ok(c)
}
