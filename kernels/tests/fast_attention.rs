//! The fast f32 CPU paged attention (what the engine runs) against the readable oracle
//! (`paged_attention_reference_with`) on the same paged inputs: GQA ratios, head dims, block
//! sizes, query tiles split mid-chunk, ragged mixes of prefill chunks and decodes, each plain,
//! with sliding windows (1, and sizes that are no multiple of the block or query tile), with
//! soft-caps, and both. (The dense references of kernels/tests/attention.rs cover the fast path
//! too, since f32 CPU runs it.)
//!
//! Every case also runs over an f16 copy of the cache (the engine's CPU default): the fast path
//! against the oracle on the same f16 cache (1e-5, as for f32: both widen the same f16 values
//! exactly, only the summation order differs), and against the f32 cache within the bound f16
//! rounding allows (see [`f16_cache_bound`]).

use candle_core::{DType, Device, Tensor};
use metrum_kernels::{
    AttentionMetadata, AttentionParams, paged_attention, paged_attention_reference,
    paged_attention_reference_with, paged_attention_with,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn case(
    heads: (usize, usize),
    dim: usize,
    bs: usize,
    seqs: &[(usize, usize)],
    seed: u64,
    variants: &[(Option<usize>, Option<f32>)],
) {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut random =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
    let needed: Vec<usize> = seqs.iter().map(|&(_, l)| l.div_ceil(bs)).collect();
    let num_blocks = needed.iter().sum::<usize>() + 2;
    let row = heads.1 * dim;
    let k = Tensor::from_vec(
        random(num_blocks * bs * row),
        (num_blocks, bs, heads.1, dim),
        &dev,
    )
    .unwrap();
    let v = Tensor::from_vec(
        random(num_blocks * bs * row),
        (num_blocks, bs, heads.1, dim),
        &dev,
    )
    .unwrap();
    let tokens: usize = seqs.iter().map(|s| s.0).sum();
    let q = Tensor::from_vec(random(tokens * heads.0 * dim), (tokens, heads.0, dim), &dev).unwrap();
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    ids.shuffle(&mut StdRng::seed_from_u64(seed + 1));
    let mut next = 0;
    let tables: Vec<(usize, usize, Vec<u32>)> = seqs
        .iter()
        .zip(&needed)
        .map(|(&(q_len, len), &n)| {
            next += n;
            (q_len, len, ids[next - n..next].to_vec())
        })
        .collect();
    let meta = AttentionMetadata::new(bs, &tables, &dev).unwrap();
    let scale = 1.0 / (dim as f32).sqrt();
    // The plain wrappers are the `_with` versions with AttentionParams::new(scale).
    let fast = paged_attention(&q, &k, &v, &meta, scale).unwrap();
    let oracle = paged_attention_reference(&q, &k, &v, &meta, scale).unwrap();
    assert_close(
        &fast,
        &oracle,
        &format!("heads {heads:?} dim {dim} bs {bs} seqs {seqs:?}"),
    );
    let (k16, v16) = (
        k.to_dtype(DType::F16).unwrap(),
        v.to_dtype(DType::F16).unwrap(),
    );
    let bound = f16_cache_bound(&q, &k, &v, scale);
    let params = std::iter::once(AttentionParams::new(scale)).chain(variants.iter().map(
        |&(sliding_window, soft_cap)| AttentionParams {
            scale,
            sliding_window,
            soft_cap,
        },
    ));
    for (i, params) in params.enumerate() {
        let what = format!("heads {heads:?} dim {dim} bs {bs} seqs {seqs:?} {params:?}");
        let oracle = paged_attention_reference_with(&q, &k, &v, &meta, &params).unwrap();
        if i > 0 {
            let fast = paged_attention_with(&q, &k, &v, &meta, &params).unwrap();
            assert_close(&fast, &oracle, &what);
        }
        let fast16 = paged_attention_with(&q, &k16, &v16, &meta, &params).unwrap();
        assert_eq!(
            fast16.dtype(),
            DType::F32,
            "the output keeps the query's dtype"
        );
        let oracle16 = paged_attention_reference_with(&q, &k16, &v16, &meta, &params).unwrap();
        assert_close(&fast16, &oracle16, &format!("f16 cache, {what}"));
        let diff = max_abs(&(&fast16 - &oracle).unwrap());
        assert!(
            diff <= bound,
            "f16 cache vs f32 cache, {what}: max diff {diff} over the bound {bound}"
        );
    }
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// How far attention over an f16 copy of the cache may land from the f32 cache, for any query
/// of `q` (the tolerance, derived rather than tuned). Rounding to f16 moves each K and V element
/// by at most 2^-11 of the largest one (half an ulp at 11 significant bits; subnormals move
/// less). A logit `scale·q·k` then moves by at most δ = scale · Σ|q_i|·2^-11·max|K| (soft-capping
/// only shrinks that: tanh is 1-Lipschitz); each softmax weight by at most a factor e^{±2δ}, so
/// the weighted sum of V by (e^{2δ} - 1)·max|V|; and V's own rounding adds 2^-11·max|V|.
/// 1e-5 more covers the f32 summation-order noise both paths already have.
fn f16_cache_bound(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> f32 {
    let half_ulp = 2f32.powi(-11);
    let q_l1 = q.abs().unwrap().sum_keepdim(2).unwrap();
    let delta = scale * max_abs(&q_l1) * half_ulp * max_abs(k);
    ((2.0 * delta).exp() - 1.0) * max_abs(v) + half_ulp * max_abs(v) + 1e-5
}

fn assert_close(fast: &Tensor, oracle: &Tensor, what: &str) {
    let diff = (fast - oracle)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let size = oracle
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff <= 1e-5 * size.max(1.0), "{what}: max diff {diff}");
}

#[test]
fn fast_cpu_attention_matches_the_oracle() {
    let mixes: [&[(usize, usize)]; 5] = [
        &[(1, 1)],
        &[(1, 37), (1, 200), (1, 16)],
        &[(17, 17)],
        &[(23, 130), (1, 90), (9, 9), (1, 1)],
        &[(64, 300), (3, 5)],
    ];
    let mut seed = 0;
    for heads in [(4, 4), (6, 3), (9, 3), (8, 1), (16, 1)] {
        for dim in [64, 128, 80] {
            for bs in [8, 16, 32] {
                for seqs in mixes {
                    seed += 1;
                    // Windows cycle through 1 and sizes around the block sizes and the 8-token
                    // query tile; the window ends inside a block, a tile, or past the context.
                    let w = [1, 3, 7, 9, 15, 17, 33, 100, 250][seed as usize % 9];
                    let variants = [(Some(w), None), (None, Some(1.5)), (Some(w + 4), Some(0.7))];
                    case(heads, dim, bs, seqs, seed, &variants);
                }
            }
        }
    }
}

/// Windows are skipped, not masked: at a 32k-token context, a 64-key window must cost a small
/// fraction of full attention (it reads 64 keys per query, not 32k), for a decode and for a
/// prefill chunk. Measured on a 2-core AVX-512 machine: ~1000x cheaper (0.5 ms vs 480 ms); a
/// tile that only transposed (not scored) the keys before the window was 15x, one that masked
/// instead of skipping would be ~1x. Best of 5 timings and a 100x bar, 10x from either side.
#[test]
fn windowed_attention_skips_the_keys_before_the_window() {
    let dev = Device::Cpu;
    let (hq, hkv, dim, bs, ctx) = (8, 2, 64, 16, 32768);
    let blocks = 2 * ctx / bs;
    let mut rng = StdRng::seed_from_u64(9);
    let mut random =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let cache_dims = (blocks, bs, hkv, dim);
    let k = Tensor::from_vec(random(blocks * bs * hkv * dim), cache_dims, &dev).unwrap();
    let v = Tensor::from_vec(random(blocks * bs * hkv * dim), cache_dims, &dev).unwrap();
    let q = Tensor::from_vec(random(17 * hq * dim), (17, hq, dim), &dev).unwrap();
    let table =
        |s: u32| -> Vec<u32> { (s * (ctx / bs) as u32..(s + 1) * (ctx / bs) as u32).collect() };
    let meta =
        AttentionMetadata::new(bs, &[(1, ctx, table(0)), (16, ctx, table(1))], &dev).unwrap();
    let best_of_5 = |params: &AttentionParams| {
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                paged_attention_with(&q, &k, &v, &meta, params).unwrap();
                t.elapsed()
            })
            .min()
            .unwrap()
    };
    let full = best_of_5(&AttentionParams::new(0.125));
    let windowed = best_of_5(&AttentionParams {
        sliding_window: Some(64),
        ..AttentionParams::new(0.125)
    });
    assert!(
        windowed * 100 < full,
        "window 64 took {windowed:?}, full 32k-token attention {full:?}"
    );
}

