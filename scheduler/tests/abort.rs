//! Abort (and outside finish) from every state, with the leak check after each.

mod common;

use common::*;
use metrum_core::{EventKind, FinishReason, RequestId, RequestStatus};
use metrum_scheduler::SchedulerConfig;

#[test]
fn abort_while_waiting() {
    let mut d = Driver::new(config());
    add_requests(&mut d.s, 1, 8, 4);
    let f = d.s.abort(RequestId(0), ms(3)).unwrap();
    assert_eq!(
        (f.reason, f.stats.first_scheduled),
        (FinishReason::Abort, None)
    );
    let kinds: Vec<EventKind> = d.s.drain_events().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![EventKind::Queued, EventKind::Finished(FinishReason::Abort)]
    );
    assert!(d.s.schedule(ms(4)).is_empty());
    assert_scheduler_empty(&d.s);
}

#[test]
fn abort_in_the_middle_of_a_chunked_prefill() {
    let mut d = Driver::new(config());
    add_requests(&mut d.s, 1, 70, 4);
    d.step();
    assert_eq!(d.s.status(RequestId(0)), Some(RequestStatus::Running));
    assert!(d.s.kv_cache().num_free_blocks() < 64);
    let f = d.s.abort(RequestId(0), d.now).unwrap();
    assert_eq!(f.stats.num_output_tokens, 0);
    assert_scheduler_empty(&d.s);
}

#[test]
fn abort_while_decoding_leaves_the_others_running() {
    let mut d = Driver::new(config());
    add_requests(&mut d.s, 3, 4, 10);
    d.step();
    d.step();
    let f = d.s.abort(RequestId(1), d.now).unwrap();
    assert_eq!(f.stats.num_output_tokens, 2);
    let (out, _) = d.step();
    assert_eq!(out.finished, vec![RequestId(1)]);
    assert!(out.get(RequestId(1)).is_none());
    assert_eq!(out.scheduled.len(), 2);
    d.run_until_done(20);
    assert_scheduler_empty(&d.s);
}

#[test]
fn abort_while_preempted_counts_the_preempted_time() {
    let mut d = Driver::new(SchedulerConfig {
        num_blocks: 3,
        ..config()
    });
    add_requests(&mut d.s, 2, 4, 8);
    d.step();
    let (out, _) = d.step();
    assert_eq!(out.preempted, vec![RequestId(1)]);
    let preempted_at = out.scheduled_at;
    assert_eq!(d.s.status(RequestId(1)), Some(RequestStatus::Preempted));
    let f = d.s.abort(RequestId(1), preempted_at + ms(7)).unwrap();
    assert_eq!(f.stats.preempted_time, ms(7));
    assert_eq!((f.stats.num_preemptions, f.stats.num_restarts), (1, 0));
    d.run_until_done(20);
    assert_scheduler_empty(&d.s);
}

#[test]
fn abort_between_schedule_and_update_drops_the_token() {
    let mut d = Driver::new(config());
    add_requests(&mut d.s, 2, 4, 5);
    let out = d.s.schedule(ms(1));
    let sampled = sample_all(&out);
    assert_eq!(sampled.len(), 2);
    d.s.abort(RequestId(0), ms(1));
    let r = d.s.update(&out, &sampled, ms(2)).unwrap();
    assert_eq!(r.appended, vec![(RequestId(1), SAMPLED)]);
    assert!(r.finished.is_empty());
    d.s.check_invariants().unwrap();
    d.run_until_done(20);
    assert_scheduler_empty(&d.s);
}

#[test]
fn ending_a_request_twice_or_an_unknown_one_is_a_no_op() {
    let mut d = Driver::new(config());
    add_requests(&mut d.s, 1, 4, 5);
    d.step();
    // A stop string found by the engine ends a running request with `stop`.
    let f = d.s.finish(RequestId(0), FinishReason::Stop, d.now).unwrap();
    assert_eq!(
        (f.reason, f.stats.num_output_tokens),
        (FinishReason::Stop, 1)
    );
    assert_eq!(d.s.abort(RequestId(0), d.now), None);
    assert_eq!(d.s.abort(RequestId(42), d.now), None);
    let finished =
        d.s.drain_events()
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Finished(_)))
            .count();
    assert_eq!(finished, 1);
    assert_scheduler_empty(&d.s);
}
