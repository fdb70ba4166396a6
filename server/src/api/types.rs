//! Wire types of the OpenAI-compatible API (requests and responses), as the clients spell them.
//!
//! Requests keep every field optional and loosely typed only where the API itself is loose
//! (`prompt`, `stop`, message `content`); everything else is typed, so a wrong type is a 400 at
//! parse time. Unknown fields are ignored, as OpenAI does. Turning these into engine requests
//! happens in `validation`, never here.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The sampling and stopping fields shared by `/v1/completions` and `/v1/chat/completions`,
/// read from the same JSON object as the endpoint's own fields (see `extract::SampledJson`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SamplingFields {
    pub max_tokens: Option<u64>,
    /// The newer OpenAI name for `max_tokens`; wins when both are given.
    pub max_completion_tokens: Option<u64>,
    pub min_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// vLLM convention: `-1` or `0` disables top-k.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// Token id (as a decimal string, OpenAI's format) to additive bias.
    pub logit_bias: Option<BTreeMap<String, f32>>,
    pub seed: Option<u64>,
    pub stop: Option<StopSpec>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub n: Option<u64>,
    /// Lower is more important (vLLM); only the priority policy reads it.
    pub priority: Option<i32>,
    /// Carried into logs only.
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// `stop`: one string or a list of strings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}

/// `prompt`: text or token ids, one prompt or a batch of them.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(
    untagged,
    expecting = "a string, an array of strings, an array of token ids or an array of token-id arrays"
)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenBatches(Vec<Vec<u32>>),
}

/// One prompt after flattening a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

impl PromptInput {
    pub fn into_prompts(self) -> Vec<Prompt> {
        match self {
            PromptInput::Text(t) => vec![Prompt::Text(t)],
            PromptInput::Tokens(t) => vec![Prompt::Tokens(t)],
            PromptInput::Texts(v) => v.into_iter().map(Prompt::Text).collect(),
            PromptInput::TokenBatches(v) => v.into_iter().map(Prompt::Tokens).collect(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: PromptInput,
    /// Number of top alternatives per token (OpenAI completions: an integer, at most 20).
    pub logprobs: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    /// vLLM extension: `false` renders the template without opening an assistant turn.
    pub add_generation_prompt: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// `null` is allowed (assistant turns that only called tools).
    pub content: Option<MessageContent>,
    pub name: Option<String>,
}

/// Message content: a string, or OpenAI's list of typed parts (only text parts are served).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of content parts")]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub add_generation_prompt: Option<bool>,
    pub add_special_tokens: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

// ---------------------------------------------------------------- responses

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// Completions-style logprobs (parallel arrays).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

/// Chat-style logprobs: one entry per generated token.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    #[serde(default)]
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
    /// This choice's own timing, only when there are several choices (the top-level `metrum`
    /// is always choice 0's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrum: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Option<Usage>,
    /// The engine's per-request timing report (Metrum extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrum: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChatMessageOut {
    pub role: &'static str,
    pub content: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessageOut,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrum: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChatResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrum: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// One streamed chat chunk (`object: "chat.completion.chunk"`).
#[derive(Clone, Debug, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrum: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub root: String,
    pub max_model_len: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::extract::parse_json;

    #[test]
    fn prompt_accepts_text_tokens_and_batches() {
        let r: CompletionRequest = parse_json(br#"{"prompt": "hi"}"#).unwrap();
        assert_eq!(r.prompt.into_prompts(), vec![Prompt::Text("hi".into())]);
        let r: CompletionRequest = parse_json(br#"{"prompt": [1, 2, 3]}"#).unwrap();
        assert_eq!(r.prompt.into_prompts(), vec![Prompt::Tokens(vec![1, 2, 3])]);
        let r: CompletionRequest = parse_json(br#"{"prompt": ["a", "b"]}"#).unwrap();
        assert_eq!(r.prompt.into_prompts().len(), 2);
        let r: CompletionRequest = parse_json(br#"{"prompt": [[1], [2, 3]]}"#).unwrap();
        assert_eq!(r.prompt.into_prompts()[1], Prompt::Tokens(vec![2, 3]));
    }

    #[test]
    fn sampling_fields_parse_and_wrong_types_fail() {
        let s: SamplingFields = parse_json(
            br#"{"prompt": "x", "max_tokens": 5, "stop": "\n", "temperature": 0, "whatever": {}}"#,
        )
        .unwrap();
        assert_eq!(s.max_tokens, Some(5));
        assert_eq!(s.stop, Some(StopSpec::One("\n".into())));
        assert_eq!(s.temperature, Some(0.0));
        assert!(parse_json::<SamplingFields>(br#"{"max_tokens": "5"}"#).is_err());
        assert!(parse_json::<SamplingFields>(br#"{"n": -1}"#).is_err());
        assert!(parse_json::<SamplingFields>(br#"{"stop": [1]}"#).is_err());
        assert!(parse_json::<CompletionRequest>(br#"{"prompt": 5}"#).is_err());
    }

    #[test]
    fn chat_content_may_be_parts_or_null() {
        let r: ChatRequest = parse_json(
            br#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                               {"role": "assistant", "content": null}]}"#,
        )
        .unwrap();
        assert_eq!(r.messages.len(), 2);
        assert!(r.messages[1].content.is_none());
        assert!(parse_json::<ChatRequest>(br#"{"messages": [{"role": 1}]}"#).is_err());
    }
}
