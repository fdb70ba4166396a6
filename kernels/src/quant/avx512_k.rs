//! AVX-512 VNNI kernels for Q4_K, Q5_K and Q6_K over the 16-row interleaved super-blocks
//! ([`super::kquant`]): one group of 16 weight rows against `C ≤ 4` Q8_K activation rows,
//! every 32-bit lane one row's running dot product.
//!
//! Per super-block, the weights are unpacked once and meet every token of the tile:
//! - Q4_K: each 64-byte load is 4 values × 16 rows of two sub-blocks (low and high nibbles).
//!   The high nibbles are kept in place (`& 0xF0`, 16× their level) instead of shifted: zmm
//!   shifts share port 0 with `vpdpbusd`, and the 1/16 is folded, exactly, into the float
//!   sub-block scale. The 6-bit scales and mins are decoded with ggml's `utmp` trick, 16 rows
//!   at a time (it is all 32-bit lane arithmetic). Mins meet Q8_K's per-32 sums in `vpdpwssd`
//!   (exact integers, as ggml).
//! - Q5_K: as Q4_K, with each value's 5th bit from `qh` added where set (`vptestmb` into a
//!   mask, then a masked byte add: no zmm shift for the low half). A 5-bit high level does not
//!   fit in place (16 × 31 > 255), so the high nibbles are shifted down one bit instead (8× their
//!   level, at most 248) and the 1/8 goes into the float scale.
//! - Q6_K: 6-bit levels `u` (0..63) built from the low nibbles and the 2 high bits; the −32
//!   offset becomes `−32 · Σ sc · bsum16` (again `vpdpwssd`), as ggml's AVX2 kernel does.
//!
//! Each sub-block's integer sum is converted and multiplied by its float scale (`sc`, exact in
//! f32), then `d_w · d_x` once per super-block: equal to ggml's integer sums up to f32 rounding.

use std::arch::x86_64::*;

use super::activations::KActRow;
use super::interleaved::GROUP;

/// Broadcast of dword `i` of an activation row's levels.
#[inline(always)]
unsafe fn bcast(qs: &[i8], i: usize) -> __m512i {
    unsafe { _mm512_set1_epi32(qs.as_ptr().cast::<i32>().add(i).read_unaligned()) }
}

/// Broadcast of dword `i` of an i16 array (two sums).
#[inline(always)]
unsafe fn bcast16(s: &[i16], i: usize) -> __m512i {
    unsafe { _mm512_set1_epi32(s.as_ptr().cast::<i32>().add(i).read_unaligned()) }
}

/// Byte `b` (0..4) of every dword, zero-extended.
#[inline(always)]
unsafe fn byte_of(v: __m512i, b: u32) -> __m512i {
    unsafe {
        _mm512_and_si512(
            _mm512_srl_epi32(v, _mm_cvtsi32_si128(b as i32 * 8)),
            _mm512_set1_epi32(0xFF),
        )
    }
}

/// Bytes `b`, `b + 1` of every dword as two zero-extended i16 (for `vpdpwssd`).
#[inline(always)]
unsafe fn byte_pair(v: __m512i, b: u32) -> __m512i {
    unsafe {
        let x = _mm512_srl_epi32(v, _mm_cvtsi32_si128(b as i32 * 8));
        _mm512_or_si512(
            _mm512_and_si512(x, _mm512_set1_epi32(0xFF)),
            _mm512_and_si512(_mm512_slli_epi32(x, 8), _mm512_set1_epi32(0x00FF_0000)),
        )
    }
}

