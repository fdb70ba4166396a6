//! AVX2 kernels for Q4_K, Q5_K and Q6_K, for x86-64 CPUs without AVX-512 VNNI: one weight row
//! against `C ≤ 8` Q8_K activation rows. Q5_K and Q6_K read ggml's own block layout, after
//! ggml's `ggml_vec_dot_q{5,6}_K_q8_K` AVX2 paths; Q4_K reads the grouped layout of
//! `block_groups` ([`q4k_grouped_row`]; [`q45k_row`] still serves Q5_K).
//!
//! Per super-block the weights are unpacked once to unsigned bytes and meet every token of the
//! tile: `vpmaddubsw` (unsigned weight × signed activation byte, pairs summed to i16) then
//! `vpmaddwd` against the sub-block's integer scale broadcast to i16, so the scales apply in
//! integers (as ggml's do) and `d_w · d_x` once per super-block. None of the i16 pairs can
//! saturate: at most 2 · 63 · 127 (Q6_K's 6-bit levels) = 16002.
//! - Q4_K/Q5_K: the 6-bit scales and mins decoded with ggml's `utmp` trick; mins meet Q8_K's
//!   per-32 sums in one `vpmaddwd`; Q5_K's 5th bits come from `qh`, moved to bit 4 per value.
//! - Q6_K: levels 0..63 (low nibble | 2 high bits << 4); the −32 offset is
//!   `−32 · Σ sc · bsum16`, one `vpmaddwd` per super-block.
//!
//! AVX-VNNI (`vpdpbusd` on ymm) would fuse the two multiplies, but no CPU this was built on
//! has it, so it stays out: an untested path is worse than a slower one.

use std::arch::x86_64::*;

use super::activations::KActRow;

