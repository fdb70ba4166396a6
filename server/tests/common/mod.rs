//! Shared harness for the HTTP tests: real engine, real server on `127.0.0.1:0`, real HTTP.
#![allow(dead_code)] // each test binary uses a different part of the harness

use metrum_engine::config::{EngineConfig, KvCacheSize};
use metrum_engine::handle::{EngineHandle, EngineStatus};
use metrum_server::ServerOptions;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A model the tests can run: its engine config plus whatever keeps its files alive.
pub struct TestModel {
    pub config: EngineConfig,
    _dir: Option<tempfile::TempDir>,
}

/// The tiny random llama fixture (safetensors + tokenizer), written to a temp dir.
pub fn tiny_model() -> TestModel {
    let dir = tempfile::tempdir().expect("temp dir");
    metrum_engine::model::fixture::write_tiny_llama_fixture(dir.path(), 7)
        .expect("write the tiny llama fixture");
    let config = EngineConfig {
        model: Some(dir.path().to_string_lossy().into_owned()),
        kv_cache: KvCacheSize::Blocks(256),
        max_num_seqs: 32,
        max_num_batched_tokens: 256,
        threads: Some(1),
        ..EngineConfig::default()
    };
    TestModel {
        config,
        _dir: Some(dir),
    }
}

/// The default model from the local cache. `None` (with a message) when it is missing, unless
/// `CI=true`, where a missing model fails the test loudly.
pub fn default_model() -> Option<TestModel> {
    let path = default_model_path();
    if !path.exists() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "CI=true but the default model is missing at {}",
                path.display()
            );
        }
        eprintln!(
            "SKIPPED: default model not cached at {} (run `metrum fetch`)",
            path.display()
        );
        return None;
    }
    let config = EngineConfig {
        model: None,
        kv_cache: KvCacheSize::Blocks(512),
        max_num_seqs: 16,
        max_num_batched_tokens: 256,
        max_model_len: Some(2048),
        ..EngineConfig::default()
    };
    Some(TestModel { config, _dir: None })
}

fn default_model_path() -> PathBuf {
    let cache = std::env::var_os("METRUM_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/metrum")))
        .unwrap_or_else(|| PathBuf::from(".cache/metrum"));
    cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// A running server. Dropping it stops the server (and so the engine).
pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: EngineHandle,
    pub client: reqwest::Client,
    config: Value,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _model: TestModel,
}

impl TestServer {
    pub async fn start(model: TestModel) -> TestServer {
        Self::start_with(model, ServerOptions::default()).await
    }

    /// Starts the engine and the server, and waits until /health says ready.
    pub async fn start_with(model: TestModel, options: ServerOptions) -> TestServer {
        let server = Self::start_loading(model, options).await;
        server.wait_ready().await;
        server
    }

    /// Starts the engine and the server without waiting for the model to load.
    pub async fn start_loading(model: TestModel, mut options: ServerOptions) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        if options.engine_config.is_null() {
            options.engine_config = serde_json::to_value(&model.config).unwrap();
        }
        let config = serde_json::to_value(&model.config).unwrap();
        let engine = metrum_engine::engine_loop::spawn(model.config.clone())
            .expect("the engine configuration is valid");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(metrum_server::run(
            listener,
            engine.clone(),
            options,
            async {
                let _ = stopped.await;
            },
        ));
        TestServer {
            addr,
            engine,
            client: reqwest::Client::new(),
            config,
            stop: Some(stop),
            task: Some(task),
            _model: model,
        }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let EngineStatus::Failed(why) = self.engine.status() {
                panic!("the engine failed to load: {why}");
            }
            let health = self.client.get(self.url("/health")).send().await;
            if health.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "the server never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The engine configuration the server was started with, as JSON.
    pub fn engine_config(&self) -> &Value {
        &self.config
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs and returns (status, JSON body).
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self.post(path, body).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Stops the server and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Waits up to `within` for `run` to return on its own (without being asked to stop), and
    /// returns what it returned.
    pub async fn finished(mut self, within: Duration) -> std::io::Result<()> {
        let task = self.task.take().expect("the server task is still held");
        tokio::time::timeout(within, task)
            .await
            .expect("the server stopped by itself in time")
            .expect("the server task did not panic")
    }

    /// Waits until `running + waiting` engine requests are in flight (all admitted).
    pub async fn wait_in_flight(&self, requests: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.engine.stats();
            if s.running + s.waiting >= requests {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never {requests} in flight: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the engine has no running or waiting request and every block is free.
    pub async fn wait_idle(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let s = self.engine.stats();
            if s.running == 0 && s.waiting == 0 && s.free_blocks == s.total_blocks {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Reads a `text/event-stream` body one `data:` payload at a time.
pub struct SseReader {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        let ct = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        SseReader {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next event's data (`[DONE]` included); `None` when the body ends.
    pub async fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(event).expect("SSE bytes must be valid UTF-8");
                let data = text
                    .trim_end()
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("every event is a data line, got {text:?}"));
                return Some(data.to_string());
            }
            match self.response.chunk().await.unwrap() {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => {
                    assert!(self.buffer.is_empty(), "trailing bytes: {:?}", self.buffer);
                    return None;
                }
            }
        }
    }
}

/// A whole stream: the JSON chunks before `[DONE]`, and whether `[DONE]` came last.
pub async fn read_stream(response: reqwest::Response) -> (Vec<Value>, bool) {
    let mut reader = SseReader::new(response);
    let mut chunks = Vec::new();
    let mut done = false;
    while let Some(data) = reader.next_data().await {
        assert!(!done, "nothing may follow [DONE], got {data}");
        if data == "[DONE]" {
            done = true;
        } else {
            chunks.push(serde_json::from_str(&data).expect("chunk is JSON"));
        }
    }
    (chunks, done)
}

/// The text of choice `index` across completion chunks (`text`) or chat chunks (`delta.content`).
pub fn stream_text(chunks: &[Value], index: u64) -> String {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter(|choice| choice["index"] == index)
        .filter_map(|choice| {
            choice["text"]
                .as_str()
                .or_else(|| choice["delta"]["content"].as_str())
                .map(str::to_string)
        })
        .collect()
}

/// The finish reason of choice `index` in a stream.
pub fn stream_finish(chunks: &[Value], index: u64) -> Option<String> {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter(|choice| choice["index"] == index)
        .find_map(|choice| choice["finish_reason"].as_str().map(str::to_string))
}

/// A completion body; greedy, with a seed, a fixed length and no early EOS.
pub fn completion_body(prompt: &str, max_tokens: u64) -> Value {
    json!({
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": 1,
        "ignore_eos": true,
    })
}

/// Reads a Prometheus sample value by its full series name (`name{labels}`), if present.
pub fn metric_value(text: &str, series_prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

impl TestModel {
    /// A model whose files live elsewhere (committed fixtures): nothing to keep alive.
    pub fn external(config: EngineConfig) -> TestModel {
        TestModel { config, _dir: None }
    }

    /// A committed model fixture (a safetensors directory or a GGUF file) with a small,
    /// one-thread engine: what the family tests serve.
    pub fn fixture_at(path: &std::path::Path) -> TestModel {
        Self::external(EngineConfig {
            model: Some(path.to_string_lossy().into_owned()),
            kv_cache: KvCacheSize::Blocks(128),
            max_num_seqs: 8,
            max_num_batched_tokens: 256,
            threads: Some(1),
            ..EngineConfig::default()
        })
    }
}
