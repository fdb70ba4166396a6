//! Sliding windows and soft-caps against a plain reference written here, independent of the
//! kernels and of `check`: each sequence's K/V materialized densely, scores, mask and softmax as
//! explicit loops in f64. Run on every device (`test_device!` in attention.rs) and dtype:
//! - `matches_dense_reference`: windows smaller than, equal to and larger than the contexts,
//!   1, and around block and tile boundaries; caps alone and with windows; GQA; head dims 64,
//!   128 and 256; a varlen batch mixing decodes and prefill chunks that start at position 0,
//!   mid-block and mid-sequence, shorter and longer than the kernels' query tiles.
//! - `off_by_one_is_caught`: the same comparison fails against a reference whose window is one
//!   key shorter or longer, or which drops the cap, so the test above can fail.
//! - `keys_before_the_window_are_never_read`: NaN everywhere in the cache except the keys some
//!   query of the sequence may see; a kernel that touched a key before its window would
//!   put NaN in the output (0 × NaN is NaN even for a masked key).
//! - `bad_params_are_errors`: window 0, cap 0 / negative / NaN are errors, not panics.

use candle_core::{DType, Device, Result, Tensor};
use metrum_kernels::check::{DTYPES, rel_err, tolerance};
use metrum_kernels::{
    AttentionMetadata, AttentionParams, paged_attention_reference_with, paged_attention_with,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// One batch: its paged cache on the device, and the dense per-sequence K/V the reference reads.
struct Batch {
    heads: (usize, usize),
    head_dim: usize,
    seqs: Vec<(usize, usize)>,
    /// `[T, hq, d]`, rounded through the dtype (the kernel sees exactly these values).
    q: Vec<f32>,
    /// Per sequence, `[seq_len, hkv, d]`, rounded through the dtype.
    dense: Vec<(Vec<f32>, Vec<f32>)>,
    q_t: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    meta: AttentionMetadata,
}

fn round_through(x: Vec<f32>, dtype: DType) -> Result<Vec<f32>> {
    let n = x.len();
    Tensor::from_vec(x, n, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_dtype(DType::F32)?
        .to_vec1()
}

/// Builds a batch. `keep(s, p)` says which cache rows of sequence `s` hold real K/V; all other
/// slots (other positions, unused blocks, the tail of the last block) hold `filler`.
#[allow(clippy::too_many_arguments)]
fn batch(
    device: &Device,
    dtype: DType,
    heads: (usize, usize),
    head_dim: usize,
    block_size: usize,
    seqs: &[(usize, usize)],
    seed: u64,
    filler: f32,
    keep: impl Fn(usize, usize) -> bool,
) -> Result<Batch> {
    let mut rng = StdRng::seed_from_u64(seed);
    let row = heads.1 * head_dim;
    let needed: Vec<usize> = seqs.iter().map(|&(_, l)| l.div_ceil(block_size)).collect();
    let num_blocks = needed.iter().sum::<usize>() + 2;
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    ids.shuffle(&mut rng);
    let mut random =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
    let tokens: usize = seqs.iter().map(|s| s.0).sum();
    let q = round_through(random(tokens * heads.0 * head_dim), dtype)?;
    let mut k_cache = vec![filler; num_blocks * block_size * row];
    let mut v_cache = k_cache.clone();
    let (mut tables, mut dense, mut next) = (Vec::new(), Vec::new(), 0);
    for (s, &(q_len, seq_len)) in seqs.iter().enumerate() {
        let table = ids[next..next + needed[s]].to_vec();
        next += needed[s];
        let k = round_through(random(seq_len * row), dtype)?;
        let v = round_through(random(seq_len * row), dtype)?;
        for p in (0..seq_len).filter(|&p| keep(s, p)) {
            let slot = (table[p / block_size] as usize * block_size + p % block_size) * row;
            k_cache[slot..slot + row].copy_from_slice(&k[p * row..(p + 1) * row]);
            v_cache[slot..slot + row].copy_from_slice(&v[p * row..(p + 1) * row]);
        }
        tables.push((q_len, seq_len, table));
        dense.push((k, v));
    }
    let dims = (num_blocks, block_size, heads.1, head_dim);
    let upload = |x: Vec<f32>, dims: &[usize]| -> Result<Tensor> {
        Tensor::from_vec(x, dims, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    };
    Ok(Batch {
        heads,
        head_dim,
        seqs: seqs.to_vec(),
        q_t: upload(q.clone(), &[tokens, heads.0, head_dim])?,
        q,
        dense,
        k_cache: upload(k_cache, &[dims.0, dims.1, dims.2, dims.3])?,
        v_cache: upload(v_cache, &[dims.0, dims.1, dims.2, dims.3])?,
        meta: AttentionMetadata::new(block_size, &tables, device)?,
    })
}

/// The reference: for every (token, head), the obvious masked softmax over the dense K/V.
fn dense_reference(b: &Batch, params: &AttentionParams) -> Vec<f32> {
    let ((hq, hkv), d) = (b.heads, b.head_dim);
    let group = hq / hkv;
    let window = params.sliding_window.unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(b.q.len());
    let mut tok = 0;
    for (&(q_len, seq_len), (k, v)) in b.seqs.iter().zip(&b.dense) {
        for i in 0..q_len {
            let pos = seq_len - q_len + i;
            for h in 0..hq {
                let qrow = &b.q[(tok * hq + h) * d..][..d];
                let kv = |x: &[f32], p: usize| x[(p * hkv + h / group) * d..][..d].to_vec();
                // Mask: causal, and within the window (pos - p < window).
                let visible: Vec<usize> = (0..seq_len)
                    .filter(|&p| p <= pos && pos - p < window)
                    .collect();
                let logits: Vec<f64> = visible
                    .iter()
                    .map(|&p| {
                        let dot: f64 = qrow
                            .iter()
                            .zip(kv(k, p))
                            .map(|(&a, b)| a as f64 * b as f64)
                            .sum();
                        let s = dot * params.scale as f64;
                        match params.soft_cap {
                            Some(c) => c as f64 * (s / c as f64).tanh(),
                            None => s,
                        }
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                let mut acc = vec![0f64; d];
                for (&p, w) in visible.iter().zip(&weights) {
                    for (a, x) in acc.iter_mut().zip(kv(v, p)) {
                        *a += w * x as f64;
                    }
                }
                out.extend(acc.iter().map(|a| (a / total) as f32));
            }
            tok += 1;
        }
    }
    out
}

/// Relative L2 error of `out` against the dense reference with `reference_params`.
fn error(out: &Tensor, b: &Batch, reference_params: &AttentionParams) -> Result<f64> {
    let (hq, d) = (b.heads.0, b.head_dim);
    let want = Tensor::from_vec(
        dense_reference(b, reference_params),
        (b.q.len() / (hq * d), hq, d),
        &Device::Cpu,
    )?;
    rel_err(out, &want)
}

fn params(head_dim: usize, window: Option<usize>, cap: Option<f32>) -> AttentionParams {
    AttentionParams {
        scale: 1.0 / (head_dim as f32).sqrt(),
        sliding_window: window,
        soft_cap: cap,
    }
}

/// Decodes at positions 0, 39 and 299; prefill chunks of 7 tokens from position 16 (mid-block
/// for block size 32), 70 from 0 (longer than a CUDA tile), 40 from 60, 3 from 0.
const MIX: &[(usize, usize)] = &[
    (1, 1),
    (1, 40),
    (7, 23),
    (70, 70),
    (40, 100),
    (1, 300),
    (3, 3),
];

/// (heads, head_dim, block_size): GQA 4, 3 and 1; head dims 64, 128 and 256 (Gemma).
const LAYOUTS: &[((usize, usize), usize, usize)] =
    &[((8, 2), 64, 16), ((9, 3), 128, 8), ((4, 4), 256, 32)];

/// Windows around every boundary of MIX and of the block sizes: 1 (a query sees itself only),
/// block size ± 1, 37 (no multiple of any block size), the chunk lengths, the contexts (40,
/// 100, 300) and beyond them, with and without caps.
const WINDOWS: &[(Option<usize>, Option<f32>)] = &[
    (Some(1), None),
    (Some(2), None),
    (Some(7), None),
    (Some(8), Some(1.0)),
    (Some(15), None),
    (Some(16), None),
    (Some(17), None),
    (Some(37), None),
    (Some(40), Some(3.0)),
    (Some(64), None),
    (Some(65), None),
    (Some(100), None),
    (Some(299), None),
    (Some(300), None),
    (Some(301), Some(30.0)),
    (Some(100_000), None),
    (None, Some(1.0)),
    (None, Some(0.5)),
];

pub fn matches_dense_reference(device: &Device) -> Result<()> {
    let mut failures = Vec::new();
    let mut checked = 0;
    for dtype in DTYPES {
        for (i, &(heads, d, bs)) in LAYOUTS.iter().enumerate() {
            let b = batch(
                device,
                dtype,
                heads,
                d,
                bs,
                MIX,
                100 + i as u64,
                0.0,
                |_, _| true,
            )?;
            for &(window, cap) in WINDOWS {
                let p = params(d, window, cap);
                let mut outs = vec![(
                    "device",
                    paged_attention_with(&b.q_t, &b.k_cache, &b.v_cache, &b.meta, &p)?,
                )];
                if device.is_cpu() {
                    let oracle = paged_attention_reference_with(
                        &b.q_t, &b.k_cache, &b.v_cache, &b.meta, &p,
                    )?;
                    outs.push(("oracle", oracle));
                }
                for (path, out) in outs {
                    let err = error(&out, &b, &p)?;
                    checked += 1;
                    // Written so that a NaN error counts as a failure.
                    if err.is_nan() || err > tolerance(dtype) {
                        failures.push(format!(
                            "{path} {dtype:?} {heads:?} D{d} BS{bs} {p:?}: {err:.3e}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} out of tolerance:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

pub fn off_by_one_is_caught(device: &Device) -> Result<()> {
    for dtype in DTYPES {
        let (heads, d, bs) = LAYOUTS[0];
        let b = batch(device, dtype, heads, d, bs, MIX, 7, 0.0, |_, _| true)?;
        let run =
            |p: &AttentionParams| paged_attention_with(&b.q_t, &b.k_cache, &b.v_cache, &b.meta, p);
        for w in [2, 17, 37] {
            let out = run(&params(d, Some(w), None))?;
            assert!(error(&out, &b, &params(d, Some(w), None))? <= tolerance(dtype));
            for wrong in [w - 1, w + 1] {
                let err = error(&out, &b, &params(d, Some(wrong), None))?;
                assert!(
                    err > tolerance(dtype),
                    "{dtype:?}: window {w} passed against a reference with window {wrong} ({err:.3e})"
                );
            }
        }
        let capped = run(&params(d, Some(37), Some(1.0)))?;
        let err = error(&capped, &b, &params(d, Some(37), None))?;
        assert!(
            err > tolerance(dtype),
            "{dtype:?}: cap 1.0 passed as no cap ({err:.3e})"
        );
        let err = error(&capped, &b, &params(d, Some(37), Some(1.5)))?;
        assert!(
            err > tolerance(dtype),
            "{dtype:?}: cap 1.0 passed as cap 1.5 ({err:.3e})"
        );
    }
    Ok(())
}

pub fn keys_before_the_window_are_never_read(device: &Device) -> Result<()> {
    for dtype in DTYPES {
        for (i, &(heads, d, bs)) in LAYOUTS.iter().enumerate() {
            for w in [1, 9, 33] {
                // Sequence s's first query sits at seq_len - q_len: no query of s sees a key
                // before that position's window start, so those rows (and everything that is
                // not the sequence's context) are NaN.
                let keep = |s: usize, p: usize| {
                    let (q_len, seq_len) = MIX[s];
                    p + w > seq_len - q_len
                };
                let b = batch(
                    device,
                    dtype,
                    heads,
                    d,
                    bs,
                    MIX,
                    300 + i as u64,
                    f32::NAN,
                    keep,
                )?;
                let p = params(d, Some(w), Some(2.0));
                let out = paged_attention_with(&b.q_t, &b.k_cache, &b.v_cache, &b.meta, &p)?;
                let err = error(&out, &b, &p)?;
                assert!(
                    err <= tolerance(dtype),
                    "{dtype:?} {heads:?} D{d} BS{bs} window {w}: {err:.3e} (NaN means a key before the window was read)"
                );
            }
        }
    }
    Ok(())
}

pub fn bad_params_are_errors(device: &Device) -> Result<()> {
    let b = batch(
        device,
        DType::F32,
        (2, 1),
        64,
        16,
        &[(3, 5)],
        1,
        0.0,
        |_, _| true,
    )?;
    for (window, cap) in [
        (Some(0), None),
        (None, Some(0.0)),
        (None, Some(-1.0)),
        (None, Some(f32::NAN)),
        (Some(0), Some(1.0)),
    ] {
        let p = params(64, window, cap);
        assert!(
            paged_attention_with(&b.q_t, &b.k_cache, &b.v_cache, &b.meta, &p).is_err(),
            "{p:?} was accepted"
        );
        if device.is_cpu() {
            assert!(
                paged_attention_reference_with(&b.q_t, &b.k_cache, &b.v_cache, &b.meta, &p)
                    .is_err()
            );
        }
    }
    Ok(())
}
