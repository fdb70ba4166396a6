//! Issue 19's simulator grid: three cost models × three SLOs × loads 0.5/1/1.25/1.5× the FCFS
//! knee, comparing fcfs, deadline, deadline-srpt and deadline-srpt with admission control.
//!
//! `cargo run --release -p metrum-sim --example scheduler_grid -- [SEEDS] [REQUESTS]`
//! (defaults 5 and 500). Deterministic: machine load does not change the numbers.

use metrum_core::Nanos;
use metrum_scheduler::DeadlineSlo;
use metrum_sim::StepCostModel;
use metrum_sim::grid::{GridCase, MARKDOWN_HEADER, run_grid_case};
use metrum_workload::Lengths;

fn main() {
    let mut args = std::env::args().skip(1);
    let seeds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let num_requests: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(500);
    let ms = Nanos::from_millis;
    // (name, cost, default D_d, default S)
    let costs = [
        // `metrum simulate`'s built-in reference server.
        (
            "reference",
            StepCostModel {
                base: ms(5),
                per_batched_token: Nanos(60_000),
                per_kv_token_read: Nanos(10),
            },
            ms(30),
            ms(300),
        ),
        // This machine's profile-step fit (docs/results/scheduler.md section 1).
        (
            "this CPU",
            StepCostModel {
                base: Nanos(5_111_000),
                per_batched_token: Nanos(643_000),
                per_kv_token_read: Nanos(1_310),
            },
            ms(100),
            ms(1000),
        ),
        // Llama-3.1-8B BF16 on an H100 (docs/results/gpu.md: 7.5 ms decode step at batch 1,
        // 73.8 ms for a 2048-token prefill chunk, +16 ms from 512 to 4096 context at batch 64).
        (
            "8B on H100",
            StepCostModel {
                base: Nanos(7_300_000),
                per_batched_token: Nanos(32_000),
                per_kv_token_read: Nanos(70),
            },
            ms(30),
            ms(300),
        ),
    ];
    print!("{MARKDOWN_HEADER}");
    for (cost_name, cost, tbt, slack) in costs {
        for (slo_name, scale) in [("tight", 0.5), ("default", 1.0), ("loose", 2.0)] {
            let scaled = |d: Nanos| Nanos((d.0 as f64 * scale) as u64);
            let case = GridCase {
                cost_name: cost_name.into(),
                cost,
                slo_name: format!(
                    "{slo_name} ({}/{} ms)",
                    scaled(tbt).0 / 1_000_000,
                    scaled(slack).0 / 1_000_000
                ),
                slo: DeadlineSlo {
                    tbt_slo: scaled(tbt),
                    ttft_slack: scaled(slack),
                    ..DeadlineSlo::default()
                },
                num_requests,
                seeds,
                load_factors: vec![0.5, 1.0, 1.25, 1.5],
                lengths: Lengths::uniform((64, 256), (32, 128)),
            };
            match run_grid_case(case) {
                Ok(result) => {
                    eprintln!(
                        "{cost_name} {slo_name}: knee {:.3} req/s",
                        result.knee_per_s
                    );
                    print!("{}", result.markdown_rows());
                }
                Err(e) => eprintln!("{cost_name} {slo_name}: {e}"),
            }
        }
    }
}
