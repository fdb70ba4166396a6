//! The worked examples of spec (b), and run-level statistics on small hand-checked runs.

use metrum_core::{FinishReason, Nanos, RequestId};
use metrum_metrics::{
    CurveSpec, DeadlineParams, DeadlineTally, FirstToken, PrefillModel, RequestShape,
    RequestTimeline, SloConfig, TimelineBuilder, fluid_token_generation_rate,
    miss_rate_vs_target_tbt, service_miss_rate, summarize,
};

fn ms(v: u64) -> Nanos {
    Nanos::from_millis(v)
}

/// A request built from an ITT vector in ms: zeros join the previous delivery (a burst).
fn from_itts(id: u64, itts_ms: &[u64]) -> RequestTimeline {
    let shape = RequestShape {
        prompt_tokens: 100,
        max_tokens: None,
        slo: metrum_core::RequestSlo::SERVER,
    };
    let mut b = TimelineBuilder::new(RequestId(id), Nanos::ZERO, shape);
    let mut now = 0;
    let mut pending: Option<(u64, u32)> = None;
    for &gap in itts_ms {
        now += gap;
        match &mut pending {
            Some((_, count)) if gap == 0 => *count += 1,
            _ => {
                if let Some((at, count)) = pending.take() {
                    b.tokens(ms(at), count).unwrap();
                }
                pending = Some((now, 1));
            }
        }
    }
    if let Some((at, count)) = pending {
        b.tokens(ms(at), count).unwrap();
    }
    b.finished(ms(now), FinishReason::Stop).unwrap();
    b.build()
}

/// D_p = predicted prefill 200 ms + S 300 ms = 500 ms; D_d = 50 ms.
fn example_slo() -> SloConfig {
    SloConfig::new(ms(50), ms(300), PrefillModel::new(0.2, 0.0, 0.0).unwrap()).unwrap()
}

fn tally(itts_ms: &[u64]) -> DeadlineTally {
    let t = from_itts(1, itts_ms);
    let slo = example_slo();
    let params = slo.deadlines_for(t.shape());
    assert_eq!(params, DeadlineParams::new(ms(500), ms(50)).unwrap());
    t.deadline_tally(params, FirstToken::Deadline)
}

const A: [u64; 8] = [400, 30, 30, 120, 50, 0, 0, 200];
const B: [u64; 8] = [400, 30, 30, 120, 50, 0, 0, 350];
const C: [u64; 8] = [700, 30, 30, 120, 50, 0, 0, 200];

#[test]
fn request_a_absorbs_its_stalls_in_slack() {
    let t = tally(&A);
    assert_eq!((t.missed(), t.total()), (0, 8));
    assert_eq!(t.fluidity_index(), Some(1.0));
    // The burst really is [gap, 0, 0]: one delivery of 3 tokens at 630 ms.
    let timeline = from_itts(1, &A);
    assert_eq!(timeline.deliveries().len(), 6);
    assert_eq!(timeline.inter_token_times(), A.map(ms).to_vec());
}

#[test]
fn request_b_misses_three_deadlines_at_token_8() {
    let t = tally(&B);
    assert_eq!((t.missed(), t.total()), (3, 10));
    assert_eq!(t.missed_decode, 3);
    assert_eq!(t.fluidity_index(), Some(0.7));
}

#[test]
fn request_c_scores_8_of_13_in_integer_nanoseconds() {
    let t = tally(&C);
    assert_eq!((t.missed(), t.total()), (8, 13));
    assert_eq!((t.missed_ttft, t.missed_decode), (5, 3));
    assert!((t.fluidity_index().unwrap() - 5.0 / 13.0).abs() < 1e-15);
    // Why integers: in float seconds the first-token floor comes out one short (3, not 4),
    // which would score 7/12.
    let float_periods = ((0.700f64 - 0.500) / 0.050).floor();
    assert_eq!(float_periods, 3.0);
}

#[test]
fn an_early_stall_costs_fluidity_a_late_one_does_not() {
    let early = tally(&[500, 120, 30, 30, 30, 30, 30, 30]);
    assert_eq!((early.missed(), early.total()), (2, 9));
    assert!((early.fluidity_index().unwrap() - 7.0 / 9.0).abs() < 1e-15);
    let late = tally(&[500, 30, 30, 30, 30, 30, 30, 120]);
    assert_eq!((late.missed(), late.total()), (0, 8));
    // Same TBT multiset, hence the same TBT percentiles and TPOT, yet different fluidity.
    let (e, l) = (
        from_itts(1, &[500, 120, 30, 30, 30, 30, 30, 30]),
        from_itts(2, &[500, 30, 30, 30, 30, 30, 30, 120]),
    );
    assert_eq!(e.tpot_secs(), l.tpot_secs());
}

