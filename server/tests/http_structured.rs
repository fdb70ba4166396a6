//! Structured outputs and refused fields over real HTTP, on the tiny random model (its
//! byte-level-ish vocabulary makes any regex reachable). The openai-client suite
//! (scripts/openai-client.sh) covers the default model with the official client.

mod common;

use common::{TestServer, read_stream, stream_finish, stream_text, tiny_model};
use serde_json::{Value, json};

fn param_of(status: u16, body: &Value) -> String {
    assert_eq!(status, 400, "{body}");
    body["error"]["param"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_metrum_does_not_implement_are_400_and_never_reach_the_engine() {
    let server = TestServer::start(tiny_model()).await;
    let cases = [
        (
            "/v1/completions",
            json!({"prompt": "x", "echo": true}),
            "echo",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "suffix": "y"}),
            "suffix",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "guided_regex": "a"}),
            "guided_regex",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokenz": 3}),
            "max_tokenz",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "audio": {}}),
            "audio",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x", "cache_control": {}}]}),
            "messages[0].cache_control",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "stream": true, "stream_options": {"continuous_usage_stats": true}}),
            "stream_options.continuous_usage_stats",
        ),
        (
            "/tokenize",
            json!({"prompt": "x", "return_token_strs": true}),
            "return_token_strs",
        ),
    ];
    for (path, body, param) in cases {
        let (status, reply) = server.post_json(path, &body).await;
        assert_eq!(param_of(status, &reply), param, "{body}");
        let code = reply["error"]["code"].as_str().unwrap_or_default();
        assert!(
            code == "unsupported_parameter" || code == "unknown_parameter",
            "{reply}"
        );
    }
    // Null is "not set", and the no-op values of OpenAI toggles pass.
    let (status, reply) = server
        .post_json(
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": 2, "echo": false, "best_of": 1, "suffix": null}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert!(server.wait_idle().await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constrained_outputs_match_at_temperature_one_streamed_or_not() {
    let server = TestServer::start(tiny_model()).await;
    for seed in 0..4 {
        let body = json!({"prompt": "x", "max_tokens": 40, "temperature": 1.0, "seed": seed,
                          "structured_outputs": {"regex": "[0-9]{3}-[a-c]{2,5}"}});
        let (status, reply) = server.post_json("/v1/completions", &body).await;
        assert_eq!(status, 200, "{reply}");
        let text = reply["choices"][0]["text"].as_str().unwrap();
        let ok = text.len() >= 6
            && text[..3].bytes().all(|b| b.is_ascii_digit())
            && &text[3..4] == "-"
            && text[4..].bytes().all(|b| (b'a'..=b'c').contains(&b));
        assert!(ok, "seed {seed}: {text:?}");
        // The grammar ended or the model chose EOS: `stop` either way, never `length`.
        assert_eq!(reply["choices"][0]["finish_reason"], "stop", "{reply}");
    }
    let body = json!({"prompt": "x", "max_tokens": 30, "temperature": 1.0, "seed": 9, "n": 3,
                      "stream": true, "structured_outputs": {"choice": ["alpha", "beta", "gamma"]}});
    let (chunks, done) = read_stream(server.post("/v1/completions", &body).await).await;
    assert!(done);
    for index in 0..3 {
        let text = stream_text(&chunks, index);
        assert!(
            ["alpha", "beta", "gamma"].contains(&text.as_str()),
            "{text:?}"
        );
        assert_eq!(stream_finish(&chunks, index).as_deref(), Some("stop"));
    }
    // A JSON schema: the text parses and matches.
    let schema = json!({"type": "object", "properties": {"k": {"type": "integer"}},
                        "required": ["k"], "additionalProperties": false});
    let body = json!({"prompt": "x", "max_tokens": 40, "temperature": 1.0, "seed": 3,
                      "response_format": {"type": "json_schema",
                                          "json_schema": {"name": "k", "schema": schema}}});
    let (status, reply) = server.post_json("/v1/completions", &body).await;
    assert_eq!(status, 200, "{reply}");
    let text = reply["choices"][0]["text"].as_str().unwrap();
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(
        value["k"].is_i64() && value.as_object().unwrap().len() == 1,
        "{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_constraints_are_400_with_the_engines_reason() {
    let server = TestServer::start(tiny_model()).await;
    let cases = [
        (
            json!({"structured_outputs": {"regex": "(a"}}),
            "structured_outputs.regex",
            "invalid_constraint",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}}),
            "response_format.json_schema.schema",
            "invalid_constraint",
        ),
        (
            json!({"structured_outputs": {"grammar": "start: @@"}}),
            "structured_outputs.grammar",
            "invalid_constraint",
        ),
        (
            json!({"structured_outputs": {"regex": "a".repeat(70_000)}}),
            "structured_outputs.regex",
            "constraint_too_large",
        ),
    ];
    for (mut body, param, code) in cases {
        body["prompt"] = json!("x");
        body["max_tokens"] = json!(4);
        let (status, reply) = server.post_json("/v1/completions", &body).await;
        assert_eq!(param_of(status, &reply), param, "{reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
    }
    // The engine is untouched: a good request still runs.
    let body = json!({"prompt": "x", "max_tokens": 4, "structured_outputs": {"regex": "ab"}});
    let (status, reply) = server.post_json("/v1/completions", &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["choices"][0]["text"], "ab");
    server.stop().await;
}
