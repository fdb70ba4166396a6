//! fcfs vs deadline at three loads: light, the FCFS knee, and past it.
//!
//! ```text
//! cargo run --release -p metrum-sim --example policy_sweep [-- TRACE.csv [SEEDS [BUDGET]]]
//! ```
//! The knee is FCFS capacity under Etalon's deadline SLO: the highest Poisson rate at which
//! the P99 over requests of the deadline-miss rate stays ≤ 0.1, found by bisection. Every
//! parameter is printed with the results.

use metrum_core::Nanos;
use metrum_scheduler::{DeadlineSlo, Policy, SchedulerConfig};
use metrum_sim::{FakeExecutor, SimReport, StepCostModel, profile_prefill_model, simulate};
use metrum_workload::{LengthTrace, Lengths, PoissonWorkload};

const NUM_REQUESTS: usize = 1000;
const MISS_SLO: f64 = 0.1;

fn cost() -> StepCostModel {
    StepCostModel {
        base: Nanos::from_millis(5),
        per_batched_token: Nanos(60_000),
        per_kv_token_read: Nanos(10),
    }
}

fn base_config() -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 64,
        max_num_batched_tokens: 512,
        block_size: 16,
        num_blocks: 4096,
        max_model_len: 4096,
        enable_prefix_caching: true,
        policy: Policy::Fcfs,
        slo: DeadlineSlo {
            tbt_slo: Nanos::from_millis(30),
            ttft_slack: Nanos::from_millis(300),
            ..DeadlineSlo::default()
        },
        admission: Default::default(),
    }
}

fn run(
    config: &SchedulerConfig,
    lengths: &Lengths,
    rate: f64,
    seed: u64,
    policy: Policy,
) -> SimReport {
    let workload = PoissonWorkload::new(seed, rate, NUM_REQUESTS, lengths.clone()).generate();
    let config = SchedulerConfig {
        policy,
        ..config.clone()
    };
    match simulate(&workload, &config, FakeExecutor::new(cost())) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("simulation failed: {e}");
            std::process::exit(1);
        }
    }
}

/// Highest rate (to 2%) at which FCFS keeps P99 miss rate ≤ 0.1 on seed 0.
fn fcfs_knee(config: &SchedulerConfig, lengths: &Lengths) -> f64 {
    let passes = |rate: f64| run(config, lengths, rate, 0, Policy::Fcfs).miss_rate_p99 <= MISS_SLO;
    let (mut lo, mut hi) = (0.0, 1.0);
    while passes(hi) {
        lo = hi;
        hi *= 2.0;
    }
    while hi - lo > 0.02 * hi {
        let mid = (lo + hi) / 2.0;
        if passes(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

fn main() {
    let mut args = std::env::args().skip(1);
    let trace_path = args.next().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../traces/sharegpt_8k.csv").to_string()
    });
    let seeds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let budget: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(512);
    let text = std::fs::read_to_string(&trace_path).unwrap_or_else(|e| {
        eprintln!("cannot read {trace_path}: {e}");
        std::process::exit(1);
    });
    let trace = match LengthTrace::parse_csv(&text) {
        Ok(t) => t.clamped(2048, 512),
        Err(e) => {
            eprintln!("{trace_path}: {e}");
            std::process::exit(1);
        }
    };
    let lengths = Lengths::Trace(trace);
    let mut config = SchedulerConfig {
        max_num_batched_tokens: budget,
        ..base_config()
    };
    let profile_lengths = [64, 128, 256, 512, 1024, 2048];
    config.slo.prefill =
        profile_prefill_model(&config, FakeExecutor::new(cost()), &profile_lengths).unwrap_or_else(
            |e| {
                eprintln!("profile failed: {e}");
                std::process::exit(1);
            },
        );
    println!("trace {trace_path} (prompt ≤ 2048, output ≤ 512), {NUM_REQUESTS} requests per run");
    println!("cost model {:?}", cost());
    println!("config {config:?}");
    let knee = fcfs_knee(&config, &lengths);
    println!("FCFS knee (P99 miss rate ≤ {MISS_SLO}, seed 0): {knee:.3} req/s\n");
    let mut rows = Vec::new();
    for (label, factor) in [
        ("light", 0.5),
        ("knee", 1.0),
        ("past", 1.25),
        ("far past", 1.6),
    ] {
        let rate = knee * factor;
        for policy in [Policy::Fcfs, Policy::Deadline] {
            let reports: Vec<SimReport> = (0..seeds)
                .map(|seed| run(&config, &lengths, rate, seed, policy))
                .collect();
            let p99: Vec<f64> = reports.iter().map(|r| r.miss_rate_p99).collect();
            println!("<!-- {label} {policy}: P99 miss per seed {p99:.3?} -->");
            rows.push((label, rate, reports));
        }
    }
    println!(
        "| load | rate req/s | policy | P99 miss (mean of {seeds} seeds; min–max) | miss Σ | TTFT share of misses \
         | fluidity p10 | ≥0.9 | sched p50 ms | sched p99 ms | TTFT p99 ms | TBT p99 ms | preempt |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (label, rate, reports) in &rows {
        let n = reports.len() as f64;
        let mean = |f: fn(&SimReport) -> f64| reports.iter().map(f).sum::<f64>() / n;
        let p99: Vec<f64> = reports.iter().map(|r| r.miss_rate_p99).collect();
        let min = p99.iter().copied().fold(f64::INFINITY, f64::min);
        let max = p99.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "| {label} | {rate:.3} | {} | {:.3} ({min:.3}–{max:.3}) | {:.4} | {:.2} | {:.3} | {:.3} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} |",
            reports[0].policy,
            mean(|r| r.miss_rate_p99),
            mean(|r| r.miss_rate_service),
            mean(|r| r.ttft_share_of_misses),
            mean(|r| r.fluidity_p10),
            mean(|r| r.frac_fluidity_at_least_0_9),
            mean(|r| r.sched_delay_p50_ms),
            mean(|r| r.sched_delay_p99_ms),
            mean(|r| r.ttft_p99_ms),
            mean(|r| r.tbt_p99_ms),
            mean(|r| r.num_preemptions as f64),
        );
    }
}
