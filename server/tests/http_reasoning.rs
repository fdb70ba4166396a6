//! `--reasoning-parser` over real HTTP on the default model (SmolLM2-135M). The model does not
//! think on its own, so the conversation shows it three answers of the form
//! `<think>…</think>yes|no`, and greedy decoding follows the pattern: its reply opens a real
//! `<think>` block, closes it over several tokens (`</`, `think`, `>`), then answers. The
//! constraint (`yes`/`no`, or a JSON schema) must leave the reasoning free and govern the answer:
//! were the grammar active from the first token, the reply could not open a block at all.

mod common;

use common::{TestServer, default_model, read_stream, stream_finish, stream_text};
use metrum_server::ServerOptions;
use metrum_server::api::reasoning::ReasoningParser;
use serde_json::{Value, json};

fn few_shot(question: &str) -> Value {
    let mut messages = Vec::new();
    for (q, a) in [
        ("Is fire hot?", "<think>fire burns</think>yes"),
        ("Is ice hot?", "<think>ice is cold</think>no"),
        ("Is the sun hot?", "<think>the sun burns</think>yes"),
    ] {
        messages.push(json!({"role": "user", "content": q}));
        messages.push(json!({"role": "assistant", "content": a}));
    }
    messages.push(json!({"role": "user", "content": question}));
    Value::Array(messages)
}

async fn start(parser: Option<ReasoningParser>) -> Option<TestServer> {
    let model = default_model()?;
    let options = ServerOptions {
        reasoning_parser: parser,
        ..ServerOptions::default()
    };
    Some(TestServer::start_with(model, options).await)
}

fn stream_reasoning(chunks: &[Value]) -> String {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter_map(|choice| {
            choice["delta"]["reasoning_content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_is_split_off_and_constraints_apply_after_the_block() {
    let Some(server) = start(Some(ReasoningParser::Qwen3)).await else {
        return;
    };
    let yes_no = json!({"choice": ["yes", "no"]});
    let body = json!({
        "messages": few_shot("Is snow hot?"), "max_tokens": 24, "temperature": 0,
        "structured_outputs": yes_no,
    });
    let (status, reply) = server.post_json("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{reply}");
    let message = &reply["choices"][0]["message"];
    let reasoning = message["reasoning_content"].as_str().unwrap_or_default();
    assert!(
        !reasoning.is_empty() && !reasoning.contains("think>"),
        "{message}"
    );
    assert!(
        message["content"] == "yes" || message["content"] == "no",
        "{message}"
    );
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");

    // Streamed: reasoning deltas first, then content deltas; the same split.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (chunks, done) = read_stream(server.post("/v1/chat/completions", &streamed).await).await;
    assert!(done);
    assert_eq!(stream_reasoning(&chunks), reasoning);
    assert_eq!(
        stream_text(&chunks, 0),
        message["content"].as_str().unwrap()
    );
    let deltas: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["delta"])
        .filter(|d| {
            d.get("reasoning_content").is_some()
                || d["content"].as_str().is_some_and(|c| !c.is_empty())
        })
        .collect();
    let first_content = deltas
        .iter()
        .position(|d| d.get("content").is_some())
        .unwrap();
    assert!(
        deltas[..first_content]
            .iter()
            .all(|d| d.get("reasoning_content").is_some())
            && deltas[first_content..]
                .iter()
                .all(|d| d.get("reasoning_content").is_none()),
        "{deltas:?}"
    );

    // A JSON schema after the block: the content parses and matches.
    let schema = json!({
        "type": "object",
        "properties": {"hot": {"type": "boolean"}},
        "required": ["hot"],
        "additionalProperties": false
    });
    let body = json!({
        "messages": few_shot("Is lava hot?"), "max_tokens": 40, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    });
    let (status, reply) = server.post_json("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{reply}");
    let message = &reply["choices"][0]["message"];
    assert!(
        message["reasoning_content"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    let content: Value = serde_json::from_str(message["content"].as_str().unwrap()).unwrap();
    assert!(content["hot"].is_boolean(), "{message}");

    // Cut by max_tokens inside the block: all reasoning, no content, in both shapes.
    let body = json!({
        "messages": few_shot("Is snow hot?"), "max_tokens": 6, "temperature": 0,
        "structured_outputs": yes_no,
    });
    let (_, reply) = server.post_json("/v1/chat/completions", &body).await;
    let choice = &reply["choices"][0];
    assert_eq!(choice["finish_reason"], "length");
    assert!(choice["message"]["content"].is_null(), "{choice}");
    let cut = choice["message"]["reasoning_content"].as_str().unwrap();
    assert!(!cut.is_empty());
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (chunks, _) = read_stream(server.post("/v1/chat/completions", &streamed).await).await;
    assert_eq!(stream_reasoning(&chunks), cut);
    assert_eq!(stream_text(&chunks, 0), "");
    assert_eq!(stream_finish(&chunks, 0).as_deref(), Some("length"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepseek_r1_replies_start_inside_the_block_and_no_flag_changes_nothing() {
    let Some(server) = start(Some(ReasoningParser::DeepseekR1)).await else {
        return;
    };
    let body = json!({"messages": few_shot("Is snow hot?"), "max_tokens": 24, "temperature": 0});
    let (_, reply) = server.post_json("/v1/chat/completions", &body).await;
    let r1 = reply["choices"][0]["message"].clone();
    // R1's parser reads a reply that never opens a block as reasoning throughout.
    let body = json!({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "temperature": 0});
    let (_, plain) = server.post_json("/v1/chat/completions", &body).await;
    server.stop().await;
    assert!(
        r1["reasoning_content"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{r1}"
    );
    assert!(r1["content"] == "yes" || r1["content"] == "no", "{r1}");
    let plain = &plain["choices"][0]["message"];
    assert!(plain["content"].is_null(), "{plain}");
    assert!(
        plain["reasoning_content"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{plain}"
    );

    // Without the flag the same reply is plain content with its tags, and no reasoning field.
    let Some(server) = start(None).await else {
        return;
    };
    let body = json!({"messages": few_shot("Is snow hot?"), "max_tokens": 24, "temperature": 0});
    let (_, reply) = server.post_json("/v1/chat/completions", &body).await;
    let message = &reply["choices"][0]["message"];
    assert!(message.get("reasoning_content").is_none(), "{message}");
    assert!(
        message["content"].as_str().unwrap().starts_with("<think>"),
        "{message}"
    );
}

#[test]
fn an_unknown_reasoning_parser_is_refused_with_the_known_names() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_metrum"))
        .args(["serve", "--reasoning-parser", "deepseek-r1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .contains("unknown reasoning parser `deepseek-r1`; expected one of qwen3, deepseek_r1"),
        "{stderr}"
    );
}
