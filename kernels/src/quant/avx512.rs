//! AVX-512 VNNI kernels for the 32-value formats: `vpdpbusd` multiplies 64 unsigned weight bytes
//! by 64 signed activation bytes per instruction, two blocks at a time.
//!
//! Every format is brought to unsigned bytes `u` with value = d·(u − offset) or d·u + m:
//! Q4_1 nibbles as they are (+ min), Q4_0 nibbles with offset 8, Q8_0 bytes XOR 0x80 (offset
//! 128). Then, per block, Σ value·x = d·d_x·Σu·q + m·(d_x·Σq), where `m` is the min or
//! −offset·d, and the activation side's `d_x·Σq` is precomputed ([`super::activations`]).
//!
//! A tile is one weight row against `C ≤ 4` activation rows: the weights are unpacked once and
//! used `C` times, which is where batching pays (prefill and batched decode).

use std::arch::x86_64::*;

use super::activations::ActRow;
use super::gemm::{Offset, RowBytes};

/// Quantizes one block of 32 floats (see `activations::quantize_block`, which this matches
/// bit for bit).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    unsafe {
        let x0 = _mm512_loadu_ps(x.as_ptr());
        let x1 = _mm512_loadu_ps(x.as_ptr().add(16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let scale = _mm512_set1_ps(id);
        let lo = _mm512_cvtps_epi32(_mm512_mul_ps(x0, scale));
        let hi = _mm512_cvtps_epi32(_mm512_mul_ps(x1, scale));
        _mm_storeu_si128(q.as_mut_ptr().cast(), _mm512_cvtsepi32_epi8(lo));
        _mm_storeu_si128(q.as_mut_ptr().add(16).cast(), _mm512_cvtsepi32_epi8(hi));
        let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(lo, hi));
        let d = super::activations::round_scale(d);
        (d, d * sum as f32)
    }
}

/// `out[c] = Σ_b row · acts[c]` over the row's `scales.len()` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub(crate) unsafe fn tile<const C: usize>(
    scales: &[u16],
    offset: Offset,
    bytes: RowBytes,
    acts: &[ActRow; C],
    out: &mut [f32; C],
) {
    unsafe {
        let nb = scales.len();
        let mut acc = [_mm512_setzero_ps(); C];
        let mut acc_min = [_mm512_setzero_ps(); C];
        let low_nibbles = _mm512_set1_epi8(0x0F);
        let flip = _mm512_set1_epi8(-128);
        // [b0, b0, b1, b1] in 128-bit lanes, then lanes 1 and 3 take the high nibbles.
        let dup = _mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0);
        let mut b0 = 0;
        while b0 < nb {
            let kc = (nb - b0).min(16);
            let mask = ((1u32 << kc) - 1) as u16;
            let dw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                mask,
                scales.as_ptr().add(b0).cast(),
            ));
            let mw = match offset {
                Offset::Min(mins) => {
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, mins.as_ptr().add(b0).cast()))
                }
                Offset::TimesScale(k) => _mm512_mul_ps(dw, _mm512_set1_ps(-k)),
            };
            let mut prod = [_mm512_setzero_ps(); C];
            for c in 0..C {
                let dx = _mm512_maskz_loadu_ps(mask, acts[c].d.as_ptr().add(b0));
                let sums = match offset {
                    Offset::Min(_) => acts[c].sums_f16,
                    Offset::TimesScale(_) => acts[c].sums,
                };
                let sx = _mm512_maskz_loadu_ps(mask, sums.as_ptr().add(b0));
                prod[c] = _mm512_mul_ps(dw, dx);
                acc_min[c] = _mm512_fmadd_ps(mw, sx, acc_min[c]);
            }
            // Lanes 0-7 read block 2·pair's scale, lanes 8-15 block 2·pair + 1's.
            let mut lanes = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
            let mut pair = 0;
            while pair * 2 < kc {
                let b = b0 + pair * 2;
                let two = pair * 2 + 1 < kc;
                let w = match bytes {
                    RowBytes::Nibbles(qs) => {
                        let src = qs.as_ptr().add(b * 16);
                        let packed = if two {
                            _mm256_loadu_si256(src.cast())
                        } else {
                            _mm256_maskz_loadu_epi8(0xFFFF, src.cast())
                        };
                        let z = _mm512_permutexvar_epi64(dup, _mm512_castsi256_si512(packed));
                        let hi = _mm512_srli_epi16(z, 4);
                        _mm512_and_si512(_mm512_mask_blend_epi64(0xCC, z, hi), low_nibbles)
                    }
                    RowBytes::Bytes(qs) => {
                        let src = qs.as_ptr().add(b * 32);
                        let raw = if two {
                            _mm512_loadu_si512(src.cast())
                        } else {
                            _mm512_maskz_loadu_epi8(0xFFFF_FFFF, src.cast())
                        };
                        _mm512_xor_si512(raw, flip)
                    }
                };
                for c in 0..C {
                    let src = acts[c].qs.as_ptr().add(b * 32);
                    let x = if two {
                        _mm512_loadu_si512(src.cast())
                    } else {
                        _mm512_maskz_loadu_epi8(0xFFFF_FFFF, src.cast())
                    };
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
                    let scale = _mm512_permutexvar_ps(lanes, prod[c]);
                    acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[c]);
                }
                lanes = _mm512_add_epi32(lanes, _mm512_set1_epi32(2));
                pair += 1;
            }
            b0 += kc;
        }
        for c in 0..C {
            out[c] = _mm512_reduce_add_ps(acc[c]) + _mm512_reduce_add_ps(acc_min[c]);
        }
    }
}
