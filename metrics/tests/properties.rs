//! Property tests: live tracking equals the offline calculation, and the fluidity-index
//! behaves as spec (b) says on random timelines.

mod common;

use common::{parse_exposition, scalar};
use metrum_core::{EngineEvent, EventKind, FinishReason, Nanos, RequestId};
use metrum_metrics::{
    DeadlineParams, DeadlineTally, DeadlineTracker, FirstToken, LiveTracker, LiveUpdate,
    MetricsRegistry, PrefillModel, RequestShape, RequestTimeline, SloConfig, TimelineBuilder,
    TokenVerdict, service_miss_rate,
};
use proptest::prelude::*;

const MS: u64 = 1_000_000;

/// Gaps in ns: arbitrary, or exact multiples of 10 ms so deadline boundaries get hit.
fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        3 => 0..250 * MS,
        3 => (0..30u64).prop_map(|k| k * 10 * MS),
    ]
}

#[derive(Clone, Debug)]
enum Step {
    Tokens { gap: u64, count: u32 },
    Preempt { after: u64, pause: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (gap(), 1..5u32).prop_map(|(gap, count)| Step::Tokens { gap, count }),
        1 => (gap(), gap()).prop_map(|(after, pause)| Step::Preempt { after, pause }),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    shape: RequestShape,
    arrival: u64,
    schedule_after: u64,
    steps: Vec<Step>,
    finish_after: u64,
    reason: FinishReason,
}

fn case() -> impl Strategy<Value = Case> {
    let reason = prop_oneof![
        Just(FinishReason::Stop),
        Just(FinishReason::Length),
        Just(FinishReason::Abort),
        Just(FinishReason::Error),
    ];
    (
        (0..20_000u32, proptest::option::of(0..40u32)),
        0..1_000 * MS,
        gap(),
        proptest::collection::vec(step(), 0..25),
        gap(),
        reason,
    )
        .prop_map(
            |(
                (prompt_tokens, max_tokens),
                arrival,
                schedule_after,
                steps,
                finish_after,
                reason,
            )| Case {
                shape: RequestShape {
                    prompt_tokens,
                    max_tokens,
                    slo: metrum_core::RequestSlo::SERVER,
                },
                arrival,
                schedule_after,
                steps,
                finish_after,
                reason,
            },
        )
}

fn slo() -> impl Strategy<Value = SloConfig> {
    (1..80u64, 0..600u64, 0.0..0.3f64, 0.0..1e-4f64, 0.0..1e-8f64).prop_map(|(dd, s, a, b, c)| {
        SloConfig::new(
            Nanos(dd * MS),
            Nanos(s * MS),
            PrefillModel::new(a, b, c).unwrap(),
        )
        .unwrap()
    })
}

fn events(id: u64, c: &Case) -> Vec<EngineEvent> {
    let request = RequestId(id);
    let mut at = c.arrival;
    let mut out = vec![];
    let mut push = |at: u64, kind| {
        out.push(EngineEvent {
            request,
            at: Nanos(at),
            kind,
        })
    };
    push(at, EventKind::Queued);
    at += c.schedule_after;
    push(at, EventKind::Scheduled);
    for s in &c.steps {
        match *s {
            Step::Tokens { gap, count } => {
                at += gap;
                push(at, EventKind::Tokens { count });
            }
            Step::Preempt { after, pause } => {
                at += after;
                push(at, EventKind::Preempted);
                at += pause;
                push(at, EventKind::Scheduled);
            }
        }
    }
    at += c.finish_after;
    push(at, EventKind::Finished(c.reason));
    out
}

fn timeline(id: u64, c: &Case) -> RequestTimeline {
    let evs = events(id, c);
    let mut b = TimelineBuilder::from_queued(&evs[0], c.shape).unwrap();
    for e in &evs[1..] {
        b.apply(e).unwrap();
    }
    b.build()
}

/// Spec (b) transcribed independently over the ITT vector, in signed 128-bit integers.
fn reference(itts: &[u64], d_p: u64, d_d: u64, ignore_first: bool) -> (u64, u64) {
    let (mut slack, mut missed, mut total) = (0i128, 0i128, 0i128);
    let (d_p, d_d) = (d_p as i128, d_d as i128);
    for (i, &t) in itts.iter().enumerate() {
        let t = t as i128;
        let m = if i == 0 {
            if ignore_first {
                continue;
            }
            if t <= d_p + slack {
                slack += d_p - t;
                total += 1;
                continue;
            }
            1 + (t - slack - d_p) / d_d
        } else {
            if t <= d_d + slack {
                slack += d_d - t;
                total += 1;
                continue;
            }
            (t - slack) / d_d
        };
        missed += m;
        total += m;
        slack = 0;
    }
    (missed as u64, total as u64)
}

fn itts_ns(t: &RequestTimeline) -> Vec<u64> {
    t.inter_token_times().iter().map(|n| n.0).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn offline_tally_matches_the_reference_algorithm(c in case(), slo in slo()) {
        let t = timeline(1, &c);
        let params = slo.deadlines_for(c.shape);
        for (first, ignore) in [(FirstToken::Deadline, false), (FirstToken::Ignore, true)] {
            let (mut missed, mut total) =
                reference(&itts_ns(&t), params.prefill().0, params.decode().0, ignore);
            if t.is_failed() {
                // The failure rule: every owed token is one missed deadline (none for an
                // ignored first token).
                let owed = c.shape.max_tokens.map_or(0, |m| u64::from(m).saturating_sub(t.output_tokens()));
                let no_deadline = u64::from(ignore && t.output_tokens() == 0 && owed > 0);
                missed += owed - no_deadline;
                total += owed - no_deadline;
            }
            let got = t.deadline_tally(params, first);
            prop_assert_eq!((got.missed(), got.total()), (missed, total));
        }
    }

    #[test]
    fn online_tracking_equals_offline_calculation(c in case(), slo in slo()) {
        let mut live = LiveTracker::new(slo);
        let mut streamed = DeadlineTally::default();
        let mut tbts = vec![];
        let mut ttft = None;
        let mut finished = None;
        for e in events(1, &c) {
            match live.observe(&e, c.shape).unwrap() {
                LiveUpdate::Tokens(u) => {
                    streamed.merge(u.deadlines);
                    tbts.extend(u.time_between_tokens);
                    if let Some(first) = u.first {
                        ttft = Some(first.ttft);
                    }
                }
                LiveUpdate::Finished(done) => {
                    streamed.merge(done.charged_at_finish);
                    finished = Some(done);
                }
                _ => {}
            }
        }
        let done = finished.unwrap();
        prop_assert_eq!(live.in_flight(), 0);
        let offline = timeline(1, &c);
        prop_assert_eq!(&done.timeline, &offline);
        let expected = offline.deadline_tally(slo.deadlines_for(c.shape), FirstToken::Deadline);
        prop_assert_eq!(done.deadlines, expected);
        prop_assert_eq!(streamed, expected);
        prop_assert_eq!(tbts, offline.time_between_tokens());
        prop_assert_eq!(ttft, offline.ttft());
        prop_assert_eq!(done.report.fluidity_index, expected.fluidity_index());
    }

    #[test]
    fn prometheus_counters_equal_offline_sums(cases in proptest::collection::vec(case(), 1..6), slo in slo()) {
        let reg = MetricsRegistry::new(slo).unwrap();
        let mut all: Vec<(EngineEvent, RequestShape)> = vec![];
        for (i, c) in cases.iter().enumerate() {
            all.extend(events(i as u64, c).into_iter().map(|e| (e, c.shape)));
        }
        // Interleave requests as an engine would: by time, each request's order kept.
        all.sort_by_key(|(e, _)| e.at);
        for (e, shape) in &all {
            reg.observe_event(e, *shape).unwrap();
        }
        prop_assert_eq!(reg.in_flight(), 0);
        let timelines: Vec<_> = cases.iter().enumerate().map(|(i, c)| timeline(i as u64, c)).collect();
        let service = service_miss_rate(&timelines, &slo).deadlines;
        let scrape = parse_exposition(&reg.render().unwrap());
        let value = |name, labels: &[(&str, &str)]| scalar(&scrape, name, labels);
        prop_assert_eq!(value("metrum_deadline_misses_total", &[("phase", "ttft")]), service.missed_ttft as f64);
        prop_assert_eq!(value("metrum_deadline_misses_total", &[("phase", "decode")]), service.missed_decode as f64);
        prop_assert_eq!(value("metrum_deadlines_total", &[]), service.total() as f64);
        let tokens: u64 = timelines.iter().map(|t| t.output_tokens()).sum();
        prop_assert_eq!(value("metrum_generation_tokens_total", &[]), tokens as f64);
    }

    #[test]
    fn fluidity_stays_within_zero_and_one(itts in proptest::collection::vec(gap(), 1..60), d_p in 0..2_000 * MS, d_d in 1..200 * MS) {
        let mut tracker = DeadlineTracker::new(DeadlineParams::new(Nanos(d_p), Nanos(d_d)).unwrap(), FirstToken::Deadline);
        for g in &itts {
            tracker.observe(Nanos(*g));
        }
        let f = tracker.tally().fluidity_index().unwrap();
        prop_assert!((0.0..=1.0).contains(&f), "{}", f);
        prop_assert!(tracker.tally().total() >= itts.len() as u64);
    }

    #[test]
    fn zero_gaps_never_add_a_miss_by_themselves(
        itts in proptest::collection::vec(gap(), 1..40),
        insert_at in proptest::collection::vec(0..40usize, 1..5),
        d_p in 0..1_000 * MS,
        d_d in 1..100 * MS,
    ) {
        let params = DeadlineParams::new(Nanos(d_p), Nanos(d_d)).unwrap();
        let run = |itts: &[u64]| {
            let mut t = DeadlineTracker::new(params, FirstToken::Deadline);
            let verdicts: Vec<_> = itts.iter().map(|g| t.observe(Nanos(*g))).collect();
            (verdicts, t.tally())
        };
        let mut with_zeros = itts.clone();
        for &i in &insert_at {
            with_zeros.insert(1 + i % with_zeros.len(), 0);
        }
        let (verdicts, with) = run(&with_zeros);
        for (g, v) in with_zeros.iter().zip(&verdicts) {
            if *g == 0 {
                prop_assert!(matches!(v, TokenVerdict::OnTime(_)), "{:?}", v);
            }
        }
        let (_, without) = run(&itts);
        // Each zero is one more met deadline and, by adding D_d of slack, can only help later.
        prop_assert!(with.missed() <= without.missed());
        prop_assert!(with.met >= without.met + insert_at.len() as u64);
    }

    #[test]
    fn service_miss_rate_is_a_ratio_of_sums(cases in proptest::collection::vec(case(), 1..8), slo in slo()) {
        let timelines: Vec<_> = cases.iter().enumerate().map(|(i, c)| timeline(i as u64, c)).collect();
        let (mut missed, mut total) = (0u64, 0u64);
        for t in &timelines {
            let tally = t.deadline_tally(slo.deadlines_for(t.shape()), FirstToken::Deadline);
            missed += tally.missed();
            total += tally.total();
        }
        let s = service_miss_rate(&timelines, &slo);
        prop_assert_eq!((s.deadlines.missed(), s.deadlines.total()), (missed, total));
        prop_assert_eq!(s.miss_rate, (total > 0).then(|| missed as f64 / total as f64));
    }

    #[test]
    fn overdue_never_exceeds_what_the_late_token_is_charged(
        prefix in proptest::collection::vec(gap(), 0..10),
        waited in 0..2_000 * MS,
        extra in 0..500 * MS,
        d_p in 0..1_000 * MS,
        d_d in 1..100 * MS,
    ) {
        let mut t = DeadlineTracker::new(DeadlineParams::new(Nanos(d_p), Nanos(d_d)).unwrap(), FirstToken::Deadline);
        for g in &prefix {
            t.observe(Nanos(*g));
        }
        let overdue = t.overdue(Nanos(waited));
        let charged = match t.clone().observe(Nanos(waited + extra)) {
            TokenVerdict::Late { missed, .. } => missed,
            _ => 0,
        };
        prop_assert!(overdue <= charged, "{} > {}", overdue, charged);
        // And a token arriving right now is late exactly when something is overdue.
        let now = t.clone().observe(Nanos(waited));
        prop_assert_eq!(overdue > 0, matches!(now, TokenVerdict::Late { .. }));
    }

    #[test]
    fn timelines_survive_a_json_round_trip(c in case()) {
        let t = timeline(3, &c);
        let json = serde_json::to_string(&t).unwrap();
        let back: RequestTimeline = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, t);
    }
}
