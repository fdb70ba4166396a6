//! Run-level statistics over many timelines, for the load generator's report: labelled
//! distributions, the service-level miss rate (a ratio of sums), the miss-rate-vs-target-TBT
//! curve and the fluid token generation rate (spec (a) items 9-14).

use crate::fluidity::{DeadlineTally, FirstToken};
use crate::percentiles::{Distribution, DistributionSummary, Population, quantile};
use crate::slo::SloConfig;
use crate::timeline::RequestTimeline;
use metrum_core::{FinishReason, Nanos};
use serde::{Deserialize, Serialize};

/// The per-request miss rate the fluid token generation rate targets (fluidity ≥ 0.9).
pub const FLUID_TGR_TARGET_MISS_RATE: f64 = 0.1;
/// The request quantile of the fluid token generation rate and the TBT curve.
pub const FLUID_TGR_REQUEST_QUANTILE: f64 = 0.99;

fn secs(n: Nanos) -> f64 {
    n.as_secs_f64()
}

/// Service-level deadline accounting: `Σ missed / Σ total` over requests, never the mean of
/// per-request rates.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceMissRate {
    pub deadlines: DeadlineTally,
    pub miss_rate: Option<f64>,
}

pub fn service_miss_rate(timelines: &[RequestTimeline], slo: &SloConfig) -> ServiceMissRate {
    let mut deadlines = DeadlineTally::default();
    for t in timelines {
        deadlines.merge(t.deadline_tally(slo.deadlines_for(t.shape()), FirstToken::Deadline));
    }
    ServiceMissRate {
        deadlines,
        miss_rate: deadlines.miss_rate(),
    }
}

/// The deadlines swept by [`miss_rate_vs_target_tbt`]. Default: 1 ms to 100 ms in 1 ms
/// steps, P99 over requests, as Etalon.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurveSpec {
    pub from: Nanos,
    pub to: Nanos,
    pub step: Nanos,
    pub request_quantile: f64,
}

impl Default for CurveSpec {
    fn default() -> Self {
        CurveSpec {
            from: Nanos::from_millis(1),
            to: Nanos::from_millis(100),
            step: Nanos::from_millis(1),
            request_quantile: FLUID_TGR_REQUEST_QUANTILE,
        }
    }
}

/// One point of the curve: the request-quantile of per-request miss rates at one `D_d`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub tbt_deadline_s: f64,
    /// `None` when no request had a decode deadline.
    pub miss_rate: Option<f64>,
}

/// Per-request miss rate with the first token ignored, at each `D_d` of `spec`. Requests
/// without any decode deadline (fewer than two tokens, not failed) are left out.
pub fn miss_rate_vs_target_tbt(timelines: &[RequestTimeline], spec: &CurveSpec) -> Vec<CurvePoint> {
    let step = spec.step.max(Nanos(1));
    let mut points = Vec::new();
    let mut decode = spec.from.max(Nanos(1));
    while decode <= spec.to {
        let params = crate::DeadlineParams::clamped(Nanos::ZERO, decode);
        let rates = timelines
            .iter()
            .map(|t| t.deadline_tally(params, FirstToken::Ignore).miss_rate());
        let rates = Distribution::from_options(Population::Requests, rates);
        points.push(CurvePoint {
            tbt_deadline_s: secs(decode),
            miss_rate: quantile(rates.values(), spec.request_quantile),
        });
        decode = decode + step;
    }
    points
}

/// Per request, the smallest `D_d` keeping its miss rate ≤ `target` with the first token
/// ignored, in seconds. A request that cannot meet it even at 1e10 s counts as `+inf`;
/// one without decode deadlines is undefined.
pub fn min_tbt_deadlines(timelines: &[RequestTimeline], target: f64) -> Distribution {
    let values = timelines.iter().map(|t| {
        let probe = crate::DeadlineParams::clamped(Nanos::ZERO, Nanos(1));
        t.deadline_tally(probe, FirstToken::Ignore).miss_rate()?;
        Some(
            t.min_tbt_deadline_to_meet(target, Nanos::ZERO, FirstToken::Ignore)
                .map_or(f64::INFINITY, secs),
        )
    });
    Distribution::from_options(Population::Requests, values)
}

