//! Engine events: the timeline every metric is computed from.

use crate::{FinishReason, Nanos, RequestId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The request entered the waiting queue (its arrival).
    Queued,
    /// The request was given tokens in a step for the first time after waiting or preemption.
    Scheduled,
    /// The request lost its KV blocks and went back to waiting (recompute preemption).
    Preempted,
    /// `count` new output tokens became visible to the client at this time.
    Tokens { count: u32 },
    /// The request ended.
    Finished(FinishReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineEvent {
    pub request: RequestId,
    pub at: Nanos,
    pub kind: EventKind,
}
