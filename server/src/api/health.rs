//! `GET /health`: 200 once the model is loaded and the engine admits requests; 503 while it
//! loads, drains for shutdown, or after it failed (load balancers take the instance out).

use super::AppState;
use super::types::HealthResponse;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use metrum_engine::handle::EngineStatus;

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: the model is loaded and requests are admitted", body = HealthResponse),
        (status = 503, description = "Loading, draining for shutdown, or failed (the body says which)", body = HealthResponse),
    ),
)]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let (status, detail) = match state.engine.status() {
        EngineStatus::Ready => (StatusCode::OK, "ready".to_string()),
        EngineStatus::Loading => (StatusCode::SERVICE_UNAVAILABLE, "loading".to_string()),
        EngineStatus::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining".to_string()),
        EngineStatus::Failed(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {why}")),
    };
    (status, Json(HealthResponse { status: detail }))
}
