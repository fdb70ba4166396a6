//! The end-of-soak verdict, a pure function of what was measured: every request the clients
//! sent accounted for exactly once, the server's counters agreeing with the clients', the
//! server alive and idle with every KV block free, and its memory growth under a bound.
//!
//! **Accounting.** Each client request ends exactly once, as the client saw it: completed,
//! aborted by the client after the server accepted it, rejected with a 4xx before the engine
//! saw it, or failed. Accepted requests become engine sequences (`n` each), and the engine
//! counts each sequence once in `metrum_requests_total{finish_reason}`. So, over the soak:
//!
//! - `Δ(stop + length + abort + error) = completed + aborted` sequences (nothing lost or
//!   counted twice);
//! - `Δ error = 0` and no client failure;
//! - `Δ abort ≤ aborted`: a client that hangs up after the last token was sent but before
//!   it was read sees an abort the engine counted as finished; the difference is reported
//!   as `aborts_finished_first`.
//!
//! Rejections have no server counter (the server exports none), so they are counted on the
//! client side only, and checked against what each kind must get. A 429 fails the soak: it
//! means the load was above capacity, and under overload an `n > 1` request can be refused
//! after one of its sequences was admitted, which the engine then counts as an abort (see
//! server/tests/bench_e2e.rs).

use super::kinds::{ChaosKind, OVERLOADED, Outcome};
use super::prom::Scrape;
use super::traffic::{ChaosReport, SkippedKind};
use crate::output::jsonl::RequestLine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The benchmark client's requests as outcomes: no error is completed, an `HTTP 4xx` error a
/// rejection, anything else a failure (the benchmark never hangs up on purpose).
pub fn bench_outcome(line: &RequestLine) -> Outcome {
    match &line.error {
        None => Outcome::Completed,
        Some(e) => match e
            .strip_prefix("HTTP ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok())
        {
            Some(status) if (400..500).contains(&status) => Outcome::Rejected { status },
            _ => Outcome::Failed { why: e.clone() },
        },
    }
}

/// The server as the check found it once the clients were done.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerState {
    /// `/health` answered 200 and the process was running.
    pub alive: bool,
    /// `requests_running == 0 && requests_waiting == 0 && kv_cache_usage_ratio == 0` was seen.
    pub idle: bool,
    /// Seconds from the end of the traffic until idle (or until giving up).
    pub idle_after_s: f64,
    /// VmRSS after idle, KiB.
    pub rss_final_kib: Option<u64>,
}

/// Limits the soak is held to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bounds {
    /// RSS samples before this many seconds are warm-up; the baseline is the first after.
    pub warmup_s: f64,
    /// Allowed growth of the RSS from the baseline to the end.
    pub rss_growth_mib: f64,
    /// The server's `--speculative-config`, when it drafts: then drafts must have been made
    /// (Δ `metrum_spec_decode_num_drafts_total` > 0), or speculation silently never ran.
    pub speculative_config: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub requests: u64,
    pub completed: u64,
    pub aborted: u64,
    /// Rejections by status (0: connection closed without a status).
    pub rejected: BTreeMap<u16, u64>,
    pub failed: u64,
    /// Engine sequences of the completed and aborted requests.
    pub completed_sequences: u64,
    pub aborted_sequences: u64,
}

