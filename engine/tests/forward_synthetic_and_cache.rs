//! Synthetic presets, KV cache sizing, and forward-batch validation.

mod forward_common;

use candle_core::{DType, Device};
use forward_common::{SeqPlan, argmax, run_batched};
use metrum_engine::kv_cache::{KvCache, KvCacheLayout};
use metrum_engine::model::{
    DecoderModel, ForwardBatch, ModelError, SYNTHETIC_MODELS, SequenceChunk, synthetic_config,
};

fn tiny(dtype: DType, seed: u64) -> DecoderModel {
    DecoderModel::synthetic("tiny", &Device::Cpu, dtype, seed).unwrap()
}

fn one_step_logits(model: &DecoderModel, tokens: &[u32]) -> Vec<f32> {
    let mut kv = KvCache::new(model.kv_cache_layout(16), 8, &Device::Cpu).unwrap();
    let table = [3, 1, 6];
    let chunk = SequenceChunk {
        tokens,
        num_cached: 0,
        block_table: &table,
        num_logits: 1,
    };
    let batch = ForwardBatch::from_chunks(16, &[chunk], &Device::Cpu).unwrap();
    let logits = model.forward(&batch, &mut kv).unwrap();
    assert_eq!(logits.dims(), [1, model.config().vocab_size]);
    assert_eq!(logits.dtype(), DType::F32);
    logits.squeeze(0).unwrap().to_vec1().unwrap()
}

#[test]
fn presets_have_the_published_shapes() {
    let expect = [
        ("tiny", 256, 2, 256),
        ("smollm2-135m", 49_152, 30, 576),
        ("llama-3.2-1b", 128_256, 16, 2048),
        ("llama-3.2-3b", 128_256, 28, 3072),
        ("llama-3.1-8b", 128_256, 32, 4096),
        ("qwen2.5-0.5b", 151_936, 24, 896),
        ("qwen2.5-0.5b-as-llama", 151_936, 24, 896),
        ("gemma-2-2b", 256_000, 26, 2304),
        ("gemma-2-2b-as-llama", 256_000, 26, 2304),
        ("qwen3-30b-a3b", 151_936, 48, 2048),
        ("tiny-moe", 256, 2, 256),
    ];
    assert_eq!(SYNTHETIC_MODELS.len(), expect.len());
    for (name, vocab, layers, hidden) in expect {
        let c = synthetic_config(name).unwrap();
        assert_eq!(
            (c.vocab_size, c.num_layers, c.hidden_size),
            (vocab, layers, hidden),
            "{name}"
        );
    }
    let billions = |n: &str| synthetic_config(n).unwrap().num_parameters() as f64 / 1e9;
    assert!((billions("smollm2-135m") - 0.1346).abs() < 0.001);
    assert!((billions("llama-3.2-1b") - 1.236).abs() < 0.01);
    assert!((billions("llama-3.2-3b") - 3.213).abs() < 0.01);
    assert!((billions("llama-3.1-8b") - 8.030).abs() < 0.01);
    // Qwen3-30B-A3B's published 30.5 B (its q/k norms, 12k parameters, are not counted).
    assert!((billions("qwen3-30b-a3b") - 30.53).abs() < 0.01);
    // Published sizes (Qwen2.5-0.5B's QKV biases, 28k parameters, are not counted).
    assert!((billions("qwen2.5-0.5b") - 0.494).abs() < 0.001);
    assert!((billions("gemma-2-2b") - 2.614).abs() < 0.001);
    // The `-as-llama` twins differ in family flags only, never in size.
    for family in ["qwen2.5-0.5b", "gemma-2-2b"] {
        let twin = synthetic_config(&format!("{family}-as-llama")).unwrap();
        let original = synthetic_config(family).unwrap();
        assert_eq!(twin.family(), metrum_engine::model::Family::Llama);
        assert_ne!(original.family(), metrum_engine::model::Family::Llama);
        let llama_norms = 2 * original.hidden_size * original.num_layers;
        let extra = if original.arch.sandwich_norms {
            llama_norms
        } else {
            0
        };
        assert_eq!(
            twin.num_parameters() + extra,
            original.num_parameters(),
            "{family}"
        );
    }
}

