//! The load generator against a real fake server (axum on 127.0.0.1:0, scripted timings):
//! arrival schedule, chunk-to-token accounting, failure accounting, capacity bisection and
//! compare. Timing-sensitive tests run one at a time (SERIAL) so they do not disturb each
//! other on a small machine.

mod common;

use clap::Parser;
use common::{FakeServer, Mode, TokenizeApi, scratch_dir};
use metrum_bench::output::jsonl::{self, RequestLine};
use metrum_bench::{BenchRunArgs, CapacityArgs, compare, run_bench, run_capacity};
use metrum_workload::arrival::{ArrivalProcess, RunLength, schedule};
use std::path::Path;
use std::time::Duration;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Parser)]
struct RunCli {
    #[command(flatten)]
    args: BenchRunArgs,
}

#[derive(Parser)]
struct CapacityCli {
    #[command(flatten)]
    args: CapacityArgs,
}

fn run_args(words: &[&str]) -> BenchRunArgs {
    RunCli::try_parse_from(std::iter::once("bench").chain(words.iter().copied()))
        .expect("arguments parse")
        .args
}

fn steady() -> Mode {
    Mode::Steady {
        ttft: Duration::from_millis(5),
        gap: Duration::from_millis(2),
    }
}

fn lines(dir: &Path) -> Vec<RequestLine> {
    jsonl::read(&dir.join("requests.jsonl")).expect("requests.jsonl")
}

