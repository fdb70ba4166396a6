//! `metrum bench run` end to end: open the target, plan, dispatch, assemble timelines, and
//! write the run directory. [`run_at`] is the one run that a capacity search repeats.

use crate::args::{BenchRunArgs, SloArgs, WorkloadArgs};
use crate::machine::MachineInfo;
use crate::output::config::{self, ConfigInputs, RunConfig};
use crate::output::jsonl::RequestLine;
use crate::output::summary::{self, BenchSummary, SloParams, SummaryInputs};
use crate::results::assemble;
use crate::run::{execute, plan};
use crate::session::Session;
use anyhow::{Context, Result, bail};
use metrum_core::FinishReason;
use metrum_core::Nanos;
use metrum_metrics::{RequestTimeline, SloConfig, SloFile};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What a finished run hands back (everything is also on disk in `out_dir`).
#[derive(Clone, Debug)]
pub struct BenchOutcome {
    pub out_dir: PathBuf,
    pub config: RunConfig,
    pub summary: BenchSummary,
}

impl BenchOutcome {
    /// A few lines for the terminal: counts, the headline percentiles, every warning.
    pub fn headline(&self) -> String {
        let s = &self.summary;
        let c = &s.client;
        let ms = |v: Option<f64>| v.map_or("–".to_string(), |x| format!("{:.1}", x * 1e3));
        let num = |v: Option<f64>| v.map_or("–".to_string(), |x| format!("{x:.3}"));
        // The counts are over the summarized requests; say so when a warm-up left some out
        // (a run of 6683 showed "6683 requests (5237 completed, 0 failed)").
        let summarized = if s.warmup_excluded > 0 {
            format!(", {} after the warm-up", s.requests_summarized)
        } else {
            String::new()
        };
        // Refusals (429) are failures too (R15); name them, they are admission control's work.
        let refused = match s.refused {
            0 => String::new(),
            n => format!(", {n} of them refused with 429"),
        };
        let mut out = format!(
            "{} requests{summarized} ({} completed, {} failed{refused}) in {:.1} s -> {}\n  \
             TTFT P50/P99 {}/{} ms (requests), TBT P50/P99 {}/{} ms (tokens), fluidity P50 {}, \
             service miss rate {}, {:.1} output tok/s",
            s.requests_sent,
            c.requests.completed,
            c.requests.failed,
            s.load_generator.wall_s,
            self.out_dir.display(),
            ms(c.ttft_s.p50),
            ms(c.ttft_s.p99),
            ms(c.tbt_s.p50),
            ms(c.tbt_s.p99),
            num(c.fluidity_index.p50),
            num(c.service_miss_rate.miss_rate),
            c.output_tokens_per_s.unwrap_or(0.0),
        );
        for w in &s.warnings {
            out.push_str(&format!("\n  warning: {w}"));
        }
        out
    }
}

/// One run's settings beyond the target.
pub struct RunSettings<'a> {
    pub command: &'a str,
    pub args_json: Value,
    pub workload: &'a WorkloadArgs,
    pub slo: SloConfig,
    pub qps: f64,
    pub seed: u64,
    /// See [`crate::run::Plan::prompt_salt`]; 0 for a plain `bench run`.
    pub prompt_salt: u64,
    pub show_progress: bool,
}

/// A run plus the timelines its summary is over (what a capacity SLO judges).
pub struct RunArtifacts {
    pub outcome: BenchOutcome,
    pub steady: Vec<RequestTimeline>,
}

/// `--tbt-slo`, `--ttft-slack` and `--slo-file` as validated SLO parameters.
pub fn slo_config(args: &SloArgs) -> Result<SloConfig> {
    let file = match &args.slo_file {
        Some(path) => {
            Some(SloFile::load(path).with_context(|| format!("loading {}", path.display()))?)
        }
        None => None,
    };
    Ok(SloConfig::from_secs(
        args.tbt_slo,
        args.ttft_slack,
        file.as_ref(),
    )?)
}

fn warmup(args: &WorkloadArgs) -> Result<Nanos> {
    if !(args.warmup.is_finite() && args.warmup >= 0.0) {
        bail!(
            "--warmup must be a non-negative number of seconds, got {}",
            args.warmup
        );
    }
    Ok(Nanos::from_secs_f64(args.warmup))
}

