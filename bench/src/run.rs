//! One benchmark run: plan every request ahead (arrival offsets from the seed, lengths,
//! prompt text), then dispatch them truly open loop.
//!
//! The dispatcher sleeps until each scheduled offset and sends; it never waits for earlier
//! requests, skips an arrival, or caps concurrency. A request's arrival `a_r` is its
//! *scheduled* time, so if sending lags the schedule (an overloaded client), the lag is part
//! of its TTFT, and the lag itself is measured and reported.

use crate::args::WorkloadArgs;
use crate::client::{CallOutcome, CompletionCall, stream_completion};
use crate::machine::process_cpu_seconds;
use crate::prompt::PromptBuilder;
use crate::session::Session;
use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use metrum_core::Nanos;
use metrum_core::time::MonotonicClock;
use metrum_workload::arrival::{ArrivalProcess, RunLength, schedule};
use metrum_workload::{DEFAULT_WORKLOAD, WorkloadSpec, fit_to_context};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Requests sent when neither --num-requests nor --duration is given.
pub const DEFAULT_NUM_REQUESTS: usize = 16;
/// Offset of the prompt-offset RNG stream from the run seed.
const PROMPT_STREAM: u64 = 0x7072_6f6d_7074_7321; // "prompts!"

/// One request, fully decided before the run starts.
#[derive(Clone, Debug)]
pub struct PlannedRequest {
    pub id: u64,
    /// Scheduled send offset from the run's start.
    pub at: Nanos,
    pub prompt: String,
    /// Prompt tokens as the target's tokenizer counts the prompt.
    pub prompt_tokens: u32,
    pub max_tokens: u32,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub workload: WorkloadSpec,
    pub arrival: ArrivalProcess,
    pub requests: Vec<PlannedRequest>,
    /// Requests whose lengths the context rule shrank.
    pub shrunk_by_context: usize,
    /// Prompts whose token count could not be made exactly P.
    pub inexact_prompts: usize,
    /// Mixed into the prompt seed: probes of one capacity search share `seed` (the same arrival
    /// pattern at every QPS) but must not resend prompts the server has cached.
    pub prompt_salt: u64,
}

