//! # Layout
//!
//! `metrum-core` is the vocabulary every other Metrum crate speaks. It has no heavy
//! dependencies (serde only) so the scheduler and metrics crates stay pure and fast to test.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`ids`] | newtypes: [`RequestId`], [`BlockId`], [`TokenId`] |
//! | [`time`] | [`Nanos`]: monotonic time as integer nanoseconds since an engine epoch |
//! | [`sampling`] | [`SamplingParams`] and its validation |
//! | [`request`] | [`FinishReason`] and [`RequestStatus`], the request lifecycle enum |
//! | [`slo`] | the SLO vocabulary of scheduler and metrics: defaults, [`RequestSlo`] (a request's own targets), [`PrefillModel`] |
//! | [`deadline`] | spec (b) token deadlines with carried slack: [`DeadlineTracker`], [`DeadlineParams`], [`DeadlineTally`]; the one home of the algorithm the scheduler, metrics and simulator use |
//! | [`events`] | [`EngineEvent`]: what the scheduler/engine emit, with timestamps |
//! | [`stats`] | [`quantile`], the one percentile rule (numpy's linear) of server, simulator and bench |
//!
//! Time is never read from a clock here: whoever owns the clock passes [`Nanos`] in. That keeps
//! the scheduler deterministic and lets metrics be computed offline on recorded timelines.

pub mod deadline;
pub mod events;
pub mod ids;
pub mod request;
pub mod sampling;
pub mod slo;
pub mod stats;
pub mod time;

pub use deadline::{
    DeadlineParams, DeadlineTally, DeadlineTracker, DecodeDeadlineNotPositive, FirstToken, Phase,
    TokenVerdict,
};
pub use events::{EngineEvent, EventKind};
pub use ids::{BlockId, RequestId, TokenId};
pub use request::{FinishReason, RequestStatus};
pub use sampling::{SamplingError, SamplingParams};
pub use slo::{DEFAULT_TBT_SLO, DEFAULT_TTFT_SLACK, PrefillModel, RequestSlo};
pub use stats::quantile;
pub use time::Nanos;
