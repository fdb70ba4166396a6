//! Request lifecycle states.

use serde::{Deserialize, Serialize};
use std::fmt;

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