/// One run against an open session, written to `out`.
pub async fn run_at(
    session: &Session,
    settings: &RunSettings<'_>,
    out: &Path,
) -> Result<RunArtifacts> {
    let warmup = warmup(settings.workload)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let plan = plan(
        session,
        settings.workload,
        settings.qps,
        settings.seed,
        settings.prompt_salt,
    )
    .await?;
    let mut plan_notes = Vec::new();
    if session.context_source == crate::session::Source::Fallback {
        plan_notes.push(format!(
            "the target does not state its context length: {} tokens assumed for the length rule (pass --context)",
            session.context
        ));
    }
    if plan.shrunk_by_context > 0 {
        plan_notes.push(format!(
            "{} requests were shrunk to fit the {}-token context (ratio kept)",
            plan.shrunk_by_context, session.context
        ));
    }
    if plan.inexact_prompts > 0 {
        plan_notes.push(format!(
            "{} prompts could not be cut to exactly P tokens",
            plan.inexact_prompts
        ));
    }
    let offered_qps = match plan.arrival {
        metrum_workload::ArrivalProcess::Trace => None,
        _ => Some(settings.qps),
    };
    let executed = execute(session, plan.clone(), settings.show_progress).await;
    let router = config::RouterInfo::from_routes(
        executed
            .requests
            .iter()
            .map(|r| r.outcome.record.routed_to.as_deref()),
    );
    let results = assemble(executed.requests, &session.tokenizer).await;
    let machine = MachineInfo::detect();
    let summary = summary::build(SummaryInputs {
        results: &results,
        slo: &settings.slo,
        warmup,
        offered_qps,
        wall: executed.wall,
        cpu_seconds: executed.cpu_seconds,
        machine_cores: machine.cores,
        shares_machine_with_server: session.is_local(),
        plan_notes,
    });
    let short_outputs = results
        .iter()
        .filter(|r| r.error.is_none() && r.timeline.output_tokens() < u64::from(r.max_tokens))
        .filter(|r| {
            matches!(
                r.timeline.finish().map(|f| f.reason),
                Some(FinishReason::Stop | FinishReason::Length)
            )
        })
        .count();
    let config = config::build(ConfigInputs {
        command: settings.command,
        args: settings.args_json.clone(),
        session,
        plan: &plan,
        qps: settings.qps,
        seed: settings.seed,
        warmup_s: warmup.as_secs_f64(),
        length_scale: settings.workload.length_scale,
        slo: SloParams {
            tbt_slo_s: settings.slo.tbt_slo().as_secs_f64(),
            ttft_slack_s: settings.slo.ttft_slack().as_secs_f64(),
            prefill_model: settings.slo.prefill_model(),
        },
        machine,
        short_outputs,
        router,
    });
    let lines: Vec<RequestLine> = results
        .iter()
        .map(|r| RequestLine::new(r, &settings.slo, executed.start))
        .collect();
    crate::output::write_run(out, &config, &summary, &lines, &results)?;
    let steady = summary::steady_client_timelines(&results, warmup);
    Ok(RunArtifacts {
        outcome: BenchOutcome {
            out_dir: out.to_path_buf(),
            config,
            summary,
        },
        steady,
    })
}

/// `metrum bench run`: one run, its directory written to `--out`.
pub async fn run_bench(args: BenchRunArgs) -> Result<BenchOutcome> {
    let slo = slo_config(&args.slo)?;
    crate::output::prepare_dir(&args.out)?;
    let session = Session::open(&args.target, &args.out).await?;
    let settings = RunSettings {
        command: "bench run",
        args_json: serde_json::to_value(&args)?,
        workload: &args.workload,
        slo,
        qps: args.qps,
        seed: args.workload.seed,
        prompt_salt: 0,
        show_progress: !args.no_progress,
    };
    let result = run_at(&session, &settings, &args.out).await;
    let closed = session.close().await;
    let artifacts = result?;
    closed.context("stopping the --serve server")?;
    println!("{}", artifacts.outcome.headline());
    Ok(artifacts.outcome)
}
