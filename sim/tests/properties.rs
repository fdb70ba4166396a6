//! Property tests over simulated workloads: random arrivals, lengths, shared prefixes,
//! priorities, aborts and configurations under every policy and admission mode, on the real
//! scheduler with the fake executor. The invariants hold after every step, no decode is
//! skipped, every admitted request finishes exactly once, refusals are justified, deadline-srpt
//! waits at most its bound, and nothing leaks. (Moved from the scheduler crate, which tests
//! itself without the simulator.)

mod common;

use common::*;
use metrum_core::Nanos;
use metrum_scheduler::admission::FORECAST_MARGIN;
use metrum_scheduler::policy::srpt_waiting_bound;
use metrum_scheduler::{
    Admission, AdmissionError, DeadlineSlo, Policy, PrefillModel, SchedulerConfig,
};
use metrum_sim::{FakeExecutor, Simulation, StepCostModel};
use metrum_workload::{Aborts, Lengths, PoissonWorkload};
use proptest::prelude::*;

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::Fcfs),
        Just(Policy::Priority),
        Just(Policy::Deadline),
        Just(Policy::DeadlineSrpt)
    ]
}

fn admission() -> impl Strategy<Value = Admission> {
    prop_oneof![
        Just(Admission::Off),
        Just(Admission::Refuse),
        Just(Admission::BestEffort)
    ]
}

fn cost() -> StepCostModel {
    StepCostModel {
        base: ms(1),
        per_batched_token: Nanos(20_000),
        per_kv_token_read: Nanos(20),
    }
}

fn slo() -> DeadlineSlo {
    DeadlineSlo {
        tbt_slo: ms(5),
        ttft_slack: ms(20),
        prefill: PrefillModel {
            a_s: 1e-3,
            b_s_per_token: 2e-5,
            c_s_per_token2: 0.0,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn simulated_workloads_keep_every_invariant(
        seed in any::<u64>(),
        n in 1usize..40,
        rate in 5.0f64..500.0,
        policy in policy(),
        admission in admission(),
        enable_prefix_caching in any::<bool>(),
        num_blocks in 6usize..48,
        budget in 4usize..48,
        max_num_seqs in 1usize..8,
        abort_fraction in 0.0f64..0.5,
        shared_prefix_len in 0usize..24,
    ) {
        let mut workload = PoissonWorkload::new(
            seed,
            rate,
            n,
            Lengths::uniform((1, 40), (1, 20)),
        );
        workload.shared_prefix_len = shared_prefix_len;
        workload.num_priorities = 3;
        workload.aborts = Some(Aborts { fraction: abort_fraction, within: ms(200) });
        let workload = workload.generate();
        let config = SchedulerConfig {
            max_num_seqs,
            max_num_batched_tokens: budget.max(max_num_seqs),
            block_size: 4,
            num_blocks,
            max_model_len: 56,
            enable_prefix_caching,
            policy,
            slo: slo(),
            admission,
        };
        let mut sim = Simulation::new(&workload, config.clone(), FakeExecutor::new(cost()))
            .unwrap()
            .with_checks();
        let mut steps = 0;
        while sim.step().map_err(|e| TestCaseError::fail(e.to_string()))? {
            steps += 1;
            prop_assert!(steps < 20_000, "no progress");
        }
        let report = sim.report().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(report.num_requests, n);
        for (o, r) in sim.outcomes().iter().zip(&workload.requests) {
            match &o.rejected {
                Some(AdmissionError::ExceedsContext { .. }) => {
                    prop_assert!(r.prompt.len() + r.max_tokens > config.max_model_len)
                }
                Some(AdmissionError::ExceedsKvCapacity { .. }) => {
                    prop_assert!(r.prompt.len() + r.max_tokens - 1 > num_blocks * 4)
                }
                Some(AdmissionError::PredictedMiss { predicted_ttft, ttft_deadline, .. }) => {
                    prop_assert_eq!(admission, Admission::Refuse);
                    prop_assert!(
                        predicted_ttft.as_secs_f64() * FORECAST_MARGIN
                            > ttft_deadline.as_secs_f64()
                    );
                    prop_assert!(o.first_scheduled.is_none() && o.token_times.is_empty());
                }
                Some(other) => prop_assert!(false, "unexpected rejection {other}"),
                None => {
                    prop_assert_eq!(o.times_finished, 1);
                    if o.is_completed() {
                        prop_assert_eq!(o.token_times.len(), r.max_tokens);
                        prop_assert!(o.token_times.windows(2).all(|w| w[0] < w[1]));
                        prop_assert!(o.first_scheduled.is_some_and(|s| s >= r.arrival));
                    }
                }
            }
        }
        let refused = sim
            .outcomes()
            .iter()
            .filter(|o| matches!(o.rejected, Some(AdmissionError::PredictedMiss { .. })))
            .count() as u64;
        let stats = sim.scheduler().stats();
        prop_assert_eq!(stats.num_refused_predicted_miss, refused);
        if admission != Admission::BestEffort {
            prop_assert_eq!(stats.num_best_effort, 0);
        }
        assert_scheduler_empty(sim.scheduler());
    }

    /// deadline-srpt never lets a fresh request that arrived more than the waiting bound after
    /// another be admitted before it (bounded waiting: no starvation).
    #[test]
    fn deadline_srpt_waits_at_most_its_bound(
        seed in any::<u64>(),
        n in 2usize..60,
        rate in 20.0f64..2000.0,
        num_blocks in 12usize..48,
    ) {
        let workload = PoissonWorkload::new(
            seed,
            rate,
            n,
            Lengths::uniform((1, 40), (1, 12)),
        )
        .generate();
        let config = SchedulerConfig {
            max_num_seqs: 4,
            max_num_batched_tokens: 16,
            block_size: 4,
            num_blocks,
            max_model_len: 56,
            policy: Policy::DeadlineSrpt,
            slo: slo(),
            ..SchedulerConfig::default()
        };
        let slo = config.slo;
        let mut sim = Simulation::new(&workload, config, FakeExecutor::new(cost()))
            .unwrap()
            .with_checks();
        while sim.step().map_err(|e| TestCaseError::fail(e.to_string()))? {}
        let started: Vec<(Nanos, usize, Nanos)> = sim
            .outcomes()
            .iter()
            .filter_map(|o| Some((o.arrival, o.num_prompt_tokens, o.first_scheduled?)))
            .collect();
        for &(arrival, prompt, first) in &started {
            let bound = srpt_waiting_bound(&slo, prompt, slo.prefill_deadline(prompt));
            for &(other_arrival, _, other_first) in &started {
                if other_arrival > arrival + bound {
                    prop_assert!(
                        other_first >= first,
                        "a request arriving {:?} after another was admitted first",
                        other_arrival.saturating_sub(arrival)
                    );
                }
            }
        }
        assert_scheduler_empty(sim.scheduler());
    }
}
