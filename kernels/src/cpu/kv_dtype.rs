//! The element types a CPU KV cache can hold on the fast path: f32, and f16 (half the bytes a
//! decode step reads from the cache; llama.cpp's default). Activations stay f32: keys and values
//! are narrowed once when written (round-to-nearest-even) and widened to f32 when read, in
//! registers on the AVX-512 decode tile and the AVX2 tile (`vcvtph2ps`), a row at a time
//! (F16C) into a scratch copy on the other tiles.

use crate::quant::Isa;
use half::f16;

/// How a KV element is stored; the SIMD loads branch on it at compile time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum KvFormat {
    F32,
    F16,
}

/// A KV cache element type the fast CPU attention reads.
pub(crate) trait KvElem: Copy + Send + Sync + 'static {
    const FORMAT: KvFormat;

    /// The row itself when it already is f32 (no copy), `None` when it must be widened.
    fn as_f32(row: &[Self]) -> Option<&[f32]>;

    /// The row itself when it is f16 (read and widened in registers by the AVX2 tile).
    fn as_f16(row: &[Self]) -> Option<&[f16]>;

    /// Widens `src` into `dst` (same length).
    fn widen(src: &[Self], dst: &mut [f32], isa: Isa);
}

impl KvElem for f32 {
    const FORMAT: KvFormat = KvFormat::F32;

    fn as_f32(row: &[f32]) -> Option<&[f32]> {
        Some(row)
    }

    fn as_f16(_row: &[f32]) -> Option<&[f16]> {
        None
    }

    fn widen(src: &[f32], dst: &mut [f32], _isa: Isa) {
        dst.copy_from_slice(src);
    }
}

impl KvElem for f16 {
    const FORMAT: KvFormat = KvFormat::F16;

    fn as_f32(_row: &[f16]) -> Option<&[f32]> {
        None
    }

    fn as_f16(row: &[f16]) -> Option<&[f16]> {
        Some(row)
    }

    fn widen(src: &[f16], dst: &mut [f32], isa: Isa) {
        assert_eq!(src.len(), dst.len(), "widen: lengths differ");
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            // SAFETY: every non-scalar Isa includes F16C and AVX (see `Isa::detect`).
            return unsafe { widen_f16c(src, dst) };
        }
        let _ = isa;
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
}

/// Narrows `src` into `dst` (same length) with round-to-nearest-even, as `f16::from_f32` does;
/// out-of-range values become ±inf. What `reshape_and_cache` writes into an f16 cache.
pub(crate) fn narrow_f32_to_f16(src: &[f32], dst: &mut [f16], isa: Isa) {
    assert_eq!(src.len(), dst.len(), "narrow: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: every non-scalar Isa includes F16C and AVX (see `Isa::detect`).
        return unsafe { narrow_f16c(src, dst) };
    }
    let _ = isa;
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(*s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len() / 8 * 8;
    for i in (0..n).step_by(8) {
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    for (d, s) in dst[n..].iter_mut().zip(&src[n..]) {
        *d = s.to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn narrow_f16c(src: &[f32], dst: &mut [f16]) {
    use std::arch::x86_64::*;
    let n = src.len() / 8 * 8;
    for i in (0..n).step_by(8) {
        unsafe {
            let x = _mm256_loadu_ps(src.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
            _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), h);
        }
    }
    for (d, s) in dst[n..].iter_mut().zip(&src[n..]) {
        *d = f16::from_f32(*s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Values across f16's whole range and past it: normals, subnormals, ties, overflow.
    fn samples() -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(3);
        let mut v: Vec<f32> = (0..1000)
            .map(|_| rng.random_range(-1.0f32..1.0) * 2f32.powi(rng.random_range(-30..20)))
            .collect();
        // Exact halfway cases between neighbouring f16 values (ties go to even), both signs.
        v.extend((0..40).map(|i| (1.0 + (2 * i + 1) as f32 * 2f32.powi(-11)) * (-1f32).powi(i)));
        v.extend([
            0.0,
            -0.0,
            65504.0,
            65520.0,
            1e9,
            -1e9,
            f32::INFINITY,
            6e-8,
            3e-8,
        ]);
        v
    }

    #[test]
    fn narrowing_rounds_to_nearest_even_on_every_isa() {
        let src = samples();
        let expected: Vec<f16> = src.iter().map(|&x| f16::from_f32(x)).collect();
        for isa in [Isa::Scalar, Isa::detect()] {
            let mut got = vec![f16::ZERO; src.len()];
            narrow_f32_to_f16(&src, &mut got, isa);
            for ((g, e), x) in got.iter().zip(&expected).zip(&src) {
                assert_eq!(
                    g.to_bits(),
                    e.to_bits(),
                    "{isa:?}: {x} narrowed to {g}, not {e}"
                );
            }
        }
    }

    #[test]
    fn widening_is_exact_on_every_isa() {
        let halves: Vec<f16> = samples().iter().map(|&x| f16::from_f32(x)).collect();
        for isa in [Isa::Scalar, Isa::detect()] {
            let mut got = vec![0f32; halves.len()];
            f16::widen(&halves, &mut got, isa);
            for (g, h) in got.iter().zip(&halves) {
                assert_eq!(g.to_bits(), h.to_f32().to_bits(), "{isa:?}: {h}");
            }
        }
    }
}
