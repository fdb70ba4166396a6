//! Gemma 2 and Gemma 3 (text). Against Llama: RMSNorm scales by `1 + w` (folded into the
//! weights at load; llama.cpp's converter already stores `1 + w` in GGUF), norms after
//! attention and after the MLP too, GeGLU with tanh GELU, embeddings scaled by
//! `sqrt(hidden)`, scores scaled by `query_pre_attn_scalar^-1/2`, and a sliding window on
//! some layers (Gemma 2: every other; Gemma 3: five of six). Gemma 2 soft-caps attention
//! scores and the final logits; Gemma 3 drops the caps, adds per-head q/k norms and gives its
//! sliding layers their own RoPE base (`rope_local_base_freq`). Both tie the output head by
//! default.

use super::{ConfigIssue, MapResult, periodic_windows};
use crate::model::ModelConfig;
use crate::model::arch::{Activation, Family};
use crate::model::gguf::GgufMeta;
use crate::model::hf_config::{HfConfig, activation_name};

/// Layers of the 27B models, the only Gemma size whose query scale is not `head_dim^-1/2`;
/// llama.cpp infers the scale from this because GGUF does not store `query_pre_attn_scalar`.
const GEMMA2_27B_LAYERS: usize = 46;
const GEMMA3_27B_LAYERS: usize = 62;
/// Gemma 3's local RoPE base; llama.cpp hard-codes it too.
const GEMMA3_LOCAL_ROPE_BASE: f32 = 10_000.0;

fn common(c: &mut ModelConfig) {
    c.arch.activation = Activation::GeluTanhMul;
    c.arch.sandwich_norms = true;
    c.arch.scale_embeddings = true;
    if c.family() == Family::Gemma3 {
        c.arch.qk_norm = true;
    }
}

pub(super) fn from_hf(hf: &HfConfig, mut c: ModelConfig) -> MapResult {
    common(&mut c);
    match activation_name(hf) {
        None | Some("gelu_pytorch_tanh" | "gelu_tanh") => {}
        Some(other) => {
            return Err(ConfigIssue::new(
                "hidden_activation",
                format!("'{other}' is not supported for gemma (gelu_pytorch_tanh)"),
            ));
        }
    }
    let gemma2 = c.family() == Family::Gemma2;
    c.tie_word_embeddings = hf.tie_word_embeddings.unwrap_or(true);
    // transformers' defaults when the field is absent: 256; Gemma 2 caps 50 and 30.
    let scalar = hf.f64_field("query_pre_attn_scalar")?.unwrap_or(256.0);
    if scalar.is_nan() || scalar <= 0.0 {
        return Err(ConfigIssue::new(
            "query_pre_attn_scalar",
            "must be positive",
        ));
    }
    c.attn_scale = Some(scalar.powf(-0.5) as f32);
    let cap = |key: &str, default: Option<f64>| -> Result<Option<f32>, ConfigIssue> {
        Ok(match hf.raw.get(key) {
            None => default.map(|v| v as f32),
            Some(v) if v.is_null() => None,
            Some(_) => hf.f64_field(key)?.map(|v| v as f32),
        })
    };
    let (attn_default, final_default) = if gemma2 {
        (Some(50.0), Some(30.0))
    } else {
        (None, None)
    };
    c.arch.attn_soft_cap = cap("attn_logit_softcapping", attn_default)?;
    c.arch.final_soft_cap = cap("final_logit_softcapping", final_default)?;
    let window = hf.sliding_window.unwrap_or(4096);
    c.layer_windows = match hf.windows_from_layer_types()? {
        Some(windows) => windows,
        None if gemma2 => periodic_windows(c.num_layers, window, 2),
        None => {
            let period = hf.usize_field("sliding_window_pattern")?.unwrap_or(6);
            if period == 0 {
                return Err(ConfigIssue::new(
                    "sliding_window_pattern",
                    "must be positive",
                ));
            }
            periodic_windows(c.num_layers, window, period)
        }
    };
    if !gemma2 {
        gemma3_rope(hf, &mut c)?;
    }
    Ok(c)
}

