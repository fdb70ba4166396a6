//! AVX2 kernels for the 32-value formats, for x86-64 CPUs without AVX-512 VNNI, over the
//! grouped layout of `block_groups` (one block per 32-bit lane): `vpmaddubsw` (unsigned ×
//! signed bytes to 16-bit pairs) then `vpmaddwd` to 32-bit, one or two weight rows against up
//! to 4 activation rows per call.
//!
//! Nibbles (0..15) times activations (|q| ≤ 127) cannot overflow the 16-bit pairs. Q8_0 uses
//! ggml's sign trick instead of an offset: |w| times x carrying w's sign.

use std::arch::x86_64::*;

use super::activations::ActRow;
use super::block_groups::GROUP_BLOCKS;
use super::gemm::{Offset, RowBytes, WeightRow};

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `out[r][c] = Σ_b rows[r] · acts[c]`, the rows' bytes and the activations' in the grouped
/// layout. Every row of a call must be of the same format and length.
///
/// Each token has its own accumulators and summation order whatever `R` and `C` are, so a
/// token's result does not depend on the batch it came in (the engine's batch invariance).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn tile<const R: usize, const C: usize>(
    rows: &[WeightRow; R],
    acts: &[ActRow; C],
    out: &mut [[f32; C]; R],
) {
    unsafe {
        match rows[0].bytes {
            RowBytes::Nibbles(_) => blocks::<R, C, true>(rows, acts, out),
            RowBytes::Bytes(_) => blocks::<R, C, false>(rows, acts, out),
        }
    }
}

/// [`tile`] for one format family. Full groups of 8 blocks (the `block_groups` layout): per row
/// and token, the group's products add up in integers lane by lane (16-bit for nibbles, whose
/// products are at most 2·15·127 per pair, so 8 of them fit; 32-bit for bytes), then one
/// conversion and one FMA apply the 8 block scales at once; the offset term `m · Σx` is one
/// FMA per group. The remaining blocks (fewer than 8) go one at a time in ggml's order.
#[inline(always)]
unsafe fn blocks<const R: usize, const C: usize, const NIBBLES: bool>(
    rows: &[WeightRow; R],
    acts: &[ActRow; C],
    out: &mut [[f32; C]; R],
) {
    unsafe {
        let nb = rows[0].scales.len();
        let full = nb / GROUP_BLOCKS * GROUP_BLOCKS;
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut acc_offset = [[_mm256_setzero_ps(); C]; R];
        let ones = _mm256_set1_epi16(1);
        let low_nibbles = _mm256_set1_epi8(0x0F);
        let qs: [*const u8; R] = std::array::from_fn(|r| match rows[r].bytes {
            RowBytes::Nibbles(q) => q.as_ptr(),
            RowBytes::Bytes(q) => q.as_ptr().cast(),
        });
        let block_bytes = if NIBBLES { 16 } else { 32 };
        for g in (0..full).step_by(GROUP_BLOCKS) {
            if R > 1 {
                for &q in &qs {
                    prefetch_ahead(q.add(g * block_bytes), GROUP_BLOCKS * block_bytes);
                }
            }
            let mut sums = [[_mm256_setzero_si256(); C]; R];
            if NIBBLES {
                for p in 0..4 {
                    let mut lo = [_mm256_setzero_si256(); R];
                    let mut hi = [_mm256_setzero_si256(); R];
                    for r in 0..R {
                        let packed = _mm256_loadu_si256(qs[r].add(g * 16 + p * 32).cast());
                        lo[r] = _mm256_and_si256(packed, low_nibbles);
                        hi[r] = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_nibbles);
                    }
                    for c in 0..C {
                        let x = acts[c].qs.as_ptr().add(g * 32 + p * 64);
                        let x_lo = _mm256_loadu_si256(x.cast());
                        let x_hi = _mm256_loadu_si256(x.add(32).cast());
                        for r in 0..R {
                            let pairs = _mm256_add_epi16(
                                _mm256_maddubs_epi16(lo[r], x_lo),
                                _mm256_maddubs_epi16(hi[r], x_hi),
                            );
                            sums[r][c] = _mm256_add_epi16(sums[r][c], pairs);
                        }
                    }
                }
                for s in sums.iter_mut().flatten() {
                    *s = _mm256_madd_epi16(*s, ones);
                }
            } else {
                for v in 0..8 {
                    let mut w = [_mm256_setzero_si256(); R];
                    let mut w_abs = [_mm256_setzero_si256(); R];
                    for r in 0..R {
                        w[r] = _mm256_loadu_si256(qs[r].add(g * 32 + v * 32).cast());
                        w_abs[r] = _mm256_sign_epi8(w[r], w[r]);
                    }
                    for c in 0..C {
                        let x = _mm256_loadu_si256(acts[c].qs.as_ptr().add(g * 32 + v * 32).cast());
                        for r in 0..R {
                            // ggml's sign trick: |w| times x carrying w's sign.
                            let pairs = _mm256_maddubs_epi16(w_abs[r], _mm256_sign_epi8(x, w[r]));
                            sums[r][c] =
                                _mm256_add_epi32(sums[r][c], _mm256_madd_epi16(pairs, ones));
                        }
                    }
                }
            }
            for r in 0..R {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(rows[r].scales.as_ptr().add(g).cast()));
                let mw = if NIBBLES {
                    match rows[r].offset {
                        Offset::Min(mins) => {
                            _mm256_cvtph_ps(_mm_loadu_si128(mins.as_ptr().add(g).cast()))
                        }
                        Offset::TimesScale(m) => _mm256_mul_ps(dw, _mm256_set1_ps(-m)),
                    }
                } else {
                    _mm256_setzero_ps()
                };
                for c in 0..C {
                    let dx = _mm256_loadu_ps(acts[c].d.as_ptr().add(g));
                    let dd = _mm256_mul_ps(dw, dx);
                    acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[r][c]), dd, acc[r][c]);
                    if NIBBLES {
                        let x_sums = offset_sums(rows[r].offset, acts[c]);
                        let x_sums = _mm256_loadu_ps(x_sums.as_ptr().add(g));
                        acc_offset[r][c] = _mm256_fmadd_ps(mw, x_sums, acc_offset[r][c]);
                    }
                }
            }
        }
        // The tail blocks (fewer than 8, ggml's order): each block's 8 lanes of integer partial
        // sums are converted and scaled into the same accumulator as the groups, the block's
        // scale broadcast. A horizontal sum per block and token cost as much as the 16 grouped
        // blocks of a 576-column row (quant_bench 49152x576 Q8_0, 4 tokens, Zen 3: 2.5 ms vs
        // 1.46 ms for 512 columns); the scalar `tail_offset` keeps only the offset terms.
        let mut tail_offset = [[0f32; C]; R];
        for b in full..nb {
            for r in 0..R {
                let dw = f16_to_f32_f16c(rows[r].scales[b]);
                let w = if NIBBLES {
                    let packed = _mm_loadu_si128(qs[r].add(b * 16).cast());
                    let lo = _mm_and_si128(packed, _mm256_castsi256_si128(low_nibbles));
                    let hi = _mm_and_si128(
                        _mm_srli_epi16(packed, 4),
                        _mm256_castsi256_si128(low_nibbles),
                    );
                    _mm256_set_m128i(hi, lo)
                } else {
                    _mm256_loadu_si256(qs[r].add(b * 32).cast())
                };
                let w_abs = _mm256_sign_epi8(w, w);
                for c in 0..C {
                    let x = _mm256_loadu_si256(acts[c].qs.as_ptr().add(b * 32).cast());
                    let pairs = if NIBBLES {
                        _mm256_maddubs_epi16(w, x)
                    } else {
                        _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(x, w))
                    };
                    let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                    let dd = _mm256_set1_ps(dw * acts[c].d[b]);
                    acc[r][c] = _mm256_fmadd_ps(dot, dd, acc[r][c]);
                    if NIBBLES {
                        let mw = match rows[r].offset {
                            Offset::Min(mins) => f16_to_f32_f16c(mins[b]),
                            Offset::TimesScale(m) => -m * dw,
                        };
                        tail_offset[r][c] += mw * offset_sums(rows[r].offset, acts[c])[b];
                    }
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                out[r][c] = if NIBBLES {
                    hsum(acc[r][c]) + hsum(acc_offset[r][c]) + tail_offset[r][c]
                } else {
                    hsum(acc[r][c])
                };
            }
        }
    }
}

