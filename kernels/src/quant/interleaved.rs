//! The row-interleaved layout of the AVX-512 path: 16 weight rows side by side, so one 32-bit
//! lane of a 512-bit register belongs to one row.
//!
//! With the per-row layout every `vpdpbusd` (64 byte products) needs a permute, a conversion and
//! an FMA to apply its two blocks' scales: about 5 instructions per 64 multiply-adds. Here a
//! lane accumulates 4 products of *its* row, so a block of 32 values × 16 rows is 8 `vpdpbusd`
//! against broadcast activation dwords, and the scales apply once per block to 16 rows at a
//! time: about 4 times fewer instructions per multiply-add, and the unpacked weights are
//! reused by every token of the tile.
//!
//! Per group of 16 rows and block `b`:
//! - `scales[(g·nb + b)·16 + j]` (and `mins`): row `16g + j`'s f16 scale (min) for block `b`;
//! - nibble formats: 256 bytes, dword `(k, j)` at `(k·16 + j)·4` = row `j`'s ggml bytes
//!   `4k..4k+4` (low nibbles: values `4k..4k+4`, high nibbles: values `16+4k..16+4k+4`);
//! - byte formats: 512 bytes, dword `(k, j)` = row `j`'s values `4k..4k+4`.
//!
//! Rows past the matrix's last (the final group's padding) are zero with zero scales.

use super::formats::{Packed, f16_to_f32, nibble_scale_min};

/// Rows per interleaved group: one per 32-bit lane of a 512-bit register.
pub(crate) const GROUP: usize = 16;

/// Interleaves a per-row [`Packed::Nibbles`] or [`Packed::Bytes`] matrix; other layouts are
/// returned unchanged.
pub(crate) fn interleave(packed: Packed, rows: usize, cols: usize) -> Packed {
    let nb = cols / 32;
    let groups = rows.div_ceil(GROUP);
    let scatter_scales = |src: &[u16]| {
        let mut out = vec![0u16; groups * nb * GROUP];
        for r in 0..rows {
            let (g, j) = (r / GROUP, r % GROUP);
            for b in 0..nb {
                out[(g * nb + b) * GROUP + j] = src[r * nb + b];
            }
        }
        out
    };
    match packed {
        Packed::Nibbles { scales, mins, qs } => {
            let mut out = vec![0u8; groups * nb * 256];
            for r in 0..rows {
                let (g, j) = (r / GROUP, r % GROUP);
                for b in 0..nb {
                    let src = &qs[(r * nb + b) * 16..][..16];
                    let dst = &mut out[(g * nb + b) * 256..][..256];
                    for k in 0..4 {
                        dst[(k * GROUP + j) * 4..][..4].copy_from_slice(&src[4 * k..4 * k + 4]);
                    }
                }
            }
            Packed::NibblesX16 {
                scales: scatter_scales(&scales),
                mins: mins.as_deref().map(scatter_scales),
                qs: out,
            }
        }
        Packed::Bytes { scales, qs } => {
            let mut out = vec![0i8; groups * nb * 512];
            for r in 0..rows {
                let (g, j) = (r / GROUP, r % GROUP);
                for b in 0..nb {
                    let src = &qs[(r * nb + b) * 32..][..32];
                    let dst = &mut out[(g * nb + b) * 512..][..512];
                    for k in 0..8 {
                        dst[(k * GROUP + j) * 4..][..4].copy_from_slice(&src[4 * k..4 * k + 4]);
                    }
                }
            }
            Packed::BytesX16 {
                scales: scatter_scales(&scales),
                qs: out,
            }
        }
        other => other,
    }
}

/// Row `r` of an interleaved matrix, dequantized into `out` (`cols` values).
pub(crate) fn dequantize_row(packed: &Packed, r: usize, out: &mut [f32]) {
    let nb = out.len() / 32;
    let (g, j) = (r / GROUP, r % GROUP);
    match packed {
        Packed::NibblesX16 { scales, mins, qs } => {
            for b in 0..nb {
                let at = (g * nb + b) * GROUP + j;
                let (d, m) = nibble_scale_min(scales, mins.as_deref(), at);
                let block = &qs[(g * nb + b) * 256..][..256];
                for k in 0..4 {
                    for i in 0..4 {
                        let byte = block[(k * GROUP + j) * 4 + i];
                        out[b * 32 + 4 * k + i] = d * (byte & 0xF) as f32 + m;
                        out[b * 32 + 16 + 4 * k + i] = d * (byte >> 4) as f32 + m;
                    }
                }
            }
        }
        Packed::BytesX16 { scales, qs } => {
            for b in 0..nb {
                let d = f16_to_f32(scales[(g * nb + b) * GROUP + j]);
                let block = &qs[(g * nb + b) * 512..][..512];
                for k in 0..8 {
                    for i in 0..4 {
                        out[b * 32 + 4 * k + i] = d * block[(k * GROUP + j) * 4 + i] as f32;
                    }
                }
            }
        }
        _ => {}
    }
}
