//! RMSNorm, and the fused residual-add + RMSNorm of a pre-norm transformer layer.
//!
//! Math (per row of `H` elements, in f32): `y = x / sqrt(mean(x²) + eps) * w`, rounded once to the
//! output dtype, as `candle_nn::ops::rms_norm` does. The fused form first rounds `x + residual`
//! to the dtype (that rounded sum is the new residual stream, as in HF's eager model) and
//! normalizes that rounded value.

use super::{contiguous, map_float};
use candle_core::{CpuStorage, Layout, Result, WithDType, bail};
use rayon::prelude::*;

fn hidden_size(xl: &Layout, wl: &Layout) -> Result<usize> {
    let h = wl.shape().elem_count();
    match xl.shape().dims().last() {
        Some(&last) if last == h && wl.shape().rank() == 1 && h > 0 => Ok(h),
        _ => bail!(
            "rms_norm: weight {:?} does not match the last dim of {:?}",
            wl.shape(),
            xl.shape()
        ),
    }
}

fn normalize_row<T: WithDType>(x: &[T], w: &[T], eps: f32, out: &mut [T]) {
    let sum_sq: f32 = x.iter().map(|v| (v.to_f64() as f32).powi(2)).sum();
    let inv_rms = 1.0 / (sum_sq / x.len() as f32 + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        *o = T::from_f64((v.to_f64() as f32 * inv_rms * w.to_f64() as f32) as f64);
    }
}

fn rms_norm_rows<T: WithDType>(x: &[T], w: &[T], eps: f32) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(w.len())
        .zip(x.par_chunks(w.len()))
        .for_each(|(o, x)| normalize_row(x, w, eps, o));
    out
}

/// Output is `[2, ...]`: the normalized rows, then the rounded sums `x + residual`.
fn add_rms_norm_rows<T: WithDType>(x: &[T], r: &[T], w: &[T], eps: f32) -> Vec<T> {
    let n = x.len();
    let mut out = vec![T::zero(); 2 * n];
    let (normed, sums) = out.split_at_mut(n);
    sums.par_chunks_mut(w.len())
        .zip(normed.par_chunks_mut(w.len()))
        .zip(x.par_chunks(w.len()).zip(r.par_chunks(w.len())))
        .for_each(|((s, o), (x, r))| {
            for ((s, a), b) in s.iter_mut().zip(x).zip(r) {
                *s = T::from_f64((a.to_f64() as f32 + b.to_f64() as f32) as f64);
            }
            normalize_row(s, w, eps, o);
        });
    out
}

pub(crate) fn rms_norm(
    x: &CpuStorage,
    xl: &Layout,
    w: &CpuStorage,
    wl: &Layout,
    eps: f32,
) -> Result<CpuStorage> {
    hidden_size(xl, wl)?;
    map_float!("rms_norm", (x, w), |x, w| rms_norm_rows(
        contiguous(x, xl, "x")?,
        contiguous(w, wl, "weight")?,
        eps
    ))
}

pub(crate) fn add_rms_norm(
    (x, xl): (&CpuStorage, &Layout),
    (r, rl): (&CpuStorage, &Layout),
    (w, wl): (&CpuStorage, &Layout),
    eps: f32,
) -> Result<CpuStorage> {
    hidden_size(xl, wl)?;
    if xl.shape() != rl.shape() {
        bail!(
            "add_rms_norm: x {:?} and residual {:?} differ",
            xl.shape(),
            rl.shape()
        );
    }
    map_float!("add_rms_norm", (x, r, w), |x, r, w| add_rms_norm_rows(
        contiguous(x, xl, "x")?,
        contiguous(r, rl, "residual")?,
        contiguous(w, wl, "weight")?,
        eps
    ))
}
