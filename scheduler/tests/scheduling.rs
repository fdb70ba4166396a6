//! Batch formation, stop conditions, events and admission, driven by the fake executor.

mod common;

use common::*;
use metrum_core::{EngineEvent, EventKind, FinishReason, Nanos, RequestId, SamplingParams};
use metrum_scheduler::{
    AdmissionError, ChunkKind, NewRequest, Scheduler, SchedulerConfig, UpdateError,
};

#[test]
fn chunked_prefill_splits_at_the_budget_and_samples_only_at_the_end() {
    let mut d = Driver::new(config());
    d.s.add_request(request(0, 70, 3)).unwrap();
    let expected = [(0, 32, false, 8), (32, 32, false, 16), (64, 6, true, 18)];
    for (start, len, samples, blocks) in expected {
        let (out, res) = d.step();
        let s = &out.scheduled[0];
        assert_eq!(
            (s.start_position, s.num_tokens(), s.samples),
            (start, len, samples)
        );
        assert_eq!(s.kind, ChunkKind::Prefill);
        assert_eq!(s.block_table.len(), blocks);
        assert_eq!(s.token_ids, prompt(0, 70)[start..start + len]);
        assert_eq!(res.appended.len(), usize::from(samples));
    }
    // Decodes feed the last sampled token at the next position; the table grows per block.
    let (out, _) = d.step();
    let s = &out.scheduled[0];
    assert_eq!(
        (s.kind, s.start_position, s.token_ids.clone()),
        (ChunkKind::Decode, 70, vec![SAMPLED])
    );
    assert_eq!(s.block_table.len(), 18);
    let (_, res) = d.step();
    assert_eq!(res.finished[0].reason, FinishReason::Length);
    assert_eq!(res.finished[0].stats.num_output_tokens, 3);
    assert_scheduler_empty(&d.s);
}

#[test]
fn a_prefill_chunk_takes_only_the_budget_left_after_decodes() {
    let mut d = Driver::new(config());
    d.s.add_request(request(0, 4, 10)).unwrap();
    d.step(); // request 0 is now decoding
    d.s.add_request(request(1, 70, 2)).unwrap();
    for expected_chunk in [31, 31, 8] {
        let (out, _) = d.step();
        assert_eq!(out.scheduled[0].id, RequestId(0), "decode goes first");
        assert_eq!(out.scheduled[0].kind, ChunkKind::Decode);
        assert_eq!(out.scheduled[1].num_tokens(), expected_chunk);
        assert_eq!(out.num_batched_tokens(), 1 + expected_chunk);
    }
    d.run_until_done(50);
    assert_scheduler_empty(&d.s);
}

#[test]
fn the_token_budget_holds_every_step_under_a_mixed_load() {
    let mut d = Driver::new(config());
    for i in 0..24u64 {
        let len = (7 * i as usize % 50) + 1;
        d.s.add_request(request(i, len, (i as usize % 5) + 1))
            .unwrap();
    }
    let mut steps = 0;
    while d.s.has_unfinished() {
        let (out, _) = d.step(); // Driver asserts the budget
        assert!(d.s.num_running() <= 8);
        assert!(!out.is_empty());
        steps += 1;
        assert!(steps < 500);
    }
    assert_scheduler_empty(&d.s);
}

#[test]
fn decodes_are_never_skipped_while_a_long_prefill_runs() {
    let mut d = Driver::new(config());
    d.s.add_request(request(0, 4, 20)).unwrap();
    d.s.add_request(request(1, 4, 20)).unwrap();
    d.step();
    d.s.add_request(request(2, 100, 5)).unwrap();
    let mut prefill_steps = 0;
    loop {
        let (out, _) = d.step();
        let Some(c) = out.get(RequestId(2)) else {
            break;
        };
        if c.kind != ChunkKind::Prefill {
            break;
        }
        prefill_steps += 1;
        for id in [0, 1] {
            assert_eq!(
                out.get(RequestId(id)).map(|s| s.kind),
                Some(ChunkKind::Decode)
            );
        }
        assert_eq!(
            out.scheduled[..2]
                .iter()
                .map(|s| s.id.0)
                .collect::<Vec<_>>(),
            [0, 1]
        );
    }
    assert_eq!(prefill_steps, 4, "100 prompt tokens in chunks of 30");
    d.run_until_done(100);
    assert_scheduler_empty(&d.s);
}

#[test]
fn max_num_seqs_caps_the_running_set() {
    let mut d = Driver::new(SchedulerConfig {
        max_num_seqs: 2,
        ..config()
    });
    add_requests(&mut d.s, 5, 4, 3);
    let (out, _) = d.step();
    assert_eq!(out.scheduled.len(), 2);
    assert_eq!(d.s.num_waiting(), 3);
    while d.s.has_unfinished() {
        d.step();
        assert!(d.s.num_running() <= 2);
    }
    assert_scheduler_empty(&d.s);
}

