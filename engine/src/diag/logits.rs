//! Logits of one model on two devices (or against a recorded reference), through the same
//! varlen paged forward the server runs.

use crate::kv_cache::KvCache;
use crate::model::{DecoderModel, ForwardBatch, SequenceChunk};
use candle_core::{DType, Device, Result, Tensor};

/// Runs a fixed mixed batch (three sequences: prefill chunks split at odd boundaries, then
/// decodes) on `a` and `b` and returns the largest relative L2 error of the logits rows.
pub fn compare_devices(a: &DecoderModel, b: &DecoderModel, block_size: usize) -> Result<f64> {
    let vocab = a.config().vocab_size as u32;
    let prompts: Vec<Vec<u32>> = [29usize, 7, 61]
        .iter()
        .enumerate()
        .map(|(s, &n)| {
            (0..n as u32)
                .map(|i| (i * 31 + s as u32 * 7 + 1) % vocab)
                .collect()
        })
        .collect();
    let run = |m: &DecoderModel| -> Result<Vec<Vec<f32>>> {
        let layout = m.kv_cache_layout(block_size);
        let mut kv = KvCache::new(layout, 64, m.device()).map_err(candle_core::Error::wrap)?;
        // Block tables interleaved across sequences so pages are not contiguous.
        let tables: Vec<Vec<u32>> = (0..3u32)
            .map(|s| (0..16u32).map(|i| i * 3 + s).collect())
            .collect();
        let mut rows = Vec::new();
        // Step 1: first chunks of every prompt (13, 7, 20 tokens); step 2: the rest; step 3: decodes.
        let cuts = [(13usize, 7usize, 20usize), (29, 7, 61)];
        let mut done = [0usize; 3];
        for (step, cut) in cuts.iter().enumerate() {
            let ends = [cut.0, cut.1, cut.2];
            let chunks: Vec<SequenceChunk<'_>> = (0..3)
                .filter(|&s| ends[s] > done[s])
                .map(|s| SequenceChunk {
                    tokens: &prompts[s][done[s]..ends[s]],
                    num_cached: done[s],
                    block_table: &tables[s],
                    num_logits: usize::from(ends[s] == prompts[s].len() || step == 0),
                })
                .collect();
            let batch = ForwardBatch::from_chunks(block_size, &chunks, m.device())
                .map_err(candle_core::Error::wrap)?;
            let logits = m
                .forward(&batch, &mut kv)
                .map_err(candle_core::Error::wrap)?;
            rows.extend(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?);
            done = ends;
        }
        let decode_tokens: Vec<[u32; 1]> = (0..3u32).map(|s| [(s * 5 + 2) % vocab]).collect();
        let chunks: Vec<SequenceChunk<'_>> = (0..3)
            .map(|s| SequenceChunk {
                tokens: &decode_tokens[s],
                num_cached: done[s],
                block_table: &tables[s],
                num_logits: 1,
            })
            .collect();
        let batch = ForwardBatch::from_chunks(block_size, &chunks, m.device())
            .map_err(candle_core::Error::wrap)?;
        rows.extend(
            m.forward(&batch, &mut kv)
                .map_err(candle_core::Error::wrap)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?,
        );
        Ok(rows)
    };
    let (ra, rb) = (run(a)?, run(b)?);
    Ok(ra
        .iter()
        .zip(&rb)
        .map(|(x, y)| rel_err(x, y))
        .fold(0.0, f64::max))
}

/// `||x - y|| / ||y||`.
pub fn rel_err(x: &[f32], y: &[f32]) -> f64 {
    let num: f64 = x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = y.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// The logits after a prompt and the greedy continuation, one sequence at a time.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GreedyTrace {
    pub logits_last: Vec<f32>,
    pub greedy: Vec<u32>,
}

pub fn greedy_trace(
    m: &DecoderModel,
    prompt: &[u32],
    new_tokens: usize,
    device: &Device,
) -> Result<GreedyTrace> {
    let block_size = 16;
    let total = prompt.len() + new_tokens;
    let blocks = total.div_ceil(block_size).max(1);
    let mut kv = KvCache::new(m.kv_cache_layout(block_size), blocks, device)
        .map_err(candle_core::Error::wrap)?;
    let table: Vec<u32> = (0..blocks as u32).rev().collect();
    let argmax = |t: &Tensor| -> Result<(Vec<f32>, u32)> {
        let row = t.to_dtype(DType::F32)?.squeeze(0)?.to_vec1::<f32>()?;
        let best = row
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |acc, (i, &v)| {
                if v > acc.1 { (i, v) } else { acc }
            });
        Ok((row, best.0 as u32))
    };
    let chunk = [SequenceChunk {
        tokens: prompt,
        num_cached: 0,
        block_table: &table,
        num_logits: 1,
    }];
    let batch =
        ForwardBatch::from_chunks(block_size, &chunk, device).map_err(candle_core::Error::wrap)?;
    let (logits_last, mut next) = argmax(
        &m.forward(&batch, &mut kv)
            .map_err(candle_core::Error::wrap)?,
    )?;
    let mut greedy = vec![next];
    let mut pos = prompt.len();
    while greedy.len() < new_tokens {
        let tok = [next];
        let chunk = [SequenceChunk {
            tokens: &tok,
            num_cached: pos,
            block_table: &table,
            num_logits: 1,
        }];
        let batch = ForwardBatch::from_chunks(block_size, &chunk, device)
            .map_err(candle_core::Error::wrap)?;
        next = argmax(
            &m.forward(&batch, &mut kv)
                .map_err(candle_core::Error::wrap)?,
        )?
        .1;
        greedy.push(next);
        pos += 1;
    }
    Ok(GreedyTrace {
        logits_last,
        greedy,
    })
}
