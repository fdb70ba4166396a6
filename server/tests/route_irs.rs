//! `metrum route` over two real replicas (the tiny model, real HTTP): IRS keeps the flexible
//! class off the replica the scarce class depends on, least-loaded does not; streams pass
//! through whole; bad classes and dead replicas get OpenAI-style errors.

mod common;

use common::{TestServer, completion_body, read_stream};
use metrum_server::cli::route::RouteArgs;
use serde_json::Value;
use std::time::Duration;

/// Starts `metrum route` over `replicas` with classes scarce={0}, general={0,1}.
async fn start_router(replicas: Vec<String>, policy: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let args = RouteArgs {
        host: "127.0.0.1".into(),
        port: 0,
        replicas,
        classes: vec!["scarce=0".into(), "general=0+1".into()],
        policy: policy.into(),
        poll_interval: Duration::from_millis(50),
    };
    tokio::spawn(async move { args.serve(listener).await.unwrap() });
    format!("http://{addr}")
}

/// Sends a completion of `class` through the router; returns (status, replica, body).
async fn send(router: &str, class: &str, body: &Value) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(format!("{router}/v1/completions"))
        .header("x-metrum-class", class)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let replica = response
        .headers()
        .get("x-metrum-replica")
        .map(|v| v.to_str().unwrap().to_string());
    (status, replica, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irs_routes_flexible_work_away_from_the_scarce_replica() {
    let a = TestServer::start(common::tiny_model()).await;
    let b = TestServer::start(common::tiny_model()).await;
    let urls = vec![a.url(""), b.url("")];
    let irs = start_router(urls.clone(), "irs").await;
    let least = start_router(urls, "least-loaded").await;
    tokio::time::sleep(Duration::from_millis(200)).await; // first scrape of both replicas
    let body = completion_body("Hello there", 4);
    for _ in 0..3 {
        let (status, replica, answer) = send(&irs, "general", &body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            replica.as_deref(),
            Some("1"),
            "IRS keeps general off replica 0"
        );
        assert_eq!(answer["usage"]["completion_tokens"], 4);
    }
    let (_, replica, _) = send(&irs, "scarce", &body).await;
    assert_eq!(replica.as_deref(), Some("0"));
    // Least-loaded sees two idle replicas and takes the first: the scarce one.
    let (_, replica, _) = send(&least, "general", &body).await;
    assert_eq!(replica.as_deref(), Some("0"));

    // A stream comes through whole, ending in [DONE].
    let mut streamed = body.clone();
    streamed["stream"] = Value::Bool(true);
    let response = reqwest::Client::new()
        .post(format!("{irs}/v1/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (chunks, done) = read_stream(response).await;
    assert!(done && !chunks.is_empty(), "{chunks:?}");

    // An unknown class is the client's error, named.
    let (status, _, answer) = send(&irs, "gpu-only", &body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "x-metrum-class");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_is_a_503_not_a_hang() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }; // closed again: nothing listens there
    let a = TestServer::start(common::tiny_model()).await;
    let router = start_router(vec![dead, a.url("")], "round-robin").await;
    let (status, _, answer) = send(&router, "scarce", &completion_body("Hi", 2)).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{answer}"
    );
    a.stop().await;
}