#[test]
fn synthetic_weights_follow_the_seed() {
    let tokens: Vec<u32> = b"hello synthetic world".iter().map(|&b| b as u32).collect();
    let a = one_step_logits(&tiny(DType::F32, 1), &tokens);
    let b = one_step_logits(&tiny(DType::F32, 1), &tokens);
    let c = one_step_logits(&tiny(DType::F32, 2), &tokens);
    assert_eq!(a, b, "same seed, same weights");
    assert_ne!(a, c, "another seed, other weights");
    assert!(a.iter().all(|x| x.is_finite()));
}

#[test]
fn half_precision_runs_close_to_f32() {
    let tokens: Vec<u32> = (0..40).map(|i| (i * 7 % 256) as u32).collect();
    let reference = one_step_logits(&tiny(DType::F32, 4), &tokens);
    for dtype in [DType::BF16, DType::F16] {
        let model = tiny(dtype, 4);
        assert_eq!(model.kv_cache_layout(16).dtype, dtype);
        let logits = one_step_logits(&model, &tokens);
        let diff = logits
            .iter()
            .zip(&reference)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 0.05, "{dtype:?} differs from f32 by {diff}");
    }
}

#[test]
fn smollm2_shaped_synthetic_model_generates() {
    let model = DecoderModel::synthetic("smollm2-135m", &Device::Cpu, DType::F32, 0).unwrap();
    let plans = vec![
        SeqPlan {
            prompt: (0..30).collect(),
            chunks: vec![30],
            start_step: 0,
            max_new: 3,
            logits_on_partial: true,
        },
        SeqPlan {
            prompt: (40..49).collect(),
            chunks: vec![4, 5],
            start_step: 0,
            max_new: 3,
            logits_on_partial: true,
        },
    ];
    let records = run_batched(&model, &plans, 16, 16);
    for record in records {
        assert_eq!(record.generated.len(), 3);
        let logits = record.chunks.last().unwrap().logits.clone().unwrap();
        assert_eq!(logits.len(), 49_152);
        assert!(logits.iter().all(|x| x.is_finite()));
        assert_eq!(argmax(&logits), *record.generated.last().unwrap());
    }
}

#[test]
fn kv_cache_sizes_from_blocks_or_bytes() {
    let layout = KvCacheLayout {
        num_layers: 30,
        block_size: 16,
        num_kv_heads: 3,
        head_dim: 64,
        dtype: DType::F32,
    };
    assert_eq!(layout.bytes_per_block(), 2 * 30 * 16 * 3 * 64 * 4);
    let cache = KvCache::with_memory_budget(layout, 64 << 20, &Device::Cpu).unwrap();
    assert_eq!(cache.num_blocks(), (64 << 20) / layout.bytes_per_block());
    assert!(cache.total_bytes() <= 64 << 20);
    assert_eq!(
        cache.layer(29).unwrap().0.dims(),
        [cache.num_blocks(), 16, 3, 64]
    );
    assert!(cache.layer(30).is_none());
    let err = KvCache::with_memory_budget(layout, 1000, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("one block needs"), "{err}");
    assert!(KvCache::new(layout, 0, &Device::Cpu).is_err());
}