fn write_trace(dir: &Path, rows: &[(&str, u32)]) -> String {
    let path = dir.join("trace.jsonl");
    let text: String = rows
        .iter()
        .map(|(text, n)| {
            format!("{{\"prompt_tokens\": 3, \"output_tokens\": {n}, \"text\": \"{text}\"}}\n")
        })
        .collect();
    std::fs::write(&path, text).expect("trace");
    format!("file:{}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrivals_follow_the_seeded_schedule_at_the_server() {
    let _serial = SERIAL.lock().await;
    let server = FakeServer::start(steady()).await;
    let out = scratch_dir("arrivals");
    let outcome = run_bench(run_args(&[
        "--url",
        &server.base_url,
        "--qps",
        "20",
        "--num-requests",
        "60",
        "--seed",
        "11",
        "--warmup",
        "0.5",
        "--workload",
        "synthetic:prompt=fixed:8,output=fixed:3",
        "--out",
        out.to_str().unwrap(),
        "--no-progress",
    ]))
    .await
    .expect("run");
    let expected = schedule(
        ArrivalProcess::Poisson,
        20.0,
        RunLength::Requests(60),
        11,
        None,
    )
    .unwrap();
    // requests.jsonl records the scheduled send times exactly.
    let recorded: Vec<f64> = lines(&out).iter().map(|l| l.send_time_s).collect();
    for (r, e) in recorded.iter().zip(&expected) {
        assert!((r - e.as_secs_f64()).abs() < 1e-6, "{r} vs {e:?}");
    }
    // The server saw them at those times (offsets from the first), up to scheduling jitter:
    // every request within 50 ms of its due offset, after removing the common shift.
    let seen = server.arrivals();
    assert_eq!(seen.len(), 60);
    let mut shifts: Vec<f64> = seen
        .iter()
        .zip(&expected)
        .map(|(s, e)| s.duration_since(seen[0]).as_secs_f64() - e.as_secs_f64())
        .collect();
    let by_request = shifts.clone();
    shifts.sort_by(f64::total_cmp);
    let median = shifts[shifts.len() / 2];
    for (i, shift) in by_request.iter().enumerate() {
        assert!(
            (shift - median).abs() < 0.050,
            "request {i} reached the server {shift} s off schedule"
        );
    }
    // Rate and distribution of what reached the server: mean gap within 5 standard errors of
    // 1/20 s, and gaps exponential by Kolmogorov-Smirnov at the 0.1% level.
    let mut gaps: Vec<f64> = seen
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .collect();
    let n = gaps.len() as f64;
    let mean = gaps.iter().sum::<f64>() / n;
    assert!(
        (mean - 0.05).abs() < 5.0 * 0.05 / n.sqrt(),
        "mean gap {mean}"
    );
    gaps.sort_by(f64::total_cmp);
    let ks = gaps
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let cdf = 1.0 - (-20.0 * x).exp();
            (cdf - i as f64 / n)
                .abs()
                .max(((i + 1) as f64 / n - cdf).abs())
        })
        .fold(0.0, f64::max);
    assert!(ks < 1.95 / n.sqrt(), "KS {ks}");
    // Requests due in the first 0.5 s are sent and recorded, but left out of the summary.
    let warm = expected.iter().filter(|t| t.as_secs_f64() < 0.5).count();
    assert!(warm > 0);
    assert_eq!(outcome.summary.warmup_excluded, warm);
    assert_eq!(outcome.summary.client.requests.launched as usize, 60 - warm);
    assert_eq!(recorded.len(), 60);
    let lag = &outcome.summary.load_generator.send_lag_s;
    assert_eq!(lag.count, 60);
    assert!(lag.p50.unwrap() < 0.010, "median send lag {:?}", lag.p50);
    assert_eq!(
        outcome.summary.client.requests.completed as usize,
        60 - warm
    );
    // Without --model the first listed model is used; context and /version come from the
    // target, prompts were cut with its /tokenize.
    let target = &outcome.config.target;
    assert_eq!(
        (target.model.as_str(), target.model_source.as_str()),
        ("fake-model", "server")
    );
    assert_eq!(
        (target.context, target.context_source.as_str()),
        (4096, "server")
    );
    assert!(target.version.is_some());
    assert!(
        target.tokenizer.ends_with("/tokenize"),
        "{}",
        target.tokenizer
    );
    assert_eq!(outcome.config.workload.inexact_prompts, 0);
    assert!(lines(&out).iter().all(|l| l.prompt_tokens == 8));
    // The fake sends Metrum's timing object, so the server-side section exists.
    assert_eq!(outcome.summary.server_reports, 60);
    assert!(
        outcome
            .summary
            .server
            .as_ref()
            .is_some_and(|s| s.requests.launched as usize == 60 - warm)
    );
    assert!(outcome.summary.server.is_some());
    for file in [
        "config.json",
        "summary.json",
        "report.md",
        "ttft_cdf.svg",
        "tbt_cdf.svg",
        "fluidity_hist.svg",
        "tokens_vs_time.svg",
        "miss_rate_vs_tbt.svg",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let _ = std::fs::remove_dir_all(out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_of_m_tokens_becomes_a_gap_and_m_minus_one_zeros() {
    let _serial = SERIAL.lock().await;
    let server = FakeServer::start(Mode::Steady {
        ttft: Duration::from_millis(20),
        gap: Duration::from_millis(30),
    })
    .await;
    let out = scratch_dir("chunks");
    let workload = write_trace(&out, &[("script:burst", 4), ("plain words here", 3)]);
    let outcome = run_bench(run_args(&[
        "--url",
        &server.base_url,
        "--qps",
        "5",
        "--arrival",
        "constant",
        "--num-requests",
        "2",
        "--workload",
        &workload,
        "--out",
        out.to_str().unwrap(),
        "--no-progress",
    ]))
    .await
    .expect("run");
    let lines = lines(&out);
    let burst = &lines[0];
    assert_eq!(burst.error, None);
    assert_eq!(burst.output_tokens, 4);
    let itts = &burst.itts_s;
    assert_eq!(itts.len(), 4);
    assert_eq!(burst.ttft_s, Some(itts[0]));
    assert!((0.095..0.25).contains(&itts[0]), "TTFT {}", itts[0]);
    assert!(
        (0.04..0.15).contains(&itts[1]),
        "gap before the burst {}",
        itts[1]
    );
    assert_eq!(
        itts[2], 0.0,
        "the second token of a 2-token chunk has ITT 0"
    );
    assert!(
        (0.04..0.15).contains(&itts[3]),
        "gap after the burst {}",
        itts[3]
    );
    assert!(burst.server.is_some());
    // One token per chunk when the server's count agrees.
    let plain = &lines[1];
    assert_eq!((plain.output_tokens, plain.itts_s.len()), (3, 3));
    assert!(plain.itts_s.iter().all(|g| *g > 0.0));
    let sources = &outcome.summary.load_generator.token_sources;
    assert_eq!(sources.get("retokenized"), Some(&1));
    assert_eq!(sources.get("one_token_per_chunk"), Some(&1));
    // TBT over tokens keeps the burst's zero; inter-delivery gaps do not.
    let client = &outcome.summary.client;
    assert_eq!(client.tbt_s.min, Some(0.0));
    assert_eq!(client.tbt_s.count, 3 + 2);
    assert_eq!(client.inter_delivery_s.count, 2 + 2);
    let _ = std::fs::remove_dir_all(out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_timed_out_and_empty_requests_are_kept_and_counted() {
    let _serial = SERIAL.lock().await;
    let server = FakeServer::start(steady()).await;
    let out = scratch_dir("failures");
    let workload = write_trace(
        &out,
        &[
            ("plain", 5),
            ("script:500", 5),
            ("script:drop", 5),
            ("script:hang", 5),
            ("script:zero", 5),
            ("script:error", 5),
            ("script:429", 5),
        ],
    );
    let outcome = run_bench(run_args(&[
        "--url",
        &server.base_url,
        "--qps",
        "20",
        "--arrival",
        "constant",
        "--num-requests",
        "7",
        "--workload",
        &workload,
        "--request-timeout",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--no-progress",
    ]))
    .await
    .expect("run");
    let lines = lines(&out);
    assert_eq!(lines.len(), 7, "every request has a line");
    let error = |i: usize| lines[i].error.clone().unwrap_or_default();
    assert_eq!(lines[0].error, None);
    assert!(error(1).contains("HTTP 500"), "{}", error(1));
    assert!(error(2).contains("before [DONE]"), "{}", error(2));
    assert!(error(3).contains("timed out"), "{}", error(3));
    assert!(
        error(4).contains("without any output token"),
        "{}",
        error(4)
    );
    assert!(error(5).contains("scripted engine failure"), "{}", error(5));
    assert!(error(6).contains("HTTP 429"), "{}", error(6));
    // A failed request is charged every token it still owed (max_tokens = 5).
    assert_eq!(
        (
            lines[4].deadlines,
            lines[4].deadline_misses,
            lines[4].fluidity_index
        ),
        (5, 5, Some(0.0))
    );
    assert_eq!(lines[1].ttft_s, None);
    assert_eq!(lines[2].output_tokens, 1);
    assert!(lines[2].deadline_misses >= 4);
    let counts = outcome.summary.client.requests;
    assert_eq!(
        (counts.launched, counts.completed, counts.failed),
        (7, 1, 6)
    );
    // Only the 429 counts as refused (the 500 is a failure, not a refusal); it is failed too.
    assert_eq!(outcome.summary.refused, 1);
    assert!((outcome.summary.client.error_rate.unwrap() - 6.0 / 7.0).abs() < 1e-12);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("7 launched: 1 completed, 6 failed (1 refused with 429)"),
        "{report}"
    );
    assert!(
        outcome
            .headline()
            .contains("6 failed, 1 of them refused with 429"),
        "{}",
        outcome.headline()
    );
    let _ = std::fs::remove_dir_all(out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_bisection_finds_the_known_capacity() {
    let _serial = SERIAL.lock().await;
    // One request at a time, 50 ms each: 20 QPS. Above it the queue and TTFT grow without
    // bound (40 requests at 21 QPS end ~90 ms behind); below it TTFT stays ~50 ms, half the
    // 100 ms SLO, so scheduling jitter cannot fail a probe below capacity.
    let server = FakeServer::start(Mode::Queue {
        service: Duration::from_millis(50),
    })
    .await;
    let out = scratch_dir("capacity");
    let args = CapacityCli::try_parse_from([
        "capacity",
        "--url",
        &server.base_url,
        "--workload",
        "synthetic:prompt=fixed:8,output=fixed:4",
        "--arrival",
        "constant",
        "--num-requests",
        "40",
        "--slo",
        "ttft-tpot",
        "--ttft-slo",
        "0.1",
        "--tpot-slo",
        "0.05",
        "--start-qps",
        "12",
        "--out",
        out.to_str().unwrap(),
        "--no-progress",
    ])
    .expect("arguments parse")
    .args;
    let report = run_capacity(args).await.expect("capacity search");
    let capacity = report.result.max_qps_under_slo.expect("some QPS passes");
    // The fake server's true capacity is 20 QPS. On a loaded 2-core machine the client's own
    // jitter pushes probes near the boundary to fail early (16.9 seen with load average 10), so
    // the bound is 25% below; a broken bisection lands at the start (12) or far above.
    assert!(
        (15.0..=21.5).contains(&capacity),
        "capacity {capacity}, probes {:?}",
        report.result.probes
    );
    assert!(
        report
            .runs
            .iter()
            .any(|r| !r.verdict.passed && r.qps > 20.0),
        "a probe above capacity fails"
    );
    // The capacity was confirmed with three seeds.
    let at_capacity = report.runs.iter().filter(|r| r.qps == capacity).count();
    assert!(at_capacity >= 3, "{at_capacity} runs at the capacity");
    assert!(out.join("capacity.json").is_file() && out.join("capacity.svg").is_file());
    assert!(
        report
            .runs
            .iter()
            .all(|r| r.dir.join("summary.json").is_file())
    );
    let _ = std::fs::remove_dir_all(out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_tables_runs_and_warns_when_they_differ() {
    let _serial = SERIAL.lock().await;
    let server = FakeServer::start(steady()).await;
    let root = scratch_dir("compare");
    let mut dirs = Vec::new();
    for seed in ["1", "2"] {
        let dir = root.join(format!("seed-{seed}"));
        run_bench(run_args(&[
            "--url",
            &server.base_url,
            "--qps",
            "50",
            "--num-requests",
            "4",
            "--seed",
            seed,
            "--workload",
            "synthetic:prompt=fixed:4,output=uniform:2:9",
            "--out",
            dir.to_str().unwrap(),
            "--no-progress",
        ]))
        .await
        .expect("run");
        dirs.push(dir);
    }
    let same = compare(&[dirs[0].clone(), dirs[0].clone()], None).unwrap();
    assert!(same.warnings.is_empty(), "{:?}", same.warnings);
    let out = root.join("cmp");
    let outcome = compare(&dirs, Some(out.clone())).unwrap();
    let joined = outcome.warnings.join("\n");
    assert!(
        joined.contains("seed") && joined.contains("max_tokens"),
        "{joined}"
    );
    assert!(outcome.markdown.contains("| seed-1 |") && outcome.markdown.contains("| seed-2 |"));
    for file in [
        "compare.md",
        "ttft_cdf.svg",
        "tbt_cdf.svg",
        "inter_delivery_cdf.svg",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_are_cut_with_whichever_tokenizer_the_target_or_the_user_offers() {
    let _serial = SERIAL.lock().await;
    let root = scratch_dir("tokenizers");
    let run = |url: String, out: std::path::PathBuf, tokenizer: Option<String>| async move {
        let mut words = vec![
            "--url".to_string(),
            url,
            "--num-requests".into(),
            "3".into(),
            "--qps".into(),
            "50".into(),
            "--workload".into(),
            "synthetic:prompt=uniform:5:40,output=fixed:2".into(),
            "--out".into(),
            out.display().to_string(),
            "--no-progress".into(),
        ];
        if let Some(t) = tokenizer {
            words.extend(["--tokenizer".to_string(), t]);
        }
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        run_bench(run_args(&refs)).await
    };
    let check = |out: &Path| {
        let lines = lines(out);
        assert_eq!(lines.len(), 3);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let asked = &config["workload"]["prompt_tokens"];
        assert_eq!(config["workload"]["inexact_prompts"], 0, "{asked}");
        config["target"]["tokenizer"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // llama-cpp-python's endpoints are found on their own.
    let llama = FakeServer::start_with(steady(), TokenizeApi::LlamaCppPython).await;
    run(llama.base_url.clone(), root.join("llama"), None)
        .await
        .expect("run");
    assert!(check(&root.join("llama")).ends_with("/extras/tokenize"));
    // A server without any: a clear error, then another server's /tokenize or a local file.
    let bare = FakeServer::start_with(steady(), TokenizeApi::None).await;
    let err = run(bare.base_url.clone(), root.join("bare"), None)
        .await
        .err()
        .map(|e| format!("{e:#}"));
    assert!(err.unwrap_or_default().contains("--tokenizer"));
    run(
        bare.base_url.clone(),
        root.join("via-url"),
        Some(llama.base_url.clone()),
    )
    .await
    .expect("run");
    assert!(check(&root.join("via-url")).starts_with(&llama.base_url));
    let file = root.join("tokenizer.json");
    match metrum_bench::tokenizer::test_support::word_tokenizer().unwrap() {
        metrum_bench::tokenizer::TextTokenizer::Local(t) => t.save(&file, false).unwrap(),
        other => panic!("expected a local tokenizer, got {other:?}"),
    }
    run(
        bare.base_url.clone(),
        root.join("via-file"),
        Some(file.display().to_string()),
    )
    .await
    .expect("run");
    assert_eq!(check(&root.join("via-file")), "local tokenizer.json");
    let _ = std::fs::remove_dir_all(root);
}
