//! Request JSON parsing and validation: the bytes of a `POST /v1/completions` or
//! `/v1/chat/completions` body through every step the handlers take before the engine
//! (`extract::parse_json` → the endpoint's type and `SamplingFields` → `validation::plan` →
//! `resolve_max_tokens` per prompt, `chat::validate_messages` for chats).
//!
//! Oracles: nothing panics; every rejection is a 4xx whose OpenAI error body serializes; a
//! plan that passes holds valid sampling parameters; a resolved request fits the context.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metrum_server::api::chat::{conversation_bytes, validate_messages};
use metrum_server::api::extract::{parse_json, parse_value};
use metrum_server::api::fields::{check_body, serde_fields};
use metrum_server::api::structured::constraint_of;
use metrum_server::api::types::{ChatRequest, CompletionRequest, Prompt, SamplingFields};
use metrum_server::error::ApiError;
use metrum_server::validation::{self, GenerationPlan, MAX_N, ModelLimits};
use serde_json::Value;

/// The default model's shape (SmolLM2-135M: 49152 tokens) with a small context, so both
/// sides of every context check are reachable.
const LIMITS: ModelLimits = ModelLimits {
    vocab_size: 49_152,
    max_model_len: 2048,
};

fn rejected(err: ApiError) {
    assert!(
        err.status().is_client_error(),
        "bad input must be a 4xx, got {} for {err}",
        err.status()
    );
    let body = serde_json::to_string(&err.body()).expect("error bodies serialize");
    assert!(body.contains("\"error\""), "{body}");
}

fn check_plan(plan: &GenerationPlan) {
    assert!((1..=MAX_N).contains(&plan.n), "n = {}", plan.n);
    if let Err(e) = plan.params.validate() {
        panic!("an accepted plan holds invalid sampling params: {e:?}");
    }
}

/// A prompt of `len` tokens through `resolve_max_tokens`.
fn resolve(plan: &GenerationPlan, len: usize) {
    match validation::resolve_max_tokens(plan, len, LIMITS) {
        Ok(params) => {
            assert!(len >= 1);
            assert!(
                len + params.max_tokens <= LIMITS.max_model_len,
                "{len} + {} overflows the context",
                params.max_tokens
            );
            assert!(params.min_tokens <= params.max_tokens);
            if let Err(e) = params.validate() {
                panic!("resolved params are invalid: {e:?}");
            }
        }
        Err(e) => rejected(e),
    }
}

fn completions(value: &Value, sampling: &SamplingFields) {
    let request: CompletionRequest = match parse_value(value) {
        Ok(r) => r,
        Err(e) => return rejected(e),
    };
    let plan = match validation::plan(sampling, request.logprobs, LIMITS) {
        Ok(p) => p,
        Err(e) => return rejected(e),
    };
    check_plan(&plan);
    for prompt in request.prompt.into_prompts().into_iter().take(64) {
        let len = match prompt {
            Prompt::Tokens(ids) => ids.len(),
            // Text becomes at most one token per byte.
            Prompt::Text(text) => text.len(),
        };
        resolve(&plan, len);
    }
}

fn chat(value: &Value, sampling: &SamplingFields) {
    let request: ChatRequest = match parse_value(value) {
        Ok(r) => r,
        Err(e) => return rejected(e),
    };
    let turns = match validate_messages(&request.messages) {
        Ok(t) => t,
        Err(e) => return rejected(e),
    };
    assert_eq!(turns.len(), request.messages.len());
    let _ = conversation_bytes(&turns);
    match validation::plan(sampling, request.top_logprobs, LIMITS) {
        Ok(plan) => {
            check_plan(&plan);
            resolve(&plan, 1 + conversation_bytes(&turns) % LIMITS.max_model_len);
        }
        Err(e) => rejected(e),
    }
}

fuzz_target!(|data: &[u8]| {
    let value: Value = match parse_json(data) {
        Ok(v) => v,
        Err(e) => return rejected(e),
    };
    if !value.is_object() {
        return;
    }
    // The field check the extractors run first (a refused field is a 4xx naming it), then
    // the structured-outputs shape check; both must never panic.
    for own in [
        serde_fields::<CompletionRequest>(),
        serde_fields::<ChatRequest>(),
    ] {
        if let Err(e) = check_body(&value, &[own, serde_fields::<SamplingFields>()]) {
            rejected(e);
        }
    }
    let sampling: SamplingFields = match parse_value(&value) {
        Ok(s) => s,
        Err(e) => return rejected(e),
    };
    if let Err(e) = constraint_of(&sampling) {
        rejected(e);
    }
    completions(&value, &sampling);
    chat(&value, &sampling);
});
