//! Loading Hugging Face `LlamaForCausalLM` directories: `config.json` plus one or more
//! `*.safetensors` shards (f32, f16 or bf16), converted to the activation dtype on the device.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use metrum_kernels::RopeStyle;
use serde::Deserialize;
use serde_json::Value as Json;

use crate::model::linear::{Embedding, Linear, SplitLinear};
use crate::model::{
    LayerWeights, LlamaConfig, LlamaModel, ModelError, ModelParts, Result, RopeScaling,
};

pub(crate) fn load(
    config_path: &Path,
    weights: &[&Path],
    device: &Device,
    dtype: DType,
) -> Result<LlamaModel> {
    let config = read_config(config_path)?;
    let shards = Shards::open(weights)?;
    let parts = shards.parts(&config, device, dtype)?;
    LlamaModel::from_parts(config, dtype, device, parts)
}

/// The `config.json` fields a llama needs; unknown fields are ignored.
#[derive(Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    vocab_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f32>,
    rope_scaling: Option<Json>,
    /// transformers ≥ 5 moves `rope_theta` and the scaling into one object.
    rope_parameters: Option<Json>,
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
}

fn read_config(path: &Path) -> Result<LlamaConfig> {
    let bad = |key: &str, reason: String| ModelError::BadConfig {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let hf: HfConfig =
        serde_json::from_str(&text).map_err(|e| bad("config.json", e.to_string()))?;
    let is_llama = match &hf.architectures {
        Some(archs) => archs.iter().any(|a| a == "LlamaForCausalLM"),
        None => hf.model_type.as_deref() == Some("llama"),
    };
    if !is_llama {
        let found = match (&hf.architectures, &hf.model_type) {
            (Some(archs), _) => archs.join(", "),
            (None, Some(t)) => format!("model_type {t}"),
            (None, None) => "none declared".into(),
        };
        return Err(ModelError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            found,
            expected: "LlamaForCausalLM",
        });
    }
    if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
        return Err(bad(
            "hidden_act",
            format!("'{act}' is not supported (silu)"),
        ));
    }
    if hf.attention_bias || hf.mlp_bias {
        return Err(bad(
            "attention_bias",
            "biased projections are not supported".into(),
        ));
    }
    let params = hf.rope_parameters.as_ref();
    let rope_theta = hf
        .rope_theta
        .or_else(|| params?.get("rope_theta")?.as_f64().map(|t| t as f32))
        .unwrap_or(10_000.0);
    let scaling = hf.rope_scaling.as_ref().or(params);
    let rope_scaling = parse_rope_scaling(scaling).map_err(|reason| bad("rope_scaling", reason))?;
    let config = LlamaConfig {
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        intermediate_size: hf.intermediate_size,
        num_layers: hf.num_hidden_layers,
        num_heads: hf.num_attention_heads,
        num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
        head_dim: hf
            .head_dim
            .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
        rms_norm_eps: hf.rms_norm_eps as f32,
        rope_theta,
        rope_scaling,
        rope_style: RopeStyle::Neox,
        max_position_embeddings: hf.max_position_embeddings,
        tie_word_embeddings: hf.tie_word_embeddings,
    };
    config
        .validate()
        .map_err(|reason| bad("config.json", reason))?;
    Ok(config)
}

/// `rope_scaling` (or `rope_parameters`): absent / `default` / `llama3` / `linear`.
fn parse_rope_scaling(value: Option<&Json>) -> Result<RopeScaling, String> {
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
        other => Err(format!(
            "rope type '{other}' is not supported (default, linear, llama3)"
        )),
    }
}

/// Every shard, memory-mapped, with the shard that holds each tensor name.
struct Shards {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    owner: HashMap<String, usize>,
}

impl Shards {
    fn open(paths: &[&Path]) -> Result<Shards> {
        let mut files = Vec::with_capacity(paths.len());
        let mut owner = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            // SAFETY: the mapping is read-only; like every mmap loader we rely on nobody
            // truncating the weight files while the model loads.
            let mapped = unsafe { MmapedSafetensors::new(path) }.map_err(|e| {
                ModelError::BadSafetensors {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            })?;
            for (name, _) in mapped.tensors() {
                owner.insert(name, index);
            }
            files.push((path.to_path_buf(), mapped));
        }
        if let Some(first) = paths.first() {
            check_index(first.parent().unwrap_or(Path::new(".")), paths)?;
        }
        Ok(Shards { files, owner })
    }

