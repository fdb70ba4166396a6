//! A real, tiny OpenAI-compatible server on 127.0.0.1:0 with scripted timings, for the
//! load generator's tests. It speaks the same wire format Metrum does: `/v1/models`,
//! `/tokenize` + `/detokenize` (vLLM shape, word-level tokenizer), `/health`, `/version`,
//! and a streaming `/v1/completions` whose final usage chunk carries a `metrum` timing
//! object built with metrum-metrics.
//!
//! What a completion does is chosen by its prompt: a prompt `script:NAME` runs that script
//! (see [`Script`]), anything else runs the server's default [`Mode`].

#![allow(dead_code)]

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use metrum_bench::sse::encode_event;
use metrum_bench::tokenizer::TextTokenizer;
use metrum_bench::tokenizer::test_support::word_tokenizer;
use metrum_core::time::MonotonicClock;
use metrum_core::{FinishReason, RequestId};
use metrum_metrics::{RequestShape, RequestTimingReport, SloConfig, TimelineBuilder};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// What a completion without a script does.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// First token after `ttft`, then one token per chunk every `gap`.
    Steady { ttft: Duration, gap: Duration },
    /// One worker serving requests in arrival order, `service` each (capacity 1/service
    /// QPS), then tokens every 2 ms: above that rate the queue, and TTFT, grow without bound.
    Queue { service: Duration },
}

/// Which tokenizer endpoints the fake offers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TokenizeApi {
    /// `/tokenize` + `/detokenize` (vLLM and Metrum).
    Vllm,
    /// `/extras/tokenize` + `/extras/detokenize` (llama-cpp-python).
    LlamaCppPython,
    /// None: the load generator needs `--tokenizer`.
    None,
}

/// Named behaviours, selected by a prompt `script:NAME`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Script {
    /// Chunks "Hello" at 100 ms, " big world" (2 tokens) at 150 ms, " !" at 200 ms; usage 4.
    Burst,
    /// HTTP 500 before any byte of stream.
    Http500,
    /// One token, then the connection closes without `[DONE]`.
    Drop,
    /// Never answers (the client's timeout must fire).
    Hang,
    /// A well-formed stream with no token at all.
    Zero,
    /// An `error` object in the middle of the stream.
    ErrorChunk,
    /// 429 + Retry-After, as a server's admission control answers.
    Refused,
}

impl Script {
    fn parse(prompt: &str) -> Option<Self> {
        match prompt.strip_prefix("script:")?.trim() {
            "burst" => Some(Script::Burst),
            "500" => Some(Script::Http500),
            "drop" => Some(Script::Drop),
            "hang" => Some(Script::Hang),
            "zero" => Some(Script::Zero),
            "error" => Some(Script::ErrorChunk),
            "429" => Some(Script::Refused),
            _ => None,
        }
    }
}

struct Shared {
    mode: Mode,
    tokenizer: TextTokenizer,
    clock: MonotonicClock,
    /// Receipt time of every completion request, in arrival order.
    arrivals: Mutex<Vec<Instant>>,
    /// When the [`Mode::Queue`] worker is next free.
    free_at: tokio::sync::Mutex<tokio::time::Instant>,
    next_id: Mutex<u64>,
}

#[derive(Clone)]
pub struct FakeServer {
    pub base_url: String,
    shared: Arc<Shared>,
}

impl FakeServer {
    pub async fn start(mode: Mode) -> FakeServer {
        Self::start_with(mode, TokenizeApi::Vllm).await
    }

    pub async fn start_with(mode: Mode, api: TokenizeApi) -> FakeServer {
        let shared = Arc::new(Shared {
            mode,
            tokenizer: word_tokenizer().expect("test tokenizer"),
            clock: MonotonicClock::new(),
            arrivals: Mutex::new(Vec::new()),
            free_at: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            next_id: Mutex::new(0),
        });
        let mut app = axum::Router::new();
        match api {
            TokenizeApi::Vllm => {
                app = app
                    .route("/tokenize", post(tokenize))
                    .route("/detokenize", post(detokenize));
            }
            TokenizeApi::LlamaCppPython => {
                app = app
                    .route("/extras/tokenize", post(extras_tokenize))
                    .route("/extras/detokenize", post(extras_detokenize));
            }
            TokenizeApi::None => {}
        }
        let app = app
            .route("/health", get(|| async { "ok" }))
            .route(
                "/version",
                get(|| async { Json(json!({"version": "fake-0"})) }),
            )
            .route(
                "/v1/models",
                get(|| async {
                    Json(json!({"data": [{"id": "fake-model", "max_model_len": 4096}]}))
                }),
            )
            .route("/v1/completions", post(completions))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Without TCP_NODELAY, Nagle's algorithm and the client's delayed ACK hold small
        // SSE chunks back ~40 ms: the stream would measure the TCP stack, not the script.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeServer {
            base_url: format!("http://{addr}"),
            shared,
        }
    }

    /// Receipt times of the completion requests so far.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.shared.arrivals.lock().expect("arrivals").clone()
    }
}

