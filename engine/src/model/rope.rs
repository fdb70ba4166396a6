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
    /// Phi-3's LongRoPE (`rope_type: "longrope"`): per-frequency divisors, `long` ones for a
    /// context past `original_max_position_embeddings`, `short` ones within it, and cos/sin
    /// scaled by `attention_factor`. The choice is made once per loaded model, as llama.cpp
    /// does (by the context it serves), not per sequence as transformers does: a sequence's
    /// cached keys must not change meaning when it grows past the original context.
    LongRope {
        short: Vec<f32>,
        long: Vec<f32>,
        original_max_position_embeddings: usize,
        attention_factor: f32,
    },
}

impl RopeScaling {
    /// The factor cos and sin are multiplied by (LongRoPE's attention factor; 1 otherwise).
    pub fn table_scale(&self) -> f32 {
        match self {
            RopeScaling::LongRope {
                attention_factor, ..
            } => *attention_factor,
            _ => 1.0,
        }
    }
}

/// `theta_i = 1 / base^(2i / rotary_dim)` for `i < rotary_dim / 2`, then scaled.
/// `max_positions` is the context the tables serve (LongRoPE picks its factors by it).
pub fn inverse_frequencies(
    rotary_dim: usize,
    base: f32,
    scaling: &RopeScaling,
    max_positions: usize,
) -> Vec<f32> {
    let plain = (0..rotary_dim)
        .step_by(2)
        .map(|i| 1f32 / base.powf(i as f32 / rotary_dim as f32));
    match scaling {
        RopeScaling::None => plain.collect(),
        RopeScaling::LongRope {
            short,
            long,
            original_max_position_embeddings,
            ..
        } => {
            let factors = if max_positions > *original_max_position_embeddings {
                long
            } else {
                short
            };
            // transformers: 1 / (factor * base^(2i/d)), i.e. divide the plain frequency.
            plain.zip(factors).map(|(f, divisor)| f / divisor).collect()
        }
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

/// f32 `cos` and `sin` tables `[max_positions, rotary_dim / 2]`: entry `[p, i]` is
/// `scale * cos(p * theta_i)` (resp. sin); `scale` is 1 except for LongRoPE.
pub(crate) fn rope_tables(
    inv_freq: &[f32],
    max_positions: usize,
    scale: f32,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(max_positions * half);
    let mut sin = Vec::with_capacity(max_positions * half);
    for p in 0..max_positions {
        for &f in inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos() * scale);
            sin.push(angle.sin() * scale);
        }
    }
    Ok((
        Tensor::from_vec(cos, (max_positions, half), device)?,
        Tensor::from_vec(sin, (max_positions, half), device)?,
    ))
}
