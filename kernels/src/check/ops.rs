//! RMSNorm (plain and fused with the residual add), RoPE (both pairings) and `silu * up`
//! against candle_nn's CPU implementations in f32; `gelu_tanh * up` against the scalar formula
//! of HF's `gelu_pytorch_tanh` in f64.

use super::{CheckRow, random_pair, rel_err, seeded};
use crate::{RopeStyle, add_rms_norm, gelu_tanh_mul, rms_norm, rope, silu_mul};
use candle_core::{DType, Device, Result, Tensor};
use rand::Rng;

const EPS: f32 = 1e-5;

/// `rows` vectors of `hidden` elements (also the shape of the `silu_mul` check).
#[derive(Clone, Copy, Debug)]
pub struct NormCase {
    pub rows: usize,
    pub hidden: usize,
}

/// Hidden sizes of SmolLM2 (576) and Llama (4096, 8192), plus sizes that are not a multiple of
/// the 16-byte vector width so the scalar tails run.
pub fn norm_cases(quick: bool) -> Vec<NormCase> {
    let mut shapes = vec![(1, 576), (7, 576), (33, 4096), (5, 100), (3, 8192), (2, 3)];
    if !quick {
        shapes.extend([(512, 4096), (2048, 576), (64, 1536 + 2)]);
    }
    shapes
        .into_iter()
        .map(|(rows, hidden)| NormCase { rows, hidden })
        .collect()
}

fn to(device: &Device, t: &Tensor) -> Result<Tensor> {
    t.to_device(device)
}

pub fn check_rms_norm(
    device: &Device,
    dtype: DType,
    case: &NormCase,
    seed: u64,
) -> Result<CheckRow> {
    let mut rng = seeded(seed);
    let (x32, x) = random_pair(&mut rng, &[case.rows, case.hidden], dtype, 2.0)?;
    let (w32, w) = random_pair(&mut rng, &[case.hidden], dtype, 1.0)?;
    let out = rms_norm(&to(device, &x)?, &to(device, &w)?, EPS)?;
    let reference = candle_nn::ops::rms_norm(&x32, &w32, EPS)?;
    let shape = format!("[{}, {}]", case.rows, case.hidden);
    Ok(CheckRow::new(
        "rms_norm",
        dtype,
        shape,
        rel_err(&out, &reference)?,
    ))
}

/// Two rows: the normalized output and the residual sum.
pub fn check_add_rms_norm(
    device: &Device,
    dtype: DType,
    case: &NormCase,
    seed: u64,
) -> Result<Vec<CheckRow>> {
    let mut rng = seeded(seed);
    let dims = [case.rows, case.hidden];
    let (x32, x) = random_pair(&mut rng, &dims, dtype, 1.0)?;
    let (r32, r) = random_pair(&mut rng, &dims, dtype, 3.0)?;
    let (w32, w) = random_pair(&mut rng, &[case.hidden], dtype, 1.0)?;
    let (normed, sum) = add_rms_norm(&to(device, &x)?, &to(device, &r)?, &to(device, &w)?, EPS)?;
    // The residual stream is the sum rounded to the dtype; the norm reads that rounded value.
    let ref_sum = (x32 + r32)?.to_dtype(dtype)?.to_dtype(DType::F32)?;
    let ref_normed = candle_nn::ops::rms_norm(&ref_sum, &w32, EPS)?;
    let shape = format!("[{}, {}]", case.rows, case.hidden);
    Ok(vec![
        CheckRow::new(
            "add_rms_norm.normed",
            dtype,
            shape.clone(),
            rel_err(&normed, &ref_normed)?,
        ),
        CheckRow::new(
            "add_rms_norm.residual",
            dtype,
            shape,
            rel_err(&sum, &ref_sum)?,
        ),
    ])
}

pub fn check_silu_mul(
    device: &Device,
    dtype: DType,
    case: &NormCase,
    seed: u64,
) -> Result<CheckRow> {
    let mut rng = seeded(seed);
    let dims = [case.rows, case.hidden];
    let (g32, g) = random_pair(&mut rng, &dims, dtype, 3.0)?;
    let (u32_, u) = random_pair(&mut rng, &dims, dtype, 1.0)?;
    let out = silu_mul(&to(device, &g)?, &to(device, &u)?)?;
    let reference = (candle_nn::ops::silu(&g32)? * u32_)?;
    let shape = format!("[{}, {}]", case.rows, case.hidden);
    Ok(CheckRow::new(
        "silu_mul",
        dtype,
        shape,
        rel_err(&out, &reference)?,
    ))
}

