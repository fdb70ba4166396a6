//! `GET /metrics`: the engine's Prometheus registry in the text exposition format, plus the
//! vLLM-named aliases routers read unless `--no-vllm-metrics`.

use super::{AppState, RequestContext};
use crate::error::{ApiError, ErrorBody};
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use metrum_metrics::prometheus::CacheConfigInfo;

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Every `metrum_*` metric in the Prometheus text format", body = String, content_type = "text/plain"),
        (status = 500, description = "The registry could not be rendered", body = ErrorBody),
    ),
)]
pub async fn render(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
) -> Result<Response, ApiError> {
    // The cache's shape is known once the model is loaded.
    let cache = state.engine.model_info().map(|info| CacheConfigInfo {
        block_size: info.block_size,
        num_gpu_blocks: info.num_kv_blocks,
    });
    let text = state
        .engine
        .metrics()
        .render_for_routers(cache, state.vllm_metric_aliases)
        .map_err(|e| ApiError::internal(&ctx.id, format!("cannot render metrics: {e}")))?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}
