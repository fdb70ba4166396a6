//! Submitting, collecting and streaming generations; shared by `/v1/completions` and
//! `/v1/chat/completions`, which only differ in how a chunk or a choice is spelled.
//!
//! One HTTP request becomes `prompts x n` engine sequences. Choice `p * n + i` is sample `i`
//! of prompt `p`; with a seed, sample `i` uses `seed + i` so choices differ but stay
//! reproducible. Every sequence holds one admission permit until its response is done.
//!
//! Ownership does the cleanup: the response body owns the [`RequestStream`]s, so when a client
//! disconnects, hyper drops the body, the streams drop, and the engine aborts those requests and
//! frees their KV blocks at once.

use super::types::Usage;
use super::{AppState, RequestContext};
use crate::error::ApiError;
use crate::sse;
use crate::validation::{GenerationPlan, ModelLimits, resolve_max_tokens};
use axum::body::Bytes;
use axum::response::Response;
use futures::stream::{BoxStream, SelectAll, StreamExt};
use metrum_core::FinishReason;
use metrum_engine::handle::{EngineRequest, RequestStream, StreamEvent, TokenLogprob};
use std::collections::VecDeque;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

/// Reserves `count` sequence slots, or 429 when the server already holds its maximum.
pub fn admit(state: &AppState, count: usize) -> Result<OwnedSemaphorePermit, ApiError> {
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    state
        .admission
        .clone()
        .try_acquire_many_owned(count)
        .map_err(|_| ApiError::Overloaded {
            message: format!(
                "server overloaded: at most {} sequences may be queued or running; retry later",
                state.max_in_flight
            ),
            retry_after_secs: 1,
        })
}

/// All sequences of one HTTP request, admitted by the engine.
pub struct Batch {
    streams: Vec<(usize, RequestStream)>,
    /// Prompt tokens, counted once per prompt (not once per choice), as OpenAI bills them.
    pub prompt_tokens: usize,
    permit: OwnedSemaphorePermit,
}

/// Expands tokenized prompts into engine requests (choice `p·n + i` is choice `i` of prompt
/// `p`) and submits them as one group: all are admitted or none. With a `constraint`, every
/// choice gets its own matcher of that grammar.
#[allow(clippy::too_many_arguments)]
pub async fn submit(
    state: &AppState,
    ctx: &RequestContext,
    prompts: Vec<Vec<u32>>,
    plan: &GenerationPlan,
    limits: ModelLimits,
    arrival: Instant,
    permit: OwnedSemaphorePermit,
    constraint: Option<super::structured::RequestConstraint>,
) -> Result<Batch, ApiError> {
    let prompt_tokens = prompts.iter().map(Vec::len).sum();
    let slo = super::slo::request_slo(&ctx.slo_headers, plan.slo_ttft_ms, plan.slo_tpot_ms)?;
    let mut requests = Vec::with_capacity(prompts.len() * plan.n);
    for prompt in prompts {
        let params = resolve_max_tokens(plan, prompt.len(), limits)?;
        for i in 0..plan.n {
            let mut params = params.clone();
            params.seed = params.seed.map(|s| s.wrapping_add(i as u64));
            let matcher = match &constraint {
                Some(grammar) => Some(
                    grammar
                        .matcher()
                        .map_err(|e| ApiError::internal(&ctx.id, e.to_string()))?,
                ),
                None => None,
            };
            requests.push(EngineRequest {
                prompt_tokens: prompt.clone(),
                params,
                priority: plan.priority,
                arrival,
                slo,
                constraint: matcher,
                speculative: plan.speculative,
            });
        }
    }
    // All choices of all prompts are admitted together or refused together, so a 429 never
    // leaves some of them running (to be aborted and counted as finished requests).
    let streams: Vec<(usize, RequestStream)> = state
        .engine
        .submit_all(requests)
        .await
        .map_err(|e| ApiError::from_submit(e, &ctx.id))?
        .into_iter()
        .enumerate()
        .collect();
    let engine_ids: Vec<String> = streams.iter().map(|(_, s)| s.id.to_string()).collect();
    tracing::debug!(
        request_id = %ctx.id,
        engine_ids = %engine_ids.join(","),
        user = plan.user.as_deref().unwrap_or(""),
        prompt_tokens,
        "request admitted"
    );
    Ok(Batch {
        streams,
        prompt_tokens,
        permit,
    })
}

/// One engine event, tagged with the choice it belongs to.
type Tagged = (usize, StreamEvent);

