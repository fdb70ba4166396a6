//! One test per error row of the API contract, each checking the status and OpenAI's body.

mod common;

use common::{TestServer, completion_body, tiny_model};
use metrum_server::ServerOptions;
use serde_json::{Value, json};
use std::io::{Read, Write};

/// Asserts the OpenAI error shape and returns `error`.
fn error_of(status: u16, expected: u16, body: &Value) -> Value {
    assert_eq!(status, expected, "{body}");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
    error.clone()
}

async fn raw_post(server: &TestServer, path: &str, body: &str) -> (u16, Value) {
    let resp = server
        .client
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_with_the_field_named() {
    let server = TestServer::start(tiny_model()).await;
    let max_len = server.engine.model_info().unwrap().max_model_len as u64;

    // Malformed JSON (never axum's 422/415).
    let (status, body) = raw_post(&server, "/v1/completions", r#"{"prompt": "x",,}"#).await;
    let error = error_of(status, 400, &body);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
    let (status, body) = raw_post(&server, "/v1/chat/completions", "").await;
    error_of(status, 400, &body);

    // Wrong types name the field.
    let (status, body) = raw_post(
        &server,
        "/v1/completions",
        r#"{"prompt": "x", "temperature": "hot"}"#,
    )
    .await;
    assert_eq!(error_of(status, 400, &body)["param"], "temperature");
    let (status, body) =
        raw_post(&server, "/v1/completions", r#"{"prompt": "x", "stop": 5}"#).await;
    assert_eq!(error_of(status, 400, &body)["param"], "stop");
    let (status, body) = raw_post(&server, "/v1/completions", r#"{"max_tokens": 3}"#).await;
    error_of(status, 400, &body);

    // Out-of-range values.
    for (field, value) in [
        ("top_p", json!(1.5)),
        ("n", json!(0)),
        ("temperature", json!(-1)),
        ("max_tokens", json!(0)),
        ("logprobs", json!(21)),
        ("min_p", json!(2)),
    ] {
        let mut body = completion_body("x", 4);
        body[field] = value;
        let (status, reply) = server.post_json("/v1/completions", &body).await;
        assert_eq!(error_of(status, 400, &reply)["param"], field, "{field}");
    }

    // Prompt + max_tokens over the context.
    let (status, body) = server
        .post_json("/v1/completions", &completion_body("hello", max_len))
        .await;
    let error = error_of(status, 400, &body);
    assert_eq!(error["code"], "context_length_exceeded");
    // The largest max_tokens a client can send: the message's total must not wrap (cargo-fuzz's
    // request_json found `1 + u64::MAX`; fuzz/seeds/request_json/max_tokens_u64_max).
    let (status, body) = raw_post(
        &server,
        "/v1/completions",
        r#"{"prompt": "x", "max_tokens": 18446744073709551615}"#,
    )
    .await;
    let error = error_of(status, 400, &body);
    assert_eq!(error["code"], "context_length_exceeded");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("you requested 18446744073709551616 tokens"),
        "{message}"
    );

    // Empty messages and a bad chat role.
    let (status, body) = server
        .post_json("/v1/chat/completions", &json!({"messages": []}))
        .await;
    assert_eq!(error_of(status, 400, &body)["param"], "messages");
    let bad_role =
        json!({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]});
    let (status, body) = server.post_json("/v1/chat/completions", &bad_role).await;
    assert_eq!(error_of(status, 400, &body)["param"], "messages[1].role");
    assert!(
        server.wait_idle().await,
        "no rejected request reached the engine"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_and_route_are_404() {
    let server = TestServer::start(tiny_model()).await;
    let mut body = completion_body("x", 2);
    body["model"] = json!("gpt-17");
    let (status, reply) = server.post_json("/v1/completions", &body).await;
    let error = error_of(status, 404, &reply);
    assert_eq!(
        (error["param"].as_str(), error["code"].as_str()),
        (Some("model"), Some("model_not_found"))
    );
    let (status, reply) = server
        .post_json(
            "/v1/chat/completions",
            &json!({
        "model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    error_of(status, 404, &reply);
    let resp = server
        .client
        .get(server.url("/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    error_of(status, 404, &resp.json().await.unwrap());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413() {
    // The default limit (32 MiB), announced by Content-Length and rejected before it is read.
    let server = TestServer::start(tiny_model()).await;
    let mut tcp = std::net::TcpStream::connect(server.addr).unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{{\"prompt\": \"",
        (32u64 << 20) + 1
    );
    tcp.write_all(head.as_bytes()).unwrap();
    let mut reply = vec![0u8; 4096];
    let n = tcp.read(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("\"error\""), "{reply}");
    server.stop().await;

    // A small configured limit, with a body that is actually sent.
    let options = ServerOptions {
        max_body_bytes: 1024,
        ..ServerOptions::default()
    };
    let server = TestServer::start_with(tiny_model(), options).await;
    let big = completion_body(&"a".repeat(2000), 2);
    let (status, reply) = server.post_json("/v1/completions", &big).await;
    error_of(status, 413, &reply);
    let (status, _) = server
        .post_json("/v1/completions", &completion_body("a", 2))
        .await;
    assert_eq!(status, 200, "small bodies still pass");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_engine_is_500_with_the_request_id() {
    let server = TestServer::start(tiny_model()).await;
    // The request runs the forward pass that the test-only hook makes panic.
    server
        .engine
        .inject_fault(metrum_engine::executor::Fault::Panic);
    let resp = server
        .client
        .post(server.url("/v1/completions"))
        .header("x-request-id", "trace-me-123")
        .json(&completion_body("x", 2))
        .send()
        .await
        .unwrap();
    let last: (u16, Value) = (resp.status().as_u16(), resp.json().await.unwrap());
    let error = error_of(last.0, 500, &last.1);
    assert!(
        error["message"].as_str().unwrap().contains("trace-me-123"),
        "{error}"
    );
    assert_eq!(error["type"], "server_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_failure_mid_stream_is_one_error_event_then_done() {
    let server = TestServer::start(tiny_model()).await;
    let mut body = completion_body("stream then die", 200);
    body["stream"] = json!(true);
    let response = server.post("/v1/completions", &body).await;
    assert_eq!(response.status(), 200);
    let mut reader = common::SseReader::new(response);
    let first = reader.next_data().await.unwrap();
    assert!(first.contains("\"text\""), "{first}");
    // Headers and a token are out; now the engine goes away under the stream.
    server.engine.shutdown();
    let mut events = Vec::new();
    while let Some(data) = reader.next_data().await {
        events.push(data);
    }
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let before_done: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let error = error_of(500, 500, &before_done);
    assert_eq!(error["type"], "server_error", "{before_done}");
    for event in &events[..events.len() - 2] {
        assert!(
            event.contains("\"text\""),
            "only text chunks before the error: {event}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_model_name_is_the_only_accepted_name() {
    let mut model = tiny_model();
    model.config.served_model_name = Some("my-alias".into());
    let server = TestServer::start(model).await;
    let (status, models) = server.get_text("/v1/models").await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "my-alias");
    let mut body = completion_body("x", 2);
    body["model"] = json!("my-alias");
    assert_eq!(server.post_json("/v1/completions", &body).await.0, 200);
    body["model"] = json!("tiny-llama");
    let (status, reply) = server.post_json("/v1/completions", &body).await;
    error_of(status, 404, &reply);
    server.stop().await;
}
