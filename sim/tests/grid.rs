//! The simulator grid at CI size (issue 19): one cost model and SLO, 2 seeds, 200 requests,
//! loads 0.5× and 1.25× the FCFS knee. A regression check of the ranking the full grid
//! (`examples/scheduler_grid.rs`, docs/results/scheduler.md) reports: nothing differs at light
//! load, and past the knee admission control halves the served requests' P99 miss rate while
//! keeping at least 95% of FCFS's goodput.

use metrum_core::Nanos;
use metrum_scheduler::{Admission, DeadlineSlo, Policy};
use metrum_sim::StepCostModel;
use metrum_sim::grid::{GridCase, run_grid_case};
use metrum_workload::Lengths;

#[test]
fn the_ranking_holds_on_the_reference_server() {
    let case = GridCase {
        cost_name: "reference".into(),
        cost: StepCostModel {
            base: Nanos::from_millis(5),
            per_batched_token: Nanos(60_000),
            per_kv_token_read: Nanos(10),
        },
        slo_name: "default".into(),
        slo: DeadlineSlo::default(),
        num_requests: 200,
        seeds: 2,
        load_factors: vec![0.5, 1.25],
        lengths: Lengths::uniform((64, 256), (32, 128)),
    };
    let result = run_grid_case(case).unwrap();
    println!(
        "knee {:.2} req/s\n{}",
        result.knee_per_s,
        result.markdown_rows()
    );
    assert!(result.knee_per_s > 10.0, "knee {}", result.knee_per_s);
    let fcfs = |f| result.row(f, Policy::Fcfs, Admission::Off).unwrap();
    let refuse = |f| {
        result
            .row(f, Policy::DeadlineSrpt, Admission::Refuse)
            .unwrap()
    };
    for (policy, admission) in metrum_sim::grid::VARIANTS {
        let light = result.row(0.5, policy, admission).unwrap();
        assert_eq!(light.refused_fraction, 0.0, "{policy} {admission}");
        assert!(light.miss_p99 <= fcfs(0.5).miss_p99 + 1e-9);
        // Where nothing is refused, reordering must not cost waiting: the mean scheduling
        // delay stays within 10% of FCFS's (plus 1 ms for a near-zero base).
        let fcfs_delay = fcfs(0.5).sched_delay_mean_ms;
        assert!(
            light.sched_delay_mean_ms <= 1.1 * fcfs_delay + 1.0,
            "{policy} {admission}: mean scheduling delay {} ms vs fcfs {fcfs_delay} ms",
            light.sched_delay_mean_ms
        );
    }
    let (f, r) = (fcfs(1.25), refuse(1.25));
    assert!(
        f.miss_p99 > 0.1,
        "1.25× the knee is past it: {}",
        f.miss_p99
    );
    assert!(
        r.miss_p99 * 2.0 <= f.miss_p99,
        "admission control: P99 {} vs fcfs {}",
        r.miss_p99,
        f.miss_p99
    );
    assert!(r.refused_fraction > 0.0 && r.refused_fraction < 0.2);
    assert!(
        r.goodput_per_s >= 0.95 * f.goodput_per_s,
        "goodput {} vs fcfs {}",
        r.goodput_per_s,
        f.goodput_per_s
    );
}
