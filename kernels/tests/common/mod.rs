//! The shared test harness: `test_device!` turns one body `fn(&Device) -> Result<()>` into a
//! `_cpu` test and (feature `cuda`) a `_cuda` test, like candle's own `test_device!`.
//!
//! The `_cuda` test runs only where a CUDA device opens. Without one it prints that it was
//! skipped and passes — also under `CI=true`, because CI builds the CUDA path on machines with
//! no GPU. Set `METRUM_REQUIRE_GPU=1` (as the GPU check does) to turn a missing device into a
//! failure instead.

#![allow(dead_code)] // each test file uses a different subset

#[cfg(feature = "cuda")]
use candle_core::Device;

#[cfg(feature = "cuda")]
pub fn cuda_device(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(device) => Some(device),
        Err(e) if std::env::var("METRUM_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("{test}: METRUM_REQUIRE_GPU=1 but no CUDA device: {e}")
        }
        Err(e) => {
            println!("{test}: skipped, no CUDA device ({e})");
            None
        }
    }
}

#[macro_export]
macro_rules! test_device {
    ($body:path, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() -> candle_core::Result<()> {
            $body(&candle_core::Device::Cpu)
        }

        #[cfg(feature = "cuda")]
        #[test]
        fn $cuda() -> candle_core::Result<()> {
            match common::cuda_device(stringify!($cuda)) {
                Some(device) => $body(&device),
                None => Ok(()),
            }
        }
    };
}

/// Fails with every out-of-tolerance row listed, so one run shows all failures.
pub fn assert_rows_pass(rows: &[metrum_kernels::check::CheckRow]) {
    assert!(!rows.is_empty(), "no rows were checked");
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.passed)
        .map(|r| {
            format!(
                "{} {} {}: rel err {:.3e}",
                r.kernel, r.dtype, r.shape, r.max_rel_err
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} rows out of tolerance:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
