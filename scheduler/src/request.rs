//! Requests: what the engine hands in ([`NewRequest`]), why one can be refused
//! ([`AdmissionError`]), and the scheduler's private per-request state.

use crate::deadline::DeadlineTracker;
use crate::policy::PolicyKey;
use metrum_core::{FinishReason, Nanos, RequestId, RequestSlo, RequestStatus, SamplingParams};
use std::fmt;

/// A request as the engine submits it: tokenized prompt and the stop conditions the scheduler
/// checks on every sampled token. Stop *strings* are the engine's job (it detokenizes); it
/// reports them with [`crate::Scheduler::finish`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRequest {
    /// Unique among live requests.
    pub id: RequestId,
    pub prompt: Vec<u32>,
    /// Output tokens at most (at least 1).
    pub max_tokens: usize,
    /// EOS and stop token ids cannot end the request before this many output tokens.
    pub min_tokens: usize,
    /// Lower runs first under [`crate::Policy::Priority`] (vLLM's convention). Default 0.
    pub priority: i32,
    /// When the request entered the system: scheduling delay and deadlines count from here.
    pub arrival: Nanos,
    /// The model's end-of-sequence ids; ignored when `ignore_eos`.
    pub eos_token_ids: Vec<u32>,
    /// Extra ids that end the request (`stop_token_ids`), honoured even with `ignore_eos`.
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// The request's own deadlines (`priority`'s SLO siblings); default: the server's.
    pub slo: RequestSlo,
}

impl NewRequest {
    /// A request with no stop ids, no minimum and priority 0.
    pub fn new(id: RequestId, prompt: Vec<u32>, max_tokens: usize, arrival: Nanos) -> Self {
        NewRequest {
            id,
            prompt,
            max_tokens,
            min_tokens: 0,
            priority: 0,
            arrival,
            eos_token_ids: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            slo: RequestSlo::SERVER,
        }
    }

    /// The stop conditions of `params` (`max_tokens`, `min_tokens`, `stop_token_ids`,
    /// `ignore_eos`) with the model's EOS ids.
    pub fn from_sampling(
        id: RequestId,
        prompt: Vec<u32>,
        params: &SamplingParams,
        eos_token_ids: Vec<u32>,
        arrival: Nanos,
    ) -> Self {
        NewRequest {
            min_tokens: params.min_tokens,
            eos_token_ids,
            stop_token_ids: params.stop_token_ids.clone(),
            ignore_eos: params.ignore_eos,
            ..NewRequest::new(id, prompt, params.max_tokens, arrival)
        }
    }

    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    pub fn with_slo(mut self, slo: RequestSlo) -> Self {
        self.slo = slo;
        self
    }
}

/// Why a request was refused at admission. It never enters the queue, so it cannot block
/// it; the server answers 400 with this message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdmissionError {
    EmptyPrompt,
    ZeroMaxTokens,
    MinTokensAboveMax {
        min_tokens: usize,
        max_tokens: usize,
    },
    /// A live request already has this id.
    DuplicateId(RequestId),
    /// Prompt + `max_tokens` is longer than the context.
    ExceedsContext {
        prompt_tokens: usize,
        max_tokens: usize,
        max_model_len: usize,
    },
    /// Even alone, the request's KV would not fit in the pool.
    ExceedsKvCapacity {
        needed_tokens: usize,
        capacity_tokens: usize,
    },
    /// Admission control (`--admission refuse`): with the queue ahead of it, the first token
    /// is predicted after its deadline. Not a malformed request: the server answers 429 with
    /// `Retry-After: retry_after_secs`.
    PredictedMiss {
        predicted_ttft: Nanos,
        ttft_deadline: Nanos,
        retry_after_secs: u64,
    },
}

impl AdmissionError {
    /// Whether the request was fine but the server is too busy for it now (retry later).
    pub fn is_overload(&self) -> bool {
        matches!(self, AdmissionError::PredictedMiss { .. })
    }
}

impl fmt::Display for AdmissionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdmissionError::EmptyPrompt => write!(f, "the prompt is empty"),
            AdmissionError::ZeroMaxTokens => write!(f, "max_tokens must be at least 1"),
            AdmissionError::MinTokensAboveMax {
                min_tokens,
                max_tokens,
            } => write!(
                f,
                "min_tokens ({min_tokens}) must not exceed max_tokens ({max_tokens})"
            ),
            AdmissionError::DuplicateId(id) => write!(f, "request id {id} is already in use"),
            AdmissionError::ExceedsContext {
                prompt_tokens,
                max_tokens,
                max_model_len,
            } => write!(
                f,
                "prompt tokens ({prompt_tokens}) + max_tokens ({max_tokens}) = {} exceeds the \
                 context length ({max_model_len})",
                prompt_tokens + max_tokens
            ),
            AdmissionError::ExceedsKvCapacity {
                needed_tokens,
                capacity_tokens,
            } => write!(
                f,
                "the request needs KV for {needed_tokens} tokens but the cache holds \
                 {capacity_tokens}"
            ),
            AdmissionError::PredictedMiss {
                predicted_ttft,
                ttft_deadline,
                retry_after_secs,
            } => write!(
                f,
                "server overloaded: the first token is predicted after {} ms, past this \
                 request's time-to-first-token deadline of {} ms; retry in {retry_after_secs} s",
                predicted_ttft.0 / 1_000_000,
                ttft_deadline.0 / 1_000_000
            ),
        }
    }
}