/// The events of every sequence, interleaved as they arrive. Each sequence ends after its
/// `Finished` or `Error`; a stream that closes without either yields an `Error`.
fn merge(streams: Vec<(usize, RequestStream)>) -> SelectAll<BoxStream<'static, Tagged>> {
    futures::stream::select_all(streams.into_iter().map(|(choice, stream)| {
        futures::stream::unfold(Some(stream), move |slot| async move {
            let mut stream = slot?;
            match stream.next().await {
                Some(ev @ (StreamEvent::Finished { .. } | StreamEvent::Error { .. })) => {
                    Some(((choice, ev), None))
                }
                Some(ev) => Some(((choice, ev), Some(stream))),
                None => {
                    let message = "the engine closed the request stream unexpectedly".into();
                    Some(((choice, StreamEvent::Error { message }), None))
                }
            }
        })
        .boxed()
    }))
}

/// A finished choice of a non-streaming response.
pub struct ChoiceOutput {
    pub choice: usize,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: FinishReason,
    pub completion_tokens: usize,
    pub timing: serde_json::Value,
}

/// Waits for every choice. Returns them by choice index, with the summed usage.
pub async fn collect(
    batch: Batch,
    ctx: &RequestContext,
) -> Result<(Vec<ChoiceOutput>, Usage), ApiError> {
    let count = batch.streams.len();
    let mut outputs: Vec<Option<ChoiceOutput>> = (0..count).map(|_| None).collect();
    let mut texts = vec![String::new(); count];
    let mut logprobs: Vec<Vec<TokenLogprob>> = vec![Vec::new(); count];
    let mut events = merge(batch.streams);
    while let Some((choice, event)) = events.next().await {
        match event {
            StreamEvent::Delta {
                text, logprobs: lp, ..
            } => {
                texts[choice].push_str(&text);
                logprobs[choice].extend(lp);
            }
            StreamEvent::Finished {
                reason,
                prompt_tokens,
                completion_tokens,
                timing,
                speculation,
            } => {
                let timing = timing_json(&timing, speculation.as_ref());
                log_finished(
                    ctx,
                    choice,
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    &timing,
                );
                outputs[choice] = Some(ChoiceOutput {
                    choice,
                    text: std::mem::take(&mut texts[choice]),
                    logprobs: std::mem::take(&mut logprobs[choice]),
                    finish: reason,
                    completion_tokens,
                    timing,
                });
            }
            StreamEvent::Error { message } => return Err(ApiError::internal(&ctx.id, message)),
        }
    }
    drop(batch.permit);
    let outputs: Vec<ChoiceOutput> = outputs.into_iter().flatten().collect();
    if outputs.len() != count {
        return Err(ApiError::internal(
            &ctx.id,
            "a choice ended without a result",
        ));
    }
    let completion_tokens = outputs.iter().map(|o| o.completion_tokens).sum();
    Ok((outputs, usage(batch.prompt_tokens, completion_tokens)))
}

pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Usage {
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}

/// How an endpoint spells its stream chunks.
pub trait ChunkWriter: Send + 'static {
    /// Frames sent before any token (chat announces the assistant role per choice).
    fn opening(&mut self, _choices: usize) -> Vec<Bytes> {
        Vec::new()
    }
    /// New text (and logprobs) for one choice; `None` when there is nothing to send.
    fn delta(&mut self, choice: usize, text: String, logprobs: &[TokenLogprob]) -> Option<Bytes>;
    fn finished(&mut self, choice: usize, reason: FinishReason) -> Bytes;
    /// The final usage chunk (`stream_options.include_usage`), carrying choice 0's timing.
    fn usage(&mut self, usage: Usage, metrum: Option<serde_json::Value>) -> Bytes;
}

/// Streams the batch as SSE through `writer`.
pub fn stream<W: ChunkWriter>(
    batch: Batch,
    ctx: RequestContext,
    include_usage: bool,
    mut writer: W,
) -> Response {
    let remaining = batch.streams.len();
    let pending: VecDeque<Bytes> = writer.opening(remaining).into();
    let relay = Relay {
        events: merge(batch.streams),
        writer,
        pending,
        remaining,
        include_usage,
        prompt_tokens: batch.prompt_tokens,
        completion_tokens: 0,
        first_timing: None,
        ctx,
        done: false,
        _permit: batch.permit,
    };
    sse::response(futures::stream::unfold(relay, |mut relay| async move {
        relay.next_frame().await.map(|frame| (frame, relay))
    }))
}

