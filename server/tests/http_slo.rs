//! Per-request SLOs and admission control over real HTTP (issue 19): llm-d's
//! `x-llm-d-slo-ttft-ms` / `x-llm-d-slo-tpot-ms` headers and the `slo_ttft_ms` / `slo_tpot_ms`
//! fields are checked (400 on bad values), feed admission control (a request predicted to miss
//! its first-token deadline is refused with 429 + Retry-After) and are counted on /metrics.

mod common;

use common::*;
use metrum_core::Nanos;
use metrum_metrics::{PrefillModel, SloConfig};
use metrum_scheduler::Admission;
use serde_json::Value;

/// The tiny model with admission control on and a prefill model of 1 ms per prompt token (the
/// fixture is faster than that; what matters is what the scheduler predicts).
fn admission_server_model() -> TestModel {
    let mut model = tiny_model();
    model.config.admission = Admission::Refuse;
    model.config.slo = SloConfig::new(
        Nanos::from_millis(50),
        Nanos::from_millis(300),
        PrefillModel {
            a_s: 0.0,
            b_s_per_token: 1e-3,
            c_s_per_token2: 0.0,
        },
    )
    .unwrap();
    model
}

async fn post_with_headers(
    server: &TestServer,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = server.client.post(server.url("/v1/completions")).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_slo_headers_and_fields_are_400() {
    let server = TestServer::start(tiny_model()).await;
    let body = completion_body("hello", 2);
    for (name, value) in [
        ("x-llm-d-slo-ttft-ms", "abc"),
        ("x-llm-d-slo-ttft-ms", "0"),
        ("x-llm-d-slo-tpot-ms", "-3"),
        ("x-llm-d-slo-tpot-ms", "1.5"),
    ] {
        let response = post_with_headers(&server, &body, &[(name, value)]).await;
        assert_eq!(response.status(), 400, "{name}: {value}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(name), "{message}");
    }
    let mut bad_field = completion_body("hello", 2);
    bad_field["slo_tpot_ms"] = 0.into();
    let (status, error) = server.post_json("/v1/completions", &bad_field).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["param"], "slo_tpot_ms");
    let ok = post_with_headers(
        &server,
        &body,
        &[
            ("x-llm-d-slo-ttft-ms", "5000"),
            ("x-llm-d-slo-tpot-ms", "200"),
        ],
    )
    .await;
    assert_eq!(ok.status(), 200, "valid SLO headers are accepted");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_predicted_to_miss_its_ttft_is_refused_with_429_and_counted() {
    let server = TestServer::start(admission_server_model()).await;
    assert_eq!(server.engine_config()["admission"], "refuse");
    // The prompt alone is predicted at ~1 ms per token: a 1 ms TTFT target cannot be met.
    let body = completion_body("the quick brown fox jumps over the lazy dog", 2);
    let refused = post_with_headers(&server, &body, &[("x-llm-d-slo-ttft-ms", "1")]).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap(),
        "1"
    );
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("predicted"), "{message}");

    // The same target in the body field is refused too; a generous one (header) is served,
    // and so is a request under the server's SLO (no header).
    let mut in_body = body.clone();
    in_body["slo_ttft_ms"] = 1.into();
    assert_eq!(server.post("/v1/completions", &in_body).await.status(), 429);
    let served = post_with_headers(&server, &body, &[("x-llm-d-slo-ttft-ms", "60000")]).await;
    assert_eq!(served.status(), 200);
    assert_eq!(server.post("/v1/completions", &body).await.status(), 200);

    let (_, metrics) = server.get_text("/metrics").await;
    let refusals = |reason: &str| {
        metric_value(
            &metrics,
            &format!("metrum_requests_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refusals("predicted_miss"), Some(2.0), "{metrics}");
    assert_eq!(refusals("queue_full"), Some(0.0), "{metrics}");
    server.stop().await;
}

/// The live deadline counters judge each request by its own targets where it set them: the
/// server's SLO here cannot be met (`D_p` = 0, `D_d` = 1 ns), a request with generous targets
/// of its own misses nothing, on /metrics and in its `metrum` report alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_counters_use_the_request_s_own_slo() {
    let mut model = tiny_model();
    model.config.slo = SloConfig::new(Nanos(1), Nanos::ZERO, PrefillModel::ZERO).unwrap();
    let server = TestServer::start(model).await;
    let mut body = completion_body("the quick brown fox", 4);
    body["ignore_eos"] = true.into();
    let misses = |metrics: &str, phase: &str| {
        metric_value(
            metrics,
            &format!("metrum_deadline_misses_total{{phase=\"{phase}\"}}"),
        )
        .unwrap_or(0.0)
    };

    let own = [
        ("x-llm-d-slo-ttft-ms", "60000"),
        ("x-llm-d-slo-tpot-ms", "60000"),
    ];
    let response = post_with_headers(&server, &body, &own).await;
    assert_eq!(response.status(), 200);
    let whole: Value = response.json().await.unwrap();
    let report = &whole["metrum"];
    assert_eq!(report["ttft_deadline_ms"], 60000.0, "{whole}");
    assert_eq!(report["tbt_deadline_ms"], 60000.0, "{whole}");
    assert_eq!(report["deadline_misses"], 0, "{whole}");
    assert_eq!(report["deadlines_total"], 4, "{whole}");
    let (_, metrics) = server.get_text("/metrics").await;
    assert_eq!(misses(&metrics, "ttft"), 0.0, "{metrics}");
    assert_eq!(misses(&metrics, "decode"), 0.0, "{metrics}");

    // The same request under the server's impossible SLO misses every deadline (a late token
    // closes every 1 ns deadline that passed, so misses are many per token).
    let (status, whole) = server.post_json("/v1/completions", &body).await;
    assert_eq!(status, 200, "{whole}");
    assert!(
        whole["metrum"]["deadline_misses"].as_u64().unwrap() >= 4,
        "{whole}"
    );
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(misses(&metrics, "ttft") >= 1.0, "{metrics}");
    assert!(misses(&metrics, "decode") >= 3.0, "{metrics}");
    server.stop().await;
}
