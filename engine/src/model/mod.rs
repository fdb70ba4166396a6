//! Decoder-only transformers of every supported family (Llama, Mistral, Qwen2/2.5, Qwen3,
//! Gemma 2/3, Phi-3/4): loading from GGUF, Hugging Face safetensors directories or a synthetic
//! preset, and one forward pass over a flat varlen batch with a paged KV cache.
//!
//! | file | what lives there |
//! | --- | --- |
//! | `arch` | [`Family`] (the registry of architecture names) and [`ArchSpec`]: how a family differs from Llama, as flags |
//! | `config` | [`ModelConfig`]: shapes and constants, whatever the source |
//! | `family/` | one file per family: its `config.json` and GGUF metadata mapped onto [`ModelConfig`] |
//! | `hf_config` | reading `config.json`: the fields every family shares, then the family's mapping |
//! | `gguf_header` | reading a GGUF header safely ([`DecoderModel::read_gguf_header`]) |
//! | `gguf` | GGUF weights (kept quantized) under llama.cpp's tensor names |
//! | `safetensors` | `*.safetensors` shards (f32/f16/bf16) under transformers' tensor names |
//! | `synthetic` | `synthetic:NAME` presets with seeded random weights, built on the device |
//! | [`fixture`] | writes a tiny random `LlamaForCausalLM` directory for tests |
//! | `batch` | [`ForwardBatch`], [`SequenceChunk`]: one step's flat batch |
//! | `forward` | [`DecoderModel::forward`] |
//! | `linear`, `rope` | quantized/dense projections; RoPE frequencies and tables |
//! | `moe` | the feed-forward block: dense gated MLP or mixture of experts (router, grouped experts) |
//! | `error` | [`ModelError`] |
//!
//! ## Adding a family
//! 1. A variant in [`Family`] with its HF and GGUF names (`arch.rs`).
//! 2. A file in `family/` that maps its `config.json` fields and GGUF keys onto
//!    [`ModelConfig`] and [`ArchSpec`] flags, and a line in `family/mod.rs` dispatching to it.
//! 3. Only if the family needs something no flag expresses: a new flag in [`ArchSpec`], its
//!    handling in `forward.rs` and the loaders, and, for a new operation, a kernel in
//!    `metrum-kernels` with its CPU reference. A graph that is not a pre-norm decoder (MoE,
//!    hybrid attention) gets its own model type instead of more flags.
//! 4. A tiny transformers-built fixture in `engine/tests/fixtures/families/` (see
//!    `scripts/make_family_fixtures.py`) and its entry in `engine/tests/families.rs`.

mod arch;
mod batch;
mod config;
mod error;
mod family;
pub mod fixture;
mod forward;
mod gguf;
mod gguf_header;
mod hf_config;
mod linear;
mod moe;
mod rope;
mod safetensors;
mod synthetic;

pub use arch::{Activation, ArchSpec, Family};
pub use batch::{ForwardBatch, SequenceChunk};
pub use config::ModelConfig;
pub use error::{ModelError, Result};
pub use moe::MoeConfig;
pub use rope::{RopeScaling, inverse_frequencies};
pub use synthetic::{SYNTHETIC_MODELS, synthetic_config};

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::kv_cache::KvCacheLayout;
use crate::source::ModelFiles;
use linear::{Embedding, Linear, SplitLinear};
use moe::FeedForward;

/// Weights of one decoder layer. The optional parts are there exactly when the config's
/// [`ArchSpec`] flag asks for them (the loaders guarantee it).
#[derive(Debug)]
pub(crate) struct LayerWeights {
    pub attn_norm: Tensor,
    /// q, k, v.
    pub qkv: SplitLinear<3>,
    /// Biases of q, k, v (`qkv_bias`).
    pub qkv_bias: Option<[Tensor; 3]>,
    /// Per-head RMSNorm weights of q and k (`qk_norm`).
    pub qk_norm: Option<[Tensor; 2]>,
    pub o_proj: Linear,
    /// Norm of the attention output before the residual add (`sandwich_norms`).
    pub post_attn_norm: Option<Tensor>,
    /// The norm before the MLP.
    pub mlp_norm: Tensor,
    /// The dense MLP, or the experts where [`ModelConfig::moe`] makes the layer sparse.
    pub ffn: FeedForward,
    /// Norm of the MLP output before the residual add (`sandwich_norms`).
    pub post_mlp_norm: Option<Tensor>,
}

/// RoPE cos/sin tables `[positions, rotary_dim / 2]`.
#[derive(Debug)]
pub(crate) struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

/// A loaded decoder model of any supported family on one device, ready to run
/// [`DecoderModel::forward`].
#[derive(Debug)]
pub struct DecoderModel {
    config: ModelConfig,
    /// Activation (and KV cache) dtype.
    dtype: DType,
    device: Device,
    embed: Embedding,
    layers: Vec<LayerWeights>,
    final_norm: Tensor,
    lm_head: Linear,
    rope: RopeTables,
    /// Gemma 3's table for sliding-window layers (`rope_local_theta`).
    rope_local: Option<RopeTables>,
}

