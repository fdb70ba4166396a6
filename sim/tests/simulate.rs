//! The simulator: determinism, sanity of its numbers at light and heavy load, the prefill
//! profiler, and trace input. (Moved from the scheduler crate's tests.)

mod common;

use common::*;
use metrum_core::Nanos;
use metrum_scheduler::{DeadlineSlo, Policy, SchedulerConfig};
use metrum_sim::{FakeExecutor, StepCostModel, markdown_table, profile_prefill_model, simulate};
use metrum_workload::{LengthTrace, Lengths, PoissonWorkload, Workload};

fn cost() -> StepCostModel {
    StepCostModel {
        base: ms(4),
        per_batched_token: Nanos(40_000),
        per_kv_token_read: Nanos(20),
    }
}

fn sim_config(policy: Policy) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 32,
        max_num_batched_tokens: 256,
        block_size: 16,
        num_blocks: 512,
        max_model_len: 2048,
        enable_prefix_caching: true,
        policy,
        slo: DeadlineSlo {
            tbt_slo: ms(50),
            ..DeadlineSlo::default()
        },
        admission: Default::default(),
    }
}

fn workload(rate: f64, n: usize) -> Workload {
    PoissonWorkload::new(42, rate, n, Lengths::uniform((32, 512), (8, 128))).generate()
}

#[test]
fn simulation_is_deterministic() {
    let w = workload(5.0, 60);
    let a = simulate(&w, &sim_config(Policy::Deadline), FakeExecutor::new(cost())).unwrap();
    let b = run_checked(&w, sim_config(Policy::Deadline), cost());
    // Compared as text: undefined fields are NaN, and NaN != NaN.
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(a.num_completed, 60);
}

#[test]
fn light_load_meets_every_deadline_and_heavy_load_queues() {
    for policy in Policy::ALL {
        let light = run_checked(&workload(0.5, 40), sim_config(policy), cost());
        assert_eq!(light.num_completed, 40);
        assert_eq!(light.miss_rate_service, 0.0, "{policy}");
        assert_eq!(light.fluidity_p1, 1.0);
        assert!(
            light.sched_delay_p99_ms < 100.0,
            "{}",
            light.sched_delay_p99_ms
        );
        let heavy = run_checked(&workload(40.0, 200), sim_config(policy), cost());
        assert_eq!(heavy.num_completed, 200);
        assert!(heavy.sched_delay_p50_ms > 10.0 * light.sched_delay_p50_ms.max(1.0));
        assert!(heavy.miss_rate_service > 0.0);
        assert!(heavy.ttft_p99_ms > light.ttft_p99_ms);
    }
}

#[test]
fn a_checked_simulation_with_shared_prefixes_hits_the_cache() {
    let mut w = PoissonWorkload::new(7, 10.0, 80, Lengths::fixed(300, 20));
    w.shared_prefix_len = 256;
    let report = run_checked(&w.generate(), sim_config(Policy::Fcfs), cost());
    // 80 prompts of 300 tokens share their first 256 (16 blocks); all but the first hit them.
    assert!(
        report.prefix_cache_hit_rate > 0.8,
        "{}",
        report.prefix_cache_hit_rate
    );
}

#[test]
fn the_prefill_profile_fits_the_cost_model() {
    let config = sim_config(Policy::Fcfs);
    let lengths = [64, 128, 256, 512, 1024, 1536];
    let model = profile_prefill_model(&config, FakeExecutor::new(cost()), &lengths).unwrap();
    // TTFT(P) = ceil(P/256)·(4 ms) + 40 µs·P + 20 ns·P(P+1)/2: within a few percent of the fit.
    for p in [100usize, 700, 1400] {
        let steps = p.div_ceil(256) as f64;
        let exact = steps * 4e-3 + 40e-6 * p as f64 + 20e-9 * (p * (p + 1) / 2) as f64;
        let fitted = model.predict(p).as_secs_f64();
        assert!(
            (fitted - exact).abs() / exact < 0.08,
            "P={p}: {fitted} vs {exact}"
        );
    }
}

#[test]
fn the_repository_traces_parse_and_drive_a_run() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../traces/sharegpt_8k.csv");
    let text = std::fs::read_to_string(path).expect("traces/sharegpt_8k.csv is in the repository");
    let trace = LengthTrace::parse_csv(&text).unwrap().clamped(1024, 256);
    assert!(trace.pairs.len() > 1000);
    let w = PoissonWorkload::new(1, 2.0, 50, Lengths::Trace(trace)).generate();
    let reports: Vec<_> = Policy::ALL
        .iter()
        .map(|&p| run_checked(&w, sim_config(p), cost()))
        .collect();
    assert!(reports.iter().all(|r| r.num_completed == 50));
    let table = markdown_table(&reports);
    assert_eq!(table.lines().count(), 2 + Policy::ALL.len());
    assert!(table.contains("| deadline |"));
}
