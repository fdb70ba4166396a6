//! Shared by the `forward_*` tests: a batched driver that mixes sequences at different
//! positions (prefill chunks at odd boundaries, decodes) over scattered KV blocks, the replay
//! of the same token streams through a one-sequence-at-a-time reference, and a tiny GGUF writer.
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use metrum_engine::kv_cache::KvCache;
use metrum_engine::model::{DecoderModel, ForwardBatch, SequenceChunk};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// One sequence's life in the batched run.
#[derive(Clone, Debug)]
pub struct SeqPlan {
    pub prompt: Vec<u32>,
    /// Prefill chunk sizes; they sum to the prompt length.
    pub chunks: Vec<usize>,
    /// The step at which the sequence joins the batch.
    pub start_step: usize,
    /// Greedy tokens to generate.
    pub max_new: usize,
    /// Ask for logits on the chunks that do not complete the prompt too (compared with the
    /// reference); when false those rows are not selected, which checks the row mapping.
    pub logits_on_partial: bool,
}

/// One step of one sequence.
#[derive(Clone, Debug)]
pub struct ChunkRecord {
    /// Position of the chunk's first token.
    pub pos: usize,
    pub tokens: Vec<u32>,
    /// Logits of the chunk's last token, when selected.
    pub logits: Option<Vec<f32>>,
    /// The greedy token this chunk produced (prompt-completing chunks and decodes).
    pub produced: Option<u32>,
}

/// What one sequence went through, and the greedy tokens it generated.
#[derive(Clone, Debug, Default)]
pub struct SeqRecord {
    pub chunks: Vec<ChunkRecord>,
    pub generated: Vec<u32>,
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Block ids handed out in a scrambled order, so every table is non-contiguous and sequences'
/// blocks interleave.
struct BlockPool {
    free: Vec<u32>,
}

impl BlockPool {
    fn new(num_blocks: usize) -> BlockPool {
        let mut free: Vec<u32> = (0..num_blocks as u32).collect();
        let mut rng = StdRng::seed_from_u64(99);
        for i in (1..free.len()).rev() {
            free.swap(i, rng.random_range(0..=i));
        }
        BlockPool { free }
    }

    fn grow(&mut self, table: &mut Vec<u32>, tokens: usize, block_size: usize) {
        while table.len() * block_size < tokens {
            table.push(self.free.pop().expect("test cache has enough blocks"));
        }
    }
}

/// Runs every plan to completion through `model.forward`, one mixed batch per step, with the
/// KV cache in the activation dtype.
pub fn run_batched(
    model: &DecoderModel,
    plans: &[SeqPlan],
    block_size: usize,
    num_blocks: usize,
) -> Vec<SeqRecord> {
    run_batched_in(model, plans, block_size, num_blocks, model.dtype())
}

/// [`run_batched`] with the KV cache stored as `kv_dtype`.
pub fn run_batched_in(
    model: &DecoderModel,
    plans: &[SeqPlan],
    block_size: usize,
    num_blocks: usize,
    kv_dtype: DType,
) -> Vec<SeqRecord> {
    let device = model.device().clone();
    let layout = model.kv_cache_layout_in(block_size, kv_dtype);
    let mut kv = KvCache::new(layout, num_blocks, &device).unwrap();
    let mut pool = BlockPool::new(num_blocks);
    let mut tables: Vec<Vec<u32>> = vec![Vec::new(); plans.len()];
    let mut tokens: Vec<Vec<u32>> = plans.iter().map(|p| p.prompt.clone()).collect();
    let mut cached = vec![0usize; plans.len()];
    let mut chunk_index = vec![0usize; plans.len()];
    let mut records = vec![SeqRecord::default(); plans.len()];
    for step in 0.. {
        let done = |i: usize| records[i].generated.len() >= plans[i].max_new;
        if (0..plans.len()).all(done) {
            break;
        }
        // (sequence, chunk length, completes the prompt or decodes, logits wanted)
        let mut work = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            if step < plan.start_step || done(i) {
                continue;
            }
            let (len, finishing) = match plan.chunks.get(chunk_index[i]) {
                Some(&len) => (len, chunk_index[i] + 1 == plan.chunks.len()),
                None => (1, true),
            };
            chunk_index[i] += 1;
            pool.grow(&mut tables[i], cached[i] + len, block_size);
            work.push((i, len, finishing, finishing || plan.logits_on_partial));
        }
        let chunks: Vec<SequenceChunk> = work
            .iter()
            .map(|&(i, len, _, logits)| SequenceChunk {
                tokens: &tokens[i][cached[i]..cached[i] + len],
                num_cached: cached[i],
                block_table: &tables[i],
                num_logits: usize::from(logits),
            })
            .collect();
        let batch = ForwardBatch::from_chunks(block_size, &chunks, &device).unwrap();
        let logits = model.forward(&batch, &mut kv).unwrap();
        let logits: Vec<Vec<f32>> = logits.to_vec2().unwrap();
        assert_eq!(logits.len(), batch.logits_rows().len());
        let mut rows = logits.into_iter();
        for &(i, len, finishing, wanted) in &work {
            let chunk_tokens = tokens[i][cached[i]..cached[i] + len].to_vec();
            let row = if wanted { rows.next() } else { None };
            let produced =
                finishing.then(|| argmax(row.as_ref().expect("finishing chunks have logits")));
            if let Some(next) = produced {
                records[i].generated.push(next);
                tokens[i].push(next);
            }
            records[i].chunks.push(ChunkRecord {
                pos: cached[i],
                tokens: chunk_tokens,
                logits: row,
                produced,
            });
            cached[i] += len;
        }
    }
    records
}

