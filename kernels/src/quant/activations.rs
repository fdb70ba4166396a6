//! Activations quantized on the fly, per 32 values, to signed bytes (ggml's Q8_1): the integer
//! half of every dot product, so the inner loops multiply bytes by bytes.
//!
//! Block `b` of a row holds `q[32]` with `x ≈ d·q`, plus `sum = d·Σq`, which turns the
//! weights' offsets (Q4_1's min, Q4_0's −8, the k-quants' mins) into one multiply per block.
//! Rounding is to nearest, ties to even, in every ISA, so all paths see the same bytes; the
//! scale `d` is rounded to f16 as in ggml's blocks (see [`round_scale`]).

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
    /// Sizes the buffers for `rows` rows of `cols` values (a multiple of 32).
    pub fn resize(&mut self, rows: usize, cols: usize) {
        let nb = cols / 32;
        self.rows = rows;
        self.nb = nb;
        self.d.resize(rows * nb, 0.0);
        self.sums.resize(rows * nb, 0.0);
        self.sums_f16.resize(rows * nb, 0.0);
        self.qs.resize(rows * cols, 0);
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
}

unsafe impl Send for RawParts {}
unsafe impl Sync for RawParts {}

impl RawParts {
    /// # Safety
    /// `rows` must lie within the buffers, and no other thread may touch these rows meanwhile.
    pub unsafe fn quantize_rows(self, x: &[f32], rows: Range<usize>, isa: Isa) {
        let cols = self.nb * 32;
        for r in rows {
            for b in 0..self.nb {
                let at = r * self.nb + b;
                let src = &x[at * 32..at * 32 + 32];
                let q = unsafe { std::slice::from_raw_parts_mut(self.qs.add(at * 32), 32) };
                let (d, sum) = match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `Isa::Avx512Vnni` is only used on CPUs that have AVX-512.
                    Isa::Avx512Vnni => unsafe { super::avx512::quantize_block(src, q) },
                    _ => quantize_block(src, q),
                };
                unsafe {
                    *self.d.add(at) = d;
                    *self.sums.add(at) = sum;
                    *self.sums_f16.add(at) = round_scale(sum);
                }
            }
            debug_assert!(x.len() >= (r + 1) * cols);
        }
    }
}

/// Quantizes 32 values into `q`; returns `(d, d·Σq)`.
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

/// The scale as ggml stores it in its Q8_0/Q8_1 blocks: rounded to f16 (the levels were
/// computed with the unrounded one, as ggml does). Keeping ggml's numerics makes Metrum's
/// logits comparable with llama.cpp's and candle's on the same file.
pub(crate) fn round_scale(d: f32) -> f32 {
    half::f16::from_f32(d).to_f32()
}
