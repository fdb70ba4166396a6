//! The data contract between the scheduler and the engine: what to run this step
//! ([`SchedulerOutput`]), and what a step's results did ([`StepResult`]).

use metrum_core::{BlockId, FinishReason, Nanos, RequestId};
use std::fmt;

/// Why a request is in the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    /// A chunk of the prompt, first attempt.
    Prefill,
    /// A chunk of prompt + earlier outputs, recomputing KV a preemption dropped.
    Recompute,
    /// The last sampled token, followed by any draft tokens to verify (speculative decoding).
    Decode,
}

/// One request's part of the step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledRequest {
    pub id: RequestId,
    /// Token ids to run, at positions `start_position ..`: a prompt chunk, a chunk of
    /// prompt + outputs when recomputing, or the last sampled token for a decode.
    pub token_ids: Vec<u32>,
    /// Position of `token_ids[0]`, which is also the number of tokens whose KV is already in
    /// the cache (prefix-cache hits included): the engine recomputes none of them.
    pub start_position: usize,
    /// The full block table: position `p` lives in `block_table[p / block_size]`, row
    /// `p % block_size`. Covers at least `start_position + token_ids.len()` positions.
    pub block_table: Vec<BlockId>,
    /// Whether the step produces a sampled token for this request: the chunk reaches the end
    /// of its known tokens. Only these requests need a logits row and a token in `update`.
    pub samples: bool,
    pub kind: ChunkKind,
    /// Tokens served by the prefix cache when this request was admitted this step
    /// (`start_position` already skips them); 0 otherwise.
    pub num_cached_tokens: usize,
    /// Speculative decoding: the last `num_draft_tokens` of `token_ids` are draft tokens (not
    /// yet known to be right) proposed with [`crate::Scheduler::set_draft_tokens`]. A decode
    /// with drafts needs a logits row per position and may get up to `1 + num_draft_tokens`
    /// tokens back in `update`; 0 for every other chunk.
    pub num_draft_tokens: usize,
}

impl ScheduledRequest {
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Logits rows the executor must return for this request: one per draft position plus
    /// one after the last draft when it samples, none otherwise.
    pub fn num_logits(&self) -> usize {
        if self.samples {
            1 + self.num_draft_tokens
        } else {
            0
        }
    }

    /// The draft tokens this step verifies (empty without speculation).
    pub fn draft_tokens(&self) -> &[u32] {
        &self.token_ids[self.token_ids.len() - self.num_draft_tokens..]
    }

    /// Context length after this step: the KV the last token of the chunk attends to.
    pub fn context_len(&self) -> usize {
        self.start_position + self.token_ids.len()
    }
}

/// One engine step. Built by [`crate::Scheduler::schedule`]; hand it unchanged to
/// [`crate::Scheduler::update`] with the sampled tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    /// 1-based step counter; `update` refuses an output of another step.
    pub step: u64,
    /// The `now` given to `schedule`.
    pub scheduled_at: Nanos,
    /// Batch order: running decodes, then partial prefills, then newly admitted requests.
    pub scheduled: Vec<ScheduledRequest>,
    /// Requests preempted in this step: their KV is gone (the blocks may be reused in this very
    /// batch) and they wait to recompute. Per-request sampler state must be kept.
    pub preempted: Vec<RequestId>,
    /// Requests that ended since the previous step (by `update`, `finish` or `abort`), so the
    /// executor can drop any per-request state it holds.
    pub finished: Vec<RequestId>,
}

impl SchedulerOutput {
    /// Nothing to run (everything is waiting for memory, or there is no request).
    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }

    /// Tokens in the batch: never more than `max_num_batched_tokens`.
    pub fn num_batched_tokens(&self) -> usize {
        self.scheduled.iter().map(|s| s.token_ids.len()).sum()
    }

    pub fn num_decodes(&self) -> usize {
        self.count(ChunkKind::Decode)
    }

    pub fn num_prefill_chunks(&self) -> usize {
        self.scheduled.len() - self.num_decodes()
    }

    pub fn get(&self, id: RequestId) -> Option<&ScheduledRequest> {
        self.scheduled.iter().find(|s| s.id == id)
    }

    fn count(&self, kind: ChunkKind) -> usize {
        self.scheduled.iter().filter(|s| s.kind == kind).count()
    }
}

/// Timings and counts of a finished request: the server-side timeline of spec (a).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestStats {
    /// `a_r`.
    pub arrival: Nanos,
    /// `s_r`: the first step with any of its tokens; restarts keep it. `None` if it never ran.
    pub first_scheduled: Option<Nanos>,
    /// `c_r`.
    pub finished_at: Nanos,
    pub num_prompt_tokens: usize,
    pub num_output_tokens: usize,
    /// Prompt tokens served by the prefix cache at first admission.
    pub num_cached_tokens: usize,
    pub num_preemptions: u32,
    /// Times it ran again after a preemption.
    pub num_restarts: u32,
    /// `p_r` as the scheduler sees it: time spent preempted, between losing its KV and running
    /// again (or finishing).
    pub preempted_time: Nanos,
    /// Spec (b) deadlines at the times the scheduler was told tokens were produced.
    pub deadlines_missed: u64,
    pub deadlines_total: u64,
}

/// A request that ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedRequest {
    pub id: RequestId,
    pub reason: FinishReason,
    pub stats: RequestStats,
}

/// What [`crate::Scheduler::update`] did with a step's results.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepResult {
    /// Sampled tokens appended, in batch order: exactly the tokens to stream to clients. A
    /// request verifying drafts may have several, in order. Tokens for requests that did not
    /// sample this step, or no longer exist, are not here.
    pub appended: Vec<(RequestId, u32)>,
    /// Requests that ended in this update. A request that was due a token but got none from
    /// the executor ends with [`FinishReason::Error`].
    pub finished: Vec<FinishedRequest>,
}

/// `update` was called with an output it cannot apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateError {
    /// The output is not the one the last `schedule` returned.
    StaleOutput { expected: u64, got: u64 },
    /// This step's results were already applied.
    AlreadyApplied { step: u64 },
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateError::StaleOutput { expected, got } => write!(
                f,
                "update got the output of step {got}, but the last scheduled step is {expected}"
            ),
            UpdateError::AlreadyApplied { step } => {
                write!(f, "the results of step {step} were already applied")
            }
        }
    }
}

impl std::error::Error for UpdateError {}
