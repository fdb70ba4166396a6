//! The scalar dot products: the reference every SIMD path is tested against, and the fallback
//! on CPUs without AVX2. One weight row against one quantized activation row. The k-quants'
//! reference lives in `kquant`.

use super::activations::ActRow;
use super::formats::f16_to_f32;

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