/// Replays each sequence's chunks through `reference(tokens, index_pos)` (which returns the
/// logits of the chunk's last token; index_pos 0 starts a new sequence), checks every selected
/// logits row is within `tol` (relative to the largest reference logit) and every greedy token
/// is the reference's argmax. Returns the largest absolute difference seen.
pub fn compare_with_reference(
    records: &[SeqRecord],
    reference: impl FnMut(&[u32], usize) -> Vec<f32>,
    tol: f32,
) -> f32 {
    compare_within(records, reference, tol, 0.0).max_diff
}

/// What [`compare_within`] saw.
#[derive(Debug, Default)]
pub struct Agreement {
    pub max_diff: f32,
    /// Greedy tokens that were also the reference's argmax, of all produced.
    pub same_tokens: usize,
    pub tokens: usize,
    /// Largest `max(reference) - reference[our token]` over produced tokens.
    pub worst_token_gap: f32,
}

/// [`compare_with_reference`] with a looser token rule: each greedy token's reference logit
/// must be within `token_margin` of the reference's best (0 = it must be the argmax).
pub fn compare_within(
    records: &[SeqRecord],
    mut reference: impl FnMut(&[u32], usize) -> Vec<f32>,
    tol: f32,
    token_margin: f32,
) -> Agreement {
    let mut seen = Agreement::default();
    for (s, record) in records.iter().enumerate() {
        for (c, chunk) in record.chunks.iter().enumerate() {
            let expected = reference(&chunk.tokens, chunk.pos);
            let Some(logits) = &chunk.logits else {
                continue;
            };
            assert_eq!(logits.len(), expected.len(), "vocab width");
            let scale = expected.iter().fold(1f32, |m, x| m.max(x.abs()));
            let diff = logits
                .iter()
                .zip(&expected)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= tol * scale,
                "sequence {s} chunk {c} at position {}: max |logit diff| {diff} > {tol} * {scale}",
                chunk.pos
            );
            seen.max_diff = seen.max_diff.max(diff);
            if let Some(token) = chunk.produced {
                let best = argmax(&expected);
                let gap = expected[best as usize] - expected[token as usize];
                assert!(
                    token == best || gap <= token_margin,
                    "sequence {s}: greedy token {token} after chunk {c} is {gap} below the reference's {best}"
                );
                seen.tokens += 1;
                seen.same_tokens += usize::from(token == best);
                seen.worst_token_gap = seen.worst_token_gap.max(gap);
            }
        }
    }
    seen
}

