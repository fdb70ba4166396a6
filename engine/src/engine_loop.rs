//! The engine thread: the one place where scheduler, executor and metrics meet.
//!
//! ```text
//! loop {
//!     drain commands (add, abort, drain, shutdown)        // channels, no shared locks
//!     plan   = scheduler.schedule(now)                     // who runs, how many tokens, which blocks
//!     logits = executor.execute(plan)                      // one batched forward
//!              (grammar masks for the rows that sample are computed meanwhile, on a
//!               scoped thread: `forward_with_masks`)
//!     tokens = sample each request's rows with its own sampler (and mask, and drafts to
//!              verify), requests spread over the CPU pool: `step_sampling`
//!     scheduler.update(plan, tokens, now)                  // append, stop checks, free blocks
//!     detokenize + stop strings -> stream deltas; events -> metrics; finished -> final event
//! }
//! ```
//!
//! # Where a step-level feature goes
//!
//! The executor ([`crate::executor`]) only runs the forward and hands back the logits rows of
//! the requests that sample; everything a step does with those rows lives on this side of it:
//!
//! - **Work that can overlap the forward** (grammar masks: they depend only on tokens already
//!   sampled) goes in `forward_with_masks`, which runs it on a scoped thread while the executor
//!   runs the forward on the engine thread. That scoped thread is this codebase's "launch the
//!   forward, collect it separately" (vLLM's `execute_model(non_block)` then `sample_tokens`):
//!   the forward keeps a blocking `execute`, and the overlap is made around it.
//! - **Work per request on its rows** (masks applied, penalties, multi-token verification of
//!   drafts) goes in `step_sampling::RequestRows` (what one request does with its rows) and
//!   the sampling modules it calls (`sampling`, `speculative::rejection`, `structured`); the
//!   parallel split of a step's requests over the CPU pool is there too, so a new per-row
//!   feature is parallel, and bit-identical to sequential, without more work.
//! - **Work on the step's outcome** (speculation counts, grammar failures, stop strings,
//!   drafts for the next step) goes in `step`, after sampling, on the engine thread, in plan
//!   order.
//!
//! Failure is fatal, on purpose. A panic anywhere in the loop or a failed forward pass leaves
//! state nobody can vouch for (a half-applied scheduler update, KV blocks the failed step may
//! have half written, a sticky CUDA error), so the engine does not try to go on: it marks
//! itself [`EngineStatus::Failed`] (so `/health` answers 503), sends every in-flight request an
//! [`StreamEvent::Error`], and from then on refuses new requests with
//! [`SubmitError::EngineDead`] until it is told to shut down. The server sees the failure
//! through [`crate::EngineHandle::failed`] and exits non-zero for its supervisor to restart it.

use crate::detokenize::{StopOutcome, TextStream};
use crate::error::EngineError;
use crate::executor::Executor;
use crate::handle::{EngineRequest, EngineStatus, Shared, StreamEvent, SubmitError, TokenLogprob};
use crate::model::SequenceChunk;
use crate::sampling::{SampledToken, SequenceSampler};
use crate::speculative::{
    self, DraftModelProposer, SpeculationStats, SpeculativeConfig, rejection,
};
use crate::step_sampling::RowsOutcome;
use crate::structured::GrammarState;
use crate::text::TextCodec;
use metrum_core::time::MonotonicClock;
use metrum_core::{EventKind, FinishReason, Nanos, RequestId};
use metrum_metrics::RequestShape;
use metrum_scheduler::{AdmissionError, NewRequest, Scheduler};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, oneshot};

mod step_rows;

/// Starts the engine thread; see [`crate::loader::spawn`].
pub use crate::loader::spawn;

pub(crate) enum Command {
    Add {
        id: RequestId,
        /// Boxed: the prompt and sampling parameters dwarf every other command.
        request: Box<EngineRequest>,
        events: mpsc::UnboundedSender<StreamEvent>,
        admitted: oneshot::Sender<Result<(), SubmitError>>,
    },
    /// Several requests admitted all together or not at all (the `n` choices and prompts of one
    /// HTTP request): a refusal must not leave half of them running, to be aborted and counted.
    AddAll {
        items: Vec<(
            RequestId,
            Box<EngineRequest>,
            mpsc::UnboundedSender<StreamEvent>,
        )>,
        admitted: oneshot::Sender<Result<(), SubmitError>>,
    },
    Abort {
        id: RequestId,
    },
    Drain,
    Shutdown,
    /// Test builds only: make the next forward pass fail this way.
    #[cfg(feature = "fault-injection")]
    InjectFault(crate::executor::Fault),
}

