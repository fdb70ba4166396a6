//! The AVX-512 VNNI kernel over the row-interleaved layout ([`super::interleaved`]): one group
//! of 16 weight rows against `C ≤ 4` activation rows, every lane one row's running dot product.
//!
//! Per block: the weights' unsigned bytes (nibbles, or Q8_0 bytes XOR 0x80) meet broadcast
//! activation dwords in `vpdpbusd`; then `acc += cvt(Σ) · (d_w[16] · d_x)` and, for the offset,
//! `acc_min += m[16] · (d_x·Σq_x)`, where `m` is Q4_1's mins or −offset·d_w (8 for Q4_0, 128
//! for the flipped Q8_0 bytes), as in [`super::avx512`].

use std::arch::x86_64::*;

use super::activations::ActRow;
use super::interleaved::GROUP;

/// What the group's value bytes are.
#[derive(Clone, Copy)]
pub(crate) enum GroupBytes<'a> {
    /// 256 bytes per block (see `interleaved`).
    Nibbles(&'a [u8]),
    /// 512 bytes per block.
    Bytes(&'a [i8]),
}

/// `out[c][j] = Σ_b row(16g + j) · acts[c]` for the group whose per-block slices are given.
/// `scales`/`mins`: `nb · 16` f16; `mins = None` means offset `k` (8 or 128).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub(crate) unsafe fn group_tile<const C: usize>(
    scales: &[u16],
    mins: Option<&[u16]>,
    offset: f32,
    bytes: GroupBytes,
    acts: [ActRow; C],
    out: &mut [[f32; GROUP]; C],
) {
    unsafe {
        let nb = scales.len() / GROUP;
        let mut acc = [_mm512_setzero_ps(); C];
        let mut acc_min = [_mm512_setzero_ps(); C];
        let low = _mm512_set1_epi8(0x0F);
        let flip = _mm512_set1_epi8(-128);
        let neg_offset = _mm512_set1_ps(-offset);
        for b in 0..nb {
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(b * GROUP).cast()));
            let mw = match mins {
                Some(m) => _mm512_cvtph_ps(_mm256_loadu_si256(m.as_ptr().add(b * GROUP).cast())),
                None => _mm512_mul_ps(dw, neg_offset),
            };
            let mut isum_a = [_mm512_setzero_si512(); C];
            let mut isum_b = [_mm512_setzero_si512(); C];
            match bytes {
                GroupBytes::Nibbles(qs) => {
                    let base = qs.as_ptr().add(b * 256);
                    for k in 0..4 {
                        let p = _mm512_loadu_si512(base.add(k * 64).cast());
                        let lo = _mm512_and_si512(p, low);
                        let hi = _mm512_and_si512(_mm512_srli_epi16(p, 4), low);
                        for c in 0..C {
                            let x = acts[c].qs.as_ptr().add(b * 32).cast::<i32>();
                            let x_lo = _mm512_set1_epi32(x.add(k).read_unaligned());
                            let x_hi = _mm512_set1_epi32(x.add(4 + k).read_unaligned());
                            isum_a[c] = _mm512_dpbusd_epi32(isum_a[c], lo, x_lo);
                            isum_b[c] = _mm512_dpbusd_epi32(isum_b[c], hi, x_hi);
                        }
                    }
                }
                GroupBytes::Bytes(qs) => {
                    let base = qs.as_ptr().add(b * 512);
                    for k in 0..4 {
                        let w0 =
                            _mm512_xor_si512(_mm512_loadu_si512(base.add(k * 64).cast()), flip);
                        let w1 = _mm512_xor_si512(
                            _mm512_loadu_si512(base.add((k + 4) * 64).cast()),
                            flip,
                        );
                        for c in 0..C {
                            let x = acts[c].qs.as_ptr().add(b * 32).cast::<i32>();
                            let x0 = _mm512_set1_epi32(x.add(k).read_unaligned());
                            let x1 = _mm512_set1_epi32(x.add(4 + k).read_unaligned());
                            isum_a[c] = _mm512_dpbusd_epi32(isum_a[c], w0, x0);
                            isum_b[c] = _mm512_dpbusd_epi32(isum_b[c], w1, x1);
                        }
                    }
                }
            }
            for c in 0..C {
                let isum = _mm512_add_epi32(isum_a[c], isum_b[c]);
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*acts[c].d.get_unchecked(b)));
                acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[c]);
                // Q4_1 pairs with ggml's Q8_1 and its f16 d·Σq (see `scalar::dot_nibbles`).
                let sums = if mins.is_some() {
                    acts[c].sums_f16
                } else {
                    acts[c].sums
                };
                let sx = *sums.get_unchecked(b);
                acc_min[c] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sx), acc_min[c]);
            }
        }
        for c in 0..C {
            _mm512_storeu_ps(out[c].as_mut_ptr(), _mm512_add_ps(acc[c], acc_min[c]));
        }
    }
}