/// The default model's cached GGUF, or `None` (with a message) when missing; fails loudly
/// when `CI=true`.
pub fn default_model_path() -> Option<PathBuf> {
    let cache = std::env::var_os("METRUM_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/metrum")))
        .unwrap_or_else(|| PathBuf::from(".cache/metrum"));
    let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "CI=true but the default model is missing at {}",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED: default model not cached at {} (run `metrum fetch`)",
        path.display()
    );
    None
}

/// Shapes of the tiny GGUF llama.
pub const GGUF_HIDDEN: usize = 64;
pub const GGUF_VOCAB: usize = 300;
pub const GGUF_LAYERS: usize = 2;
const GGUF_HEADS: usize = 4;
const GGUF_KV_HEADS: usize = 2;
const GGUF_FF: usize = 128;

/// Writes a tiny random llama GGUF: Q8_0 projections except Q4_1 `attn_v` (so q/k/v stack in
/// two groups), f32 norms, a Q8_0 embedding, and an `output.weight` unless `tied`.
pub fn write_tiny_gguf(path: &Path, seed: u64, architecture: &str, tied: bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensor = |dims: &[usize], std: f32, mean: f32| {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| mean + std * (rng.random::<f32>() * 2.0 - 1.0) * 1.7)
            .collect();
        Tensor::from_vec(data, dims, &Device::Cpu).unwrap()
    };
    let q = |t: &Tensor, dtype| QTensor::quantize(t, dtype).unwrap();
    let (h, kv) = (GGUF_HIDDEN, GGUF_KV_HEADS * GGUF_HIDDEN / GGUF_HEADS);
    let std = 1.0 / (h as f32).sqrt();
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            q(&tensor(&[GGUF_VOCAB, h], 1.0, 0.0), GgmlDType::Q8_0),
        ),
        (
            "output_norm.weight".into(),
            q(&tensor(&[h], 0.1, 1.0), GgmlDType::F32),
        ),
    ];
    if !tied {
        let head = tensor(&[GGUF_VOCAB, h], std, 0.0);
        tensors.push(("output.weight".into(), q(&head, GgmlDType::Q8_0)));
    }
    for i in 0..GGUF_LAYERS {
        let name = |s: &str| format!("blk.{i}.{s}.weight");
        let entries = [
            (name("attn_norm"), tensor(&[h], 0.1, 1.0), GgmlDType::F32),
            (name("attn_q"), tensor(&[h, h], std, 0.0), GgmlDType::Q8_0),
            (name("attn_k"), tensor(&[kv, h], std, 0.0), GgmlDType::Q8_0),
            (name("attn_v"), tensor(&[kv, h], std, 0.0), GgmlDType::Q4_1),
            (
                name("attn_output"),
                tensor(&[h, h], std, 0.0),
                GgmlDType::Q8_0,
            ),
            (name("ffn_norm"), tensor(&[h], 0.1, 1.0), GgmlDType::F32),
            (
                name("ffn_gate"),
                tensor(&[GGUF_FF, h], std, 0.0),
                GgmlDType::Q8_0,
            ),
            (
                name("ffn_up"),
                tensor(&[GGUF_FF, h], std, 0.0),
                GgmlDType::Q8_0,
            ),
            (
                name("ffn_down"),
                tensor(&[h, GGUF_FF], std, 0.0),
                GgmlDType::Q4_1,
            ),
        ];
        for (n, t, dtype) in entries {
            tensors.push((n, q(&t, dtype)));
        }
    }
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String(architecture.into())),
        ("llama.block_count", Value::U32(GGUF_LAYERS as u32)),
        ("llama.context_length", Value::U32(1024)),
        ("llama.embedding_length", Value::U32(h as u32)),
        ("llama.feed_forward_length", Value::U32(GGUF_FF as u32)),
        ("llama.attention.head_count", Value::U32(GGUF_HEADS as u32)),
        (
            "llama.attention.head_count_kv",
            Value::U32(GGUF_KV_HEADS as u32),
        ),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        (
            "llama.rope.dimension_count",
            Value::U32((h / GGUF_HEADS) as u32),
        ),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
    ];
    let metadata_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata_refs, &tensor_refs).unwrap();
}

