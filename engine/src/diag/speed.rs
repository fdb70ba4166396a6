//! Step timings against the hardware's limits: a decode step of a whole model at a given batch
//! and context (against the bytes-over-bandwidth floor), a prefill chunk's TFLOP/s, and a large
//! GEMM as the arithmetic ceiling. Timings are wall-clock around device-synchronized work.

use crate::kv_cache::KvCache;
use crate::model::{DecoderModel, ForwardBatch, SequenceChunk};
use candle_core::{DType, Device, Result, Tensor};
use std::time::Instant;

#[derive(Clone, Debug, serde::Serialize)]
pub struct DecodeStepRow {
    pub batch: usize,
    pub context: usize,
    pub step_ms: f64,
    /// Weight bytes + K/V bytes one step must read.
    pub bytes: u64,
    /// `bytes / copy_bandwidth`, in ms.
    pub floor_ms: f64,
}

/// One decode step of `batch` sequences at `context` tokens each. The KV cache is filled by a
/// real prefill of random tokens first (so no timing runs on all-zero K/V).
pub fn decode_step_time(
    m: &DecoderModel,
    batch: usize,
    context: usize,
    copy_gbps: f64,
    iters: usize,
) -> Result<DecodeStepRow> {
    let device = m.device().clone();
    let bs = 16;
    let blocks_per_seq = (context + 1).div_ceil(bs);
    let mut kv = KvCache::new(m.kv_cache_layout(bs), batch * blocks_per_seq, &device)
        .map_err(candle_core::Error::wrap)?;
    let tables: Vec<Vec<u32>> = (0..batch)
        .map(|s| ((s * blocks_per_seq) as u32..((s + 1) * blocks_per_seq) as u32).collect())
        .collect();
    let vocab = m.config().vocab_size as u32;
    // Fill the context with chunked prefills of at most 4096 tokens per step.
    let mut filled = 0;
    while filled < context {
        let n = (context - filled).min(4096);
        for (s, table) in tables.iter().enumerate() {
            let toks: Vec<u32> = (0..n as u32)
                .map(|i| (i * 7919 + s as u32 * 104_729 + filled as u32) % vocab)
                .collect();
            let chunk = [SequenceChunk {
                tokens: &toks,
                num_cached: filled,
                block_table: table,
                num_logits: 1,
            }];
            let b =
                ForwardBatch::from_chunks(bs, &chunk, &device).map_err(candle_core::Error::wrap)?;
            m.forward(&b, &mut kv).map_err(candle_core::Error::wrap)?;
        }
        filled += n;
    }
    let toks: Vec<[u32; 1]> = (0..batch as u32).map(|s| [(s * 13 + 1) % vocab]).collect();
    let chunks: Vec<SequenceChunk<'_>> = (0..batch)
        .map(|s| SequenceChunk {
            tokens: &toks[s],
            num_cached: context,
            block_table: &tables[s],
            num_logits: 1,
        })
        .collect();
    let fb = ForwardBatch::from_chunks(bs, &chunks, &device).map_err(candle_core::Error::wrap)?;
    for _ in 0..3 {
        m.forward(&fb, &mut kv).map_err(candle_core::Error::wrap)?;
    }
    device.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        // The same step re-run: it rewrites the same slot, so the context stays `context`.
        m.forward(&fb, &mut kv).map_err(candle_core::Error::wrap)?;
    }
    device.synchronize()?;
    let step_ms = t0.elapsed().as_secs_f64() * 1e3 / iters as f64;
    let cfg = m.config();
    let weight_bytes = (cfg.num_parameters() * m.dtype().size_in_bytes()) as u64;
    let kv_bytes = (2
        * cfg.num_layers
        * cfg.num_kv_heads
        * cfg.head_dim
        * m.dtype().size_in_bytes()
        * context
        * batch) as u64;
    let bytes = weight_bytes + kv_bytes;
    Ok(DecodeStepRow {
        batch,
        context,
        step_ms,
        bytes,
        floor_ms: bytes as f64 / (copy_gbps * 1e9) * 1e3,
    })
}

/// What a mixture-of-experts decode step must read: the experts one token uses, and the whole
/// step's bytes with the experts a batch is expected to touch.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MoeStepBytes {
    /// The `k` chosen experts of every sparse layer, for one token.
    pub active_expert_bytes_per_token: u64,
    /// Expected distinct experts per sparse layer for the batch, under uniform routing:
    /// `E · (1 - (1 - k/E)^batch)`.
    pub expected_experts_per_layer: f64,
    /// Everything but the experts (attention, norms, routers, dense layers, the LM head, the
    /// batch's embedding rows) + the expected experts + the K/V of `context` tokens per sequence.
    pub step_bytes: u64,
}

