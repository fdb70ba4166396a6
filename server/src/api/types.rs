//! Wire types of the OpenAI-compatible API (requests and responses), as the clients spell them.
//!
//! Requests keep every field optional and loosely typed only where the API itself is loose
//! (`prompt`, `stop`, message `content`); everything else is typed, so a wrong type is a 400 at
//! parse time. A field these types do not declare is a 400 that names it (`fields`): nothing a
//! client asks for is silently ignored. Turning these into engine requests
//! happens in `validation`, never here.
//!
//! Every type also derives `utoipa::ToSchema`: `GET /openapi.json` is generated from these
//! definitions, so the document cannot drift from what the server parses and sends. Bounds
//! stated in a schema are the ones `validation` enforces.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// The sampling and stopping fields shared by `/v1/completions` and `/v1/chat/completions`,
/// read from the same JSON object as the endpoint's own fields (see `extract::SampledJson`).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct SamplingFields {
    /// Most tokens to generate per choice; unset = the rest of the context (vLLM). The prompt
    /// plus this must fit `max_model_len`.
    #[schema(minimum = 1)]
    pub max_tokens: Option<u64>,
    /// The newer OpenAI name for `max_tokens`; wins when both are given.
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u64>,
    /// Fewest tokens to generate before EOS or a stop string may end a choice.
    #[schema(maximum = 9007199254740991_u64)]
    pub min_tokens: Option<u64>,
    #[schema(minimum = 0, maximum = 100)]
    pub temperature: Option<f32>,
    /// Read as f64 so a tiny positive value does not round to an invalid 0 (see `validation`).
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// vLLM convention: `-1` or `0` disables top-k.
    #[schema(minimum = -1, maximum = 9007199254740991_i64)]
    pub top_k: Option<i64>,
    #[schema(minimum = 0, maximum = 1)]
    pub min_p: Option<f32>,
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f32>,
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f32>,
    /// Read as f64 like `top_p`.
    #[schema(exclusive_minimum = 0)]
    pub repetition_penalty: Option<f64>,
    /// Token id (as a decimal string, OpenAI's format) to an additive bias in [-100, 100].
    #[schema(schema_with = super::schemas::logit_bias)]
    pub logit_bias: Option<BTreeMap<String, f32>>,
    #[schema(maximum = 9007199254740991_u64)]
    pub seed: Option<u64>,
    #[schema(schema_with = super::schemas::stop)]
    pub stop: Option<StopSpec>,
    /// Token ids that end a choice (at most 256).
    #[schema(value_type = Option<Vec<super::schemas::TokenId>>, max_items = 256)]
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    /// Choices per prompt (at most 128).
    #[schema(minimum = 1, maximum = 128)]
    pub n: Option<u64>,
    /// Metrum's extension: `false` serves this request without speculative decoding when the
    /// server runs with `--speculative-config` (default true; no effect otherwise).
    pub speculative: Option<bool>,
    /// Lower is more important (vLLM); only the priority policy reads it.
    #[schema(minimum = -2147483648_i64, maximum = 2147483647_i64)]
    pub priority: Option<i32>,
    /// Metrum extension: this request's time-to-first-token deadline in ms (llm-d's
    /// `x-llm-d-slo-ttft-ms` header says the same; this field wins). Feeds the deadline
    /// policies, admission control and the deadline metrics.
    #[schema(minimum = 1, maximum = 3600000)]
    pub slo_ttft_ms: Option<u64>,
    /// Metrum extension: this request's per-output-token deadline in ms (`x-llm-d-slo-tpot-ms`).
    #[schema(minimum = 1, maximum = 3600000)]
    pub slo_tpot_ms: Option<u64>,
    /// Carried into logs only.
    pub user: Option<String>,
    /// `true`: the answer is a `text/event-stream` of chunks ending in `data: [DONE]`.
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// OpenAI's output format: `text`, `json_object`, or `json_schema` (enforced by a grammar;
    /// see docs/structured-outputs.md). Accepted on completions too, as vLLM does.
    pub response_format: Option<ResponseFormat>,
    /// vLLM's constraint extension: exactly one of `json`, `regex`, `choice`, `grammar`,
    /// `json_object`. At most one constraint per request across both fields.
    pub structured_outputs: Option<StructuredOutputs>,
}

