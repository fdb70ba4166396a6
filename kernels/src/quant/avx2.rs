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
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn tile<const C: usize>(
    scales: &[u16],
    offset: Offset,
    bytes: RowBytes,
    acts: [ActRow; C],
    out: &mut [f32; C],
) {
    unsafe {
        let nb = scales.len();
        let mut acc = [_mm256_setzero_ps(); C];
        let mut acc_min = [0f32; C];
        let ones = _mm256_set1_epi16(1);
        let low_nibbles = _mm_set1_epi8(0x0F);
        let mut dw = [0f32; 8];
        let mut mw = [0f32; 8];
        for b in 0..nb {
            if b % 8 == 0 {
                let kc = (nb - b).min(8);
                let mut h = [0u16; 8];
                h[..kc].copy_from_slice(&scales[b..b + kc]);
                _mm256_storeu_ps(
                    dw.as_mut_ptr(),
                    _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast())),
                );
                match offset {
                    Offset::Min(mins) => {
                        h[..kc].copy_from_slice(&mins[b..b + kc]);
                        let m = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast()));
                        _mm256_storeu_ps(mw.as_mut_ptr(), m);
                    }
                    Offset::TimesScale(k) => {
                        for i in 0..8 {
                            mw[i] = -k * dw[i];
                        }
                    }
                }
            }
            let (d, m) = (dw[b % 8], mw[b % 8]);
            match bytes {
                RowBytes::Nibbles(qs) => {
                    let packed = _mm_loadu_si128(qs.as_ptr().add(b * 16).cast());
                    let lo = _mm_and_si128(packed, low_nibbles);
                    let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles);
                    let w = _mm256_set_m128i(hi, lo);
                    for c in 0..C {
                        let x = _mm256_loadu_si256(acts[c].qs.as_ptr().add(b * 32).cast());
                        let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
                        let scale = _mm256_set1_ps(d * acts[c].d[b]);
                        acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[c]);
                        let sum = match offset {
                            Offset::Min(_) => acts[c].sums_f16[b],
                            Offset::TimesScale(_) => acts[c].sums[b],
                        };
                        acc_min[c] += m * sum;
                    }
                }
                RowBytes::Bytes(qs) => {
                    let w = _mm256_loadu_si256(qs.as_ptr().add(b * 32).cast());
                    let w_abs = _mm256_sign_epi8(w, w);
                    for c in 0..C {
                        let x = _mm256_loadu_si256(acts[c].qs.as_ptr().add(b * 32).cast());
                        let x_signed = _mm256_sign_epi8(x, w);
                        let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, x_signed), ones);
                        let scale = _mm256_set1_ps(d * acts[c].d[b]);
                        acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[c]);
                    }
                }
            }
        }
        for c in 0..C {
            out[c] = hsum(acc[c]) + acc_min[c];
        }
    }
}