/// The bytes of one decode step of a mixture-of-experts `config` at `batch` and `context`;
/// `None` for a dense model.
pub fn moe_step_bytes(
    config: &crate::model::ModelConfig,
    dtype_bytes: usize,
    batch: usize,
    context: usize,
) -> Option<MoeStepBytes> {
    let moe = config.moe.as_ref()?;
    let (h, e, k) = (
        config.hidden_size,
        moe.num_experts as f64,
        moe.experts_per_token,
    );
    let expert_params = 3 * h * moe.expert_intermediate_size;
    let sparse_layers = (0..config.num_layers).filter(|&l| moe.is_sparse(l)).count();
    let all_experts = sparse_layers * moe.num_experts * expert_params;
    // An untied embedding table is not read, only the batch's rows of it.
    let embed = config.vocab_size * h;
    let unread_embed = if config.tie_word_embeddings {
        0
    } else {
        embed - batch.min(config.vocab_size) * h
    };
    let other = config.num_parameters() - all_experts - unread_embed;
    let expected = e * (1.0 - (1.0 - k as f64 / e).powi(batch as i32));
    let experts = sparse_layers as f64 * expected * expert_params as f64;
    let kv = 2 * config.num_layers * config.num_kv_heads * config.head_dim * context * batch;
    Some(MoeStepBytes {
        active_expert_bytes_per_token: (sparse_layers * k * expert_params * dtype_bytes) as u64,
        expected_experts_per_layer: expected,
        step_bytes: ((other + kv) as f64 * dtype_bytes as f64 + experts * dtype_bytes as f64)
            as u64,
    })
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PrefillRow {
    pub chunk: usize,
    pub ms: f64,
    pub tflops: f64,
}

/// One prefill chunk of `chunk` tokens from position 0; FLOPs = 2·params·tokens (matmuls) plus
/// causal attention 2·2·layers·heads·head_dim·tokens²/2.
pub fn prefill_throughput(m: &DecoderModel, chunk: usize, iters: usize) -> Result<PrefillRow> {
    let device = m.device().clone();
    let bs = 16;
    let blocks = chunk.div_ceil(bs);
    let mut kv =
        KvCache::new(m.kv_cache_layout(bs), blocks, &device).map_err(candle_core::Error::wrap)?;
    let table: Vec<u32> = (0..blocks as u32).collect();
    let vocab = m.config().vocab_size as u32;
    let toks: Vec<u32> = (0..chunk as u32).map(|i| (i * 7919 + 17) % vocab).collect();
    let c = [SequenceChunk {
        tokens: &toks,
        num_cached: 0,
        block_table: &table,
        num_logits: 1,
    }];
    let fb = ForwardBatch::from_chunks(bs, &c, &device).map_err(candle_core::Error::wrap)?;
    m.forward(&fb, &mut kv).map_err(candle_core::Error::wrap)?;
    device.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        m.forward(&fb, &mut kv).map_err(candle_core::Error::wrap)?;
    }
    device.synchronize()?;
    let secs = t0.elapsed().as_secs_f64() / iters as f64;
    let cfg = m.config();
    let t = chunk as f64;
    let flops = 2.0 * cfg.num_parameters() as f64 * t
        + 2.0 * cfg.num_layers as f64 * cfg.num_heads as f64 * cfg.head_dim as f64 * t * t;
    Ok(PrefillRow {
        chunk,
        ms: secs * 1e3,
        tflops: flops / secs / 1e12,
    })
}

/// A square bf16 (GPU) or f32 (CPU) matmul through candle (cuBLAS on CUDA): the arithmetic ceiling.
pub fn gemm_tflops(device: &Device, n: usize, iters: usize) -> Result<f64> {
    let dtype = if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    };
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let _ = a.matmul(&b)?;
    device.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        let _ = a.matmul(&b)?;
    }
    device.synchronize()?;
    let secs = t0.elapsed().as_secs_f64() / iters as f64;
    Ok(2.0 * (n as f64).powi(3) / secs / 1e12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synthetic_config;

    #[test]
    fn moe_bytes_of_qwen3_30b_a3b() {
        let config = synthetic_config("qwen3-30b-a3b").unwrap();
        assert!(moe_step_bytes(&synthetic_config("tiny").unwrap(), 2, 1, 0).is_none());
        let one = moe_step_bytes(&config, 2, 1, 0).unwrap();
        // 48 layers · 8 experts · 3 · 2048 · 768 bf16 weights.
        assert_eq!(
            one.active_expert_bytes_per_token,
            48 * 8 * 3 * 2048 * 768 * 2
        );
        assert!((one.expected_experts_per_layer - 8.0).abs() < 1e-9);
        // The published "A3B": about 3.3 B parameters read per token.
        let params = one.step_bytes as f64 / 2.0 / 1e9;
        assert!((3.0..3.6).contains(&params), "{params} B active parameters");
        let wide = moe_step_bytes(&config, 2, 32, 0).unwrap();
        assert!(wide.expected_experts_per_layer > 110.0 && wide.expected_experts_per_layer < 128.0);
        assert!(wide.step_bytes > 5 * one.step_bytes);
    }
}
