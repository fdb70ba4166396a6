//! The batched paged forward over GGUF llama weights (kept quantized) matches
//! candle-transformers' `quantized_llama` run one sequence at a time: on a tiny generated GGUF
//! always, and on the default model (SmolLM2-135M-Instruct Q4_1, tied embeddings) when cached.

mod forward_common;

use candle_core::{DType, Device};
use forward_common::*;
use metrum_engine::model::DecoderModel;
use metrum_kernels::RopeStyle;

#[test]
fn tiny_gguf_mixed_batch_matches_quantized_llama() {
    for tied in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_tiny_gguf(&path, 21, "llama", tied);
        let model = DecoderModel::load_gguf(&path, &Device::Cpu, DType::F32).unwrap();
        let c = model.config();
        assert_eq!(c.tie_word_embeddings, tied);
        assert_eq!(
            (c.vocab_size, c.hidden_size, c.num_layers),
            (GGUF_VOCAB, GGUF_HIDDEN, GGUF_LAYERS)
        );
        assert_eq!(c.rope_style, RopeStyle::Interleaved);
        let prompts = [
            random_tokens(21, GGUF_VOCAB, 1),
            random_tokens(12, GGUF_VOCAB, 2),
            random_tokens(5, GGUF_VOCAB, 3),
            random_tokens(33, GGUF_VOCAB, 4),
        ];
        let records = run_batched(&model, &mixed_plans(prompts, 20), 16, 64);
        // Metrum's CPU kernels quantize activations exactly as ggml does (Q8_0/Q8_1 blocks,
        // f16 scales: kernels/tests/quant.rs matches candle's QMatMul to 1e-7 on Q4_0/Q4_1/Q8_0
        // at most shapes), but candle's own Q8_0 matmul drifts by ~0.8% on 16-row matrices,
        // which this model has. So: within 2%, and each greedy token is the reference's argmax
        // or a near-tie within 0.05 logits of it (one such tie seen: 0.011).
        let seen = compare_within(&records, quantized_llama_reference(&path), 2e-2, 0.05);
        println!("tied={tied}: vs quantized_llama: {seen:?}");
    }
}

/// A quantized type Metrum's CPU kernels lack (Q5_0 here; Q2_K and Q3_K alike) loads and runs
/// on candle's quantized matmul, the documented slower path (with a warning in the log), and
/// matches candle's own quantized llama.
#[test]
fn tiny_gguf_in_a_type_without_a_metrum_kernel_runs_on_candles_path() {
    let dir = tempfile::tempdir().unwrap();
    let (mixed, path) = (dir.path().join("mixed.gguf"), dir.path().join("q5_0.gguf"));
    write_tiny_gguf(&mixed, 22, "llama", false);
    quantize_gguf(&mixed, &path, candle_core::quantized::GgmlDType::Q5_0);
    let model = DecoderModel::load_gguf(&path, &Device::Cpu, DType::F32).unwrap();
    let prompts = [
        random_tokens(21, GGUF_VOCAB, 5),
        random_tokens(12, GGUF_VOCAB, 6),
        random_tokens(5, GGUF_VOCAB, 7),
        random_tokens(33, GGUF_VOCAB, 8),
    ];
    let records = run_batched(&model, &mixed_plans(prompts, 8), 16, 64);
    let seen = compare_within(&records, quantized_llama_reference(&path), 2e-2, 0.05);
    println!("Q5_0 vs quantized_llama: {seen:?}");
}

/// Prompts cut from real text at the lengths `mixed_plans` splits at odd boundaries.
fn default_model_prompts(path: &std::path::Path) -> [Vec<u32>; 4] {
    let tokenizer = metrum_engine::tokenizer::Tokenizer::from_gguf_file(path).unwrap();
    let text = tokenizer
        .encode(
            "The capital of France is Paris. The capital of Germany is Berlin. The capital of \
             Italy is Rome. Paged attention stores the key and value vectors of every token in \
             fixed-size blocks, so sequences of different lengths share one pool of memory and \
             a scheduler can admit new requests while others are still decoding. def \
             fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1)",
            false,
        )
        .unwrap();
    assert!(text.len() >= 71, "{} tokens", text.len());
    let window = |from: usize, to: usize| text[from..to].to_vec();
    [
        window(0, 21),
        window(21, 33),
        window(33, 38),
        window(38, 71),
    ]
}

fn check_default_config(model: &DecoderModel) {
    let c = model.config();
    assert!(
        c.tie_word_embeddings,
        "SmolLM2 ties its output head to token_embd"
    );
    assert_eq!(
        (c.vocab_size, c.num_layers, c.num_heads, c.num_kv_heads),
        (49_152, 30, 9, 3)
    );
    assert_eq!((c.rope_theta, c.max_position_embeddings), (100_000.0, 8192));
    assert_eq!(c.rope_style, RopeStyle::Interleaved);
}

/// The default model with its weights dequantized to f32 on both sides: the whole forward
/// (metadata, tied head, RoPE pairing, GQA, paging, chunking) agrees to float rounding and
/// greedy decoding is token-identical.
#[test]
fn default_model_in_f32_matches_quantized_llama_token_for_token() {
    let Some(path) = default_model_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dense = dir.path().join("smollm2-f32.gguf");
    dequantize_gguf(&path, &dense);
    let model = DecoderModel::load_gguf(&dense, &Device::Cpu, DType::F32).unwrap();
    check_default_config(&model);
    let records = run_batched(
        &model,
        &mixed_plans(default_model_prompts(&path), 20),
        16,
        128,
    );
    let worst = compare_with_reference(&records, quantized_llama_reference(&dense), 1e-4);
    println!("f32 weights: max |logit diff| vs quantized_llama: {worst:e}");
}

/// The default model as shipped (Q4_1 blocks, Q8_0 tied embedding, kept quantized). QMatMul
/// rounds every activation row to 8-bit blocks, which turns the last-ulp differences between
/// our attention kernel and candle's matmul+softmax into different roundings downstream: on
/// this model a 1e-6 relative nudge of the RoPE tables alone moves logits by ~0.5. So rows must
/// agree within that quantization noise, and each greedy token must be the reference's best
/// or within 1.5 logits of it; the f32 test above is the token-identical one.
///
/// The reference is no steadier than that against itself: `cargo run --release -p
/// metrum-engine --example reference_chunking` runs quantized_llama on four prompts, once whole
/// and once in two chunks, and its own greedy tokens part at generated tokens 30 and 33 on two
/// of them (logits up to 1.5 apart before they part).
#[test]
fn default_model_quantized_agrees_within_quantization_noise() {
    let Some(path) = default_model_path() else {
        return;
    };
    let model = DecoderModel::load_gguf(&path, &Device::Cpu, DType::F32).unwrap();
    check_default_config(&model);
    // 10 tokens each, not 20: candle's Q4_1 dot product is scalar code, slow on both sides.
    let plans = mixed_plans(default_model_prompts(&path), 10);
    let records = run_batched(&model, &plans, 16, 128);
    let seen = compare_within(&records, quantized_llama_reference(&path), 0.1, 1.5);
    println!("quantized: {seen:?}");
    assert!(
        seen.same_tokens * 10 >= seen.tokens * 9,
        "at least 90% of greedy tokens equal the reference's argmax: {seen:?}"
    );
}
