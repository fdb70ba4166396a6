//! The readable paged attention (the oracle) and `reshape_and_cache` on the CPU.
//!
//! Straight loops in f32 over each (token, head): scores over the query's visible keys (causal,
//! within the sliding window if any), soft-capped if configured, max-subtracted softmax, then
//! the weighted sum of V. Everything faster (the fast CPU path, the CUDA kernels) is tested
//! against this.

use crate::{AttentionMetadata, AttentionParams};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Shape, WithDType, bail};
use half::{bf16, f16};
use rayon::prelude::*;

/// The contiguous element range of a tensor's storage, or an error for strided views.
fn contiguous_range(l: &Layout, what: &str) -> Result<(usize, usize)> {
    match l.contiguous_offsets() {
        Some(r) => Ok(r),
        None => bail!("{what} must be contiguous"),
    }
}

fn cache_dims(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    match l.shape().dims() {
        &[nb, bs, h, d] => Ok((nb, bs, h, d)),
        d => bail!("KV cache must be [num_blocks, block_size, kv_heads, head_dim], got {d:?}"),
    }
}

pub(crate) fn reshape_and_cache(
    cache: &mut CpuStorage,
    cl: &Layout,
    new: &CpuStorage,
    nl: &Layout,
    meta: &AttentionMetadata,
) -> Result<()> {
    let (num_blocks, block_size, kv_heads, head_dim) = cache_dims(cl)?;
    let row = kv_heads * head_dim;
    if nl.shape().elem_count() != meta.num_tokens() * row || block_size != meta.block_size {
        bail!(
            "reshape_and_cache: new K/V {:?} does not fit cache {:?}",
            nl.shape(),
            cl.shape()
        );
    }
    let (c0, _) = contiguous_range(cl, "KV cache")?;
    let (n0, _) = contiguous_range(nl, "new K/V")?;
    fn copy<T: Copy>(
        dst: &mut [T],
        src: &[T],
        slots: &[u32],
        row: usize,
        cap: usize,
    ) -> Result<()> {
        for (t, &slot) in slots.iter().enumerate() {
            let slot = slot as usize;
            if slot >= cap {
                bail!("slot {slot} outside a cache of {cap} slots");
            }
            dst[slot * row..(slot + 1) * row].copy_from_slice(&src[t * row..(t + 1) * row]);
        }
        Ok(())
    }
    let cap = num_blocks * block_size;
    match (cache, new) {
        (CpuStorage::F32(d), CpuStorage::F32(s)) => {
            copy(&mut d[c0..], &s[n0..], &meta.slot_mapping, row, cap)
        }
        (CpuStorage::F16(d), CpuStorage::F16(s)) => {
            copy(&mut d[c0..], &s[n0..], &meta.slot_mapping, row, cap)
        }
        (CpuStorage::BF16(d), CpuStorage::BF16(s)) => {
            copy(&mut d[c0..], &s[n0..], &meta.slot_mapping, row, cap)
        }
        (d, s) => bail!(
            "reshape_and_cache: cache {:?} and new K/V {:?} differ in dtype",
            d.dtype(),
            s.dtype()
        ),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn paged_attention(
    q: &CpuStorage,
    ql: &Layout,
    k: &CpuStorage,
    kl: &Layout,
    v: &CpuStorage,
    vl: &Layout,
    meta: &AttentionMetadata,
    params: &AttentionParams,
) -> Result<(CpuStorage, Shape)> {
    let (t, num_heads, head_dim) = match ql.shape().dims() {
        &[t, h, d] => (t, h, d),
        d => bail!("query must be [tokens, heads, head_dim], got {d:?}"),
    };
    let (_, block_size, kv_heads, kd) = cache_dims(kl)?;
    if kd != head_dim
        || kl.shape() != vl.shape()
        || t != meta.num_tokens()
        || block_size != meta.block_size
    {
        bail!(
            "paged_attention: q {:?}, k {:?}, v {:?} disagree",
            ql.shape(),
            kl.shape(),
            vl.shape()
        );
    }
    if num_heads % kv_heads != 0 {
        bail!("paged_attention: {num_heads} query heads not a multiple of {kv_heads} KV heads");
    }
    let shape = Shape::from((t, num_heads, head_dim));
    let dims = Dims {
        num_heads,
        kv_heads,
        head_dim,
        block_size,
    };
    macro_rules! run {
        ($q:expr, $k:expr, $v:expr, $variant:ident, $ty:ty) => {{
            let out = attend::<$ty>(
                &$q[contiguous_range(ql, "query")?.0..],
                &$k[contiguous_range(kl, "key cache")?.0..],
                &$v[contiguous_range(vl, "value cache")?.0..],
                meta,
                dims,
                params,
            );
            Ok((CpuStorage::$variant(out), shape))
        }};
    }
    match (q, k, v) {
        (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => run!(q, k, v, F32, f32),
        (CpuStorage::F16(q), CpuStorage::F16(k), CpuStorage::F16(v)) => run!(q, k, v, F16, f16),
        (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => {
            run!(q, k, v, BF16, bf16)
        }
        _ => bail!("paged_attention: q, k and v must share one of f32, f16, bf16"),
    }
}

#[derive(Clone, Copy)]
struct Dims {
    num_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
}

/// One output row per (token, head): softmax(logit(q·K^T)) · V over the query's visible keys
/// (`params.visible_keys`), max-subtracted so long contexts stay exact in f32.
fn attend<T: WithDType + Send + Sync>(
    q: &[T],
    k: &[T],
    v: &[T],
    meta: &AttentionMetadata,
    d: Dims,
    params: &AttentionParams,
) -> Vec<T> {
    let group = d.num_heads / d.kv_heads;
    let row_stride = d.kv_heads * d.head_dim;
    let block_stride = d.block_size * row_stride;
    // (sequence, position) of every batch token.
    let mut owners = Vec::with_capacity(meta.num_tokens());
    for s in 0..meta.num_seqs() {
        let q_len = (meta.query_start_loc[s + 1] - meta.query_start_loc[s]) as usize;
        let seq_len = meta.seq_lens[s] as usize;
        owners.extend((seq_len - q_len..seq_len).map(|p| (s, p)));
    }
    let mut out = vec![T::zero(); meta.num_tokens() * d.num_heads * d.head_dim];
    out.par_chunks_mut(d.num_heads * d.head_dim)
        .enumerate()
        .for_each(|(tok, out_tok)| {
            let (s, pos) = owners[tok];
            let table = &meta.block_tables[s];
            // Keys outside the window are skipped, not masked: they are never read.
            let keys = params.visible_keys(pos);
            let mut scores = vec![0f32; keys.len()];
            let mut acc = vec![0f32; d.head_dim];
            for h in 0..d.num_heads {
                let kvh = h / group;
                let qrow = &q[(tok * d.num_heads + h) * d.head_dim..][..d.head_dim];
                let qf: Vec<f32> = qrow.iter().map(|x| x.to_f64() as f32).collect();
                let mut max = f32::NEG_INFINITY;
                for (p, score) in keys.clone().zip(scores.iter_mut()) {
                    let base = table[p / d.block_size] as usize * block_stride
                        + (p % d.block_size) * row_stride
                        + kvh * d.head_dim;
                    let krow = &k[base..base + d.head_dim];
                    let dot: f32 = qf
                        .iter()
                        .zip(krow)
                        .map(|(a, b)| a * b.to_f64() as f32)
                        .sum();
                    *score = params.logit(dot);
                    max = max.max(*score);
                }
                let mut denom = 0f32;
                acc.iter_mut().for_each(|a| *a = 0.0);
                for (p, score) in keys.clone().zip(&scores) {
                    let w = (score - max).exp();
                    denom += w;
                    let base = table[p / d.block_size] as usize * block_stride
                        + (p % d.block_size) * row_stride
                        + kvh * d.head_dim;
                    for (a, x) in acc.iter_mut().zip(&v[base..base + d.head_dim]) {
                        *a += w * x.to_f64() as f32;
                    }
                }
                for (o, a) in out_tok[h * d.head_dim..(h + 1) * d.head_dim]
                    .iter_mut()
                    .zip(&acc)
                {
                    *o = T::from_f64((a / denom) as f64);
                }
            }
        });
    out
}
