//! The real binary: `metrum serve` on port 0, SIGTERM mid-stream, the stream still completes,
//! new connections are refused, and the process exits 0.

mod common;

use common::{SseReader, completion_body, stream_finish};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_streams_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    metrum_engine::model::fixture::write_tiny_llama_fixture(dir.path(), 7).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_metrum"))
        .args([
            "serve",
            "--port",
            "0",
            "--threads",
            "1",
            "--num-kv-blocks",
            "256",
        ])
        .arg("--model")
        .arg(dir.path())
        .env("RUST_LOG", "info,metrum_server=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let log_reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut log = Vec::new();
    let addr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no listening line; log so far: {log:#?}"));
        log.push(line.clone());
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = client.get(format!("http://{addr}/health")).send().await;
        if ok.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let models: Value = client
        .get(format!("http://{addr}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let max_tokens = (models["data"][0]["max_model_len"].as_u64().unwrap() - 16).min(300);
    let mut body = completion_body("drain me", max_tokens);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = client
        .post(format!("http://{addr}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(response);
    let mut chunks: Vec<Value> = Vec::new();
    for _ in 0..2 {
        chunks.push(serde_json::from_str(&reader.next_data().await.unwrap()).unwrap());
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // New connections are refused while the stream drains.
    let refused_by = Instant::now() + Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(&addr).await.is_err() {
            break;
        }
        assert!(
            Instant::now() < refused_by,
            "the listener stayed open after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut done = false;
    while let Some(data) = reader.next_data().await {
        if data == "[DONE]" {
            done = true;
        } else {
            chunks.push(serde_json::from_str(&data).unwrap());
        }
    }
    assert!(done, "the in-flight stream completed: {:?}", chunks.last());
    assert_eq!(stream_finish(&chunks, 0).as_deref(), Some("length"));
    assert_eq!(
        chunks.last().unwrap()["usage"]["completion_tokens"],
        max_tokens
    );

    let exit_deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > exit_deadline {
            let _ = child.kill();
            panic!("the server did not exit after draining");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0), "exit code after a graceful drain");
    // The request really was in flight when the signal came: it finished after SIGTERM.
    log_reader.join().unwrap();
    log.extend(lines.try_iter());
    let position = |needle: &str| log.iter().position(|l| l.contains(needle));
    let signalled = position("SIGTERM received").expect("the signal is logged");
    let finished = position("request finished").expect("the request is logged");
    assert!(
        signalled < finished,
        "finished only after the signal: {log:#?}"
    );
}