/// An f16 scale to f32 with F16C (the portable conversion is a call per super-block).
#[inline(always)]
unsafe fn f16_to_f32(b: &[u8], at: usize) -> f32 {
    unsafe {
        let bits = u16::from_le_bytes([b[at], b[at + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        hsum128(s)
    }
}

#[inline(always)]
unsafe fn hsum128(s: __m128) -> f32 {
    unsafe {
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// `scale · d_x` in every lane, `d_x` (a token's super-block scale) broadcast straight from
/// memory: a load, where `_mm256_set1_ps(scale * d_x)` cost a scalar multiply and a register
/// broadcast on the vector pipes per token and super-block. The same product, so the same bits.
#[inline(always)]
unsafe fn times_act_scale(scale: __m256, d_x: &f32) -> __m256 {
    unsafe { _mm256_mul_ps(scale, _mm256_broadcast_ss(d_x)) }
}

/// `vpshufb` controls: entry `i` broadcasts i16 word `i` of each 128-bit lane to all 8 of its
/// words. A table, not `_mm256_setr_epi8` with a loop index: the compiler built that vector
/// with 32 `vpinsrb` per use, a quarter of the kernel's time (perf, 2026-12-05).
static WORD_BROADCAST: [[i8; 32]; 8] = {
    let mut t = [[0i8; 32]; 8];
    let mut i = 0;
    while i < 8 {
        let mut b = 0;
        while b < 32 {
            t[i][b] = (2 * i + b % 2) as i8;
            b += 1;
        }
        i += 1;
    }
    t
};

#[inline(always)]
unsafe fn word_broadcast(i: usize) -> __m256i {
    unsafe { _mm256_loadu_si256(WORD_BROADCAST[i].as_ptr().cast()) }
}

/// `vpshufb` controls for Q6_K: entry `p` picks byte `2p` into bytes 0-7 and byte `2p + 1` into
/// bytes 8-15 (the scales of sub-blocks `2p`, `2p + 1`); a table for the same reason.
static SCALE_PAIR: [[i8; 16]; 8] = {
    let mut t = [[0i8; 16]; 8];
    let mut p = 0;
    while p < 8 {
        let mut b = 0;
        while b < 16 {
            t[p][b] = (2 * p + b / 8) as i8;
            b += 1;
        }
        p += 1;
    }
    t
};

/// Every byte's bit `b` moved to bit 4, other bits 0 (16-bit shifts; the mask keeps only bits
/// that came from the same byte).
#[inline(always)]
unsafe fn bit_to_4(v: __m256i, b: i32) -> __m256i {
    unsafe {
        let moved = if b <= 4 {
            _mm256_sll_epi16(v, _mm_cvtsi32_si128(4 - b))
        } else {
            _mm256_srl_epi16(v, _mm_cvtsi32_si128(b - 4))
        };
        _mm256_and_si256(moved, _mm256_set1_epi8(0x10))
    }
}

/// A Q4_K/Q5_K super-block's 6-bit scales and mins, unpacked with ggml's `utmp` trick: bytes
/// 0..8 the 8 sub-block scales, 8..16 the 8 mins.
#[inline(always)]
unsafe fn scales_and_mins(b: &[u8]) -> __m128i {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let mut u = [0u32; 4];
    for (i, w) in b[4..16].chunks_exact(4).enumerate() {
        u[i] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    }
    u[3] = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
    let mins_lo = u[1] & KMASK1;
    u[1] = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
    u[2] = mins_lo;
    u[0] &= KMASK1;
    unsafe { _mm_loadu_si128(u.as_ptr().cast()) }
}

/// Q4_K (`Q5 = false`) or Q5_K: `out[c] = row · acts[c]` for a row of ggml super-blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q45k_row<const C: usize, const Q5: bool>(
    row: &[u8],
    acts: &[KActRow; C],
    out: &mut [f32; C],
) {
    unsafe {
        let bb = if Q5 { 176 } else { 144 };
        // One accumulator per token: the mins' term (4 lanes) is subtracted into its low half
        // (a separate accumulator per token measured no faster, and costs 4 registers).
        let mut acc = [_mm256_setzero_ps(); C];
        let m4 = _mm256_set1_epi8(0x0F);
        for (s, b) in row.chunks_exact(bb).enumerate() {
            let d_w = _mm256_set1_ps(f16_to_f32(b, 0));
            let neg_dmin = _mm256_set1_ps(-f16_to_f32(b, 2));
            let scales_mins = _mm256_cvtepu8_epi16(scales_and_mins(b));
            let mins = _mm256_extracti128_si256(scales_mins, 1);
            let scales = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(scales_mins));
            let mut sumi = [_mm256_setzero_si256(); C];
            for c in 0..C {
                let bsums = _mm_loadu_si128(acts[c].bsums32.as_ptr().add(s * 8).cast());
                let prod = _mm_cvtepi32_ps(_mm_madd_epi16(mins, bsums));
                let dm = times_act_scale(neg_dmin, acts[c].d.get_unchecked(s));
                acc[c] = _mm256_fmadd_ps(dm, _mm256_zextps128_ps256(prod), acc[c]);
            }
            let (qh, qs) = if Q5 {
                (_mm256_loadu_si256(b.as_ptr().add(16).cast()), &b[48..])
            } else {
                (_mm256_setzero_si256(), &b[16..])
            };
            // 64 values per step: 32 bytes, low nibbles sub-block 2j, high ones 2j + 1.
            for j in 0..4 {
                let scale_lo = _mm256_shuffle_epi8(scales, word_broadcast(2 * j));
                let scale_hi = _mm256_shuffle_epi8(scales, word_broadcast(2 * j + 1));
                let bits = _mm256_loadu_si256(qs.as_ptr().add(32 * j).cast());
                let mut lo = _mm256_and_si256(bits, m4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                if Q5 {
                    lo = _mm256_or_si256(lo, bit_to_4(qh, 2 * j as i32));
                    hi = _mm256_or_si256(hi, bit_to_4(qh, 2 * j as i32 + 1));
                }
                for c in 0..C {
                    let x = acts[c].qs.as_ptr().add(s * 256 + 64 * j);
                    let x_lo = _mm256_loadu_si256(x.cast());
                    let x_hi = _mm256_loadu_si256(x.add(32).cast());
                    let p_lo = _mm256_madd_epi16(scale_lo, _mm256_maddubs_epi16(lo, x_lo));
                    let p_hi = _mm256_madd_epi16(scale_hi, _mm256_maddubs_epi16(hi, x_hi));
                    sumi[c] = _mm256_add_epi32(sumi[c], _mm256_add_epi32(p_lo, p_hi));
                }
            }
            for c in 0..C {
                let dd = times_act_scale(d_w, acts[c].d.get_unchecked(s));
                acc[c] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sumi[c]), acc[c]);
            }
        }
        for c in 0..C {
            out[c] = hsum(acc[c]);
        }
    }
}

/// Q4_K in the grouped layout of `block_groups` (lane `j` of every value register is
/// sub-block `j`), against grouped Q8_K activations: `out[c] = row · acts[c]`.
///
/// A super-block's products add up in 16 bits across its 8 value registers (each at most
/// 2 · 15 · 128 per pair, 8 of them 30720, below 32767), then one `vpmaddwd` against the 8
/// sub-block scales (each lane its own) widens and scales them at once: per token and
/// super-block 8 `vpmaddubsw` + 7 adds + 1 `vpmaddwd`, where [`q45k_row`] needs 8 of each
/// multiply, 8 adds and a scale shuffle per sub-block pair.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4k_grouped_row<const C: usize>(
    row: &[u8],
    acts: &[KActRow; C],
    out: &mut [f32; C],
) {
    unsafe {
        let mut acc = [_mm256_setzero_ps(); C];
        let m4 = _mm256_set1_epi8(0x0F);
        for (s, b) in row.chunks_exact(144).enumerate() {
            let d_w = _mm256_set1_ps(f16_to_f32(b, 0));
            let neg_dmin = _mm256_set1_ps(-f16_to_f32(b, 2));
            let scales_mins = scales_and_mins(b);
            let mins = _mm256_extracti128_si256(_mm256_cvtepu8_epi16(scales_mins), 1);
            // Lane j: sub-block j's scale in both of its 16-bit words.
            let scales = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(scales_mins, scales_mins));
            for c in 0..C {
                let bsums = _mm_loadu_si128(acts[c].bsums32.as_ptr().add(s * 8).cast());
                let prod = _mm_cvtepi32_ps(_mm_madd_epi16(mins, bsums));
                let dm = times_act_scale(neg_dmin, acts[c].d.get_unchecked(s));
                acc[c] = _mm256_fmadd_ps(dm, _mm256_zextps128_ps256(prod), acc[c]);
            }
            let qs = b.as_ptr().add(16);
            let mut sums = [_mm256_setzero_si256(); C];
            for p in 0..4 {
                let bits = _mm256_loadu_si256(qs.add(32 * p).cast());
                let lo = _mm256_and_si256(bits, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                for c in 0..C {
                    let x = acts[c].qs.as_ptr().add(s * 256 + 64 * p);
                    let x_lo = _mm256_loadu_si256(x.cast());
                    let x_hi = _mm256_loadu_si256(x.add(32).cast());
                    let pairs = _mm256_add_epi16(
                        _mm256_maddubs_epi16(lo, x_lo),
                        _mm256_maddubs_epi16(hi, x_hi),
                    );
                    sums[c] = _mm256_add_epi16(sums[c], pairs);
                }
            }
            for c in 0..C {
                let sumi = _mm256_madd_epi16(sums[c], scales);
                let dd = times_act_scale(d_w, acts[c].d.get_unchecked(s));
                acc[c] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sumi), acc[c]);
            }
        }
        for c in 0..C {
            out[c] = hsum(acc[c]);
        }
    }
}