/// Fluid token generation rate in tokens/s: `1 / P99 over requests of the min D_d` meeting
/// a 10% miss rate. `None` without any request that has decode deadlines.
pub fn fluid_token_generation_rate(timelines: &[RequestTimeline]) -> Option<f64> {
    let deadlines = min_tbt_deadlines(timelines, FLUID_TGR_TARGET_MISS_RATE);
    let p99 = deadlines.quantile(FLUID_TGR_REQUEST_QUANTILE)?.value;
    (p99 > 0.0).then(|| 1.0 / p99)
}

/// The three throughput readings Etalon writes side by side, tokens/s.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThroughputComparison {
    /// Deadline based: [`fluid_token_generation_rate`].
    pub fluid_token_generation_rate: Option<f64>,
    /// `1 / mean(TPOT)` over requests.
    pub tpot_based: Option<f64>,
    /// `1 / P99(TBT)` over tokens.
    pub tbt_based: Option<f64>,
}

pub fn throughput_comparison(timelines: &[RequestTimeline]) -> ThroughputComparison {
    let tpot = Distribution::from_options(
        Population::Requests,
        timelines.iter().map(|t| t.tpot_secs()),
    );
    let tbt = tbt_distribution(timelines);
    let inverse = |x: Option<f64>| x.filter(|v| *v > 0.0).map(|v| 1.0 / v);
    ThroughputComparison {
        fluid_token_generation_rate: fluid_token_generation_rate(timelines),
        tpot_based: inverse(tpot.mean()),
        tbt_based: inverse(tbt.quantile(0.99).map(|p| p.value)),
    }
}

/// Token-level TBT in seconds, burst zeros included.
pub fn tbt_distribution(timelines: &[RequestTimeline]) -> Distribution {
    let values = timelines
        .iter()
        .flat_map(|t| t.time_between_tokens())
        .map(secs);
    Distribution::new(Population::Tokens, values)
}

/// Keeps requests that arrived after the warm-up and before the drain: arrival in
/// `[first arrival + warmup, last arrival − drain]`.
pub fn steady_state(
    timelines: Vec<RequestTimeline>,
    warmup: Nanos,
    drain: Nanos,
) -> Vec<RequestTimeline> {
    let first = timelines.iter().map(|t| t.arrival()).min();
    let last = timelines.iter().map(|t| t.arrival()).max();
    let (Some(first), Some(last)) = (first, last) else {
        return timelines;
    };
    let (start, end) = (first + warmup, last - drain);
    timelines
        .into_iter()
        .filter(|t| t.arrival() >= start && t.arrival() <= end)
        .collect()
}

/// How the requests of a run ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub launched: u64,
    /// Finished with `stop` or `length` and at least one token.
    pub completed: u64,
    pub aborted: u64,
    /// Finished with `error`, or with `stop`/`length` but no token
    /// ([`RequestTimeline::is_failed`]).
    pub failed: u64,
    pub unfinished: u64,
}

/// The SLO a summary was computed under.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloSummary {
    pub tbt_slo_s: f64,
    pub ttft_slack_s: f64,
    pub prefill_model: crate::PrefillModel,
}

/// Everything a load-test report needs, each distribution labelled with its population.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub slo: SloSummary,
    pub requests: RequestCounts,
    /// `failed / launched`.
    pub error_rate: Option<f64>,
    pub duration_s: Option<f64>,
    /// Completed requests per second over `duration_s`.
    pub completed_qps: Option<f64>,
    pub output_tokens_per_s: Option<f64>,
    pub prompt_tokens_total: u64,
    pub output_tokens_total: u64,
    pub preemptions_total: u64,
    pub ttft_s: DistributionSummary,
    pub tbt_s: DistributionSummary,
    pub inter_delivery_s: DistributionSummary,
    pub tpot_s: DistributionSummary,
    pub e2e_s: DistributionSummary,
    pub normalized_e2e_s: DistributionSummary,
    pub scheduling_delay_s: DistributionSummary,
    pub prefill_time_s: DistributionSummary,
    pub preempted_time_s: DistributionSummary,
    pub max_stall_s: DistributionSummary,
    pub fluidity_index: DistributionSummary,
    pub min_tbt_deadline_s: DistributionSummary,
    pub service_miss_rate: ServiceMissRate,
    pub throughput: ThroughputComparison,
    pub tbt_curve: Vec<CurvePoint>,
}

