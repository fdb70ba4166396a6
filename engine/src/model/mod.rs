//! Llama-family models: loading from GGUF, Hugging Face safetensors directories or a synthetic
//! preset, and the forward pass over a flat varlen batch with a paged KV cache.
//!
//! | file | what lives there |
//! | --- | --- |
//! | `config` | [`LlamaConfig`]: shapes and constants, whatever the source |
//! | `gguf` | GGUF (`general.architecture = llama`), weights kept quantized |
//! | `safetensors` | `config.json` + `*.safetensors` (`LlamaForCausalLM`), f32/f16/bf16 |
//! | `synthetic` | `synthetic:NAME` presets with seeded random weights, built on the device |
//! | [`fixture`] | writes a tiny random `LlamaForCausalLM` directory for tests |
//! | `batch` | [`ForwardBatch`], [`SequenceChunk`]: one step's flat batch |
//! | `forward` | [`LlamaModel::forward`] |
//! | `linear`, `rope` | quantized/dense projections; RoPE frequencies and tables |
//! | `error` | [`ModelError`] |

mod batch;
mod config;
mod error;
pub mod fixture;
mod forward;
mod gguf;
mod linear;
mod rope;
mod safetensors;
mod synthetic;

pub use batch::{ForwardBatch, SequenceChunk};
pub use config::LlamaConfig;
pub use error::{ModelError, Result};
pub use rope::{RopeScaling, inverse_frequencies};
pub use synthetic::{SYNTHETIC_MODELS, synthetic_config};

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::kv_cache::KvCacheLayout;
use crate::source::ModelFiles;
use linear::{Embedding, Linear, SplitLinear};

/// Weights of one decoder layer.
#[derive(Debug)]
pub(crate) struct LayerWeights {
    pub attn_norm: Tensor,
    /// q, k, v.
    pub qkv: SplitLinear<3>,
    pub o_proj: Linear,
    pub mlp_norm: Tensor,
    /// gate, up.
    pub gate_up: SplitLinear<2>,
    pub down: Linear,
}

/// A loaded llama-family model on one device, ready to run [`LlamaModel::forward`].
#[derive(Debug)]
pub struct LlamaModel {
    config: LlamaConfig,
    /// Activation (and KV cache) dtype.
    dtype: DType,
    device: Device,
    embed: Embedding,
    layers: Vec<LayerWeights>,
    final_norm: Tensor,
    lm_head: Linear,
    rope_cos: Tensor,
    rope_sin: Tensor,
}

impl LlamaModel {
    /// Loads a resolved model (see [`crate::source::resolve_model`]) onto `device`, computing
    /// in `dtype` (see [`resolve_dtype`]). GGUF weights stay quantized whatever `dtype` is;
    /// synthetic models use seed 0 (see [`LlamaModel::synthetic`] to choose one).
    pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> Result<LlamaModel> {
        match files {
            ModelFiles::Gguf { path, .. } => LlamaModel::load_gguf(path, device, dtype),
            ModelFiles::SafetensorsDir {
                config, weights, ..
            } => LlamaModel::load_safetensors(config, weights, device, dtype),
            ModelFiles::Synthetic { name } => LlamaModel::synthetic(name, device, dtype, 0),
        }
    }

    /// A llama GGUF file (quantized or not).
    pub fn load_gguf(path: &Path, device: &Device, dtype: DType) -> Result<LlamaModel> {
        check_dtype(dtype)?;
        gguf::load(path, device, dtype)
    }

    /// A `LlamaForCausalLM` `config.json` and its safetensors shards (any order).
    pub fn load_safetensors(
        config: &Path,
        weights: &[impl AsRef<Path>],
        device: &Device,
        dtype: DType,
    ) -> Result<LlamaModel> {
        check_dtype(dtype)?;
        let weights: Vec<&Path> = weights.iter().map(AsRef::as_ref).collect();
        safetensors::load(config, &weights, device, dtype)
    }

    /// A preset from [`SYNTHETIC_MODELS`] with random weights drawn from `seed`.
    pub fn synthetic(name: &str, device: &Device, dtype: DType, seed: u64) -> Result<LlamaModel> {
        check_dtype(dtype)?;
        synthetic::build(name, device, dtype, seed)
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Positions the RoPE tables cover: the longest sequence a forward accepts.
    pub fn max_positions(&self) -> usize {
        self.rope_cos.dims()[0]
    }

    /// The KV cache shape this model needs at `block_size` (its dtype is the model's).
    pub fn kv_cache_layout(&self, block_size: usize) -> KvCacheLayout {
        KvCacheLayout {
            num_layers: self.config.num_layers,
            block_size,
            num_kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
            dtype: self.dtype,
        }
    }

    /// Assembles a model from loaded weights; builds the RoPE tables.
    pub(crate) fn from_parts(
        config: LlamaConfig,
        dtype: DType,
        device: &Device,
        parts: ModelParts,
    ) -> Result<LlamaModel> {
        let inv_freq =
            inverse_frequencies(config.head_dim, config.rope_theta, &config.rope_scaling);
        let (rope_cos, rope_sin) =
            rope::rope_tables(&inv_freq, config.max_position_embeddings, device)?;
        Ok(LlamaModel {
            config,
            dtype,
            device: device.clone(),
            embed: parts.embed,
            layers: parts.layers,
            final_norm: parts.final_norm,
            lm_head: parts.lm_head,
            rope_cos,
            rope_sin,
        })
    }
}

/// What every loader produces besides the config.
pub(crate) struct ModelParts {
    pub embed: Embedding,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Tensor,
    pub lm_head: Linear,
}

/// Parses `--dtype`: `auto` is f32 on CPU and bf16 on GPUs; else `f32`, `f16` or `bf16`.
pub fn resolve_dtype(spec: &str, device: &Device) -> Result<DType> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "auto" if device.is_cpu() => Ok(DType::F32),
        "auto" => Ok(DType::BF16),
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(ModelError::UnsupportedDType(spec.to_string())),
    }
}

fn check_dtype(dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => Err(ModelError::UnsupportedDType(format!("{other:?}"))),
    }
}