/// The state of one streaming response: engine events in, SSE frames out.
struct Relay<W> {
    events: SelectAll<BoxStream<'static, Tagged>>,
    writer: W,
    pending: VecDeque<Bytes>,
    /// Choices not yet finished.
    remaining: usize,
    include_usage: bool,
    prompt_tokens: usize,
    completion_tokens: usize,
    first_timing: Option<serde_json::Value>,
    ctx: RequestContext,
    /// `[DONE]` has been queued; nothing follows it.
    done: bool,
    _permit: OwnedSemaphorePermit,
}

impl<W: ChunkWriter> Relay<W> {
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Some(frame);
            }
            if self.done {
                return None;
            }
            let Some((choice, event)) = self.events.next().await else {
                // Every sequence ended; only reachable if a choice ended twice.
                self.fail(ApiError::internal(&self.ctx.id, "the streams ended early"));
                continue;
            };
            match event {
                StreamEvent::Delta { text, logprobs, .. } => {
                    if let Some(frame) = self.writer.delta(choice, text, &logprobs) {
                        return Some(frame);
                    }
                }
                StreamEvent::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    timing,
                    speculation,
                } => {
                    let timing = timing_json(&timing, speculation.as_ref());
                    log_finished(
                        &self.ctx,
                        choice,
                        reason,
                        prompt_tokens,
                        completion_tokens,
                        &timing,
                    );
                    self.completion_tokens += completion_tokens;
                    if choice == 0 {
                        self.first_timing = Some(timing);
                    }
                    self.pending.push_back(self.writer.finished(choice, reason));
                    self.remaining -= 1;
                    if self.remaining == 0 {
                        if self.include_usage {
                            let usage = usage(self.prompt_tokens, self.completion_tokens);
                            let timing = self.first_timing.take();
                            self.pending.push_back(self.writer.usage(usage, timing));
                        }
                        self.pending.push_back(Bytes::from_static(sse::DONE));
                        self.done = true;
                    }
                }
                StreamEvent::Error { message } => {
                    self.fail(ApiError::internal(&self.ctx.id, message));
                }
            }
        }
    }

    /// Ends the stream with an error event; the other choices' streams are dropped (aborted).
    fn fail(&mut self, err: ApiError) {
        self.events = futures::stream::select_all(Vec::new());
        self.pending.push_back(sse::error_events(&err));
        self.done = true;
    }
}

impl<W> Drop for Relay<W> {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(
                request_id = %self.ctx.id,
                unfinished_choices = self.remaining,
                "client disconnected mid-stream; its requests are aborted"
            );
        }
    }
}

/// The `metrum` object: the request's timing, plus `speculative` (its draft counts and mean
/// acceptance length, vLLM's meanings) when it was served with speculative decoding.
fn timing_json(
    timing: &metrum_metrics::RequestTimingReport,
    speculation: Option<&metrum_engine::speculative::SpeculationStats>,
) -> serde_json::Value {
    let mut value = serde_json::to_value(timing).unwrap_or(serde_json::Value::Null);
    if let (Some(s), Some(object)) = (speculation, value.as_object_mut()) {
        object.insert(
            "speculative".into(),
            serde_json::json!({
                "num_drafts": s.num_drafts,
                "num_draft_tokens": s.num_draft_tokens,
                "num_accepted_tokens": s.num_accepted_tokens,
                "num_accepted_tokens_per_pos": s.accepted_per_position,
                "mean_acceptance_length": s.mean_acceptance_length(),
            }),
        );
    }
    value
}

/// Per-choice completion under the HTTP request id. Debug level: the engine thread already
/// logs the one `info` line per finished request (engine id, tokens, TTFT, E2E, fluidity), and
/// the `request admitted` debug line maps HTTP request ids to engine ids.
fn log_finished(
    ctx: &RequestContext,
    choice: usize,
    reason: FinishReason,
    prompt_tokens: usize,
    completion_tokens: usize,
    timing: &serde_json::Value,
) {
    let field = |name: &str| timing.get(name).and_then(serde_json::Value::as_f64);
    tracing::debug!(
        request_id = %ctx.id,
        choice,
        finish_reason = %reason,
        prompt_tokens,
        completion_tokens,
        ttft_ms = field("ttft_ms"),
        e2e_ms = field("e2e_ms"),
        fluidity = field("fluidity_index"),
        "request finished"
    );
}
