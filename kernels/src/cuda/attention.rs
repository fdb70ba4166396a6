//! Paged attention and `reshape_and_cache` on CUDA.
//!
//! Dispatch of [`paged_attention`]:
//! - all-decode batch: the decode kernel (`attention_decode.cu`) over every token, with
//!   split-KV when the grid would not fill the GPU;
//! - batch with prefill chunks, f16/bf16, head dim 64 or 128: the decode kernel over the decode
//!   tokens and the tensor-core prefill kernel (`attention_prefill.cu`) over the prefill tiles,
//!   writing disjoint rows of one output;
//! - otherwise (f32, head dim 256): the decode kernel over every token, which is exact for any
//!   query position, only slower for long chunks.
//!
//! Both kernels take the sliding window (0 = none) and the soft-cap in the base-2 score domain
//! (`cap * log2(e)`, 0 = off) of [`AttentionParams`]; with a window they start at its first key,
//! and the split-KV plan covers the window, not the whole context.

use super::{DeviceU32, KernelType, aligned16, load, multiprocessors, view};
use crate::{AttentionMetadata, AttentionParams};
use candle_core::cuda_backend::CudaStorageSlice as S;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape, bail};
use half::{bf16, f16};

const DECODE_THREADS: u32 = 128;
const PREFILL_THREADS: u32 = 128;

fn cache_dims(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    match l.shape().dims() {
        &[nb, bs, h, d] => Ok((nb, bs, h, d)),
        d => bail!("KV cache must be [num_blocks, block_size, kv_heads, head_dim], got {d:?}"),
    }
}

pub(crate) fn reshape_and_cache(
    cache: &mut CudaStorage,
    cl: &Layout,
    new: &CudaStorage,
    nl: &Layout,
    meta: &AttentionMetadata,
) -> Result<()> {
    let (_, block_size, kv_heads, head_dim) = cache_dims(cl)?;
    let row = kv_heads * head_dim;
    let tokens = meta.num_tokens();
    if nl.shape().elem_count() != tokens * row || block_size != meta.block_size {
        bail!(
            "reshape_and_cache: new K/V {:?} does not fit cache {:?}",
            nl.shape(),
            cl.shape()
        );
    }
    if tokens == 0 {
        return Ok(());
    }
    let dev = cache.device.clone();
    let slots = DeviceU32::new(&meta.slot_mapping_t, "slot_mapping")?;
    let slots = slots.view()?;
    match (&mut cache.slice, &new.slice) {
        (S::F32(c), S::F32(n)) => copy_rows::<f32>(&dev, c, cl, n, nl, &slots, row, tokens),
        (S::F16(c), S::F16(n)) => copy_rows::<f16>(&dev, c, cl, n, nl, &slots, row, tokens),
        (S::BF16(c), S::BF16(n)) => copy_rows::<bf16>(&dev, c, cl, n, nl, &slots, row, tokens),
        _ => bail!("reshape_and_cache: cache and new K/V must share one of f32, f16, bf16"),
    }
}

