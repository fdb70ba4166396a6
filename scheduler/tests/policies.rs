//! Admission order under each policy, and the deadline policy's prefill-chunk cap.

mod common;

use common::*;
use metrum_core::{Nanos, RequestId};
use metrum_scheduler::{DeadlineSlo, NewRequest, Policy, PrefillModel, Scheduler, SchedulerConfig};

/// One request runs at a time and each takes one step, so the order of first schedules is the
/// queue order.
fn admission_order(policy: Policy, requests: &[(u64, i32)]) -> Vec<u64> {
    let mut d = Driver::new(SchedulerConfig {
        max_num_seqs: 1,
        policy,
        ..config()
    });
    for &(id, priority) in requests {
        d.s.add_request(request(id, 4, 1).with_priority(priority))
            .unwrap();
    }
    let mut order = Vec::new();
    while d.s.has_unfinished() {
        let (out, _) = d.step();
        order.extend(out.scheduled.iter().map(|s| s.id.0));
    }
    assert_scheduler_empty(&d.s);
    order
}

#[test]
fn fcfs_serves_by_arrival_and_priority_by_priority_then_arrival() {
    let reqs = [(0, 2), (1, 0), (2, 0), (3, 1), (4, -1)];
    assert_eq!(admission_order(Policy::Fcfs, &reqs), vec![0, 1, 2, 3, 4]);
    assert_eq!(
        admission_order(Policy::Priority, &reqs),
        vec![4, 1, 2, 3, 0]
    );
}

/// D_p(P) = 1 ms·P + 300 ms, D_d = 30 ms.
fn linear_slo() -> DeadlineSlo {
    DeadlineSlo {
        tbt_slo: ms(30),
        ttft_slack: ms(300),
        prefill: PrefillModel {
            a_s: 0.0,
            b_s_per_token: 1e-3,
            c_s_per_token2: 0.0,
        },
    }
}

#[test]
fn fresh_requests_all_have_the_same_slack_so_deadline_order_is_arrival_order() {
    // D_p(P) grants the predicted prefill time, so least-slack = arrival + S for every new
    // request: a short prompt does not jump a long one that came first.
    let mut s = Scheduler::new(SchedulerConfig {
        max_num_seqs: 1,
        policy: Policy::Deadline,
        slo: linear_slo(),
        ..config()
    })
    .unwrap();
    s.add_request(NewRequest::new(RequestId(0), prompt(0, 30), 1, ms(0)))
        .unwrap();
    s.add_request(NewRequest::new(RequestId(1), prompt(1, 2), 1, ms(1)))
        .unwrap();
    let out = s.schedule(ms(2));
    assert_eq!(out.scheduled[0].id, RequestId(0));
    finish_run(s, Some(&out), ms(3));
}

/// A request decoding with zero slack: its first token arrives exactly at `D_p`, so its next
/// deadline is that time + 30 ms. A 100-token prompt arrives behind it.
fn decode_at_its_deadline(policy: Policy) -> (Scheduler, Nanos) {
    let mut s = Scheduler::new(SchedulerConfig {
        policy,
        slo: linear_slo(),
        ..config()
    })
    .unwrap();
    s.add_request(NewRequest::new(RequestId(0), prompt(0, 4), 20, Nanos::ZERO))
        .unwrap();
    let out = s.schedule(Nanos::ZERO);
    let first_token_at = ms(304); // D_p(4) = 4 ms + 300 ms
    s.update(&out, &[(RequestId(0), 5)], first_token_at)
        .unwrap();
    s.add_request(NewRequest::new(
        RequestId(1),
        prompt(1, 100),
        4,
        first_token_at,
    ))
    .unwrap();
    (s, first_token_at + ms(30))
}

#[test]
fn deadline_shrinks_the_prefill_chunk_when_a_decode_is_about_to_miss() {
    // (time left before the decode's deadline, prefill chunk): the step must take at most the
    // time left, by the model 1 ms per batched token, one of which is the decode.
    for (time_left, chunk) in [
        (ms(30), 29),
        (ms(10), 9),
        (ms(2), 4),
        (Nanos::ZERO, 4),
        (ms(300), 31),
    ] {
        let (mut s, decode_deadline) = decode_at_its_deadline(Policy::Deadline);
        let out = s.schedule(decode_deadline - time_left);
        assert_eq!(out.scheduled[0].id, RequestId(0), "the decode goes first");
        // Below one block the cap stops shrinking, so prefills still move.
        assert_eq!(
            out.scheduled[1].num_tokens(),
            chunk,
            "time left {time_left:?}"
        );
        finish_run(s, Some(&out), decode_deadline);
    }
    let (mut s, decode_deadline) = decode_at_its_deadline(Policy::Fcfs);
    let out = s.schedule(decode_deadline - ms(10));
    assert_eq!(out.scheduled[1].num_tokens(), 31);
    finish_run(s, Some(&out), decode_deadline);
}

/// Requests 2 and 1 start together; request 0 arrives 1 ms later and waits for a seat. In
/// step 2 one of the two runners must give up its memory; in step 3 a seat is free.
/// Returns (preempted in step 2, admitted in step 3).
fn contend(policy: Policy) -> (Vec<RequestId>, Vec<RequestId>) {
    let mut s = Scheduler::new(SchedulerConfig {
        max_num_seqs: 2,
        num_blocks: 4,
        policy,
        slo: linear_slo(),
        ..config()
    })
    .unwrap();
    s.add_request(NewRequest::new(RequestId(2), prompt(2, 8), 8, Nanos::ZERO))
        .unwrap();
    s.add_request(NewRequest::new(RequestId(1), prompt(1, 4), 8, Nanos::ZERO))
        .unwrap();
    let sample = |out: &metrum_scheduler::SchedulerOutput| -> Vec<(RequestId, u32)> {
        out.scheduled
            .iter()
            .filter(|x| x.samples)
            .map(|x| (x.id, 5))
            .collect()
    };
    let out = s.schedule(Nanos::ZERO);
    s.update(&out, &sample(&out), ms(1)).unwrap();
    s.add_request(NewRequest::new(RequestId(0), prompt(0, 4), 1, ms(1)))
        .unwrap();
    let out = s.schedule(ms(1));
    let preempted = out.preempted.clone();
    s.update(&out, &sample(&out), ms(2)).unwrap();
    let out = s.schedule(ms(2));
    let admitted = out
        .scheduled
        .iter()
        .filter(|x| x.kind != metrum_scheduler::ChunkKind::Decode)
        .map(|x| x.id)
        .collect();
    s.check_invariants().unwrap();
    finish_run(s, Some(&out), ms(3));
    (preempted, admitted)
}

#[test]
fn a_request_about_to_miss_outranks_an_earlier_one_with_slack() {
    // FCFS: request 1 (later in the tie) loses its memory and, first in line again, blocks the
    // queue because it needs two blocks and one is free.
    assert_eq!(contend(Policy::Fcfs), (vec![RequestId(1)], vec![]));
    // Deadline: request 2 has the most slack (D_p grows with its longer prompt) and is
    // preempted; waiting, its next token is due at 338 ms, while request 0's first token is
    // due at 305 ms. Request 0 goes first although request 2 arrived earlier.
    assert_eq!(
        contend(Policy::Deadline),
        (vec![RequestId(2)], vec![RequestId(0)])
    );
}
