//! Loading Hugging Face checkpoints of every supported family: `config.json` (read by
//! `hf_config`) plus one or more `*.safetensors` shards (f32, f16 or bf16) under transformers'
//! tensor names, converted to the activation dtype on the device.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

use crate::model::arch::Family;
use crate::model::hf_config::read_config;
use crate::model::linear::{Embedding, Linear, SplitLinear};
use crate::model::moe::{Experts, FeedForward, GatedMlp, MoeBlock};
use crate::model::{
    DecoderModel, LayerWeights, ModelConfig, ModelError, ModelParts, MoeConfig, Result,
};

pub(crate) fn load(
    config_path: &Path,
    weights: &[&Path],
    device: &Device,
    dtype: DType,
) -> Result<DecoderModel> {
    let config = read_config(config_path)?;
    let shards = Shards::open(weights)?;
    let parts = shards.parts(&config, device, dtype)?;
    DecoderModel::from_parts(config, dtype, device, parts)
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

    /// transformers' names for every family: Llama's, plus Qwen2's biases, Qwen3's and
    /// Gemma 3's q/k norms, Gemma's sandwich norms (where `post_attention_layernorm` is the
    /// norm *after* attention and `pre_feedforward_layernorm` the one before the MLP), and
    /// Phi-3's fused `qkv_proj` / `gate_up_proj`.
    fn parts(&self, c: &ModelConfig, device: &Device, dtype: DType) -> Result<ModelParts> {
        let (h, q, kv, ff) = (c.hidden_size, c.q_size(), c.kv_size(), c.intermediate_size);
        let arch = &c.arch;
        let family = c.family();
        let get = |name: &str, dims: &[usize]| self.get(name, dims, device, dtype);
        // Gemma's `(1 + w)`, added in f32 before the cast, as transformers computes it.
        let offset = family.hf_norm_offset();
        let norm = |name: &str, size: usize| -> Result<Tensor> {
            let w = self.get(name, &[size], device, DType::F32)?;
            let w = if offset != 0.0 {
                (w + offset as f64)?
            } else {
                w
            };
            Ok(w.to_dtype(dtype)?)
        };
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
            let bias =
                |part: &str, size| get(&format!("model.layers.{i}.self_attn.{part}.bias"), &[size]);
            let wqkv = if family.fused_projections() {
                get(&name("self_attn.qkv_proj"), &[q + 2 * kv, h])?
            } else {
                let wq = get(&name("self_attn.q_proj"), &[q, h])?;
                let wk = get(&name("self_attn.k_proj"), &[kv, h])?;
                let wv = get(&name("self_attn.v_proj"), &[kv, h])?;
                Tensor::cat(&[wq, wk, wv], 0)?
            };
            let ffn = match &c.moe {
                Some(moe) if moe.is_sparse(i) => FeedForward::Experts(self.experts(
                    c,
                    moe,
                    &format!("model.layers.{i}"),
                    device,
                    dtype,
                )?),
                _ => {
                    let gate_up = if family.fused_projections() {
                        get(&name("mlp.gate_up_proj"), &[2 * ff, h])?
                    } else {
                        let wg = get(&name("mlp.gate_proj"), &[ff, h])?;
                        let wu = get(&name("mlp.up_proj"), &[ff, h])?;
                        Tensor::cat(&[wg, wu], 0)?
                    };
                    FeedForward::Dense(dense_mlp(gate_up, get(&name("mlp.down_proj"), &[h, ff])?)?)
                }
            };
            let qkv_bias = if arch.qkv_bias {
                Some([bias("q_proj", q)?, bias("k_proj", kv)?, bias("v_proj", kv)?])
            } else {
                None
            };
            let qk_norm = if arch.qk_norm {
                Some([
                    norm(&name("self_attn.q_norm"), c.head_dim)?,
                    norm(&name("self_attn.k_norm"), c.head_dim)?,
                ])
            } else {
                None
            };
            let (post_attn_norm, mlp_norm, post_mlp_norm) = if arch.sandwich_norms {
                (
                    Some(norm(&name("post_attention_layernorm"), h)?),
                    norm(&name("pre_feedforward_layernorm"), h)?,
                    Some(norm(&name("post_feedforward_layernorm"), h)?),
                )
            } else {
                (None, norm(&name("post_attention_layernorm"), h)?, None)
            };
            layers.push(LayerWeights {
                attn_norm: norm(&name("input_layernorm"), h)?,
                qkv: SplitLinear::new(vec![(Linear::Dense(wqkv), vec![q, kv, kv])])?,
                qkv_bias,
                qk_norm,
                o_proj: Linear::Dense(get(&name("self_attn.o_proj"), &[h, q])?),
                post_attn_norm,
                mlp_norm,
                ffn,
                post_mlp_norm,
            });
        }
        Ok(ModelParts {
            embed: Embedding::Dense(embed),
            layers,
            final_norm: norm("model.norm.weight", h)?,
            lm_head,
        })
    }
}

/// A gated MLP from its stacked `[2·ff, in]` gate/up and `[out, ff]` down matrices.
fn dense_mlp(gate_up: Tensor, down: Tensor) -> Result<GatedMlp> {
    let ff = down.dim(1)?;
    Ok(GatedMlp {
        gate_up: SplitLinear::new(vec![(Linear::Dense(gate_up), vec![ff, ff])])?,
        down: Linear::Dense(down),
    })
}

/// transformers' (and the checkpoints') names of one sparse layer's parts under
/// `model.layers.N.`: the block, and each expert's gate, up and down projections.
struct ExpertNames {
    block: &'static str,
    gate: &'static str,
    up: &'static str,
    down: &'static str,
}

fn expert_names(family: Family) -> ExpertNames {
    match family {
        Family::Mixtral => ExpertNames {
            block: "block_sparse_moe",
            gate: "w1",
            up: "w3",
            down: "w2",
        },
        _ => ExpertNames {
            block: "mlp",
            gate: "gate_proj",
            up: "up_proj",
            down: "down_proj",
        },
    }
}

impl Shards {
    /// One sparse layer under `layer` (`model.layers.N`): the router `gate` and every expert.
    fn experts(
        &self,
        c: &ModelConfig,
        moe: &MoeConfig,
        layer: &str,
        device: &Device,
        dtype: DType,
    ) -> Result<MoeBlock> {
        let (h, ff) = (c.hidden_size, moe.expert_intermediate_size);
        let names = expert_names(c.family());
        let block = format!("{layer}.{}", names.block);
        let get = |name: String, dims: &[usize]| self.get(&name, dims, device, dtype);
        let router = get(format!("{block}.gate.weight"), &[moe.num_experts, h])?;
        let mut experts = Vec::with_capacity(moe.num_experts);
        for e in 0..moe.num_experts {
            let part = |p: &str| format!("{block}.experts.{e}.{p}.weight");
            let gate = get(part(names.gate), &[ff, h])?;
            let up = get(part(names.up), &[ff, h])?;
            let down = get(part(names.down), &[h, ff])?;
            experts.push(dense_mlp(Tensor::cat(&[gate, up], 0)?, down)?);
        }
        Ok(MoeBlock {
            router: Linear::Dense(router),
            experts: Experts::for_device(experts, device)?,
            experts_per_token: moe.experts_per_token,
            renormalize: moe.renormalize,
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
