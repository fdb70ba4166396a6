//! Property tests over random operations: adds, steps with random EOS, aborts and stop
//! strings under every policy; the invariants hold after every step, the budget holds, every
//! admitted request finishes exactly once, and nothing leaks. The properties over simulated
//! workloads (arrivals, lengths, aborts, admission) are in `sim/tests/properties.rs`.

mod common;

use common::*;
use metrum_core::{EventKind, FinishReason, Nanos, RequestId};
use metrum_scheduler::{DeadlineSlo, NewRequest, Policy, PrefillModel, Scheduler, SchedulerConfig};
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng};
use std::collections::HashMap;

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::Fcfs),
        Just(Policy::Priority),
        Just(Policy::Deadline),
        Just(Policy::DeadlineSrpt)
    ]
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
        let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed.to_le_bytes().repeat(4));
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
                            let eos = rng.next_u64() % 100 < u64::from(eos_percent);
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