#[test]
fn bad_batches_are_errors_not_panics() {
    let model = tiny(DType::F32, 0);
    let cpu = Device::Cpu;
    let mut kv = KvCache::new(model.kv_cache_layout(16), 4, &cpu).unwrap();
    let chunk = |tokens: &'static [u32], num_cached, table: &'static [u32]| SequenceChunk {
        tokens,
        num_cached,
        block_table: table,
        num_logits: 1,
    };
    let run = |chunks: &[SequenceChunk], kv: &mut KvCache| {
        ForwardBatch::from_chunks(16, chunks, &cpu).and_then(|b| model.forward(&b, kv))
    };
    let bad_batch = |r: Result<_, ModelError>| match r {
        Err(ModelError::BadBatch(msg)) => msg,
        other => panic!("expected a batch error, got {other:?}"),
    };
    let msg = bad_batch(run(&[chunk(&[1, 999], 0, &[0])], &mut kv));
    assert!(msg.contains("999"), "{msg}");
    let msg = bad_batch(run(&[chunk(&[1], 0, &[7])], &mut kv));
    assert!(msg.contains("block id 7"), "{msg}");
    bad_batch(run(&[chunk(&[1; 20], 0, &[0])], &mut kv));
    bad_batch(run(&[chunk(&[], 0, &[0])], &mut kv));
    let msg = bad_batch(run(&[chunk(&[1], 5000, &[0; 400])], &mut kv));
    assert!(msg.contains("4096"), "{msg}");
    // A cache built for another block size does not fit the batch.
    let mut other = KvCache::new(model.kv_cache_layout(8), 4, &cpu).unwrap();
    let err = run(&[chunk(&[1, 2], 0, &[0])], &mut other).unwrap_err();
    assert!(matches!(err, ModelError::KvCache(_)), "{err:?}");
    // And the good batch still runs.
    assert!(run(&[chunk(&[1, 2], 0, &[0])], &mut kv).is_ok());
}

#[test]
fn logits_only_for_selected_rows_in_their_order() {
    let model = tiny(DType::F32, 3);
    let cpu = Device::Cpu;
    let mut kv = KvCache::new(model.kv_cache_layout(4), 16, &cpu).unwrap();
    let (a, b): (Vec<u32>, Vec<u32>) = ((10..19).collect(), (50..53).collect());
    let chunks = [
        SequenceChunk {
            tokens: &a,
            num_cached: 0,
            block_table: &[9, 2, 14],
            num_logits: 0,
        },
        SequenceChunk {
            tokens: &b,
            num_cached: 0,
            block_table: &[5],
            num_logits: 1,
        },
    ];
    let batch = ForwardBatch::from_chunks(4, &chunks, &cpu).unwrap();
    assert_eq!(batch.logits_rows(), [11]);
    let only_b = model.forward(&batch, &mut kv).unwrap();
    assert_eq!(only_b.dims(), [1, 256]);
    // Same tokens, every row selected in reverse: row 11 must equal the single row above.
    let meta = batch.meta().clone();
    let all: Vec<u32> = (0..12).rev().collect();
    let batch = ForwardBatch::new(batch.token_ids(), meta, &all, &cpu).unwrap();
    let every = model.forward(&batch, &mut kv).unwrap();
    assert_eq!(every.dims(), [12, 256]);
    let first: Vec<f32> = every.get(0).unwrap().to_vec1().unwrap();
    let single: Vec<f32> = only_b.get(0).unwrap().to_vec1().unwrap();
    // The LM head's GEMM sums in another order for 12 rows than for 1: equal up to rounding.
    let diff = first
        .iter()
        .zip(&single)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff < 1e-5,
        "row 11 selected alone vs among all rows: {diff}"
    );
    let second: Vec<f32> = every.get(1).unwrap().to_vec1().unwrap();
    assert!(
        second
            .iter()
            .zip(&single)
            .any(|(a, b)| (a - b).abs() > 1e-3),
        "rows differ"
    );
    let none = ForwardBatch::new(batch.token_ids(), batch.meta().clone(), &[], &cpu).unwrap();
    assert_eq!(model.forward(&none, &mut kv).unwrap().dims(), [0, 256]);
}

#[test]
fn model_and_cache_can_move_to_the_engine_thread() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DecoderModel>();
    assert_send_sync::<KvCache>();
    assert_send_sync::<ForwardBatch>();
    let model = tiny(DType::F32, 5);
    let tokens: Vec<u32> = (1..9).collect();
    let here = one_step_logits(&model, &tokens);
    let there = std::thread::spawn(move || one_step_logits(&model, &tokens))
        .join()
        .unwrap();
    assert_eq!(here, there);
}
