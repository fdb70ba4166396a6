//! Recompute preemption when KV memory runs out: victim order, what a preempted request keeps,
//! and how it comes back.

mod common;

use common::*;
use metrum_core::{EventKind, FinishReason, Nanos, RequestId, RequestStatus};
use metrum_scheduler::{ChunkKind, NewRequest, Policy, SchedulerConfig};

/// 6 blocks of 4 tokens: three requests of 4 + 8 tokens fit one at a time, not together.
fn tight(policy: Policy) -> SchedulerConfig {
    SchedulerConfig {
        num_blocks: 6,
        policy,
        ..config()
    }
}

/// Steps until some request is preempted; returns the ids preempted in that step.
fn step_until_preemption(d: &mut Driver) -> Vec<RequestId> {
    for _ in 0..50 {
        let (out, _) = d.step();
        if !out.preempted.is_empty() {
            return out.preempted;
        }
    }
    panic!("no preemption");
}

#[test]
fn fcfs_preempts_the_latest_arrival_and_it_keeps_its_history() {
    let mut d = Driver::new(tight(Policy::Fcfs));
    add_requests(&mut d.s, 3, 4, 8);
    assert_eq!(step_until_preemption(&mut d), vec![RequestId(2)]);
    let preempted_at = d.now - d.step_time;
    assert_eq!(d.s.status(RequestId(2)), Some(RequestStatus::Preempted));
    let outputs_before = d.s.output_tokens(RequestId(2)).unwrap().to_vec();
    assert_eq!(outputs_before.len(), 5);
    let events = d.s.drain_events();
    assert!(events.iter().any(|e| e.request == RequestId(2)
        && e.kind == EventKind::Preempted
        && e.at == preempted_at));

    // It recomputes prompt + outputs in one chunk when memory frees up, then decodes on.
    let mut recompute = None;
    let mut finished = Vec::new();
    while d.s.has_unfinished() {
        let (out, res) = d.step();
        if let Some(s) = out
            .get(RequestId(2))
            .filter(|s| s.kind == ChunkKind::Recompute)
        {
            recompute.get_or_insert(s.clone());
        }
        finished.extend(res.finished);
    }
    let r = recompute.expect("request 2 recomputed");
    let mut expected = prompt(2, 4);
    expected.extend(&outputs_before);
    assert_eq!(
        (r.start_position, r.token_ids.clone(), r.samples),
        (0, expected, true)
    );

    let c = finished.iter().find(|f| f.id == RequestId(2)).unwrap();
    assert_eq!(c.reason, FinishReason::Length);
    assert_eq!(c.stats.num_output_tokens, 8);
    // Scheduling delay is not reset: the first-schedule time is still the first step's.
    assert_eq!(c.stats.first_scheduled, Some(Nanos::ZERO));
    assert_eq!((c.stats.num_preemptions, c.stats.num_restarts), (1, 1));
    assert!(c.stats.preempted_time >= ms(1));
    assert_eq!(d.s.stats().num_preemptions, 1);
    assert_scheduler_empty(&d.s);
}

#[test]
fn priority_preempts_the_lowest_priority_even_if_it_came_first() {
    let mut d = Driver::new(tight(Policy::Priority));
    d.s.add_request(request(0, 4, 8).with_priority(5)).unwrap();
    d.s.add_request(request(1, 4, 8)).unwrap();
    d.s.add_request(request(2, 4, 8)).unwrap();
    assert_eq!(step_until_preemption(&mut d), vec![RequestId(0)]);
    d.run_until_done(100);
    assert_scheduler_empty(&d.s);
}

#[test]
fn deadline_preempts_the_request_with_the_most_slack() {
    // Request 0 runs alone for three steps and banks slack (each 1 ms token beats D_d = 30 ms);
    // 1 and 2 arrive later with less. FCFS would preempt 2; deadline preempts 0 (itself, as
    // it is then the lowest-ranked running request).
    for (policy, victim) in [(Policy::Fcfs, 2), (Policy::Deadline, 0)] {
        let mut d = Driver::new(tight(policy));
        d.s.add_request(request(0, 4, 8)).unwrap();
        for _ in 0..3 {
            d.step();
        }
        for id in [1, 2] {
            d.s.add_request(NewRequest::new(RequestId(id), prompt(id, 4), 8, d.now))
                .unwrap();
        }
        assert_eq!(
            step_until_preemption(&mut d),
            vec![RequestId(victim)],
            "{policy}"
        );
        d.run_until_done(100);
        assert_scheduler_empty(&d.s);
    }
}

#[test]
fn a_decode_with_no_lower_victim_preempts_itself_and_nothing_new_is_admitted() {
    let mut d = Driver::new(SchedulerConfig {
        num_blocks: 3,
        ..config()
    });
    add_requests(&mut d.s, 2, 4, 8);
    d.step(); // both prefilled: 1 block each
    d.s.add_request(request(3, 4, 1)).unwrap();
    let (out, _) = d.step();
    // Request 0 takes the last free block; request 1 has nobody below it and goes itself.
    assert_eq!(out.preempted, vec![RequestId(1)]);
    assert_eq!(
        out.scheduled.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![RequestId(0)]
    );
    assert!(
        out.get(RequestId(3)).is_none(),
        "no admission in a step that preempted"
    );
    let done = d.run_until_done(100);
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|f| f.reason == FinishReason::Length));
    assert_scheduler_empty(&d.s);
}

#[test]
fn a_preempted_request_reuses_its_own_cached_blocks_when_they_survive() {
    // 10 blocks; request 0 grows to 4 and request 1 to 7. At step 10 request 1 needs its 7th
    // block, finds none and preempts itself with 24 computed tokens: 6 full cached blocks that
    // nobody evicts before request 0 finishes.
    let mut d = Driver::new(SchedulerConfig {
        num_blocks: 10,
        ..config()
    });
    d.s.add_request(request(0, 4, 12)).unwrap();
    d.s.add_request(request(1, 16, 10)).unwrap();
    assert_eq!(step_until_preemption(&mut d), vec![RequestId(1)]);
    let mut resumed = None;
    while d.s.has_unfinished() {
        let (out, _) = d.step();
        if let Some(s) = out
            .get(RequestId(1))
            .filter(|s| s.kind == ChunkKind::Recompute)
        {
            resumed.get_or_insert((s.start_position, s.num_cached_tokens));
        }
    }
    assert_eq!(resumed, Some((24, 24)), "only the last token is recomputed");
    assert_scheduler_empty(&d.s);
}
