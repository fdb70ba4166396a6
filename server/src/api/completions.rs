//! `POST /v1/completions`: text (or token-id) prompts in, completions out, streamed or not.

use super::extract::SampledJson;
use super::generate::{self, ChunkWriter};
use super::types::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, Prompt, Usage,
    unix_now,
};
use super::{AppState, RequestContext, logprobs, structured, text};
use crate::error::{ApiError, ErrorBody};
use crate::sse;
use crate::validation::{self, ModelLimits};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use metrum_core::FinishReason;
use metrum_engine::TextCodec;
use metrum_engine::handle::TokenLogprob;
use std::sync::Arc;
use std::time::Instant;

#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "generation",
    request_body = super::openapi::CompletionBody,
    responses(
        (status = 200, description = "The completion (`stream: false`), or with `stream: true` a `text/event-stream` of `data: <CompletionResponse chunk>` events ending in `data: [DONE]`. In a stream, an error after the headers were sent is one `data: {\"error\": ...}` event followed by `data: [DONE]`",
            content((CompletionResponse = "application/json"), (super::openapi::SseEvent = "text/event-stream"))),
        (status = 400, description = "Malformed JSON, a wrong type, a value out of range, a limit exceeded (prompt bytes, output tokens, stop strings), prompt + max_tokens over the context, a bad chat role, a `chat_template` field", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (only with --api-key)", body = ErrorBody),
        (status = 404, description = "`model` names a model this server does not serve", body = ErrorBody),
        (status = 413, description = "Body over --max-request-body-size", body = ErrorBody),
        (status = 429, description = "Overloaded: too many requests queued; retry after the given seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 500, description = "The engine failed while running the request (logged with the request id)", body = ErrorBody),
        (status = 503, description = "The model is still loading, or the server is shutting down", body = ErrorBody),
    ),
    security((), ("api_key" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    SampledJson(request, sampling): SampledJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let info = state.check_model(request.model.as_deref())?;
    let limits = ModelLimits {
        vocab_size: info.vocab_size,
        max_model_len: info.max_model_len,
    };
    let model = info.served_model_name.clone();
    let plan = validation::plan(&sampling, request.logprobs, limits)?;
    let prompts = request.prompt.into_prompts();
    if prompts.is_empty() {
        return Err(ApiError::param("prompt", "at least one prompt is required"));
    }
    let text_bytes = prompts
        .iter()
        .map(|p| match p {
            Prompt::Text(text) => text.len(),
            Prompt::Tokens(_) => 0,
        })
        .sum();
    state.limits.check_prompt_bytes("prompt", text_bytes)?;
    state.limits.check_output_tokens(
        prompts.len(),
        plan.n,
        plan.requested_max_tokens,
        limits.max_model_len,
    )?;
    let constraint =
        structured::compile(&state, structured::constraint_of(&sampling)?, None).await?;
    let permit = generate::admit(&state, prompts.len() * plan.n)?;
    let codec = text::codec(&state)?;
    let tokenized = text::encode_prompts(codec.clone(), prompts, limits).await?;
    let batch = generate::submit(
        &state, &ctx, tokenized, &plan, limits, arrival, permit, constraint,
    )
    .await?;
    let writer = CompletionChunks {
        id: format!("cmpl-{}", ctx.id),
        created: unix_now(),
        model,
        codec,
        offsets: Vec::new(),
    };
    if plan.stream {
        return Ok(generate::stream(batch, ctx, plan.include_usage, writer));
    }
    let (outputs, usage) = generate::collect(batch, &ctx).await?;
    let several = outputs.len() > 1;
    let metrum = outputs.first().map(|o| o.timing.clone());
    let choices = outputs
        .into_iter()
        .map(|o| {
            let logprobs = plan.params.logprobs.map(|_| {
                logprobs::completion(&o.logprobs, &mut 0, &|t| text::token_text(&writer.codec, t))
            });
            CompletionChoice {
                index: o.choice,
                text: o.text,
                logprobs,
                finish_reason: Some(o.finish.as_str()),
                metrum: several.then_some(o.timing),
            }
        })
        .collect();
    Ok(axum::Json(CompletionResponse {
        id: writer.id,
        object: "text_completion",
        created: writer.created,
        model: writer.model,
        choices,
        usage: Some(usage),
        metrum,
    })
    .into_response())
}

/// Spells stream chunks the completions way.
struct CompletionChunks {
    id: String,
    created: u64,
    model: String,
    codec: Arc<TextCodec>,
    /// Running text offset per choice, for `logprobs.text_offset`.
    offsets: Vec<usize>,
}

impl CompletionChunks {
    fn chunk(
        &self,
        choices: Vec<CompletionChoice>,
        usage: Option<Usage>,
        metrum: Option<serde_json::Value>,
    ) -> Bytes {
        sse::data_event(&CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            metrum,
        })
    }
}

impl ChunkWriter for CompletionChunks {
    fn opening(&mut self, choices: usize) -> Vec<Bytes> {
        self.offsets = vec![0; choices];
        Vec::new()
    }

    fn delta(&mut self, choice: usize, text: String, entries: &[TokenLogprob]) -> Option<Bytes> {
        if text.is_empty() && entries.is_empty() {
            return None;
        }
        let logprobs: Option<CompletionLogprobs> = (!entries.is_empty()).then(|| {
            let codec = self.codec.clone();
            logprobs::completion(entries, &mut self.offsets[choice], &|t| {
                text::token_text(&codec, t)
            })
        });
        let choice = CompletionChoice {
            index: choice,
            text,
            logprobs,
            finish_reason: None,
            metrum: None,
        };
        Some(self.chunk(vec![choice], None, None))
    }

    fn finished(&mut self, choice: usize, reason: FinishReason) -> Bytes {
        let choice = CompletionChoice {
            index: choice,
            text: String::new(),
            logprobs: None,
            finish_reason: Some(reason.as_str()),
            metrum: None,
        };
        self.chunk(vec![choice], None, None)
    }

    fn usage(&mut self, usage: Usage, metrum: Option<serde_json::Value>) -> Bytes {
        self.chunk(Vec::new(), Some(usage), metrum)
    }
}
