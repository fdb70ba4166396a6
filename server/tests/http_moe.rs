//! The mixture-of-experts families served over the OpenAI API (issue 20): the tiny
//! transformers-built Mixtral and Qwen3-MoE fixtures of `engine/tests/fixtures/moe/`, each from
//! its safetensors directory and from its GGUF alone (the GGUF's own tokenizer metadata and
//! chat template, no tokenizer.json beside it), behind a real server on real HTTP.
//!
//! A completion of the fixture's reference prompt ids must be transformers' greedy tokens, a
//! chat request must render the model's own template, and both files must give the same answer.

mod common;

use common::{TestModel, TestServer};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../engine/tests/fixtures/moe/{name}"))
}

fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The fixture's special token ids (tokenizer.json's special added tokens): a completion's text
/// leaves them out, as transformers' `skip_special_tokens` does.
fn special_ids(name: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(fixture(name).join("tokenizer.json")).unwrap();
    let tokenizer: Value = serde_json::from_str(&text).unwrap();
    tokenizer["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["special"] == true)
        .map(|t| t["id"].as_u64().unwrap())
        .collect()
}

const CHAT: &str = "what is 2+2?";

/// What one server answered: the greedy chat reply and its prompt length.
struct Answers {
    chat_text: String,
    chat_prompt_tokens: u64,
}

/// Serves `path`, checks the family, the template rendering and transformers' greedy tokens.
async fn serves(name: &str, path: &Path, architecture: &str, rendered: &str) -> Answers {
    let server = TestServer::start(TestModel::fixture_at(path)).await;
    let what = format!("{name} from {}", path.display());
    let (status, version) = server.get_text("/version").await;
    assert_eq!(status, 200);
    let version: Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["model"]["architecture"], architecture, "{what}");

    // Transformers' greedy continuation of each reference prompt, as text through the API.
    let special = special_ids(name);
    for prompt in reference(name)["prompts"].as_array().unwrap() {
        let greedy: Vec<u64> = prompt["greedy_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .filter(|t| !special.contains(t))
            .collect();
        let (status, body) = server
            .post_json(
                "/v1/completions",
                &json!({"prompt": prompt["ids"], "max_tokens": 12, "temperature": 0,
                        "ignore_eos": true}),
            )
            .await;
        assert_eq!(status, 200, "{what}: {body}");
        assert_eq!(body["usage"]["completion_tokens"], 12, "{what}: {body}");
        let (status, expected) = server
            .post_json("/detokenize", &json!({"tokens": greedy}))
            .await;
        assert_eq!(status, 200, "{what}: {expected}");
        assert_eq!(
            body["choices"][0]["text"], expected["prompt"],
            "{what}: greedy tokens differ from transformers' for prompt {}",
            prompt["ids"]
        );
    }

    // A chat request renders the model's own template (read back through /tokenize).
    let messages = json!([{"role": "user", "content": CHAT}]);
    let (status, tokens) = server
        .post_json("/tokenize", &json!({"messages": messages}))
        .await;
    assert_eq!(status, 200, "{what}: {tokens}");
    let (status, text) = server
        .post_json("/detokenize", &json!({"tokens": tokens["tokens"]}))
        .await;
    assert_eq!(status, 200, "{what}: {text}");
    assert_eq!(text["prompt"], rendered, "{what}");
    let (status, body) = server
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": messages, "max_tokens": 6, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{what}: {body}");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert_eq!(body["usage"]["prompt_tokens"], tokens["count"], "{what}");
    let answers = Answers {
        chat_text: body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        chat_prompt_tokens: body["usage"]["prompt_tokens"].as_u64().unwrap(),
    };
    server.stop().await;
    answers
}

#[tokio::test]
async fn both_moe_families_serve_from_safetensors_and_gguf() {
    // `/version` names the family the same way from either file (a GGUF `llama` with
    // `expert_count` is Mixtral).
    let families = [
        ("mixtral", "mixtral", "<s>[INST] what is 2+2? [/INST]"),
        (
            "qwen3moe",
            "qwen3_moe",
            "<|im_start|>user\nwhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        ),
    ];
    for (name, architecture, rendered) in families {
        let dir = fixture(name);
        let from_hf = serves(name, &dir, architecture, rendered).await;
        // The GGUF alone in a directory: its own tokenizer metadata and template, not the
        // tokenizer.json that sits beside it in the fixture.
        let alone = tempfile::tempdir().unwrap();
        let gguf = alone.path().join("model.gguf");
        std::fs::copy(dir.join("model.gguf"), &gguf).unwrap();
        let from_gguf = serves(name, &gguf, architecture, rendered).await;
        assert_eq!(from_hf.chat_prompt_tokens, from_gguf.chat_prompt_tokens);
        assert_eq!(
            from_hf.chat_text, from_gguf.chat_text,
            "{name}: the same f32 weights answer alike from safetensors and GGUF"
        );
    }
}
