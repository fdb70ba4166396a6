//! `silu(gate) * up`, the gated MLP activation of llama-style models.

use super::{contiguous, map_float};
use candle_core::{CpuStorage, Layout, Result, WithDType, bail};

fn silu_mul_rows<T: WithDType>(gate: &[T], up: &[T]) -> Vec<T> {
    gate.iter()
        .zip(up)
        .map(|(g, u)| {
            let g = g.to_f64() as f32;
            let silu = g / (1.0 + (-g).exp());
            T::from_f64((silu * u.to_f64() as f32) as f64)
        })
        .collect()
}

pub(crate) fn silu_mul(
    gate: &CpuStorage,
    gl: &Layout,
    up: &CpuStorage,
    ul: &Layout,
) -> Result<CpuStorage> {
    if gl.shape() != ul.shape() {
        bail!(
            "silu_mul: gate {:?} and up {:?} differ",
            gl.shape(),
            ul.shape()
        );
    }
    map_float!("silu_mul", (gate, up), |g, u| silu_mul_rows(
        contiguous(g, gl, "gate")?,
        contiguous(u, ul, "up")?
    ))
}