/// Rewrites a GGUF with every tensor dequantized to f32 (same metadata), so both the model
/// under test and the reference multiply dense f32 weights.
pub fn dequantize_gguf(src: &Path, dst: &Path) {
    rewrite_gguf(src, dst, |_| GgmlDType::F32);
}

/// Rewrites an f32 GGUF with every matrix whose rows are whole `ty` blocks quantized to `ty`
/// (vectors and norms stay f32, as llama.cpp's quantizer keeps them), same metadata.
pub fn quantize_gguf(src: &Path, dst: &Path, ty: GgmlDType) {
    rewrite_gguf(src, dst, |dims| match dims {
        // 3-D: a mixture of experts' stacked expert matrices.
        [_, cols] | [_, _, cols] if cols % ty.block_size() == 0 => ty,
        _ => GgmlDType::F32,
    });
}

/// Copies a GGUF's metadata and re-encodes each tensor (dequantized first) in the type
/// `target` picks from its dims.
fn rewrite_gguf(src: &Path, dst: &Path, target: impl Fn(&[usize]) -> GgmlDType) {
    let mut file = std::fs::File::open(src).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(&str, QTensor)> = names
        .iter()
        .map(|name| {
            let q = content.tensor(&mut file, name, &Device::Cpu).unwrap();
            let dense = q.dequantize(&Device::Cpu).unwrap();
            let ty = target(dense.dims());
            (name.as_str(), QTensor::quantize(&dense, ty).unwrap())
        })
        .collect();
    let metadata: Vec<(&str, &Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
    let mut out = std::fs::File::create(dst).unwrap();
    gguf_file::write(&mut out, &metadata, &tensor_refs).unwrap();
}

/// candle-transformers' quantized llama over the same GGUF, as a per-sequence reference.
pub fn quantized_llama_reference(path: &Path) -> impl FnMut(&[u32], usize) -> Vec<f32> {
    use candle_transformers::models::quantized_llama::ModelWeights;
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    move |tokens, pos| {
        let input = Tensor::new(tokens, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward(&input, pos).unwrap();
        logits.squeeze(0).unwrap().to_vec1().unwrap()
    }
}

/// A mix that exercises every path: a prompt split 7 + 13 + 1 (crossing 16-token blocks at odd
/// offsets), a one-chunk prompt, a late joiner, and a prompt whose first chunk asks no logits.
pub fn mixed_plans(prompts: [Vec<u32>; 4], max_new: usize) -> Vec<SeqPlan> {
    let [a, b, c, d] = prompts;
    let split = |p: &[u32], parts: &[usize]| {
        assert_eq!(
            parts.iter().sum::<usize>(),
            p.len(),
            "chunks cover the prompt"
        );
        parts.to_vec()
    };
    vec![
        SeqPlan {
            chunks: split(&a, &[7, 13, 1]),
            prompt: a,
            start_step: 0,
            max_new,
            logits_on_partial: true,
        },
        SeqPlan {
            chunks: vec![b.len()],
            prompt: b,
            start_step: 0,
            max_new,
            logits_on_partial: true,
        },
        SeqPlan {
            chunks: vec![c.len()],
            prompt: c,
            start_step: 2,
            max_new,
            logits_on_partial: true,
        },
        SeqPlan {
            chunks: split(&d, &[17, d.len() - 17]),
            prompt: d,
            start_step: 1,
            max_new,
            logits_on_partial: false,
        },
    ]
}

/// Deterministic pseudo-random token ids below `vocab`.
pub fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}