/// Schedules one step and answers every sampling request with `token`.
fn step_with(s: &mut Scheduler, now: Nanos, token: u32) -> metrum_scheduler::StepResult {
    let out = s.schedule(now);
    let sampled: Vec<(RequestId, u32)> = out
        .scheduled
        .iter()
        .filter(|x| x.samples)
        .map(|x| (x.id, token))
        .collect();
    let r = s.update(&out, &sampled, now).unwrap();
    s.check_invariants().unwrap();
    r
}

#[test]
fn eos_stops_unless_ignored_and_stop_ids_always_stop() {
    let mut s = scheduler(config());
    let mut eos = request(0, 4, 10);
    eos.eos_token_ids = vec![2];
    s.add_request(eos).unwrap();
    let r = step_with(&mut s, ms(1), 2);
    assert_eq!(r.finished[0].reason, FinishReason::Stop);
    assert_eq!(r.appended, vec![(RequestId(0), 2)]);

    let mut ignoring = request(1, 4, 10);
    ignoring.eos_token_ids = vec![2];
    ignoring.stop_token_ids = vec![7];
    ignoring.ignore_eos = true;
    s.add_request(ignoring).unwrap();
    assert!(step_with(&mut s, ms(2), 2).finished.is_empty());
    let r = step_with(&mut s, ms(3), 7);
    assert_eq!(r.finished[0].reason, FinishReason::Stop);
    assert_eq!(r.finished[0].stats.num_output_tokens, 2);
    assert_scheduler_empty(&s);
}

#[test]
fn min_tokens_defers_stop_tokens_and_max_tokens_ends_with_length() {
    let mut s = scheduler(config());
    let mut r = request(0, 4, 5);
    r.eos_token_ids = vec![2];
    r.min_tokens = 3;
    s.add_request(r).unwrap();
    assert!(step_with(&mut s, ms(1), 2).finished.is_empty());
    assert!(step_with(&mut s, ms(2), 2).finished.is_empty());
    let done = step_with(&mut s, ms(3), 2).finished;
    assert_eq!(
        (done[0].reason, done[0].stats.num_output_tokens),
        (FinishReason::Stop, 3)
    );

    s.add_request(request(1, 4, 2)).unwrap();
    step_with(&mut s, ms(4), 5);
    assert_eq!(
        step_with(&mut s, ms(5), 5).finished[0].reason,
        FinishReason::Length
    );
    assert_scheduler_empty(&s);
}

#[test]
fn context_length_ends_a_request_with_length() {
    let mut d = Driver::new(SchedulerConfig {
        max_model_len: 16,
        ..config()
    });
    d.s.add_request(request(0, 12, 4)).unwrap();
    let done = d.run_until_done(10);
    assert_eq!(
        (done[0].reason, done[0].stats.num_output_tokens),
        (FinishReason::Length, 4)
    );
    assert_scheduler_empty(&d.s);
}

#[test]
fn events_carry_the_times_the_scheduler_was_given() {
    let mut s = scheduler(config());
    s.add_request(NewRequest::new(RequestId(9), prompt(9, 4), 2, Nanos(5)))
        .unwrap();
    step_with(&mut s, ms(10), 4);
    step_with(&mut s, ms(20), 4);
    let ev = |at: Nanos, kind| EngineEvent {
        request: RequestId(9),
        at,
        kind,
    };
    assert_eq!(
        s.drain_events(),
        vec![
            ev(Nanos(5), EventKind::Queued),
            ev(ms(10), EventKind::Scheduled),
            ev(ms(10), EventKind::Tokens { count: 1 }),
            ev(ms(20), EventKind::Tokens { count: 1 }),
            ev(ms(20), EventKind::Finished(FinishReason::Length)),
        ]
    );
    assert!(s.drain_events().is_empty());
    assert_scheduler_empty(&s);
}

#[test]
fn update_refuses_stale_or_repeated_outputs() {
    let mut s = scheduler(config());
    add_requests(&mut s, 2, 4, 3);
    let first = s.schedule(ms(1));
    // Misuse: scheduling again before applying `first`. Its requests await their tokens, so
    // nothing is runnable, and `first` can no longer be applied.
    let second = s.schedule(ms(2));
    assert!(second.is_empty());
    assert_eq!(
        s.update(&first, &[], ms(3)),
        Err(UpdateError::StaleOutput {
            expected: second.step,
            got: first.step
        })
    );
    assert_eq!(s.update(&second, &[], ms(3)).unwrap(), Default::default());
    assert_eq!(
        s.update(&second, &[], ms(3)),
        Err(UpdateError::AlreadyApplied { step: second.step })
    );
    for id in [0, 1] {
        assert!(s.abort(RequestId(id), ms(4)).is_some());
    }
    assert_scheduler_empty(&s);
}

