//! A tiny random `LlamaForCausalLM` written to disk exactly as Hugging Face lays it out
//! (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`), so tests
//! run the real loading path without downloading anything.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::json;
use tokenizers::AddedToken;

use crate::model::synthetic::RandomWeights;
use crate::model::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// The special tokens after the 256 byte tokens: ids 256, 257, 258.
pub const FIXTURE_SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// ChatML, as SmolLM2 uses, so `--chat` works on the fixture.
const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Variations of the fixture, for tests of the loader's less common paths.
#[derive(Clone, Debug)]
pub struct FixtureOptions {
    /// Storage dtype of the safetensors (f32, f16 or bf16).
    pub dtype: DType,
    pub tie_word_embeddings: bool,
    /// Adds `rope_scaling` of type `llama3` (factor 8, original context 256).
    pub llama3_rope_scaling: bool,
    /// Writes `rope_theta` inside transformers 5's `rope_parameters` instead of top level.
    pub rope_parameters_form: bool,
    /// Splits the weights over this many shards with a `model.safetensors.index.json` (≥ 1).
    pub shards: usize,
}

impl Default for FixtureOptions {
    fn default() -> Self {
        FixtureOptions {
            dtype: DType::F32,
            tie_word_embeddings: false,
            llama3_rope_scaling: false,
            rope_parameters_form: false,
            shards: 1,
        }
    }
}

/// Tiny shapes: 2 layers, hidden 256, 4 heads of 64 (GQA over 2 KV heads), MLP 512, and a
/// vocabulary of 256 bytes plus [`FIXTURE_SPECIAL_TOKENS`]. Head dim 64 because the CUDA
/// attention kernel supports 64, 128 and 256, so the fixture runs on every device.
pub const FIXTURE_HIDDEN: usize = 256;
pub const FIXTURE_LAYERS: usize = 2;
pub const FIXTURE_VOCAB: usize = 256 + FIXTURE_SPECIAL_TOKENS.len();
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const INTERMEDIATE: usize = 512;
const ROPE_THETA: f64 = 10_000.0;

/// Writes the default fixture (f32, untied, one shard) into `dir`; weights depend only on `seed`.
pub fn write_tiny_llama_fixture(dir: &Path, seed: u64) -> Result<()> {
    write_llama_fixture(dir, seed, &FixtureOptions::default())
}

/// Writes a fixture with `options` into `dir` (created if needed).
pub fn write_llama_fixture(dir: &Path, seed: u64, options: &FixtureOptions) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let write_json = |name: &str, value: serde_json::Value| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{value:#}\n")).map_err(io(&path))
    };
    write_json("config.json", config_json(options))?;
    write_json(
        "tokenizer_config.json",
        json!({
            "bos_token": FIXTURE_SPECIAL_TOKENS[1],
            "eos_token": FIXTURE_SPECIAL_TOKENS[2],
            "pad_token": FIXTURE_SPECIAL_TOKENS[2],
            "add_bos_token": false,
            "chat_template": CHAT_TEMPLATE,
        }),
    )?;
    write_tokenizer(&dir.join("tokenizer.json"))?;
    write_weights(dir, seed, options)
}

fn config_json(options: &FixtureOptions) -> serde_json::Value {
    let mut config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": FIXTURE_HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": FIXTURE_LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": FIXTURE_VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": options.tie_word_embeddings,
        "bos_token_id": 257,
        "eos_token_id": 258,
        "torch_dtype": format!("{:?}", options.dtype).to_lowercase(),
    });
    let scaling = json!({
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    });
    if options.rope_parameters_form {
        let mut params = if options.llama3_rope_scaling {
            scaling
        } else {
            json!({"rope_type": "default"})
        };
        params["rope_theta"] = json!(ROPE_THETA);
        config["rope_parameters"] = params;
    } else {
        config["rope_theta"] = json!(ROPE_THETA);
        if options.llama3_rope_scaling {
            config["rope_scaling"] = scaling;
        }
    }
    config
}

/// The byte-level tokenizer of synthetic models plus the three special tokens.
fn write_tokenizer(path: &Path) -> Result<()> {
    let mut inner = Tokenizer::byte_level().inner().clone();
    let specials: Vec<AddedToken> = FIXTURE_SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    inner.add_special_tokens(&specials);
    inner.save(path, false).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn write_weights(dir: &Path, seed: u64, options: &FixtureOptions) -> Result<()> {
    let mut rng = RandomWeights::new(seed, &Device::Cpu, true)?;
    // Xavier-scale weights give O(1) logits, so greedy choices are not near-ties.
    let std = 1.0 / (FIXTURE_HIDDEN as f32).sqrt();
    let (h, q, kv, ff) = (
        FIXTURE_HIDDEN,
        HEADS * HEAD_DIM,
        KV_HEADS * HEAD_DIM,
        INTERMEDIATE,
    );
    let mut normal = |dims: &[usize], std: f32| rng.normal(dims, std, DType::F32);
    let mut shards: Vec<HashMap<String, Tensor>> = vec![HashMap::new(); options.shards.max(1)];
    let last = shards.len() - 1;
    // Norm weights are 1 + N(0, 0.1), not 1, so a skipped norm multiply shows in tests.
    shards[0].insert(
        "model.embed_tokens.weight".into(),
        normal(&[FIXTURE_VOCAB, h], 1.0)?,
    );
    for layer in 0..FIXTURE_LAYERS {
        let shard = &mut shards[layer * (last + 1) / FIXTURE_LAYERS];
        let name = |suffix: &str| format!("model.layers.{layer}.{suffix}.weight");
        shard.insert(name("input_layernorm"), (normal(&[h], 0.1)? + 1.0)?);
        shard.insert(name("self_attn.q_proj"), normal(&[q, h], std)?);
        shard.insert(name("self_attn.k_proj"), normal(&[kv, h], std)?);
        shard.insert(name("self_attn.v_proj"), normal(&[kv, h], std)?);
        shard.insert(name("self_attn.o_proj"), normal(&[h, q], std)?);
        shard.insert(
            name("post_attention_layernorm"),
            (normal(&[h], 0.1)? + 1.0)?,
        );
        shard.insert(name("mlp.gate_proj"), normal(&[ff, h], std)?);
        shard.insert(name("mlp.up_proj"), normal(&[ff, h], std)?);
        shard.insert(name("mlp.down_proj"), normal(&[h, ff], std)?);
    }
    shards[last].insert("model.norm.weight".into(), (normal(&[h], 0.1)? + 1.0)?);
    if !options.tie_word_embeddings {
        shards[last].insert("lm_head.weight".into(), normal(&[FIXTURE_VOCAB, h], std)?);
    }
    let count = shards.len();
    let file_name = |i: usize| match count {
        1 => "model.safetensors".to_string(),
        n => format!("model-{:05}-of-{n:05}.safetensors", i + 1),
    };
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let converted = shard
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_dtype(options.dtype)?)))
            .collect::<candle_core::Result<HashMap<_, _>>>()?;
        let path = dir.join(file_name(i));
        candle_core::safetensors::save(&converted, &path)?;
        for name in shard.keys() {
            weight_map.insert(name.clone(), json!(file_name(i)));
        }
    }
    if count > 1 {
        let path = dir.join("model.safetensors.index.json");
        let index = json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(&path, format!("{index:#}\n")).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}
