//! `metrum bench capacity`: the largest QPS the target sustains under an SLO (spec (c)).
//! metrum-metrics' [`CapacitySearch`] decides what to run (Etalon's bisection, three seeds near
//! the boundary); each probe is a full `bench run` written to `probes/qps-Q-seed-S/`, judged by
//! [`CapacitySlo::evaluate`] over its post-warm-up client timelines. The server (with
//! `--serve`) is started once for the whole search.

use crate::args::{CapacityArgs, SloKind};
use crate::output::plots::{self, Series};
use crate::output::write_json;
use crate::pipeline::{RunSettings, run_at, slo_config};
use crate::session::Session;
use anyhow::{Context, Result};
use metrum_core::Nanos;
use metrum_metrics::{
    CapacityResult, CapacitySearch, CapacitySearchConfig, CapacitySlo, SearchStep, SloConfig,
    SloVerdict,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One benchmark run the search made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeRun {
    pub qps: f64,
    pub seed: u64,
    pub verdict: SloVerdict,
    pub dir: PathBuf,
    pub failed_requests: u64,
}

/// `capacity.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapacityReport {
    pub slo_kind: SloKind,
    pub slo: CapacitySlo,
    pub tbt_slo_s: f64,
    pub ttft_slack_s: f64,
    pub search: CapacitySearchConfig,
    pub result: CapacityResult,
    pub runs: Vec<ProbeRun>,
    pub target: String,
    pub model: String,
    pub workload: String,
}

/// The capacity SLO the flags describe.
pub fn capacity_slo(args: &CapacityArgs, slo: &SloConfig) -> CapacitySlo {
    let secs = Nanos::from_secs_f64;
    match args.slo_kind {
        SloKind::Deadline => CapacitySlo::Deadline {
            miss_rate_slo: args.miss_rate_slo,
            request_quantile: 0.99,
        },
        SloKind::TbtTtft => CapacitySlo::TbtTtft {
            tbt_slo: slo.tbt_slo(),
            tbt_quantile: 0.99,
            ttft_slo: secs(args.ttft_slo),
            ttft_quantile: 0.9,
        },
        SloKind::TtftTpot => CapacitySlo::TtftTpot {
            ttft_slo: secs(args.ttft_slo),
            ttft_quantile: 0.9,
            tpot_slo: secs(args.tpot_slo),
            tpot_quantile: 0.9,
        },
    }
}

/// Runs the search, writing `capacity.json`, `capacity.svg` and every probe's directory.
pub async fn run_capacity(args: CapacityArgs) -> Result<CapacityReport> {
    let slo = slo_config(&args.slo)?;
    let mut search = CapacitySearch::new(search_config_of(&args))?;
    crate::output::prepare_dir(&args.out)?;
    let session = Session::open(&args.target, &args.out).await?;
    let result = search_with(&session, &args, &slo, &mut search).await;
    let closed = session.close().await;
    let report = result?;
    closed.context("stopping the --serve server")?;
    write_json(&args.out.join("capacity.json"), &report)?;
    plot(&args.out.join("capacity.svg"), &report)?;
    match report.result.max_qps_under_slo {
        Some(qps) => println!(
            "capacity: {qps:.2} QPS under the {:?} SLO ({} runs, stopped: {:?}) -> {}",
            report.slo_kind,
            report.runs.len(),
            report.result.stop_reason,
            args.out.display()
        ),
        None => println!(
            "capacity: no probed QPS met the {:?} SLO ({} runs) -> {}",
            report.slo_kind,
            report.runs.len(),
            args.out.display()
        ),
    }
    Ok(report)
}

