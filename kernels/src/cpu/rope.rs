//! Rotary position embedding over a varlen batch `[T, heads, head_dim]`, each token rotated by
//! its own position. Tables `cos`/`sin` are `[max_pos, head_dim / 2]`: entry `[p, i]` is the
//! angle `p * theta_i` of frequency `i`.
//!
//! Two pairings of the head dim, both rotating a pair `(a, b)` by the angle of frequency `i`:
//! `(a, b) -> (a cos - b sin, b cos + a sin)`.
//! - [`RopeStyle::Neox`]: pairs `(x[i], x[i + D/2])` (HF `rotate_half`, safetensors llama).
//! - [`RopeStyle::Interleaved`]: pairs `(x[2i], x[2i + 1])` (GPT-J; GGUF llama in candle's
//!   `quantized_llama`, `candle_nn::rotary_emb::rope_i`).

use super::contiguous;
use crate::ops::RopeStyle;
use candle_core::{CpuStorage, Layout, Result, WithDType, bail};
use rayon::prelude::*;

/// The cos/sin table rows of `positions`, in token order, widened to f32 (tables may be f32 or
/// the activations' dtype). Only these rows are copied: the whole table is `max_pos` rows, and
/// copying it every call cost 7% of a decode step.
fn table_rows(
    s: &CpuStorage,
    l: &Layout,
    positions: &[u32],
    half: usize,
    what: &str,
) -> Result<Vec<f32>> {
    fn gather<T: Copy>(v: &[T], positions: &[u32], half: usize, f: impl Fn(T) -> f32) -> Vec<f32> {
        positions
            .iter()
            .flat_map(|&p| v[p as usize * half..][..half].iter().map(|&x| f(x)))
            .collect()
    }
    Ok(match s {
        CpuStorage::F32(v) => gather(contiguous(v, l, what)?, positions, half, |x| x),
        CpuStorage::F16(v) => gather(contiguous(v, l, what)?, positions, half, |x| x.to_f32()),
        CpuStorage::BF16(v) => gather(contiguous(v, l, what)?, positions, half, |x| x.to_f32()),
        _ => bail!("rope: {what} must be f32, f16 or bf16"),
    })
}

/// Row `t` holds token `t`'s angles.
struct Tables {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

fn rotate<T: WithDType>(x: &[T], t: &Tables, heads: usize, style: RopeStyle) -> Vec<T> {
    let (half, dim) = (t.half, 2 * t.half);
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(heads * dim)
        .zip(x.par_chunks(heads * dim))
        .zip(t.cos.par_chunks(half).zip(t.sin.par_chunks(half)))
        .for_each(|((out, x), (cos, sin))| {
            for (o, x) in out.chunks_mut(dim).zip(x.chunks(dim)) {
                for i in 0..half {
                    let (ia, ib) = match style {
                        RopeStyle::Neox => (i, i + half),
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    };
                    let (a, b) = (x[ia].to_f64() as f32, x[ib].to_f64() as f32);
                    o[ia] = T::from_f64((a * cos[i] - b * sin[i]) as f64);
                    o[ib] = T::from_f64((b * cos[i] + a * sin[i]) as f64);
                }
            }
        });
    out
}

pub(crate) fn rope(
    (x, xl): (&CpuStorage, &Layout),
    (cos, cl): (&CpuStorage, &Layout),
    (sin, sl): (&CpuStorage, &Layout),
    positions: &[u32],
    style: RopeStyle,
) -> Result<CpuStorage> {
    let (tokens, heads, dim) = xl.shape().dims3()?;
    let (max_pos, half) = cl.shape().dims2()?;
    if dim != 2 * half || sl.shape() != cl.shape() || positions.len() != tokens {
        bail!(
            "rope: x {:?}, cos {:?}, sin {:?}, {} positions disagree",
            xl.shape(),
            cl.shape(),
            sl.shape(),
            positions.len()
        );
    }
    if let Some(p) = positions.iter().find(|&&p| p as usize >= max_pos) {
        bail!("rope: position {p} outside a table of {max_pos} positions");
    }
    let tables = Tables {
        cos: table_rows(cos, cl, positions, half, "cos")?,
        sin: table_rows(sin, sl, positions, half, "sin")?,
        half,
    };
    Ok(match x {
        CpuStorage::F32(v) => {
            CpuStorage::F32(rotate(contiguous(v, xl, "x")?, &tables, heads, style))
        }
        CpuStorage::F16(v) => {
            CpuStorage::F16(rotate(contiguous(v, xl, "x")?, &tables, heads, style))
        }
        CpuStorage::BF16(v) => {
            CpuStorage::BF16(rotate(contiguous(v, xl, "x")?, &tables, heads, style))
        }
        _ => bail!("rope: x must be f32, f16 or bf16"),
    })
}
