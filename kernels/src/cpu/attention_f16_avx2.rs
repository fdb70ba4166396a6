//! The AVX2 attention tile's two inner loops over an **f16** KV cache, reading the cache's rows
//! as they are and widening them in registers (`vcvtph2ps`, exact), instead of widening every
//! K and V row of a tile into an f32 scratch copy first. The widening pass cost about as much
//! as one query head's scores and P·V (SmolLM2: 64-wide rows, 3 query heads per KV head), and
//! it had to be paid once per tile, which kept a tile from being split by query head.
//!
//! Both are bit for bit the f32 loops of `fast_attention` on the widened rows (the same
//! products, rounded and added in the same order; F16C's conversion is exact), so a row's
//! output does not depend on the cache path or on its tile (fast_attention's "Batch
//! invariance"). The unit tests below check exactly that.

use std::arch::x86_64::*;

use half::f16;

use crate::vmath::LANES;

/// Whether the f16 loops below serve a head dimension: P·V works in whole 64-lane chunks.
pub(super) fn serves(head_dim: usize) -> bool {
    head_dim.is_multiple_of(4 * LANES)
}

/// `fast_attention::dot_avx2(a, widen(b))`, bit for bit.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    let n = a.len().min(b.len());
    let full = n / LANES * LANES;
    let tail: f32 = a[full..n]
        .iter()
        .zip(&b[full..n])
        .map(|(x, y)| x * y.to_f32())
        .sum();
    unsafe {
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < full {
            let (pa, pb) = (a.as_ptr().add(i), b.as_ptr().add(i));
            let b_lo = _mm256_cvtph_ps(_mm_loadu_si128(pb.cast()));
            let b_hi = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(8).cast()));
            lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(pa), b_lo));
            hi = _mm256_add_ps(hi, _mm256_mul_ps(_mm256_loadu_ps(pa.add(8)), b_hi));
            i += LANES;
        }
        super::fast_attention::halving_sum(lo, hi) + tail
    }
}

/// `fast_attention::accumulate_rows(acc, weights, widen(rows))`, bit for bit: per 64-lane chunk
/// of `acc`, `a = Σ_p weights[p] · rows[p]` (each product rounded, then added, in key order,
/// from zero) and then `acc += a`. `acc.len()` must be a multiple of 64 ([`serves`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn accumulate_rows_f16(acc: &mut [f32], weights: &[f32], rows: &[&[f16]]) {
    const CHUNK: usize = 4 * LANES;
    assert!(
        acc.len().is_multiple_of(CHUNK),
        "accumulate_rows_f16: width {}",
        acc.len()
    );
    for start in (0..acc.len()).step_by(CHUNK) {
        unsafe {
            let mut a = [_mm256_setzero_ps(); CHUNK / 8];
            for (&w, row) in weights.iter().zip(rows) {
                let row = &row[start..start + CHUNK];
                let w = _mm256_set1_ps(w);
                for (i, a) in a.iter_mut().enumerate() {
                    let x = _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(8 * i).cast()));
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(w, x));
                }
            }
            for (i, a) in a.iter().enumerate() {
                let dst = acc.as_mut_ptr().add(start + 8 * i);
                _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), *a));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fast_attention::{accumulate_rows, dot};
    use super::*;
    use crate::quant::Isa;

    fn values(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    fn halves(v: &[f32]) -> (Vec<f16>, Vec<f32>) {
        let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        let wide = h.iter().map(|x| x.to_f32()).collect();
        (h, wide)
    }

    #[test]
    fn f16_dot_equals_the_lane_loop_on_widened_rows_bit_for_bit() {
        if Isa::detect() == Isa::Scalar {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for n in [1, 7, 16, 17, 31, 32, 48, 64, 80, 96, 128, 200, 256] {
            for _ in 0..50 {
                let a = values(n, &mut seed);
                let (b16, b) = halves(&values(n, &mut seed));
                // SAFETY: AVX2 (and with it F16C, see `Isa::detect`) checked above.
                let fast = unsafe { dot_f16(&a, &b16) };
                assert_eq!(fast.to_bits(), dot(&a, &b).to_bits(), "length {n}");
            }
        }
    }

    #[test]
    fn f16_accumulation_equals_the_lane_loop_on_widened_rows_bit_for_bit() {
        if Isa::detect() == Isa::Scalar {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for hd in [64, 128, 256] {
            for keys in [1, 2, 5, 33, 300] {
                let weights = values(keys, &mut seed);
                let (rows16, rows): (Vec<Vec<f16>>, Vec<Vec<f32>>) =
                    (0..keys).map(|_| halves(&values(hd, &mut seed))).unzip();
                let start = values(hd, &mut seed);
                let (mut fast, mut want) = (start.clone(), start);
                let rows16: Vec<&[f16]> = rows16.iter().map(Vec::as_slice).collect();
                let rows: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
                // SAFETY: as above.
                unsafe { accumulate_rows_f16(&mut fast, &weights, &rows16) };
                accumulate_rows(&mut want, &weights, &rows);
                let same = fast
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "head dim {hd}, {keys} keys");
            }
        }
    }
}