/// How far ahead of the multiplies the weight bytes of a two-row tile are prefetched (the rows
/// lie end to end, so this runs on into the next pair). Without it the two-row Q8_0 tile waits
/// on its second row's loads: perf annotate of quant_bench 49152x576 Q8_0 at 4 tokens put 43%
/// of the kernel's samples on the instruction after that load, and with it the call takes
/// 2.35-2.38 -> 1.90-1.91 ms (2 threads, Zen 3, alternating binaries). One-row tiles (decode,
/// short tiles, the nibble formats) measured no different with it, so they go without.
const PREFETCH_BYTES: usize = 1024;

/// Prefetches the cache lines `PREFETCH_BYTES` past `span` bytes from `at` into L1.
#[inline(always)]
unsafe fn prefetch_ahead(at: *const u8, span: usize) {
    unsafe {
        let mut line = 0;
        while line < span {
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_BYTES + line).cast());
            line += 64;
        }
    }
}

/// One f16 to f32 with the F16C instruction, inline (the `half` crate's call showed in perf).
#[inline(always)]
unsafe fn f16_to_f32_f16c(bits: u16) -> f32 {
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits)))) }
}

/// The activation sums a row's offset term multiplies: `Σx` rounded like an f16 min for
/// Q4_1 (ggml's Q8_1 `s`), exact for Q4_0's `−8·d`.
#[inline(always)]
fn offset_sums<'a>(offset: Offset, acts: ActRow<'a>) -> &'a [f32] {
    match offset {
        Offset::Min(_) => acts.sums_f16,
        Offset::TimesScale(_) => acts.sums,
    }
}
