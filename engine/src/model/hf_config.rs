//! Reading a Hugging Face `config.json`: the fields every family shares into a
//! [`ModelConfig`], then the family's own mapping (`family/`) on top.

use std::path::Path;

use metrum_kernels::RopeStyle;
use serde::Deserialize;
use serde_json::Value as Json;

use crate::model::arch::{ArchSpec, Family};
use crate::model::family::{self, ConfigIssue};
use crate::model::{ModelConfig, ModelError, Result, RopeScaling};

/// The `config.json` fields any supported family reads; the rest of the file is ignored
/// (configs carry many training-only fields). Family-specific fields are read from `raw`.
#[derive(Deserialize)]
pub(crate) struct HfConfig {
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f32>,
    pub rope_scaling: Option<Json>,
    /// transformers ≥ 5 moves `rope_theta` and the scaling into one object.
    pub rope_parameters: Option<Json>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: Option<bool>,
    pub hidden_act: Option<String>,
    /// Gemma's name for the activation (it overrides `hidden_act` there).
    pub hidden_activation: Option<String>,
    pub sliding_window: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    #[serde(skip)]
    pub raw: Json,
}

impl HfConfig {
    /// A family-specific field of any JSON type, `None` when absent or null.
    pub fn field(&self, key: &str) -> Option<&Json> {
        self.raw.get(key).filter(|v| !v.is_null())
    }

    pub fn f64_field(&self, key: &str) -> std::result::Result<Option<f64>, ConfigIssue> {
        match self.field(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| ConfigIssue::new(key, format!("expected a number, got {v}"))),
        }
    }

    pub fn bool_field(&self, key: &str) -> std::result::Result<Option<bool>, ConfigIssue> {
        match self.field(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| ConfigIssue::new(key, format!("expected true or false, got {v}"))),
        }
    }

    pub fn usize_field(&self, key: &str) -> std::result::Result<Option<usize>, ConfigIssue> {
        match self.field(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                ConfigIssue::new(key, format!("expected a non-negative integer, got {v}"))
            }),
        }
    }

    /// The `rope_scaling` object (or transformers 5's `rope_parameters`).
    pub fn rope_scaling_json(&self) -> Option<&Json> {
        self.rope_scaling
            .as_ref()
            .filter(|v| !v.is_null())
            .or(self.rope_parameters.as_ref())
    }

    /// Per-layer windows from `layer_types` (`sliding_attention` / `full_attention`) and
    /// `sliding_window`; `None` when the config has no `layer_types`.
    pub fn windows_from_layer_types(
        &self,
    ) -> std::result::Result<Option<Vec<Option<usize>>>, ConfigIssue> {
        let Some(types) = &self.layer_types else {
            return Ok(None);
        };
        let mut windows = Vec::with_capacity(types.len());
        for kind in types {
            windows.push(match kind.as_str() {
                "full_attention" => None,
                "sliding_attention" => Some(self.sliding_window.ok_or_else(|| {
                    ConfigIssue::new(
                        "sliding_window",
                        "layer_types has sliding_attention layers but no sliding_window",
                    )
                })?),
                other => {
                    return Err(ConfigIssue::new(
                        "layer_types",
                        format!(
                            "layer type '{other}' is not supported (sliding_attention, full_attention)"
                        ),
                    ));
                }
            });
        }
        Ok(Some(windows))
    }
}

/// Reads `config.json`, recognizes the family and maps it; errors name the field.
pub(crate) fn read_config(path: &Path) -> Result<ModelConfig> {
    let bad = |issue: ConfigIssue| ModelError::BadConfig {
        path: path.to_path_buf(),
        key: issue.key,
        reason: issue.reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let raw: Json = serde_json::from_str(&text)
        .map_err(|e| bad(ConfigIssue::new("config.json", e.to_string())))?;
    let mut hf: HfConfig = serde_json::from_value(raw.clone())
        .map_err(|e| bad(ConfigIssue::new("config.json", e.to_string())))?;
    hf.raw = raw;
    let family = Family::from_hf(hf.architectures.as_deref(), hf.model_type.as_deref())
        .ok_or_else(|| {
            let found = match (&hf.architectures, &hf.model_type) {
                (Some(archs), _) => archs.join(", "),
                (None, Some(t)) => format!("model_type {t}"),
                (None, None) => "none declared".into(),
            };
            ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found,
                supported: Family::supported_hf(),
            }
        })?;
    let config = shared_fields(&hf, family)
        .and_then(|base| family::from_hf(family, &hf, base))
        .map_err(bad)?;
    config
        .validate()
        .map_err(|(key, reason)| bad(ConfigIssue::new(key, reason)))?;
    Ok(config)
}

