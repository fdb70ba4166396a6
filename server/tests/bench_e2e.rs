//! `metrum bench run --serve "..."` end to end (issue 6): the real binary starts a real
//! `metrum serve` on the tiny fixture model, runs a seeded workload and writes every file of
//! its run directory. The numbers in `requests.jsonl` are recomputed here, independently of
//! metrum-metrics, and must agree with `summary.json`. A run that cannot write its output
//! (a full disk, simulated with /dev/full) fails with an error naming the file.
//!
//! Also here, for lack of a better home: what the soak (scripts/soak.sh) found about the
//! server's request accounting under overload.

mod common;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

/// The keys issue 6 lists for every line of requests.jsonl, no more, no less.
const REQUEST_KEYS: [&str; 13] = [
    "id",
    "prompt_tokens",
    "output_tokens",
    "send_time_s",
    "ttft_s",
    "itts_s",
    "tpot_s",
    "e2e_s",
    "fluidity_index",
    "deadline_misses",
    "deadlines",
    "error",
    "server",
];

const PLOTS: [&str; 5] = [
    "ttft_cdf.svg",
    "tbt_cdf.svg",
    "fluidity_hist.svg",
    "tokens_vs_time.svg",
    "miss_rate_vs_tbt.svg",
];

const NUM_REQUESTS: usize = 14;

fn request_keys() -> BTreeSet<&'static str> {
    REQUEST_KEYS.into_iter().collect()
}

/// `metrum bench run --serve` on the tiny fixture.
fn bench_run(model_dir: &Path, out: &Path, num_requests: usize) -> Output {
    // The server context is 256 tokens while the bench plans for 384, so the seeded default
    // workload holds some requests the server must refuse (HTTP 400): failures are part of
    // what has to add up.
    let serve = format!(
        "--model {} --threads 1 --num-kv-blocks 256 --max-model-len 256",
        model_dir.display()
    );
    Command::new(env!("CARGO_BIN_EXE_metrum"))
        .args(["bench", "run", "--serve", &serve, "--context", "384"])
        .args(["--qps", "8", "--seed", "3", "--no-progress"])
        .args(["--num-requests", &num_requests.to_string()])
        .arg("--out")
        .arg(out)
        .output()
        .expect("the metrum binary runs")
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    metrum_engine::model::fixture::write_tiny_llama_fixture(dir.path(), 7).unwrap();
    dir
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} is missing: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// numpy's default (linear) quantile, written out here so the check does not reuse
/// metrum-metrics' own code.
fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return None;
    }
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

fn assert_close(what: &str, ours: Option<f64>, theirs: &Value, tolerance: f64) {
    let theirs = theirs.as_f64();
    match (ours, theirs) {
        (Some(a), Some(b)) => assert!(
            (a - b).abs() <= tolerance * b.abs().max(1e-3),
            "{what}: recomputed {a} vs summary.json {b}"
        ),
        (None, None) => {}
        _ => panic!("{what}: recomputed {ours:?} vs summary.json {theirs:?}"),
    }
}

/// P50/P90/P99/max of `values` against a summary.json distribution object.
fn assert_distribution(what: &str, values: &[f64], summary: &Value, tolerance: f64) {
    assert_eq!(
        summary["count"].as_u64(),
        Some(values.len() as u64),
        "{what}: sample count"
    );
    for (key, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
        assert_close(
            &format!("{what} {key}"),
            quantile(values, q),
            &summary[key],
            tolerance,
        );
    }
}

fn f64s(line: &Value, key: &str) -> Option<f64> {
    line[key].as_f64()
}

