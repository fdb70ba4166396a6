//! Rotary-embedding frequencies (with the scalings llama checkpoints use) and the cos/sin
//! tables `metrum_kernels::rope` reads. The float steps follow candle-transformers' llama so
//! both give bit-identical tables.

use candle_core::{Device, Tensor};

/// How a checkpoint stretches RoPE beyond its pre-training context.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Llama 3.1+ (`rope_type: "llama3"`): long wavelengths slowed by `factor`, short ones kept,
    /// a smooth blend between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// Position interpolation (`rope_type: "linear"`): every frequency divided by `factor`.
    Linear {
        factor: f32,
    },
    /// One divisor per frequency, as llama.cpp stores llama3 scaling in `rope_freqs.weight`.
    FrequencyFactors(Vec<f32>),
}

/// `theta_i = 1 / base^(2i / head_dim)` for `i < head_dim / 2`, then scaled.
pub fn inverse_frequencies(head_dim: usize, base: f32, scaling: &RopeScaling) -> Vec<f32> {
    let plain = (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / base.powf(i as f32 / head_dim as f32));
    match scaling {
        RopeScaling::None => plain.collect(),
        RopeScaling::Linear { factor } => plain.map(|f| f / factor).collect(),
        RopeScaling::FrequencyFactors(factors) => {
            plain.zip(factors).map(|(f, divisor)| f / divisor).collect()
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let original = *original_max_position_embeddings as f32;
            let low_freq_wavelen = original / low_freq_factor;
            let high_freq_wavelen = original / high_freq_factor;
            plain
                .map(|freq| {
                    let wavelen = 2. * std::f32::consts::PI / freq;
                    if wavelen < high_freq_wavelen {
                        freq
                    } else if wavelen > low_freq_wavelen {
                        freq / factor
                    } else {
                        let smooth = (original / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1. - smooth) * freq / factor + smooth * freq
                    }
                })
                .collect()
        }
    }
}

/// f32 `cos` and `sin` tables `[max_positions, head_dim / 2]`: entry `[p, i]` is of `p * theta_i`.
pub(crate) fn rope_tables(
    inv_freq: &[f32],
    max_positions: usize,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(max_positions * half);
    let mut sin = Vec::with_capacity(max_positions * half);
    for p in 0..max_positions {
        for &f in inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (max_positions, half), device)?,
        Tensor::from_vec(sin, (max_positions, half), device)?,
    ))
}