/// Q4_K and Q5_K (`Q5`): `out[c][j] = Σ row(16g + j) · acts[c]` over `chunks` (the group's
/// super-blocks). Both share the header (d, dmin, 12 bytes of 6-bit scales and mins); Q5_K's
/// `qh` (one bit per value) sits between it and the nibbles.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub(crate) unsafe fn q45k_group<const C: usize, const Q5: bool>(
    chunks: &[u8],
    acts: [KActRow; C],
    out: &mut [[f32; GROUP]; C],
) {
    unsafe {
        let bb = if Q5 { 176 } else { 144 };
        let nsb = chunks.len() / (GROUP * bb);
        let mut acc = [_mm512_setzero_ps(); C];
        let low = _mm512_set1_epi8(0x0F);
        let high = _mm512_set1_epi8(-16); // 0xF0
        // Q5_K's high nibbles as 8× their level: bits 3..7 (see `unpack_q5`).
        let high5 = _mm512_set1_epi8(0x78);
        let (bit4, bit7) = (_mm512_set1_epi8(0x10), _mm512_set1_epi8(-128));
        // High nibbles stay 16× (Q4_K) or 8× (Q5_K) their level; the float scale undoes it.
        let hi_scale = _mm512_set1_ps(if Q5 { 1.0 / 8.0 } else { 1.0 / 16.0 });
        let (k1, k2, k3) = (
            _mm512_set1_epi32(0x3f3f3f3f),
            _mm512_set1_epi32(0x0f0f0f0f),
            _mm512_set1_epi32(0x03030303),
        );
        for s in 0..nsb {
            let base = chunks.as_ptr().add(s * GROUP * bb);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(base.cast()));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(base.add(32).cast()));
            let u0 = _mm512_loadu_si512(base.add(64).cast());
            let u1 = _mm512_loadu_si512(base.add(128).cast());
            let u2 = _mm512_loadu_si512(base.add(192).cast());
            // ggml's utmp decode, per lane: scales 0-3, 4-7, mins 0-3, 4-7.
            let sc_lo = _mm512_and_si512(u0, k1);
            let sc_hi = _mm512_or_si512(
                _mm512_and_si512(u2, k2),
                _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u0, 6), k3), 4),
            );
            let m_lo = _mm512_and_si512(u1, k1);
            let m_hi = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi32(u2, 4), k2),
                _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u1, 6), k3), 4),
            );
            let mins = [
                byte_pair(m_lo, 0),
                byte_pair(m_lo, 2),
                byte_pair(m_hi, 0),
                byte_pair(m_hi, 2),
            ];
            let mut sumf = [_mm512_setzero_ps(); C];
            let mut summ = [_mm512_setzero_si512(); C];
            for (c, a) in acts.iter().enumerate() {
                for (p, &m) in mins.iter().enumerate() {
                    summ[c] = _mm512_dpwssd_epi32(summ[c], m, bcast16(a.bsums32, s * 4 + p));
                }
            }
            // Q5_K: dword k of 16 rows' qh at 256 + 64k; the nibbles after all of qh.
            let qh = base.add(256);
            let qs = base.add(if Q5 { 768 } else { 256 });
            // Chunk `ch` of 64 values: sub-blocks 2ch (low nibbles), 2ch + 1 (high).
            for ch in 0..4 {
                let scs = if ch < 2 { sc_lo } else { sc_hi };
                let f_lo = _mm512_cvtepi32_ps(byte_of(scs, (ch as u32 % 2) * 2));
                let f_hi = _mm512_mul_ps(
                    _mm512_cvtepi32_ps(byte_of(scs, (ch as u32 % 2) * 2 + 1)),
                    hi_scale,
                );
                let mut dot_lo = [_mm512_setzero_si512(); C];
                let mut dot_hi = [_mm512_setzero_si512(); C];
                for k in 0..8 {
                    let p = _mm512_loadu_si512(qs.add((ch * 8 + k) * 64).cast());
                    let (lo, hi) = if Q5 {
                        // qh byte l holds the 5th bit of value 64ch + l (bit 2ch) and of
                        // 64ch + 32 + l (bit 2ch + 1): added where set, as 16 and 8·16.
                        let h = _mm512_loadu_si512(qh.add(k * 64).cast());
                        let lo = _mm512_and_si512(p, low);
                        let hi = _mm512_and_si512(_mm512_srli_epi16(p, 1), high5);
                        let lo_set = _mm512_test_epi8_mask(h, _mm512_set1_epi8(1 << (2 * ch)));
                        let hi_set =
                            _mm512_test_epi8_mask(h, _mm512_set1_epi8((2u8 << (2 * ch)) as i8));
                        (
                            _mm512_mask_add_epi8(lo, lo_set, lo, bit4),
                            _mm512_mask_add_epi8(hi, hi_set, hi, bit7),
                        )
                    } else {
                        (_mm512_and_si512(p, low), _mm512_and_si512(p, high))
                    };
                    for c in 0..C {
                        let at = s * 64 + ch * 16 + k;
                        dot_lo[c] = _mm512_dpbusd_epi32(dot_lo[c], lo, bcast(acts[c].qs, at));
                        dot_hi[c] = _mm512_dpbusd_epi32(dot_hi[c], hi, bcast(acts[c].qs, at + 8));
                    }
                }
                for c in 0..C {
                    sumf[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot_lo[c]), f_lo, sumf[c]);
                    sumf[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot_hi[c]), f_hi, sumf[c]);
                }
            }
            for c in 0..C {
                let dx = _mm512_set1_ps(*acts[c].d.get_unchecked(s));
                acc[c] = _mm512_fmadd_ps(sumf[c], _mm512_mul_ps(d, dx), acc[c]);
                let m = _mm512_cvtepi32_ps(summ[c]);
                acc[c] = _mm512_fnmadd_ps(m, _mm512_mul_ps(dmin, dx), acc[c]);
            }
        }
        for c in 0..C {
            _mm512_storeu_ps(out[c].as_mut_ptr(), acc[c]);
        }
    }
}

