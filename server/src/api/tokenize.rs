//! `POST /tokenize` and `POST /detokenize` (vLLM's shapes): a prompt or chat messages to token
//! ids with the count and the context length, and token ids back to text.

use super::chat::validate_messages;
use super::extract::ApiJson;
use super::types::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};
use super::{AppState, text};
use crate::error::ApiError;
use crate::validation::ModelLimits;
use axum::Json;
use axum::extract::State;

pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let max_model_len = state.check_model(request.model.as_deref())?.max_model_len;
    let codec = text::codec(&state)?;
    let tokens = match (request.prompt, request.messages) {
        (Some(prompt), None) => {
            let special = request.add_special_tokens.unwrap_or(true);
            text::encode(codec, prompt, special).await?
        }
        (None, Some(messages)) => {
            let turns = validate_messages(&messages)?;
            let add_generation_prompt = request.add_generation_prompt.unwrap_or(true);
            text::encode_chat(codec, turns, add_generation_prompt).await?
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `prompt` or `messages`",
            ));
        }
    };
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len,
        tokens,
    }))
}

pub async fn detokenize(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let info = state.check_model(request.model.as_deref())?;
    let limits = ModelLimits {
        vocab_size: info.vocab_size,
        max_model_len: info.max_model_len,
    };
    let codec = text::codec(&state)?;
    let prompt = text::decode(codec, request.tokens, limits).await?;
    Ok(Json(DetokenizeResponse { prompt }))
}
