//! The HTTP surface: routes, shared state, and the layers every request passes through.
//!
//! | route | file |
//! | --- | --- |
//! | `POST /v1/completions` | [`completions`] |
//! | `POST /v1/chat/completions` | [`chat`] |
//! | `GET /v1/models` | [`models`] |
//! | `POST /tokenize`, `POST /detokenize` | [`tokenize`] |
//! | `GET /health` | [`health`] |
//! | `GET /metrics` | [`metrics`] |
//! | `GET /version` | [`version`] |
//! | `GET /openapi.json` | [`openapi`] (the document of all of the above) |
//!
//! Shared machinery: [`extract`] (JSON bodies with OpenAI errors), [`fields`] (every request
//! field Metrum does not implement is a 400 naming it), [`text`] (tokenizer work on
//! blocking threads), [`generate`] (the request prelude: model check, plan, budget, admission,
//! submit; then stream or collect; shared by both generation routes, whose OpenAPI error
//! answers are one list too, [`openapi::GenerationErrors`]),
//! [`logprobs`] (engine logprobs -> both wire shapes), [`structured`] (`response_format` and
//! `structured_outputs` -> a compiled grammar), [`types`] (wire types), [`schemas`]
//! (hand-written OpenAPI schemas for the loosely typed fields).

pub mod chat;
pub mod completions;
pub mod extract;
pub mod fields;
pub mod generate;
pub mod health;
pub mod logprobs;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod reasoning;
pub mod schemas;
pub mod slo;
pub mod structured;
pub mod text;
pub mod tokenize;
pub mod tools;
pub mod types;
pub mod version;

use crate::ServerOptions;
use crate::auth::{ApiKey, require_api_key};
use crate::error::ApiError;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use extract::BodyLimit;
use metrum_engine::handle::{EngineHandle, ModelInfo};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// What every handler can reach. Cheap to clone (handles and `Arc`s only).
#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    /// One permit per sequence the server holds; see `ServerOptions::max_in_flight`.
    pub admission: Arc<Semaphore>,
    pub max_in_flight: usize,
    pub engine_config: Arc<serde_json::Value>,
    /// Abuse limits checked before tokenization.
    pub limits: crate::limits::RequestLimits,
    /// `/openapi.json` once the model is loaded (it names the model).
    pub openapi: Arc<std::sync::OnceLock<String>>,
    /// Structured outputs: the model's grammar compiler, built on first use.
    pub grammars: structured::CompilerSlot,
    /// `--tool-call-parser`; `None` = the format the chat template shows.
    pub tool_format: Option<tools::parsers::ToolFormat>,
    /// `--reasoning-parser`; `None` = replies are never split.
    pub reasoning_parser: Option<reasoning::ReasoningParser>,
    /// `/metrics` adds the vLLM-named aliases (`ServerOptions::vllm_metric_aliases`).
    pub vllm_metric_aliases: bool,
}

impl AppState {
    /// The loaded model's facts, or 503 while it is still loading.
    pub fn model(&self) -> Result<&ModelInfo, ApiError> {
        self.engine.model_info().ok_or_else(|| {
            ApiError::Unavailable("the model is still loading; retry shortly".into())
        })
    }

    /// 404 unless `requested` is absent or names the served model.
    pub fn check_model(&self, requested: Option<&str>) -> Result<&ModelInfo, ApiError> {
        let info = self.model()?;
        match requested {
            Some(name) if name != info.served_model_name => {
                Err(ApiError::ModelNotFound(name.to_string()))
            }
            _ => Ok(info),
        }
    }
}

/// The request id: the client's `x-request-id` when it sent one, else a fresh random one.
/// Response ids (`cmpl-<id>`), logs and 500 messages all use it.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub id: String,
    /// llm-d's per-request SLO headers, checked by the generation routes ([`slo`]).
    pub slo_headers: slo::SloHeaders,
}

/// Builds the router: `/v1` routes behind the optional API key, operational routes open.
pub fn router(engine: EngineHandle, options: &ServerOptions) -> Router {
    let state = AppState {
        engine,
        admission: Arc::new(Semaphore::new(options.max_in_flight)),
        max_in_flight: options.max_in_flight,
        engine_config: Arc::new(options.engine_config.clone()),
        limits: options.limits,
        openapi: Arc::default(),
        grammars: Arc::default(),
        tool_format: options.tool_call_parser,
        reasoning_parser: options.reasoning_parser,
        vllm_metric_aliases: options.vllm_metric_aliases,
    };
    let mut v1 = Router::new()
        .route("/v1/completions", post(completions::create))
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/models", get(models::list));
    if let Some(key) = &options.api_key {
        let key = ApiKey::new(key);
        v1 = v1.route_layer(middleware::from_fn_with_state(key, require_api_key));
    }
    let open = Router::new()
        .route("/health", get(health::health))
        .route("/metrics", get(metrics::render))
        .route("/version", get(version::version))
        .route("/openapi.json", get(openapi::document))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize));
    Router::new()
        .merge(v1)
        .merge(open)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(axum::Extension(BodyLimit(options.max_body_bytes)))
        .layer(middleware::from_fn(catch_panics))
        .layer(middleware::from_fn(assign_request_id))
}

/// Defence in depth: a handler that panics answers 500 (logged with the request id) instead of
/// dropping the connection; other requests are unaffected either way.
async fn catch_panics(request: Request, next: Next) -> Response {
    use futures::FutureExt;
    let id = request
        .extensions()
        .get::<RequestContext>()
        .map_or_else(|| "-".to_string(), |c| c.id.clone());
    match std::panic::AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            ApiError::internal(&id, format!("handler panicked: {what}")).into_response()
        }
    }
}

async fn route_not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_string())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Attaches a [`RequestContext`] and echoes its id in the `x-request-id` response header.
async fn assign_request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let slo_headers = slo::SloHeaders::from_headers(request.headers());
    request.extensions_mut().insert(RequestContext {
        id: id.clone(),
        slo_headers,
    });
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