#[test]
fn a_request_due_a_token_that_gets_none_ends_with_an_error() {
    let mut s = scheduler(config());
    add_requests(&mut s, 2, 4, 3);
    let out = s.schedule(ms(1));
    // Extra tokens (unknown ids, duplicates) are ignored; the first token per id counts.
    let sampled = [(RequestId(0), 5), (RequestId(0), 6), (RequestId(77), 1)];
    let r = s.update(&out, &sampled, ms(2)).unwrap();
    assert_eq!(r.appended, vec![(RequestId(0), 5)]);
    assert_eq!(
        (r.finished[0].id, r.finished[0].reason),
        (RequestId(1), FinishReason::Error)
    );
    assert_eq!(s.output_tokens(RequestId(0)), Some(&[5][..]));
    s.abort(RequestId(0), ms(3));
    assert_scheduler_empty(&s);
}

#[test]
fn finished_requests_are_announced_in_the_next_output() {
    let mut s = scheduler(config());
    s.add_request(request(0, 4, 1)).unwrap();
    s.add_request(request(1, 4, 3)).unwrap();
    let done = step_with(&mut s, ms(1), 9).finished;
    assert_eq!(done.len(), 1);
    let out = s.schedule(ms(2));
    assert_eq!(out.finished, vec![RequestId(0)]);
    s.abort(RequestId(1), ms(3));
    assert_eq!(s.schedule(ms(4)).finished, vec![RequestId(1)]);
    assert_scheduler_empty(&s);
}

#[test]
fn admission_rejects_requests_that_can_never_run_with_a_reason() {
    let mut s = scheduler(SchedulerConfig {
        num_blocks: 8, // 32 tokens of KV
        ..config()
    });
    let cases = [
        (
            NewRequest::new(RequestId(1), vec![], 4, Nanos(0)),
            AdmissionError::EmptyPrompt,
        ),
        (request(2, 4, 0), AdmissionError::ZeroMaxTokens),
        (
            NewRequest {
                min_tokens: 5,
                ..request(3, 4, 4)
            },
            AdmissionError::MinTokensAboveMax {
                min_tokens: 5,
                max_tokens: 4,
            },
        ),
        (
            request(4, 250, 10),
            AdmissionError::ExceedsContext {
                prompt_tokens: 250,
                max_tokens: 10,
                max_model_len: 256,
            },
        ),
        (
            request(5, 30, 4),
            AdmissionError::ExceedsKvCapacity {
                needed_tokens: 33,
                capacity_tokens: 32,
            },
        ),
    ];
    for (req, err) in cases {
        assert_eq!(s.add_request(req), Err(err));
    }
    assert_eq!(
        AdmissionError::ExceedsContext {
            prompt_tokens: 250,
            max_tokens: 10,
            max_model_len: 256
        }
        .to_string(),
        "prompt tokens (250) + max_tokens (10) = 260 exceeds the context length (256)"
    );
    // Exactly at capacity is fine (the last token's KV is never written), and a refused
    // request never blocks the ones behind it.
    s.add_request(request(6, 29, 4)).unwrap();
    assert_eq!(
        s.add_request(request(6, 4, 1)),
        Err(AdmissionError::DuplicateId(RequestId(6)))
    );
    assert_eq!(s.num_unfinished(), 1);
    let mut d = Driver {
        s,
        ..Driver::new(config())
    };
    let done = d.run_until_done(20);
    assert_eq!(
        (done[0].id, done[0].stats.num_output_tokens),
        (RequestId(6), 4)
    );
    assert_scheduler_empty(&d.s);
}

#[test]
fn requests_built_from_sampling_params_keep_their_stop_conditions() {
    let params = SamplingParams {
        max_tokens: 7,
        min_tokens: 2,
        stop_token_ids: vec![11],
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let r = NewRequest::from_sampling(RequestId(1), vec![4, 5], &params, vec![2], ms(3))
        .with_priority(-1);
    assert_eq!((r.max_tokens, r.min_tokens, r.priority), (7, 2, -1));
    assert_eq!(
        (r.stop_token_ids, r.eos_token_ids, r.ignore_eos),
        (vec![11], vec![2], true)
    );
}

#[test]
fn the_leak_check_fails_while_anything_is_held_and_passes_once_drained() {
    let mut d = Driver::new(config());
    add_requests(&mut d.s, 2, 8, 3);
    assert!(d.s.check_drained().unwrap_err().contains("requests left"));
    d.step();
    assert!(d.s.check_drained().is_err(), "running requests hold blocks");
    d.run_until_done(50);
    assert_eq!(d.s.check_drained(), Ok(()));
}
