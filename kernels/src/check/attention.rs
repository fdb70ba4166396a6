//! Paged attention and `reshape_and_cache` against a naive dense causal attention.
//!
//! Each sequence gets dense random K/V `[seq_len, kv_heads, head_dim]`. The part before this
//! step's queries is scattered into a paged cache (whose other slots hold random garbage) through
//! a shuffled block table; this step's rows go through [`crate::reshape_and_cache`]. The
//! reference never looks at the cache: it is softmax(softcap(q·Kᵀ·scale) + causal/window mask)·V
//! on the dense tensors, with candle's CPU matmul, tanh and softmax.

use super::{CheckRow, normal_vec, rel_err, seeded};
use crate::{AttentionMetadata, AttentionParams, paged_attention_with, reshape_and_cache};
use candle_core::{DType, Device, Result, Tensor};
use rand::seq::SliceRandom;

/// One attention check: head layout, cache block size, per sequence `(q_len, seq_len)`, and the
/// sliding window and soft-cap of [`AttentionParams`] (the scale is always 1/sqrt(head_dim)).
#[derive(Clone, Debug)]
pub struct AttentionCase {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub seqs: Vec<(usize, usize)>,
    pub window: Option<usize>,
    pub soft_cap: Option<f32>,
}

impl AttentionCase {
    pub fn new(
        heads: (usize, usize),
        head_dim: usize,
        block_size: usize,
        seqs: &[(usize, usize)],
    ) -> Self {
        AttentionCase {
            num_heads: heads.0,
            num_kv_heads: heads.1,
            head_dim,
            block_size,
            seqs: seqs.to_vec(),
            window: None,
            soft_cap: None,
        }
    }

    pub fn with_window(mut self, w: usize) -> Self {
        self.window = Some(w);
        self
    }

    pub fn with_cap(mut self, cap: f32) -> Self {
        self.soft_cap = Some(cap);
        self
    }

    /// The kernel parameters of this case.
    pub fn params(&self) -> AttentionParams {
        AttentionParams {
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            sliding_window: self.window,
            soft_cap: self.soft_cap,
        }
    }

    /// A short human-readable description for report rows.
    pub fn describe(&self) -> String {
        let kind = match (
            self.seqs.iter().all(|s| s.0 == 1),
            self.seqs.iter().all(|s| s.0 > 1),
        ) {
            (true, _) => "decode",
            (_, true) => "prefill",
            _ => "mixed",
        };
        let mut seqs: Vec<String> = self
            .seqs
            .iter()
            .take(6)
            .map(|(q, l)| format!("{q}/{l}"))
            .collect();
        if self.seqs.len() > 6 {
            seqs.push(format!("+{} more", self.seqs.len() - 6));
        }
        let mut extra = String::new();
        if let Some(w) = self.window {
            extra += &format!(" window {w}");
        }
        if let Some(c) = self.soft_cap {
            extra += &format!(" cap {c}");
        }
        format!(
            "{kind} Hq{} Hkv{} D{} BS{} q/ctx [{}]{extra}",
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.block_size,
            seqs.join(" ")
        )
    }
}