/// Q6_K: as [`q45k_row`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q6k_row<const C: usize>(row: &[u8], acts: &[KActRow; C], out: &mut [f32; C]) {
    unsafe {
        let mut acc = [_mm256_setzero_ps(); C];
        let m4 = _mm256_set1_epi8(0x0F);
        let m2 = _mm256_set1_epi8(0x30);
        for (s, b) in row.chunks_exact(210).enumerate() {
            let d_w = _mm256_set1_ps(f16_to_f32(b, 208));
            let sc8 = _mm_loadu_si128(b.as_ptr().add(192).cast());
            // −32 · Σ sc · bsum16 starts every token's integer sum.
            let sc16 = _mm256_cvtepi8_epi16(sc8);
            let mut sumi = [_mm256_setzero_si256(); C];
            for c in 0..C {
                let bsums = _mm256_loadu_si256(acts[c].bsums.as_ptr().add(s * 16).cast());
                let offs = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bsums), 5);
                sumi[c] = _mm256_sub_epi32(sumi[c], offs);
            }
            for h in 0..2 {
                let ql = b.as_ptr().add(64 * h);
                let (a, bq) = (
                    _mm256_loadu_si256(ql.cast()),
                    _mm256_loadu_si256(ql.add(32).cast()),
                );
                let hb = _mm256_loadu_si256(b.as_ptr().add(128 + 32 * h).cast());
                // Values 128h + 32t + l, as in `SuperBlock::decode`.
                let v = [
                    _mm256_or_si256(
                        _mm256_and_si256(a, m4),
                        _mm256_and_si256(_mm256_slli_epi16(hb, 4), m2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(bq, m4),
                        _mm256_and_si256(_mm256_slli_epi16(hb, 2), m2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(a, 4), m4),
                        _mm256_and_si256(hb, m2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(bq, 4), m4),
                        _mm256_and_si256(_mm256_srli_epi16(hb, 2), m2),
                    ),
                ];
                for (t, &v) in v.iter().enumerate() {
                    // Sub-blocks 8h + 2t and 8h + 2t + 1 (16 values each): words 0-7 and 8-15.
                    let pick = _mm_loadu_si128(SCALE_PAIR[4 * h + t].as_ptr().cast());
                    let scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, pick));
                    for c in 0..C {
                        let x = acts[c].qs.as_ptr().add(s * 256 + 128 * h + 32 * t);
                        let x = _mm256_loadu_si256(x.cast());
                        let p = _mm256_madd_epi16(scale, _mm256_maddubs_epi16(v, x));
                        sumi[c] = _mm256_add_epi32(sumi[c], p);
                    }
                }
            }
            for c in 0..C {
                let dd = times_act_scale(d_w, acts[c].d.get_unchecked(s));
                acc[c] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sumi[c]), acc[c]);
            }
        }
        for c in 0..C {
            out[c] = hsum(acc[c]);
        }
    }
}