/// Gemma 3's two RoPE tables. transformers 4 writes `rope_theta` / `rope_scaling` for the
/// global layers and `rope_local_base_freq` for the sliding ones; transformers 5 writes
/// `rope_parameters: {full_attention: {...}, sliding_attention: {...}}`.
fn gemma3_rope(hf: &HfConfig, c: &mut ModelConfig) -> Result<(), ConfigIssue> {
    let per_type = hf
        .rope_parameters
        .as_ref()
        .filter(|p| p.get("full_attention").is_some() || p.get("sliding_attention").is_some());
    let Some(per_type) = per_type else {
        let local = hf.f64_field("rope_local_base_freq")?.unwrap_or(10_000.0);
        c.rope_local_theta = Some(local as f32);
        return Ok(());
    };
    let theta = |kind: &str| -> Result<Option<f32>, ConfigIssue> {
        match per_type.get(kind).map(|p| p.get("rope_theta")) {
            None | Some(None) => Ok(None),
            Some(Some(v)) => v.as_f64().map(|t| Some(t as f32)).ok_or_else(|| {
                ConfigIssue::new(format!("rope_parameters.{kind}.rope_theta"), "not a number")
            }),
        }
    };
    if let Some(global) = theta("full_attention")? {
        c.rope_theta = global;
    }
    c.rope_local_theta = Some(theta("sliding_attention")?.unwrap_or(GEMMA3_LOCAL_ROPE_BASE));
    for kind in ["full_attention", "sliding_attention"] {
        let scaling =
            crate::model::hf_config::parse_rope_scaling(per_type.get(kind), c.family())
                .map_err(|reason| ConfigIssue::new(format!("rope_parameters.{kind}"), reason))?;
        match kind {
            "full_attention" => c.rope_scaling = scaling,
            _ if scaling != crate::model::RopeScaling::None => {
                return Err(ConfigIssue::new(
                    "rope_parameters.sliding_attention",
                    "scaling on the sliding layers' RoPE is not supported",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn from_gguf(meta: &GgufMeta, mut c: ModelConfig) -> MapResult {
    common(&mut c);
    let gemma2 = c.family() == Family::Gemma2;
    let big = if gemma2 {
        GEMMA2_27B_LAYERS
    } else {
        GEMMA3_27B_LAYERS
    };
    // `attention.scale` where the converter wrote it; llama.cpp's size rule otherwise.
    c.attn_scale = match meta.f32_opt("attention.scale")? {
        Some(scale) => Some(scale),
        None if c.num_layers == big => Some((c.hidden_size as f32 / c.num_heads as f32).powf(-0.5)),
        None => Some((c.head_dim as f32).powf(-0.5)),
    };
    if gemma2 {
        c.arch.attn_soft_cap = meta.f32_opt("attn_logit_softcapping")?;
        c.arch.final_soft_cap = meta.f32_opt("final_logit_softcapping")?;
    }
    let window = meta
        .usize_opt("attention.sliding_window")?
        .ok_or_else(|| ConfigIssue::new(meta.key("attention.sliding_window"), "missing"))?;
    c.layer_windows = match meta.bool_array("attention.sliding_window_pattern")? {
        Some(pattern) if pattern.len() == c.num_layers => pattern
            .into_iter()
            .map(|slides| slides.then_some(window))
            .collect(),
        Some(pattern) => {
            return Err(ConfigIssue::new(
                meta.key("attention.sliding_window_pattern"),
                format!("{} entries for {} layers", pattern.len(), c.num_layers),
            ));
        }
        None => periodic_windows(c.num_layers, window, if gemma2 { 2 } else { 6 }),
    };
    if !gemma2 {
        let local = meta.f32_opt("rope.freq_base_swa")?;
        c.rope_local_theta = Some(local.unwrap_or(GEMMA3_LOCAL_ROPE_BASE));
        if let Some(factor) = meta.f32_opt("rope.scaling.factor")? {
            c.rope_scaling = crate::model::RopeScaling::Linear { factor };
        }
    }
    Ok(c)
}