/// Sign-extended byte `b` of every dword, as f32.
#[inline(always)]
unsafe fn sbyte_f32(v: __m512i, b: u32) -> __m512 {
    unsafe {
        let x = match b {
            0 => _mm512_slli_epi32(v, 24),
            1 => _mm512_slli_epi32(v, 16),
            2 => _mm512_slli_epi32(v, 8),
            _ => v,
        };
        _mm512_cvtepi32_ps(_mm512_srai_epi32(x, 24))
    }
}

/// Sign-extended bytes `b`, `b + 1` of every dword as two i16.
#[inline(always)]
unsafe fn sbyte_pair(v: __m512i, b: u32) -> __m512i {
    unsafe {
        // Byte b to bits 8..16, byte b + 1 to bits 24..32, then an arithmetic shift per word.
        let (lo, hi) = if b == 0 {
            (_mm512_slli_epi32(v, 8), _mm512_slli_epi32(v, 16))
        } else {
            (_mm512_srli_epi32(v, 8), v)
        };
        let words = _mm512_mask_blend_epi16(0xAAAA_AAAA, lo, hi);
        _mm512_srai_epi16(words, 8)
    }
}

/// Q6_K: as [`q45k_group`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub(crate) unsafe fn q6k_group<const C: usize>(
    chunks: &[u8],
    acts: [KActRow; C],
    out: &mut [[f32; GROUP]; C],
) {
    unsafe {
        let nsb = chunks.len() / (GROUP * 210);
        let mut acc = [_mm512_setzero_ps(); C];
        let low = _mm512_set1_epi8(0x0F);
        let two = _mm512_set1_epi8(0x30);
        for s in 0..nsb {
            let base = chunks.as_ptr().add(s * GROUP * 210);
            let (ql, qh) = (base, base.add(GROUP * 128));
            let sv: [__m512i; 4] =
                std::array::from_fn(|i| _mm512_loadu_si512(base.add(GROUP * 192 + i * 64).cast()));
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(base.add(GROUP * 208).cast()));
            // −32 · Σ sc · bsum16, in integers.
            let pairs: [__m512i; 8] =
                std::array::from_fn(|p| sbyte_pair(sv[p / 2], (p as u32 % 2) * 2));
            let mut offs = [_mm512_setzero_si512(); C];
            for (c, a) in acts.iter().enumerate() {
                for (p, &sc) in pairs.iter().enumerate() {
                    offs[c] = _mm512_dpwssd_epi32(offs[c], sc, bcast16(a.bsums, s * 8 + p));
                }
            }
            let mut sumf = [_mm512_setzero_ps(); C];
            for h in 0..2 {
                for q in 0..2 {
                    // Sub-blocks h·8 + 2t + q for t = 0..4 (values h·128 + 32t + 16q..).
                    let mut dots = [[_mm512_setzero_si512(); 4]; C];
                    for k in 4 * q..4 * q + 4 {
                        let a = _mm512_loadu_si512(ql.add((h * 16 + k) * 64).cast());
                        let b = _mm512_loadu_si512(ql.add((h * 16 + 8 + k) * 64).cast());
                        let hb = _mm512_loadu_si512(qh.add((h * 8 + k) * 64).cast());
                        let or_low = |n: __m512i, hbits: __m512i| {
                            _mm512_ternarylogic_epi32(n, low, _mm512_and_si512(hbits, two), 0xEA)
                        };
                        let v = [
                            or_low(a, _mm512_slli_epi16(hb, 4)),
                            or_low(b, _mm512_slli_epi16(hb, 2)),
                            or_low(_mm512_srli_epi16(a, 4), hb),
                            or_low(_mm512_srli_epi16(b, 4), _mm512_srli_epi16(hb, 2)),
                        ];
                        for c in 0..C {
                            for t in 0..4 {
                                let at = s * 64 + h * 32 + 8 * t + k;
                                dots[c][t] =
                                    _mm512_dpbusd_epi32(dots[c][t], v[t], bcast(acts[c].qs, at));
                            }
                        }
                    }
                    let f: [__m512; 4] = std::array::from_fn(|t| {
                        let g = h * 8 + 2 * t + q;
                        sbyte_f32(sv[g / 4], g as u32 % 4)
                    });
                    for (sum, dots) in sumf.iter_mut().zip(&dots) {
                        for (&dot, &f) in dots.iter().zip(&f) {
                            *sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), f, *sum);
                        }
                    }
                }
            }
            for c in 0..C {
                let dx = _mm512_set1_ps(*acts[c].d.get_unchecked(s));
                let total =
                    _mm512_fnmadd_ps(_mm512_cvtepi32_ps(offs[c]), _mm512_set1_ps(32.0), sumf[c]);
                acc[c] = _mm512_fmadd_ps(total, _mm512_mul_ps(d, dx), acc[c]);
            }
        }
        for c in 0..C {
            _mm512_storeu_ps(out[c].as_mut_ptr(), acc[c]);
        }
    }
}