/// The fields with one meaning in every family; the family mapping adjusts the rest.
fn shared_fields(hf: &HfConfig, family: Family) -> std::result::Result<ModelConfig, ConfigIssue> {
    let params = hf.rope_parameters.as_ref();
    let rope_theta = hf
        .rope_theta
        .or_else(|| params?.get("rope_theta")?.as_f64().map(|t| t as f32))
        .unwrap_or(10_000.0);
    let rope_scaling = parse_rope_scaling(hf.rope_scaling_json(), family)
        .map_err(|reason| ConfigIssue::new("rope_scaling", reason))?;
    if hf.num_attention_heads == 0 {
        return Err(ConfigIssue::new("num_attention_heads", "must be positive"));
    }
    let head_dim = match hf.head_dim {
        Some(d) => d,
        None if hf.hidden_size.is_multiple_of(hf.num_attention_heads) => {
            hf.hidden_size / hf.num_attention_heads
        }
        None => {
            return Err(ConfigIssue::new(
                "head_dim",
                format!(
                    "absent, and hidden_size {} is not a multiple of {} heads",
                    hf.hidden_size, hf.num_attention_heads
                ),
            ));
        }
    };
    Ok(ModelConfig {
        arch: ArchSpec {
            family,
            ..ArchSpec::llama()
        },
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        intermediate_size: hf.intermediate_size,
        num_layers: hf.num_hidden_layers,
        num_heads: hf.num_attention_heads,
        num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
        head_dim,
        rms_norm_eps: hf.rms_norm_eps as f32,
        rope_theta,
        rope_scaling,
        rope_style: RopeStyle::Neox,
        rotary_dim: None,
        rope_local_theta: None,
        max_position_embeddings: hf.max_position_embeddings,
        // transformers' own default when a config omits it; families override (Gemma ties).
        tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
        layer_windows: Vec::new(),
        attn_scale: None,
        moe: None,
    })
}

/// The activation a config declares (`hidden_activation` wins, as in Gemma's code).
pub(crate) fn activation_name(hf: &HfConfig) -> Option<&str> {
    hf.hidden_activation.as_deref().or(hf.hidden_act.as_deref())
}

/// `rope_scaling` (or `rope_parameters`): absent / `default` / `llama3` / `linear`.
/// LongRoPE is Phi-3's alone and read by its family mapping.
pub(crate) fn parse_rope_scaling(
    value: Option<&Json>,
    family: Family,
) -> std::result::Result<RopeScaling, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let kind = value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    let number = |key: &str| {
        value
            .get(key)
            .and_then(Json::as_f64)
            .ok_or_else(|| format!("{kind} scaling needs a numeric '{key}'"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: number("factor")? as f32,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: number("factor")? as f32,
            low_freq_factor: number("low_freq_factor")? as f32,
            high_freq_factor: number("high_freq_factor")? as f32,
            original_max_position_embeddings: number("original_max_position_embeddings")? as usize,
        }),
        // Parsed by the Phi-3 mapping, which knows the original context and rotary dims.
        "longrope" | "su" if family == Family::Phi3 => Ok(RopeScaling::None),
        other => Err(format!(
            "rope type '{other}' is not supported (default, linear, llama3, longrope)"
        )),
    }
}

impl ModelConfig {
    /// Reads a Hugging Face `config.json` of any supported family.
    pub fn from_hf_config(path: &Path) -> Result<ModelConfig> {
        read_config(path)
    }
}
