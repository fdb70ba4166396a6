//! Abuse limits of a shared server over real HTTP: prompt bytes and prompts × n × max_tokens
//! bounded before tokenization (400 naming the flag), stop strings bounded in count and length,
//! and a request can never bring its own chat template.

mod common;

use common::{TestServer, completion_body, tiny_model};
use metrum_server::ServerOptions;
use metrum_server::limits::RequestLimits;
use serde_json::{Value, json};

fn limited(max_prompt_bytes: usize, max_output_tokens: usize) -> ServerOptions {
    ServerOptions {
        limits: RequestLimits {
            max_prompt_bytes,
            max_output_tokens,
        },
        ..ServerOptions::default()
    }
}

/// Asserts a 400 naming `param`, with `needle` in the message; returns the error object.
fn bad_request(status: u16, body: &Value, param: &str, needle: &str) -> Value {
    assert_eq!(status, 400, "{body}");
    let error = body["error"].clone();
    assert_eq!(error["param"], param, "{body}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(needle), "{message}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_bytes_are_bounded_before_tokenization() {
    let server = TestServer::start_with(tiny_model(), limited(100, 1 << 18)).await;
    let fits = "a".repeat(100);
    let (status, body) = server
        .post_json("/v1/completions", &completion_body(&fits, 1))
        .await;
    assert_eq!(status, 200, "{body}");

    let over = "a".repeat(101);
    let (status, body) = server
        .post_json("/v1/completions", &completion_body(&over, 1))
        .await;
    let error = bad_request(status, &body, "prompt", "--max-prompt-bytes");
    assert_eq!(error["code"], "prompt_too_large");
    // A batch counts as a whole.
    let mut batch = completion_body("", 1);
    batch["prompt"] = json!(["a".repeat(60), "a".repeat(60)]);
    let (status, body) = server.post_json("/v1/completions", &batch).await;
    bad_request(status, &body, "prompt", "120 bytes");

    let chat = json!({"messages": [{"role": "user", "content": over}], "max_tokens": 1});
    let (status, body) = server.post_json("/v1/chat/completions", &chat).await;
    bad_request(status, &body, "messages", "--max-prompt-bytes");
    let (status, body) = server
        .post_json("/tokenize", &json!({"prompt": over}))
        .await;
    bad_request(status, &body, "prompt", "--max-prompt-bytes");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_times_n_times_max_tokens_is_bounded() {
    let server = TestServer::start_with(tiny_model(), limited(1 << 20, 100)).await;
    let mut two = completion_body("x", 50);
    two["n"] = json!(2);
    let (status, body) = server.post_json("/v1/completions", &two).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 100);

    two["max_tokens"] = json!(51);
    let (status, body) = server.post_json("/v1/completions", &two).await;
    let error = bad_request(
        status,
        &body,
        "max_tokens",
        "--max-output-tokens-per-request",
    );
    assert_eq!(error["code"], "too_many_output_tokens");
    let mut batch = completion_body("", 51);
    batch["prompt"] = json!(["x", "y"]);
    let (status, body) = server.post_json("/v1/completions", &batch).await;
    bad_request(status, &body, "max_tokens", "102 tokens");
    // No max_tokens means "up to the context", which is far over 100.
    let open = json!({"prompt": "x"});
    let (status, body) = server.post_json("/v1/completions", &open).await;
    bad_request(status, &body, "max_tokens", "max_tokens unset");
    let chat = json!({"messages": [{"role": "user", "content": "x"}], "n": 3, "max_tokens": 34});
    let (status, body) = server.post_json("/v1/chat/completions", &chat).await;
    bad_request(status, &body, "max_tokens", "102 tokens");
    // A max_tokens the context can never hold is refused before tokenizing, as a context error.
    let context = server.engine.model_info().unwrap().max_model_len;
    let whole = completion_body("x", context as u64);
    let (status, body) = server.post_json("/v1/completions", &whole).await;
    let error = bad_request(status, &body, "max_tokens", "maximum context length");
    assert_eq!(error["code"], "context_length_exceeded");
    server.stop().await;
}

async fn post_stop(server: &TestServer, stop: Value) -> (u16, Value) {
    let mut body = completion_body("x", 2);
    body["stop"] = stop;
    server.post_json("/v1/completions", &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_and_ids_are_bounded() {
    let server = TestServer::start(tiny_model()).await;
    let sixteen: Vec<String> = (0..16).map(|i| format!("<{i}>")).collect();
    let (status, body) = post_stop(&server, json!(sixteen)).await;
    assert_eq!(status, 200, "{body}");
    let seventeen: Vec<String> = (0..17).map(|i| format!("<{i}>")).collect();
    let (status, body) = post_stop(&server, json!(seventeen)).await;
    bad_request(status, &body, "stop", "at most 16 stop strings");
    let (status, body) = post_stop(&server, json!("s".repeat(256))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_stop(&server, json!("s".repeat(257))).await;
    bad_request(status, &body, "stop", "at most 256 bytes");

    let mut ids = completion_body("x", 2);
    ids["stop_token_ids"] = json!(vec![1; 257]);
    let (status, body) = server.post_json("/v1/completions", &ids).await;
    bad_request(status, &body, "stop_token_ids", "at most 256");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cannot_bring_its_own_chat_template() {
    let server = TestServer::start(tiny_model()).await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    let injected = "{{ 'INJECTED' }}{% for m in messages %}{{ m.content }}{% endfor %}";

    let chat = json!({"messages": messages, "max_tokens": 2, "chat_template": injected});
    let (status, body) = server.post_json("/v1/chat/completions", &chat).await;
    bad_request(status, &body, "chat_template", "model's own chat template");
    let tokenize = json!({"messages": messages, "chat_template": injected});
    let (status, body) = server.post_json("/tokenize", &tokenize).await;
    bad_request(status, &body, "chat_template", "model's own chat template");

    // Without the field, the model's template (ChatML in the fixture) renders the chat, and a
    // message that looks like template code stays text.
    let sneaky = json!([{"role": "user", "content": injected}]);
    let (status, body) = server
        .post_json("/tokenize", &json!({"messages": sneaky}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, text) = server
        .post_json("/detokenize", &json!({"tokens": body["tokens"]}))
        .await;
    let text = text["prompt"].as_str().unwrap();
    assert!(
        text.starts_with("<|im_start|>user\n{{ 'INJECTED' }}"),
        "{text}"
    );
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
    let chat = json!({"messages": messages, "max_tokens": 2, "chat_template": null});
    let (status, body) = server.post_json("/v1/chat/completions", &chat).await;
    assert_eq!(status, 200, "an explicit null is no template: {body}");
    server.stop().await;
}
