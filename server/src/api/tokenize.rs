//! `POST /tokenize` and `POST /detokenize` (vLLM's shapes): a prompt or chat messages to token
//! ids with the count and the context length, and token ids back to text.

use super::chat::{conversation_bytes, validate_messages};
use super::extract::ApiJson;
use super::types::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};
use super::{AppState, text};
use crate::error::{ApiError, ErrorBody};
use crate::validation::ModelLimits;
use axum::Json;
use axum::extract::State;

/// Token ids of a prompt, or of chat messages rendered with the model's template.
#[utoipa::path(
    post,
    path = "/tokenize",
    tag = "tokens",
    request_body = TokenizeRequest,
    responses(
        (status = 200, description = "The token ids", body = TokenizeResponse),
        (status = 400, description = "Malformed JSON, a wrong type, neither or both of `prompt` and `messages`, a prompt over --max-prompt-bytes, a bad chat role, a `chat_template` field, an id outside the vocabulary", body = ErrorBody),
        (status = 404, description = "`model` names a model this server does not serve", body = ErrorBody),
        (status = 413, description = "Body over --max-request-body-size", body = ErrorBody),
        (status = 503, description = "The model is still loading", body = ErrorBody),
    ),
)]
pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let max_model_len = state.check_model(request.model.as_deref())?.max_model_len;
    crate::limits::refuse_chat_template(request.chat_template.is_some())?;
    let codec = text::codec(&state)?;
    let tokens = match (request.prompt, request.messages) {
        (Some(prompt), None) => {
            state.limits.check_prompt_bytes("prompt", prompt.len())?;
            let special = request.add_special_tokens.unwrap_or(true);
            text::encode(codec, prompt, special).await?
        }
        (None, Some(messages)) => {
            let turns = validate_messages(&messages)?;
            state
                .limits
                .check_prompt_bytes("messages", conversation_bytes(&turns))?;
            let add_generation_prompt = request.add_generation_prompt.unwrap_or(true);
            text::encode_chat(codec, turns, add_generation_prompt, None)
                .await?
                .0
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

/// The text of token ids.
#[utoipa::path(
    post,
    path = "/detokenize",
    tag = "tokens",
    request_body = DetokenizeRequest,
    responses(
        (status = 200, description = "The text", body = DetokenizeResponse),
        (status = 400, description = "Malformed JSON, a wrong type, neither or both of `prompt` and `messages`, a prompt over --max-prompt-bytes, a bad chat role, a `chat_template` field, an id outside the vocabulary", body = ErrorBody),
        (status = 404, description = "`model` names a model this server does not serve", body = ErrorBody),
        (status = 413, description = "Body over --max-request-body-size", body = ErrorBody),
        (status = 503, description = "The model is still loading", body = ErrorBody),
    ),
)]
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
