//! The grouped mixture-of-experts ops (one launch over every expert's rows, then the
//! per-token weighted combine) against per-expert candle matmuls and an f64 loop, on CPU and
//! (feature `cuda`) on the GPU: the same body, see `metrum_kernels::check::check_moe`.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::assert_rows_pass;
use metrum_kernels::check::{DTYPES, check_moe, moe_cases};
use metrum_kernels::{ExpertRows, moe_combine, moe_grouped_matmul};

fn grouped_matmul_and_combine_match_the_references(device: &Device) -> Result<()> {
    let mut rows = Vec::new();
    for dtype in DTYPES {
        for (i, case) in moe_cases().iter().enumerate() {
            rows.extend(check_moe(device, dtype, case, 70 + i as u64)?);
        }
    }
    assert_rows_pass(&rows);
    Ok(())
}

/// Hand-checkable values: expert 0 owns rows 0-1, expert 1 none, expert 2 row 2; then token 0
/// takes 0.25 of row 0 and 0.75 of row 2.
fn known_values(device: &Device) -> Result<()> {
    let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]], device)?;
    let w = Tensor::new(
        &[
            [[1f32, 0.0], [0.0, 1.0]],
            [[9.0, 9.0], [9.0, 9.0]],
            [[1.0, 1.0], [2.0, -1.0]],
        ],
        device,
    )?;
    let rows = ExpertRows::new(&[2, 0, 1], device)?;
    let y = moe_grouped_matmul(&x, &w, &rows)?;
    assert_eq!(
        y.to_vec2::<f32>()?,
        vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![11.0, 4.0]]
    );
    let slots = Tensor::new(&[[0u32, 2], [1, 1]], device)?;
    let weights = Tensor::new(&[[0.25f32, 0.75], [0.5, 0.5]], device)?;
    let out = moe_combine(&y, &slots, &weights)?;
    assert_eq!(out.to_vec2::<f32>()?, vec![vec![8.5, 3.5], vec![3.0, 4.0]]);
    Ok(())
}

/// Shapes that disagree are errors, not panics or out-of-bounds reads.
fn bad_shapes_are_errors(device: &Device) -> Result<()> {
    let x = Tensor::zeros((3, 4), DType::F32, device)?;
    let w = Tensor::zeros((2, 5, 4), DType::F32, device)?;
    let too_few_rows = ExpertRows::new(&[1, 1], device)?;
    assert!(moe_grouped_matmul(&x, &w, &too_few_rows).is_err());
    let wrong_experts = ExpertRows::new(&[1, 1, 1], device)?;
    assert!(moe_grouped_matmul(&x, &w, &wrong_experts).is_err());
    let half = Tensor::zeros((2, 5, 4), DType::F16, device)?;
    assert!(moe_grouped_matmul(&x, &half, &ExpertRows::new(&[2, 1], device)?).is_err());
    let y = Tensor::zeros((3, 5), DType::F32, device)?;
    let slots = Tensor::new(&[[0u32, 1]], device)?;
    let weights = Tensor::new(&[[1f32, 1.0, 1.0]], device)?;
    assert!(moe_combine(&y, &slots, &weights).is_err());
    Ok(())
}

fn out_of_range_slot_is_an_error_on_cpu() -> Result<()> {
    let y = Tensor::zeros((3, 5), DType::F32, &Device::Cpu)?;
    let slots = Tensor::new(&[[0u32, 3]], &Device::Cpu)?;
    let weights = Tensor::new(&[[1f32, 1.0]], &Device::Cpu)?;
    let err = moe_combine(&y, &slots, &weights).unwrap_err().to_string();
    assert!(err.contains("slot row 3"), "{err}");
    Ok(())
}

#[test]
fn out_of_range_slot_rows_are_refused_by_the_reference() -> Result<()> {
    out_of_range_slot_is_an_error_on_cpu()
}

test_device!(
    grouped_matmul_and_combine_match_the_references,
    grouped_matmul_and_combine_match_the_references_cpu,
    grouped_matmul_and_combine_match_the_references_cuda
);
test_device!(known_values, known_values_cpu, known_values_cuda);
test_device!(
    bad_shapes_are_errors,
    bad_shapes_are_errors_cpu,
    bad_shapes_are_errors_cuda
);
