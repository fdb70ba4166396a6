//! Connection and load behaviour: client disconnects (streaming and not), backpressure (429),
//! the API key, the header timeout, TCP_NODELAY and health while draining.

mod common;

use common::{SseReader, TestServer, completion_body, metric_value, tiny_model};
use metrum_engine::handle::EngineStatus;
use metrum_server::ServerOptions;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn long_stream_body(tokens: u64) -> Value {
    let mut body = completion_body("a long story", tokens);
    body["stream"] = json!(true);
    body
}

/// Room for a long generation in the fixture's context.
fn long_len(server: &TestServer) -> u64 {
    (server.engine.model_info().unwrap().max_model_len as u64 - 16).min(400)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_a_stream_frees_its_blocks() {
    let server = TestServer::start(tiny_model()).await;
    let total = server.engine.stats().total_blocks;
    let response = server
        .post("/v1/completions", &long_stream_body(long_len(&server)))
        .await;
    let mut reader = SseReader::new(response);
    for _ in 0..3 {
        let data = reader.next_data().await.unwrap();
        assert!(data.contains("\"text\""), "{data}");
    }
    let busy = server.engine.stats();
    assert!(
        busy.free_blocks < total,
        "the running request holds blocks: {busy:?}"
    );
    drop(reader);
    let started = Instant::now();
    assert!(
        server.wait_idle().await,
        "blocks freed after the disconnect: {:?}",
        server.engine.stats()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "aborted promptly"
    );
    let (_, metrics) = server.get_text("/metrics").await;
    let aborted = metric_value(&metrics, r#"metrum_requests_total{finish_reason="abort"}"#);
    assert_eq!(
        aborted,
        Some(1.0),
        "the abort is counted as finish_reason=abort:\n{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_a_non_streaming_request_aborts_it_at_once() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start(tiny_model()).await;
    let body = completion_body("a long story", long_len(&server)).to_string();
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body.as_bytes()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.engine.stats().running == 0 {
        assert!(Instant::now() < deadline, "the request never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(tcp);
    let started = Instant::now();
    assert!(
        server.wait_idle().await,
        "blocks freed after the disconnect: {:?}",
        server.engine.stats()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "aborted promptly, not run to the end: {:?}",
        started.elapsed()
    );
    let (_, metrics) = server.get_text("/metrics").await;
    let count = |reason: &str| {
        let series = format!("metrum_requests_total{{finish_reason=\"{reason}\"}}");
        metric_value(&metrics, &series)
    };
    assert_eq!(count("abort"), Some(1.0), "{metrics}");
    assert_eq!(count("length"), Some(0.0), "it did not run to max_tokens");
    assert_eq!(
        metric_value(&metrics, "metrum_kv_cache_usage_ratio"),
        Some(0.0),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_connections_have_tcp_nodelay() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move { tokio::net::TcpStream::connect(addr).await });
    let (stream, _) = metrum_server::accept(&listener)
        .await
        .expect("a connection");
    assert!(stream.nodelay().unwrap(), "Nagle must not delay SSE frames");
    client.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_429_with_retry_after_and_recovers() {
    let mut model = tiny_model();
    model.config.max_num_seqs = 1;
    model.config.max_waiting_requests = 1;
    // The engine's own queue limit answers here (the server's limit is far above it).
    let server = TestServer::start(model).await;
    let len = long_len(&server);
    let mut first = SseReader::new(server.post("/v1/completions", &long_stream_body(len)).await);
    first.next_data().await.unwrap();
    let second = server.post("/v1/completions", &long_stream_body(len)).await;
    assert_eq!(second.status(), 200, "one may wait");
    let third = server
        .post("/v1/completions", &completion_body("x", 2))
        .await;
    assert_eq!(third.status(), 429);
    assert!(
        third.headers().get("retry-after").is_some(),
        "Retry-After is set"
    );
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    drop(first);
    drop(second);
    assert!(server.wait_idle().await);
    let (status, _) = server
        .post_json("/v1/completions", &completion_body("x", 2))
        .await;
    assert_eq!(status, 200, "served again once the queue drained");
    server.stop().await;

    // The server's own bound (max_in_flight) answers before anything is buffered.
    let options = ServerOptions {
        max_in_flight: 1,
        ..ServerOptions::default()
    };
    let server = TestServer::start_with(tiny_model(), options).await;
    let mut held = SseReader::new(server.post("/v1/completions", &long_stream_body(len)).await);
    held.next_data().await.unwrap();
    let resp = server
        .post("/v1/completions", &completion_body("x", 2))
        .await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    let mut two = completion_body("x", 2);
    two["n"] = json!(2);
    drop(held);
    assert!(server.wait_idle().await);
    let (status, _) = server.post_json("/v1/completions", &two).await;
    assert_eq!(status, 429, "n = 2 needs two slots");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_v1_routes_only() {
    let options = ServerOptions {
        api_key: Some("s3cret".into()),
        ..ServerOptions::default()
    };
    let server = TestServer::start_with(tiny_model(), options).await;
    let models = server.url("/v1/models");
    let missing = server.client.get(&models).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let wrong = server
        .client
        .get(&models)
        .bearer_auth("s3creT")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = server
        .client
        .get(&models)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let completion = server
        .client
        .post(server.url("/v1/completions"))
        .json(&completion_body("x", 2))
        .send()
        .await
        .unwrap();
    assert_eq!(completion.status(), 401);
    let completion = server
        .client
        .post(server.url("/v1/completions"))
        .bearer_auth("s3cret")
        .json(&completion_body("x", 2))
        .send()
        .await
        .unwrap();
    assert_eq!(completion.status(), 200);
    assert_eq!(
        server.get_text("/health").await.0,
        200,
        "/health stays open"
    );
    assert_eq!(
        server.get_text("/metrics").await.0,
        200,
        "/metrics stays open"
    );
    server.stop().await;
}

/// On tokio's paused clock: the header timeout is a tokio timer (hyper's `TokioTimer`), so the
/// clock jumps to it as soon as the server has nothing else to do, and the cut-off is checked
/// to come exactly at the configured time, not merely "within a few seconds" of wall time.
#[tokio::test(start_paused = true)]
async fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let header_timeout = Duration::from_millis(300);
    let options = ServerOptions {
        header_timeout,
        ..ServerOptions::default()
    };
    let server = TestServer::start_with(tiny_model(), options).await;
    // Before connecting: the server's timer cannot start earlier than this.
    let started = tokio::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    // The server either closes (0 bytes) or answers 408 and closes.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection stayed open");
    let closed_after = started.elapsed();
    assert!(
        closed_after >= header_timeout && closed_after < 2 * header_timeout,
        "closed after {closed_after:?}"
    );
    // A prompt client is unaffected. (A fresh client: the harness's pooled connection sat idle
    // past the same timeout and is being closed right now, which is the point of the timeout.)
    let fresh = reqwest::Client::new();
    let health = fresh.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_draining_and_new_work_is_refused() {
    let server = TestServer::start(tiny_model()).await;
    server.engine.drain();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = server.get_text("/health").await;
        if status == 503 {
            assert!(body.contains("draining"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "health never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = server
        .post_json("/v1/completions", &completion_body("x", 2))
        .await;
    assert_eq!(status, 503, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_loading_then_200() {
    // The default model takes long enough to load to be seen loading; the tiny fixture loads
    // before the first probe returns, so it cannot show the window.
    let Some(model) = common::default_model() else {
        return;
    };
    let server = TestServer::start_loading(model, ServerOptions::default()).await;
    let mut saw_loading = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let before = server.engine.status();
        let (status, body) = server.get_text("/health").await;
        let after = server.engine.status();
        if before == EngineStatus::Loading && after == EngineStatus::Loading {
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("loading"), "{body}");
            let (status, _) = server
                .post_json("/v1/completions", &completion_body("x", 2))
                .await;
            // The model may finish loading while this request is in flight (then 200 is
            // right); only a request that began and ended during loading must get 503.
            if server.engine.status() == EngineStatus::Loading {
                assert_eq!(status, 503, "generation waits for the model");
            }
            saw_loading = true;
        }
        if after == EngineStatus::Ready && status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never became ready: {after:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(saw_loading, "the loading window was never observed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_when_the_model_fails_to_load() {
    let mut model = tiny_model();
    model.config.model = Some("/nonexistent/model/dir".into());
    let server = TestServer::start_loading(model, ServerOptions::default()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(server.engine.status(), EngineStatus::Failed(_)) {
        assert!(Instant::now() < deadline, "the load never failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = server.get_text("/health").await;
    assert_eq!(status, 503);
    assert!(body.contains("failed"), "{body}");
    server.stop().await;
}