/// `gelu_tanh(gate) * up` (Gemma's GeGLU) against `0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g³))) * u`
/// element by element in f64, the formula as HF writes it (the kernels use an equivalent form).
pub fn check_gelu_tanh_mul(
    device: &Device,
    dtype: DType,
    case: &NormCase,
    seed: u64,
) -> Result<CheckRow> {
    let mut rng = seeded(seed);
    let dims = [case.rows, case.hidden];
    let (g32, g) = random_pair(&mut rng, &dims, dtype, 3.0)?;
    let (u32_, u) = random_pair(&mut rng, &dims, dtype, 1.0)?;
    let out = gelu_tanh_mul(&to(device, &g)?, &to(device, &u)?)?;
    let (gs, us) = (
        g32.flatten_all()?.to_vec1::<f32>()?,
        u32_.flatten_all()?.to_vec1::<f32>()?,
    );
    let reference: Vec<f32> = gs
        .iter()
        .zip(&us)
        .map(|(&g, &u)| {
            let (g, u) = (g as f64, u as f64);
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g);
            (0.5 * g * (1.0 + inner.tanh()) * u) as f32
        })
        .collect();
    let reference = Tensor::from_vec(reference, &dims, &Device::Cpu)?;
    let shape = format!("[{}, {}]", case.rows, case.hidden);
    Ok(CheckRow::new(
        "gelu_tanh_mul",
        dtype,
        shape,
        rel_err(&out, &reference)?,
    ))
}

/// `tokens` tokens of `heads` heads at random positions below `max_pos`; `dtype_tables` passes
/// cos/sin in the activations' dtype instead of f32.
#[derive(Clone, Copy, Debug)]
pub struct RopeCase {
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub max_pos: usize,
    pub style: RopeStyle,
    pub dtype_tables: bool,
}

pub fn rope_cases(quick: bool) -> Vec<RopeCase> {
    let mut shapes = vec![
        (5, 9, 64, 2048, false),
        (37, 32, 128, 4096, false),
        (3, 8, 64, 128, true),
        (1, 1, 64, 8, false),
        (16, 3, 32, 300, false),
    ];
    if !quick {
        shapes.extend([(1024, 32, 128, 32768, false), (333, 8, 128, 8192, true)]);
    }
    let mut cases = Vec::new();
    for style in [RopeStyle::Neox, RopeStyle::Interleaved] {
        for &(tokens, heads, head_dim, max_pos, dtype_tables) in &shapes {
            cases.push(RopeCase {
                tokens,
                heads,
                head_dim,
                max_pos,
                style,
                dtype_tables,
            });
        }
    }
    cases
}

pub fn check_rope(device: &Device, dtype: DType, case: &RopeCase, seed: u64) -> Result<CheckRow> {
    let mut rng = seeded(seed);
    let cpu = Device::Cpu;
    let (t, h, d, half) = (case.tokens, case.heads, case.head_dim, case.head_dim / 2);
    let (x32, x) = random_pair(&mut rng, &[t, h, d], dtype, 1.0)?;
    let mut angles = Vec::with_capacity(case.max_pos * half);
    for p in 0..case.max_pos {
        for i in 0..half {
            let inv_freq = 10000f64.powf(-2.0 * i as f64 / d as f64);
            angles.push((p as f64 * inv_freq) as f32);
        }
    }
    let angles = Tensor::from_vec(angles, (case.max_pos, half), &cpu)?;
    let table_dtype = if case.dtype_tables { dtype } else { DType::F32 };
    let cos = angles.cos()?.to_dtype(table_dtype)?;
    let sin = angles.sin()?.to_dtype(table_dtype)?;
    let positions: Vec<u32> = (0..t)
        .map(|_| rng.random_range(0..case.max_pos as u32))
        .collect();
    let positions = Tensor::new(positions.as_slice(), &cpu)?;
    let out = rope(
        &to(device, &x)?,
        &to(device, &positions)?,
        &to(device, &cos)?,
        &to(device, &sin)?,
        case.style,
    )?;
    // candle_nn's rope wants [batch, heads, seq, dim] and one table row per sequence step.
    let cos_rows = cos.to_dtype(DType::F32)?.index_select(&positions, 0)?;
    let sin_rows = sin.to_dtype(DType::F32)?.index_select(&positions, 0)?;
    let xs = x32.unsqueeze(0)?.transpose(1, 2)?.contiguous()?;
    let reference = match case.style {
        RopeStyle::Neox => candle_nn::rotary_emb::rope(&xs, &cos_rows, &sin_rows)?,
        RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&xs, &cos_rows, &sin_rows)?,
    };
    let reference = reference.transpose(1, 2)?.squeeze(0)?;
    let shape = format!(
        "{:?} [{t}, {h}, {d}] max_pos {}{}",
        case.style,
        case.max_pos,
        if case.dtype_tables {
            " dtype-tables"
        } else {
            ""
        }
    );
    Ok(CheckRow::new(
        "rope",
        dtype,
        shape,
        rel_err(&out, &reference)?,
    ))
}
