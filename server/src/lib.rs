//! # Layout
//!
//! `metrum-server` is the `metrum` binary: an OpenAI-compatible HTTP front end for the engine
//! thread, plus the command line. The HTTP side never touches scheduler state: it tokenizes
//! (on blocking threads), submits to the [`EngineHandle`] and relays each request's stream.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`cli`] | clap subcommands, one file each (`serve`, `generate`), `--config` files, unit parsers |
//! | [`api`] | the axum router and one file per endpoint family; wire types in `api::types` |
//! | [`validation`] | wire fields -> `SamplingParams`, every range check, context-length checks |
//! | [`limits`] | abuse limits checked before tokenization (prompt bytes, output tokens, stops) |
//! | [`error`] | [`ApiError`](error::ApiError): the one error enum, mapped to HTTP in one place |
//! | [`sse`] | server-sent-event framing (`data: ...`, `[DONE]`, in-stream errors) |
//! | [`auth`] | `--api-key` bearer check (constant time) for `/v1` routes |
//! | [`shutdown`] | SIGTERM / SIGINT -> graceful drain |
//!
//! [`run`] takes an already-bound listener and a shutdown future (mini-redis style), so tests
//! bind `127.0.0.1:0` and stop the server without signals.

pub mod api;
pub mod auth;
pub mod cli;
pub mod error;
pub mod limits;
pub mod shutdown;
pub mod sse;
pub mod validation;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrum_engine::handle::EngineHandle;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// HTTP-side settings (the engine's live in `EngineConfig`).
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// `--api-key`: when set, every `/v1` route needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Largest accepted request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// A client must send its request headers within this time, or the connection is closed
    /// (slow-loris protection).
    pub header_timeout: Duration,
    /// After SIGTERM, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
    /// Requests the server holds at once (tokenizing, queued or running). Above it, 429: this
    /// is what keeps the server from buffering without bound before the engine's own queue.
    pub max_in_flight: usize,
    /// The engine configuration as given, echoed by `/version`.
    pub engine_config: serde_json::Value,
    /// Prompt-size and output-size limits per request (`--max-prompt-bytes`,
    /// `--max-output-tokens-per-request`).
    pub limits: limits::RequestLimits,
    /// `--tool-call-parser`: the tool-call format replies are parsed in; `None` = the one the
    /// model's chat template shows (`api::tools`).
    pub tool_call_parser: Option<api::tools::parsers::ToolFormat>,
    /// `--reasoning-parser`: chat replies split into `reasoning_content` and `content`, and
    /// constraints applied after the reasoning block (`api::reasoning`); `None` = off.
    pub reasoning_parser: Option<api::reasoning::ReasoningParser>,
    /// `/metrics` also shows the vLLM-named aliases routers read (off: `--no-vllm-metrics`).
    pub vllm_metric_aliases: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            api_key: None,
            max_body_bytes: 32 << 20,
            header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            max_in_flight: 1024 + 64,
            engine_config: serde_json::Value::Null,
            limits: limits::RequestLimits::default(),
            tool_call_parser: None,
            reasoning_parser: None,
            vllm_metric_aliases: true,
        }
    }
}

/// Serves HTTP on `listener` until `shutdown` resolves, then drains: stops accepting, tells
/// the engine to admit nothing new, waits up to `shutdown_grace` for open requests, and stops
/// the engine. Returns `Ok` after a drain.
///
/// If the engine fails instead (a panic or a failed forward pass; every in-flight request has
/// already been sent its error by then), the server keeps answering while the connections that
/// were open finish, up to `shutdown_grace` (`/health` says 503, new generations fail), then
/// stops the engine and returns `Err`, so `metrum serve` exits non-zero for its supervisor.
pub async fn run(
    listener: TcpListener,
    engine: EngineHandle,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = api::router(engine.clone(), &options);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let failure = loop {
        tokio::select! {
            accepted = accept(&listener) => {
                let Some((stream, peer)) = accepted else { continue };
                let service = TowerToHyperService::new(app.clone());
                let connection = http.serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!(%peer, %err, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break None,
            cause = engine.failed() => break Some(cause),
        }
    };
    if let Some(cause) = failure {
        return fail(
            listener, app, http, graceful, engine, &options, shutdown, cause,
        )
        .await;
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    engine.drain();
    match tokio::time::timeout(options.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all requests finished"),
        Err(_) => tracing::warn!(
            grace_secs = options.shutdown_grace.as_secs_f64(),
            "grace period over; aborting the requests still running"
        ),
    }
    engine.shutdown();
    Ok(())
}

/// Accepts one connection with `TCP_NODELAY` set: SSE frames are small and latency is the
/// product, so Nagle's algorithm must not hold a token back waiting for an ACK. `None` when
/// accepting failed (logged, after a short back-off).
pub async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok((stream, peer)) => {
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(%peer, %err, "cannot set TCP_NODELAY");
            }
            Some((stream, peer))
        }
        Err(err) => {
            // Usually out of file descriptors: back off instead of spinning.
            tracing::warn!(%err, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// The engine failed: let the connections that were open finish (their requests all got
/// their errors already), answering new ones meanwhile without keep-alive, then stop.
#[allow(clippy::too_many_arguments)]
async fn fail(
    listener: TcpListener,
    app: axum::Router,
    mut http: hyper::server::conn::http1::Builder,
    graceful: GracefulShutdown,
    engine: EngineHandle,
    options: &ServerOptions,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    cause: String,
) -> std::io::Result<()> {
    tracing::error!(%cause, "the engine failed; finishing open connections, then exiting non-zero");
    http.keep_alive(false);
    let answer_newcomers = async {
        loop {
            let Some((stream, _)) = accept(&listener).await else {
                continue;
            };
            let service = TowerToHyperService::new(app.clone());
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(connection);
        }
    };
    tokio::select! {
        finished = tokio::time::timeout(options.shutdown_grace, graceful.shutdown()) => {
            if finished.is_err() {
                tracing::warn!("grace period over; closing the connections still open");
            }
        }
        () = answer_newcomers => {}
        () = shutdown => {}
    }
    engine.shutdown();
    Err(std::io::Error::other(format!("the engine failed: {cause}")))
}
