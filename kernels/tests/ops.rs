//! RMSNorm, fused add + RMSNorm, RoPE (both styles) and silu_mul against candle_nn, and
//! gelu_tanh_mul against the f64 scalar formula, on CPU and (feature `cuda`) on the GPU.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::assert_rows_pass;
use metrum_kernels::check::{
    DTYPES, NormCase, check_add_rms_norm, check_gelu_tanh_mul, check_rms_norm, check_rope,
    check_silu_mul, norm_cases, rope_cases,
};
use metrum_kernels::{RopeStyle, gelu_tanh_mul, rope, silu_mul};

fn rms_norm_matches_candle(device: &Device) -> Result<()> {
    let mut rows = Vec::new();
    for dtype in DTYPES {
        for (i, case) in norm_cases(true).iter().enumerate() {
            rows.push(check_rms_norm(device, dtype, case, i as u64)?);
        }
    }
    assert_rows_pass(&rows);
    Ok(())
}

fn add_rms_norm_matches_candle(device: &Device) -> Result<()> {
    let mut rows = Vec::new();
    for dtype in DTYPES {
        for (i, case) in norm_cases(true).iter().enumerate() {
            rows.extend(check_add_rms_norm(device, dtype, case, 10 + i as u64)?);
        }
    }
    assert_rows_pass(&rows);
    Ok(())
}

fn silu_mul_matches_candle(device: &Device) -> Result<()> {
    let mut rows = Vec::new();
    for dtype in DTYPES {
        for (i, case) in norm_cases(true).iter().enumerate() {
            rows.push(check_silu_mul(device, dtype, case, 20 + i as u64)?);
        }
    }
    assert_rows_pass(&rows);
    Ok(())
}

fn gelu_tanh_mul_matches_the_formula(device: &Device) -> Result<()> {
    let mut rows = Vec::new();
    for dtype in DTYPES {
        let mut cases = norm_cases(true);
        // Gemma 2's intermediate sizes (9216 for 2B): a large, vector-aligned shape.
        cases.push(NormCase {
            rows: 3,
            hidden: 9216,
        });
        for (i, case) in cases.iter().enumerate() {
            rows.push(check_gelu_tanh_mul(device, dtype, case, 40 + i as u64)?);
        }
    }
    assert_rows_pass(&rows);
    Ok(())
}

/// Known values of HF's gelu_pytorch_tanh (0, the tails, the negative dip) times `up`, and a
/// guard that the GELU kernel is not the SiLU one under another name.
fn gelu_tanh_mul_known_values(device: &Device) -> Result<()> {
    let g = Tensor::new(&[0f32, 1.0, -1.0, 3.0, -3.0, 10.0, -10.0, -0.75], device)?;
    let up = Tensor::new(&[1f32, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0], device)?;
    let got = gelu_tanh_mul(&g, &up)?.to_vec1::<f32>()?;
    // torch.nn.functional.gelu(x, approximate="tanh"), in f64 from the formula.
    let want = [
        0.0, 0.841_192, -0.158_808, 2.996_363, -0.003_637, 10.0, -0.0, -0.340_079,
    ];
    for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
        assert!((a - b).abs() < 2e-6, "element {i}: {a} vs {b}");
    }
    let silu = silu_mul(&g, &up)?.to_vec1::<f32>()?;
    assert!(
        (silu[1] - got[1]).abs() > 0.1,
        "gelu_tanh_mul gave SiLU's value"
    );
    Ok(())
}

fn rope_matches_candle(device: &Device) -> Result<()> {
    let mut rows = Vec::new();
    for dtype in DTYPES {
        for (i, case) in rope_cases(true).iter().enumerate() {
            rows.push(check_rope(device, dtype, case, 30 + i as u64)?);
        }
    }
    assert_rows_pass(&rows);
    Ok(())
}

/// The two styles pair different elements, so on the same input they must differ.
fn rope_styles_differ(device: &Device) -> Result<()> {
    let x = Tensor::arange(0f32, 8.0, device)?.reshape((1, 1, 8))?;
    let angles = Tensor::new(&[[0.5f32, 0.25, 0.125, 0.0625]], device)?;
    let positions = Tensor::new(&[0u32], device)?;
    let neox = rope(
        &x,
        &positions,
        &angles.cos()?,
        &angles.sin()?,
        RopeStyle::Neox,
    )?;
    let inter = rope(
        &x,
        &positions,
        &angles.cos()?,
        &angles.sin()?,
        RopeStyle::Interleaved,
    )?;
    let diff = (neox - inter)?.abs()?.sum_all()?.to_scalar::<f32>()?;
    assert!(diff > 1.0, "styles gave the same result (diff {diff})");
    Ok(())
}

fn rope_rejects_bad_positions(device: &Device) -> Result<()> {
    let x = Tensor::zeros((2, 1, 8), DType::F32, device)?;
    let table = Tensor::zeros((4, 4), DType::F32, device)?;
    let wrong_len = Tensor::new(&[0u32], device)?;
    assert!(rope(&x, &wrong_len, &table, &table, RopeStyle::Neox).is_err());
    let wrong_dtype = Tensor::new(&[0f32, 1.0], device)?;
    assert!(rope(&x, &wrong_dtype, &table, &table, RopeStyle::Neox).is_err());
    Ok(())
}

test_device!(
    rms_norm_matches_candle,
    rms_norm_matches_candle_cpu,
    rms_norm_matches_candle_cuda
);
test_device!(
    add_rms_norm_matches_candle,
    add_rms_norm_matches_candle_cpu,
    add_rms_norm_matches_candle_cuda
);
test_device!(
    silu_mul_matches_candle,
    silu_mul_matches_candle_cpu,
    silu_mul_matches_candle_cuda
);
test_device!(
    gelu_tanh_mul_matches_the_formula,
    gelu_tanh_mul_matches_the_formula_cpu,
    gelu_tanh_mul_matches_the_formula_cuda
);
test_device!(
    gelu_tanh_mul_known_values,
    gelu_tanh_mul_known_values_cpu,
    gelu_tanh_mul_known_values_cuda
);
test_device!(
    rope_matches_candle,
    rope_matches_candle_cpu,
    rope_matches_candle_cuda
);
test_device!(
    rope_styles_differ,
    rope_styles_differ_cpu,
    rope_styles_differ_cuda
);
test_device!(
    rope_rejects_bad_positions,
    rope_rejects_bad_positions_cpu,
    rope_rejects_bad_positions_cuda
);

#[test]
fn out_of_range_position_is_an_error_on_cpu() -> Result<()> {
    let x = Tensor::zeros((1, 1, 8), DType::F32, &Device::Cpu)?;
    let table = Tensor::zeros((4, 4), DType::F32, &Device::Cpu)?;
    let positions = Tensor::new(&[4u32], &Device::Cpu)?;
    assert!(rope(&x, &positions, &table, &table, RopeStyle::Neox).is_err());
    Ok(())
}
