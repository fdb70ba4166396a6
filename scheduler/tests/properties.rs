//! Property tests over random arrivals, lengths, aborts, stop tokens and configurations: the
//! invariants hold after every step, no decode is skipped, the budget holds, every admitted
//! request finishes exactly once, and nothing leaks.

mod common;

use common::*;
use metrum_core::{EventKind, FinishReason, Nanos, RequestId};
use metrum_scheduler::admission::FORECAST_MARGIN;
use metrum_scheduler::policy::srpt_waiting_bound;
use metrum_scheduler::{
    Admission, AdmissionError, DeadlineSlo, NewRequest, Policy, PrefillModel, Scheduler,
    SchedulerConfig,
};
use metrum_sim::{Aborts, FakeExecutor, Lengths, PoissonWorkload, Simulation, StepCostModel};
use proptest::prelude::*;
use std::collections::HashMap;

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
            Lengths::Uniform { prompt: (1, 40), output: (1, 20) },
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
            Lengths::Uniform { prompt: (1, 40), output: (1, 12) },
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

/// One random action against a scheduler.
#[derive(Clone, Debug)]
enum Op {
    Add {
        prompt_len: usize,
        max_tokens: usize,
        min_tokens: usize,
        priority: i32,
    },
    /// One step; each sampled token is EOS (2) with the given chance in percent.
    Step {
        eos_percent: u8,
    },
    Abort(usize),
    /// The engine saw a stop string.
    StopString(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..30, 1usize..12, 0usize..4, -1i32..2).prop_map(
            |(prompt_len, max_tokens, min_tokens, priority)| Op::Add {
                prompt_len,
                max_tokens,
                min_tokens: min_tokens.min(max_tokens),
                priority,
            }
        ),
        6 => (0u8..30).prop_map(|eos_percent| Op::Step { eos_percent }),
        1 => (0usize..64).prop_map(Op::Abort),
        1 => (0usize..64).prop_map(Op::StopString),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_finish_each_request_exactly_once(
        ops in proptest::collection::vec(op(), 1..120),
        seed in any::<u64>(),
        policy in policy(),
        num_blocks in 4usize..32,
        enable_prefix_caching in any::<bool>(),
    ) {
        let mut s = Scheduler::new(SchedulerConfig {
            num_blocks,
            policy,
            enable_prefix_caching,
            slo: slo(),
            ..config()
        })
        .unwrap();
        let mut now = Nanos::ZERO;
        let mut added: Vec<RequestId> = Vec::new();
        let mut finished: HashMap<RequestId, u32> = HashMap::new();
        let mut rng = metrum_sim::SplitMix64::new(seed);
        let record = |s: &mut Scheduler, finished: &mut HashMap<RequestId, u32>| {
            for e in s.drain_events() {
                if let EventKind::Finished(_) = e.kind {
                    *finished.entry(e.request).or_default() += 1;
                }
            }
        };
        for op in ops {
            now = now + ms(1);
            match op {
                Op::Add { prompt_len, max_tokens, min_tokens, priority } => {
                    let id = RequestId(added.len() as u64);
                    // A small shared vocabulary so prefixes often coincide.
                    let prompt = (0..prompt_len).map(|i| 3 + (i as u32 % 5)).collect();
                    let mut req = NewRequest::new(id, prompt, max_tokens, now).with_priority(priority);
                    req.min_tokens = min_tokens;
                    req.eos_token_ids = vec![2];
                    if s.add_request(req).is_ok() {
                        added.push(id);
                    }
                }
                Op::Step { eos_percent } => {
                    let out = s.schedule(now);
                    prop_assert!(out.num_batched_tokens() <= s.config().max_num_batched_tokens);
                    for x in &out.scheduled {
                        prop_assert!(!x.token_ids.is_empty());
                        prop_assert!(x.block_table.len() * 4 >= x.context_len());
                    }
                    let sampled: Vec<(RequestId, u32)> = out
                        .scheduled
                        .iter()
                        .filter(|x| x.samples)
                        .map(|x| {
                            let eos = rng.below(100) < u64::from(eos_percent);
                            (x.id, if eos { 2 } else { SAMPLED })
                        })
                        .collect();
                    now = now + ms(1);
                    let result = s.update(&out, &sampled, now).unwrap();
                    for f in &result.finished {
                        prop_assert!(f.reason != FinishReason::Error);
                    }
                }
                Op::Abort(i) => {
                    if let Some(&id) = added.get(i) {
                        s.abort(id, now);
                    }
                }
                Op::StopString(i) => {
                    if let Some(&id) = added.get(i) {
                        s.finish(id, FinishReason::Stop, now);
                    }
                }
            }
            record(&mut s, &mut finished);
            s.check_invariants().map_err(TestCaseError::fail)?;
        }
        // Drain: run everything left to completion.
        for _ in 0..2000 {
            if !s.has_unfinished() {
                break;
            }
            let out = s.schedule(now);
            let sampled: Vec<(RequestId, u32)> =
                out.scheduled.iter().filter(|x| x.samples).map(|x| (x.id, SAMPLED)).collect();
            now = now + ms(1);
            s.update(&out, &sampled, now).unwrap();
            s.check_invariants().map_err(TestCaseError::fail)?;
        }
        record(&mut s, &mut finished);
        for id in &added {
            prop_assert_eq!(finished.get(id).copied(), Some(1), "{} finish count", id);
        }
        prop_assert_eq!(finished.len(), added.len());
        assert_scheduler_empty(&s);
    }
}