/// What the engine thread keeps per in-flight request, beside the scheduler's own state.
struct Live {
    events: mpsc::UnboundedSender<StreamEvent>,
    sampler: SequenceSampler,
    text: TextStream,
    logprobs: Option<usize>,
    shape: RequestShape,
    completion_tokens: usize,
    /// Set when a stop string (or a grammar failure) ended the request inside this step.
    stopped: bool,
    /// The request's grammar (structured outputs); it lives as long as the request, so a
    /// preempted request resumes with its matcher where it was (preemption recomputes KV,
    /// never re-samples tokens).
    grammar: Option<GrammarState>,
    /// The request ignores EOS: a finished grammar does not end it either.
    ignore_eos: bool,
    /// Speculative decoding state, when this request speculates (see `speculative`).
    speculation: Option<Speculation>,
}

/// A speculating request's known tokens (to look drafts up in) and its acceptance counts.
struct Speculation {
    tokens: Vec<u32>,
    stats: SpeculationStats,
}

/// The loaded pieces the loop drives.
pub(crate) struct Engine {
    pub scheduler: Scheduler,
    pub executor: Box<dyn Executor>,
    pub codec: Arc<TextCodec>,
    pub shared: Arc<Shared>,
    pub clock: MonotonicClock,
    pub max_waiting_requests: usize,
    pub seed: u64,
    live: HashMap<RequestId, Live>,
    draining: bool,
    /// Prefix-cache (queries, hits) already reported to metrics.
    prefix_seen: (u64, u64),
    /// `--speculative-config`; `None` = no speculation.
    speculative: Option<SpeculativeConfig>,
    /// The draft model and its KV cache, for `"method": "draft_model"`.
    draft_model: Option<DraftModelProposer>,

    /// A fault the next forward pass will suffer (test builds only).
    #[cfg(feature = "fault-injection")]
    armed_fault: Option<crate::executor::Fault>,
}

impl Engine {
    pub fn new(
        scheduler: Scheduler,
        executor: Box<dyn Executor>,
        codec: Arc<TextCodec>,
        shared: Arc<Shared>,
        max_waiting_requests: usize,
        seed: u64,
    ) -> Engine {
        Engine {
            scheduler,
            executor,
            codec,
            shared,
            clock: MonotonicClock::new(),
            max_waiting_requests,
            seed,
            live: HashMap::new(),
            draining: false,
            prefix_seen: (0, 0),
            speculative: None,
            draft_model: None,
            #[cfg(feature = "fault-injection")]
            armed_fault: None,
        }
    }

    /// Serves with speculative decoding as `config` says (`None`: without).
    pub fn with_speculation(mut self, config: Option<SpeculativeConfig>) -> Engine {
        self.speculative = config;
        self
    }

    /// Proposes drafts with this draft model (`"method": "draft_model"`).
    pub fn with_draft_model(mut self, proposer: Option<DraftModelProposer>) -> Engine {
        self.draft_model = proposer;
        self
    }

    /// Runs until `Shutdown`, or until every handle is gone and nothing is in flight. After a
    /// failure (see the module docs) it fails every request, then refuses new ones until then.
    pub fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let served = std::panic::catch_unwind(AssertUnwindSafe(|| self.serve(&mut commands)));
        let cause = match served {
            Ok(Ok(())) => {
                self.abort_all(FinishReason::Abort, "engine shut down");
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(panic) => format!("the engine panicked: {}", panic_message(&*panic)),
        };
        tracing::error!(%cause, "engine failed: failing every in-flight request and refusing new ones");
        self.fail_all(&cause);
        refuse_until_shutdown(&mut commands, &cause);
    }

    /// The loop proper. `Err` is a fatal failure: a forward pass that failed
    /// ([`EngineError::Forward`], or the [`EngineError::Fault`] a test armed).
    fn serve(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), EngineError> {
        loop {
            if self.live.is_empty() && !self.scheduler.has_unfinished() {
                self.publish_stats();
                match commands.blocking_recv() {
                    Some(cmd) => {
                        if !self.handle(cmd) {
                            return Ok(());
                        }
                    }
                    None => return Ok(()),
                }
            }
            let mut keep_going = true;
            while let Ok(cmd) = commands.try_recv() {
                keep_going &= self.handle(cmd);
            }
            if !keep_going {
                return Ok(());
            }
            if self.scheduler.has_unfinished() {
                self.step()?;
            }
        }
    }