/// The attention shapes checked: every GQA ratio 1/2/3/4/8, head dims 64 and 128, block sizes
/// 8/16/32, ragged decodes, prefill chunks starting mid-sequence (including chunks longer than
/// one kernel tile), mixes of both; sliding windows smaller than, equal to and larger than the
/// contexts (down to 1, and not multiples of the block size), soft-caps small enough to bend
/// the logits, head dim 256 (Gemma); `quick == false` adds long contexts up to 32k tokens.
pub fn attention_cases(quick: bool) -> Vec<AttentionCase> {
    let mut cases = vec![
        AttentionCase::new((8, 8), 64, 16, &[(1, 1), (1, 17), (1, 300)]),
        AttentionCase::new((8, 2), 128, 8, &[(5, 40), (1, 33), (70, 70), (1, 129)]),
        AttentionCase::new((9, 3), 64, 32, &[(130, 200), (1, 5)]),
        AttentionCase::new((16, 2), 128, 16, &[(1, 1000), (1, 513), (1, 2)]),
        AttentionCase::new((8, 4), 128, 32, &[(64, 64), (17, 100), (3, 3)]),
        AttentionCase::new((4, 1), 64, 8, &[(1, 700), (2, 9)]),
        // Sliding windows (Mistral, Gemma 2/3 local layers) and soft-caps (Gemma 2).
        AttentionCase::new((8, 2), 128, 16, &[(1, 300), (1, 17), (1, 64), (1, 65)]).with_window(64),
        AttentionCase::new((9, 3), 64, 8, &[(130, 200), (1, 5), (1, 100), (40, 41)])
            .with_window(37),
        AttentionCase::new((8, 4), 128, 32, &[(70, 70), (5, 40), (1, 71)]).with_window(70),
        AttentionCase::new((8, 8), 64, 16, &[(100, 1000), (1, 1000), (3, 3)])
            .with_window(129)
            .with_cap(2.0),
        AttentionCase::new((4, 1), 64, 8, &[(33, 97), (1, 2), (1, 50)]).with_window(1),
        AttentionCase::new((16, 2), 128, 16, &[(1, 513), (64, 64), (9, 30)]).with_cap(1.5),
        AttentionCase::new((8, 4), 256, 16, &[(20, 50), (1, 40), (1, 1)])
            .with_window(16)
            .with_cap(5.0),
    ];
    if !quick {
        let llama = (32, 8);
        cases.extend([
            AttentionCase::new(llama, 128, 16, &[(1, 4096), (1, 4000), (1, 1), (1, 2500)]),
            AttentionCase::new(llama, 128, 16, &[(1, 16384), (1, 9000)]),
            AttentionCase::new(llama, 128, 16, &[(1, 32768)]),
            AttentionCase::new((9, 3), 64, 16, &[(1, 32768), (1, 20000)]),
            AttentionCase::new(llama, 128, 16, &[(512, 3584), (1, 2000), (200, 200)]),
            AttentionCase::new((8, 8), 64, 32, &[(256, 32768), (1, 31000)]),
            AttentionCase::new(
                (8, 4),
                64,
                8,
                &[
                    (1, 90),
                    (33, 97),
                    (1, 1),
                    (1, 2048),
                    (9, 9),
                    (1, 77),
                    (100, 1100),
                    (1, 5),
                ],
            ),
            AttentionCase::new((16, 16), 128, 32, &[(1, 8192), (1, 64), (1, 65), (1, 8191)]),
            // Mistral-like (window 4096) and Gemma-2-like (window 4096, cap 50, head dim 256).
            AttentionCase::new(
                llama,
                128,
                16,
                &[(1, 32768), (512, 8192), (1, 4096), (1, 4097)],
            )
            .with_window(4096),
            AttentionCase::new((8, 4), 256, 16, &[(1, 9000), (300, 4500), (1, 100)])
                .with_window(4096)
                .with_cap(50.0),
        ]);
    }
    cases
}

