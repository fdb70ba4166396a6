//! The model-server protocol routers read (shared/guides/scale-out.md §1.2, §2.1): each
//! vLLM-named alias on `/metrics` shows exactly its `metrum_*` twin's series, the KV-cache
//! shape is exported, `--no-vllm-metrics` removes the aliases, and `/version` answers without
//! the API key (SMG's fallback detection of a vLLM-compatible worker).

mod common;

use common::{TestServer, completion_body, tiny_model};
use metrum_metrics::prometheus::vllm_aliases::VLLM_ALIASES;
use metrum_server::ServerOptions;
use serde_json::Value;

/// The names the issue and the EPP/SMG sources require; the alias table must cover each.
const REQUIRED: [&str; 11] = [
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:cache_config_info",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:time_to_first_token_seconds",
    "vllm:time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
];

/// The sample lines of family `name` (its own series and, for histograms, `_bucket`, `_sum`,
/// `_count`), with the family name replaced by `<>` so twins compare equal.
fn family_samples(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let suffix_ok = rest.starts_with(' ')
                || rest.starts_with('{')
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| rest.starts_with(s));
            suffix_ok.then(|| format!("<>{rest}"))
        })
        .collect()
}

fn family_type<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("# TYPE {name} ");
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_vllm_alias_equals_its_metrum_twin() {
    let server = TestServer::start(tiny_model()).await;
    // Give the histograms and counters values: two finished requests, the second sharing the
    // first's prompt so the prefix cache is queried and hit.
    for _ in 0..2 {
        let (status, body) = server
            .post_json(
                "/v1/completions",
                &completion_body("the same prompt, twice over", 4),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, text) = server.get_text("/metrics").await;
    assert_eq!(status, 200);

    for required in REQUIRED {
        assert!(
            VLLM_ALIASES.iter().any(|(_, alias)| *alias == required),
            "{required} has no twin in VLLM_ALIASES"
        );
    }
    for (twin, alias) in VLLM_ALIASES {
        let twin_samples = family_samples(&text, twin);
        assert!(!twin_samples.is_empty(), "{twin} missing from /metrics");
        assert_eq!(
            family_samples(&text, alias),
            twin_samples,
            "{alias} differs from {twin}"
        );
        assert_eq!(
            family_type(&text, alias),
            family_type(&text, twin),
            "{alias}"
        );
    }
    // Counters moved, so equality above compared real values, not zeros.
    assert!(common::metric_value(&text, "vllm:generation_tokens_total").unwrap() >= 8.0);
    assert!(common::metric_value(&text, "vllm:e2e_request_latency_seconds_count").unwrap() >= 2.0);

    // Routers read one series per gauge; KV usage is a fraction.
    for gauge in [
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:cache_config_info",
    ] {
        assert_eq!(family_type(&text, gauge), Some("gauge"), "{gauge}");
        assert_eq!(family_samples(&text, gauge).len(), 1, "{gauge}");
    }
    let usage = common::metric_value(&text, "vllm:kv_cache_usage_perc ").unwrap();
    assert!((0.0..=1.0).contains(&usage), "{usage}");

    // The cache shape is the engine's.
    let info = server.engine.model_info().unwrap();
    let series = format!(
        "vllm:cache_config_info{{block_size=\"{}\",num_gpu_blocks=\"{}\"}}",
        info.block_size, info.num_kv_blocks
    );
    assert_eq!(common::metric_value(&text, &series), Some(1.0), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_vllm_metrics_leaves_only_metrum_names() {
    let options = ServerOptions {
        vllm_metric_aliases: false,
        ..ServerOptions::default()
    };
    let server = TestServer::start_with(tiny_model(), options).await;
    let (status, text) = server.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(!text.contains("vllm:"), "{text}");
    assert!(text.contains("metrum_requests_waiting "), "{text}");
    assert!(text.contains("metrum_cache_config_info{"), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_detect_a_vllm_compatible_worker_without_the_key() {
    // SMG reads /v1/models `owned_by` first ("vllm"/"sglang"), then treats a 200 from
    // /version as vLLM. Metrum keeps `owned_by: metrum` (honest) and answers /version openly.
    let options = ServerOptions {
        api_key: Some("secret".into()),
        ..ServerOptions::default()
    };
    let server = TestServer::start_with(tiny_model(), options).await;
    let (status, version) = server.get_text("/version").await;
    assert_eq!(status, 200, "{version}");
    let version: Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    let models = server
        .client
        .get(server.url("/v1/models"))
        .bearer_auth("secret")
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let models: Value = models.json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["owned_by"], "metrum");
    assert!(models["data"][0]["id"].is_string(), "{models}");
    server.stop().await;
}
