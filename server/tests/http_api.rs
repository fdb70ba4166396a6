//! The API's happy paths over real HTTP, each scenario run against the tiny fixture model and
//! against the default model (skipped with a message when it is not cached, fatal under CI).

mod common;

use common::{TestModel, TestServer, completion_body, read_stream, stream_finish, stream_text};
use serde_json::{Value, json};

/// One `#[tokio::test]` per model for each scenario function.
macro_rules! on_both_models {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tiny_fixture() {
                super::$scenario(super::common::tiny_model()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn default_model() {
                if let Some(model) = super::common::default_model() {
                    super::$scenario(model).await
                }
            }
        }
    )*};
}

on_both_models!(
    completion_stream_equals_non_stream_and_usage_is_right,
    chat_stream_equals_non_stream_and_applies_the_template,
    sixteen_concurrent_streams_complete_and_greedy_is_batch_invariant,
    n_choices_token_prompts_and_logprobs,
    operational_endpoints_describe_the_server,
);

async fn prompt_tokens(server: &TestServer, body: Value) -> u64 {
    let (status, tokenized) = server.post_json("/tokenize", &body).await;
    assert_eq!(status, 200, "{tokenized}");
    tokenized["count"].as_u64().unwrap()
}

async fn completion_stream_equals_non_stream_and_usage_is_right(model: TestModel) {
    let server = TestServer::start(model).await;
    let mut body = json!({
        "prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0.8, "seed": 42,
        "ignore_eos": true, "top_k": 20,
    });
    let (status, whole) = server.post_json("/v1/completions", &body).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "text_completion");
    let text = whole["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    let expected_prompt = prompt_tokens(&server, json!({"prompt": "The quick brown fox"})).await;
    assert_eq!(whole["usage"]["prompt_tokens"], expected_prompt);
    assert_eq!(whole["usage"]["completion_tokens"], 12);
    assert_eq!(whole["usage"]["total_tokens"], expected_prompt + 12);
    assert!(
        whole["metrum"].is_object(),
        "the timing report rides along: {whole}"
    );

    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (chunks, done) = read_stream(server.post("/v1/completions", &body).await).await;
    assert!(done, "stream ends with [DONE]");
    assert_eq!(
        stream_text(&chunks, 0),
        text,
        "same seed, same text, streamed or not"
    );
    assert_eq!(stream_finish(&chunks, 0).as_deref(), Some("length"));
    let last = chunks.last().unwrap();
    assert_eq!(
        last["choices"].as_array().unwrap().len(),
        0,
        "usage chunk has no choices"
    );
    assert_eq!(last["usage"], whole["usage"]);
    assert!(
        last["metrum"].is_object(),
        "timing on the usage chunk: {last}"
    );
    server.stop().await;
}

async fn chat_stream_equals_non_stream_and_applies_the_template(model: TestModel) {
    let server = TestServer::start(model).await;
    let messages = json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say something."}
    ]);
    let mut body = json!({
        "messages": messages, "max_completion_tokens": 10, "temperature": 0.7, "seed": 5,
        "ignore_eos": true,
    });
    let (status, whole) = server.post_json("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let templated = prompt_tokens(&server, json!({"messages": messages})).await;
    assert_eq!(
        whole["usage"]["prompt_tokens"], templated,
        "prompt counted after the template"
    );
    assert_eq!(whole["usage"]["completion_tokens"], 10);
    assert!(whole["metrum"].is_object());

    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (chunks, done) = read_stream(server.post("/v1/chat/completions", &body).await).await;
    assert!(done);
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(stream_text(&chunks, 0), text);
    assert_eq!(stream_finish(&chunks, 0).as_deref(), Some("length"));
    assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);
    server.stop().await;
}

async fn sixteen_concurrent_streams_complete_and_greedy_is_batch_invariant(model: TestModel) {
    let server = TestServer::start(model).await;
    let greedy = completion_body("Once upon a time", 16);
    let (status, alone) = server.post_json("/v1/completions", &greedy).await;
    assert_eq!(status, 200, "{alone}");
    let alone_text = alone["choices"][0]["text"].as_str().unwrap().to_string();

    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut body = if i == 7 {
            greedy.clone()
        } else {
            json!({
                "prompt": format!("Request number {i} says"), "max_tokens": 8 + i,
                "temperature": 1.0, "seed": i, "ignore_eos": true,
            })
        };
        body["stream"] = json!(true);
        let request = server
            .client
            .post(server.url("/v1/completions"))
            .json(&body);
        tasks.push(tokio::spawn(async move {
            let (chunks, done) = read_stream(request.send().await.unwrap()).await;
            (i, chunks, done)
        }));
    }
    for task in tasks {
        let (i, chunks, done) = task.await.unwrap();
        assert!(done, "stream {i} completed");
        assert_eq!(
            stream_finish(&chunks, 0).as_deref(),
            Some("length"),
            "stream {i}"
        );
        if i == 7 {
            assert_eq!(
                stream_text(&chunks, 0),
                alone_text,
                "greedy alone == greedy in a batch"
            );
        }
    }
    assert!(server.wait_idle().await, "every block is free again");
    server.stop().await;
}

