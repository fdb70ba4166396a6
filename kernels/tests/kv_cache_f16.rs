//! `reshape_and_cache` into a cache of another dtype than the new K/V (CPU): f32 activations
//! into the f16 cache the engine keeps by default must land as the round-to-nearest-even f16 of
//! each value (bit for bit what `to_dtype` gives), in the right slots, leaving the others alone;
//! the other pairs convert exactly where the target holds the value.

use candle_core::{DType, Device, Tensor};
use metrum_kernels::{AttentionMetadata, reshape_and_cache};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BLOCK: usize = 4;
const BLOCKS: usize = 6;
const KV_HEADS: usize = 2;
// Rows of KV_HEADS·DIM = 40 values are five 8-wide F16C steps; 26 (DIM_TAIL) leaves a tail.
const DIM: usize = 20;
const DIM_TAIL: usize = 13;

/// New K/V for 7 tokens of two sequences, with values across f16's range (and past it: ±inf).
fn new_kv(dim: usize, seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = 7 * KV_HEADS * dim;
    let mut data: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) * 2f32.powi(rng.random_range(-26..17)))
        .collect();
    data[0] = 1e6;
    data[1] = 1.0 + 2f32.powi(-11); // a tie: rounds to even (1.0)
    Tensor::from_vec(data, (7, KV_HEADS, dim), &Device::Cpu).unwrap()
}

fn meta() -> AttentionMetadata {
    // Sequence 0: a 5-token prefill into blocks 4, 1; sequence 1: 2 tokens into block 2.
    AttentionMetadata::new(BLOCK, &[(5, 5, vec![4, 1]), (2, 2, vec![2])], &Device::Cpu).unwrap()
}

fn written(new: &Tensor, cache_dtype: DType) -> Tensor {
    let dim = new.dim(2).unwrap();
    let dims = (BLOCKS, BLOCK, KV_HEADS, dim);
    let k = Tensor::zeros(dims, cache_dtype, &Device::Cpu).unwrap();
    let v = Tensor::zeros(dims, cache_dtype, &Device::Cpu).unwrap();
    reshape_and_cache(new, &(new * 2.0).unwrap(), &k, &v, &meta()).unwrap();
    // V got 2·K, so a mix-up of the key and value writes shows.
    let v_expected = {
        let two_k = (new * 2.0).unwrap().to_dtype(cache_dtype).unwrap();
        scatter(&two_k, cache_dtype)
    };
    assert_eq!(bits(&v), bits(&v_expected), "value cache, {cache_dtype:?}");
    k
}

/// What the cache should hold: each token's row at its slot, zeros elsewhere.
fn scatter(rows: &Tensor, dtype: DType) -> Tensor {
    let dim = rows.dim(2).unwrap();
    let mut out = Tensor::zeros((BLOCKS * BLOCK, KV_HEADS, dim), dtype, &Device::Cpu).unwrap();
    for (t, &slot) in meta().slot_mapping.iter().enumerate() {
        let slot = slot as usize;
        out = out
            .slice_assign(
                &[slot..slot + 1, 0..KV_HEADS, 0..dim],
                &rows.narrow(0, t, 1).unwrap(),
            )
            .unwrap();
    }
    out.reshape((BLOCKS, BLOCK, KV_HEADS, dim)).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    let flat = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F16 => flat
            .to_vec1::<half::f16>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u32)
            .collect(),
        DType::BF16 => flat
            .to_vec1::<half::bf16>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u32)
            .collect(),
        _ => flat
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect(),
    }
}

#[test]
fn f32_activations_land_in_an_f16_cache_rounded_to_nearest_even() {
    for (dim, seed) in [(DIM, 1), (DIM_TAIL, 2)] {
        let new = new_kv(dim, seed);
        let cache = written(&new, DType::F16);
        let expected = scatter(&new.to_dtype(DType::F16).unwrap(), DType::F16);
        assert_eq!(bits(&cache), bits(&expected), "dim {dim}");
        // The tie 1 + 2^-11 rounds to 1 (even), 1e6 overflows to +inf.
        let first = cache.flatten_all().unwrap().to_vec1::<half::f16>().unwrap();
        let slot0 = meta().slot_mapping[0] as usize * KV_HEADS * dim;
        assert_eq!(first[slot0], half::f16::INFINITY);
        assert_eq!(first[slot0 + 1], half::f16::ONE);
    }
}

#[test]
fn every_other_dtype_pair_converts_as_to_dtype_does() {
    for from in [DType::F32, DType::F16, DType::BF16] {
        for to in [DType::F32, DType::F16, DType::BF16] {
            let new = new_kv(DIM, 3).to_dtype(from).unwrap();
            let cache = written(&new, to);
            let expected = scatter(&new.to_dtype(to).unwrap(), to);
            assert_eq!(bits(&cache), bits(&expected), "{from:?} into {to:?}");
        }
    }
}

#[test]
fn a_slot_past_the_cache_is_an_error_and_writes_nothing() {
    let new = new_kv(DIM, 4);
    let cache = Tensor::zeros((1, BLOCK, KV_HEADS, DIM), DType::F16, &Device::Cpu).unwrap();
    // Block 4 of a 1-block cache.
    let err = reshape_and_cache(&new, &new, &cache, &cache, &meta()).unwrap_err();
    assert!(err.to_string().contains("outside a cache"), "{err}");
    assert_eq!(bits(&cache), vec![0; BLOCK * KV_HEADS * DIM]);
}