/// Batch invariance: every row of a chunk of 1 to 64 query tokens (a decode, a speculative
/// verification of up to 16 drafts, a prefill chunk, a suffix after a prefix-cache hit) is bit
/// for bit the row a one-token decode at the same position gives, over f32 and f16 caches, with
/// and without a sliding window and soft-cap, for SmolLM2's GQA (9 query heads on 3 KV heads), a
/// 4:1 one, and a 16:1 one (past the AVX-512 decode kernel's group bound). Sampling with a seed
/// gives the same text on a prefix-cache hit, and greedy speculation equals plain decoding, only
/// if this holds (server/tests/http_api.rs and engine/tests/speculative.rs check the tokens on
/// the default model). Shared 8-token tiles that scored keys transposed failed it at 2 tokens.
#[test]
fn every_chunk_row_equals_its_decode_bit_for_bit() {
    let dev = Device::Cpu;
    for (hq, hkv, dim) in [(9, 3, 64), (8, 2, 128), (16, 1, 64)] {
        let (bs, ctx): (usize, usize) = (16, 300);
        let blocks = ctx.div_ceil(bs) + 1;
        let mut rng = StdRng::seed_from_u64(hq as u64);
        let mut random =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
        let cache_dims = (blocks, bs, hkv, dim);
        let k = Tensor::from_vec(random(blocks * bs * hkv * dim), cache_dims, &dev).unwrap();
        let v = Tensor::from_vec(random(blocks * bs * hkv * dim), cache_dims, &dev).unwrap();
        let mut table: Vec<u32> = (0..blocks as u32).collect();
        table.reverse();
        let lengths = (1..=17usize).chain([23, 40, 64]);
        for (n, q_len) in lengths.enumerate() {
            let q = Tensor::from_vec(random(q_len * hq * dim), (q_len, hq, dim), &dev).unwrap();
            let params = match n % 3 {
                0 => AttentionParams::new(0.125),
                1 => AttentionParams {
                    sliding_window: Some(37),
                    ..AttentionParams::new(0.125)
                },
                _ => AttentionParams {
                    soft_cap: Some(3.0),
                    ..AttentionParams::new(0.125)
                },
            };
            for (kc, vc) in [
                (k.clone(), v.clone()),
                (
                    k.to_dtype(DType::F16).unwrap(),
                    v.to_dtype(DType::F16).unwrap(),
                ),
            ] {
                let meta =
                    AttentionMetadata::new(bs, &[(q_len, ctx, table.clone())], &dev).unwrap();
                let chunk = paged_attention_with(&q, &kc, &vc, &meta, &params).unwrap();
                for i in 0..q_len {
                    let pos_len = ctx - q_len + i + 1;
                    let meta =
                        AttentionMetadata::new(bs, &[(1, pos_len, table.clone())], &dev).unwrap();
                    let qi = q.narrow(0, i, 1).unwrap();
                    let decode = paged_attention_with(&qi, &kc, &vc, &meta, &params).unwrap();
                    let (want, got): (Vec<f32>, Vec<f32>) = (
                        decode.flatten_all().unwrap().to_vec1().unwrap(),
                        chunk
                            .narrow(0, i, 1)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1()
                            .unwrap(),
                    );
                    let same = want
                        .iter()
                        .zip(&got)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{hq}:{hkv} heads, dim {dim}, {:?} cache, {params:?}, chunk of {q_len}: row {i} differs from its decode",
                        kc.dtype()
                    );
                }
            }
        }
    }
}
