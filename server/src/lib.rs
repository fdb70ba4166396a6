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
pub mod shutdown;
pub mod sse;
pub mod validation;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrum_engine::handle::EngineHandle;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

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
        }
    }
}

/// Serves HTTP on `listener` until `shutdown` resolves, then drains: stops accepting, tells
/// the engine to admit nothing new, waits up to `shutdown_grace` for open requests, and stops
/// the engine.
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
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let service = TowerToHyperService::new(app.clone());
                let connection = http.serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!(%peer, %err, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
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