#[test]
fn service_miss_rate_is_a_ratio_of_sums() {
    let runs = vec![from_itts(1, &A), from_itts(2, &B), from_itts(3, &C)];
    let s = service_miss_rate(&runs, &example_slo());
    assert_eq!((s.deadlines.missed(), s.deadlines.total()), (11, 31));
    assert_eq!(s.miss_rate, Some(11.0 / 31.0));
    // Not the mean of per-request rates (0 + 0.3 + 8/13)/3.
    let mean_of_rates = (0.0 + 0.3 + 8.0 / 13.0) / 3.0;
    assert!((s.miss_rate.unwrap() - mean_of_rates).abs() > 0.01);
}

#[test]
fn min_tbt_deadline_and_fluid_token_generation_rate() {
    // First token ignored; nine 20 ms gaps bank 9·(D − 20) of slack before a 100 ms stall.
    // For D in (280/11 ms, 28 ms) the stall closes exactly 1 missed deadline: 1 of 10 = 0.1,
    // which meets the target; at D = 280/11 ms it closes 2 (2/11 > 0.1). So the minimum is
    // just above 280/11 ms, and Etalon's bisection (0.1 ms steps) lands within 0.3 ms of it.
    let itts = [300, 20, 20, 20, 20, 20, 20, 20, 20, 20, 100];
    let t = from_itts(1, &itts);
    let d = t
        .min_tbt_deadline_to_meet(0.1, Nanos::ZERO, FirstToken::Ignore)
        .unwrap();
    let threshold_ns = 280.0 / 11.0 * 1e6;
    let d_ns = d.0 as f64;
    assert!(
        d_ns > threshold_ns && d_ns <= threshold_ns + 300_000.0,
        "{d:?}"
    );
    let params = DeadlineParams::new(Nanos::ZERO, d).unwrap();
    let at_d = t.deadline_tally(params, FirstToken::Ignore);
    assert_eq!((at_d.missed(), at_d.total()), (1, 10));

    let tgr = fluid_token_generation_rate(std::slice::from_ref(&t)).unwrap();
    assert!((tgr - 1.0 / d.as_secs_f64()).abs() < 1e-9);
    // A request with a single token has no decode deadline: no rate rather than a fake one.
    assert_eq!(fluid_token_generation_rate(&[from_itts(2, &[10])]), None);
}

#[test]
fn tbt_curve_is_p99_of_per_request_miss_rates_with_the_first_token_ignored() {
    let runs = vec![from_itts(1, &A), from_itts(2, &[10])];
    let spec = CurveSpec {
        from: ms(40),
        to: ms(60),
        step: ms(20),
        request_quantile: 0.99,
    };
    let curve = miss_rate_vs_target_tbt(&runs, &spec);
    assert_eq!(curve.len(), 2);
    // Request 2 has a single token: no decode deadline, left out. Request A at D_d = 40 ms,
    // first token ignored: 30 30 on time (slack 20), 120 > 60 → floor((120−20)/40) = 2
    // missed, 50 > 40 → 1 missed, 0 0 on time (slack 80), 200 > 120 → floor(120/40) = 3.
    let a40 = 6.0 / (6.0 + 4.0);
    assert_eq!(curve[0].tbt_deadline_s, 0.04);
    assert!((curve[0].miss_rate.unwrap() - a40).abs() < 1e-12);
    assert_eq!(curve[1].tbt_deadline_s, 0.06);
}

#[test]
fn run_summary_labels_populations_and_counts_failures() {
    let slo = example_slo();
    let shape = RequestShape {
        prompt_tokens: 100,
        max_tokens: Some(4),
        slo: metrum_core::RequestSlo::SERVER,
    };
    let mut failed = TimelineBuilder::new(RequestId(9), Nanos::ZERO, shape);
    failed.scheduled(ms(5)).unwrap();
    failed.finished(ms(30), FinishReason::Error).unwrap();
    let runs = vec![from_itts(1, &A), failed.build()];
    let s = summarize(&runs, &slo, Some(ms(1000)));
    assert_eq!(s.requests.launched, 2);
    assert_eq!(s.requests.failed, 1);
    assert_eq!(s.error_rate, Some(0.5));
    assert_eq!(s.ttft_s.count, 1);
    assert_eq!(s.ttft_s.undefined, 1);
    assert_eq!(s.tbt_s.population, metrum_metrics::Population::Tokens);
    assert_eq!(s.tbt_s.count, 7);
    assert_eq!(s.inter_delivery_s.count, 5);
    // The failed request owed 4 tokens: 1 TTFT miss + 3 decode misses, fluidity 0.
    assert_eq!(s.fluidity_index.min, Some(0.0));
    assert_eq!(s.service_miss_rate.deadlines.missed(), 4);
    assert_eq!(s.completed_qps, Some(1.0));
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains("\"population\":\"requests\""));
}
