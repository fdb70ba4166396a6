//! The request path shared by `/v1/completions` and `/v1/chat/completions`, which only differ
//! in how they read their prompts and spell a chunk or a choice: the [`Prelude`] (model check,
//! sampling plan, output budget, admission, submission), then [`answer`] (stream or collect).
//!
//! One HTTP request becomes `prompts x n` engine sequences. Choice `p * n + i` is sample `i`
//! of prompt `p`; with a seed, sample `i` uses `seed + i` so choices differ but stay
//! reproducible. Every sequence holds one admission permit until its response is done.
//!
//! Ownership does the cleanup: the response body owns the [`RequestStream`]s, so when a client
//! disconnects, hyper drops the body, the streams drop, and the engine aborts those requests and
//! frees their KV blocks at once.

use super::types::{SamplingFields, Usage};
use super::{AppState, RequestContext};
use crate::error::ApiError;
use crate::sse;
use crate::validation::{self, GenerationPlan, ModelLimits, resolve_max_tokens};
use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use futures::stream::{BoxStream, SelectAll, StreamExt};
use metrum_core::FinishReason;
use metrum_engine::handle::{EngineRequest, RequestStream, StreamEvent, TokenLogprob};
use std::collections::VecDeque;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

/// The steps both generation endpoints take around their own prompt handling, each a method
/// so that every endpoint keeps its order of checks (which error a request with several
/// faults gets): [`Prelude::start`], [`Prelude::plan`], [`Prelude::check_output_tokens`],
/// [`Prelude::admit`], [`Prelude::submit`], and then [`answer`].
pub struct Prelude<'a> {
    state: &'a AppState,
    /// When the request arrived: its timing (TTFT, E2E) counts from here.
    arrival: Instant,
    pub limits: ModelLimits,
    /// The served model's name, which responses report.
    pub model: String,
}

impl<'a> Prelude<'a> {
    /// Starts the request's clock and checks its `model` field: 503 while the model loads,
    /// 404 for a model this server does not serve.
    pub fn start(state: &'a AppState, requested_model: Option<&str>) -> Result<Self, ApiError> {
        let arrival = Instant::now();
        let info = state.check_model(requested_model)?;
        Ok(Self {
            state,
            arrival,
            limits: ModelLimits {
                vocab_size: info.vocab_size,
                max_model_len: info.max_model_len,
            },
            model: info.served_model_name.clone(),
        })
    }

    /// The sampling fields checked into a plan; `logprobs` is the endpoint's own count of
    /// alternatives per token (`None`: no logprobs).
    pub fn plan(
        &self,
        sampling: &SamplingFields,
        logprobs: Option<u64>,
    ) -> Result<GenerationPlan, ApiError> {
        validation::plan(sampling, logprobs, self.limits)
    }

    /// 400 when `prompts x n` choices of `max_tokens` each exceed the per-request output limit.
    pub fn check_output_tokens(
        &self,
        plan: &GenerationPlan,
        prompts: usize,
    ) -> Result<(), ApiError> {
        self.state.limits.check_output_tokens(
            prompts,
            plan.n,
            plan.requested_max_tokens,
            self.limits.max_model_len,
        )
    }

    /// Reserves a slot for each of the `prompts x n` sequences, or 429 when the server
    /// already holds its maximum.
    pub fn admit(
        &self,
        plan: &GenerationPlan,
        prompts: usize,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        let count = u32::try_from(prompts * plan.n).unwrap_or(u32::MAX);
        self.state
            .admission
            .clone()
            .try_acquire_many_owned(count)
            .map_err(|_| ApiError::Overloaded {
                message: format!(
                    "server overloaded: at most {} sequences may be queued or running; retry later",
                    self.state.max_in_flight
                ),
                retry_after_secs: 1,
            })
    }

    /// Expands tokenized prompts into engine requests (choice `p·n + i` is choice `i` of prompt
    /// `p`) and submits them as one group: all are admitted or none. With a `constraint`, every
    /// choice gets its own matcher of that grammar.
    pub async fn submit(
        &self,
        ctx: &RequestContext,
        prompts: Vec<Vec<u32>>,
        plan: &GenerationPlan,
        permit: OwnedSemaphorePermit,
        constraint: Option<super::structured::RequestConstraint>,
    ) -> Result<Batch, ApiError> {
        let prompt_tokens = prompts.iter().map(Vec::len).sum();
        let slo = super::slo::request_slo(&ctx.slo_headers, plan.slo_ttft_ms, plan.slo_tpot_ms)?;
        let mut requests = Vec::with_capacity(prompts.len() * plan.n);
        for prompt in prompts {
            let params = resolve_max_tokens(plan, prompt.len(), self.limits)?;
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
                    arrival: self.arrival,
                    slo,
                    constraint: matcher,
                    speculative: plan.speculative,
                });
            }
        }
        // All choices of all prompts are admitted together or refused together, so a 429 never
        // leaves some of them running (to be aborted and counted as finished requests).
        let streams: Vec<(usize, RequestStream)> = self
            .state
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
}

/// Every choice of a non-streaming response, finished.
pub struct Whole {
    /// By choice index; each carries its own timing only when there are several (one
    /// choice's timing is the response's).
    pub outputs: Vec<ChoiceOutput>,
    pub usage: Usage,
    /// Choice 0's timing: the response's `metrum` object.
    pub metrum: Option<serde_json::Value>,
}

/// The response to a submitted batch: with `stream` an SSE stream spelled by `writer`;
/// otherwise, once every choice finished, the JSON body `body` builds from them.
pub async fn answer<W: ChunkWriter, B: serde::Serialize>(
    batch: Batch,
    ctx: RequestContext,
    plan: &GenerationPlan,
    writer: W,
    body: impl FnOnce(W, Whole) -> B,
) -> Result<Response, ApiError> {
    if plan.stream {
        return Ok(stream(batch, ctx, plan.include_usage, writer));
    }
    let (mut outputs, usage) = collect(batch, &ctx).await?;
    let metrum = outputs.first().and_then(|o| o.timing.clone());
    if outputs.len() == 1 {
        outputs[0].timing = None;
    }
    let whole = Whole {
        outputs,
        usage,
        metrum,
    };
    Ok(axum::Json(body(writer, whole)).into_response())
}

/// All sequences of one HTTP request, admitted by the engine.
pub struct Batch {
    streams: Vec<(usize, RequestStream)>,
    /// Prompt tokens, counted once per prompt (not once per choice), as OpenAI bills them.
    pub prompt_tokens: usize,
    permit: OwnedSemaphorePermit,
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
    /// The choice's timing (the `metrum` object); see [`Whole::outputs`] for when it is kept.
    pub timing: Option<serde_json::Value>,
}

/// Waits for every choice. Returns them by choice index, with the summed usage.
async fn collect(
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
                    timing: Some(timing),
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
fn stream<W: ChunkWriter>(
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
