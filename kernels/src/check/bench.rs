//! Achieved-bandwidth benchmarks: decode paged attention (bytes of K/V read per second) and a
//! plain device-to-device copy (the ceiling it should approach at long context).

use crate::{AttentionMetadata, paged_attention};
use candle_core::{DType, Device, Result, Tensor};
use std::time::Instant;

/// Model shape and timing parameters of [`bench_paged_attention`].
#[derive(Clone, Debug)]
pub struct BenchSpec {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub dtype: DType,
    /// Timed launches (after 3 untimed warm-up launches).
    pub iters: usize,
}

impl Default for BenchSpec {
    /// Llama-3-8B's attention (32 query heads, 8 KV heads, head dim 128) in bf16, block size 16.
    fn default() -> Self {
        BenchSpec {
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            dtype: DType::BF16,
            iters: 20,
        }
    }
}

/// One benchmark result. `gbps` is `bytes / time` in 10^9 bytes per second.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRow {
    pub kernel: String,
    pub dtype: String,
    pub shape: String,
    pub ctx_len: usize,
    pub batch: usize,
    /// Mean wall time of one launch, device-synchronized, in microseconds.
    pub time_us: f64,
    /// K and V bytes one launch must read.
    pub bytes: u64,
    pub gbps: f64,
}

/// Times a pure decode step of `batch` sequences, each with `ctx_len` tokens of context, and
/// reports the K/V bytes read per second. Block tables are shuffled so reads are not sequential.
pub fn bench_paged_attention(
    device: &Device,
    ctx_len: usize,
    batch: usize,
    spec: &BenchSpec,
) -> Result<BenchRow> {
    if ctx_len == 0 || batch == 0 || spec.iters == 0 {
        candle_core::bail!("bench_paged_attention: ctx_len, batch and iters must be positive");
    }
    let (hq, hkv, d, bs) = (
        spec.num_heads,
        spec.num_kv_heads,
        spec.head_dim,
        spec.block_size,
    );
    let per_seq = ctx_len.div_ceil(bs);
    let num_blocks = per_seq * batch;
    // A fixed odd stride permutes the block ids (no RNG needed for a benchmark).
    let stride = (0..)
        .map(|k| 2 * k + 7919)
        .find(|s| gcd(*s, num_blocks) == 1)
        .unwrap_or(1);
    let seqs: Vec<(usize, usize, Vec<u32>)> = (0..batch)
        .map(|s| {
            let table = (0..per_seq)
                .map(|i| ((s * per_seq + i) * stride % num_blocks) as u32)
                .collect();
            (1, ctx_len, table)
        })
        .collect();
    let meta = AttentionMetadata::new(bs, &seqs, device)?;
    let cache_dims = (num_blocks, bs, hkv, d);
    let key_cache = Tensor::randn(0f32, 1.0, cache_dims, device)?.to_dtype(spec.dtype)?;
    let value_cache = Tensor::randn(0f32, 1.0, cache_dims, device)?.to_dtype(spec.dtype)?;
    let q = Tensor::randn(0f32, 1.0, (batch, hq, d), device)?.to_dtype(spec.dtype)?;
    let scale = 1.0 / (d as f32).sqrt();
    for _ in 0..3 {
        paged_attention(&q, &key_cache, &value_cache, &meta, scale)?;
    }
    device.synchronize()?;
    let start = Instant::now();
    for _ in 0..spec.iters {
        paged_attention(&q, &key_cache, &value_cache, &meta, scale)?;
    }
    device.synchronize()?;
    let seconds = start.elapsed().as_secs_f64() / spec.iters as f64;
    let bytes = (2 * batch * ctx_len * hkv * d * spec.dtype.size_in_bytes()) as u64;
    Ok(BenchRow {
        kernel: "paged_attention.decode".into(),
        dtype: spec.dtype.as_str().into(),
        shape: format!("Hq{hq} Hkv{hkv} D{d} BS{bs}"),
        ctx_len,
        batch,
        time_us: seconds * 1e6,
        bytes,
        gbps: bytes as f64 / seconds / 1e9,
    })
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Device-to-device copy bandwidth in 10^9 bytes per second, counting bytes read plus bytes
/// written, over a 1 GiB buffer into a preallocated destination (on CPU a 64 MiB tensor copy,
/// which only exercises the code path).
pub fn bench_copy_bandwidth(device: &Device) -> Result<f64> {
    let iters = 10;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        let elems = 256 << 20;
        let src = dev.alloc_zeros::<f32>(elems)?;
        let mut dst = dev.alloc_zeros::<f32>(elems)?;
        dev.memcpy_dtod(&src, &mut dst)?;
        device.synchronize()?;
        let start = Instant::now();
        for _ in 0..iters {
            dev.memcpy_dtod(&src, &mut dst)?;
        }
        device.synchronize()?;
        let seconds = start.elapsed().as_secs_f64() / iters as f64;
        return Ok((2 * elems * 4) as f64 / seconds / 1e9);
    }
    let elems = 16 << 20;
    let src = Tensor::zeros(elems, DType::F32, device)?;
    src.copy()?;
    device.synchronize()?;
    let start = Instant::now();
    for _ in 0..iters {
        src.copy()?;
    }
    device.synchronize()?;
    let seconds = start.elapsed().as_secs_f64() / iters as f64;
    Ok((2 * elems * 4) as f64 / seconds / 1e9)
}

