//! Standalone GPU check of Metrum's kernels: every `check` row on CUDA device 0 (compared with
//! the CPU references), then decode paged-attention bandwidth at 4k/16k/32k context next to the
//! device-to-device copy bandwidth. The same calls `metrum gpu-check` makes, runnable by itself
//! on the GPU machine:
//!
//! `cargo build --release -p metrum-kernels --features cuda --example gpu_check`, then
//! `gpu_check [--quick] [--no-bench] [--bench-only]`. Exits 1 when a check is out of tolerance.

use candle_core::{Device, Result};
use metrum_kernels::check::{
    BenchSpec, bench_copy_bandwidth, bench_paged_attention, bench_prefill, run_kernel_checks,
};
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let bench = !args.iter().any(|a| a == "--no-bench");
    let checks = !args.iter().any(|a| a == "--bench-only");
    let device = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("no CUDA device ({e}); checking the CPU oracle instead");
            Device::Cpu
        }
    };
    let start = Instant::now();
    let rows = if checks {
        run_kernel_checks(&device, quick)?
    } else {
        Vec::new()
    };
    let failed = rows.iter().filter(|r| !r.passed).count();
    for r in &rows {
        let verdict = if r.passed { "ok  " } else { "FAIL" };
        println!(
            "{verdict} {:<22} {:<5} {:>10.3e}  {}",
            r.kernel, r.dtype, r.max_rel_err, r.shape
        );
    }
    println!(
        "{} checks, {failed} failed, {:.1}s",
        rows.len(),
        start.elapsed().as_secs_f64()
    );
    if bench {
        let copy = bench_copy_bandwidth(&device)?;
        println!("device copy bandwidth: {copy:.0} GB/s (read + write)");
        let specs = [
            BenchSpec::default(),
            BenchSpec {
                num_heads: 9,
                num_kv_heads: 3,
                head_dim: 64,
                ..BenchSpec::default()
            },
        ];
        for spec in &specs {
            for ctx in [4096, 16384, 32768] {
                for batch in [1, 8, 32] {
                    let row = bench_paged_attention(&device, ctx, batch, spec)?;
                    println!(
                        "{} {} {:<24} ctx {:>5} batch {:>2}: {:>9.1} us  {:>6.0} GB/s  ({:.0}% of copy)",
                        row.kernel,
                        row.dtype,
                        row.shape,
                        row.ctx_len,
                        row.batch,
                        row.time_us,
                        row.gbps,
                        100.0 * row.gbps / copy
                    );
                }
            }
        }
        for spec in &specs {
            for (q_len, ctx) in [(512, 512), (2048, 2048), (512, 8192), (4096, 4096)] {
                let (row, tflops) = bench_prefill(&device, q_len, ctx, spec)?;
                println!(
                    "{} {} {:<30} ctx {:>5}: {:>9.1} us  {:>6.1} TFLOP/s",
                    row.kernel, row.dtype, row.shape, row.ctx_len, row.time_us, tflops
                );
            }
        }
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