impl Tally {
    fn add(&mut self, outcome: &Outcome, sequences: u64) {
        self.requests += 1;
        match outcome {
            Outcome::Completed => {
                self.completed += 1;
                self.completed_sequences += sequences;
            }
            Outcome::Aborted => {
                self.aborted += 1;
                self.aborted_sequences += sequences;
            }
            Outcome::Rejected { status } => *self.rejected.entry(*status).or_insert(0) += 1,
            Outcome::Failed { .. } => self.failed += 1,
        }
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// One assertion and its evidence.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// `soak.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoakVerdict {
    pub passed: bool,
    pub checks: Vec<Check>,
    pub bench: Tally,
    pub chaos: Tally,
    pub chaos_by_kind: BTreeMap<String, BTreeMap<String, u64>>,
    /// Counter increases over the soak, by finish reason.
    pub server_finished: BTreeMap<String, f64>,
    pub aborts_finished_first: f64,
    /// Streams cut at a random point, over all streams (bursts of aborts not included).
    pub disconnect_share_of_streams: f64,
    pub burst_aborts: u64,
    pub malformed_share_of_requests: f64,
    pub rss_baseline_kib: Option<u64>,
    pub rss_final_kib: Option<u64>,
    pub rss_max_kib: Option<u64>,
    pub failures: Vec<String>,
    pub server: ServerState,
    /// What the soak ran with: the server's speculative config (`None`: no speculation).
    pub speculative_config: Option<serde_json::Value>,
    /// Chaos kinds this server could not serve, left out of the mix.
    pub skipped_kinds: Vec<SkippedKind>,
}

const REASONS: [&str; 4] = ["stop", "length", "abort", "error"];

pub fn judge(
    bench: &[RequestLine],
    chaos: &ChaosReport,
    before: &Scrape,
    after: &Scrape,
    server: ServerState,
    bounds: &Bounds,
) -> SoakVerdict {
    let mut bench_tally = Tally::default();
    let mut failures = Vec::new();
    for line in bench {
        let outcome = bench_outcome(line);
        if let Outcome::Failed { why } = &outcome {
            failures.push(format!("bench request {}: {why}", line.id));
        }
        bench_tally.add(&outcome, 1);
    }
    let mut chaos_tally = Tally::default();
    let mut by_kind: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for r in &chaos.requests {
        chaos_tally.add(&r.outcome, r.kind.sequences());
        let kind = serde_json::to_value(r.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *by_kind
            .entry(kind)
            .or_default()
            .entry(r.outcome.label())
            .or_insert(0) += 1;
        if let Outcome::Failed { why } = &r.outcome {
            failures.push(format!("chaos request at {:.1} s: {why}", r.at_s));
        }
    }
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.count(name, labels) - before.count(name, labels)
    };
    let finished: BTreeMap<String, f64> = REASONS
        .iter()
        .map(|r| {
            let d = delta("metrum_requests_total", &[("finish_reason", r)]);
            (r.to_string(), d)
        })
        .collect();
    let server_total: f64 = finished.values().sum();
    let client_completed =
        (bench_tally.completed_sequences + chaos_tally.completed_sequences) as f64;
    let client_aborted = (bench_tally.aborted_sequences + chaos_tally.aborted_sequences) as f64;
    let server_aborted = finished["abort"];
    let server_ok = finished["stop"] + finished["length"];

    let mut checks = Vec::new();
    let mut check = |name: &str, passed: bool, detail: String| {
        checks.push(Check {
            name: name.into(),
            passed,
            detail,
        })
    };
    check(
        "server alive",
        server.alive,
        "/health answered 200 and the process runs".into(),
    );
    check(
        "idle with every KV block free",
        server.idle,
        format!(
            "running = {:?}, waiting = {:?}, kv_cache_usage_ratio = {:?} ({:.1} s after the traffic)",
            after.value("metrum_requests_running", &[]),
            after.value("metrum_requests_waiting", &[]),
            after.value("metrum_kv_cache_usage_ratio", &[]),
            server.idle_after_s
        ),
    );
    check(
        "every request accounted for once",
        server_total == client_completed + client_aborted,
        format!(
            "server finished {server_total} sequences (Δ requests_total); clients: {client_completed} completed + {client_aborted} aborted"
        ),
    );
    check(
        "aborts agree",
        server_aborted <= client_aborted && server_ok >= client_completed,
        format!(
            "server abort {server_aborted} ≤ client aborts {client_aborted}; server stop+length {server_ok} ≥ client completions {client_completed}"
        ),
    );
    check(
        "no engine errors",
        finished["error"] == 0.0 && delta("metrum_metrics_rejected_events_total", &[]) == 0.0,
        format!(
            "Δ requests_total{{error}} = {}, Δ metrics_rejected_events_total = {}",
            finished["error"],
            delta("metrum_metrics_rejected_events_total", &[])
        ),
    );
    check(
        "no client failures",
        failures.is_empty(),
        format!("{} failures (listed in `failures`)", failures.len()),
    );
    let overloaded = bench_tally.rejected.get(&OVERLOADED).copied().unwrap_or(0)
        + chaos_tally.rejected.get(&OVERLOADED).copied().unwrap_or(0);
    check(
        "load below capacity",
        overloaded == 0,
        if overloaded == 0 {
            "no request was refused with 429 (overloaded)".into()
        } else {
            format!(
                "{overloaded} requests were refused with 429: the load was above what the \
                 server sustains (capacity overestimated, or the machine busy), so this was \
                 not a soak at 80% of capacity"
            )
        },
    );
    if bounds.speculative_config.is_some() {
        let drafts = delta("metrum_spec_decode_num_drafts_total", &[]);
        let accepted = delta("metrum_spec_decode_num_accepted_tokens_total", &[]);
        check(
            "speculation ran",
            drafts > 0.0,
            format!("Δ spec_decode drafts {drafts}, accepted tokens {accepted}"),
        );
    }
    let baseline = chaos
        .rss_kib
        .iter()
        .find(|(t, _)| *t >= bounds.warmup_s)
        .map(|(_, k)| *k);
    let rss_max = chaos
        .rss_kib
        .iter()
        .map(|(_, k)| *k)
        .chain(server.rss_final_kib)
        .max();
    let growth_mib = match (baseline, server.rss_final_kib) {
        (Some(b), Some(f)) => Some((f as f64 - b as f64) / 1024.0),
        _ => None,
    };
    check(
        "RSS growth after warm-up bounded",
        growth_mib.is_some_and(|g| g <= bounds.rss_growth_mib),
        format!(
            "baseline {baseline:?} KiB at {} s, final {:?} KiB: growth {} MiB (bound {} MiB)",
            bounds.warmup_s,
            server.rss_final_kib,
            growth_mib.map_or("unknown".into(), |g| format!("{g:.1}")),
            bounds.rss_growth_mib
        ),
    );
    let streams = bench_tally.requests
        + chaos
            .requests
            .iter()
            .filter(|r| !r.kind.is_malformed())
            .count() as u64;
    let of_kind = |kind: ChaosKind| chaos.requests.iter().filter(|r| r.kind == kind).count();
    let disconnects = of_kind(ChaosKind::Disconnect) as f64;
    let malformed = chaos
        .requests
        .iter()
        .filter(|r| r.kind.is_malformed())
        .count() as f64;
    let all = (bench_tally.requests + chaos_tally.requests).max(1) as f64;
    let passed = checks.iter().all(|c| c.passed);
    SoakVerdict {
        passed,
        checks,
        bench: bench_tally,
        chaos: chaos_tally,
        chaos_by_kind: by_kind,
        server_finished: finished,
        aborts_finished_first: client_aborted - server_aborted,
        disconnect_share_of_streams: disconnects / streams.max(1) as f64,
        burst_aborts: of_kind(ChaosKind::BurstAbort) as u64,
        malformed_share_of_requests: malformed / all,
        rss_baseline_kib: baseline,
        rss_final_kib: server.rss_final_kib,
        rss_max_kib: rss_max,
        failures,
        server,
        speculative_config: bounds.speculative_config.clone(),
        skipped_kinds: chaos.skipped.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::traffic::{RequestRecord, TrafficConfig};

    fn line(id: u64, error: Option<&str>) -> RequestLine {
        RequestLine {
            id,
            prompt_tokens: 8,
            output_tokens: if error.is_some() { 0 } else { 4 },
            send_time_s: 0.0,
            ttft_s: None,
            itts_s: Vec::new(),
            tpot_s: None,
            e2e_s: None,
            fluidity_index: None,
            deadline_misses: 0,
            deadlines: 0,
            error: error.map(str::to_string),
            server: None,
        }
    }

    fn chaos(records: Vec<(ChaosKind, Outcome)>) -> ChaosReport {
        ChaosReport {
            config: TrafficConfig {
                duration_s: 60.0,
                qps: 1.0,
                seed: 0,
                burst_every_s: 0.0,
                burst_size: 0,
            },
            max_model_len: 512,
            requests: records
                .into_iter()
                .map(|(kind, outcome)| RequestRecord {
                    kind,
                    at_s: 1.0,
                    outcome,
                })
                .collect(),
            rss_kib: vec![(5.0, 100_000), (20.0, 200_000), (50.0, 210_000)],
            wall_s: 60.0,
            skipped: Vec::new(),
        }
    }

    fn metrics(stop: u64, length: u64, abort: u64, error: u64, usage: f64) -> Scrape {
        Scrape::parse(&format!(
            "metrum_requests_total{{finish_reason=\"stop\"}} {stop}\n\
             metrum_requests_total{{finish_reason=\"length\"}} {length}\n\
             metrum_requests_total{{finish_reason=\"abort\"}} {abort}\n\
             metrum_requests_total{{finish_reason=\"error\"}} {error}\n\
             metrum_requests_running 0\nmetrum_requests_waiting 0\n\
             metrum_kv_cache_usage_ratio {usage}\n"
        ))
    }

    fn state(rss: u64) -> ServerState {
        ServerState {
            alive: true,
            idle: true,
            idle_after_s: 0.5,
            rss_final_kib: Some(rss),
        }
    }

    const BOUNDS: Bounds = Bounds {
        warmup_s: 10.0,
        rss_growth_mib: 64.0,
        speculative_config: None,
    };

    fn scenario() -> (Vec<RequestLine>, ChaosReport) {
        let bench = vec![
            line(0, None),
            line(1, None),
            line(2, Some("HTTP 400 Bad Request: too long")),
        ];
        let chaos = chaos(vec![
            (ChaosKind::Disconnect, Outcome::Aborted),
            (ChaosKind::Disconnect, Outcome::Aborted),
            (ChaosKind::NonStream, Outcome::Completed),
            (ChaosKind::BadJson, Outcome::Rejected { status: 400 }),
            (ChaosKind::NotHttp, Outcome::Rejected { status: 0 }),
        ]);
        (bench, chaos)
    }

    #[test]
    fn counts_that_add_up_pass() {
        let (bench, chaos) = scenario();
        // 2 bench + 2 (n=2) chaos sequences completed, 2 aborted; one abort lost the race to
        // the end of its stream and was counted as length by the server.
        let before = metrics(10, 5, 1, 0, 0.0);
        let after = metrics(10, 5 + 5, 1 + 1, 0, 0.0);
        let v = judge(&bench, &chaos, &before, &after, state(220_000), &BOUNDS);
        assert!(v.passed, "{:#?}", v.checks);
        assert_eq!(v.aborts_finished_first, 1.0);
        assert_eq!(v.bench.rejected.get(&400), Some(&1));
        assert_eq!(v.chaos.rejected_total(), 2);
        assert_eq!(v.chaos.completed_sequences, 2);
        assert_eq!(v.rss_baseline_kib, Some(200_000));
        assert_eq!(v.chaos_by_kind["disconnect"]["aborted"], 2);
    }

    #[test]
    fn a_lost_or_doubled_request_fails() {
        let (bench, chaos) = scenario();
        let before = metrics(0, 0, 0, 0, 0.0);
        for after in [metrics(0, 4, 1, 0, 0.0), metrics(0, 6, 1, 0, 0.0)] {
            let v = judge(&bench, &chaos, &before, &after, state(200_000), &BOUNDS);
            assert!(!v.passed);
            assert!(!v.checks[2].passed, "{:#?}", v.checks[2]);
        }
        // More aborts on the server than clients hung up.
        let v = judge(
            &bench,
            &chaos,
            &before,
            &metrics(0, 3, 3, 0, 0.0),
            state(0),
            &BOUNDS,
        );
        assert!(!v.checks[3].passed);
    }

    #[test]
    fn errors_failures_leaks_and_growth_fail() {
        let (mut bench, chaos) = scenario();
        let before = metrics(0, 0, 0, 0, 0.0);
        let v = judge(
            &bench,
            &chaos,
            &before,
            &metrics(0, 3, 2, 1, 0.0),
            state(200_000),
            &BOUNDS,
        );
        assert!(!v.passed, "an engine error");
        let v = judge(
            &bench,
            &chaos,
            &before,
            &metrics(0, 4, 2, 0, 0.0),
            state(300_000),
            &BOUNDS,
        );
        assert!(!v.passed, "100 MiB over the baseline");
        let mut busy = state(200_000);
        busy.idle = false;
        let v = judge(
            &bench,
            &chaos,
            &before,
            &metrics(0, 4, 2, 0, 0.25),
            busy,
            &BOUNDS,
        );
        assert!(!v.passed, "blocks still held");
        bench.push(line(
            3,
            Some("HTTP 429 Too Many Requests: server overloaded"),
        ));
        let v = judge(
            &bench,
            &chaos,
            &before,
            &metrics(0, 4, 2, 0, 0.0),
            state(200_000),
            &BOUNDS,
        );
        assert!(!v.passed, "overloaded");
        assert!(!v.checks[6].passed && v.checks[6].name == "load below capacity");
        bench.pop();
        bench.push(line(3, Some("stream closed before [DONE]")));
        let v = judge(
            &bench,
            &chaos,
            &before,
            &metrics(0, 4, 2, 0, 0.0),
            state(200_000),
            &BOUNDS,
        );
        assert!(!v.passed);
        assert_eq!(v.failures.len(), 1);
    }

    #[test]
    fn a_speculative_soak_must_have_drafted() {
        let (bench, chaos) = scenario();
        let before = metrics(0, 0, 0, 0, 0.0);
        let after = metrics(0, 4, 2, 0, 0.0);
        let bounds = Bounds {
            speculative_config: Some(serde_json::json!({"method": "ngram"})),
            ..BOUNDS
        };
        let v = judge(&bench, &chaos, &before, &after, state(200_000), &bounds);
        assert!(!v.passed, "no drafts counted: speculation never ran");
        let drafted = Scrape::parse(&format!(
            "{}metrum_spec_decode_num_drafts_total 7\n",
            "metrum_requests_total{finish_reason=\"length\"} 4\n\
             metrum_requests_total{finish_reason=\"abort\"} 2\n\
             metrum_requests_running 0\nmetrum_requests_waiting 0\n\
             metrum_kv_cache_usage_ratio 0\n"
        ));
        let v = judge(&bench, &chaos, &before, &drafted, state(200_000), &bounds);
        assert!(v.passed, "{:#?}", v.checks);
        assert_eq!(v.speculative_config, bounds.speculative_config);
    }
}
