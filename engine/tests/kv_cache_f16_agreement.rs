//! What an f16 KV cache (`--kv-cache-dtype f16`) does to the default model (SmolLM2-135M-Instruct
//! Q4_1, f32 activations) against an f32 one: 20 prompts of real text, batched together. Asserted:
//! the next-token distribution after each prompt (KL divergence, top-1). Printed: how far the
//! 128-token greedy continuations agree before they part (once a greedy token differs, all after
//! it do; on 2026-12-04 only 30% of tokens came before a difference, which is why f16 is not
//! the CPU default). Skipped (with a message) when the model is not cached, as the other
//! default-model tests are.

mod forward_common;

use candle_core::{DType, Device};
use forward_common::*;
use metrum_engine::model::DecoderModel;

const NEW_TOKENS: usize = 128;

/// Bounds on the prompt's next-token distribution, f16 against f32 KV. Measured on 2026-12-04
/// (AVX-512 VNNI): KL mean 0.0056, max 0.018 nats, same top-1 on 19 of 20. The f16 cache itself
/// is exact: it gives bit-identical logits to an f32 cache fed K/V rounded to f16 first (checked
/// by hand that day), so what moves is this model's sensitivity to rounding K and V; a conversion
/// bug (wrong rounding, a misread row) reads garbage and moves KL by whole nats.
const MAX_MEAN_KL: f64 = 0.02;
const MAX_KL: f64 = 0.06;
const MIN_TOP1_SAME: usize = 17;

const PROMPTS: [&str; 20] = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three primary colors are",
    "Photosynthesis is the process by which plants",
    "To make a cup of tea, first",
    "The most important rule of writing clear code is",
    "In 1969, the Apollo 11 mission",
    "Here is a short poem about autumn:\n",
    "The difference between a list and a tuple in Python is",
    "Water boils at 100 degrees Celsius because",
    "A good breakfast should include",
    "The theory of evolution explains",
    "SELECT name, age FROM users WHERE",
    "My favourite book is",
    "The largest planet in our solar system is",
    "Paged attention stores keys and values in fixed-size blocks so that",
    "Dear hiring manager, I am writing to apply for",
    "The steps to solve a quadratic equation are",
    "Machine learning models learn from data by",
];

#[test]
fn f16_kv_cache_keeps_the_default_models_next_token_distribution() {
    let Some(path) = default_model_path() else {
        return;
    };
    let model = DecoderModel::load_gguf(&path, &Device::Cpu, DType::F32).unwrap();
    let tokenizer = metrum_engine::tokenizer::Tokenizer::from_gguf_file(&path).unwrap();
    let plans: Vec<SeqPlan> = PROMPTS
        .iter()
        .map(|text| {
            let prompt = tokenizer.encode(text, false).unwrap();
            SeqPlan {
                chunks: vec![prompt.len()],
                prompt,
                start_step: 0,
                max_new: NEW_TOKENS,
                logits_on_partial: false,
            }
        })
        .collect();
    let (block_size, blocks) = (16, 20 * 12);
    let f32_run = run_batched_in(&model, &plans, block_size, blocks, DType::F32);
    let f16_run = run_batched_in(&model, &plans, block_size, blocks, DType::F16);
    // The prompt's last-position logits: every layer's attention read the whole prompt back
    // from the cache, so this is where a conversion bug shows first, before greedy paths part.
    let (mut kl_sum, mut kl_max, mut top1_same, mut dlogit_max) = (0.0f64, 0.0f64, 0, 0.0f32);
    for (a, b) in f32_run.iter().zip(&f16_run) {
        let la = a.chunks[0].logits.as_ref().expect("prompt logits");
        let lb = b.chunks[0].logits.as_ref().expect("prompt logits");
        let kl = kl_divergence(la, lb);
        kl_sum += kl;
        kl_max = kl_max.max(kl);
        top1_same += usize::from(argmax(la) == argmax(lb));
        dlogit_max = la
            .iter()
            .zip(lb)
            .map(|(x, y)| (x - y).abs())
            .fold(dlogit_max, f32::max);
    }
    let kl_mean = kl_sum / PROMPTS.len() as f64;
    let mut agreeing = 0;
    let mut parted = Vec::new();
    for (i, (a, b)) in f32_run.iter().zip(&f16_run).enumerate() {
        let same = a
            .generated
            .iter()
            .zip(&b.generated)
            .take_while(|(x, y)| x == y)
            .count();
        agreeing += same;
        if same < NEW_TOKENS {
            parted.push((i, same));
        }
    }
    let total = PROMPTS.len() * NEW_TOKENS;
    println!(
        "f16 vs f32 KV on {} prompts: next-token KL mean {kl_mean:.5} max {kl_max:.5} nats, \
         max |logit difference| {dlogit_max:.3}, same top-1 {top1_same}/{}; greedy: \
         {agreeing} of {total} tokens before any difference ({:.1}%), parted (index, first \
         differing token): {parted:?}",
        PROMPTS.len(),
        PROMPTS.len(),
        100.0 * agreeing as f64 / total as f64
    );
    assert!(
        kl_mean <= MAX_MEAN_KL && kl_max <= MAX_KL,
        "f16 KV moved the next-token distribution too far: KL mean {kl_mean} max {kl_max}"
    );
    assert!(
        top1_same >= MIN_TOP1_SAME,
        "f16 KV changed the next token of {} of {} prompts",
        PROMPTS.len() - top1_same,
        PROMPTS.len()
    );
}

/// KL(p || q) in nats between the softmax distributions of two logit rows.
fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let log_softmax = |l: &[f32]| -> Vec<f64> {
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = l.iter().map(|&x| (x as f64 - max).exp()).sum();
        l.iter().map(|&x| x as f64 - max - sum.ln()).collect()
    };
    let (lp, lq) = (log_softmax(p_logits), log_softmax(q_logits));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}