/// Rounds f32 values through `dtype`, so reference and kernel see bit-identical inputs.
fn round_to(values: Vec<f32>, dtype: DType) -> Result<Vec<f32>> {
    let n = values.len();
    Tensor::from_vec(values, n, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_dtype(DType::F32)?
        .to_vec1()
}

/// Runs `reshape_and_cache` then `paged_attention` on `device` in `dtype`; returns one row for
/// each (the cache comparison is exact, the attention one within tolerance).
pub fn check_attention(
    device: &Device,
    dtype: DType,
    case: &AttentionCase,
    seed: u64,
) -> Result<Vec<CheckRow>> {
    let mut rng = seeded(seed);
    let (hq, hkv, d, bs) = (
        case.num_heads,
        case.num_kv_heads,
        case.head_dim,
        case.block_size,
    );
    let row = hkv * d;
    let needed: Vec<usize> = case.seqs.iter().map(|&(_, l)| l.div_ceil(bs)).collect();
    let num_blocks = needed.iter().sum::<usize>() + 3;
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    ids.shuffle(&mut rng);
    let mut cache_k = round_to(normal_vec(&mut rng, num_blocks * bs * row), dtype)?;
    let mut cache_v = round_to(normal_vec(&mut rng, num_blocks * bs * row), dtype)?;
    let tokens: usize = case.seqs.iter().map(|s| s.0).sum();
    let q = round_to(normal_vec(&mut rng, tokens * hq * d), dtype)?;
    let (mut new_k, mut new_v) = (Vec::new(), Vec::new());
    let mut seqs = Vec::new();
    let mut dense = Vec::new();
    let mut next_id = 0;
    for (s, &(q_len, seq_len)) in case.seqs.iter().enumerate() {
        let table = ids[next_id..next_id + needed[s]].to_vec();
        next_id += needed[s];
        let k = round_to(normal_vec(&mut rng, seq_len * row), dtype)?;
        let v = round_to(normal_vec(&mut rng, seq_len * row), dtype)?;
        for p in 0..seq_len {
            let (src, slot) = (p * row, (table[p / bs] as usize * bs + p % bs) * row);
            if p < seq_len - q_len {
                cache_k[slot..slot + row].copy_from_slice(&k[src..src + row]);
                cache_v[slot..slot + row].copy_from_slice(&v[src..src + row]);
            } else {
                new_k.extend_from_slice(&k[src..src + row]);
                new_v.extend_from_slice(&v[src..src + row]);
            }
        }
        seqs.push((q_len, seq_len, table));
        dense.push((k, v));
    }
    let upload = |data: &[f32], dims: &[usize]| -> Result<Tensor> {
        Tensor::from_slice(data, dims, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    };
    let cache_dims = [num_blocks, bs, hkv, d];
    let key_cache = upload(&cache_k, &cache_dims)?;
    let value_cache = upload(&cache_v, &cache_dims)?;
    let meta = AttentionMetadata::new(bs, &seqs, device)?;
    reshape_and_cache(
        &upload(&new_k, &[tokens, hkv, d])?,
        &upload(&new_v, &[tokens, hkv, d])?,
        &key_cache,
        &value_cache,
        &meta,
    )?;
    let params = case.params();
    let out = paged_attention_with(
        &upload(&q, &[tokens, hq, d])?,
        &key_cache,
        &value_cache,
        &meta,
        &params,
    )?;

    // Expected cache: the scattered prefix plus this step's rows at their slots.
    for (t, &slot) in meta.slot_mapping.iter().enumerate() {
        let slot = slot as usize * row;
        cache_k[slot..slot + row].copy_from_slice(&new_k[t * row..(t + 1) * row]);
        cache_v[slot..slot + row].copy_from_slice(&new_v[t * row..(t + 1) * row]);
    }
    let cache_err = rel_err(
        &key_cache,
        &Tensor::from_slice(&cache_k, &cache_dims, &Device::Cpu)?,
    )?
    .max(rel_err(
        &value_cache,
        &Tensor::from_slice(&cache_v, &cache_dims, &Device::Cpu)?,
    )?);

    let mut reference = Vec::with_capacity(tokens * hq * d);
    let mut q_start = 0;
    for (&(q_len, seq_len), (k, v)) in case.seqs.iter().zip(&dense) {
        let q_rows = &q[q_start * hq * d..(q_start + q_len) * hq * d];
        reference.extend(naive_attention(
            q_rows,
            k,
            v,
            (q_len, seq_len),
            (hq, hkv, d),
            &params,
        )?);
        q_start += q_len;
    }
    let reference = Tensor::from_vec(reference, (tokens, hq, d), &Device::Cpu)?;
    let shape = case.describe();
    Ok(vec![
        CheckRow::new("reshape_and_cache", dtype, shape.clone(), cache_err),
        CheckRow::new("paged_attention", dtype, shape, rel_err(&out, &reference)?),
    ])
}

/// Dense causal attention of one sequence: query `i` sits at position `pos = seq_len - q_len + i`
/// and sees keys `j <= pos` with `pos - j < window`; logits are `scale * q·k`, soft-capped as
/// `cap * tanh(logit / cap)`. `q`: `[q_len, hq, d]`, `k`/`v`: `[seq_len, hkv, d]`.
fn naive_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (q_len, seq_len): (usize, usize),
    (hq, hkv, d): (usize, usize, usize),
    params: &AttentionParams,
) -> Result<Vec<f32>> {
    let cpu = Device::Cpu;
    let group = hq / hkv;
    let q = Tensor::from_slice(q, (q_len, hq, d), &cpu)?.transpose(0, 1)?;
    // [seq_len, hkv, d] -> [hq, seq_len, d], query head h reading KV head h / group.
    let per_query_head = |x: &[f32]| -> Result<Tensor> {
        Tensor::from_slice(x, (seq_len, hkv, d), &cpu)?
            .transpose(0, 1)?
            .unsqueeze(1)?
            .expand((hkv, group, seq_len, d))?
            .reshape((hq, seq_len, d))
    };
    let (k, v) = (per_query_head(k)?, per_query_head(v)?);
    let mut scores = (q.contiguous()?.matmul(&k.t()?)? * params.scale as f64)?;
    if let Some(cap) = params.soft_cap {
        scores = ((scores / cap as f64)?.tanh()? * cap as f64)?;
    }
    let first = seq_len - q_len;
    let window = params.sliding_window.unwrap_or(usize::MAX);
    let mask: Vec<f32> = (0..q_len)
        .flat_map(|i| {
            let pos = first + i;
            (0..seq_len).map(move |j| {
                if j <= pos && pos - j < window {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (1, q_len, seq_len), &cpu)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
    probs
        .matmul(&v)?
        .transpose(0, 1)?
        .contiguous()?
        .flatten_all()?
        .to_vec1()
}
