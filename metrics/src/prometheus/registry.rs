//! [`MetricsRegistry`]: every `metrum_*` metric, fed from engine events through the
//! [`LiveTracker`], rendered in the Prometheus text format for `GET /metrics`.
//!
//! Names follow Prometheus conventions: base units (seconds, ratios), `_total` on counters,
//! `_seconds` on durations, `_info` on the constant SLO gauge. The engine thread calls the
//! `observe_*` methods and the HTTP handler calls [`MetricsRegistry::render`]; everything takes
//! `&self`, so one `Arc<MetricsRegistry>` serves both.

use super::buckets;
use super::vllm_aliases::{CacheConfigInfo, append_aliases};
use crate::fluidity::{DeadlineTally, Phase};
use crate::live::{FinishedRequest, LiveTracker, LiveUpdate, TokenUpdate};
use crate::report::RequestTimingReport;
use crate::slo::SloConfig;
use crate::timeline::{RequestShape, TimelineError};
use ::prometheus::core::Collector;
use ::prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use metrum_core::{EngineEvent, FinishReason, Nanos};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The `Content-Type` of [`MetricsRegistry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error("prometheus: {0}")]
    Prometheus(#[from] ::prometheus::Error),
    #[error("metrics text is not UTF-8: {0}")]
    NotUtf8(#[from] std::string::FromUtf8Error),
}

const FINISH_REASONS: [FinishReason; 4] = [
    FinishReason::Stop,
    FinishReason::Length,
    FinishReason::Abort,
    FinishReason::Error,
];

/// All metrics of a Metrum server, plus the live per-request deadline state.
pub struct MetricsRegistry {
    registry: Registry,
    slo: SloConfig,
    live: Mutex<LiveTracker>,
    ttft: Histogram,
    tbt: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    scheduling_delay: Histogram,
    prefill_time: Histogram,
    preempted_time: Histogram,
    fluidity: Histogram,
    iteration_duration: Histogram,
    iteration_tokens: Histogram,
    deadline_misses: IntCounterVec,
    deadlines: IntCounter,
    requests: IntCounterVec,
    refused: IntCounterVec,
    preemptions: IntCounter,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    prefix_cache_queries: IntCounter,
    prefix_cache_hits: IntCounter,
    spec_drafts: IntCounter,
    spec_draft_tokens: IntCounter,
    spec_accepted_tokens: IntCounter,
    spec_accepted_per_pos: IntCounterVec,
    spec_mean_acceptance_length: Gauge,
    rejected_events: IntCounter,
    running: IntGauge,
    waiting: IntGauge,
    kv_cache_usage: Gauge,
    deadlines_overdue: IntGauge,
}

/// The `reason` labels of `metrum_requests_refused_total`.
pub const REFUSAL_REASONS: [&str; 2] = ["predicted_miss", "queue_full"];

fn secs(n: Nanos) -> f64 {
    n.as_secs_f64()
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> Result<C, MetricsError> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl MetricsRegistry {
    pub fn new(slo: SloConfig) -> Result<Self, MetricsError> {
        let r = Registry::new();
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
            register(&r, h)
        };
        let counter = |name: &str, help: &str| register(&r, IntCounter::new(name, help)?);
        let gauge = |name: &str, help: &str| register(&r, IntGauge::new(name, help)?);
        let d_d = secs(slo.tbt_slo());

        let deadline_misses = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "metrum_deadline_misses_total",
                    "Token deadlines missed (fluidity-index rules), by the phase of the deadline.",
                ),
                &["phase"],
            )?,
        )?;
        for phase in [Phase::Ttft, Phase::Decode] {
            deadline_misses.with_label_values(&[phase.as_str()]);
        }
        let spec_accepted_per_pos = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "metrum_spec_decode_num_accepted_tokens_per_pos_total",
                    "Draft tokens accepted, by position in the draft (0-based), as vLLM's \
                     vllm:spec_decode_num_accepted_tokens_per_pos.",
                ),
                &["position"],
            )?,
        )?;
        let requests = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "metrum_requests_total",
                    "Finished requests, by finish reason.",
                ),
                &["finish_reason"],
            )?,
        )?;
        for reason in FINISH_REASONS {
            requests.with_label_values(&[reason.as_str()]);
        }
        let refused = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "metrum_requests_refused_total",
                    "Requests refused with HTTP 429 before entering the queue, by reason: \
                     predicted_miss (admission control: first token predicted past its \
                     deadline) or queue_full (--max-waiting-requests).",
                ),
                &["reason"],
            )?,
        )?;
        for reason in REFUSAL_REASONS {
            refused.with_label_values(&[reason]);
        }
        let slo_info = register(
            &r,
            GaugeVec::new(
                Opts::new(
                    "metrum_slo_info",
                    "SLO in force: D_d = tbt_slo_seconds, S = ttft_slack_seconds, \
                     D_p(P) = prefill_a + prefill_b*P + prefill_c*P^2 + S. Always 1.",
                ),
                &[
                    "tbt_slo_seconds",
                    "ttft_slack_seconds",
                    "prefill_a_seconds",
                    "prefill_b_seconds_per_token",
                    "prefill_c_seconds_per_token2",
                ],
            )?,
        )?;
        let model = slo.prefill_model();
        slo_info
            .with_label_values(&[
                d_d.to_string(),
                secs(slo.ttft_slack()).to_string(),
                model.a_s.to_string(),
                model.b_s_per_token.to_string(),
                model.c_s_per_token2.to_string(),
            ])
            .set(1.0);

        Ok(MetricsRegistry {
            ttft: histogram(
                "metrum_time_to_first_token_seconds",
                "Arrival to first visible token (TTFT).",
                buckets::TIME_TO_FIRST_TOKEN.to_vec(),
            )?,
            tbt: histogram(
                "metrum_time_between_tokens_seconds",
                "Gap before each output token after the first; tokens delivered together count as 0.",
                buckets::with_boundary(buckets::TIME_BETWEEN_TOKENS, d_d),
            )?,
            tpot: histogram(
                "metrum_time_per_output_token_seconds",
                "Per request (last token - first token) / (tokens - 1), requests with 2+ tokens.",
                buckets::with_boundary(buckets::TIME_PER_OUTPUT_TOKEN, d_d),
            )?,
            e2e: histogram(
                "metrum_e2e_request_latency_seconds",
                "Arrival to finish of each finished request.",
                buckets::E2E_LATENCY.to_vec(),
            )?,
            scheduling_delay: histogram(
                "metrum_scheduling_delay_seconds",
                "Arrival to the first batch holding any token of the request.",
                buckets::SCHEDULING_DELAY.to_vec(),
            )?,
            prefill_time: histogram(
                "metrum_request_prefill_time_seconds",
                "First schedule to first visible token.",
                buckets::TIME_TO_FIRST_TOKEN.to_vec(),
            )?,
            preempted_time: histogram(
                "metrum_request_preempted_time_seconds",
                "Per finished request, time from each preemption to its next schedule.",
                buckets::PREEMPTED_TIME.to_vec(),
            )?,
            fluidity: histogram(
                "metrum_request_fluidity_index",
                "Per finished request, 1 - missed/total token deadlines (requests with a deadline).",
                buckets::FLUIDITY_INDEX.to_vec(),
            )?,
            iteration_duration: histogram(
                "metrum_iteration_duration_seconds",
                "Duration of one engine step.",
                buckets::ITERATION_DURATION.to_vec(),
            )?,
            iteration_tokens: histogram(
                "metrum_iteration_tokens",
                "Tokens processed in one engine step.",
                buckets::ITERATION_TOKENS.to_vec(),
            )?,
            deadline_misses,
            deadlines: counter(
                "metrum_deadlines_total",
                "Token deadlines met plus missed; miss rate = misses / this.",
            )?,
            requests,
            refused,
            preemptions: counter("metrum_preemptions_total", "Recompute preemptions.")?,
            prompt_tokens: counter(
                "metrum_prompt_tokens_total",
                "Prompt tokens of requests whose first token was produced.",
            )?,
            generation_tokens: counter(
                "metrum_generation_tokens_total",
                "Output tokens produced.",
            )?,
            prefix_cache_queries: counter(
                "metrum_prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache.",
            )?,
            prefix_cache_hits: counter(
                "metrum_prefix_cache_hits_total",
                "Prompt tokens found in the prefix cache.",
            )?,
            spec_drafts: counter(
                "metrum_spec_decode_num_drafts_total",
                "Speculative verification steps with at least one draft token (per request).",
            )?,
            spec_draft_tokens: counter(
                "metrum_spec_decode_num_draft_tokens_total",
                "Draft tokens proposed and verified.",
            )?,
            spec_accepted_tokens: counter(
                "metrum_spec_decode_num_accepted_tokens_total",
                "Draft tokens accepted (the target's own token after them not counted).",
            )?,
            spec_accepted_per_pos,
            spec_mean_acceptance_length: register(
                &r,
                Gauge::new(
                    "metrum_spec_decode_mean_acceptance_length",
                    "Tokens delivered per verification step since start: 1 + accepted / drafts \
                     (0 before any draft).",
                )?,
            )?,
            rejected_events: counter(
                "metrum_metrics_rejected_events_total",
                "Engine events the metrics refused as impossible (an engine bug if not 0).",
            )?,
            running: gauge("metrum_requests_running", "Requests in the running set.")?,
            waiting: gauge(
                "metrum_requests_waiting",
                "Requests waiting to be scheduled.",
            )?,
            kv_cache_usage: register(
                &r,
                Gauge::new(
                    "metrum_kv_cache_usage_ratio",
                    "Fraction of KV-cache blocks in use.",
                )?,
            )?,
            deadlines_overdue: gauge(
                "metrum_deadlines_overdue",
                "Deadlines already passed for tokens not yet produced, over in-flight requests \
                 (as of the last refresh).",
            )?,
            live: Mutex::new(LiveTracker::new(slo)),
            slo,
            registry: r,
        })
    }

    pub fn slo(&self) -> &SloConfig {
        &self.slo
    }

    /// The underlying registry, for the server to add its own (e.g. HTTP) metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn live(&self) -> MutexGuard<'_, LiveTracker> {
        // The tracker holds no invariant a panicking holder could break half-way.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one engine event. `shape` is read from `Queued` events only. Returns the
    /// request's timing report when the event finished it. An impossible event is counted in
    /// `metrum_metrics_rejected_events_total` and returned as an error; tracking goes on.
    pub fn observe_event(
        &self,
        event: &EngineEvent,
        shape: RequestShape,
    ) -> Result<Option<RequestTimingReport>, MetricsError> {
        let update = self.live().observe(event, shape);
        let update = update.inspect_err(|_| self.rejected_events.inc())?;
        Ok(match update {
            LiveUpdate::Arrived => None,
            LiveUpdate::Scheduled { scheduling_delay } => {
                if let Some(d) = scheduling_delay {
                    self.scheduling_delay.observe(secs(d));
                }
                None
            }
            LiveUpdate::Preempted => {
                self.preemptions.inc();
                None
            }
            LiveUpdate::Tokens(tokens) => {
                self.record_tokens(&tokens);
                None
            }
            LiveUpdate::Finished(done) => Some(self.record_finish(*done)),
        })
    }

    fn record_tokens(&self, t: &TokenUpdate) {
        self.generation_tokens.inc_by(u64::from(t.count));
        if let Some(first) = t.first {
            self.ttft.observe(secs(first.ttft));
            if let Some(prefill) = first.prefill_time {
                self.prefill_time.observe(secs(prefill));
            }
            self.prompt_tokens.inc_by(u64::from(first.prompt_tokens));
        }
        for gap in &t.time_between_tokens {
            self.tbt.observe(secs(*gap));
        }
        self.record_deadlines(t.deadlines);
    }

    fn record_deadlines(&self, d: DeadlineTally) {
        self.deadline_misses
            .with_label_values(&[Phase::Ttft.as_str()])
            .inc_by(d.missed_ttft);
        self.deadline_misses
            .with_label_values(&[Phase::Decode.as_str()])
            .inc_by(d.missed_decode);
        self.deadlines.inc_by(d.total());
    }

    fn record_finish(&self, done: FinishedRequest) -> RequestTimingReport {
        let t = &done.timeline;
        self.record_deadlines(done.charged_at_finish);
        if let Some(f) = t.finish() {
            self.requests.with_label_values(&[f.reason.as_str()]).inc();
        }
        if let Some(e2e) = t.e2e_latency() {
            self.e2e.observe(secs(e2e));
        }
        if let Some(tpot) = t.tpot_secs() {
            self.tpot.observe(tpot);
        }
        self.preempted_time.observe(secs(t.preempted_time()));
        if let Some(f) = done.deadlines.fluidity_index() {
            self.fluidity.observe(f);
        }
        done.report
    }

    /// One engine step took `duration` and processed `tokens` tokens.
    /// A request refused before it entered the queue; `reason` is one of [`REFUSAL_REASONS`].
    pub fn record_refusal(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    pub fn observe_iteration(&self, duration: Nanos, tokens: u32) {
        self.iteration_duration.observe(secs(duration));
        self.iteration_tokens.observe(f64::from(tokens));
    }

    /// A prefix-cache lookup of `queried_tokens` prompt tokens found `hit_tokens` cached.
    pub fn observe_prefix_cache(&self, queried_tokens: u64, hit_tokens: u64) {
        self.prefix_cache_queries.inc_by(queried_tokens);
        self.prefix_cache_hits
            .inc_by(hit_tokens.min(queried_tokens));
    }

    /// Speculative decoding since the last call: `drafts` verification steps with
    /// `draft_tokens` drafts, of which `accepted` stood; `accepted_per_position[i]` of them at
    /// draft position `i`.
    pub fn observe_speculation(
        &self,
        drafts: u64,
        draft_tokens: u64,
        accepted: u64,
        accepted_per_position: &[u64],
    ) {
        if drafts == 0 {
            return;
        }
        self.spec_drafts.inc_by(drafts);
        self.spec_draft_tokens.inc_by(draft_tokens);
        self.spec_accepted_tokens.inc_by(accepted);
        for (position, &n) in accepted_per_position.iter().enumerate() {
            self.spec_accepted_per_pos
                .with_label_values(&[&position.to_string()])
                .inc_by(n);
        }
        let total = self.spec_drafts.get() as f64;
        self.spec_mean_acceptance_length
            .set(1.0 + self.spec_accepted_tokens.get() as f64 / total);
    }

    pub fn set_requests_running(&self, n: usize) {
        self.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_requests_waiting(&self, n: usize) {
        self.waiting.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Fraction of KV blocks in use, clamped to [0, 1]; NaN is ignored.
    pub fn set_kv_cache_usage(&self, ratio: f64) {
        if !ratio.is_nan() {
            self.kv_cache_usage.set(ratio.clamp(0.0, 1.0));
        }
    }

    /// Updates `metrum_deadlines_overdue` for the time `now` (call before rendering).
    pub fn refresh_overdue(&self, now: Nanos) {
        let overdue = self.live().overdue(now);
        self.deadlines_overdue
            .set(i64::try_from(overdue).unwrap_or(i64::MAX));
    }

    /// Requests the live tracker holds (queued, not yet finished).
    pub fn in_flight(&self) -> usize {
        self.live().in_flight()
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn render(&self) -> Result<String, MetricsError> {
        self.render_for_routers(None, false)
    }

    /// [`render`](Self::render) plus `metrum_cache_config_info` when the cache's shape is
    /// known and, with `vllm_aliases`, the vLLM-named copies routers read
    /// ([`super::vllm_aliases`]).
    pub fn render_for_routers(
        &self,
        cache: Option<CacheConfigInfo>,
        vllm_aliases: bool,
    ) -> Result<String, MetricsError> {
        let mut families = self.registry.gather();
        if let Some(cache) = cache {
            families.extend(cache.families()?);
        }
        if vllm_aliases {
            append_aliases(&mut families);
        }
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&families, &mut buffer)?;
        Ok(String::from_utf8(buffer)?)
    }
}