    /// After a failure: `/health` turns 503 first, then every request still in flight gets its
    /// error event. Counting them as `finish_reason="error"` goes through the scheduler, which a
    /// panic may have left inconsistent, so that part is best effort.
    fn fail_all(&mut self, cause: &str) {
        if let Ok(mut s) = self.shared.status.write() {
            *s = EngineStatus::Failed(cause.to_string());
        }
        let ids: Vec<RequestId> = self.live.keys().copied().collect();
        for live in self.live.values() {
            let _ = live.events.send(StreamEvent::Error {
                message: cause.to_string(),
            });
        }
        let accounted = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let now = self.clock.now();
            for &id in &ids {
                self.scheduler.finish(id, FinishReason::Error, now);
            }
            self.flush_events();
            self.publish_stats();
        }));
        if accounted.is_err() {
            tracing::warn!("could not count the failed requests in the metrics");
        }
        self.live.clear();
    }

    /// Returns false when the engine should stop.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Add {
                id,
                request,
                events,
                admitted,
            } => {
                let result = self.admit(id, request, events);
                let _ = admitted.send(result);
            }
            Command::AddAll { items, admitted } => {
                let result = self.admit_all(items);
                let _ = admitted.send(result);
            }
            Command::Abort { id } => {
                let now = self.clock.now();
                self.scheduler.abort(id, now);
                self.flush_events();
            }
            Command::Drain => {
                self.draining = true;
                if let Ok(mut s) = self.shared.status.write() {
                    *s = EngineStatus::Draining;
                }
            }
            Command::Shutdown => return false,
            #[cfg(feature = "fault-injection")]
            Command::InjectFault(fault) => self.armed_fault = Some(fault),
        }
        true
    }

    /// Admits every item or none: the waiting limit is checked for the whole group first.
    fn admit_all(
        &mut self,
        items: Vec<(
            RequestId,
            Box<EngineRequest>,
            mpsc::UnboundedSender<StreamEvent>,
        )>,
    ) -> Result<(), SubmitError> {
        let waiting = self.scheduler.num_waiting();
        if !self.draining && waiting + items.len() > self.max_waiting_requests {
            return Err(SubmitError::Overloaded {
                waiting,
                limit: self.max_waiting_requests,
            });
        }
        let mut admitted = Vec::with_capacity(items.len());
        for (id, request, events) in items {
            if let Err(e) = self.admit(id, request, events) {
                // Only a request the scheduler finds impossible gets here after others of
                // its group were admitted; those are withdrawn before any step ran.
                let now = self.clock.now();
                for id in admitted {
                    self.live.remove(&id);
                    self.scheduler.abort(id, now);
                }
                self.flush_events();
                return Err(e);
            }
            admitted.push(id);
        }
        Ok(())
    }

    fn admit(
        &mut self,
        id: RequestId,
        mut request: Box<EngineRequest>,
        events: mpsc::UnboundedSender<StreamEvent>,
    ) -> Result<(), SubmitError> {
        if self.draining {
            return Err(SubmitError::Unavailable("server is shutting down".into()));
        }
        let waiting = self.scheduler.num_waiting();
        if waiting >= self.max_waiting_requests {
            self.shared.metrics.record_refusal("queue_full");
            return Err(SubmitError::Overloaded {
                waiting,
                limit: self.max_waiting_requests,
            });
        }
        let params = &request.params;
        let eos: Vec<u32> = self
            .codec
            .tokenizer
            .eos_token_ids()
            .iter()
            .copied()
            .collect();
        let arrival = self.clock.at(request.arrival);
        let new = NewRequest::from_sampling(
            id,
            request.prompt_tokens.clone(),
            params,
            eos.clone(),
            arrival,
        )
        .with_priority(request.priority)
        .with_slo(request.slo);
        self.scheduler.add_request(new).map_err(|e| match e {
            AdmissionError::PredictedMiss {
                retry_after_secs, ..
            } => {
                self.shared.metrics.record_refusal("predicted_miss");
                SubmitError::PredictedMiss {
                    message: e.to_string(),
                    retry_after_secs,
                }
            }
            e => SubmitError::Invalid(e.to_string()),
        })?;
        let fallback_seed = self.seed ^ id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let sampler = SequenceSampler::new(params, &request.prompt_tokens, fallback_seed)
            .with_eos_token_ids(&eos);
        let text = TextStream::new(&request.prompt_tokens, true, params.stop.iter().cloned());
        let speculation =
            (self.speculative.is_some() && request.speculative && request.constraint.is_none())
                .then(|| Speculation {
                    tokens: request.prompt_tokens.clone(),
                    stats: SpeculationStats::default(),
                });
        self.live.insert(
            id,
            Live {
                events,
                sampler,
                text,
                logprobs: params.logprobs,
                shape: RequestShape {
                    prompt_tokens: request.prompt_tokens.len() as u32,
                    max_tokens: Some(params.max_tokens as u32),
                    slo: request.slo,
                },
                completion_tokens: 0,
                stopped: false,
                grammar: request.constraint.take().map(GrammarState::new),
                ignore_eos: params.ignore_eos,
                speculation,
            },
        );
        self.flush_events();
        Ok(())
    }

    /// One scheduling step. `Err` only for a failed forward pass, which is fatal.
    fn step(&mut self) -> Result<(), EngineError> {
        let started = self.clock.now();
        let plan = self.scheduler.schedule(started);
        self.flush_events();
        if plan.scheduled.is_empty() {
            // Nothing runnable (e.g. every waiting request needs blocks that running ones hold
            // and none can be preempted yet): yield instead of spinning hot.
            std::thread::sleep(std::time::Duration::from_millis(1));
            return Ok(());
        }
        let tables: Vec<Vec<u32>> = plan
            .scheduled
            .iter()
            .map(|s| s.block_table.iter().map(|b| b.0).collect())
            .collect();
        let chunks: Vec<SequenceChunk<'_>> = plan
            .scheduled
            .iter()
            .zip(&tables)
            .map(|(s, table)| SequenceChunk {
                tokens: &s.token_ids,
                num_cached: s.start_position,
                block_table: table,
                num_logits: s.num_logits(),
            })
            .collect();
        let batch_tokens: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        let samplers: Vec<RequestId> = plan
            .scheduled
            .iter()
            .filter(|s| s.samples)
            .map(|s| s.id)
            .collect();
        let mut logits = self.forward_with_masks(&chunks, &samplers)?;
        let outcomes = self.sample_rows(&plan, &mut logits);
        let mut sampled: Vec<(RequestId, Vec<SampledToken>)> = Vec::with_capacity(outcomes.len());
        let mut step_spec = SpeculationStats::default();
        for (s, outcome) in outcomes {
            let Some(live) = self.live.get_mut(&s.id) else {
                continue;
            };
            match outcome {
                RowsOutcome::Tokens(tokens) => {
                    if let Some(spec) = &mut live.speculation {
                        let drafts = s.draft_tokens().len();
                        let accepted = rejection::num_accepted(tokens.len(), drafts);
                        spec.stats.record(drafts, accepted);
                        step_spec.record(drafts, accepted);
                    }
                    sampled.push((s.id, tokens));
                }
                RowsOutcome::GrammarFailed(error) => {
                    // Only this request ends: its missing token makes the scheduler finish it
                    // with reason `error` in `update`, and the client gets the message.
                    tracing::warn!(request = %s.id, %error, "constrained request failed");
                    live.stopped = true;
                    let _ = live.events.send(StreamEvent::Error {
                        message: error.to_string(),
                    });
                }
            }
        }
        // Counted before any token is emitted: a client whose request ends in this step may
        // read /metrics as soon as it has its answer (it read one step short, now and then).
        self.shared.metrics.observe_speculation(
            step_spec.num_drafts,
            step_spec.num_draft_tokens,
            step_spec.num_accepted_tokens,
            &step_spec.accepted_per_position,
        );
        let now = self.clock.now();
        let tokens: Vec<(RequestId, Vec<u32>)> = sampled
            .iter()
            .map(|(id, t)| (*id, t.iter().map(|t| t.token).collect()))
            .collect();
        let appended = match self.scheduler.update_multi(&plan, &tokens, now) {
            Ok(result) => result.appended,
            Err(e) => {
                // A stale or doubly applied plan is an engine bug; fail loudly but keep serving.
                tracing::error!(error = %e, "scheduler rejected a step update");
                Vec::new()
            }
        };
        let mut delivered = Vec::with_capacity(sampled.len());
        for (id, mut toks) in sampled {
            // The scheduler keeps the tokens up to the first stop (EOS, stop id, length).
            toks.truncate(appended.iter().filter(|(a, _)| *a == id).count());
            if !toks.is_empty() {
                self.emit_tokens(id, toks, now);
                delivered.push(id);
            }
        }
        self.propose_drafts(&delivered);
        self.flush_events();
        let metrics = &self.shared.metrics;
        metrics.observe_iteration(now.saturating_sub(started), batch_tokens as u32);
        self.publish_stats();
        Ok(())
    }

    /// Speculative decoding: proposes drafts for the next step of each of `ids` (the requests
    /// that just got tokens) and hands them to the scheduler, which verifies them if there is
    /// room. N-gram lookup goes request by request; a draft model runs once for them all.
    fn propose_drafts(&mut self, ids: &[RequestId]) {
        let Some(config) = &self.speculative else {
            return;
        };
        let k = config.num_speculative_tokens;
        let asks: Vec<(RequestId, &[u32], usize)> = ids
            .iter()
            .filter_map(|id| {
                let live = self.live.get(id).filter(|live| !live.stopped)?;
                let spec = live.speculation.as_ref()?;
                // A step verifying `d` drafts may emit `d + 1` tokens.
                let room = live
                    .shape
                    .max_tokens
                    .map_or(usize::MAX, |max| max as usize)
                    .saturating_sub(live.completion_tokens + 1);
                Some((*id, spec.tokens.as_slice(), k.min(room)))
            })
            .collect();
        let Some(draft_model) = &mut self.draft_model else {
            for (id, tokens, max_drafts) in asks {
                let drafts = speculative::propose(config, tokens, max_drafts);
                self.scheduler.set_draft_tokens(id, drafts);
            }
            return;
        };
        match draft_model.propose(&asks) {
            Ok(proposals) => {
                for (id, drafts) in proposals {
                    self.scheduler.set_draft_tokens(id, drafts);
                }
            }
            // Drafts are only guesses: without them the step is a plain decode, still exact.
            Err(error) => tracing::warn!(%error, "no drafts this step"),
        }
    }

    /// Streams the tokens one request got in this step as one delivery (one `Delta`, so one
    /// SSE chunk, however many tokens speculation accepted). A stop string finishes the
    /// request at the token that completes it; the step's later tokens are dropped.
    fn emit_tokens(&mut self, id: RequestId, toks: Vec<SampledToken>, now: Nanos) {
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        if live.stopped {
            return;
        }
        let (mut tokens, mut text, mut logprobs) = (Vec::new(), String::new(), Vec::new());
        let mut stop = false;
        for tok in toks {
            live.completion_tokens += 1;
            tokens.push(tok.token);
            if let Some(spec) = &mut live.speculation {
                spec.tokens.push(tok.token);
            }
            let outcome = live.text.push(&self.codec.tokenizer, tok.token);
            match outcome {
                Ok(StopOutcome::Continue(t)) => text.push_str(&t),
                Ok(StopOutcome::Stop { text: t, .. }) => {
                    text.push_str(&t);
                    stop = true;
                }
                Err(e) => {
                    text.push('\u{FFFD}');
                    if cfg!(debug_assertions) {
                        text.push_str(&e.to_string());
                    }
                }
            }
            if live.logprobs.is_some() {
                logprobs.push(TokenLogprob {
                    token: tok.token,
                    logprob: tok.logprob,
                    top: tok.top_logprobs,
                });
            }
            if stop {
                break;
            }
        }
        // A completed grammar ends the request here (text held back for a possible stop
        // string is released: that stop string can no longer complete).
        let grammar_done =
            !stop && !live.ignore_eos && live.grammar.as_ref().is_some_and(GrammarState::is_done);
        if grammar_done
            && let Ok(StopOutcome::Continue(tail) | StopOutcome::Stop { text: tail, .. }) =
                live.text.finish(&self.codec.tokenizer)
        {
            text.push_str(&tail);
        }
        let _ = live.events.send(StreamEvent::Delta {
            tokens,
            text,
            logprobs,
        });
        if stop || grammar_done {
            live.stopped = true;
            self.scheduler.finish(id, FinishReason::Stop, now);
        }
    }

    fn abort_all(&mut self, reason: FinishReason, message: &str) {
        let ids: Vec<RequestId> = self.live.keys().copied().collect();
        let now = self.clock.now();
        for id in ids {
            if let Some(live) = self.live.get(&id) {
                let _ = live.events.send(StreamEvent::Error {
                    message: message.to_string(),
                });
            }
            self.scheduler.finish(id, reason, now);
        }
        self.flush_events();
    }

    /// Feeds scheduler events to the metrics registry and closes finished streams.
    fn flush_events(&mut self) {
        for ev in self.scheduler.drain_events() {
            if let (EventKind::Finished(_) | EventKind::Preempted, Some(draft_model)) =
                (ev.kind, &mut self.draft_model)
            {
                draft_model.release(ev.request);
            }
            let shape = self
                .live
                .get(&ev.request)
                .map(|l| l.shape)
                .unwrap_or(RequestShape {
                    prompt_tokens: 0,
                    max_tokens: None,
                    slo: metrum_core::RequestSlo::SERVER,
                });
            let report = match self.shared.metrics.observe_event(&ev, shape) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(request = %ev.request, error = %e, "metrics rejected an engine event");
                    None
                }
            };
            if let EventKind::Finished(reason) = ev.kind
                && let Some(mut live) = self.live.remove(&ev.request)
            {
                if let Ok(outcome) = live.text.finish(&self.codec.tokenizer) {
                    let tail = match outcome {
                        StopOutcome::Continue(t) | StopOutcome::Stop { text: t, .. } => t,
                    };
                    if !tail.is_empty() && !live.stopped {
                        let _ = live.events.send(StreamEvent::Delta {
                            tokens: Vec::new(),
                            text: tail,
                            logprobs: Vec::new(),
                        });
                    }
                }
                if let Some(grammar) = &live.grammar {
                    tracing::info!(
                        request = %ev.request,
                        masks = grammar.masks,
                        mask_us_per_token = grammar.mask_time.as_secs_f64() * 1e6
                            / grammar.masks.max(1) as f64,
                        "constrained request finished"
                    );
                }
                if let Some(timing) = report {
                    tracing::info!(
                        request = %ev.request,
                        reason = %reason,
                        prompt_tokens = live.shape.prompt_tokens,
                        completion_tokens = live.completion_tokens,
                        ttft_ms = timing.ttft_ms,
                        e2e_ms = timing.e2e_ms,
                        fluidity = timing.fluidity_index,
                        "request finished"
                    );
                    if reason != FinishReason::Error {
                        let _ = live.events.send(StreamEvent::Finished {
                            reason,
                            prompt_tokens: live.shape.prompt_tokens as usize,
                            completion_tokens: live.completion_tokens,
                            timing: Box::new(timing),
                            speculation: live.speculation.take().map(|s| s.stats),
                        });
                    }
                }
            }
        }
    }

    fn publish_stats(&mut self) {
        let st = self.scheduler.stats();
        let s = &self.shared.stats;
        s.running.store(st.num_running, Ordering::Relaxed);
        s.waiting.store(st.num_waiting, Ordering::Relaxed);
        s.free_blocks.store(st.num_free_blocks, Ordering::Relaxed);
        s.total_blocks.store(st.num_blocks, Ordering::Relaxed);
        s.steps.store(st.num_steps, Ordering::Relaxed);
        let m = &self.shared.metrics;
        m.set_requests_running(st.num_running);
        m.set_requests_waiting(st.num_waiting);
        m.set_kv_cache_usage(st.kv_usage);
        // Prometheus counters take deltas; the scheduler keeps totals since start.
        let (q, h) = (st.prefix_cache_queries, st.prefix_cache_hits);
        m.observe_prefix_cache(q - self.prefix_seen.0, h - self.prefix_seen.1);
        self.prefix_seen = (q, h);
    }
}

/// Answers every later submission with the failure until told to shut down (or every handle
/// is gone), so no client waits on an engine that will never run its request.
fn refuse_until_shutdown(commands: &mut mpsc::UnboundedReceiver<Command>, cause: &str) {
    while let Some(cmd) = commands.blocking_recv() {
        match cmd {
            Command::Add { admitted, .. } | Command::AddAll { admitted, .. } => {
                let _ = admitted.send(Err(SubmitError::EngineDead(cause.to_string())));
            }
            Command::Shutdown => return,
            _ => {}
        }
    }
}

/// The text of a caught panic (`panic!` payloads are a `&str` or a `String`).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
