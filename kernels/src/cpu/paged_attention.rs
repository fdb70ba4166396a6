//! The readable paged attention (the oracle) and `reshape_and_cache` on the CPU.
//!
//! Straight loops in f32 over each (token, head): scores over the query's visible keys (causal,
//! within the sliding window if any), soft-capped if configured, max-subtracted softmax, then
//! the weighted sum of V. Everything faster (the fast CPU path, the CUDA kernels) is tested
//! against this. Queries and the cache may differ in dtype (f32 activations over an f16 cache):
//! both are widened to f32 for the math, so any pair of f32, f16, bf16 works.

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
    let cap = num_blocks * block_size;
    let slots = &meta.slot_mapping;
    if let Some(&bad) = slots.iter().find(|&&slot| slot as usize >= cap) {
        bail!("slot {bad} outside a cache of {cap} slots");
    }
    // Row t of the new K/V goes to slot slots[t] of the cache, converted by `put`.
    fn scatter<S, D>(
        dst: &mut [D],
        src: &[S],
        slots: &[u32],
        row: usize,
        put: impl Fn(&[S], &mut [D]),
    ) {
        for (t, &slot) in slots.iter().enumerate() {
            let slot = slot as usize;
            put(
                &src[t * row..(t + 1) * row],
                &mut dst[slot * row..(slot + 1) * row],
            );
        }
    }
    // Any other pair of float dtypes: through f64, which holds every f32, f16 and bf16 exactly,
    // so the one rounding is `from_f64`'s (to nearest, ties to even).
    fn convert<S: WithDType, D: WithDType>(src: &[S], dst: &mut [D]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = D::from_f64(s.to_f64());
        }
    }
    macro_rules! same {
        ($d:expr, $s:expr) => {
            scatter(&mut $d[c0..], &$s[n0..], slots, row, |s, d| {
                d.copy_from_slice(s)
            })
        };
    }
    macro_rules! converted {
        ($d:expr, $s:expr) => {
            scatter(&mut $d[c0..], &$s[n0..], slots, row, convert)
        };
    }
    match (cache, new) {
        (CpuStorage::F32(d), CpuStorage::F32(s)) => same!(d, s),
        (CpuStorage::F16(d), CpuStorage::F16(s)) => same!(d, s),
        (CpuStorage::BF16(d), CpuStorage::BF16(s)) => same!(d, s),
        // The engine's CPU default: f32 activations into an f16 cache, with F16C where present.
        (CpuStorage::F16(d), CpuStorage::F32(s)) => {
            let isa = crate::quant::Isa::detect();
            scatter(&mut d[c0..], &s[n0..], slots, row, |s, d| {
                super::narrow_f32_to_f16(s, d, isa)
            })
        }
        (CpuStorage::F32(d), CpuStorage::F16(s)) => converted!(d, s),
        (CpuStorage::F32(d), CpuStorage::BF16(s)) => converted!(d, s),
        (CpuStorage::F16(d), CpuStorage::BF16(s)) => converted!(d, s),
        (CpuStorage::BF16(d), CpuStorage::F32(s)) => converted!(d, s),
        (CpuStorage::BF16(d), CpuStorage::F16(s)) => converted!(d, s),
        (d, s) => bail!(
            "reshape_and_cache: cache {:?} and new K/V {:?} must be f32, f16 or bf16",
            d.dtype(),
            s.dtype()
        ),
    }
    Ok(())
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
            let out = attend::<$ty, _>(
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
    // The query's dtype (also the output's) by the caches' shared dtype.
    macro_rules! by_cache {
        ($q:expr, $variant:ident, $ty:ty) => {
            match (k, v) {
                (CpuStorage::F32(k), CpuStorage::F32(v)) => run!($q, k, v, $variant, $ty),
                (CpuStorage::F16(k), CpuStorage::F16(v)) => run!($q, k, v, $variant, $ty),
                (CpuStorage::BF16(k), CpuStorage::BF16(v)) => run!($q, k, v, $variant, $ty),
                _ => bail!("paged_attention: k and v caches must share one of f32, f16, bf16"),
            }
        };
    }
    match q {
        CpuStorage::F32(q) => by_cache!(q, F32, f32),
        CpuStorage::F16(q) => by_cache!(q, F16, f16),
        CpuStorage::BF16(q) => by_cache!(q, BF16, bf16),
        _ => bail!("paged_attention: the query must be f32, f16 or bf16"),
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
fn attend<T: WithDType + Send + Sync, C: WithDType + Send + Sync>(
    q: &[T],
    k: &[C],
    v: &[C],
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