async fn tokenize(State(s): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let prompt = body["prompt"].as_str().unwrap_or_default();
    match s.tokenizer.encode(prompt).await {
        Ok(tokens) => Json(json!({"count": tokens.len(), "max_model_len": 4096, "tokens": tokens}))
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn detokenize(State(s): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let ids: Vec<u32> = serde_json::from_value(body["tokens"].clone()).unwrap_or_default();
    match s.tokenizer.decode(&ids).await {
        Ok(prompt) => Json(json!({"prompt": prompt})).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn extras_tokenize(State(s): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let input = body["input"].as_str().unwrap_or_default();
    match s.tokenizer.encode(input).await {
        Ok(tokens) => Json(json!({"tokens": tokens})).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn extras_detokenize(State(s): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let ids: Vec<u32> = serde_json::from_value(body["tokens"].clone()).unwrap_or_default();
    match s.tokenizer.decode(&ids).await {
        Ok(text) => Json(json!({"text": text})).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

fn chunk(text: &str) -> Bytes {
    Bytes::from(encode_event(&json!({"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": null}]}).to_string()))
}

/// Streams `(delay since previous, text, tokens)` steps, then usage (with a server timing
/// report) and `[DONE]`. `close_early` stops after the first step without `[DONE]`.
fn stream(
    shared: Arc<Shared>,
    prompt_tokens: u32,
    steps: Vec<(Duration, String, u32)>,
    close_early: bool,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let arrival = shared.clock.now();
        let id = {
            let mut next = shared.next_id.lock().expect("id");
            *next += 1;
            *next
        };
        let shape = RequestShape {
            prompt_tokens,
            max_tokens: None,
            slo: metrum_core::RequestSlo::SERVER,
        };
        let mut timeline = TimelineBuilder::new(RequestId(id), arrival, shape);
        let _ = timeline.scheduled(arrival);
        let mut total = 0;
        for (delay, text, tokens) in steps {
            tokio::time::sleep(delay).await;
            let _ = timeline.tokens(shared.clock.now(), tokens);
            total += u64::from(tokens);
            if tx.send(Ok(chunk(&text))).await.is_err() {
                return;
            }
            if close_early {
                return;
            }
        }
        let _ = timeline.finished(shared.clock.now(), FinishReason::Length);
        let report = RequestTimingReport::from_timeline(timeline.timeline(), &SloConfig::default());
        let usage = json!({"choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": total}, "metrum": report});
        let _ = tx
            .send(Ok(Bytes::from(encode_event(&usage.to_string()))))
            .await;
        let _ = tx.send(Ok(Bytes::from(encode_event("[DONE]")))).await;
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}

async fn completions(State(s): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    s.arrivals.lock().expect("arrivals").push(Instant::now());
    let prompt = body["prompt"].as_str().unwrap_or_default().to_string();
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(1) as u32;
    let prompt_tokens = s
        .tokenizer
        .encode(&prompt)
        .await
        .map_or(0, |t| t.len() as u32);
    let ms = Duration::from_millis;
    let tok = |n: u32, first: Duration, gap: Duration| -> Vec<(Duration, String, u32)> {
        (0..n)
            .map(|i| (if i == 0 { first } else { gap }, " tok".to_string(), 1))
            .collect()
    };
    match Script::parse(&prompt) {
        Some(Script::Burst) => {
            let steps = vec![
                (ms(100), "Hello".into(), 1),
                (ms(50), " big world".into(), 2),
                (ms(50), " !".into(), 1),
            ];
            stream(s.clone(), prompt_tokens, steps, false)
        }
        Some(Script::Http500) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "scripted failure").into_response()
        }
        Some(Script::Drop) => stream(
            s.clone(),
            prompt_tokens,
            tok(max_tokens, ms(10), ms(5)),
            true,
        ),
        Some(Script::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Some(Script::Zero) => stream(s.clone(), prompt_tokens, Vec::new(), false),
        Some(Script::Refused) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"error": {"message": "predicted to miss", "type": "rate_limit_error"}})),
        )
            .into_response(),
        Some(Script::ErrorChunk) => {
            let body = format!(
                "{}{}",
                encode_event(&json!({"choices": [{"text": " tok"}]}).to_string()),
                encode_event(&json!({"error": {"message": "scripted engine failure"}}).to_string())
            );
            ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
        }
        None => match s.mode {
            Mode::Steady { ttft, gap } => {
                stream(s.clone(), prompt_tokens, tok(max_tokens, ttft, gap), false)
            }
            Mode::Queue { service } => {
                let done = {
                    let mut free_at = s.free_at.lock().await;
                    let start = (*free_at).max(tokio::time::Instant::now());
                    *free_at = start + service;
                    *free_at
                };
                let first = done.saturating_duration_since(tokio::time::Instant::now());
                stream(
                    s.clone(),
                    prompt_tokens,
                    tok(max_tokens, first, ms(2)),
                    false,
                )
            }
        },
    }
}

/// A unique scratch directory under the system temp dir.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("metrum-bench-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}
