//! The k-quants (Q4_K, Q5_K, Q6_K): the 16-row interleaved super-block layout of the AVX-512
//! path, and the reference dot products against ggml's Q8_K activations.
//!
//! Interleaving is a byte permutation of 16 rows' super-blocks `s` into one chunk of
//! `16 · block_bytes` bytes, so a 64-byte load holds the same 4 bytes of 16 rows (one 32-bit
//! lane per row, as in `interleaved` for the 32-value formats). Each field of the ggml block
//! (offset `off`, `len` bytes) moves to `16 · off` in the chunk, in units of `u` bytes: unit `i`
//! of row `j` lands at `16 · off + (i · 16 + j) · u`. `u` = 2 for the f16 scales (16 rows' `d`
//! fill one 256-bit load, widened in one `vcvtph2ps`), 4 for everything else. The chunk holds
//! exactly the rows' bytes, so a decode step reads what the GGUF file holds; the chunks of a
//! group follow each other in super-block order, and groups follow each other.
//!
//! Dot products follow ggml's `ggml_vec_dot_q{4,5,6}_K_q8_K`: per super-block, the sub-block
//! integer dot products times the integer sub-block scales, summed in integers, times
//! `d_w · d_x`; the mins (Q4_K, Q5_K) through Q8_K's per-32 level sums.

use super::activations::KActRow;
use super::formats::{KQuant, SuperBlock};
use super::interleaved::GROUP;

/// The interleaved fields of a block of `kind`: `(offset, length, unit)`.
pub(crate) fn fields(kind: KQuant) -> &'static [(usize, usize, usize)] {
    match kind {
        // d, dmin | scales[12] | qs[128]
        KQuant::Q4 => &[(0, 4, 2), (4, 12, 4), (16, 128, 4)],
        // d, dmin | scales[12] | qh[32] | qs[128]
        KQuant::Q5 => &[(0, 4, 2), (4, 12, 4), (16, 32, 4), (48, 128, 4)],
        // ql[128] | qh[64] | scales[16] | d
        KQuant::Q6 => &[(0, 208, 4), (208, 2, 2)],
    }
}

/// Bytes per ggml block of `kind`.
pub(crate) fn block_bytes(kind: KQuant) -> usize {
    match kind {
        KQuant::Q4 => 144,
        KQuant::Q5 => 176,
        KQuant::Q6 => 210,
    }
}

/// Interleaves `rows` rows of `nsb` ggml super-blocks (`data`, row-major) into groups of 16;
/// the last group's missing rows are zero (scale 0, so they produce 0).
pub(crate) fn interleave(kind: KQuant, data: &[u8], rows: usize, nsb: usize) -> Vec<u8> {
    let bb = block_bytes(kind);
    let groups = rows.div_ceil(GROUP);
    let mut out = vec![0u8; groups * nsb * GROUP * bb];
    for r in 0..rows {
        let (g, j) = (r / GROUP, r % GROUP);
        for s in 0..nsb {
            let src = &data[(r * nsb + s) * bb..][..bb];
            let chunk = &mut out[(g * nsb + s) * GROUP * bb..][..GROUP * bb];
            for &(off, len, u) in fields(kind) {
                for i in 0..len / u {
                    let dst = GROUP * off + (i * GROUP + j) * u;
                    chunk[dst..dst + u].copy_from_slice(&src[off + i * u..off + i * u + u]);
                }
            }
        }
    }
    out
}

/// Row `j`'s ggml block back from an interleaved chunk (the inverse of [`interleave`]).
pub(crate) fn gather_block(kind: KQuant, chunk: &[u8], j: usize, out: &mut [u8]) {
    for &(off, len, u) in fields(kind) {
        for i in 0..len / u {
            let src = GROUP * off + (i * GROUP + j) * u;
            out[off + i * u..off + i * u + u].copy_from_slice(&chunk[src..src + u]);
        }
    }
}

/// Row `r` of an interleaved matrix of `nsb` super-blocks per row, dequantized.
pub(crate) fn dequantize_row_x16(kind: KQuant, data: &[u8], nsb: usize, r: usize, out: &mut [f32]) {
    let bb = block_bytes(kind);
    let (g, j) = (r / GROUP, r % GROUP);
    let mut block = vec![0u8; bb];
    for s in 0..nsb {
        let chunk = &data[(g * nsb + s) * GROUP * bb..][..GROUP * bb];
        gather_block(kind, chunk, j, &mut block);
        let sb = SuperBlock::decode(kind, &block);
        for i in 0..256 {
            out[s * 256 + i] = sb.value(i);
        }
    }
}

/// A row of ggml super-blocks (`data`) against `C` Q8_K activation rows, as ggml's generic
/// `ggml_vec_dot_q*_K_q8_K`: each super-block is decoded once for all of them. The reference
/// every SIMD path is tested against, and the path of CPUs without AVX2.
#[inline(always)]
pub(crate) fn dot_super<const C: usize>(
    kind: KQuant,
    data: &[u8],
    acts: &[KActRow; C],
    out: &mut [f32; C],
) {
    *out = [0f32; C];
    for (s, bytes) in data.chunks_exact(block_bytes(kind)).enumerate() {
        let sb = SuperBlock::decode(kind, bytes);
        for (a, acc) in acts.iter().zip(out.iter_mut()) {
            let x = &a.qs[s * 256..s * 256 + 256];
            let mut sumi = 0i32;
            for g in 0..256 / sb.group {
                let span = g * sb.group..(g + 1) * sb.group;
                sumi += sb.sc[g] * int_dot(&sb.q[span.clone()], &x[span]);
            }
            let dx = a.d[s];
            *acc += sb.d * dx * sumi as f32;
            if sb.group == 32 {
                let summ: i32 = (0..8).map(|j| sb.m[j] * a.bsums32[s * 8 + j] as i32).sum();
                *acc -= sb.dmin * dx * summ as f32;
            }
        }
    }
}

/// Σ q·x over bytes, in a shape LLVM vectorizes.
#[inline(always)]
fn int_dot(q: &[i8], x: &[i8]) -> i32 {
    q.iter()
        .zip(x)
        .map(|(&q, &x)| q as i16 as i32 * x as i16 as i32)
        .sum()
}
