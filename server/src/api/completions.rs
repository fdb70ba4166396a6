//! `POST /v1/completions`: text (or token-id) prompts in, completions out, streamed or not.

use super::extract::SampledJson;
use super::generate::{self, ChunkWriter, Prelude};
use super::types::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, Prompt, Usage,
    unix_now,
};
use super::{AppState, RequestContext, logprobs, structured, text};
use crate::error::ApiError;
use crate::sse;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use metrum_core::FinishReason;
use metrum_engine::TextCodec;
use metrum_engine::handle::TokenLogprob;
use std::sync::Arc;

#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "generation",
    request_body = super::openapi::CompletionBody,
    responses(
        (status = 200, description = "The completion (`stream: false`), or with `stream: true` a `text/event-stream` of `data: <CompletionResponse chunk>` events ending in `data: [DONE]`. In a stream, an error after the headers were sent is one `data: {\"error\": ...}` event followed by `data: [DONE]`",
            content((CompletionResponse = "application/json"), (super::openapi::SseEvent = "text/event-stream"))),
        super::openapi::GenerationErrors,
    ),
    security((), ("api_key" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    SampledJson(request, sampling): SampledJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let prelude = Prelude::start(&state, request.model.as_deref())?;
    let plan = prelude.plan(&sampling, request.logprobs)?;
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
    prelude.check_output_tokens(&plan, prompts.len())?;
    let constraint =
        structured::compile(&state, structured::constraint_of(&sampling)?, None).await?;
    let permit = prelude.admit(&plan, prompts.len())?;
    let codec = text::codec(&state)?;
    let tokenized = text::encode_prompts(codec.clone(), prompts, prelude.limits).await?;
    let batch = prelude
        .submit(&ctx, tokenized, &plan, permit, constraint)
        .await?;
    let writer = CompletionChunks {
        id: format!("cmpl-{}", ctx.id),
        created: unix_now(),
        model: prelude.model.clone(),
        codec,
        offsets: Vec::new(),
    };
    let logprobs = plan.params.logprobs.is_some();
    generate::answer(batch, ctx, &plan, writer, |writer, whole| {
        let choices = whole
            .outputs
            .into_iter()
            .map(|o| CompletionChoice {
                index: o.choice,
                logprobs: logprobs.then(|| {
                    logprobs::completion(&o.logprobs, &mut 0, &|t| {
                        text::token_text(&writer.codec, t)
                    })
                }),
                text: o.text,
                finish_reason: Some(o.finish.as_str()),
                metrum: o.timing,
            })
            .collect();
        CompletionResponse {
            id: writer.id,
            object: "text_completion",
            created: writer.created,
            model: writer.model,
            choices,
            usage: Some(whole.usage),
            metrum: whole.metrum,
        }
    })
    .await
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
