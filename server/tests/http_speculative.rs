//! Speculative decoding over real HTTP on the tiny fixture drafting for itself
//! (`"method": "draft_model"`, so every draft stands and the counts are known exactly): each
//! response's `metrum.speculative` object, the `/metrics` counters, one SSE chunk per
//! multi-token delivery, the `"speculative": false` opt-out, and `/version` naming the draft.

mod common;

use common::{TestServer, read_stream, stream_text, tiny_model};
use metrum_engine::speculative::SpeculativeConfig;
use serde_json::json;

/// The value of the sample `name` (with its labels, if any) in a Prometheus exposition.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in /metrics:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn draft_model_counts_reach_the_response_and_metrics() {
    let mut model = tiny_model();
    let spec = json!({
        "method": "draft_model",
        "model": model.config.model.clone().unwrap(),
        "num_speculative_tokens": 4,
    });
    model.config.speculative = Some(SpeculativeConfig::parse(&spec.to_string()).unwrap());
    let server = TestServer::start(model).await;

    // 16 tokens: the prefill's one, then three steps verifying 4 drafts and adding a fifth.
    let body = json!({
        "prompt": "abcabcabc", "max_tokens": 16, "temperature": 0, "ignore_eos": true,
    });
    let (status, whole) = server.post_json("/v1/completions", &body).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["usage"]["completion_tokens"], 16);
    let counts = &whole["metrum"]["speculative"];
    assert_eq!(counts["num_drafts"], 3, "{whole}");
    assert_eq!(counts["num_draft_tokens"], 12);
    assert_eq!(counts["num_accepted_tokens"], 12);
    assert_eq!(counts["num_accepted_tokens_per_pos"], json!([3, 3, 3, 3]));
    assert_eq!(counts["mean_acceptance_length"], 5.0);

    let (_, metrics) = server.get_text("/metrics").await;
    assert_eq!(sample(&metrics, "metrum_spec_decode_num_drafts_total"), 3.0);
    assert_eq!(
        sample(&metrics, "metrum_spec_decode_num_draft_tokens_total"),
        12.0
    );
    assert_eq!(
        sample(&metrics, "metrum_spec_decode_num_accepted_tokens_total"),
        12.0
    );
    assert_eq!(
        sample(
            &metrics,
            "metrum_spec_decode_num_accepted_tokens_per_pos_total{position=\"0\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(&metrics, "metrum_spec_decode_mean_acceptance_length"),
        5.0
    );

    // Streamed: the same text, in one chunk per delivery (1 + 3), not one per token.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (chunks, done) = read_stream(server.post("/v1/completions", &streamed).await).await;
    assert!(done);
    assert_eq!(
        stream_text(&chunks, 0),
        whole["choices"][0]["text"].as_str().unwrap()
    );
    let with_text = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert!(with_text <= 4, "{with_text} text chunks for 4 deliveries");

    // Opting out: no drafts, no `speculative` object, the same greedy text.
    let mut plain = body.clone();
    plain["speculative"] = json!(false);
    let (status, opted_out) = server.post_json("/v1/completions", &plain).await;
    assert_eq!(status, 200, "{opted_out}");
    assert!(
        opted_out["metrum"].get("speculative").is_none(),
        "{opted_out}"
    );
    assert_eq!(opted_out["choices"][0]["text"], whole["choices"][0]["text"]);

    let (_, version) = server.get_text("/version").await;
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    let draft = &version["scheduler"]["speculative"];
    assert_eq!(draft["method"], "draft_model", "{version}");
    assert!(draft["parameters"].as_u64().unwrap() > 0, "{version}");
    server.stop().await;
}
