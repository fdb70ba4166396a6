//! `summary.json`: metrum-metrics' [`RunSummary`] of the client-side timelines (what users
//! saw) and, when the server reported its timings, of the server-side ones (scheduling
//! delay, prefill time); plus what the load generator knows about itself (send lag, CPU),
//! the SLO parameters, and warnings about anything that could bias the numbers.

use crate::accounting::TokenSource;
use crate::results::RequestResult;
use metrum_core::Nanos;
use metrum_metrics::{
    Distribution, DistributionSummary, Population, PrefillModel, RequestTimeline, RunSummary,
    SloConfig, steady_state, summarize,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Send lag above which the client is said to have fallen behind its schedule.
pub const LAG_WARN_P99_S: f64 = 0.010;
/// Load generator CPU use (fraction of all cores) above which it may compete with the server.
pub const CPU_WARN_FRACTION: f64 = 0.25;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloParams {
    pub tbt_slo_s: f64,
    pub ttft_slack_s: f64,
    pub prefill_model: PrefillModel,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadGeneratorReport {
    /// Actual send time minus scheduled time, per request. Already inside TTFT.
    pub send_lag_s: DistributionSummary,
    pub cpu_seconds: Option<f64>,
    pub wall_s: f64,
    /// CPU seconds / wall seconds: 1.0 is one core busy.
    pub cpu_cores_used: Option<f64>,
    pub machine_cores: usize,
    /// The server runs on this machine too, so the two share its cores.
    pub shares_machine_with_server: bool,
    /// How chunk token counts were determined, requests per rule.
    pub token_sources: BTreeMap<String, usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchSummary {
    pub requests_sent: usize,
    /// Sent after the warm-up, the ones every statistic below is over.
    pub requests_summarized: usize,
    pub warmup_excluded: usize,
    /// Of the summarized requests, those the server refused with HTTP 429 (admission control
    /// or a full queue). They are counted as failed in `client.requests` too (R15).
    #[serde(default)]
    pub refused: usize,
    pub offered_qps: Option<f64>,
    pub slo: SloParams,
    /// User-perceived, timed by this client from each request's scheduled arrival.
    pub client: RunSummary,
    /// From the server's own per-token timestamps, when it sent them (Metrum does).
    pub server: Option<RunSummary>,
    /// Requests that carried a server timing object.
    pub server_reports: usize,
    pub load_generator: LoadGeneratorReport,
    pub warnings: Vec<String>,
}

/// What [`build`] needs besides the requests.
pub struct SummaryInputs<'a> {
    pub results: &'a [RequestResult],
    pub slo: &'a SloConfig,
    pub warmup: Nanos,
    pub offered_qps: Option<f64>,
    pub wall: Nanos,
    pub cpu_seconds: Option<f64>,
    pub machine_cores: usize,
    pub shares_machine_with_server: bool,
    /// Notes from planning (context rule, inexact prompts), passed through as warnings.
    pub plan_notes: Vec<String>,
}

/// The summarized (post-warm-up) client timelines, also what capacity checks judge.
pub fn steady_client_timelines(results: &[RequestResult], warmup: Nanos) -> Vec<RequestTimeline> {
    steady_state(
        results.iter().map(|r| r.timeline.clone()).collect(),
        warmup,
        Nanos::ZERO,
    )
}

pub fn build(inputs: SummaryInputs<'_>) -> BenchSummary {
    let results = inputs.results;
    let steady = steady_client_timelines(results, inputs.warmup);
    let kept: std::collections::HashSet<_> = steady.iter().map(|t| t.id()).collect();
    let client = summarize(&steady, inputs.slo, None);
    let server_timelines: Vec<RequestTimeline> = results
        .iter()
        .filter(|r| kept.contains(&r.timeline.id()))
        .filter_map(|r| r.server_timeline.clone())
        .collect();
    let server =
        (!server_timelines.is_empty()).then(|| summarize(&server_timelines, inputs.slo, None));
    let lags = Distribution::new(
        Population::Requests,
        results
            .iter()
            .map(|r| (r.sent - r.timeline.arrival()).as_secs_f64()),
    );
    let wall_s = inputs.wall.as_secs_f64();
    let cpu_cores_used = inputs
        .cpu_seconds
        .filter(|_| wall_s > 0.0)
        .map(|c| c / wall_s);
    let mut token_sources = BTreeMap::new();
    for r in results {
        let key = r.token_source.map_or("no_chunks".to_string(), |s| {
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        });
        *token_sources.entry(key).or_insert(0) += 1;
    }
    let load_generator = LoadGeneratorReport {
        send_lag_s: lags.summary(),
        cpu_seconds: inputs.cpu_seconds,
        wall_s,
        cpu_cores_used,
        machine_cores: inputs.machine_cores,
        shares_machine_with_server: inputs.shares_machine_with_server,
        token_sources,
    };
    let mut warnings = inputs.plan_notes;
    warnings.extend(bias_warnings(&load_generator, results));
    if server.is_some() && server_timelines.len() < steady.len() {
        warnings.push(format!(
            "only {} of {} summarized requests carried server timings; the server-side section covers those only",
            server_timelines.len(),
            steady.len()
        ));
    }
    BenchSummary {
        requests_sent: results.len(),
        requests_summarized: steady.len(),
        warmup_excluded: results.len() - steady.len(),
        refused: results
            .iter()
            .filter(|r| r.refused && kept.contains(&r.timeline.id()))
            .count(),
        offered_qps: inputs.offered_qps,
        slo: SloParams {
            tbt_slo_s: inputs.slo.tbt_slo().as_secs_f64(),
            ttft_slack_s: inputs.slo.ttft_slack().as_secs_f64(),
            prefill_model: inputs.slo.prefill_model(),
        },
        client,
        server,
        server_reports: results.iter().filter(|r| r.server_timing.is_some()).count(),
        load_generator,
        warnings,
    }
}

/// R7: the client must not be the bottleneck, and say so when it might be.
fn bias_warnings(lg: &LoadGeneratorReport, results: &[RequestResult]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p99) = lg.send_lag_s.p99.filter(|p| *p > LAG_WARN_P99_S) {
        out.push(format!(
            "the load generator fell behind its schedule: P99 send lag {:.1} ms (max {:.1} ms); the lag is inside TTFT",
            p99 * 1e3,
            lg.send_lag_s.max.unwrap_or(p99) * 1e3
        ));
    }
    if let Some(used) = lg.cpu_cores_used {
        let fraction = used / lg.machine_cores.max(1) as f64;
        if fraction > CPU_WARN_FRACTION {
            out.push(format!(
                "the load generator used {:.0}% of this machine's {} cores; it may slow a server running here",
                fraction * 100.0,
                lg.machine_cores
            ));
        }
    }
    if lg.shares_machine_with_server {
        out.push(format!(
            "client and server share this machine (the client used {:.2} cores on average)",
            lg.cpu_cores_used.unwrap_or(0.0)
        ));
    }
    let inferred = results
        .iter()
        .filter(|r| {
            matches!(
                r.token_source,
                Some(TokenSource::OneTokenPerChunkReconciled)
            )
        })
        .count();
    if inferred > 0 {
        out.push(format!(
            "{inferred} requests streamed chunks whose token counts could not be re-tokenized; their surplus tokens were put on the last chunk"
        ));
    }
    out
}
