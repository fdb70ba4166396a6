//! The AVX2 layout of the 32-value formats: each row's blocks in groups of 8, so one 32-bit
//! lane of a 256-bit register belongs to one block.
//!
//! In ggml's per-row order every block's 32 products (`vpmaddubsw` + `vpmaddwd`) end in 8
//! 32-bit partial sums that need a conversion and an FMA with that block's scale: two float
//! instructions per 32 multiply-adds, on the same pipes as the integer multiplies. Here a
//! register holds 4 values of each of 8 blocks, lane `j` = block `j`, so the 8 registers of a
//! group add up in integers (lane by lane, never mixing blocks) and the scales apply once per
//! group, as one vector of 8 block scales: a microbenchmark of the multiply loop on Zen 3 went
//! from 0.75 to 0.55 ns per 32 multiply-adds for Q8_0 and from 0.56 to 0.34 for the nibble
//! formats (whose 16-bit products are small enough to add before widening).
//!
//! Per row, the `nb / 8` full groups come first, then the remaining `nb % 8` blocks in ggml's
//! order (the kernels take those one block at a time). Scales (and Q4_1's mins) stay per row
//! in block order. Within a group of blocks `8g..8g + 8`:
//! - byte formats (Q8_0), 256 bytes: register `v` (bytes `32v..32v + 32`), lane `j` = block
//!   `8g + j`'s values `4v..4v + 4`;
//! - nibble formats (Q4_0, Q4_1), 128 bytes: packed register `p` (bytes `32p..32p + 32`), byte
//!   `4j + i` = block `8g + j`'s value `8p + i` in its low nibble and `8p + 4 + i` in its high
//!   nibble, so the low nibbles of packed register `p` are value register `2p` of the byte
//!   layout and the high nibbles register `2p + 1`.
//!
//! The activations of a grouped matmul are quantized as usual and then put in the byte
//! layout ([`group_activations`]), so value register `v` of a group lines up with both.
//!
//! Q4_K gets the same treatment inside each super-block: its 8 sub-blocks of 32 values are a
//! group (their 6-bit scales then apply as one vector of 8 in a single `vpmaddwd`), the 128
//! nibble bytes in the nibble layout above, the 16-byte header (scales, mins) as in the file.
//! Its Q8_K activations are grouped by the same [`group_activations`] (256 values are 8
//! blocks of 32).

use super::formats::{Packed, f16_to_f32, nibble_scale_min};

/// Blocks per group: one per 32-bit lane of a 256-bit register.
pub(crate) const GROUP_BLOCKS: usize = 8;

/// Block `j`'s value `k` (`0..32`) within a byte-layout group: its byte offset.
fn byte_at(j: usize, k: usize) -> usize {
    (k / 4) * 32 + 4 * j + k % 4
}

/// Block `j`'s value `k` within a nibble-layout group: its byte offset and whether it is the
/// high nibble.
fn nibble_at(j: usize, k: usize) -> (usize, bool) {
    let v = k / 4;
    ((v / 2) * 32 + 4 * j + k % 4, v % 2 == 1)
}

/// Groups a per-row [`Packed::Nibbles`] or [`Packed::Bytes`] matrix; other layouts are
/// returned unchanged.
pub(crate) fn group(packed: Packed, rows: usize, cols: usize) -> Packed {
    let nb = cols / 32;
    let full = nb / GROUP_BLOCKS * GROUP_BLOCKS;
    match packed {
        Packed::Nibbles { scales, mins, qs } => {
            let mut out = qs.clone();
            for r in 0..rows {
                for g in (0..full).step_by(GROUP_BLOCKS) {
                    let at = (r * nb + g) * 16;
                    let src = &qs[at..at + GROUP_BLOCKS * 16];
                    // ggml: value k of block j is byte k % 16 of the block, low nibble for
                    // k < 16.
                    regroup_nibbles(&mut out[at..at + GROUP_BLOCKS * 16], |j, k| {
                        let byte = src[j * 16 + k % 16];
                        if k < 16 { byte & 0xF } else { byte >> 4 }
                    });
                }
            }
            Packed::NibblesG8 {
                scales,
                mins,
                qs: out,
            }
        }
        Packed::Bytes { scales, qs } => {
            let mut out = qs.clone();
            for r in 0..rows {
                for g in (0..full).step_by(GROUP_BLOCKS) {
                    let at = (r * nb + g) * 32;
                    transpose_words(&qs[at..at + 256], &mut out[at..at + 256]);
                }
            }
            Packed::BytesG8 { scales, qs: out }
        }
        other => other,
    }
}

/// Puts one row of quantized activations (`nb` blocks of 32 bytes in order) in the byte
/// layout of its full groups; the remaining blocks keep their order.
pub(crate) fn group_activations(row: &mut [i8]) {
    let nb = row.len() / 32;
    let mut group = [0i8; GROUP_BLOCKS * 32];
    for g in (0..nb / GROUP_BLOCKS * GROUP_BLOCKS).step_by(GROUP_BLOCKS) {
        let src = &mut row[g * 32..(g + GROUP_BLOCKS) * 32];
        transpose_words(src, &mut group);
        src.copy_from_slice(&group);
    }
}

/// One group of 8 blocks from block order into the byte layout: 4-byte word `v` of block `j`
/// goes to word `j` of register `v` (an 8 x 8 transpose of 4-byte words; see [`byte_at`]).
/// Activations are regrouped for every matmul, so this copies words, not bytes.
fn transpose_words<T: Copy>(src: &[T], dst: &mut [T]) {
    for v in 0..8 {
        for j in 0..GROUP_BLOCKS {
            dst[v * 32 + 4 * j..][..4].copy_from_slice(&src[j * 32 + 4 * v..][..4]);
        }
    }
}