/// One super-block of activations as ggml's Q8_K: bit for bit what
/// [`super::activations::quantize_q8k`] computes (levels, per-16 sums and the returned `d`),
/// 16 values per instruction. The scalar loop cost ~15 ns per value (its round-to-even is a
/// libm call on baseline x86-64), a tenth of a 512-token Q4_K prefill.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn quantize_q8k(x: &[f32], q: &mut [i8], bsums: &mut [i16]) -> f32 {
    assert!(x.len() == 256 && q.len() == 256 && bsums.len() == 16);
    unsafe {
        let load = |i: usize| _mm512_loadu_ps(x.as_ptr().add(16 * i));
        // `max(|v|, m)`: vmaxps returns its second operand when either is NaN, so a NaN is
        // skipped as the scalar `|v| > amax` skips it.
        let mut m = _mm512_setzero_ps();
        for i in 0..16 {
            m = _mm512_max_ps(_mm512_abs_ps(load(i)), m);
        }
        let amax = _mm512_reduce_max_ps(m);
        if amax == 0.0 {
            q.fill(0);
            bsums.fill(0);
            return 0.0;
        }
        // The scalar loop keeps the first value of largest magnitude (its sign matters).
        let target = _mm512_set1_ps(amax);
        let mut max = 0.0;
        for i in 0..16 {
            let hits = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(load(i)), target);
            if hits != 0 {
                max = x[16 * i + hits.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let scale = _mm512_set1_ps(iscale);
        let top = _mm512_set1_epi32(127);
        for (i, sum) in bsums.iter_mut().enumerate() {
            // Default MXCSR rounding: to nearest, ties to even, as `round_ties_even`.
            let levels = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(scale, load(i))), top);
            _mm_storeu_si128(
                q.as_mut_ptr().add(16 * i).cast(),
                _mm512_cvtepi32_epi8(levels),
            );
            *sum = _mm512_reduce_add_epi32(levels) as i16;
        }
        1.0 / iscale
    }
}
