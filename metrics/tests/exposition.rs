//! `/metrics` output parses as Prometheus text exposition and holds every listed metric.

mod common;

use common::{parse_exposition, samples, scalar};
use metrum_core::{EngineEvent, EventKind, FinishReason, Nanos, RequestId};
use metrum_metrics::{MetricsRegistry, PrefillModel, RequestShape, SloConfig};
use prometheus_parse::Value;

const HISTOGRAMS: [&str; 10] = [
    "metrum_time_to_first_token_seconds",
    "metrum_time_between_tokens_seconds",
    "metrum_time_per_output_token_seconds",
    "metrum_e2e_request_latency_seconds",
    "metrum_scheduling_delay_seconds",
    "metrum_request_prefill_time_seconds",
    "metrum_request_preempted_time_seconds",
    "metrum_request_fluidity_index",
    "metrum_iteration_duration_seconds",
    "metrum_iteration_tokens",
];

const COUNTERS: [&str; 8] = [
    "metrum_deadline_misses_total",
    "metrum_deadlines_total",
    "metrum_requests_total",
    "metrum_preemptions_total",
    "metrum_prompt_tokens_total",
    "metrum_generation_tokens_total",
    "metrum_prefix_cache_queries_total",
    "metrum_prefix_cache_hits_total",
];

const GAUGES: [&str; 4] = [
    "metrum_requests_running",
    "metrum_requests_waiting",
    "metrum_kv_cache_usage_ratio",
    "metrum_slo_info",
];

fn ms(v: u64) -> Nanos {
    Nanos::from_millis(v)
}

fn event(id: u64, at_ms: u64, kind: EventKind) -> EngineEvent {
    EngineEvent {
        request: RequestId(id),
        at: ms(at_ms),
        kind,
    }
}

/// D_d = 50 ms, S = 300 ms, prefill 200 ms flat: D_p = 500 ms.
fn registry() -> MetricsRegistry {
    let slo = SloConfig::new(ms(50), ms(300), PrefillModel::new(0.2, 0.0, 0.0).unwrap()).unwrap();
    MetricsRegistry::new(slo).unwrap()
}

fn feed(reg: &MetricsRegistry) {
    let shape = RequestShape {
        prompt_tokens: 12,
        max_tokens: Some(5),
        slo: metrum_core::RequestSlo::SERVER,
    };
    let events = [
        event(1, 0, EventKind::Queued),
        event(2, 0, EventKind::Queued),
        event(1, 2, EventKind::Scheduled),
        event(1, 400, EventKind::Tokens { count: 1 }),
        event(1, 430, EventKind::Tokens { count: 3 }),
        event(2, 440, EventKind::Scheduled),
        event(2, 450, EventKind::Preempted),
        event(1, 600, EventKind::Tokens { count: 1 }),
        event(1, 600, EventKind::Finished(FinishReason::Length)),
        event(2, 700, EventKind::Scheduled),
        event(2, 900, EventKind::Tokens { count: 1 }),
        event(2, 905, EventKind::Finished(FinishReason::Error)),
    ];
    for e in &events {
        reg.observe_event(e, shape).unwrap();
    }
    reg.observe_iteration(ms(12), 256);
    reg.observe_prefix_cache(64, 48);
    reg.set_requests_running(3);
    reg.set_requests_waiting(2);
    reg.set_kv_cache_usage(0.25);
}

#[test]
fn every_listed_metric_is_present_with_its_type() {
    let reg = registry();
    let text = reg.render().unwrap();
    let scrape = parse_exposition(&text);
    for name in HISTOGRAMS {
        let found = samples(&scrape, name, &[]);
        assert_eq!(found.len(), 1, "{name}");
        assert!(matches!(found[0].value, Value::Histogram(_)), "{name}");
        assert!(scrape.docs.contains_key(name), "{name} has no HELP");
    }
    for name in COUNTERS {
        let found = samples(&scrape, name, &[]);
        assert!(!found.is_empty(), "{name}");
        assert!(
            found.iter().all(|s| matches!(s.value, Value::Counter(_))),
            "{name}"
        );
    }
    for name in GAUGES {
        let found = samples(&scrape, name, &[]);
        assert_eq!(found.len(), 1, "{name}");
        assert!(matches!(found[0].value, Value::Gauge(_)), "{name}");
    }
    // Labelled counters show every label value from the start, at 0.
    for phase in ["ttft", "decode"] {
        assert_eq!(
            scalar(&scrape, "metrum_deadline_misses_total", &[("phase", phase)]),
            0.0
        );
    }
    for reason in ["stop", "length", "abort", "error"] {
        assert_eq!(
            scalar(
                &scrape,
                "metrum_requests_total",
                &[("finish_reason", reason)]
            ),
            0.0
        );
    }
    let info = &samples(&scrape, "metrum_slo_info", &[])[0];
    assert_eq!(info.labels.get("tbt_slo_seconds"), Some("0.05"));
    assert_eq!(info.labels.get("ttft_slack_seconds"), Some("0.3"));
    assert_eq!(info.labels.get("prefill_a_seconds"), Some("0.2"));
    assert!(
        scrape
            .samples
            .iter()
            .all(|s| s.metric.starts_with("metrum_"))
    );
}