#[allow(clippy::too_many_arguments)]
fn copy_rows<T: KernelType>(
    dev: &CudaDevice,
    cache: &mut CudaSlice<T>,
    cl: &Layout,
    new: &CudaSlice<T>,
    nl: &Layout,
    slots: &CudaView<'_, u32>,
    row: usize,
    tokens: usize,
) -> Result<()> {
    let (Some((c0, c1)), Some((n0, n1))) = (cl.contiguous_offsets(), nl.contiguous_offsets())
    else {
        bail!("reshape_and_cache: cache and new K/V must be contiguous");
    };
    let Some(mut dst) = cache.try_slice_mut(c0..c1) else {
        bail!("reshape_and_cache: cache layout runs past its storage");
    };
    let Some(src) = new.try_slice(n0..n1) else {
        bail!("reshape_and_cache: new K/V layout runs past its storage");
    };
    let size = std::mem::size_of::<T>();
    let (func, units) =
        if (row * size).is_multiple_of(16) && aligned16::<T>(cl) && aligned16::<T>(nl) {
            ("reshape_and_cache_u128", row * size / 16)
        } else if size == 4 {
            ("reshape_and_cache_u32", row)
        } else {
            ("reshape_and_cache_u16", row)
        };
    let func = load(dev, "cache", func)?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&func);
    let units = units as u32;
    b.arg(&src).arg(&mut dst).arg(slots).arg(&units);
    let cfg = LaunchConfig {
        grid_dim: (tokens as u32, 1, 1),
        block_dim: (units.clamp(32, 256).next_multiple_of(32), 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// Shapes of one paged-attention call.
#[derive(Clone, Copy)]
struct Dims {
    tokens: usize,
    num_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
}

/// [`AttentionParams`] as the kernels take them: the scale and soft-cap in the base-2 domain the
/// softmax runs in, the window as a u32 with 0 for none.
#[derive(Clone, Copy)]
struct KernelParams {
    scale_log2: f32,
    soft_cap_log2: f32,
    window: u32,
    /// Keys one query reads at most (the split-KV plan covers this many).
    max_keys: usize,
}

impl KernelParams {
    fn new(p: &AttentionParams, meta: &AttentionMetadata) -> Self {
        let log2e = std::f32::consts::LOG2_E;
        // A window wider than any u32 position is no window (and 0 was rejected by validate()).
        let window = p
            .sliding_window
            .map_or(0, |w| u32::try_from(w).unwrap_or(0));
        KernelParams {
            scale_log2: p.scale * log2e,
            soft_cap_log2: p.soft_cap.map_or(0.0, |c| c * log2e),
            window,
            max_keys: match window {
                0 => meta.max_seq_len,
                w => meta.max_seq_len.min(w as usize),
            },
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn paged_attention(
    q: &CudaStorage,
    ql: &Layout,
    k: &CudaStorage,
    kl: &Layout,
    v: &CudaStorage,
    vl: &Layout,
    meta: &AttentionMetadata,
    params: &AttentionParams,
) -> Result<(CudaStorage, Shape)> {
    let (tokens, num_heads, head_dim) = match ql.shape().dims() {
        &[t, h, d] => (t, h, d),
        d => bail!("query must be [tokens, heads, head_dim], got {d:?}"),
    };
    let (_, block_size, kv_heads, kd) = cache_dims(kl)?;
    if kd != head_dim
        || kl.shape() != vl.shape()
        || tokens != meta.num_tokens()
        || block_size != meta.block_size
        || kv_heads == 0
        || num_heads % kv_heads != 0
    {
        bail!(
            "paged_attention: q {:?}, k {:?}, v {:?} disagree",
            ql.shape(),
            kl.shape(),
            vl.shape()
        );
    }
    if !matches!(head_dim, 64 | 128 | 256) {
        bail!("paged_attention on CUDA supports head dims 64, 128 and 256, not {head_dim}");
    }
    if tokens == 0 {
        bail!("paged_attention: empty batch");
    }
    let dims = Dims {
        tokens,
        num_heads,
        kv_heads,
        head_dim,
        block_size,
    };
    let shape = Shape::from((tokens, num_heads, head_dim));
    let dev = q.device.clone();
    let kp = KernelParams::new(params, meta);
    let args = (q, ql, k, kl, v, vl);
    let out = match (&q.slice, &k.slice, &v.slice) {
        (S::F32(_), S::F32(_), S::F32(_)) => {
            CudaStorage::wrap_cuda_slice(attend::<f32>(&dev, args, meta, dims, kp)?, dev)
        }
        (S::F16(_), S::F16(_), S::F16(_)) => {
            CudaStorage::wrap_cuda_slice(attend::<f16>(&dev, args, meta, dims, kp)?, dev)
        }
        (S::BF16(_), S::BF16(_), S::BF16(_)) => {
            CudaStorage::wrap_cuda_slice(attend::<bf16>(&dev, args, meta, dims, kp)?, dev)
        }
        _ => bail!("paged_attention: q, k and v must share one of f32, f16, bf16"),
    };
    Ok((out, shape))
}

type Inputs<'a> = (
    &'a CudaStorage,
    &'a Layout,
    &'a CudaStorage,
    &'a Layout,
    &'a CudaStorage,
    &'a Layout,
);

/// The metadata tensors every attention kernel reads, as device views.
struct MetaViews<'a> {
    block_tables: CudaView<'a, u32>,
    seq_lens: CudaView<'a, u32>,
    query_start_loc: CudaView<'a, u32>,
    token_seqs: CudaView<'a, u32>,
    bt_stride: u32,
}

fn attend<T: KernelType>(
    dev: &CudaDevice,
    (q, ql, k, kl, v, vl): Inputs<'_>,
    meta: &AttentionMetadata,
    d: Dims,
    kp: KernelParams,
) -> Result<CudaSlice<T>> {
    if !(aligned16::<T>(ql) && aligned16::<T>(kl) && aligned16::<T>(vl)) {
        bail!("paged_attention: q and the caches must start on a 16-byte boundary");
    }
    let (qv, kv, vv) = (
        view::<T>(q, ql, "query")?,
        view::<T>(k, kl, "key cache")?,
        view::<T>(v, vl, "value cache")?,
    );
    let locks = [
        DeviceU32::new(&meta.block_tables_t, "block_tables")?,
        DeviceU32::new(&meta.seq_lens_t, "seq_lens")?,
        DeviceU32::new(&meta.query_start_loc_t, "query_start_loc")?,
        DeviceU32::new(&meta.token_seqs_t, "token_seqs")?,
    ];
    let mv = MetaViews {
        block_tables: locks[0].view()?,
        seq_lens: locks[1].view()?,
        query_start_loc: locks[2].view()?,
        token_seqs: locks[3].view()?,
        bt_stride: meta.max_blocks_per_seq() as u32,
    };
    // SAFETY: every output row is written by exactly one of the launches below.
    let mut out = unsafe { dev.alloc::<T>(d.tokens * d.num_heads * d.head_dim)? };
    let tensor_cores = T::DTYPE != candle_core::DType::F32 && matches!(d.head_dim, 64 | 128);
    let tiles = meta.prefill_tiles.len();
    if meta.is_all_decode() || !tensor_cores || tiles > u16::MAX as usize {
        let all = DecodeItems::AllTokens(d.tokens);
        decode::<T>(dev, &mut out, (&qv, &kv, &vv), &mv, all, d, kp)?;
        return Ok(out);
    }
    if let Some(list) = &meta.decode_tokens_t {
        let lock = DeviceU32::new(list, "decode_tokens")?;
        let items = DecodeItems::List(lock.view()?, meta.decode_tokens.len());
        decode::<T>(dev, &mut out, (&qv, &kv, &vv), &mv, items, d, kp)?;
    }
    let Some(tiles_t) = &meta.prefill_tiles_t else {
        bail!("paged_attention: a batch with prefill chunks has no prefill tiles");
    };
    let tiles_lock = DeviceU32::new(tiles_t, "prefill_tiles")?;
    let tiles_view = tiles_lock.view()?;
    let func = load(
        dev,
        "attention_prefill",
        &format!("paged_prefill_{}_d{}", T::SUFFIX, d.head_dim),
    )?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&func);
    let (hq, hkv, bs) = (d.num_heads as u32, d.kv_heads as u32, d.block_size as u32);
    b.arg(&mut out).arg(&qv).arg(&kv).arg(&vv);
    b.arg(&mv.block_tables)
        .arg(&mv.seq_lens)
        .arg(&mv.query_start_loc)
        .arg(&tiles_view);
    b.arg(&hq)
        .arg(&hkv)
        .arg(&bs)
        .arg(&mv.bt_stride)
        .arg(&kp.scale_log2)
        .arg(&kp.window)
        .arg(&kp.soft_cap_log2);
    let cfg = LaunchConfig {
        grid_dim: (hq, tiles as u32, 1),
        block_dim: (PREFILL_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }.w()?;
    Ok(out)
}

/// Which tokens the decode kernel serves: all of them (grid item = token), or a list.
enum DecodeItems<'a> {
    AllTokens(usize),
    List(CudaView<'a, u32>, usize),
}

/// Query heads per CTA: the GQA group size rounded up to an instantiated 1/2/4/8; larger groups
/// are split over several CTAs (`head_tiles`).
fn heads_per_cta(group: usize) -> usize {
    match group {
        1 => 1,
        2 => 2,
        3 | 4 => 4,
        _ => 8,
    }
}

/// Split-KV plan: `(partition_len, num_splits)`. Splits only when the grid without them would
/// leave the GPU under-filled (fewer than `ctas_per_sm` CTAs per SM) and the context is long
/// enough for the extra reduce pass to pay; partitions are at least 256 tokens.
pub(crate) fn split_plan(
    base_ctas: usize,
    max_ctx: usize,
    sms: usize,
    ctas_per_sm: usize,
) -> (u32, u32) {
    let max_ctx = max_ctx.max(1);
    let target = ctas_per_sm * sms;
    if base_ctas >= target || max_ctx <= 512 {
        return (max_ctx as u32, 1);
    }
    let want = target.div_ceil(base_ctas.max(1));
    let part = max_ctx.div_ceil(want).next_multiple_of(64).max(256);
    let splits = max_ctx.div_ceil(part);
    if splits <= 1 {
        (max_ctx as u32, 1)
    } else {
        (part as u32, splits as u32)
    }
}

/// CTAs per SM the split-KV plan aims for; `METRUM_DECODE_CTAS_PER_SM` overrides it (tuning).
fn ctas_per_sm() -> usize {
    static VALUE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *VALUE.get_or_init(|| {
        std::env::var("METRUM_DECODE_CTAS_PER_SM")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_CTAS_PER_SM)
    })
}

/// Measured on the H100 (bf16, Llama-8B heads, 4k-32k context): 4 gives the best bandwidth at
/// batch 8-32 (about 2.35 TB/s of K/V reads at batch 32), 2 is up to 15% better at batch 1.
const DEFAULT_CTAS_PER_SM: usize = 4;

#[allow(clippy::too_many_arguments)]
fn decode<T: KernelType>(
    dev: &CudaDevice,
    out: &mut CudaSlice<T>,
    (q, k, v): (&CudaView<'_, T>, &CudaView<'_, T>, &CudaView<'_, T>),
    mv: &MetaViews<'_>,
    items: DecodeItems<'_>,
    d: Dims,
    kp: KernelParams,
) -> Result<()> {
    let group = d.num_heads / d.kv_heads;
    let gmax = heads_per_cta(group);
    let head_tiles = group.div_ceil(gmax);
    let (n_items, list, use_items) = match &items {
        DecodeItems::AllTokens(n) => (*n, None, 0u32),
        DecodeItems::List(view, n) => (*n, Some(view), 1u32),
    };
    let grid_y = d.kv_heads * head_tiles;
    if grid_y > u16::MAX as usize {
        bail!(
            "paged_attention: {} KV heads exceed the CUDA grid",
            d.kv_heads
        );
    }
    // With a window, a token reads at most `window` keys however long its context: plan the
    // splits over that, so they are not spread over keys no token reads.
    let (partition_len, splits) = split_plan(
        n_items * grid_y,
        kp.max_keys,
        multiprocessors(dev),
        ctas_per_sm(),
    );
    // One allocation for both partial arrays: accumulators [n, D], then (max, sum) pairs [n, 2].
    let n_partials = n_items * d.num_heads * splits as usize;
    // SAFETY: the reduce kernel reads only the partitions the decode kernel wrote.
    let partial_buf = if splits > 1 {
        Some(unsafe { dev.alloc::<f32>(n_partials * (d.head_dim + 2))? })
    } else {
        None
    };
    let partials = partial_buf.as_ref().map(|buf| {
        let split_at = n_partials * d.head_dim;
        (buf.slice(..split_at), buf.slice(split_at..))
    });
    let null: u64 = 0;
    let (hq, hkv, bs) = (d.num_heads as u32, d.kv_heads as u32, d.block_size as u32);
    let stream = dev.cuda_stream();
    // The arguments after the tensors, shared by the decode and the reduce kernels.
    macro_rules! push_args {
        ($b:expr) => {{
            $b.arg(&mv.block_tables)
                .arg(&mv.seq_lens)
                .arg(&mv.query_start_loc)
                .arg(&mv.token_seqs);
            match list {
                Some(l) => $b.arg(l),
                None => $b.arg(&null),
            };
            $b.arg(&use_items)
                .arg(&hq)
                .arg(&hkv)
                .arg(&bs)
                .arg(&mv.bt_stride);
            $b.arg(&partition_len).arg(&splits).arg(&kp.scale_log2);
            $b.arg(&kp.window).arg(&kp.soft_cap_log2);
        }};
    }
    let name = format!("paged_decode_{}_d{}_g{gmax}", T::SUFFIX, d.head_dim);
    let func = load(dev, "attention_decode", &name)?;
    let mut b = stream.launch_builder(&func);
    b.arg(&mut *out);
    match &partials {
        Some((acc, ml)) => b.arg(acc).arg(ml),
        None => b.arg(&null).arg(&null),
    };
    b.arg(q).arg(k).arg(v);
    push_args!(b);
    let cfg = LaunchConfig {
        grid_dim: (n_items as u32, grid_y as u32, splits),
        block_dim: (DECODE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }.w()?;
    drop(b);
    if let Some((acc, ml)) = &partials {
        let name = format!("paged_decode_reduce_{}_d{}", T::SUFFIX, d.head_dim);
        let func = load(dev, "attention_decode", &name)?;
        let mut b = stream.launch_builder(&func);
        b.arg(&mut *out).arg(acc).arg(ml);
        push_args!(b);
        let cfg = LaunchConfig {
            grid_dim: (n_items as u32, hq, 1),
            block_dim: (d.head_dim as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_plan;

    #[test]
    fn split_plan_covers_the_context_and_fills_the_gpu() {
        // A full grid or a short context: one split spanning everything.
        assert_eq!(split_plan(1000, 32768, 132, 4), (32768, 1));
        assert_eq!(split_plan(8, 500, 132, 4), (500, 1));
        for (base, ctx) in [(8, 32768), (3, 4096), (64, 16384), (1, 513), (100, 100_000)] {
            let (part, splits) = split_plan(base, ctx, 132, 4);
            assert!(splits > 1, "{base} CTAs at {ctx} tokens should split");
            assert!(part >= 256 && part % 64 == 0);
            assert!(
                part as usize * splits as usize >= ctx,
                "splits must cover the context"
            );
            assert!(
                part as usize * (splits as usize - 1) < ctx,
                "no split may be empty"
            );
        }
    }
}
