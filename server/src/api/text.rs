//! Tokenizer work for the handlers. Encoding and chat-template rendering cost real CPU time on
//! long prompts, so they run on tokio's blocking pool and never stall the async workers that
//! relay other requests' tokens.

use super::AppState;
use super::types::Prompt;
use crate::error::ApiError;
use crate::validation::ModelLimits;
use metrum_engine::TextCodec;
use metrum_engine::chat_template::ChatMessage;
use std::sync::Arc;

/// One chat turn, validated, ready for the template.
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    pub role: String,
    pub content: String,
    /// The message's `name` (OpenAI: a participant's name), handed to the template.
    pub name: Option<String>,
    /// An assistant turn's calls, shaped for templates (`tools::history`).
    pub tool_calls: Option<serde_json::Value>,
    pub tool_call_id: Option<String>,
}

/// The tokenizer and chat template, or 503 while the model loads.
pub fn codec(state: &AppState) -> Result<Arc<TextCodec>, ApiError> {
    state
        .engine
        .text()
        .ok_or_else(|| ApiError::Unavailable("the model is still loading; retry shortly".into()))
}

/// Runs `work` on the blocking pool.
async fn blocking<T, F>(work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal("-", format!("tokenizer task failed: {e}")))?
}

/// Tokenizes each prompt (text prompts get the tokenizer's special tokens, as vLLM does) and
/// checks token-id prompts against the vocabulary.
pub async fn encode_prompts(
    codec: Arc<TextCodec>,
    prompts: Vec<Prompt>,
    limits: ModelLimits,
) -> Result<Vec<Vec<u32>>, ApiError> {
    blocking(move || {
        prompts
            .into_iter()
            .map(|prompt| match prompt {
                Prompt::Text(text) => encode_text(&codec, &text, true),
                Prompt::Tokens(ids) => {
                    if let Some(bad) = ids.iter().find(|&&t| t as usize >= limits.vocab_size) {
                        return Err(ApiError::param(
                            "prompt",
                            format!(
                                "token id {bad} is outside the vocabulary (size {})",
                                limits.vocab_size
                            ),
                        ));
                    }
                    Ok(ids)
                }
            })
            .collect()
    })
    .await
}

/// Tokenizes one text.
pub async fn encode(
    codec: Arc<TextCodec>,
    text: String,
    add_special_tokens: bool,
) -> Result<Vec<u32>, ApiError> {
    blocking(move || encode_text(&codec, &text, add_special_tokens)).await
}

fn encode_text(
    codec: &TextCodec,
    text: &str,
    add_special_tokens: bool,
) -> Result<Vec<u32>, ApiError> {
    codec
        .tokenizer
        .encode(text, add_special_tokens)
        .map_err(|e| ApiError::param("prompt", format!("cannot tokenize the prompt: {e}")))
}

/// Renders the chat template and tokenizes the result. The template already spells out every
/// special token, so none are added on top (vLLM does the same for chat).
pub async fn encode_chat(
    codec: Arc<TextCodec>,
    turns: Vec<Turn>,
    add_generation_prompt: bool,
    tools: Option<serde_json::Value>,
) -> Result<(Vec<u32>, String), ApiError> {
    blocking(move || {
        let messages: Vec<ChatMessage> = turns
            .into_iter()
            .map(|t| ChatMessage {
                name: t.name,
                tool_calls: t.tool_calls,
                tool_call_id: t.tool_call_id,
                ..ChatMessage::new(t.role, t.content)
            })
            .collect();
        let template = codec.chat_template.as_ref().ok_or_else(|| {
            ApiError::param(
                "messages",
                "cannot apply the chat template: this model has no chat template; use \
                 /v1/completions",
            )
        })?;
        let rendered = template
            .render_with_tools(&messages, add_generation_prompt, tools.as_ref())
            .map_err(|e| {
                ApiError::param("messages", format!("cannot apply the chat template: {e}"))
            })?;
        Ok((encode_text(&codec, &rendered, false)?, rendered))
    })
    .await
}

/// Detokenizes `tokens`, rejecting ids outside the vocabulary.
pub async fn decode(
    codec: Arc<TextCodec>,
    tokens: Vec<u32>,
    limits: ModelLimits,
) -> Result<String, ApiError> {
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= limits.vocab_size) {
        return Err(ApiError::param(
            "tokens",
            format!(
                "token id {bad} is outside the vocabulary (size {})",
                limits.vocab_size
            ),
        ));
    }
    blocking(move || {
        codec
            .tokenizer
            .decode(&tokens, false)
            .map_err(|e| ApiError::param("tokens", format!("cannot detokenize: {e}")))
    })
    .await
}

/// The text of one token for logprobs (a vocabulary lookup; cheap enough to run inline).
/// Special tokens are spelled out; a token holding part of a character decodes lossily.
pub fn token_text(codec: &TextCodec, token: u32) -> String {
    codec.tokenizer.decode(&[token], false).unwrap_or_default()
}