/// Bytes of a Q4_K super-block, and where its 128 nibble bytes start.
const Q4K_BYTES: usize = 144;
const Q4K_QS: usize = 16;

/// Groups every Q4_K super-block of `data` (ggml's bytes) in place.
pub(crate) fn group_q4k(data: &mut [u8]) {
    for sb in data.chunks_exact_mut(Q4K_BYTES) {
        let ggml: [u8; 128] = sb[Q4K_QS..].try_into().unwrap_or([0; 128]);
        regroup_nibbles(&mut sb[Q4K_QS..], |j, k| q4k_ggml_value(&ggml, j, k));
    }
}

/// Writes one group's 128 bytes in the nibble layout, `value(j, k)` giving value `k` of block
/// `j`: byte `32p + 4j + i` holds values `8p + i` (low nibble) and `8p + 4 + i` (high) of
/// block `j` (the inverse of [`nibble_at`]), one byte at a time.
fn regroup_nibbles(dst: &mut [u8], value: impl Fn(usize, usize) -> u8) {
    for (at, byte) in dst.iter_mut().enumerate() {
        let (p, j, i) = (at / 32, at % 32 / 4, at % 4);
        *byte = value(j, 8 * p + i) | (value(j, 8 * p + 4 + i) << 4);
    }
}

/// Value `k` of sub-block `j` in ggml's Q4_K nibbles: 32-byte run `j / 2`, low nibbles for
/// even sub-blocks.
fn q4k_ggml_value(qs: &[u8; 128], j: usize, k: usize) -> u8 {
    let byte = qs[32 * (j / 2) + k];
    if j.is_multiple_of(2) {
        byte & 0xF
    } else {
        byte >> 4
    }
}

/// A grouped Q4_K super-block back in ggml's layout (to decode it with the reference).
pub(crate) fn ungroup_q4k(grouped: &[u8]) -> [u8; Q4K_BYTES] {
    let mut out = [0u8; Q4K_BYTES];
    out[..Q4K_QS].copy_from_slice(&grouped[..Q4K_QS]);
    for j in 0..GROUP_BLOCKS {
        for k in 0..32 {
            let (at, high) = nibble_at(j, k);
            let byte = grouped[Q4K_QS + at];
            let q = if high { byte >> 4 } else { byte & 0xF };
            out[Q4K_QS + 32 * (j / 2) + k] |= if j.is_multiple_of(2) { q } else { q << 4 };
        }
    }
    out
}

/// Row `r` of a grouped matrix, dequantized into `out` (`cols` values).
pub(crate) fn dequantize_row(packed: &Packed, r: usize, out: &mut [f32]) {
    let nb = out.len() / 32;
    let full = nb / GROUP_BLOCKS * GROUP_BLOCKS;
    match packed {
        Packed::NibblesG8 { scales, mins, qs } => {
            for b in 0..nb {
                let i = r * nb + b;
                let (d, m) = nibble_scale_min(scales, mins.as_deref(), i);
                for k in 0..32 {
                    let q = if b < full {
                        let (g, j) = (b - b % GROUP_BLOCKS, b % GROUP_BLOCKS);
                        let (at, high) = nibble_at(j, k);
                        let byte = qs[(r * nb + g) * 16 + at];
                        if high { byte >> 4 } else { byte & 0xF }
                    } else if k < 16 {
                        qs[i * 16 + k] & 0xF
                    } else {
                        qs[i * 16 + k - 16] >> 4
                    };
                    out[b * 32 + k] = d * q as f32 + m;
                }
            }
        }
        Packed::BytesG8 { scales, qs } => {
            for b in 0..nb {
                let d = f16_to_f32(scales[r * nb + b]);
                for k in 0..32 {
                    let q = if b < full {
                        let (g, j) = (b - b % GROUP_BLOCKS, b % GROUP_BLOCKS);
                        qs[(r * nb + g) * 32 + byte_at(j, k)]
                    } else {
                        qs[(r * nb + b) * 32 + k]
                    };
                    out[b * 32 + k] = d * q as f32;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_has_one_place_in_a_group() {
        let mut bytes = std::collections::HashSet::new();
        let mut nibbles = std::collections::HashSet::new();
        for j in 0..GROUP_BLOCKS {
            for k in 0..32 {
                assert!(bytes.insert(byte_at(j, k)));
                assert!(nibbles.insert(nibble_at(j, k)));
            }
        }
        assert!(bytes.iter().all(|&at| at < 256));
        assert!(nibbles.iter().all(|&(at, _)| at < 128));
    }

    #[test]
    fn q4k_super_blocks_regroup_and_back() {
        let ggml: Vec<u8> = (0..2 * Q4K_BYTES).map(|i| (i * 37 % 256) as u8).collect();
        let mut grouped = ggml.clone();
        group_q4k(&mut grouped);
        assert_ne!(grouped, ggml);
        for (g, o) in grouped
            .chunks_exact(Q4K_BYTES)
            .zip(ggml.chunks_exact(Q4K_BYTES))
        {
            assert_eq!(ungroup_q4k(g)[..], o[..]);
        }
    }

    #[test]
    fn activations_land_where_the_weights_do() {
        // Value k of block j: the byte layout of the activations and the byte layout of a
        // grouped Q8_0 row put it at the same offset.
        let row: Vec<i8> = (0..9 * 32).map(|i| (i % 251) as i8).collect();
        let mut grouped = row.clone();
        group_activations(&mut grouped);
        for j in 0..GROUP_BLOCKS {
            for k in 0..32 {
                assert_eq!(grouped[byte_at(j, k)], row[j * 32 + k]);
            }
        }
        assert_eq!(
            grouped[256..],
            row[256..],
            "the ninth block keeps its order"
        );
    }
}