impl std::error::Error for AdmissionError {}

/// The scheduler's state of one live request.
#[derive(Debug)]
pub(crate) struct Request {
    pub id: RequestId,
    /// Prompt, then output tokens. Appended only through [`Request::append_output`].
    tokens: Vec<u32>,
    num_prompt_tokens: usize,
    pub max_tokens: usize,
    pub min_tokens: usize,
    pub priority: i32,
    pub arrival: Nanos,
    pub eos_token_ids: Vec<u32>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub status: RequestStatus,
    /// Tokens whose KV is written once the current step has run (advanced at schedule time).
    pub num_computed_tokens: usize,
    /// Admission order; breaks ties between equal policy keys.
    pub seq: u64,
    /// The key it sits under in the waiting queue, while it waits.
    pub queue_key: Option<PolicyKey>,
    /// `s_r`: first step that included any of its tokens. Restarts do not change it.
    pub first_scheduled: Option<Nanos>,
    pub preempted_at: Option<Nanos>,
    pub preempted_time: Nanos,
    pub num_preemptions: u32,
    pub num_restarts: u32,
    /// Prompt tokens served from the prefix cache at first admission.
    pub num_cached_tokens: usize,
    pub deadline: DeadlineTracker,
    /// Admitted although predicted to miss (`--admission best-effort`): ranks after every
    /// request that was not.
    pub best_effort: bool,
    /// Speculative decoding: tokens proposed for the next decode step, verified there. They
    /// are taken by `schedule` (and dropped if the request does not decode in that step).
    pub draft_tokens: Vec<u32>,
}

impl Request {
    pub fn new(req: NewRequest, seq: u64, deadline: DeadlineTracker) -> Self {
        Request {
            id: req.id,
            num_prompt_tokens: req.prompt.len(),
            tokens: req.prompt,
            max_tokens: req.max_tokens,
            min_tokens: req.min_tokens,
            priority: req.priority,
            arrival: req.arrival,
            eos_token_ids: req.eos_token_ids,
            stop_token_ids: req.stop_token_ids,
            ignore_eos: req.ignore_eos,
            status: RequestStatus::Waiting,
            num_computed_tokens: 0,
            seq,
            queue_key: None,
            first_scheduled: None,
            preempted_at: None,
            preempted_time: Nanos::ZERO,
            num_preemptions: 0,
            num_restarts: 0,
            num_cached_tokens: 0,
            deadline,
            best_effort: false,
            draft_tokens: Vec::new(),
        }
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub fn num_prompt_tokens(&self) -> usize {
        self.num_prompt_tokens
    }

    pub fn num_output_tokens(&self) -> usize {
        self.tokens.len() - self.num_prompt_tokens
    }

    /// Tokens known but not yet scheduled for computation.
    pub fn num_uncomputed_tokens(&self) -> usize {
        self.tokens.len().saturating_sub(self.num_computed_tokens)
    }

    pub fn append_output(&mut self, token: u32) {
        self.tokens.push(token);
    }

    /// Moves along a legal edge of the lifecycle (see [`RequestStatus`]); illegal edges are
    /// scheduler bugs and fail loudly in tests.
    pub fn transition(&mut self, to: RequestStatus) {
        use RequestStatus::*;
        let legal = matches!(
            (self.status, to),
            (Waiting, Running) | (Running, Preempted) | (Preempted, Running)
        ) || (!self.status.is_finished() && to.is_finished());
        debug_assert!(
            legal,
            "{}: illegal transition {:?} -> {to:?}",
            self.id, self.status
        );
        self.status = to;
    }

    /// The reason the last appended token ends the request, if it does. A stop token is
    /// reported as `Stop` even when it is also the last allowed token: the model chose to end
    /// there (vLLM reports `length` in that tie; TGI, like us, `stop`).
    pub fn stop_reason(&self, max_model_len: usize) -> Option<FinishReason> {
        let last = *self.tokens.last()?;
        let n_out = self.num_output_tokens();
        if n_out == 0 {
            return None;
        }
        if n_out >= self.min_tokens {
            let eos = !self.ignore_eos && self.eos_token_ids.contains(&last);
            if eos || self.stop_token_ids.contains(&last) {
                return Some(FinishReason::Stop);
            }
        }
        if n_out >= self.max_tokens || self.tokens.len() >= max_model_len {
            return Some(FinishReason::Length);
        }
        None
    }
}
