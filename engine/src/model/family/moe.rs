//! The expert fields of the mixture-of-experts families, on top of their attention's family
//! mapping: Mixtral is Mistral's decoder (GGUF `llama` with `llama.expert_count`), Qwen3-MoE
//! is Qwen3's (GGUF `qwen3moe`). Whatever field is not supported is refused by name.

use super::{ConfigIssue, MapResult, llama, qwen};
use crate::model::gguf::GgufMeta;
use crate::model::hf_config::HfConfig;
use crate::model::{ModelConfig, MoeConfig};

pub(super) fn mixtral_from_hf(hf: &HfConfig, base: ModelConfig) -> MapResult {
    let mut c = llama::from_hf(hf, base)?;
    c.moe = Some(MoeConfig {
        num_experts: hf_expert_count(hf)?,
        experts_per_token: required(hf, "num_experts_per_tok")?,
        // Mixtral's experts are as wide as the config's one MLP width.
        expert_intermediate_size: c.intermediate_size,
        // transformers' MixtralTopKRouter always renormalises the top-k.
        renormalize: true,
        dense_layers: Vec::new(),
    });
    Ok(c)
}

pub(super) fn qwen3_moe_from_hf(hf: &HfConfig, base: ModelConfig) -> MapResult {
    let mut c = qwen::from_hf(hf, base)?;
    let num_experts = hf_expert_count(hf)?;
    let step = hf.usize_field("decoder_sparse_step")?.unwrap_or(1);
    if step == 0 {
        return Err(ConfigIssue::new("decoder_sparse_step", "must be positive"));
    }
    let mlp_only: Vec<usize> = match hf.field("mlp_only_layers") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .map(|i| i.as_u64().map(|i| i as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                ConfigIssue::new(
                    "mlp_only_layers",
                    format!("expected layer indices, got {v}"),
                )
            })?,
    };
    if let Some(bad) = mlp_only.iter().find(|&&i| i >= c.num_layers) {
        return Err(ConfigIssue::new(
            "mlp_only_layers",
            format!("layer {bad} of a {}-layer model", c.num_layers),
        ));
    }
    // As Qwen3MoeDecoderLayer decides: sparse unless listed or off the step.
    let dense_layers = (0..c.num_layers)
        .filter(|i| mlp_only.contains(i) || !(i + 1).is_multiple_of(step))
        .collect();
    c.moe = Some(MoeConfig {
        num_experts,
        experts_per_token: required(hf, "num_experts_per_tok")?,
        expert_intermediate_size: required(hf, "moe_intermediate_size")?,
        // transformers' default when the config omits it.
        renormalize: hf.bool_field("norm_topk_prob")?.unwrap_or(false),
        dense_layers,
    });
    Ok(c)
}

pub(super) fn qwen3_moe_from_gguf(meta: &GgufMeta, base: ModelConfig) -> MapResult {
    let mut c = qwen::from_gguf(meta, base)?;
    let moe = gguf_experts(meta, &c)?;
    c.moe = Some(moe);
    Ok(c)
}

/// A GGUF's expert keys (`expert_count`, `expert_used_count`, `expert_feed_forward_length`,
/// `expert_weights_norm`). llama.cpp renormalises the top-k for both families unless
/// `expert_weights_norm` says otherwise, and makes every layer sparse.
pub(super) fn gguf_experts(meta: &GgufMeta, c: &ModelConfig) -> Result<MoeConfig, ConfigIssue> {
    let num_experts = meta.usize("expert_count")?;
    let experts_per_token = meta.usize("expert_used_count")?;
    if experts_per_token == 0 || experts_per_token > num_experts {
        return Err(ConfigIssue::new(
            meta.key("expert_used_count"),
            format!(
                "{experts_per_token} experts per token must be between 1 and expert_count {num_experts}"
            ),
        ));
    }
    Ok(MoeConfig {
        num_experts,
        experts_per_token,
        expert_intermediate_size: meta
            .usize_opt("expert_feed_forward_length")?
            .unwrap_or(c.intermediate_size),
        renormalize: meta.bool_opt("expert_weights_norm")?.unwrap_or(true),
        dense_layers: Vec::new(),
    })
}

/// Mixtral spells the count `num_local_experts`, Qwen3-MoE's checkpoints `num_experts` (and
/// transformers 5 writes both names); two different counts are refused, not guessed between.
fn hf_expert_count(hf: &HfConfig) -> Result<usize, ConfigIssue> {
    let local = hf.usize_field("num_local_experts")?;
    let plain = hf.usize_field("num_experts")?;
    match (local, plain) {
        (Some(a), Some(b)) if a != b => Err(ConfigIssue::new(
            "num_experts",
            format!("{b} contradicts num_local_experts {a}"),
        )),
        (Some(n), _) | (None, Some(n)) => Ok(n),
        (None, None) => Err(ConfigIssue::new(
            "num_local_experts",
            "missing: a mixture-of-experts config needs its expert count",
        )),
    }
}

fn required(hf: &HfConfig, key: &str) -> Result<usize, ConfigIssue> {
    hf.usize_field(key)?
        .ok_or_else(|| ConfigIssue::new(key, "missing from config.json"))
}

/// Whether a GGUF `llama` file is really Mixtral.
pub(super) fn is_mixtral(meta: &GgufMeta) -> Result<bool, ConfigIssue> {
    Ok(meta.usize_opt("expert_count")?.unwrap_or(0) > 0)
}
