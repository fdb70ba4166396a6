//! The batched paged forward over Hugging Face safetensors checkpoints matches
//! candle-transformers' llama (run one sequence at a time with its own KV cache) on the same
//! token streams: logits within 1e-4 relative, greedy tokens identical.

mod forward_common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama as reference;
use forward_common::{compare_with_reference, mixed_plans, random_tokens, run_batched};
use metrum_engine::model::fixture::{FIXTURE_VOCAB, FixtureOptions, write_llama_fixture};
use metrum_engine::model::{DecoderModel, ModelConfig, RopeScaling};
use std::path::{Path, PathBuf};

fn weights_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files
}

fn load(dir: &Path) -> DecoderModel {
    DecoderModel::load_safetensors(
        &dir.join("config.json"),
        &weights_in(dir),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap()
}

/// candle-transformers' llama over the fixture (f32, CPU), one sequence at a time.
fn candle_llama(dir: &Path) -> impl FnMut(&[u32], usize) -> Vec<f32> {
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config: reference::LlamaConfig = serde_json::from_str(&text).unwrap();
    let config = config.into_config(false);
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&weights_in(dir), DType::F32, &Device::Cpu).unwrap()
    };
    let model = reference::Llama::load(vb, &config).unwrap();
    let mut cache = None;
    move |tokens, pos| {
        if pos == 0 {
            cache = Some(reference::Cache::new(true, DType::F32, &config, &Device::Cpu).unwrap());
        }
        let input = Tensor::new(tokens, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward(&input, pos, cache.as_mut().unwrap()).unwrap();
        logits.squeeze(0).unwrap().to_vec1().unwrap()
    }
}

fn prompts(seed: u64) -> [Vec<u32>; 4] {
    // Byte tokens only, like real text through the fixture's byte-level tokenizer.
    [
        random_tokens(21, 256, seed),
        random_tokens(12, 256, seed + 1),
        random_tokens(5, 256, seed + 2),
        random_tokens(40, 256, seed + 3),
    ]
}

fn check_fixture(options: &FixtureOptions, block_size: usize) -> f32 {
    let dir = tempfile::tempdir().unwrap();
    write_llama_fixture(dir.path(), 7, options).unwrap();
    let model = load(dir.path());
    let records = run_batched(&model, &mixed_plans(prompts(3), 20), block_size, 64);
    for record in &records {
        assert_eq!(record.generated.len(), 20);
    }
    compare_with_reference(&records, candle_llama(dir.path()), 1e-4)
}

#[test]
fn mixed_batch_matches_candle_llama_token_for_token() {
    let worst = check_fixture(&FixtureOptions::default(), 16);
    println!("max |logit diff| vs candle llama: {worst:e}");
}

#[test]
fn odd_block_size_and_tied_embeddings_match_candle_llama() {
    let options = FixtureOptions {
        tie_word_embeddings: true,
        ..FixtureOptions::default()
    };
    check_fixture(&options, 5);
}

#[test]
fn llama3_rope_scaling_matches_candle_llama() {
    let options = FixtureOptions {
        llama3_rope_scaling: true,
        ..FixtureOptions::default()
    };
    check_fixture(&options, 16);
}

#[test]
fn bf16_shards_with_index_load_like_one_f32_file() {
    let one = tempfile::tempdir().unwrap();
    let sharded = tempfile::tempdir().unwrap();
    let bf16 = FixtureOptions {
        dtype: DType::BF16,
        ..FixtureOptions::default()
    };
    write_llama_fixture(one.path(), 5, &bf16).unwrap();
    let options = FixtureOptions { shards: 2, ..bf16 };
    write_llama_fixture(sharded.path(), 5, &options).unwrap();
    assert!(
        sharded
            .path()
            .join("model.safetensors.index.json")
            .is_file()
    );
    assert_eq!(weights_in(sharded.path()).len(), 2);
    let plans = mixed_plans(prompts(11), 4);
    let a = run_batched(&load(one.path()), &plans, 16, 64);
    let b = run_batched(&load(sharded.path()), &plans, 16, 64);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.generated, y.generated);
        for (cx, cy) in x.chunks.iter().zip(&y.chunks) {
            assert_eq!(cx.logits, cy.logits, "same weights, same logits");
        }
    }
    // And the bf16 checkpoint computed in f32 still matches the reference reading it the same way.
    compare_with_reference(&b, candle_llama(sharded.path()), 1e-4);
}

#[test]
fn rope_parameters_form_parses_like_top_level_rope_theta() {
    let top = tempfile::tempdir().unwrap();
    let nested = tempfile::tempdir().unwrap();
    let llama3 = FixtureOptions {
        llama3_rope_scaling: true,
        ..FixtureOptions::default()
    };
    write_llama_fixture(top.path(), 9, &llama3).unwrap();
    let options = FixtureOptions {
        rope_parameters_form: true,
        ..llama3
    };
    write_llama_fixture(nested.path(), 9, &options).unwrap();
    let a = ModelConfig::from_hf_config(&top.path().join("config.json")).unwrap();
    let b = ModelConfig::from_hf_config(&nested.path().join("config.json")).unwrap();
    assert_eq!(a, b);
    assert!(matches!(
        a.rope_scaling,
        RopeScaling::Llama3 { factor: 8.0, .. }
    ));
    assert_eq!(a.rope_theta, 10_000.0);
}

#[test]
fn smollm2_config_json_reads_rope_parameters() {
    let path = Path::new("/work/shared/models/smollm2-135m-instruct/config.json");
    let config = ModelConfig::from_hf_config(path).unwrap();
    assert_eq!(config.rope_theta, 100_000.0);
    assert_eq!(config.rope_scaling, RopeScaling::None);
    assert!(config.tie_word_embeddings);
    assert_eq!(
        (
            config.num_layers,
            config.num_heads,
            config.num_kv_heads,
            config.head_dim
        ),
        (30, 9, 3, 64)
    );
    assert_eq!(
        (config.vocab_size, config.max_position_embeddings),
        (49_152, 8192)
    );
}

#[test]
fn fixture_tokenizer_covers_the_config_vocab() {
    let dir = tempfile::tempdir().unwrap();
    metrum_engine::model::fixture::write_tiny_llama_fixture(dir.path(), 1).unwrap();
    let files = metrum_engine::source::resolve_local(dir.path()).unwrap();
    let tokenizer = metrum_engine::tokenizer::Tokenizer::from_model_files(&files).unwrap();
    assert_eq!(tokenizer.vocab_size(), FIXTURE_VOCAB);
    let model = DecoderModel::load(&files, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(model.config().vocab_size, FIXTURE_VOCAB);
    assert_eq!(
        tokenizer.encode("hi", false).unwrap(),
        vec![b'h' as u32, b'i' as u32]
    );
    assert_eq!(tokenizer.piece_to_token("<|im_end|>"), Some(258));
    assert_eq!(tokenizer.eos_token_id(), Some(258));
}