async fn n_choices_token_prompts_and_logprobs(model: TestModel) {
    let server = TestServer::start(model).await;
    let body = json!({
        "prompt": "abc", "n": 3, "max_tokens": 5, "temperature": 1.0, "seed": 3,
        "ignore_eos": true, "logprobs": 2,
    });
    let (status, whole) = server.post_json("/v1/completions", &body).await;
    assert_eq!(status, 200, "{whole}");
    let choices = whole["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        let lp = &choice["logprobs"];
        assert_eq!(lp["tokens"].as_array().unwrap().len(), 5);
        assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 5);
        assert!(lp["top_logprobs"][0].as_object().unwrap().len() <= 2);
        assert!(
            choice["metrum"].is_object(),
            "each choice has its own timing when n > 1"
        );
    }
    assert_eq!(whole["usage"]["completion_tokens"], 15);

    // A token-id prompt runs exactly like the text it encodes.
    let (_, tokenized) = server
        .post_json("/tokenize", &json!({"prompt": "hello there"}))
        .await;
    let ids = tokenized["tokens"].clone();
    let (_, by_text) = server
        .post_json("/v1/completions", &completion_body("hello there", 6))
        .await;
    let mut by_ids = completion_body("", 6);
    by_ids["prompt"] = ids.clone();
    let (status, by_ids) = server.post_json("/v1/completions", &by_ids).await;
    assert_eq!(status, 200, "{by_ids}");
    assert_eq!(by_ids["choices"][0]["text"], by_text["choices"][0]["text"]);
    let (_, detok) = server
        .post_json("/detokenize", &json!({"tokens": ids}))
        .await;
    assert_eq!(detok["prompt"], "hello there");

    let chat = json!({
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "logprobs": true,
        "top_logprobs": 2, "ignore_eos": true, "temperature": 0,
    });
    let (status, reply) = server.post_json("/v1/chat/completions", &chat).await;
    assert_eq!(status, 200, "{reply}");
    let content = reply["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(content.len(), 4);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    server.stop().await;
}

async fn operational_endpoints_describe_the_server(model: TestModel) {
    let server = TestServer::start(model).await;
    let info = server.engine.model_info().unwrap().clone();
    let (status, models) = server.get_text("/v1/models").await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], info.served_model_name);
    assert_eq!(models["data"][0]["max_model_len"], info.max_model_len);

    let (status, version) = server.get_text("/version").await;
    assert_eq!(status, 200);
    let version: Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(version["model"]["dtype"], info.dtype);
    assert_eq!(version["model"]["device"], info.device);
    assert!(version["scheduler"].is_object(), "{version}");
    let configured = server.engine_config()["max_num_seqs"].clone();
    assert_eq!(version["engine_config"]["max_num_seqs"], configured);

    let (status, health) = server.get_text("/health").await;
    assert_eq!((status, health.contains("ready")), (200, true));
    let (status, metrics) = server.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE"),
        "Prometheus text format: {metrics}"
    );

    // The model may be named explicitly; a body without a JSON content type is still JSON.
    let body = json!({"model": info.served_model_name, "prompt": "x", "max_tokens": 2});
    let resp = server
        .client
        .post(server.url("/v1/completions"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.stop().await;
}

/// `--kv-cache-dtype f16` on CPU: the same KV memory holds twice the blocks of f32, `/version`
/// says what the cache stores, and requests are served from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f16_kv_cache_holds_twice_the_blocks_and_serves() {
    use metrum_engine::config::{KvCacheDtype, KvCacheSize};
    let mut blocks = Vec::new();
    for dtype in [KvCacheDtype::F32, KvCacheDtype::F16] {
        let mut model = common::tiny_model();
        model.config.kv_cache = KvCacheSize::Bytes(4 << 20);
        model.config.kv_cache_dtype = dtype;
        let server = TestServer::start(model).await;
        let (status, version) = server.get_text("/version").await;
        assert_eq!(status, 200);
        let version: Value = serde_json::from_str(&version).unwrap();
        let stored = if dtype == KvCacheDtype::F16 {
            "f16"
        } else {
            "f32"
        };
        assert_eq!(version["scheduler"]["kv_cache_dtype"], stored, "{version}");
        assert_eq!(
            version["engine_config"]["kv_cache_dtype"], stored,
            "{version}"
        );
        blocks.push(version["scheduler"]["num_kv_blocks"].as_u64().unwrap());
        let (status, body) = server
            .post_json("/v1/completions", &completion_body("Hello there", 8))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["completion_tokens"], 8, "{body}");
        server.stop().await;
    }
    assert_eq!(blocks[1], 2 * blocks[0], "f32 then f16 blocks: {blocks:?}");
}