impl DecoderModel {
    /// Loads a resolved model (see [`crate::source::resolve_model`]) onto `device`, computing
    /// in `dtype` (see [`resolve_dtype`]). GGUF weights stay quantized whatever `dtype` is;
    /// synthetic models use seed 0 (see [`DecoderModel::synthetic`] to choose one).
    pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> Result<DecoderModel> {
        match files {
            ModelFiles::Gguf { path, .. } => DecoderModel::load_gguf(path, device, dtype),
            ModelFiles::SafetensorsDir {
                config, weights, ..
            } => DecoderModel::load_safetensors(config, weights, device, dtype),
            ModelFiles::Synthetic { name } => DecoderModel::synthetic(name, device, dtype, 0),
        }
    }

    /// A GGUF file of any supported family (quantized or not).
    pub fn load_gguf(path: &Path, device: &Device, dtype: DType) -> Result<DecoderModel> {
        check_dtype(dtype)?;
        gguf::load(path, device, dtype)
    }

    /// A Hugging Face `config.json` of any supported family and its safetensors shards (any order).
    pub fn load_safetensors(
        config: &Path,
        weights: &[impl AsRef<Path>],
        device: &Device,
        dtype: DType,
    ) -> Result<DecoderModel> {
        check_dtype(dtype)?;
        let weights: Vec<&Path> = weights.iter().map(AsRef::as_ref).collect();
        safetensors::load(config, &weights, device, dtype)
    }

    /// A preset from [`SYNTHETIC_MODELS`] with random weights drawn from `seed`.
    pub fn synthetic(name: &str, device: &Device, dtype: DType, seed: u64) -> Result<DecoderModel> {
        check_dtype(dtype)?;
        synthetic::build(name, device, dtype, seed)
    }

    pub fn config(&self) -> &ModelConfig {
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
        self.rope.cos.dims()[0]
    }

    /// The KV cache shape this model needs at `block_size`, stored in the activation dtype
    /// (exact: what references and tests compare against).
    pub fn kv_cache_layout(&self, block_size: usize) -> KvCacheLayout {
        self.kv_cache_layout_in(block_size, self.dtype)
    }

    /// The KV cache shape this model needs at `block_size`, stored as `kv_dtype` (see
    /// [`crate::kv_cache::resolve_kv_dtype`]).
    pub fn kv_cache_layout_in(&self, block_size: usize, kv_dtype: DType) -> KvCacheLayout {
        KvCacheLayout {
            num_layers: self.config.num_layers,
            block_size,
            num_kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
            dtype: kv_dtype,
        }
    }

    /// Assembles a model from loaded weights; builds the RoPE tables.
    pub(crate) fn from_parts(
        config: ModelConfig,
        dtype: DType,
        device: &Device,
        parts: ModelParts,
    ) -> Result<DecoderModel> {
        let mut config = config;
        // A window that covers the whole context is full attention (Phi-3.5-mini declares
        // 262144 over 131072 positions): the same result, without the window bookkeeping.
        for window in &mut config.layer_windows {
            if window.is_some_and(|w| w >= config.max_position_embeddings) {
                *window = None;
            }
        }
        let positions = config.max_position_embeddings;
        let rotary = config.rotary_dim();
        let tables = |theta: f32, scaling: &RopeScaling| -> Result<RopeTables> {
            let inv_freq = inverse_frequencies(rotary, theta, scaling, positions);
            let (cos, sin) =
                rope::rope_tables(&inv_freq, positions, scaling.table_scale(), device)?;
            Ok(RopeTables { cos, sin })
        };
        let rope = tables(config.rope_theta, &config.rope_scaling)?;
        let rope_local = match config.rope_local_theta {
            Some(theta) => Some(tables(theta, &RopeScaling::None)?),
            None => None,
        };
        check_parts(&config, &parts)?;
        Ok(DecoderModel {
            config,
            dtype,
            device: device.clone(),
            embed: parts.embed,
            layers: parts.layers,
            final_norm: parts.final_norm,
            lm_head: parts.lm_head,
            rope,
            rope_local,
        })
    }
}

/// The loaders' promise that optional weights match the flags, checked once so the forward
/// can rely on it (a mismatch is a bug in a loader, reported instead of silently skipping).
fn check_parts(config: &ModelConfig, parts: &ModelParts) -> Result<()> {
    let arch = &config.arch;
    for (i, layer) in parts.layers.iter().enumerate() {
        let ok = layer.qkv_bias.is_some() == arch.qkv_bias
            && layer.qk_norm.is_some() == arch.qk_norm
            && layer.post_attn_norm.is_some() == arch.sandwich_norms
            && layer.post_mlp_norm.is_some() == arch.sandwich_norms
            && matches!(layer.ffn, FeedForward::Experts(_))
                == config.moe.as_ref().is_some_and(|m| m.is_sparse(i));
        if !ok {
            return Err(ModelError::Assembly(format!(
                "layer {i}'s weights do not match the {} architecture flags",
                arch.family
            )));
        }
    }
    if parts.layers.len() != config.num_layers {
        return Err(ModelError::Assembly(format!(
            "{} layers loaded for a config of {}",
            parts.layers.len(),
            config.num_layers
        )));
    }
    Ok(())
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