#[test]
fn observed_events_show_up_with_the_right_values() {
    let reg = registry();
    feed(&reg);
    assert_eq!(reg.in_flight(), 0);
    let scrape = parse_exposition(&reg.render().unwrap());
    let value = |name, labels: &[(&str, &str)]| scalar(&scrape, name, labels);

    // Request 1: T = [400, 30, 0, 0, 170], all within D + slack → 5 met.
    // Request 2: T_1 = 900 > 500 → 1 + floor(400/50) = 9 TTFT misses; then it fails owing
    // 4 of its 5 max_tokens → 4 decode misses.
    assert_eq!(
        value("metrum_deadline_misses_total", &[("phase", "ttft")]),
        9.0
    );
    assert_eq!(
        value("metrum_deadline_misses_total", &[("phase", "decode")]),
        4.0
    );
    assert_eq!(value("metrum_deadlines_total", &[]), 5.0 + 9.0 + 4.0);
    assert_eq!(
        value("metrum_requests_total", &[("finish_reason", "length")]),
        1.0
    );
    assert_eq!(
        value("metrum_requests_total", &[("finish_reason", "error")]),
        1.0
    );
    assert_eq!(value("metrum_preemptions_total", &[]), 1.0);
    assert_eq!(value("metrum_generation_tokens_total", &[]), 6.0);
    assert_eq!(value("metrum_prompt_tokens_total", &[]), 24.0);
    assert_eq!(value("metrum_prefix_cache_queries_total", &[]), 64.0);
    assert_eq!(value("metrum_prefix_cache_hits_total", &[]), 48.0);
    assert_eq!(value("metrum_requests_running", &[]), 3.0);
    assert_eq!(value("metrum_requests_waiting", &[]), 2.0);
    assert_eq!(value("metrum_kv_cache_usage_ratio", &[]), 0.25);
    assert_eq!(value("metrum_time_between_tokens_seconds_count", &[]), 4.0);
    assert_eq!(value("metrum_time_to_first_token_seconds_count", &[]), 2.0);
    assert_eq!(value("metrum_request_fluidity_index_count", &[]), 2.0);
    assert_eq!(
        value("metrum_request_preempted_time_seconds_sum", &[]),
        0.25
    );

    let Value::Histogram(tbt) =
        &samples(&scrape, "metrum_time_between_tokens_seconds", &[])[0].value
    else {
        panic!("TBT is a histogram");
    };
    // The two burst zeros sit in the le="0" bucket; D_d = 0.05 is a bucket boundary.
    let bucket = |le: f64| tbt.iter().find(|b| b.less_than == le).map(|b| b.count);
    assert_eq!(bucket(0.0), Some(2.0));
    assert_eq!(bucket(0.05), Some(3.0));
    assert_eq!(bucket(f64::INFINITY), Some(4.0));
}

#[test]
fn a_stall_is_visible_before_the_late_token_arrives() {
    let reg = registry();
    let shape = RequestShape {
        prompt_tokens: 1,
        max_tokens: None,
        slo: metrum_core::RequestSlo::SERVER,
    };
    reg.observe_event(&event(5, 0, EventKind::Queued), shape)
        .unwrap();
    reg.observe_event(&event(5, 1, EventKind::Scheduled), shape)
        .unwrap();
    reg.refresh_overdue(ms(620));
    let scrape = parse_exposition(&reg.render().unwrap());
    // D_p = 500 ms passed at 500, then D_d periods at 550 and 600: 3 overdue at 620 ms.
    assert_eq!(scalar(&scrape, "metrum_deadlines_overdue", &[]), 3.0);
    assert_eq!(scalar(&scrape, "metrum_deadlines_total", &[]), 0.0);
}

#[test]
fn an_impossible_event_is_counted_and_rejected() {
    let reg = registry();
    let shape = RequestShape {
        prompt_tokens: 1,
        max_tokens: None,
        slo: metrum_core::RequestSlo::SERVER,
    };
    assert!(
        reg.observe_event(&event(6, 0, EventKind::Tokens { count: 1 }), shape)
            .is_err()
    );
    let scrape = parse_exposition(&reg.render().unwrap());
    assert_eq!(
        scalar(&scrape, "metrum_metrics_rejected_events_total", &[]),
        1.0
    );
}

#[test]
fn the_registry_can_be_shared_between_the_engine_thread_and_http_handlers() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<MetricsRegistry>();
    let reg = std::sync::Arc::new(registry());
    let engine = {
        let reg = reg.clone();
        std::thread::spawn(move || reg.observe_iteration(ms(5), 32))
    };
    engine.join().unwrap();
    let scrape = parse_exposition(&reg.render().unwrap());
    assert_eq!(scalar(&scrape, "metrum_iteration_tokens_sum", &[]), 32.0);
}
