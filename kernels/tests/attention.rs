//! Paged attention and reshape_and_cache against a naive dense causal attention, on every
//! GQA ratio, head dim, block size, batch mix, window and soft-cap of
//! `check::attention_cases(true)`; then sliding windows and soft-caps (module `window`) against
//! a plain loop reference written here, including a check that the comparison can fail.

mod common;
#[path = "attention/window.rs"]
mod window;

use candle_core::{DType, Device, Result, Tensor};
use common::assert_rows_pass;
use metrum_kernels::check::{AttentionCase, DTYPES, attention_cases, check_attention};
use metrum_kernels::{AttentionMetadata, paged_attention, reshape_and_cache};

fn run_cases(device: &Device, pick: impl Fn(&AttentionCase) -> bool) -> Result<()> {
    let mut rows = Vec::new();
    for (i, case) in attention_cases(true).iter().enumerate() {
        if pick(case) {
            for dtype in DTYPES {
                rows.extend(check_attention(device, dtype, case, 77 + i as u64)?);
            }
        }
    }
    assert_rows_pass(&rows);
    Ok(())
}

fn decode_batches(device: &Device) -> Result<()> {
    run_cases(device, |c| c.seqs.iter().all(|s| s.0 == 1))
}

fn prefill_and_mixed_batches(device: &Device) -> Result<()> {
    run_cases(device, |c| c.seqs.iter().any(|s| s.0 > 1))
}

/// A decode long enough to use several KV splits on CUDA, in every dtype.
fn long_decode(device: &Device) -> Result<()> {
    let case = AttentionCase::new((8, 2), 64, 16, &[(1, 3000), (1, 1), (1, 2049)]);
    // The same with a window: the splits then cover the window, not the 3000-token context.
    let windowed = case.clone().with_window(700).with_cap(3.0);
    let mut rows = Vec::new();
    for dtype in DTYPES {
        rows.extend(check_attention(device, dtype, &case, 5)?);
        rows.extend(check_attention(device, dtype, &windowed, 6)?);
    }
    assert_rows_pass(&rows);
    Ok(())
}

/// Bad block ids and slots are errors before any kernel touches memory.
fn rejects_out_of_range_blocks(device: &Device) -> Result<()> {
    let meta = AttentionMetadata::new(4, &[(1, 5, vec![0, 9])], device)?;
    let cache = Tensor::zeros((4, 4, 1, 8), DType::F32, device)?;
    let q = Tensor::zeros((1, 2, 8), DType::F32, device)?;
    assert!(paged_attention(&q, &cache, &cache, &meta, 1.0).is_err());
    let kv = Tensor::zeros((1, 1, 8), DType::F32, device)?;
    assert!(reshape_and_cache(&kv, &kv, &cache, &cache, &meta).is_err());
    Ok(())
}

test_device!(decode_batches, decode_batches_cpu, decode_batches_cuda);
test_device!(
    prefill_and_mixed_batches,
    prefill_and_mixed_batches_cpu,
    prefill_and_mixed_batches_cuda
);
test_device!(long_decode, long_decode_cpu, long_decode_cuda);
test_device!(
    rejects_out_of_range_blocks,
    rejects_out_of_range_blocks_cpu,
    rejects_out_of_range_blocks_cuda
);

#[test]
fn metadata_work_lists() -> Result<()> {
    let seqs = [
        (1, 10, vec![3]),
        (130, 140, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]),
        (1, 1, vec![10]),
    ];
    let meta = AttentionMetadata::new(16, &seqs, &Device::Cpu)?;
    assert_eq!(meta.decode_tokens, vec![0, 131]);
    assert_eq!(meta.prefill_tiles, vec![[1, 0], [1, 64], [1, 128]]);
    let positions = meta.positions_t.to_vec1::<u32>()?;
    assert_eq!(positions[0], 9);
    assert_eq!(positions[1], 10);
    assert_eq!(positions[130], 139);
    assert_eq!(positions[131], 0);
    assert_eq!(meta.token_seqs_t.to_vec1::<u32>()?[1..3], [1, 1]);
    assert!(!meta.is_all_decode());
    Ok(())
}

test_device!(
    window::matches_dense_reference,
    window_and_cap_match_dense_reference_cpu,
    window_and_cap_match_dense_reference_cuda
);
test_device!(
    window::off_by_one_is_caught,
    window_off_by_one_is_caught_cpu,
    window_off_by_one_is_caught_cuda
);
test_device!(
    window::keys_before_the_window_are_never_read,
    keys_before_the_window_are_never_read_cpu,
    keys_before_the_window_are_never_read_cuda
);
test_device!(
    window::bad_params_are_errors,
    bad_window_and_cap_are_errors_cpu,
    bad_window_and_cap_are_errors_cuda
);
