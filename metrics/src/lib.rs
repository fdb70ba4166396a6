//! # Layout
//!
//! `metrum-metrics` turns per-token timestamps into the metrics of `spec/metrics.md`, with
//! one piece of code for the server (live, Prometheus) and the load generator (offline).
//! Everything except [`prometheus`] is pure: no clock, no I/O beyond [`SloFile`].
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`timeline`] | [`RequestTimeline`], built by [`TimelineBuilder`] from [`metrum_core::EngineEvent`]s or client-side receipts |
//! | [`latency`] | TTFT, TBT, TPOT, E2E, normalized latency, scheduling delay, prefill and preempted time (methods on [`RequestTimeline`]) |
//! | [`fluidity`] | the fluidity-index of timelines: folds ITTs through [`DeadlineTracker`] (spec (b), defined in metrum-core and re-exported), failure rule, min TBT deadline to meet |
//! | [`slo`] | [`SloConfig`]: `D_d` (`--tbt-slo`), `S` (`--ttft-slack`), prefill model (`--slo-file`) |
//! | [`prefill_model`] | `a + b·P + c·P²` least-squares fit, fit error, [`SloFile`] JSON |
//! | [`live`] | [`LiveTracker`]: per in-flight request deadline state updated event by event |
//! | [`report`] | [`RequestTimingReport`]: the `metrum` object of a response |
//! | [`percentiles`] | [`Distribution`]s labelled by [`Population`] (tokens / requests / deliveries) |
//! | [`summary`] | run-level statistics: service miss rate, TBT curve, fluid TGR, [`RunSummary`] |
//! | [`slo_check`] | [`CapacitySlo`]: pass/fail of one run under Etalon's or Sarathi's SLO |
//! | [`capacity`] | [`CapacitySearch`]: the QPS bisection as a state machine |
//! | [`prometheus`] | [`MetricsRegistry`]: the `metrum_*` metrics and their text rendering |
//!
//! # Choices the spec leaves open (its recommendation is taken each time)
//!
//! - **Undefined is absent.** TTFT needs N ≥ 1, TPOT N ≥ 2, E2E a finish; the miss rate needs
//!   at least one deadline. They are `None` (absent in JSON), never 0.
//! - **TPOT** is `(t_N − t_1)/(N − 1)`, excluding the first token.
//! - **Bursts.** `m` tokens visible at once are ITTs `[gap, 0, …, 0]`; TBT percentiles include
//!   the zeros and the inter-delivery gaps are reported beside them.
//! - **Fluidity denominator** is met tokens + missed deadlines (Etalon's code, which its
//!   capacity numbers use), not the token count. The first token's slack carries into decode.
//! - **Exact arithmetic.** Deadlines are integer nanoseconds; `D_p(P)` is rounded to a whole
//!   nanosecond once.
//! - **Failed requests** (`FinishReason::Error`, or `stop`/`length` with zero output tokens)
//!   are never dropped: they count in the error rate, count as the worst value in capacity
//!   SLO checks, and a known `max_tokens` charges one missed deadline per token still owed.
//!   Aborts (the client left) are not charged.
//! - **Prefill model** is the closed-form quadratic fitted to the minimum TTFT per length.
//! - **Defaults** are Etalon's: `D_d` = 30 ms, `S` = 300 ms, fluidity target 0.9 at P99.
//! - **Capacity search** runs 3 seeds near the boundary; a QPS passes only if all pass.

pub mod capacity;
pub mod fluidity;
pub mod latency;
pub mod live;
pub mod percentiles;
pub mod prefill_model;
pub mod prometheus;
pub mod report;
pub mod slo;
pub mod slo_check;
pub mod summary;
pub mod timeline;

pub use capacity::{
    CapacityError, CapacityResult, CapacitySearch, CapacitySearchConfig, Probe, RunRequest,
    RunResult, SearchStep, StopReason,
};
pub use fluidity::{
    DeadlineParams, DeadlineTally, DeadlineTracker, FirstToken, Phase, TokenVerdict,
    unproduced_tokens,
};
pub use live::{FinishedRequest, FirstTokenUpdate, LiveTracker, LiveUpdate, TokenUpdate};
pub use percentiles::{Distribution, DistributionSummary, Percentile, Population, quantile};
pub use prefill_model::{
    FitPoint, PrefillFit, PrefillModel, PrefillModelError, PrefillSample, SloFile, SloFileError,
    fit_prefill_model,
};
pub use prometheus::{CONTENT_TYPE, MetricsError, MetricsRegistry};
pub use report::RequestTimingReport;
pub use slo::{DEFAULT_TBT_SLO, DEFAULT_TTFT_SLACK, SloConfig, SloError};
pub use slo_check::{CapacitySlo, SloCheck, SloVerdict};
pub use summary::{
    CurvePoint, CurveSpec, FLUID_TGR_REQUEST_QUANTILE, FLUID_TGR_TARGET_MISS_RATE, RequestCounts,
    RunSummary, ServiceMissRate, SloSummary, ThroughputComparison, fluid_token_generation_rate,
    min_tbt_deadlines, miss_rate_vs_target_tbt, service_miss_rate, steady_state, summarize,
    tbt_distribution, throughput_comparison,
};
pub use timeline::{
    Delivery, Finish, Preemption, RequestShape, RequestTimeline, TimelineBuilder, TimelineError,
};
