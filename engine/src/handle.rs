//! The engine's front door: what the HTTP server (or `metrum generate`) holds to talk to the
//! engine thread. Everything crosses by channel; there is no lock around scheduler state.
//!
//! * [`EngineHandle::submit`] admits a request (or says why not) and returns a [`RequestStream`].
//! * Dropping a [`RequestStream`] before it finished aborts the request in the engine at once,
//!   so a client disconnect frees its KV blocks without any extra code in the server.
//! * [`EngineHandle::status`] says whether the model is still loading, ready, or failed;
//!   [`EngineHandle::failed`] resolves when a loaded engine fails (a panic or a failed forward
//!   pass), which the server takes as its cue to exit non-zero.

use crate::engine_loop::Command;
use metrum_core::{FinishReason, RequestId, SamplingParams};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};

/// One request as the engine sees it: already tokenized and validated for types and ranges.
#[derive(Clone, Debug)]
pub struct EngineRequest {
    pub prompt_tokens: Vec<u32>,
    pub params: SamplingParams,
    /// Lower value = more important (vLLM's convention). Used by `--scheduling-policy priority`.
    pub priority: i32,
    /// When the request reached the server; scheduling delay and TTFT count from here.
    pub arrival: std::time::Instant,
    /// The request's own deadlines (llm-d's `x-llm-d-slo-*` headers or the `metrum.slo`
    /// field); unset parts fall back to the server's SLO.
    pub slo: metrum_scheduler::RequestSlo,
    /// Structured outputs: this request's own grammar matcher, compiled off the engine thread
    /// (`structured::GrammarCompiler`); `None` = unconstrained.
    pub constraint: Option<crate::structured::GrammarMatcher>,
    /// Whether this request may use speculative decoding when the server has it on (the
    /// body's `speculative`, default true); see `speculative` for who speculates.
    pub speculative: bool,
}

/// One logprob entry of a generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What a request's stream yields, in order: any number of `Delta`s, then exactly one
/// `Finished` or `Error`.
#[derive(Clone, Debug)]
pub enum StreamEvent {
    /// New tokens became visible. `text` is valid UTF-8 and may be empty when bytes of a
    /// multi-byte character or a possible stop-string prefix are held back.
    Delta {
        tokens: Vec<u32>,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Per-request timing (the `metrum` object of responses).
        timing: Box<metrum_metrics::RequestTimingReport>,
        /// This request's speculative-decoding counts; `None` when it did not speculate.
        speculation: Option<crate::speculative::SpeculationStats>,
    },
    /// The engine failed while running this request (it is finished with reason `error`).
    Error { message: String },
}

/// Why a request was not admitted. The server maps each to one HTTP status.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// The request can never run (too long for the context or the KV cache). HTTP 400.
    #[error("{0}")]
    Invalid(String),
    /// More than `max_waiting_requests` are queued. HTTP 429.
    #[error("server overloaded: {waiting} requests waiting (limit {limit})")]
    Overloaded { waiting: usize, limit: usize },
    /// Admission control predicts the first token past its deadline. HTTP 429 with
    /// `Retry-After: retry_after_secs`.
    #[error("{message}")]
    PredictedMiss {
        message: String,
        retry_after_secs: u64,
    },
    /// The model is still loading, or the server is draining. HTTP 503.
    #[error("{0}")]
    Unavailable(String),
    /// The engine thread is gone. HTTP 500.
    #[error("engine stopped: {0}")]
    EngineDead(String),
}

/// Lifecycle of the engine as the health endpoint reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineStatus {
    Loading,
    Ready,
    Draining,
    Failed(String),
}

/// Counters the engine thread publishes after every step (atomics: readers never block it).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub free_blocks: AtomicUsize,
    pub total_blocks: AtomicUsize,
    pub steps: AtomicU64,
}

impl EngineStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            running: self.running.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            free_blocks: self.free_blocks.load(Ordering::Relaxed),
            total_blocks: self.total_blocks.load(Ordering::Relaxed),
            steps: self.steps.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub running: usize,
    pub waiting: usize,
    pub free_blocks: usize,
    pub total_blocks: usize,
    pub steps: u64,
}

/// Static facts about the loaded model and engine, for /v1/models and /version.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelInfo {
    pub served_model_name: String,
    pub source: String,
    pub architecture: String,
    pub dtype: String,
    pub device: String,
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub num_kv_blocks: usize,
    pub block_size: usize,
    /// Every scheduler knob, as configured.
    pub scheduler: serde_json::Value,
}

/// Shared between the handle(s) and the engine thread.
pub(crate) struct Shared {
    pub status: std::sync::RwLock<EngineStatus>,
    pub stats: EngineStats,
    pub info: OnceLock<ModelInfo>,
    pub text: OnceLock<Arc<crate::TextCodec>>,
    pub metrics: Arc<metrum_metrics::MetricsRegistry>,
    pub next_id: AtomicU64,
}

/// Cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) shared: Arc<Shared>,
}