    /// Tensor `name`, checked to be `dims` and a float type, as `dtype` on `device`.
    fn get(&self, name: &str, dims: &[usize], device: &Device, dtype: DType) -> Result<Tensor> {
        let Some(&index) = self.owner.get(name) else {
            let path = self
                .files
                .first()
                .map(|(p, _)| p.clone())
                .unwrap_or_default();
            return Err(ModelError::MissingTensor {
                path,
                name: name.to_string(),
            });
        };
        let (path, mapped) = &self.files[index];
        let view = mapped.get(name).map_err(|e| ModelError::BadSafetensors {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        // Via candle's own conversion: candle reads with its own safetensors version.
        let stored = DType::try_from(view.dtype());
        if !matches!(stored, Ok(DType::F32 | DType::F16 | DType::BF16)) {
            return Err(ModelError::UnsupportedTensorDType {
                path: path.clone(),
                name: name.to_string(),
                found: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != dims {
            return Err(ModelError::TensorShape {
                path: path.clone(),
                name: name.to_string(),
                found: view.shape().to_vec(),
                expected: dims.to_vec(),
            });
        }
        let tensor = mapped
            .load(name, device)
            .map_err(|e| ModelError::BadSafetensors {
                path: path.clone(),
                reason: format!("tensor '{name}': {e}"),
            })?;
        Ok(tensor.to_dtype(dtype)?)
    }

    fn parts(&self, c: &LlamaConfig, device: &Device, dtype: DType) -> Result<ModelParts> {
        let (h, q, kv, ff) = (c.hidden_size, c.q_size(), c.kv_size(), c.intermediate_size);
        let get = |name: &str, dims: &[usize]| self.get(name, dims, device, dtype);
        let embed = get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        // Some exports that tie the head still ship a copy of it; the config decides.
        let lm_head = if c.tie_word_embeddings {
            Linear::Dense(embed.clone())
        } else {
            Linear::Dense(get("lm_head.weight", &[c.vocab_size, h])?)
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let name = |suffix: &str| format!("model.layers.{i}.{suffix}.weight");
            let wq = get(&name("self_attn.q_proj"), &[q, h])?;
            let wk = get(&name("self_attn.k_proj"), &[kv, h])?;
            let wv = get(&name("self_attn.v_proj"), &[kv, h])?;
            let wg = get(&name("mlp.gate_proj"), &[ff, h])?;
            let wu = get(&name("mlp.up_proj"), &[ff, h])?;
            layers.push(LayerWeights {
                attn_norm: get(&name("input_layernorm"), &[h])?,
                qkv: SplitLinear::new(vec![(
                    Linear::Dense(Tensor::cat(&[wq, wk, wv], 0)?),
                    vec![q, kv, kv],
                )])?,
                o_proj: Linear::Dense(get(&name("self_attn.o_proj"), &[h, q])?),
                mlp_norm: get(&name("post_attention_layernorm"), &[h])?,
                gate_up: SplitLinear::new(vec![(
                    Linear::Dense(Tensor::cat(&[wg, wu], 0)?),
                    vec![ff, ff],
                )])?,
                down: Linear::Dense(get(&name("mlp.down_proj"), &[h, ff])?),
            });
        }
        Ok(ModelParts {
            embed: Embedding::Dense(embed),
            layers,
            final_norm: get("model.norm.weight", &[h])?,
            lm_head,
        })
    }
}

/// With a `model.safetensors.index.json` beside the shards, every shard it names must be there.
fn check_index(dir: &Path, paths: &[&Path]) -> Result<()> {
    let index_path = dir.join("model.safetensors.index.json");
    let Ok(text) = std::fs::read_to_string(&index_path) else {
        return Ok(());
    };
    let bad = |reason: String| ModelError::BadSafetensors {
        path: index_path.clone(),
        reason,
    };
    let index: Json = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let Some(map) = index.get("weight_map").and_then(Json::as_object) else {
        return Err(bad("no weight_map object".into()));
    };
    for shard in map.values().filter_map(Json::as_str) {
        if !paths
            .iter()
            .any(|p| p.file_name().is_some_and(|f| f == shard))
        {
            return Err(bad(format!("shard '{shard}' is listed but missing")));
        }
    }
    Ok(())
}

impl LlamaConfig {
    /// Reads a Hugging Face `config.json` (only `LlamaForCausalLM` is accepted).
    pub fn from_hf_config(path: &Path) -> Result<LlamaConfig> {
        read_config(path)
    }
}
