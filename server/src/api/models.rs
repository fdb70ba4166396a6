//! `GET /v1/models`: the one served model, under its served name, with its context length.

use super::AppState;
use super::types::{ModelCard, ModelList, unix_now};
use crate::error::{ApiError, ErrorBody};
use axum::Json;
use axum::extract::State;

#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "generation",
    responses(
        (status = 200, description = "The served model", body = ModelList),
        (status = 401, description = "Missing or wrong API key (only with --api-key)", body = ErrorBody),
        (status = 503, description = "The model is still loading", body = ErrorBody),
    ),
    security((), ("api_key" = [])),
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let info = state.model()?;
    Ok(Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: info.served_model_name.clone(),
            object: "model",
            created: unix_now(),
            owned_by: "metrum",
            root: info.source.clone(),
            max_model_len: info.max_model_len,
        }],
    }))
}
