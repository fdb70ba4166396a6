//! `synthetic:NAME` models: published shapes (Llama, Qwen2.5, Gemma 2) with seeded random
//! weights, built straight on the device, for tests and for benchmarking without downloading
//! weights. `NAME-as-llama` presets keep a family's shapes but drop its differences, so the
//! cost of those differences can be measured against a Llama of exactly equal size. Real presets keep
//! their real vocabulary size so the LM head costs what it really costs; the byte-level
//! tokenizer of synthetic models only ever produces the first 256 ids. `qwen3-30b-a3b` and
//! `tiny-moe` are mixtures of experts (Qwen3-MoE layers: q/k norms, every layer sparse), for
//! the MoE decode timings of `metrum gpu-check --moe` (the first is 30.5 B parameters: a GPU's).

use candle_core::{DType, Device, Tensor};
use metrum_kernels::RopeStyle;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::model::arch::{Activation, ArchSpec, Family};
use crate::model::linear::{Embedding, Linear, SplitLinear};
use crate::model::moe::{Experts, FeedForward, GatedMlp, MoeBlock, MoeConfig};
use crate::model::{
    DecoderModel, LayerWeights, ModelConfig, ModelError, ModelParts, Result, RopeScaling,
};

/// Every name `synthetic:NAME` accepts.
pub const SYNTHETIC_MODELS: &[&str] = &[
    "tiny",
    "smollm2-135m",
    "llama-3.2-1b",
    "llama-3.2-3b",
    "llama-3.1-8b",
    "qwen2.5-0.5b",
    "qwen2.5-0.5b-as-llama",
    "gemma-2-2b",
    "gemma-2-2b-as-llama",
    "qwen3-30b-a3b",
    "tiny-moe",
];

/// Standard deviation of every random projection and embedding (the usual llama init).
const INIT_STD: f32 = 0.02;