impl EngineHandle {
    /// Submits a request; resolves once the scheduler admitted or rejected it.
    pub async fn submit(&self, request: EngineRequest) -> Result<RequestStream, SubmitError> {
        let id = RequestId(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (admit_tx, admit_rx) = oneshot::channel();
        self.commands
            .send(Command::Add {
                id,
                request: Box::new(request),
                events: events_tx,
                admitted: admit_tx,
            })
            .map_err(|_| SubmitError::EngineDead(self.status_message()))?;
        match admit_rx.await {
            Ok(Ok(())) => Ok(RequestStream {
                id,
                events: events_rx,
                commands: self.commands.clone(),
                done: false,
            }),
            Ok(Err(e)) => Err(e),
            // The engine dropped the request unanswered: it failed while admitting it.
            Err(_) => Err(SubmitError::EngineDead(match self.status() {
                EngineStatus::Failed(cause) => cause,
                _ => "the engine failed while admitting the request".into(),
            })),
        }
    }

    /// Submits several requests that are admitted together or not at all (e.g. the `n`
    /// choices of one HTTP request); the streams come back in order.
    pub async fn submit_all(
        &self,
        requests: Vec<EngineRequest>,
    ) -> Result<Vec<RequestStream>, SubmitError> {
        let mut items = Vec::with_capacity(requests.len());
        let mut receivers = Vec::with_capacity(requests.len());
        for request in requests {
            let id = RequestId(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
            let (events_tx, events_rx) = mpsc::unbounded_channel();
            items.push((id, Box::new(request), events_tx));
            receivers.push((id, events_rx));
        }
        let (admit_tx, admit_rx) = oneshot::channel();
        self.commands
            .send(Command::AddAll {
                items,
                admitted: admit_tx,
            })
            .map_err(|_| SubmitError::EngineDead(self.status_message()))?;
        match admit_rx.await {
            Ok(Ok(())) => Ok(receivers
                .into_iter()
                .map(|(id, events)| RequestStream {
                    id,
                    events,
                    commands: self.commands.clone(),
                    done: false,
                })
                .collect()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SubmitError::EngineDead(match self.status() {
                EngineStatus::Failed(cause) => cause,
                _ => "the engine failed while admitting the requests".into(),
            })),
        }
    }

    /// Blocking variant for synchronous callers (the `generate` command, tests).
    pub fn submit_blocking(&self, request: EngineRequest) -> Result<RequestStream, SubmitError> {
        futures_lite_block_on(self.submit(request))
    }

    pub fn abort(&self, id: RequestId) {
        let _ = self.commands.send(Command::Abort { id });
    }

    /// Stops admitting new requests; in-flight ones run to completion.
    pub fn drain(&self) {
        let _ = self.commands.send(Command::Drain);
    }

    /// Stops the engine thread after in-flight requests are aborted.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }

    pub fn status(&self) -> EngineStatus {
        self.shared
            .status
            .read()
            .map(|s| s.clone())
            .unwrap_or(EngineStatus::Failed("poisoned".into()))
    }

    fn status_message(&self) -> String {
        match self.status() {
            EngineStatus::Failed(m) => m,
            other => format!("{other:?}"),
        }
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Resolves, with the cause, once the engine has stopped serving for good after it loaded:
    /// a panic or a failed forward pass (status [`EngineStatus::Failed`]), or its thread gone
    /// without being asked to stop. A model that fails to *load* does not count: that server
    /// stays up answering 503 (see the loader). Checks every 20 ms; cheap (one read lock).
    pub async fn failed(&self) -> String {
        const POLL: std::time::Duration = std::time::Duration::from_millis(20);
        loop {
            let status = self.status();
            match status {
                EngineStatus::Failed(cause) if self.model_info().is_some() => return cause,
                _ => {}
            }
            tokio::select! {
                () = self.commands.closed() => {
                    return match self.status() {
                        EngineStatus::Failed(cause) => cause,
                        other => format!("the engine thread ended unexpectedly (status {other:?})"),
                    };
                }
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Test builds only (cargo feature `fault-injection`): the next forward pass suffers
    /// `fault` instead of running.
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault(&self, fault: crate::executor::Fault) {
        let _ = self.commands.send(Command::InjectFault(fault));
    }

    /// `None` until the model has loaded.
    pub fn model_info(&self) -> Option<&ModelInfo> {
        self.shared.info.get()
    }

    /// Tokenizer and chat template; `None` until the model has loaded.
    pub fn text(&self) -> Option<Arc<crate::TextCodec>> {
        self.shared.text.get().cloned()
    }

    pub fn metrics(&self) -> Arc<metrum_metrics::MetricsRegistry> {
        self.shared.metrics.clone()
    }
}

/// The events of one request. Dropping it before `Finished`/`Error` aborts the request.
pub struct RequestStream {
    pub id: RequestId,
    events: mpsc::UnboundedReceiver<StreamEvent>,
    commands: mpsc::UnboundedSender<Command>,
    done: bool,
}

impl RequestStream {
    pub async fn next(&mut self) -> Option<StreamEvent> {
        let ev = self.events.recv().await;
        self.note(&ev);
        ev
    }

    pub fn next_blocking(&mut self) -> Option<StreamEvent> {
        let ev = self.events.blocking_recv();
        self.note(&ev);
        ev
    }

    fn note(&mut self, ev: &Option<StreamEvent>) {
        if matches!(
            ev,
            None | Some(StreamEvent::Finished { .. }) | Some(StreamEvent::Error { .. })
        ) {
            self.done = true;
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.commands.send(Command::Abort { id: self.id });
        }
    }
}

/// Minimal block_on for the one synchronous caller path, so the engine crate needs no runtime.
fn futures_lite_block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
