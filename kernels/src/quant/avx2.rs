//! AVX2 kernels for the 32-value formats, for x86-64 CPUs without AVX-512 VNNI: one block per
//! step, `vpmaddubsw` (unsigned × signed bytes to 16-bit pairs) then `vpmaddwd` to 32-bit.
//!
//! Nibbles (0..15) times activations (|q| ≤ 127) cannot overflow the 16-bit pairs. Q8_0 uses
//! ggml's sign trick instead of an offset: |w| times x carrying w's sign.

use std::arch::x86_64::*;

use super::activations::ActRow;
use super::gemm::{Offset, RowBytes};

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `out[c] = Σ_b row · acts[c]`; see [`super::avx512::tile`] for the arguments.
///
/// Each token has its own accumulators and summation order whatever `C` is, so a token's
/// result does not depend on the batch it came in (the engine's batch invariance).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn tile<const C: usize>(
    scales: &[u16],
    offset: Offset,
    bytes: RowBytes,
    acts: &[ActRow; C],
    out: &mut [f32; C],
) {
    unsafe {
        match bytes {
            RowBytes::Nibbles(qs) => blocks::<C, true>(scales, offset, qs.as_ptr(), acts, out),
            RowBytes::Bytes(qs) => {
                blocks::<C, false>(scales, offset, qs.as_ptr().cast(), acts, out)
            }
        }
    }
}

/// Up to 8 floats from `src[at..]`, zeros past its end.
#[inline(always)]
unsafe fn load8(src: &[f32], at: usize) -> __m256 {
    unsafe {
        if at + 8 <= src.len() {
            return _mm256_loadu_ps(src.as_ptr().add(at));
        }
        let mut v = [0f32; 8];
        let n = src.len() - at;
        v[..n].copy_from_slice(&src[at..]);
        _mm256_loadu_ps(v.as_ptr())
    }
}

/// Up to 8 f16 values from `src[at..]` as floats, zeros past its end.
#[inline(always)]
unsafe fn load8_f16(src: &[u16], at: usize) -> __m256 {
    unsafe {
        let mut h = [0u16; 8];
        let n = (src.len() - at).min(8);
        h[..n].copy_from_slice(&src[at..at + n]);
        _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast()))
    }
}

/// [`tile`] for one format family, 8 blocks per step: the 8 weight scales times each token's
/// 8 activation scales in one multiply (kept in a small array that each block broadcasts
/// from), and the offset term `m · Σx` as one multiply-add per 8 blocks and token. Keeping
/// the per-block work to load, multiply, convert and one multiply-add lets the accumulators
/// stay in registers: the previous one-block-at-a-time loop spilled them to the stack every
/// block (perf: a third of its samples on the stores).
#[inline(always)]
unsafe fn blocks<const C: usize, const NIBBLES: bool>(
    scales: &[u16],
    offset: Offset,
    qs: *const u8,
    acts: &[ActRow; C],
    out: &mut [f32; C],
) {
    unsafe {
        let nb = scales.len();
        let mut acc = [_mm256_setzero_ps(); C];
        let mut acc_min = [_mm256_setzero_ps(); C];
        let ones = _mm256_set1_epi16(1);
        let low_nibbles = _mm_set1_epi8(0x0F);
        let mut b0 = 0;
        while b0 < nb {
            let kc = (nb - b0).min(8);
            let dw = load8_f16(scales, b0);
            let mut dd = [[0f32; 8]; C];
            for c in 0..C {
                let dx = load8(acts[c].d, b0);
                _mm256_storeu_ps(dd[c].as_mut_ptr(), _mm256_mul_ps(dw, dx));
            }
            if NIBBLES {
                let (mw, sums_of) = match offset {
                    Offset::Min(mins) => (load8_f16(mins, b0), true),
                    Offset::TimesScale(k) => (_mm256_mul_ps(dw, _mm256_set1_ps(-k)), false),
                };
                for c in 0..C {
                    let sums = if sums_of {
                        acts[c].sums_f16
                    } else {
                        acts[c].sums
                    };
                    acc_min[c] = _mm256_fmadd_ps(mw, load8(sums, b0), acc_min[c]);
                }
            }
            for (k, b) in (b0..b0 + kc).enumerate() {
                if NIBBLES {
                    let packed = _mm_loadu_si128(qs.add(b * 16).cast());
                    let lo = _mm_and_si128(packed, low_nibbles);
                    let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles);
                    let w = _mm256_set_m128i(hi, lo);
                    for c in 0..C {
                        let x = _mm256_loadu_si256(acts[c].qs.as_ptr().add(b * 32).cast());
                        let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
                        let scale = _mm256_broadcast_ss(&dd[c][k]);
                        acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[c]);
                    }
                } else {
                    // ggml's sign trick: |w| times x carrying w's sign.
                    let w = _mm256_loadu_si256(qs.add(b * 32).cast());
                    let w_abs = _mm256_sign_epi8(w, w);
                    for c in 0..C {
                        let x = _mm256_loadu_si256(acts[c].qs.as_ptr().add(b * 32).cast());
                        let x_signed = _mm256_sign_epi8(x, w);
                        let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, x_signed), ones);
                        let scale = _mm256_broadcast_ss(&dd[c][k]);
                        acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[c]);
                    }
                }
            }
            b0 += kc;
        }
        for c in 0..C {
            out[c] = if NIBBLES {
                hsum(acc[c]) + hsum(acc_min[c])
            } else {
                hsum(acc[c])
            };
        }
    }
}
