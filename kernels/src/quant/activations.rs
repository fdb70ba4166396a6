//! Activations quantized on the fly, per 32 values, to signed bytes (ggml's Q8_1): the integer
//! half of every dot product, so the inner loops multiply bytes by bytes.
//!
//! Block `b` of a row holds `q[32]` with `x ≈ d·q`, plus `sum = d·Σq`, which turns the
//! weights' offsets (Q4_1's min, Q4_0's −8, the k-quants' mins) into one multiply per block.
//! Rounding is to nearest, ties to even, in every ISA, so all paths see the same bytes; the
//! scale `d` is rounded to f16 as in ggml's blocks (see [`round_scale`]).
//!
//! The k-quants pair instead with ggml's Q8_K ([`quantize_q8k`]): one f32 scale per 256 values
//! (a super-block) and the level sums per 16 values, so a super-block's integer dot products
//! take their 6- or 8-bit scales in integers and meet `d` once per super-block.

use std::ops::Range;

use super::Isa;

/// Quantized rows of activations; the buffers are reused from call to call.
#[derive(Debug, Default)]
pub(crate) struct Q8Activations {
    pub rows: usize,
    /// Blocks per row.
    pub nb: usize,
    pub d: Vec<f32>,
    pub sums: Vec<f32>,
    /// `sums` rounded to f16, as ggml's Q8_1 blocks (paired with Q4_1) store them.
    pub sums_f16: Vec<f32>,
    pub qs: Vec<i8>,
    /// Q8_K layout (`d` then holds one scale per 256 values): level sums per 16 and per 32.
    pub k: bool,
    pub bsums: Vec<i16>,
    pub bsums32: Vec<i16>,
    /// `qs` in the grouped byte layout of `block_groups` (for the AVX2 32-value kernels).
    pub grouped: bool,
}

/// One row quantized as ggml's Q8_K: `nsb` super-blocks.
#[derive(Clone, Copy)]
pub(crate) struct KActRow<'a> {
    /// Per super-block.
    pub d: &'a [f32],
    /// Σq per 16 values (16 per super-block).
    pub bsums: &'a [i16],
    /// Σq per 32 values (8 per super-block).
    pub bsums32: &'a [i16],
    pub qs: &'a [i8],
}

/// One quantized row.
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub d: &'a [f32],
    pub sums: &'a [f32],
    pub sums_f16: &'a [f32],
    pub qs: &'a [i8],
}

impl Q8Activations {
    /// Sizes the buffers for `rows` rows of `cols` values (a multiple of 32), whose bytes
    /// `grouped` puts in the `block_groups` layout.
    pub fn resize(&mut self, rows: usize, cols: usize, grouped: bool) {
        let nb = cols / 32;
        self.rows = rows;
        self.nb = nb;
        self.d.resize(rows * nb, 0.0);
        self.sums.resize(rows * nb, 0.0);
        self.sums_f16.resize(rows * nb, 0.0);
        self.qs.resize(rows * cols, 0);
        self.k = false;
        self.grouped = grouped;
    }

    /// Sizes the buffers for `rows` rows of `cols` values (a multiple of 256) in Q8_K, whose
    /// bytes `grouped` puts in the `block_groups` layout.
    pub fn resize_k(&mut self, rows: usize, cols: usize, grouped: bool) {
        let nsb = cols / 256;
        self.rows = rows;
        self.nb = cols / 32;
        self.d.resize(rows * nsb, 0.0);
        self.bsums.resize(rows * nsb * 16, 0);
        self.bsums32.resize(rows * nsb * 8, 0);
        self.qs.resize(rows * cols, 0);
        self.k = true;
        self.grouped = grouped;
    }

    pub fn row_k(&self, r: usize) -> KActRow<'_> {
        let nsb = self.nb / 8;
        KActRow {
            d: &self.d[r * nsb..(r + 1) * nsb],
            bsums: &self.bsums[r * nsb * 16..(r + 1) * nsb * 16],
            bsums32: &self.bsums32[r * nsb * 8..(r + 1) * nsb * 8],
            qs: &self.qs[r * nsb * 256..(r + 1) * nsb * 256],
        }
    }

    /// Quantizes rows `rows` of `x: [self.rows, cols]`.
    pub fn quantize_rows(&mut self, x: &[f32], rows: Range<usize>, isa: Isa) {
        let parts = self.raw_parts();
        // SAFETY: `&mut self` makes this the only writer.
        unsafe { parts.quantize_rows(x, rows, isa) }
    }

    /// The buffers as raw pointers, for threads that each quantize disjoint rows.
    pub fn raw_parts(&mut self) -> RawParts {
        RawParts {
            nb: self.nb,
            d: self.d.as_mut_ptr(),
            sums: self.sums.as_mut_ptr(),
            sums_f16: self.sums_f16.as_mut_ptr(),
            qs: self.qs.as_mut_ptr(),
            k: self.k,
            grouped: self.grouped,
            bsums: self.bsums.as_mut_ptr(),
            bsums32: self.bsums32.as_mut_ptr(),
        }
    }

    pub fn row(&self, r: usize) -> ActRow<'_> {
        let nb = self.nb;
        ActRow {
            d: &self.d[r * nb..(r + 1) * nb],
            sums: &self.sums[r * nb..(r + 1) * nb],
            sums_f16: &self.sums_f16[r * nb..(r + 1) * nb],
            qs: &self.qs[r * nb * 32..(r + 1) * nb * 32],
        }
    }
}