/// `response_format`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    /// Free text (the default; no constraint).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching `json_schema.schema`.
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// `response_format.json_schema`. `strict` is accepted either way: the schema is always
/// enforced in full, or refused with a 400 when it cannot be.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    pub name: String,
    /// The JSON Schema; absent = any JSON value (OpenAI's default).
    #[schema(value_type = Option<Object>)]
    pub schema: Option<serde_json::Value>,
    pub strict: Option<bool>,
}

/// vLLM's `structured_outputs`. Exactly one field may be set (`json_object: false` counts as
/// unset).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StructuredOutputs {
    /// A JSON Schema, as an object or as JSON text.
    #[schema(value_type = Option<Object>)]
    pub json: Option<serde_json::Value>,
    /// A regular expression the whole output must match.
    pub regex: Option<String>,
    /// The output is exactly one of these strings.
    #[schema(min_items = 1)]
    pub choice: Option<Vec<String>>,
    /// A Lark grammar (llguidance's dialect).
    pub grammar: Option<String>,
    /// `true`: any JSON object.
    pub json_object: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and empty `choices`) before `[DONE]`.
    pub include_usage: Option<bool>,
}

/// `stop`: one string or a list of strings (schema: `schemas::stop`).
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

/// `prompt`: text or token ids, one prompt or a batch of them (schema: `schemas::prompt`).
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

/// The endpoint's own fields of `POST /v1/completions` (the body also carries [`SamplingFields`]).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// The served model name; omitted = the served model.
    pub model: Option<String>,
    #[schema(schema_with = super::schemas::prompt)]
    pub prompt: PromptInput,
    /// Number of top alternatives per token (OpenAI completions: an integer, at most 20).
    #[schema(maximum = 20)]
    pub logprobs: Option<u64>,
}

/// The endpoint's own fields of `POST /v1/chat/completions` (the body also carries
/// [`SamplingFields`]).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// The served model name; omitted = the served model.
    pub model: Option<String>,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    pub logprobs: Option<bool>,
    /// Alternatives per token; needs `logprobs: true`.
    #[schema(maximum = 20)]
    pub top_logprobs: Option<u64>,
    /// vLLM extension: `false` renders the template without opening an assistant turn.
    pub add_generation_prompt: Option<bool>,
    /// Refused (400): chats are rendered only with the model's own template (vLLM accepts a
    /// template here; a shared server must not run templates its clients send).
    #[schema(ignore)]
    pub chat_template: Option<serde_json::Value>,
    /// Functions the model may call; the chat template receives them as `tools`.
    pub tools: Option<Vec<Tool>>,
    /// `none`, `auto` (the default with tools), `required`, or
    /// `{"type": "function", "function": {"name": ...}}`. `required` and named choices are
    /// enforced by a grammar over the model's tool-call syntax.
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<serde_json::Value>,
    /// `false`: at most one call per reply (enforced under `required` / named choices).
    pub parallel_tool_calls: Option<bool>,
}

/// One tool: `{"type": "function", "function": {...}}`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionDef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The arguments' JSON Schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// Accepted either way: under `required` / named choices the parameters' schema is always
    /// enforced; under `auto` calls are parsed, not constrained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ChatMessage {
    #[schema(value_type = ChatRole)]
    pub role: String,
    /// `null` is allowed (assistant turns that only called tools).
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    /// An assistant turn's tool calls (history).
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// A `tool` turn: the call it answers.
    pub tool_call_id: Option<String>,
}

/// A tool call in the history, as OpenAI returned it (`arguments` is JSON text).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCallIn {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

/// A function call: its name and its arguments as JSON text.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// A tool call in a reply.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ToolCallOut {
    pub id: String,
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "function")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

/// A streamed tool call fragment: `index` always; `id`, `type` and `function.name` only in a
/// call's first fragment; then `function.arguments` fragments (openai-python concatenates
/// repeated strings, so nothing is ever sent twice).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub kind: Option<&'static str>,
    pub function: FunctionCallDelta,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FunctionCallDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// The roles a chat template may see. `developer` is OpenAI's newer name for `system`.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // documents `ChatMessage::role`, which is parsed as a string and checked