#[test]
fn bench_run_serve_writes_every_file_and_the_numbers_agree() {
    let model = fixture();
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    let output = bench_run(model.path(), &run, NUM_REQUESTS);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench run failed: {stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("{NUM_REQUESTS} requests")),
        "{stdout}"
    );

    // Every file issue 6 lists, plus the --serve server's log.
    for name in [
        "config.json",
        "requests.jsonl",
        "summary.json",
        "report.md",
        "server.log",
    ] {
        let len = std::fs::metadata(run.join(name)).map(|m| m.len());
        assert!(len.is_ok_and(|l| l > 0), "{name} missing or empty");
    }
    for plot in PLOTS {
        let svg = std::fs::read_to_string(run.join(plot)).unwrap();
        assert!(
            svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
            "{plot}"
        );
        assert!(
            svg.contains("<polyline") || svg.contains("<rect") || svg.contains("<path"),
            "{plot} draws nothing"
        );
    }

    // config.json: every knob, the target's /version, the machine.
    let config = read_json(&run.join("config.json"));
    assert_eq!(config["workload"]["seed"], 3);
    assert_eq!(config["workload"]["qps"], 8.0);
    assert_eq!(config["workload"]["requests"], NUM_REQUESTS);
    assert_eq!(config["target"]["started_server"], true);
    assert_eq!(config["target"]["context"], 384);
    assert!(
        config["target"]["version"]["version"].is_string(),
        "{config}"
    );
    let machine = &config["machine"];
    assert!(machine["cores"].as_u64().unwrap() >= 1, "{machine}");
    assert!(machine["cpu_model"].is_string(), "{machine}");
    assert!(machine["memory_bytes"].as_u64().unwrap() > 0, "{machine}");
    assert!(machine["gpus"].is_array(), "{machine}");
    assert!(config["args"]["target"]["serve"].is_string());

    // requests.jsonl: one line per request, exactly the listed keys.
    let text = std::fs::read_to_string(run.join("requests.jsonl")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), NUM_REQUESTS);
    let keys = request_keys();
    for line in &lines {
        let have: BTreeSet<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(have, keys, "{line}");
    }
    let ids: BTreeSet<u64> = lines.iter().map(|l| l["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (0..NUM_REQUESTS as u64).collect());

    let summary = read_json(&run.join("summary.json"));
    let client = &summary["client"];
    assert_eq!(summary["requests_sent"], NUM_REQUESTS);
    assert_eq!(summary["requests_summarized"], NUM_REQUESTS);

    // Per line: the ITT vector starts with the TTFT and has one entry per output token.
    for l in &lines {
        let itts: Vec<f64> = l["itts_s"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(
            itts.len() as u64,
            l["output_tokens"].as_u64().unwrap(),
            "{l}"
        );
        assert_eq!(itts.first().copied(), f64s(l, "ttft_s"), "{l}");
        let to_last_token: f64 = itts.iter().sum();
        if let Some(e2e) = f64s(l, "e2e_s") {
            assert!(to_last_token <= e2e + 1e-6, "{l}");
        }
        assert!(l["deadline_misses"].as_u64() <= l["deadlines"].as_u64());
    }

    // Failures: HTTP 400s for the requests above the server's context, kept and counted.
    let failed = lines.iter().filter(|l| !l["error"].is_null()).count();
    assert!(failed > 0, "the workload was chosen to include refusals");
    assert!(failed < NUM_REQUESTS, "and successes");
    for l in lines.iter().filter(|l| !l["error"].is_null()) {
        let message = l["error"].as_str().unwrap();
        assert!(message.contains("HTTP 400"), "{message}");
        assert_eq!(l["output_tokens"], 0);
        assert!(l["ttft_s"].is_null());
    }
    assert_eq!(client["requests"]["launched"], NUM_REQUESTS);
    assert_eq!(client["requests"]["failed"], failed);
    assert_eq!(client["requests"]["completed"], NUM_REQUESTS - failed);
    assert_eq!(client["requests"]["aborted"], 0);
    assert_close(
        "error rate",
        Some(failed as f64 / NUM_REQUESTS as f64),
        &client["error_rate"],
        1e-12,
    );

    // Latency distributions recomputed from the lines.
    let collect = |key: &str| -> Vec<f64> { lines.iter().filter_map(|l| f64s(l, key)).collect() };
    assert_distribution("TTFT", &collect("ttft_s"), &client["ttft_s"], 1e-9);
    assert_distribution("TPOT", &collect("tpot_s"), &client["tpot_s"], 1e-9);
    assert_distribution("E2E", &collect("e2e_s"), &client["e2e_s"], 1e-9);
    assert_distribution(
        "fluidity",
        &collect("fluidity_index"),
        &client["fluidity_index"],
        1e-9,
    );
    let tbt: Vec<f64> = lines
        .iter()
        .flat_map(|l| l["itts_s"].as_array().unwrap().iter().skip(1))
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_distribution("TBT", &tbt, &client["tbt_s"], 1e-9);

    // Throughput: output tokens over first arrival to last finish.
    let output_tokens: u64 = lines
        .iter()
        .map(|l| l["output_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(client["output_tokens_total"], output_tokens);
    let prompt_tokens: u64 = lines
        .iter()
        .map(|l| l["prompt_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(client["prompt_tokens_total"], prompt_tokens);
    let first = lines
        .iter()
        .map(|l| f64s(l, "send_time_s").unwrap())
        .fold(f64::INFINITY, f64::min);
    let last = lines
        .iter()
        .map(|l| f64s(l, "send_time_s").unwrap() + f64s(l, "e2e_s").unwrap())
        .fold(0.0, f64::max);
    assert_close("duration", Some(last - first), &client["duration_s"], 1e-6);
    assert_close(
        "output tok/s",
        Some(output_tokens as f64 / (last - first)),
        &client["output_tokens_per_s"],
        1e-6,
    );
    assert_close(
        "completed req/s",
        Some((NUM_REQUESTS - failed) as f64 / (last - first)),
        &client["completed_qps"],
        1e-6,
    );

    // Deadlines: the service-level miss rate is Σ missed / Σ deadlines over the lines.
    let missed: u64 = lines
        .iter()
        .map(|l| l["deadline_misses"].as_u64().unwrap())
        .sum();
    let deadlines: u64 = lines.iter().map(|l| l["deadlines"].as_u64().unwrap()).sum();
    assert!(deadlines > 0);
    assert_close(
        "service miss rate",
        Some(missed as f64 / deadlines as f64),
        &client["service_miss_rate"]["miss_rate"],
        1e-9,
    );

    // Server timings: one object per completed request, and the server-side TTFT
    // distribution is over exactly those.
    let with_server: Vec<&Value> = lines.iter().filter(|l| !l["server"].is_null()).collect();
    assert_eq!(with_server.len(), NUM_REQUESTS - failed);
    assert_eq!(summary["server_reports"], with_server.len());
    let server_ttft: Vec<f64> = with_server
        .iter()
        .map(|l| l["server"]["first_token_ms"].as_f64().unwrap() / 1e3)
        .collect();
    assert_distribution(
        "server TTFT",
        &server_ttft,
        &summary["server"]["ttft_s"],
        1e-6,
    );
    for l in &with_server {
        assert_eq!(l["server"]["output_tokens"], l["output_tokens"], "{l}");
        assert_eq!(l["server"]["prompt_tokens"], l["prompt_tokens"], "{l}");
    }

    // The SLO parameters used.
    assert_eq!(summary["slo"]["tbt_slo_s"], 0.03);
    assert_eq!(summary["slo"]["ttft_slack_s"], 0.3);
    assert!(summary["slo"]["prefill_model"].is_object());
    assert!(
        client["tbt_curve"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "miss-rate-vs-target-TBT curve"
    );

    // report.md answers every checklist item R1-R16, and its counts match.
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    for i in 1..=16 {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| R{i} ")))
            .unwrap_or_else(|| panic!("R{i} is not answered:\n{report}"));
        let verdict = row.split('|').nth(2).unwrap().trim();
        assert!(
            ["met", "not met", "partly met", "not applicable"].contains(&verdict),
            "R{i}: {verdict:?}"
        );
    }
    assert!(
        report.contains(&format!(
            "{} completed, {failed} failed (0 refused with 429), 0 aborted",
            NUM_REQUESTS - failed
        )),
        "{report}"
    );
}

/// Issue 9, faults: a full disk while the run's files are written. /dev/full answers every
/// write with ENOSPC; the run directory's requests.jsonl points there.
#[test]
fn a_full_disk_while_writing_the_output_is_a_clear_error() {
    let model = fixture();
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::os::unix::fs::symlink("/dev/full", run.join("requests.jsonl")).unwrap();
    let output = bench_run(model.path(), &run, 3);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("requests.jsonl"),
        "names the file: {stderr}"
    );
    assert!(
        stderr.contains("No space left on device"),
        "says why: {stderr}"
    );
    assert!(
        stderr.lines().filter(|l| !l.trim().is_empty()).count() <= 3,
        "a short message, not a backtrace: {stderr}"
    );
    // The --serve server was stopped, not orphaned: its port no longer answers.
    let log = std::fs::read_to_string(run.join("server.log")).unwrap();
    let addr = log
        .split("listening on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no listening line in the server log: {log}"));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the server at {addr} outlived the failed run"
    );
}

/// An output directory that cannot exist is refused before any server is started.
#[test]
fn an_unwritable_output_directory_fails_before_the_run() {
    let model = fixture();
    let started = std::time::Instant::now();
    let output = bench_run(model.path(), Path::new("/dev/full/run"), NUM_REQUESTS);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/dev/full/run"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "failed fast"
    );
}

/// Found by the soak (`scripts/soak.sh`, overloaded): every request is accounted for once,
/// so a request refused with 429 must leave no trace in `metrum_requests_total`. An `n = 2`
/// request whose first sequence was admitted and whose second hit the waiting limit was
/// refused, but its first sequence was already in the engine, which counted it as an abort:
/// one more finished request than any client saw accepted. Fixed by admitting the choices of
/// one request together (`submit_all`); this is the regression test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_leaves_no_finished_request_behind() {
    use common::{TestServer, metric_value, tiny_model};
    let mut model = tiny_model();
    model.config.max_num_seqs = 1;
    model.config.max_waiting_requests = 1;
    let server = TestServer::start(model).await;
    let finished = |text: &str| -> f64 {
        ["stop", "length", "abort", "error"]
            .iter()
            .map(|r| {
                metric_value(
                    text,
                    &format!("metrum_requests_total{{finish_reason=\"{r}\"}}"),
                )
                .unwrap_or(0.0)
            })
            .sum()
    };
    let before = finished(&server.get_text("/metrics").await.1);

    // One long stream occupies the only running slot; its first chunk says it is running.
    let mut body = common::completion_body("occupy", 1900);
    body["stream"] = serde_json::json!(true);
    let mut running = server.post("/v1/completions", &body).await.bytes_stream();
    use futures::StreamExt;
    assert!(running.next().await.is_some_and(|c| c.is_ok()));

    // n = 2 against a waiting limit of 1: the first choice fits, the second does not.
    let mut two = common::completion_body("two", 4);
    two["n"] = serde_json::json!(2);
    let (status, answer) = server.post_json("/v1/completions", &two).await;
    assert_eq!(status, 429, "{answer}");

    drop(running);
    assert!(server.wait_idle().await, "the server goes idle");
    let after = finished(&server.get_text("/metrics").await.1);
    assert_eq!(
        after - before,
        1.0,
        "only the long stream (aborted by its client) finished; the refused n=2 request \
         must not be counted"
    );
}