/// Summarizes a run. `duration` defaults to first arrival → last event.
pub fn summarize(
    timelines: &[RequestTimeline],
    slo: &SloConfig,
    duration: Option<Nanos>,
) -> RunSummary {
    let per_request = |f: &dyn Fn(&RequestTimeline) -> Option<f64>| {
        Distribution::from_options(Population::Requests, timelines.iter().map(f)).summary()
    };
    let mut requests = RequestCounts {
        launched: timelines.len() as u64,
        ..RequestCounts::default()
    };
    for t in timelines {
        match (t.is_failed(), t.finish().map(|f| f.reason)) {
            (true, _) | (_, Some(FinishReason::Error)) => requests.failed += 1,
            (_, Some(FinishReason::Stop | FinishReason::Length)) => requests.completed += 1,
            (_, Some(FinishReason::Abort)) => requests.aborted += 1,
            (_, None) => requests.unfinished += 1,
        }
    }
    let output_tokens_total: u64 = timelines.iter().map(|t| t.output_tokens()).sum();
    let duration = duration.or_else(|| {
        let first = timelines.iter().map(|t| t.arrival()).min()?;
        let last = timelines.iter().map(|t| t.last_event()).max()?;
        Some(last - first)
    });
    let per_second = |count: u64| {
        duration
            .filter(|d| *d > Nanos::ZERO)
            .map(|d| count as f64 / secs(d))
    };
    let gaps = timelines
        .iter()
        .flat_map(|t| t.inter_delivery_gaps())
        .map(secs);
    RunSummary {
        slo: SloSummary {
            tbt_slo_s: secs(slo.tbt_slo()),
            ttft_slack_s: secs(slo.ttft_slack()),
            prefill_model: slo.prefill_model(),
        },
        requests,
        error_rate: (requests.launched > 0)
            .then(|| requests.failed as f64 / requests.launched as f64),
        duration_s: duration.map(secs),
        completed_qps: per_second(requests.completed),
        output_tokens_per_s: per_second(output_tokens_total),
        prompt_tokens_total: timelines.iter().map(|t| u64::from(t.prompt_tokens())).sum(),
        output_tokens_total,
        preemptions_total: timelines
            .iter()
            .map(|t| u64::from(t.num_preemptions()))
            .sum(),
        ttft_s: per_request(&|t| t.ttft().map(secs)),
        tbt_s: tbt_distribution(timelines).summary(),
        inter_delivery_s: Distribution::new(Population::Deliveries, gaps).summary(),
        tpot_s: per_request(&|t| t.tpot_secs()),
        e2e_s: per_request(&|t| t.e2e_latency().map(secs)),
        normalized_e2e_s: per_request(&|t| t.normalized_e2e_secs()),
        scheduling_delay_s: per_request(&|t| t.scheduling_delay().map(secs)),
        prefill_time_s: per_request(&|t| t.prefill_time().map(secs)),
        preempted_time_s: per_request(&|t| Some(secs(t.preempted_time()))),
        max_stall_s: per_request(&|t| t.max_stall().map(secs)),
        fluidity_index: per_request(&|t| t.fluidity_index(slo)),
        min_tbt_deadline_s: min_tbt_deadlines(timelines, FLUID_TGR_TARGET_MISS_RATE).summary(),
        service_miss_rate: service_miss_rate(timelines, slo),
        throughput: throughput_comparison(timelines),
        tbt_curve: miss_rate_vs_target_tbt(timelines, &CurveSpec::default()),
    }
}
