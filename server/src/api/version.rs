//! `GET /version`: what is running, enough to reproduce a benchmark: the build, the model, its
//! dtype and device, and every scheduler and engine knob.

use super::AppState;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

#[utoipa::path(
    get,
    path = "/version",
    tag = "operations",
    responses(
        (status = 200, description = "The build, the model, its dtype and device, every engine and scheduler knob", body = Object),
    ),
)]
pub async fn version(State(state): State<AppState>) -> Json<Value> {
    let build = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "git_sha": option_env!("METRUM_GIT_SHA"),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "cuda": cfg!(feature = "cuda"),
    });
    let model = state.engine.model_info().map(|info| {
        json!({
            "served_model_name": info.served_model_name,
            "source": info.source,
            "architecture": info.architecture,
            "dtype": info.dtype,
            "device": info.device,
            "max_model_len": info.max_model_len,
            "vocab_size": info.vocab_size,
            "num_kv_blocks": info.num_kv_blocks,
            "block_size": info.block_size,
        })
    });
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "build": build,
        "status": format!("{:?}", state.engine.status()),
        "model": model,
        "scheduler": state.engine.model_info().map(|i| i.scheduler.clone()),
        "engine_config": *state.engine_config,
        "server": { "max_in_flight": state.max_in_flight },
    }))
}
