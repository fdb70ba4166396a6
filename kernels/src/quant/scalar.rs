//! The scalar dot products: the reference every SIMD path is tested against, and the fallback
//! on CPUs without AVX2. One weight row against one quantized activation row.

use super::activations::ActRow;
use super::formats::{KQuant, SuperBlock, f16_to_f32};

/// Q4_0 (`mins = None`) or Q4_1 row.
pub(crate) fn dot_nibbles(scales: &[u16], mins: Option<&[u16]>, qs: &[u8], a: ActRow) -> f32 {
    let mut acc = 0f32;
    for (b, &scale) in scales.iter().enumerate() {
        let w = &qs[b * 16..b * 16 + 16];
        let x = &a.qs[b * 32..b * 32 + 32];
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += (w[j] & 0xF) as i32 * x[j] as i32 + (w[j] >> 4) as i32 * x[j + 16] as i32;
        }
        let d = f16_to_f32(scale);
        // Q4_1 pairs with ggml's Q8_1, whose d·Σq is stored as f16: rounding it the same way
        // keeps Metrum's logits on llama.cpp's and candle's. Q4_0's offset needs it exact.
        let (m, sum) = match mins {
            Some(mins) => (f16_to_f32(mins[b]), a.sums_f16[b]),
            None => (-8.0 * d, a.sums[b]),
        };
        acc += d * a.d[b] * sumi as f32 + m * sum;
    }
    acc
}

/// Q8_0 row.
pub(crate) fn dot_bytes(scales: &[u16], qs: &[i8], a: ActRow) -> f32 {
    let mut acc = 0f32;
    for (b, &scale) in scales.iter().enumerate() {
        let w = &qs[b * 32..b * 32 + 32];
        let x = &a.qs[b * 32..b * 32 + 32];
        let sumi: i32 = w.iter().zip(x).map(|(&w, &x)| w as i32 * x as i32).sum();
        acc += f16_to_f32(scale) * a.d[b] * sumi as f32;
    }
    acc
}

/// A row of k-quant super-blocks (`data` is the row's bytes) against `C` activation rows: each
/// super-block is decoded once for all of them.
pub(crate) fn dot_super<const C: usize>(
    kind: KQuant,
    data: &[u8],
    block_bytes: usize,
    acts: [ActRow; C],
    out: &mut [f32; C],
) {
    *out = [0f32; C];
    for (s, bytes) in data.chunks_exact(block_bytes).enumerate() {
        let sb = SuperBlock::decode(kind, bytes);
        for (a, acc) in acts.iter().zip(out.iter_mut()) {
            *acc += super_block_dot(&sb, s, *a);
        }
    }
}

/// One decoded super-block (`s`-th of its row) against the matching 256 activations.
#[inline(always)]
fn super_block_dot(sb: &SuperBlock, s: usize, a: ActRow) -> f32 {
    let mut acc = 0f32;
    for ab in 0..8 {
        let b = s * 8 + ab;
        let x = &a.qs[b * 32..b * 32 + 32];
        let q = &sb.q[ab * 32..ab * 32 + 32];
        if sb.group == 32 {
            acc += sb.scale[ab] * a.d[b] * int_dot(q, x) as f32 - sb.min[ab] * a.sums[b];
        } else {
            let lo = int_dot(&q[..16], &x[..16]);
            let hi = int_dot(&q[16..], &x[16..]);
            acc += (sb.scale[ab * 2] * lo as f32 + sb.scale[ab * 2 + 1] * hi as f32) * a.d[b];
        }
    }
    acc
}

/// Σ q·x over bytes, in a shape LLVM vectorizes (see `dot_super_simd`).
#[inline(always)]
fn int_dot(q: &[i8], x: &[i8]) -> i32 {
    q.iter()
        .zip(x)
        .map(|(&q, &x)| q as i16 as i32 * x as i16 as i32)
        .sum()
}

/// [`dot_super`] compiled for AVX-512 BW: the super-block decode and the byte dot products
/// vectorize (the scalar fallback is the same source without the target features).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn dot_super_avx512<const C: usize>(
    kind: KQuant,
    data: &[u8],
    block_bytes: usize,
    acts: [ActRow; C],
    out: &mut [f32; C],
) {
    dot_super::<C>(kind, data, block_bytes, acts, out)
}

/// [`dot_super`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot_super_avx2<const C: usize>(
    kind: KQuant,
    data: &[u8],
    block_bytes: usize,
    acts: [ActRow; C],
    out: &mut [f32; C],
) {
    dot_super::<C>(kind, data, block_bytes, acts, out)
}
