//! Capacity search against synthetic pass/fail oracles, and SLO verdicts of runs.

use metrum_core::{FinishReason, Nanos, RequestId};
use metrum_metrics::{
    CapacityError, CapacityResult, CapacitySearch, CapacitySearchConfig, CapacitySlo, RequestShape,
    RunRequest, RunResult, SearchStep, SloConfig, StopReason, TimelineBuilder,
};

/// Runs the search to the end against `passes(qps, seed_index)`.
fn drive(
    config: CapacitySearchConfig,
    passes: impl Fn(f64, u32) -> bool,
) -> (CapacityResult, Vec<RunRequest>) {
    let mut search = CapacitySearch::new(config).unwrap();
    let mut runs = Vec::new();
    for _ in 0..1_000 {
        match search.next_step() {
            SearchStep::Run(run) => {
                let passed = passes(run.qps, run.seed_index);
                runs.push(run);
                let metric = if passed { 0.05 } else { 0.5 };
                search.record(run, RunResult { passed, metric }).unwrap();
            }
            SearchStep::Done(result) => return (result, runs),
        }
    }
    panic!("the search did not terminate: {runs:?}");
}

#[test]
fn finds_a_known_capacity_within_the_granularity() {
    let capacity = 7.3;
    let (result, runs) = drive(CapacitySearchConfig::default(), |qps, _| qps <= capacity);
    let found = result.max_qps_under_slo.unwrap();
    assert!((capacity * 0.95..=capacity).contains(&found), "{result:?}");
    // The reported capacity was confirmed under every seed.
    assert_eq!(result.metric_at_capacity, vec![0.05; 3]);
    assert!(runs.iter().filter(|r| r.qps == found).count() >= 3);
    for probe in &result.probes {
        assert_eq!(probe.passed, probe.qps <= capacity, "{probe:?}");
    }
    assert_no_run_repeats(&runs);
}

/// A (qps, seed) pair is never run twice: earlier runs are reused.
fn assert_no_run_repeats(runs: &[RunRequest]) {
    for (i, a) in runs.iter().enumerate() {
        assert!(!runs[..i].contains(a), "{a:?} run twice in {runs:?}");
    }
}

#[test]
fn grows_the_upper_bound_to_reach_a_large_capacity() {
    let (result, _) = drive(CapacitySearchConfig::default(), |qps, _| qps <= 45.0);
    let found = result.max_qps_under_slo.unwrap();
    assert!((45.0 * 0.95..=45.0).contains(&found), "{result:?}");
    assert!(result.probes.iter().any(|p| p.qps > 4.0));
}

#[test]
fn reports_no_capacity_when_nothing_passes() {
    let (result, runs) = drive(CapacitySearchConfig::default(), |_, _| false);
    assert_eq!(result.max_qps_under_slo, None);
    assert!(result.metric_at_capacity.is_empty());
    assert!(runs.iter().all(|r| r.qps < 2.0));
    assert_eq!(result.stop_reason, StopReason::RepeatedQps);
    assert_no_run_repeats(&runs);
}

#[test]
fn a_capacity_must_hold_for_every_seed() {
    // Seed 0 sustains 7.3 QPS, seed 1 only 6.9: the capacity reported must be ≤ 6.9.
    let threshold = |seed: u32| match seed {
        1 => 6.9,
        2 => 7.1,
        _ => 7.3,
    };
    let (result, runs) = drive(CapacitySearchConfig::default(), |qps, seed| {
        qps <= threshold(seed)
    });
    let found = result.max_qps_under_slo.unwrap();
    assert!((6.9 * 0.95..=6.9).contains(&found), "{result:?}");
    assert!(runs.iter().any(|r| r.seed_index > 0));
    assert_no_run_repeats(&runs);
}

#[test]
fn the_search_insists_on_the_run_it_asked_for() {
    let mut search = CapacitySearch::new(CapacitySearchConfig::default()).unwrap();
    let SearchStep::Run(first) = search.next_step() else {
        panic!("a fresh search runs something");
    };
    assert_eq!(search.next_step(), SearchStep::Run(first));
    assert_eq!(
        first,
        RunRequest {
            qps: 1.0,
            seed_index: 0
        }
    );
    let wrong = RunRequest {
        qps: 3.0,
        seed_index: 0,
    };
    let ok = RunResult {
        passed: true,
        metric: 0.0,
    };
    assert!(matches!(
        search.record(wrong, ok),
        Err(CapacityError::UnexpectedRun { .. })
    ));
    search.record(first, ok).unwrap();
    assert!(search.record(first, ok).is_err());
    assert!(
        CapacitySearch::new(CapacitySearchConfig {
            start_qps: 0.0,
            ..CapacitySearchConfig::default()
        })
        .is_err()
    );
}

fn request(
    id: u64,
    ttft_ms: u64,
    gaps_ms: &[u64],
    reason: FinishReason,
) -> metrum_metrics::RequestTimeline {
    let shape = RequestShape {
        prompt_tokens: 10,
        max_tokens: Some(gaps_ms.len() as u32 + 1),
        slo: metrum_core::RequestSlo::SERVER,
    };
    let mut b = TimelineBuilder::new(RequestId(id), Nanos::ZERO, shape);
    b.scheduled(Nanos::from_millis(1)).unwrap();
    let mut at = 0;
    if reason != FinishReason::Error {
        at = ttft_ms;
        b.tokens(Nanos::from_millis(at), 1).unwrap();
        for g in gaps_ms {
            at += g;
            b.tokens(Nanos::from_millis(at), 1).unwrap();
        }
    }
    b.finished(Nanos::from_millis(at + 1), reason).unwrap();
    b.build()
}

#[test]
fn slo_verdicts_judge_runs_and_count_failures_against_them() {
    let slo = SloConfig::default(); // D_d 30 ms, D_p = 300 ms
    let smooth: Vec<_> = (0..20)
        .map(|i| request(i, 100, &[20; 10], FinishReason::Stop))
        .collect();
    let deadline = CapacitySlo::etalon_deadline();
    let verdict = deadline.evaluate(&smooth, &slo);
    assert!(verdict.passed, "{verdict:?}");
    assert_eq!(verdict.run_result().metric, 0.0);

    // One failed request among 20 is above the 1% tail: P99 of miss rates becomes ~1.
    let mut with_failure = smooth.clone();
    with_failure.push(request(99, 0, &[], FinishReason::Error));
    assert!(!deadline.evaluate(&with_failure, &slo).passed);

    let tbt_ttft = CapacitySlo::etalon_tbt_ttft(&slo);
    let v = tbt_ttft.evaluate(&smooth, &slo);
    assert!(v.passed, "{v:?}");
    assert_eq!(v.checks[0].population, metrum_metrics::Population::Tokens);
    assert_eq!(v.checks[1].population, metrum_metrics::Population::Requests);
    let stalled: Vec<_> = (0..20)
        .map(|i| request(i, 100, &[20, 20, 200, 20], FinishReason::Stop))
        .collect();
    assert!(!tbt_ttft.evaluate(&stalled, &slo).passed);
    assert!(
        CapacitySlo::etalon_ttft_tpot()
            .evaluate(&smooth, &slo)
            .passed
    );
    assert!(CapacitySlo::sarathi().evaluate(&smooth, &slo).passed);
    assert!(!deadline.evaluate(&[], &slo).passed);
}