async fn search_with(
    session: &Session,
    args: &CapacityArgs,
    slo: &SloConfig,
    search: &mut CapacitySearch,
) -> Result<CapacityReport> {
    let capacity_slo = capacity_slo(args, slo);
    let args_json = serde_json::to_value(args)?;
    let mut runs = Vec::new();
    let result = loop {
        let request = match search.next_step() {
            SearchStep::Done(result) => break result,
            SearchStep::Run(request) => request,
        };
        let seed = args
            .workload
            .seed
            .wrapping_add(u64::from(request.seed_index));
        let dir = args
            .out
            .join("probes")
            .join(format!("qps-{:.2}-seed-{seed}", request.qps));
        let settings = RunSettings {
            command: "bench capacity",
            args_json: args_json.clone(),
            workload: &args.workload,
            slo: *slo,
            qps: request.qps,
            seed,
            // Every probe sends prompts no earlier probe sent: with prefix caching (Metrum's,
            // llama-server's slot cache) a repeated prompt is nearly free, and the search
            // would measure the cache (seen: 77% of Metrum's prompt blocks were hits).
            prompt_salt: runs.len() as u64 + 1,
            show_progress: !args.no_progress,
        };
        let artifacts = run_at(session, &settings, &dir).await?;
        let verdict = capacity_slo.evaluate(&artifacts.steady, slo);
        eprintln!(
            "capacity: {:.2} QPS seed {seed}: {} ({})",
            request.qps,
            if verdict.passed { "pass" } else { "fail" },
            verdict
                .checks
                .iter()
                .map(|c| format!(
                    "{} P{} = {:?} vs {}",
                    c.metric,
                    c.quantile * 100.0,
                    c.value,
                    c.threshold
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        search.record(request, verdict.run_result())?;
        runs.push(ProbeRun {
            qps: request.qps,
            seed,
            failed_requests: artifacts.outcome.summary.client.requests.failed,
            verdict,
            dir,
        });
    };
    Ok(CapacityReport {
        slo_kind: args.slo_kind,
        slo: capacity_slo,
        tbt_slo_s: slo.tbt_slo().as_secs_f64(),
        ttft_slack_s: slo.ttft_slack().as_secs_f64(),
        search: search_config_of(args),
        result,
        runs,
        target: session.base_url.clone(),
        model: session.model.clone(),
        workload: args
            .workload
            .workload
            .clone()
            .unwrap_or_else(|| metrum_workload::DEFAULT_WORKLOAD.to_string()),
    })
}

fn search_config_of(args: &CapacityArgs) -> CapacitySearchConfig {
    CapacitySearchConfig {
        start_qps: args.start_qps,
        min_granularity_pct: args.granularity_pct,
        max_iterations: args.max_iterations,
        boundary_repeats: args.repeats,
        ..CapacitySearchConfig::default()
    }
}

/// The headline SLO metric of every run against QPS, passes and failures apart, with the
/// threshold as a line.
fn plot(path: &Path, report: &CapacityReport) -> Result<()> {
    let metric = |passed: bool| -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = report
            .runs
            .iter()
            .filter(|r| r.verdict.passed == passed)
            .filter_map(|r| Some((r.qps, r.verdict.checks.first()?.value?)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    };
    let name = report
        .runs
        .first()
        .and_then(|r| r.verdict.checks.first())
        .map_or("metric".to_string(), |c| {
            format!(
                "{} P{} over {}",
                c.metric,
                c.quantile * 100.0,
                c.population.as_str()
            )
        });
    let threshold = report
        .runs
        .first()
        .and_then(|r| r.verdict.checks.first())
        .map(|c| c.threshold);
    let qps_range = report
        .runs
        .iter()
        .map(|r| r.qps)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), q| {
            (lo.min(q), hi.max(q))
        });
    let mut series = vec![
        Series {
            name: "passed",
            points: metric(true),
        },
        Series {
            name: "failed",
            points: metric(false),
        },
    ];
    if let Some(t) = threshold.filter(|_| qps_range.0.is_finite()) {
        series.push(Series {
            name: "SLO threshold",
            points: vec![(qps_range.0, t), (qps_range.1, t)],
        });
    }
    plots::lines(
        path,
        &format!("{name} vs offered QPS"),
        "QPS",
        &name,
        &series,
        None,
    )
}