/// [`Q8Activations`]' buffers, shareable by threads that write disjoint rows.
#[derive(Clone, Copy)]
pub(crate) struct RawParts {
    nb: usize,
    d: *mut f32,
    sums: *mut f32,
    sums_f16: *mut f32,
    qs: *mut i8,
    k: bool,
    grouped: bool,
    bsums: *mut i16,
    bsums32: *mut i16,
}

unsafe impl Send for RawParts {}
unsafe impl Sync for RawParts {}

impl RawParts {
    /// # Safety
    /// `rows` must lie within the buffers, and no other thread may touch these rows meanwhile.
    pub unsafe fn quantize_rows(self, x: &[f32], rows: Range<usize>, isa: Isa) {
        let cols = self.nb * 32;
        if self.k {
            let nsb = self.nb / 8;
            for r in rows {
                for s in 0..nsb {
                    let at = r * nsb + s;
                    // SAFETY: super-block `at` of the sized buffers, written by this thread only.
                    unsafe {
                        let q = std::slice::from_raw_parts_mut(self.qs.add(at * 256), 256);
                        let bsums = std::slice::from_raw_parts_mut(self.bsums.add(at * 16), 16);
                        let b32 = std::slice::from_raw_parts_mut(self.bsums32.add(at * 8), 8);
                        let src = &x[at * 256..at * 256 + 256];
                        *self.d.add(at) = match isa {
                            #[cfg(target_arch = "x86_64")]
                            Isa::Avx512Vnni => super::avx512_k::quantize_q8k(src, q, bsums),
                            #[cfg(target_arch = "x86_64")]
                            Isa::Avx2 => quantize_q8k_avx2(src, q, bsums),
                            _ => quantize_q8k(src, q, bsums),
                        };
                        for (j, s) in b32.iter_mut().enumerate() {
                            *s = bsums[2 * j] + bsums[2 * j + 1];
                        }
                    }
                }
                if self.grouped {
                    // SAFETY: row `r` of the sized buffer, written by this thread only.
                    let q = unsafe { std::slice::from_raw_parts_mut(self.qs.add(r * cols), cols) };
                    super::block_groups::group_activations(q);
                }
            }
            return;
        }
        for r in rows {
            for b in 0..self.nb {
                let at = r * self.nb + b;
                let src = &x[at * 32..at * 32 + 32];
                let q = unsafe { std::slice::from_raw_parts_mut(self.qs.add(at * 32), 32) };
                let (d, sum) = match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `Isa::Avx512Vnni` is only used on CPUs that have AVX-512.
                    Isa::Avx512Vnni => unsafe { super::avx512::quantize_block(src, q) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `Isa::Avx2` is only used on CPUs that have AVX2 (and SSE4.1).
                    Isa::Avx2 => unsafe { quantize_block_avx2(src, q) },
                    _ => quantize_block(src, q),
                };
                unsafe {
                    *self.d.add(at) = d;
                    *self.sums.add(at) = sum;
                    *self.sums_f16.add(at) = round_scale(sum);
                }
            }
            if self.grouped {
                // SAFETY: row `r` of the sized buffer, written by this thread only.
                let q = unsafe { std::slice::from_raw_parts_mut(self.qs.add(r * cols), cols) };
                super::block_groups::group_activations(q);
            }
            debug_assert!(x.len() >= (r + 1) * cols);
        }
    }
}

/// [`quantize_block`] compiled for AVX2 machines: SSE4.1 turns `round_ties_even` into one
/// `roundps` instead of a libm call per value (baseline x86-64 has no rounding instruction).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,sse4.1")]
unsafe fn quantize_block_avx2(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    quantize_block(x, q)
}

/// [`quantize_q8k`] compiled for AVX2 machines, as [`quantize_block_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,sse4.1")]
pub(crate) unsafe fn quantize_q8k_avx2(x: &[f32], q: &mut [i8], bsums: &mut [i16]) -> f32 {
    quantize_q8k(x, q, bsums)
}