/// Times one prefill chunk of `q_len` tokens at the end of a `ctx_len`-token context (one
/// sequence). Returns the row (its `gbps`: the context's K/V bytes per second) and the causal
/// attention rate in TFLOP/s, counting `4 * heads * head_dim` FLOPs per visible (query, key).
pub fn bench_prefill(
    device: &Device,
    q_len: usize,
    ctx_len: usize,
    spec: &BenchSpec,
) -> Result<(BenchRow, f64)> {
    if q_len == 0 || q_len > ctx_len || spec.iters == 0 {
        candle_core::bail!("bench_prefill: need 0 < q_len <= ctx_len and iters > 0");
    }
    let (hq, hkv, d, bs) = (
        spec.num_heads,
        spec.num_kv_heads,
        spec.head_dim,
        spec.block_size,
    );
    let blocks = ctx_len.div_ceil(bs);
    let table: Vec<u32> = (0..blocks as u32).rev().collect();
    let meta = AttentionMetadata::new(bs, &[(q_len, ctx_len, table)], device)?;
    let cache_dims = (blocks, bs, hkv, d);
    let key_cache = Tensor::randn(0f32, 1.0, cache_dims, device)?.to_dtype(spec.dtype)?;
    let value_cache = Tensor::randn(0f32, 1.0, cache_dims, device)?.to_dtype(spec.dtype)?;
    let q = Tensor::randn(0f32, 1.0, (q_len, hq, d), device)?.to_dtype(spec.dtype)?;
    let scale = 1.0 / (d as f32).sqrt();
    for _ in 0..3 {
        paged_attention(&q, &key_cache, &value_cache, &meta, scale)?;
    }
    device.synchronize()?;
    let start = Instant::now();
    for _ in 0..spec.iters {
        paged_attention(&q, &key_cache, &value_cache, &meta, scale)?;
    }
    device.synchronize()?;
    let seconds = start.elapsed().as_secs_f64() / spec.iters as f64;
    let first = (ctx_len - q_len) as f64;
    // Query i sees first + i + 1 keys.
    let pairs = q_len as f64 * (first + 1.0) + (q_len as f64 * (q_len as f64 - 1.0)) / 2.0;
    let flops = 4.0 * pairs * (hq * d) as f64;
    let bytes = (2 * ctx_len * hkv * d * spec.dtype.size_in_bytes()) as u64;
    let row = BenchRow {
        kernel: "paged_attention.prefill".into(),
        dtype: spec.dtype.as_str().into(),
        shape: format!("Hq{hq} Hkv{hkv} D{d} BS{bs} q{q_len}"),
        ctx_len,
        batch: 1,
        time_us: seconds * 1e6,
        bytes,
        gbps: bytes as f64 / seconds / 1e9,
    };
    Ok((row, flops / seconds / 1e12))
}

/// This machine's streaming-read bandwidth in 10^9 bytes per second: each of the pool's threads
/// sums its share of a 512 MiB buffer (larger than any last-level cache), median of `reps`.
/// The CPU decode floor is (weight bytes + K/V bytes read per token) / this; the quant kernels
/// and whole-model decode are compared with it (`quant_bench`, `scripts/compare-cpu-sizes.sh`).
pub fn cpu_read_bandwidth(pool: &crate::threads::ThreadPool, reps: usize) -> f64 {
    let words = 64 << 20;
    let buf: Vec<u64> = (0..words as u64).collect();
    let chunks = pool.threads();
    let mut seconds = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let sink = std::sync::atomic::AtomicU64::new(0);
        let start = Instant::now();
        pool.run(chunks, &|c| {
            let part = crate::threads::split_range(words, c, chunks, 8);
            // Eight independent lanes: the sum vectorizes into full-width loads, so the loop
            // waits on memory, not on one add chain.
            let mut lanes = [0u64; 8];
            for block in buf[part].chunks_exact(8) {
                for (lane, &x) in lanes.iter_mut().zip(block) {
                    *lane = lane.wrapping_add(x);
                }
            }
            let s = lanes.iter().fold(0u64, |a, &x| a.wrapping_add(x));
            sink.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
        });
        seconds.push(start.elapsed().as_secs_f64());
        std::hint::black_box(sink.into_inner());
    }
    seconds.sort_by(f64::total_cmp);
    (words * 8) as f64 / seconds[seconds.len() / 2] / 1e9
}
