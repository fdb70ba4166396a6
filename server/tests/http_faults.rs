//! Engine failures over real HTTP, through the test-only fault hook (the engine's
//! `fault-injection` feature, enabled by this crate's dev-dependencies only): a forward pass
//! that panics or fails reaches every in-flight client as an error (a stream: one error event,
//! then `[DONE]`; a plain request: a 500), `/health` turns 503 with the cause, new work is
//! refused, and `run` returns an error once the open connections are done, which makes
//! `metrum serve` exit non-zero for its supervisor.

mod common;

use common::{SseReader, TestServer, completion_body, metric_value, tiny_model};
use metrum_engine::EngineError;
use metrum_engine::executor::Fault;
use metrum_server::ServerOptions;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const STREAMS: usize = 3;
const PLAIN: usize = 2;

/// A client without a connection pool: after the failure the server closes idle keep-alive
/// connections, and a pooled one could be picked just as it closes.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Sends a request on a fresh connection, again if the connection was closed before an answer:
/// a connection accepted in the instant before the server saw the failure is closed unanswered
/// by the graceful shutdown of the connections open at that moment (clients retry those).
async fn retry_connect(
    request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
) -> reqwest::Response {
    let client = fresh_client();
    for _ in 0..20 {
        match request(&client).send().await {
            Ok(response) => return response,
            Err(err) if err.is_request() || err.is_connect() => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(err) => panic!("{err}"),
        }
    }
    panic!("no answer after 20 tries");
}

/// Opens a request whose body never arrives, and returns once the handler is reading it (the
/// server answered `100 Continue`). It keeps the failure drain open until dropped.
async fn request_stuck_in_its_body(server: &TestServer) -> BufReader<tokio::net::TcpStream> {
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 100\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut reader = BufReader::new(tcp);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line:?}");
    reader
}

async fn a_failing_engine_fails_every_request_then_stops_the_server(fault: Fault, cause: &str) {
    let options = ServerOptions {
        shutdown_grace: Duration::from_secs(30),
        ..ServerOptions::default()
    };
    let server = TestServer::start_with(tiny_model(), options).await;
    let len = (server.engine.model_info().unwrap().max_model_len as u64 - 16).min(400);

    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let mut body = completion_body("a long story", len);
        body["stream"] = json!(true);
        let mut reader = SseReader::new(server.post("/v1/completions", &body).await);
        assert!(reader.next_data().await.unwrap().contains("\"text\""));
        streams.push(reader);
    }
    let plain: Vec<_> = (0..PLAIN)
        .map(|_| {
            let (client, url) = (fresh_client(), server.url("/v1/completions"));
            let body = completion_body("another long story", len);
            tokio::spawn(async move {
                let response = client.post(url).json(&body).send().await.unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    server.wait_in_flight(STREAMS + PLAIN).await;
    let stuck = request_stuck_in_its_body(&server).await;

    server.engine.inject_fault(fault);

    for mut reader in streams {
        let mut events = Vec::new();
        while let Some(data) = reader.next_data().await {
            events.push(data);
        }
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{events:?}"
        );
        let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(error["error"]["type"], "server_error", "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(cause), "{message}");
    }
    for request in plain {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 500, "{body}");
        assert_eq!(body["error"]["code"], "internal_error");
        assert!(body["error"]["message"].as_str().unwrap().contains(cause));
    }

    // Still answering while the stuck request holds the drain open: unhealthy, and refusing.
    let health = retry_connect(|c| c.get(server.url("/health"))).await;
    assert_eq!(health.status(), 503);
    let status: Value = health.json().await.unwrap();
    let status = status["status"].as_str().unwrap();
    assert!(
        status.starts_with("failed") && status.contains(cause),
        "{status}"
    );
    let refused = retry_connect(|c| {
        c.post(server.url("/v1/completions"))
            .json(&completion_body("x", 2))
    })
    .await;
    assert_eq!(refused.status(), 500);
    let metrics = retry_connect(|c| c.get(server.url("/metrics")))
        .await
        .text()
        .await
        .unwrap();
    let errors = metric_value(&metrics, r#"metrum_requests_total{finish_reason="error"}"#);
    assert_eq!(errors, Some((STREAMS + PLAIN) as f64), "{metrics}");

    drop(stuck);
    let outcome = server.finished(Duration::from_secs(10)).await;
    let err = outcome.expect_err("a failed engine makes run() fail");
    assert!(err.to_string().contains(cause), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_forward_pass_fails_every_request_and_stops_the_server() {
    a_failing_engine_fails_every_request_then_stops_the_server(
        Fault::Panic,
        "injected fault: the forward pass panicked",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_forward_pass_fails_every_request_and_stops_the_server() {
    // The engine's typed error reaches clients, `/health` and `run` through its Display.
    let cause = EngineError::Fault.to_string();
    assert_eq!(cause, "injected fault: the forward pass failed");
    a_failing_engine_fails_every_request_then_stops_the_server(Fault::ForwardError, &cause).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_failure_stops_the_server_at_once() {
    let server = TestServer::start(tiny_model()).await;
    server.engine.inject_fault(Fault::Panic);
    // The fault strikes on the next forward pass; this request is the one that runs it.
    let (status, body) = server
        .post_json("/v1/completions", &completion_body("x", 4))
        .await;
    assert_eq!(status, 500, "{body}");
    let outcome = server.finished(Duration::from_secs(10)).await;
    assert!(outcome.is_err());
}