/// The shapes of preset `name` (see [`SYNTHETIC_MODELS`]; `tiny-llama` is accepted for `tiny`).
pub fn synthetic_config(name: &str) -> Result<ModelConfig> {
    let llama3 = |factor| RopeScaling::Llama3 {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let base = ModelConfig {
        vocab_size: 128_256,
        hidden_size: 0,
        intermediate_size: 0,
        num_layers: 0,
        num_heads: 0,
        num_kv_heads: 8,
        head_dim: 128,
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_scaling: RopeScaling::None,
        rope_style: RopeStyle::Neox,
        max_position_embeddings: 131_072,
        tie_word_embeddings: true,
        arch: ArchSpec::llama(),
        rotary_dim: None,
        rope_local_theta: None,
        layer_windows: Vec::new(),
        attn_scale: None,
        moe: None,
    };
    let qwen2_5_0_5b = ModelConfig {
        vocab_size: 151_936,
        hidden_size: 896,
        intermediate_size: 4864,
        num_layers: 24,
        num_heads: 14,
        num_kv_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        max_position_embeddings: 32_768,
        ..base.clone()
    };
    let gemma_2_2b = ModelConfig {
        vocab_size: 256_000,
        hidden_size: 2304,
        intermediate_size: 9216,
        num_layers: 26,
        num_heads: 8,
        num_kv_heads: 4,
        head_dim: 256,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        max_position_embeddings: 8192,
        ..base.clone()
    };
    // Head dim 64: the smallest the CUDA attention kernel takes.
    let tiny = ModelConfig {
        vocab_size: 256,
        hidden_size: 256,
        intermediate_size: 512,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        rope_theta: 10_000.0,
        max_position_embeddings: 4096,
        tie_word_embeddings: false,
        ..base.clone()
    };
    let config = match name {
        "tiny" | "tiny-llama" => tiny,
        "smollm2-135m" => ModelConfig {
            vocab_size: 49_152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            rope_theta: 100_000.0,
            max_position_embeddings: 8192,
            ..base
        },
        "llama-3.2-1b" => ModelConfig {
            hidden_size: 2048,
            intermediate_size: 8192,
            num_layers: 16,
            num_heads: 32,
            head_dim: 64,
            rope_scaling: llama3(32.0),
            ..base
        },
        "llama-3.2-3b" => ModelConfig {
            hidden_size: 3072,
            intermediate_size: 8192,
            num_layers: 28,
            num_heads: 24,
            rope_scaling: llama3(32.0),
            ..base
        },
        "llama-3.1-8b" => ModelConfig {
            hidden_size: 4096,
            intermediate_size: 14_336,
            num_layers: 32,
            num_heads: 32,
            rope_scaling: llama3(8.0),
            tie_word_embeddings: false,
            ..base
        },
        "qwen2.5-0.5b" => ModelConfig {
            arch: ArchSpec {
                family: Family::Qwen2,
                qkv_bias: true,
                ..ArchSpec::llama()
            },
            ..qwen2_5_0_5b
        },
        "qwen2.5-0.5b-as-llama" => qwen2_5_0_5b,
        "gemma-2-2b" => ModelConfig {
            arch: ArchSpec {
                family: Family::Gemma2,
                sandwich_norms: true,
                activation: Activation::GeluTanhMul,
                scale_embeddings: true,
                attn_soft_cap: Some(50.0),
                final_soft_cap: Some(30.0),
                ..ArchSpec::llama()
            },
            layer_windows: crate::model::family::periodic_windows(26, 4096, 2),
            attn_scale: Some(1.0 / 16.0),
            ..gemma_2_2b
        },
        "gemma-2-2b-as-llama" => gemma_2_2b,
        // Qwen/Qwen3-30B-A3B's config.json: 128 experts of width 768, top 8, renormalised.
        "qwen3-30b-a3b" => ModelConfig {
            vocab_size: 151_936,
            hidden_size: 2048,
            intermediate_size: 6144,
            num_layers: 48,
            num_heads: 32,
            num_kv_heads: 4,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            max_position_embeddings: 40_960,
            tie_word_embeddings: false,
            arch: qwen3_moe_arch(),
            moe: Some(MoeConfig {
                num_experts: 128,
                experts_per_token: 8,
                expert_intermediate_size: 768,
                renormalize: true,
                dense_layers: Vec::new(),
            }),
            ..base
        },
        // The same layer kind at "tiny"'s size (a CPU dry run of the MoE timings).
        "tiny-moe" => ModelConfig {
            arch: qwen3_moe_arch(),
            moe: Some(MoeConfig {
                num_experts: 16,
                experts_per_token: 4,
                expert_intermediate_size: 96,
                renormalize: true,
                dense_layers: Vec::new(),
            }),
            ..tiny
        },
        _ => {
            return Err(ModelError::UnknownSynthetic {
                name: name.to_string(),
            });
        }
    };
    Ok(config)
}

fn qwen3_moe_arch() -> ArchSpec {
    ArchSpec {
        family: Family::Qwen3Moe,
        qk_norm: true,
        ..ArchSpec::llama()
    }
}

pub(crate) fn build(name: &str, device: &Device, dtype: DType, seed: u64) -> Result<DecoderModel> {
    let config = synthetic_config(name)?;
    let approx_params = config.num_parameters();
    let mut rng = RandomWeights::new(seed, device, approx_params <= HOST_DRAWN_MAX_PARAMS)?;
    let (h, q, kv, ff) = (
        config.hidden_size,
        config.q_size(),
        config.kv_size(),
        config.intermediate_size,
    );
    // Output projections shrink with depth (GPT-2's init) so the residual stream stays O(1)
    // and f16 activations stay finite even over 32 layers.
    let out_std = INIT_STD / (2.0 * config.num_layers as f32).sqrt();
    let ones = Tensor::ones(h, dtype, device)?;
    let embed = rng.normal(&[config.vocab_size, h], INIT_STD, dtype)?;
    let lm_head = if config.tie_word_embeddings {
        embed.clone()
    } else {
        rng.normal(&[config.vocab_size, h], INIT_STD, dtype)?
    };
    let arch = config.arch.clone();
    let head_ones = Tensor::ones(config.head_dim, dtype, device)?;
    let mut layers = Vec::with_capacity(config.num_layers);
    for _ in 0..config.num_layers {
        let qkv_bias = if arch.qkv_bias {
            Some([
                rng.normal(&[q], INIT_STD, dtype)?,
                rng.normal(&[kv], INIT_STD, dtype)?,
                rng.normal(&[kv], INIT_STD, dtype)?,
            ])
        } else {
            None
        };
        let sandwich = arch.sandwich_norms.then(|| ones.clone());
        layers.push(LayerWeights {
            qkv_bias,
            qk_norm: arch.qk_norm.then(|| [head_ones.clone(), head_ones.clone()]),
            post_attn_norm: sandwich.clone(),
            post_mlp_norm: sandwich,
            attn_norm: ones.clone(),
            qkv: SplitLinear::new(vec![(
                Linear::Dense(rng.normal(&[q + 2 * kv, h], INIT_STD, dtype)?),
                vec![q, kv, kv],
            )])?,
            o_proj: Linear::Dense(rng.normal(&[h, q], out_std, dtype)?),
            mlp_norm: ones.clone(),
            ffn: match &config.moe {
                None => FeedForward::Dense(random_mlp(&mut rng, h, ff, out_std, dtype)?),
                Some(moe) => {
                    let width = moe.expert_intermediate_size;
                    let experts = (0..moe.num_experts)
                        .map(|_| random_mlp(&mut rng, h, width, out_std, dtype))
                        .collect::<Result<Vec<_>>>()?;
                    FeedForward::Experts(MoeBlock {
                        // Router logits of order 1, so tokens spread over the experts.
                        router: Linear::Dense(rng.normal(
                            &[moe.num_experts, h],
                            1.0 / (h as f32).sqrt(),
                            dtype,
                        )?),
                        experts: Experts::for_device(experts, device)?,
                        experts_per_token: moe.experts_per_token,
                        renormalize: moe.renormalize,
                    })
                }
            },
        });
    }
    let parts = ModelParts {
        embed: Embedding::Dense(embed),
        layers,
        final_norm: ones,
        lm_head: Linear::Dense(lm_head),
    };
    DecoderModel::from_parts(config, dtype, device, parts)
}

/// A random gated MLP `hidden -> width -> hidden`.
fn random_mlp(
    rng: &mut RandomWeights,
    hidden: usize,
    width: usize,
    out_std: f32,
    dtype: DType,
) -> Result<GatedMlp> {
    Ok(GatedMlp {
        gate_up: SplitLinear::new(vec![(
            Linear::Dense(rng.normal(&[2 * width, hidden], INIT_STD, dtype)?),
            vec![width, width],
        )])?,
        down: Linear::Dense(rng.normal(&[hidden, width], out_std, dtype)?),
    })
}

/// Seeded normal tensors. On CPU each 64K-element chunk has its own generator seeded from
/// (seed, tensor, chunk), so the values do not depend on the thread count. Models up to
/// [`HOST_DRAWN_MAX_PARAMS`] are drawn on the host on every device, so the CPU and a GPU hold the
/// same weights for the same seed (`metrum gpu-check` compares their logits); bigger ones are
/// drawn by the GPU's own generator (seeded once), which skips a multi-GB host round trip but
/// gives other values than the CPU.
pub(crate) struct RandomWeights {
    seed: u64,
    tensors_drawn: u64,
    device: Device,
    on_host: bool,
}

/// The largest synthetic model (parameters) whose weights are drawn on the host on a GPU too.
pub(crate) const HOST_DRAWN_MAX_PARAMS: usize = 2_000_000_000;

const CHUNK: usize = 1 << 16;

impl RandomWeights {
    pub fn new(seed: u64, device: &Device, on_host: bool) -> Result<RandomWeights> {
        let on_host = on_host || device.is_cpu();
        if !on_host {
            device.set_seed(seed)?;
        }
        Ok(RandomWeights {
            seed,
            tensors_drawn: 0,
            device: device.clone(),
            on_host,
        })
    }

    /// `N(0, std²)` of shape `dims` in `dtype`.
    pub fn normal(&mut self, dims: &[usize], std: f32, dtype: DType) -> Result<Tensor> {
        let tensor_index = self.tensors_drawn;
        self.tensors_drawn += 1;
        if !self.on_host {
            return Ok(Tensor::randn(0f32, std, dims, &self.device)?.to_dtype(dtype)?);
        }
        let count: usize = dims.iter().product();
        let mut data = vec![0f32; count];
        let tensor_seed = splitmix64(self.seed ^ splitmix64(tensor_index));
        data.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(chunk, out)| {
                let mut rng = StdRng::seed_from_u64(splitmix64(tensor_seed ^ chunk as u64));
                for v in out {
                    let z: f32 = rng.sample(StandardNormal);
                    *v = z * std;
                }
            });
        Ok(Tensor::from_vec(data, dims, &self.device)?.to_dtype(dtype)?)
    }
}

/// A strong 64-bit mix (SplitMix64's finalizer), so nearby seeds give unrelated streams.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
