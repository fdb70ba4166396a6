//! Every supported family served over the OpenAI API from its own files: the tiny
//! transformers-built fixtures of `engine/tests/fixtures/families/` (safetensors directories
//! and GGUF files), each behind a real server on real HTTP. The prompt a chat request turns
//! into must be transformers' own rendering of the model's chat template (same token count),
//! `/version` must name the family, and a system message must follow the template: Gemma 2's
//! refuses it (a 400 with the template's reason), Gemma 3's folds it into the first user turn.

mod common;

use common::{TestModel, TestServer};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../engine/tests/fixtures/families/{name}"))
}

fn reference_chat(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    reference["chat_examples"][0].clone()
}

async fn chat(server: &TestServer, messages: Value) -> (u16, Value) {
    server
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": messages, "max_tokens": 6, "temperature": 0}),
        )
        .await
}

/// Serves `name` from `path` and checks the chat prompt, the reported family and an answer.
async fn serves(name: &str, path: &Path, model_type: &str) -> TestServer {
    let server = TestServer::start(TestModel::fixture_at(path)).await;
    let example = reference_chat(name);
    let (status, body) = chat(&server, example["messages"].clone()).await;
    assert_eq!(status, 200, "{name} from {}: {body}", path.display());
    let expected = example["ids"].as_array().unwrap().len() as u64;
    assert_eq!(
        body["usage"]["prompt_tokens"], expected,
        "{name}: the chat prompt is not transformers' rendering of the model's template"
    );
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    let (status, version) = server.get_text("/version").await;
    assert_eq!(status, 200);
    let version: Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["model"]["architecture"], model_type, "{name}");
    server
}

#[tokio::test]
async fn every_family_serves_chat_from_safetensors_and_gguf() {
    let families = [
        ("qwen2", "qwen2", "qwen2"),
        ("qwen3", "qwen3", "qwen3"),
        ("mistral", "mistral", "llama"),
        ("gemma2", "gemma2", "gemma2"),
        ("gemma3", "gemma3_text", "gemma3_text"),
        ("phi3", "phi3", "phi3"),
        ("phi4mini", "phi3", "phi3"),
    ];
    for (name, hf_type, gguf_type) in families {
        let dir = fixture(name);
        serves(name, &dir, hf_type).await.stop().await;
        serves(name, &dir.join("model.gguf"), gguf_type)
            .await
            .stop()
            .await;
    }
}

#[tokio::test]
async fn a_system_message_follows_the_models_own_template() {
    let system = json!([
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hello"}
    ]);
    let server = TestServer::start(TestModel::fixture_at(&fixture("gemma2"))).await;
    let (status, body) = chat(&server, system.clone()).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("System role not supported"),
        "the template's own reason: {message}"
    );
    assert_eq!(body["error"]["param"], "messages");
    // The engine is unharmed: the next request is served.
    let (status, _) = chat(&server, json!([{"role": "user", "content": "Hello"}])).await;
    assert_eq!(status, 200);
    server.stop().await;

    let server = TestServer::start(TestModel::fixture_at(&fixture("gemma3"))).await;
    let user_only = json!([{"role": "user", "content": "Hello"}]);
    let (status, plain) = chat(&server, user_only).await;
    assert_eq!(status, 200, "{plain}");
    let (status, folded) = chat(&server, system.clone()).await;
    assert_eq!(status, 200, "{folded}");
    // The prompt the server built, read back through its own /tokenize and /detokenize.
    let (status, tokens) = server
        .post_json("/tokenize", &json!({"messages": system}))
        .await;
    assert_eq!(status, 200, "{tokens}");
    let (status, text) = server
        .post_json("/detokenize", &json!({"tokens": tokens["tokens"]}))
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        text["prompt"],
        "<bos><start_of_turn>user\nAnswer briefly.\n\nHello<end_of_turn>\n<start_of_turn>model\n"
    );
    assert!(folded["usage"]["prompt_tokens"].as_u64() > plain["usage"]["prompt_tokens"].as_u64());
    server.stop().await;
}
