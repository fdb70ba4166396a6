//! The fast f32 CPU paged attention (what the engine runs) against the readable oracle
//! (`paged_attention_reference`) on the same paged inputs: GQA ratios, head dims, block sizes,
//! query tiles split mid-chunk, ragged mixes of prefill chunks and decodes. (The dense naive
//! reference of kernels/tests/attention.rs covers the fast path too, since f32 CPU runs it.)

use candle_core::{Device, Tensor};
use metrum_kernels::{AttentionMetadata, paged_attention, paged_attention_reference};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn case(heads: (usize, usize), dim: usize, bs: usize, seqs: &[(usize, usize)], seed: u64) {
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
    let fast = paged_attention(&q, &k, &v, &meta, scale).unwrap();
    let oracle = paged_attention_reference(&q, &k, &v, &meta, scale).unwrap();
    let diff = (fast - &oracle)
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
    assert!(
        diff <= 1e-5 * size.max(1.0),
        "heads {heads:?} dim {dim} bs {bs} seqs {seqs:?}: max diff {diff}"
    );
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
                    case(heads, dim, bs, seqs, seed);
                }
            }
        }
    }
}
