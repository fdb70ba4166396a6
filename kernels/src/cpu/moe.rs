//! The grouped mixture-of-experts ops' reference: a plain per-row dot product against the
//! expert that owns the row, and the per-token weighted sum of its expert outputs, both in f32
//! and rounded once to the output dtype (see [`crate::moe`] for the layouts).

use super::{contiguous, map_float};
use candle_core::{CpuStorage, Layout, Result, WithDType, bail};

pub(crate) fn moe_grouped_matmul(
    x: &CpuStorage,
    xl: &Layout,
    w: &CpuStorage,
    wl: &Layout,
    offsets: &[u32],
) -> Result<CpuStorage> {
    let (rows, k) = xl.shape().dims2()?;
    let (experts, n, wk) = wl.shape().dims3()?;
    if wk != k || offsets.len() != experts + 1 || offsets[experts] as usize != rows {
        bail!(
            "moe_grouped_matmul: x {:?}, weights {:?} and offsets {offsets:?} disagree",
            xl.shape(),
            wl.shape()
        );
    }
    if offsets.windows(2).any(|o| o[0] > o[1]) {
        bail!("moe_grouped_matmul: offsets {offsets:?} must not decrease");
    }
    map_float!("moe_grouped_matmul", (x, w), |xs, ws| {
        grouped_rows(
            contiguous(xs, xl, "x")?,
            contiguous(ws, wl, "weights")?,
            offsets,
            n,
            k,
        )
    })
}

fn grouped_rows<T: WithDType>(x: &[T], w: &[T], offsets: &[u32], n: usize, k: usize) -> Vec<T> {
    let mut out = vec![T::zero(); (offsets[offsets.len() - 1] as usize) * n];
    for (expert, range) in offsets.windows(2).enumerate() {
        let matrix = &w[expert * n * k..(expert + 1) * n * k];
        for row in range[0] as usize..range[1] as usize {
            let input = &x[row * k..(row + 1) * k];
            for (col, weights) in matrix.chunks_exact(k).enumerate() {
                let dot: f32 = input
                    .iter()
                    .zip(weights)
                    .map(|(a, b)| a.to_f64() as f32 * b.to_f64() as f32)
                    .sum();
                out[row * n + col] = T::from_f64(dot as f64);
            }
        }
    }
    out
}

pub(crate) fn moe_combine(
    y: &CpuStorage,
    yl: &Layout,
    rows: &CpuStorage,
    rl: &Layout,
    weights: &CpuStorage,
    wl: &Layout,
) -> Result<CpuStorage> {
    let (num_rows, n) = yl.shape().dims2()?;
    let (CpuStorage::U32(rows), CpuStorage::F32(weights)) = (rows, weights) else {
        bail!("moe_combine: slot rows must be u32 and slot weights f32");
    };
    let rows = contiguous(rows, rl, "slot rows")?;
    let weights = contiguous(weights, wl, "slot weights")?;
    let per_token = rl.shape().dims2()?.1;
    if let Some(bad) = rows.iter().find(|&&r| r as usize >= num_rows) {
        bail!("moe_combine: slot row {bad} outside the {num_rows} expert rows");
    }
    Ok(match y {
        CpuStorage::F32(ys) => CpuStorage::F32(combine_rows(
            contiguous(ys, yl, "expert outputs")?,
            rows,
            weights,
            n,
            per_token,
        )),
        CpuStorage::F16(ys) => CpuStorage::F16(combine_rows(
            contiguous(ys, yl, "expert outputs")?,
            rows,
            weights,
            n,
            per_token,
        )),
        CpuStorage::BF16(ys) => CpuStorage::BF16(combine_rows(
            contiguous(ys, yl, "expert outputs")?,
            rows,
            weights,
            n,
            per_token,
        )),
        _ => bail!("moe_combine: expert outputs must be f32, f16 or bf16"),
    })
}

fn combine_rows<T: WithDType>(
    y: &[T],
    rows: &[u32],
    weights: &[f32],
    n: usize,
    per_token: usize,
) -> Vec<T> {
    let tokens = rows.len() / per_token.max(1);
    let mut out = vec![T::zero(); tokens * n];
    let mut acc = vec![0f32; n];
    for token in 0..tokens {
        acc.fill(0.0);
        for slot in token * per_token..(token + 1) * per_token {
            let (row, weight) = (rows[slot] as usize, weights[slot]);
            for (a, v) in acc.iter_mut().zip(&y[row * n..(row + 1) * n]) {
                *a += weight * v.to_f64() as f32;
            }
        }
        for (o, a) in out[token * n..(token + 1) * n].iter_mut().zip(&acc) {
            *o = T::from_f64(*a as f64);
        }
    }
    out
}
