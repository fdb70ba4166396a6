//! CPU reference kernels: readable f32 math over candle's CPU storage. They are the oracle the
//! CUDA kernels are tested against, so clarity beats speed here; f16/bf16 inputs are widened to
//! f32 for the math and narrowed once on output. The exceptions are what the engine runs on CPU:
//! `fast_attention` (with the AVX-512 decode tile of `fast_decode_avx512`), the paged attention
//! of f32 queries over an f32 or f16 cache (`kv_dtype`) tested against the `paged_attention`
//! oracle, and SiLU's f32 path, which is the same
//! math on the vectorized exp of [`crate::vmath`] (unit-tested against f64), as is GeGLU's.

mod activation;
#[cfg(target_arch = "x86_64")]
mod attention_f16_avx2;
mod fast_attention;
#[cfg(target_arch = "x86_64")]
mod fast_decode_avx512;
mod kv_dtype;
mod moe;
mod norm;
mod paged_attention;
mod rope;

pub(crate) use activation::{gelu_tanh_mul, silu_mul};
pub(crate) use fast_attention::{Dims as FastDims, paged_attention_fast};
pub(crate) use kv_dtype::narrow_f32_to_f16;
pub(crate) use moe::{moe_combine, moe_grouped_matmul};
pub(crate) use norm::{add_rms_norm, rms_norm};
pub(crate) use paged_attention::{paged_attention, reshape_and_cache};
pub(crate) use rope::rope;

use candle_core::{Layout, Result, bail};

/// The contiguous part of a storage slice that a layout describes, or an error for strided views.
pub(crate) fn contiguous<'a, T>(data: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) if end <= data.len() => Ok(&data[start..end]),
        Some(_) => bail!("{what}: layout {l:?} runs past its storage"),
        None => bail!("{what} must be contiguous"),
    }
}

/// Applies `$f::<T>(slices...)` to storages that must all share one float dtype, wrapping the
/// returned `Vec<T>` back into a `CpuStorage` of that dtype.
macro_rules! map_float {
    ($name:literal, ($($s:expr),+), |$($v:ident),+| $body:expr) => {{
        use candle_core::CpuStorage as S;
        match ($($s),+) {
            ($(S::F32($v)),+) => Ok(S::F32($body)),
            ($(S::F16($v)),+) => Ok(S::F16($body)),
            ($(S::BF16($v)),+) => Ok(S::BF16($body)),
            _ => candle_core::bail!("{}: inputs must share one of f32, f16, bf16", $name),
        }
    }};
}
pub(crate) use map_float;