pub enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

/// Message content: a string, or OpenAI's list of typed parts (only text parts are served).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged, expecting = "a string or an array of content parts")]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One content part; only `{"type": "text", "text": ...}` is served (400 otherwise).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// `POST /tokenize`: exactly one of `prompt` or `messages`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    #[schema(min_items = 1)]
    pub messages: Option<Vec<ChatMessage>>,
    pub add_generation_prompt: Option<bool>,
    pub add_special_tokens: Option<bool>,
    /// Refused (400), as on the chat endpoint.
    #[schema(ignore)]
    pub chat_template: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    #[schema(value_type = Vec<super::schemas::TokenId>)]
    pub tokens: Vec<u32>,
}

// ---------------------------------------------------------------- responses

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// Completions-style logprobs (parallel arrays). A logprob of minus infinity (a token that
/// could not be sampled) is `null`: JSON has no infinity.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    #[schema(value_type = Vec<Option<f32>>)]
    pub token_logprobs: Vec<f32>,
    #[schema(value_type = Vec<BTreeMap<String, Option<f32>>>)]
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

/// Chat-style logprobs: one entry per generated token.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    /// `null` for minus infinity.
    #[schema(value_type = Option<f32>)]
    pub logprob: f32,
    pub bytes: Vec<u8>,
    #[serde(default)]
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatTopLogprob {
    pub token: String,
    /// `null` for minus infinity.
    #[schema(value_type = Option<f32>)]
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// Why a choice ended: `stop` (EOS, a stop string or id, a finished grammar), `length`
/// (`max_tokens` or the context), `tool_calls` (chat: the reply is tool calls), `abort`
/// (cancelled), `error` (the engine failed).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // documents the `finish_reason` strings, which come from `FinishReason`
pub enum FinishReasonName {
    Stop,
    Length,
    /// The reply is tool calls (`message.tool_calls`).
    #[schema(rename = "tool_calls")]
    ToolCalls,
    Abort,
    Error,
}

/// The per-request timing report (Metrum extension): TTFT, E2E, per-token times, fluidity.
#[derive(ToSchema)]
#[schema(value_type = Object)]
#[allow(dead_code)] // documents `metrum`, which is `metrum_metrics::RequestTimingReport` as JSON
pub struct TimingReport(serde_json::Value);

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    #[schema(value_type = Option<FinishReasonName>)]
    pub finish_reason: Option<&'static str>,
    /// This choice's own timing, only when there are several choices (the top-level `metrum`
    /// is always choice 0's).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<TimingReport>)]
    pub metrum: Option<serde_json::Value>,
}

/// A completion, or (streaming) one chunk of it: `object` is `text_completion` either way.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    #[schema(value_type = String, example = "text_completion")]
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Option<Usage>,
    /// The engine's per-request timing report (Metrum extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<TimingReport>)]
    pub metrum: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatMessageOut {
    #[schema(value_type = String, example = "assistant")]
    pub role: &'static str,
    /// `null` when the reply is only tool calls, or only reasoning.
    pub content: Option<String>,
    /// With `--reasoning-parser`: the reply's reasoning block (absent when it had none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessageOut,
    pub logprobs: Option<ChatLogprobs>,
    #[schema(value_type = Option<FinishReasonName>)]
    pub finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<TimingReport>)]
    pub metrum: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatResponse {
    pub id: String,
    #[schema(value_type = String, example = "chat.completion")]
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<TimingReport>)]
    pub metrum: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// With `--reasoning-parser`: the next piece of the reasoning block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    #[schema(value_type = Option<FinishReasonName>)]
    pub finish_reason: Option<&'static str>,
}

/// One streamed chat chunk (`object: "chat.completion.chunk"`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatChunk {
    pub id: String,
    #[schema(value_type = String, example = "chat.completion.chunk")]
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<TimingReport>)]
    pub metrum: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    #[schema(value_type = String, example = "model")]
    pub object: &'static str,
    pub created: u64,
    #[schema(value_type = String, example = "metrum")]
    pub owned_by: &'static str,
    pub root: String,
    pub max_model_len: usize,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModelList {
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

/// `GET /health`: `ready` (200), or `loading`, `draining`, `failed: <cause>` (503).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: String,
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
