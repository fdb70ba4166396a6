//! The real binary: `metrum serve` on port 0, SIGTERM while requests are in flight (one
//! stream; then a loaded server with running and queued streams and plain requests). Every
//! request still completes in full, new connections are refused, and the process exits 0.

mod common;

use common::{SseReader, completion_body, metric_value, stream_finish};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `metrum serve` child process on the tiny fixture, with its log lines collected.
struct Served {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    log_reader: Option<std::thread::JoinHandle<()>>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(extra: &[&str]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        metrum_engine::model::fixture::write_tiny_llama_fixture(dir.path(), 7).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_metrum"))
            .args(["serve", "--port", "0", "--threads", "1"])
            .args(["--num-kv-blocks", "256"])
            .args(extra)
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
        let served = Served {
            child,
            addr,
            lines,
            log,
            log_reader: Some(log_reader),
            client: reqwest::Client::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = served.client.get(served.url("/health")).send().await;
            if ok.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        served
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn max_model_len(&self) -> u64 {
        let models: Value = self
            .client
            .get(self.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        models["data"][0]["max_model_len"].as_u64().unwrap()
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_value(&text, series).unwrap_or_else(|| panic!("no {series} in {text}"))
    }

    /// Sends SIGTERM and checks that the listener closes within 5 s.
    async fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let refused_by = Instant::now() + Duration::from_secs(5);
        loop {
            if tokio::net::TcpStream::connect(&self.addr).await.is_err() {
                break;
            }
            assert!(
                Instant::now() < refused_by,
                "the listener stayed open after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the process to exit; returns its exit code and the whole log.
    fn exit(mut self) -> (Option<i32>, Vec<String>) {
        let exit_deadline = Instant::now() + Duration::from_secs(30);
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            if Instant::now() > exit_deadline {
                let _ = self.child.kill();
                panic!("the server did not exit after draining");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.log_reader.take() {
            reader.join().unwrap();
        }
        self.log.extend(self.lines.try_iter());
        (code, std::mem::take(&mut self.log))
    }
}

/// Reads a whole stream; returns its chunks and whether `[DONE]` ended it.
async fn drain_stream(mut reader: SseReader, mut chunks: Vec<Value>) -> (Vec<Value>, bool) {
    let mut done = false;
    while let Some(data) = reader.next_data().await {
        if data == "[DONE]" {
            done = true;
        } else {
            chunks.push(serde_json::from_str(&data).unwrap());
        }
    }
    (chunks, done)
}

fn stream_body(max_tokens: u64) -> Value {
    let mut body = completion_body("drain me", max_tokens);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_streams_and_exits_zero() {
    let served = Served::start(&[]).await;
    let max_tokens = (served.max_model_len().await - 16).min(300);
    let response = served
        .client
        .post(served.url("/v1/completions"))
        .json(&stream_body(max_tokens))
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(response);
    let mut chunks: Vec<Value> = Vec::new();
    for _ in 0..2 {
        chunks.push(serde_json::from_str(&reader.next_data().await.unwrap()).unwrap());
    }
    served.terminate().await;

    let (chunks, done) = drain_stream(reader, chunks).await;
    assert!(done, "the in-flight stream completed: {:?}", chunks.last());
    assert_eq!(stream_finish(&chunks, 0).as_deref(), Some("length"));
    assert_eq!(
        chunks.last().unwrap()["usage"]["completion_tokens"],
        max_tokens
    );

    let (code, log) = served.exit();
    assert_eq!(code, Some(0), "exit code after a graceful drain");
    // The request really was in flight when the signal came: it finished after SIGTERM.
    let position = |needle: &str| log.iter().position(|l| l.contains(needle));
    let signalled = position("SIGTERM received").expect("the signal is logged");
    let finished = position("request finished").expect("the request is logged");
    assert!(
        signalled < finished,
        "finished only after the signal: {log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_running_and_queued_requests_then_exits_zero() {
    const STREAMS: usize = 6;
    const PLAIN: usize = 4;
    const MAX_TOKENS: u64 = 96;
    // Four run at a time, so most of the ten wait in the engine's queue when SIGTERM comes.
    let served = Served::start(&["--max-num-seqs", "4"]).await;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let response = served
            .client
            .post(served.url("/v1/completions"))
            .json(&stream_body(MAX_TOKENS))
            .send()
            .await
            .unwrap();
        streams.push(tokio::spawn(drain_stream(
            SseReader::new(response),
            Vec::new(),
        )));
    }
    let plain: Vec<_> = (0..PLAIN)
        .map(|i| {
            let request = served
                .client
                .post(served.url("/v1/completions"))
                .json(&completion_body(&format!("plain {i}"), MAX_TOKENS))
                .send();
            tokio::spawn(async move {
                let response = request.await.unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running = served.metric("metrum_requests_running").await;
        let waiting = served.metric("metrum_requests_waiting").await;
        if running + waiting >= (STREAMS + PLAIN) as f64 {
            assert!(waiting > 0.0, "some are queued: {running} running");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{running} running, {waiting} waiting"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    served.terminate().await;

    for stream in streams {
        let (chunks, done) = stream.await.unwrap();
        assert!(done, "every stream completed: {:?}", chunks.last());
        assert_eq!(stream_finish(&chunks, 0).as_deref(), Some("length"));
        assert_eq!(
            chunks.last().unwrap()["usage"]["completion_tokens"],
            MAX_TOKENS
        );
    }
    for request in plain {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["usage"]["completion_tokens"], MAX_TOKENS);
    }
    let (code, log) = served.exit();
    assert_eq!(code, Some(0), "exit code after a graceful drain under load");
    let signalled = log
        .iter()
        .position(|l| l.contains("SIGTERM received"))
        .expect("the signal is logged");
    let finished_after = log[signalled..]
        .iter()
        .filter(|l| l.contains("metrum_engine") && l.contains("request finished"))
        .count();
    assert!(
        finished_after >= STREAMS + PLAIN - 4,
        "at least the queued ones finished after the signal: {log:#?}"
    );
}