/// Quantizes 32 values into `q`; returns `(d, d·Σq)`.
#[inline]
pub(crate) fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(x) {
        let level = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
        *q = level;
        sum += level as i32;
    }
    let d = round_scale(d);
    (d, d * sum as f32)
}

/// ggml's `quantize_row_q8_K_ref` for one super-block of 256 values: the value of largest
/// magnitude maps to −127 (so `d` carries its sign), levels round to nearest-even (ggml's
/// `nearest_int`), and `bsums` gets Σq per 16 values. Returns `d` (f32, not rounded).
#[inline]
pub(crate) fn quantize_q8k(x: &[f32], q: &mut [i8], bsums: &mut [i16]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q.fill(0);
        bsums.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    for (j, s) in bsums.iter_mut().enumerate() {
        *s = q[j * 16..j * 16 + 16].iter().map(|&v| v as i16).sum();
    }
    1.0 / iscale
}

/// The scale as ggml stores it in its Q8_0/Q8_1 blocks: rounded to f16 (the levels were
/// computed with the unrounded one, as ggml does). Keeping ggml's numerics makes Metrum's
/// logits comparable with llama.cpp's and candle's on the same file.
pub(crate) fn round_scale(d: f32) -> f32 {
    half::f16::from_f32(d).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Super-blocks that reach every branch: random magnitudes over 8 decades, a negative
    /// and a positive extreme, repeated extremes (the first one's sign wins), exact ties
    /// (x.5 levels), all zeros, and a NaN.
    fn blocks() -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(16);
        let mut out = Vec::new();
        for decade in -4..4 {
            let scale = 10f32.powi(decade);
            out.push(
                (0..256)
                    .map(|_| rng.random_range(-1.0..1.0) * scale)
                    .collect(),
            );
        }
        let mut ties: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) * 0.5).collect();
        ties[7] = -127.0; // levels land on exact halves of 1.0
        out.push(ties);
        let mut repeated = vec![0.25f32; 256];
        repeated[3] = -3.0;
        repeated[200] = 3.0;
        out.push(repeated);
        out.push(vec![0.0; 256]);
        let mut nan = out[3].clone();
        nan[10] = f32::NAN;
        out.push(nan);
        out
    }

    /// One ISA's Q8_K quantizer over a fixed block: `(levels, sums) -> d`.
    type Q8kFn<'a> = dyn Fn(&mut [i8], &mut [i16]) -> f32 + 'a;

    #[test]
    fn every_isa_quantizes_q8k_bit_for_bit_as_the_scalar_reference() {
        for (i, x) in blocks().iter().enumerate() {
            let (mut q0, mut s0) = ([0i8; 256], [0i16; 16]);
            let d0 = quantize_q8k(x, &mut q0, &mut s0);
            #[cfg(target_arch = "x86_64")]
            {
                let mut paths: Vec<(&str, Box<Q8kFn>)> = Vec::new();
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("sse4.1")
                {
                    // SAFETY: the features were just detected.
                    paths.push((
                        "avx2",
                        Box::new(|q, s| unsafe { quantize_q8k_avx2(x, q, s) }),
                    ));
                }
                if std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    paths.push((
                        "avx512",
                        // SAFETY: the features were just detected.
                        Box::new(|q, s| unsafe { super::super::avx512_k::quantize_q8k(x, q, s) }),
                    ));
                }
                for (name, f) in paths {
                    let (mut q1, mut s1) = ([0i8; 256], [0i16; 16]);
                    let d1 = f(&mut q1, &mut s1);
                    assert_eq!(d0.to_bits(), d1.to_bits(), "block {i}, {name}: d");
                    assert_eq!(q0, q1, "block {i}, {name}: levels");
                    assert_eq!(s0, s1, "block {i}, {name}: sums");
                }
            }
        }
    }

    #[test]
    fn every_isa_quantizes_q8_1_bit_for_bit_as_the_scalar_reference() {
        for (i, x) in blocks().iter().enumerate() {
            for block in x.chunks_exact(32) {
                let mut q0 = [0i8; 32];
                let r0 = quantize_block(block, &mut q0);
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("sse4.1")
                    && !block.iter().any(|v| v.is_nan())
                {
                    let mut q1 = [0i8; 32];
                    // SAFETY: the features were just detected.
                    let r1 = unsafe { quantize_block_avx2(block, &mut q1) };
                    assert_eq!(
                        (r0.0.to_bits(), r0.1.to_bits(), q0),
                        (r1.0.to_bits(), r1.1.to_bits(), q1),
                        "block {i}"
                    );
                }
            }
        }
    }
}