/// Decides every request of a run at `qps` with `seed`; prompts also depend on `prompt_salt`.
pub async fn plan(
    session: &Session,
    args: &WorkloadArgs,
    qps: f64,
    seed: u64,
    prompt_salt: u64,
) -> Result<Plan> {
    let workload: WorkloadSpec = args
        .workload
        .as_deref()
        .unwrap_or(DEFAULT_WORKLOAD)
        .parse()?;
    let arrival: ArrivalProcess = args.arrival.parse()?;
    if !(args.length_scale.is_finite() && args.length_scale > 0.0) {
        bail!("--length-scale must be positive, got {}", args.length_scale);
    }
    let length = match (args.num_requests, args.duration) {
        (Some(n), _) => RunLength::Requests(n),
        (None, Some(d)) if d.is_finite() && d > 0.0 => RunLength::Duration(Nanos::from_secs_f64(d)),
        (None, Some(d)) => bail!("--duration must be positive, got {d}"),
        (None, None) => RunLength::Requests(DEFAULT_NUM_REQUESTS),
    };
    let trace_times = match arrival {
        ArrivalProcess::Trace => workload.trace_arrivals()?,
        _ => None,
    };
    let times = schedule(arrival, qps, length, seed, trace_times.as_deref())?;
    if times.is_empty() {
        bail!("the run has no request (check --num-requests / --duration)");
    }
    let mut specs = workload.sample(times.len(), seed)?;
    let shrunk_by_context = fit_to_context(&mut specs, session.context, args.length_scale);
    let builder = PromptBuilder::new(&session.tokenizer).await?;
    let mut rng = StdRng::seed_from_u64(
        seed ^ PROMPT_STREAM ^ prompt_salt.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let mut requests = Vec::with_capacity(times.len());
    let mut inexact_prompts = 0;
    for (i, (at, spec)) in times.into_iter().zip(specs).enumerate() {
        let (prompt, prompt_tokens) = match spec.text {
            Some(text) => (text, spec.prompt_tokens),
            None => {
                let built = builder.build(spec.prompt_tokens, &mut rng).await?;
                inexact_prompts += usize::from(built.tokens != spec.prompt_tokens);
                (built.text, built.tokens)
            }
        };
        requests.push(PlannedRequest {
            id: i as u64,
            at,
            prompt,
            prompt_tokens,
            max_tokens: spec.output_tokens,
        });
    }
    Ok(Plan {
        workload,
        arrival,
        requests,
        shrunk_by_context,
        inexact_prompts,
        prompt_salt,
    })
}

/// One request as it went: when it was due, when it left, what came back.
#[derive(Clone, Debug)]
pub struct SentRequest {
    pub id: u64,
    /// `a_r`: the scheduled send time on the run clock.
    pub arrival: Nanos,
    pub sent: Nanos,
    pub prompt_tokens: u32,
    pub max_tokens: u32,
    pub outcome: CallOutcome,
}

/// Everything the dispatcher measured.
#[derive(Clone, Debug)]
pub struct Executed {
    pub requests: Vec<SentRequest>,
    /// Run clock reading at offset 0 of the schedule.
    pub start: Nanos,
    /// Start to last request ended.
    pub wall: Nanos,
    /// Load generator CPU seconds during the run (user + system).
    pub cpu_seconds: Option<f64>,
}

/// Sends every planned request at its time and waits for all of them.
pub async fn execute(session: &Session, plan: Plan, show_progress: bool) -> Executed {
    let progress = if show_progress {
        ProgressBar::new(plan.requests.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} done {msg}")
    {
        progress.set_style(style.progress_chars("=> "));
    }
    let in_flight = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let cpu_before = process_cpu_seconds();
    let clock = MonotonicClock::new();
    let start = tokio::time::Instant::now();
    let t0 = clock.at(start.into_std());
    let mut handles = Vec::with_capacity(plan.requests.len());
    for planned in plan.requests {
        tokio::time::sleep_until(start + std::time::Duration::from_nanos(planned.at.0)).await;
        let sent = clock.now();
        let call = CompletionCall {
            url: session.completions_url(),
            model: session.model.clone(),
            prompt: planned.prompt,
            max_tokens: planned.max_tokens,
            temperature: session.temperature,
            logit_bias: session.logit_bias.clone(),
            extra_body: session.extra_body.clone(),
            timeout: session.request_timeout,
        };
        let http = session.http.clone();
        let (progress, in_flight, failed) = (progress.clone(), in_flight.clone(), failed.clone());
        in_flight.fetch_add(1, Ordering::Relaxed);
        let handle = tokio::spawn(async move {
            let outcome = stream_completion(&http, &call, &clock).await;
            let now_in_flight = in_flight.fetch_sub(1, Ordering::Relaxed) - 1;
            let now_failed = match outcome.record.error {
                Some(_) => failed.fetch_add(1, Ordering::Relaxed) + 1,
                None => failed.load(Ordering::Relaxed),
            };
            progress.set_message(format!("{now_in_flight} in flight, {now_failed} failed"));
            progress.inc(1);
            outcome
        });
        handles.push((
            planned.id,
            t0 + planned.at,
            sent,
            planned.prompt_tokens,
            planned.max_tokens,
            handle,
        ));
    }
    let mut requests = Vec::with_capacity(handles.len());
    for (id, arrival, sent, prompt_tokens, max_tokens, handle) in handles {
        let outcome = match handle.await {
            Ok(outcome) => outcome,
            Err(e) => {
                let mut record = crate::stream::StreamRecord::default();
                record.fail(format!("request task failed: {e}"));
                CallOutcome {
                    record,
                    ended: clock.now(),
                }
            }
        };
        requests.push(SentRequest {
            id,
            arrival,
            sent,
            prompt_tokens,
            max_tokens,
            outcome,
        });
    }
    progress.finish_and_clear();
    let cpu_seconds = match (cpu_before, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Executed {
        requests,
        start: t0,
        wall: clock.now() - t0,
        cpu_seconds,
    }
}
