//! `POST /v1/completions`: text (or token-id) prompts in, completions out, streamed or not.

use super::extract::SampledJson;
use super::generate::{self, ChunkWriter};
use super::types::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, Usage, unix_now,
};
use super::{AppState, RequestContext, logprobs, text};
use crate::error::ApiError;
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
    let permit = generate::admit(&state, prompts.len() * plan.n)?;
    let codec = text::codec(&state)?;
    let tokenized = text::encode_prompts(codec.clone(), prompts, limits).await?;
    let batch = generate::submit(&state, &ctx, tokenized, &plan, limits, arrival, permit).await?;
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
