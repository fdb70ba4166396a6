//! Request lifecycle states.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::Nanos;

/// Why a request stopped. The string forms are the OpenAI `finish_reason` values, plus
/// `abort` (vLLM's name) for client disconnects and explicit aborts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An EOS token, a stop token id or a stop string.
    Stop,
    /// `max_tokens` reached, or the context length.
    Length,
    /// The client went away or the request was aborted.
    Abort,
    /// The engine failed while running it.
    Error,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::Error => "error",
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Etalon's default decode deadline `tbt_slo` (`D_d`): 30 ms. Scheduler and metrics share it.
pub const DEFAULT_TBT_SLO: Nanos = Nanos(30_000_000);
/// Etalon's default `ttft_slack_slo` (`S`): 300 ms.
pub const DEFAULT_TTFT_SLACK: Nanos = Nanos(300_000_000);

/// A request's own latency targets (llm-d's `x-llm-d-slo-ttft-ms` / `x-llm-d-slo-tpot-ms`,
/// or the body's `slo_ttft_ms` / `slo_tpot_ms`); `None` = the server's SLO. The scheduler
/// ranks by them and the metrics count deadline misses against them, so both read this one
/// type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestSlo {
    /// Time to first token, from arrival (the whole `D_p`, not a slack on top of a prediction).
    pub ttft: Option<Nanos>,
    /// Time per output token after the first (`D_d`). Positive.
    pub tpot: Option<Nanos>,
}

impl RequestSlo {
    /// No override: the server's SLO applies.
    pub const SERVER: RequestSlo = RequestSlo {
        ttft: None,
        tpot: None,
    };
}

/// The request lifecycle as the scheduler sees it.
///
/// ```text
/// Waiting --schedule--> Running --finish--> Finished(reason)
///    ^                     |
///    +----- Preempted <----+   (preemption by recompute: KV freed, prompt+output recomputed)
/// ```
/// `abort` moves any non-finished state straight to `Finished(Abort)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RequestStatus {
    Waiting,
    Running,
    Preempted,
    Finished(FinishReason),
}

impl RequestStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, RequestStatus::Finished(_))
    }
}
