//! Wire request fields -> engine [`SamplingParams`], checking every range on the way.
//!
//! Parse, don't validate (TGI's `Valid*` split): after this module nothing handles the raw
//! request. Checks that need the prompt length (context overflow) run in
//! [`resolve_max_tokens`] once the prompt is tokenized.

use crate::api::types::SamplingFields;
use crate::error::ApiError;
use metrum_core::SamplingParams;
use metrum_core::sampling::MAX_LOGPROBS;

/// Most choices one request may ask for; each choice is a separate engine sequence.
pub const MAX_N: usize = 128;

/// Facts about the served model that bound the request fields.
#[derive(Clone, Copy, Debug)]
pub struct ModelLimits {
    pub vocab_size: usize,
    pub max_model_len: usize,
}

/// A request's generation settings, validated; `max_tokens` is still open until the prompt
/// length is known.
#[derive(Clone, Debug)]
pub struct GenerationPlan {
    pub params: SamplingParams,
    /// The client's `max_tokens` / `max_completion_tokens`; `None` = fill the context (vLLM).
    pub requested_max_tokens: Option<usize>,
    pub n: usize,
    pub priority: i32,
    /// `slo_ttft_ms` / `slo_tpot_ms`, range-checked; merged with the headers at submit.
    pub slo_ttft_ms: Option<u64>,
    pub slo_tpot_ms: Option<u64>,
    /// The body's `speculative` (default true).
    pub speculative: bool,
    pub stream: bool,
    pub include_usage: bool,
    pub user: Option<String>,
}

/// Builds the plan. `logprobs` is the number of alternatives per token the endpoint asked for
/// (`None`: no logprobs), already extracted from its endpoint-specific fields.
pub fn plan(
    fields: &SamplingFields,
    logprobs: Option<u64>,
    limits: ModelLimits,
) -> Result<GenerationPlan, ApiError> {
    let defaults = SamplingParams::default();
    let n = fields.n.unwrap_or(1);
    if n == 0 || n > MAX_N as u64 {
        return Err(ApiError::param(
            "n",
            format!("must be in [1, {MAX_N}], got {n}"),
        ));
    }
    let requested_max_tokens = fields.max_completion_tokens.or(fields.max_tokens);
    let param_name = if fields.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    if requested_max_tokens == Some(0) {
        return Err(ApiError::param(param_name, "must be at least 1"));
    }
    let top_k = match fields.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        Some(k) => {
            return Err(ApiError::param(
                "top_k",
                format!("must be -1 (disabled) or at least 1, got {k}"),
            ));
        }
    };
    let logprobs = match logprobs {
        Some(k) if k > MAX_LOGPROBS as u64 => {
            return Err(ApiError::param(
                "logprobs",
                format!("at most {MAX_LOGPROBS} alternatives, got {k}"),
            ));
        }
        other => other.map(|k| k as usize),
    };
    let logit_bias = parse_logit_bias(fields, limits)?;
    let stop_token_ids = fields.stop_token_ids.clone().unwrap_or_default();
    if let Some(bad) = stop_token_ids
        .iter()
        .find(|&&t| t as usize >= limits.vocab_size)
    {
        return Err(ApiError::param(
            "stop_token_ids",
            format!(
                "token id {bad} is outside the vocabulary (size {})",
                limits.vocab_size
            ),
        ));
    }
    let stop = fields
        .stop
        .clone()
        .map(|s| s.into_vec())
        .unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::param("stop", "stop strings must not be empty"));
    }
    crate::limits::check_stops(&stop, &stop_token_ids)?;
    // Every prompt has at least one token, so this can never fit; say so before tokenizing.
    if let Some(m) = requested_max_tokens.filter(|&m| m >= limits.max_model_len as u64) {
        return Err(context_error(limits.max_model_len, 1, Some(m)));
    }
    let min_tokens = fields.min_tokens.unwrap_or(0);
    let params = SamplingParams {
        temperature: fields.temperature.unwrap_or(defaults.temperature),
        top_k,
        top_p: fields.top_p.map_or(defaults.top_p, narrow_positive),
        min_p: fields.min_p.unwrap_or(defaults.min_p),
        repetition_penalty: fields
            .repetition_penalty
            .map_or(defaults.repetition_penalty, narrow_positive),
        presence_penalty: fields.presence_penalty.unwrap_or(defaults.presence_penalty),
        frequency_penalty: fields
            .frequency_penalty
            .unwrap_or(defaults.frequency_penalty),
        logit_bias,
        seed: fields.seed,
        // Placeholder that passes validation; resolve_max_tokens sets the real value.
        max_tokens: requested_max_tokens.map_or(usize::MAX, |m| m as usize),
        min_tokens: usize::try_from(min_tokens).unwrap_or(usize::MAX),
        stop_token_ids,
        stop,
        ignore_eos: fields.ignore_eos.unwrap_or(false),
        logprobs,
    };
    params.validate().map_err(|e| {
        // Core names the field; keep the client's spelling for max_tokens.
        let param = if e.param == "max_tokens" {
            param_name
        } else {
            e.param
        };
        ApiError::param(param, e.message)
    })?;
    Ok(GenerationPlan {
        params,
        requested_max_tokens: requested_max_tokens.map(|m| m as usize),
        n: n as usize,
        priority: fields.priority.unwrap_or(0),
        slo_ttft_ms: crate::api::slo::check_field("slo_ttft_ms", fields.slo_ttft_ms)?,
        slo_tpot_ms: crate::api::slo::check_field("slo_tpot_ms", fields.slo_tpot_ms)?,
        speculative: fields.speculative.unwrap_or(true),
        stream: fields.stream.unwrap_or(false),
        include_usage: fields
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        user: fields.user.clone(),
    })
}

/// f64 -> f32 for a field that must be positive: a positive value too small for f32 becomes the
/// smallest positive f32 instead of an invalid 0, one too large saturates, and zero or a
/// negative value stays what it is (and fails validation).
fn narrow_positive(value: f64) -> f32 {
    let narrowed = value.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32;
    if value > 0.0 && narrowed == 0.0 {
        f32::MIN_POSITIVE
    } else {
        narrowed
    }
}

fn parse_logit_bias(
    fields: &SamplingFields,
    limits: ModelLimits,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(map) = &fields.logit_bias else {
        return Ok(Vec::new());
    };
    map.iter()
        .map(|(key, &bias)| {
            let token: u32 = key.trim().parse().map_err(|_| {
                ApiError::param("logit_bias", format!("key `{key}` is not a token id"))
            })?;
            if token as usize >= limits.vocab_size {
                return Err(ApiError::param(
                    "logit_bias",
                    format!(
                        "token id {token} is outside the vocabulary (size {})",
                        limits.vocab_size
                    ),
                ));
            }
            Ok((token, bias))
        })
        .collect()
}

/// Fixes `max_tokens` for a prompt of `prompt_len` tokens: the client's value when it fits the
/// context, the rest of the context when the client gave none (vLLM), a 400 otherwise.
pub fn resolve_max_tokens(
    plan: &GenerationPlan,
    prompt_len: usize,
    limits: ModelLimits,
) -> Result<SamplingParams, ApiError> {
    if prompt_len == 0 {
        return Err(ApiError::param("prompt", "the prompt must not be empty"));
    }
    let context = limits.max_model_len;
    let mut params = plan.params.clone();
    match plan.requested_max_tokens {
        Some(max_tokens) if prompt_len.saturating_add(max_tokens) > context => {
            Err(context_error(context, prompt_len, Some(max_tokens as u64)))
        }
        Some(max_tokens) => {
            params.max_tokens = max_tokens;
            Ok(params)
        }
        None if prompt_len >= context => Err(context_error(context, prompt_len, None)),
        None => {
            params.max_tokens = context - prompt_len;
            params.min_tokens = params.min_tokens.min(params.max_tokens);
            Ok(params)
        }
    }
}

/// `max_tokens` is the client's number, which can be as large as `u64::MAX`: the total is
/// summed in u128 so that reporting it cannot overflow (the fuzzer found `1 + u64::MAX`).
fn context_error(context: usize, prompt_len: usize, max_tokens: Option<u64>) -> ApiError {
    let message = match max_tokens {
        Some(m) => format!(
            "This model's maximum context length is {context} tokens. However, you requested \
             {} tokens ({prompt_len} in the prompt, {m} in the completion). Please reduce the \
             length of the prompt or completion.",
            prompt_len as u128 + u128::from(m)
        ),
        None => format!(
            "This model's maximum context length is {context} tokens. However, the prompt has \
             {prompt_len} tokens, which leaves no room for a completion."
        ),
    };
    ApiError::BadRequest {
        message,
        param: Some("max_tokens".into()),
        code: Some("context_length_exceeded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::extract::parse_json;

    const LIMITS: ModelLimits = ModelLimits {
        vocab_size: 100,
        max_model_len: 64,
    };

    fn fields(json: &str) -> SamplingFields {
        parse_json(json.as_bytes()).unwrap()
    }

    fn param_of(r: Result<GenerationPlan, ApiError>) -> String {
        match r {
            Err(ApiError::BadRequest { param, .. }) => param.unwrap_or_default(),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn fields_map_onto_sampling_params() {
        let f = fields(
            r#"{"max_tokens": 7, "temperature": 0.5, "top_k": 5, "top_p": 0.9, "min_p": 0.1,
                "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1,
                "logit_bias": {"3": 2.0}, "seed": 9, "stop": ["a", "b"], "stop_token_ids": [4],
                "ignore_eos": true, "n": 2, "priority": -1, "stream": true,
                "stream_options": {"include_usage": true}}"#,
        );
        let plan = plan(&f, Some(2), LIMITS).unwrap();
        let p = &plan.params;
        assert_eq!(
            (p.temperature, p.top_k, p.top_p, p.min_p),
            (0.5, 5, 0.9, 0.1)
        );
        assert_eq!(p.logit_bias, vec![(3, 2.0)]);
        assert_eq!((p.seed, p.ignore_eos, p.logprobs), (Some(9), true, Some(2)));
        assert_eq!(p.stop, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(p.stop_token_ids, vec![4]);
        assert_eq!(
            (plan.n, plan.priority, plan.stream, plan.include_usage),
            (2, -1, true, true)
        );
        assert_eq!(plan.requested_max_tokens, Some(7));
    }

    #[test]
    fn max_completion_tokens_wins_and_top_k_minus_one_disables() {
        let f = fields(r#"{"max_tokens": 7, "max_completion_tokens": 3, "top_k": -1}"#);
        let plan = plan(&f, None, LIMITS).unwrap();
        assert_eq!(plan.requested_max_tokens, Some(3));
        assert_eq!(plan.params.top_k, 0);
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let cases = [
            (r#"{"n": 0}"#, "n"),
            (r#"{"max_tokens": 0}"#, "max_tokens"),
            (r#"{"max_completion_tokens": 0}"#, "max_completion_tokens"),
            (r#"{"temperature": -1}"#, "temperature"),
            (r#"{"top_p": 1.5}"#, "top_p"),
            (r#"{"top_k": -2}"#, "top_k"),
            (r#"{"min_p": 2}"#, "min_p"),
            (r#"{"presence_penalty": 3}"#, "presence_penalty"),
            (r#"{"frequency_penalty": -3}"#, "frequency_penalty"),
            (r#"{"repetition_penalty": 0}"#, "repetition_penalty"),
            (r#"{"logit_bias": {"x": 1}}"#, "logit_bias"),
            (r#"{"logit_bias": {"100": 1}}"#, "logit_bias"),
            (r#"{"logit_bias": {"1": 500}}"#, "logit_bias"),
            (r#"{"stop_token_ids": [100]}"#, "stop_token_ids"),
            (r#"{"stop": ""}"#, "stop"),
            (r#"{"max_tokens": 2, "min_tokens": 3}"#, "min_tokens"),
            (r#"{"max_tokens": 64}"#, "max_tokens"),
        ];
        for (json, param) in cases {
            assert_eq!(param_of(plan(&fields(json), None, LIMITS)), param, "{json}");
        }
        assert_eq!(param_of(plan(&fields("{}"), Some(21), LIMITS)), "logprobs");
    }

    #[test]
    fn tiny_and_huge_positive_values_stay_valid() {
        let p = plan(
            &fields(r#"{"top_p": 1e-300, "repetition_penalty": 1e300}"#),
            None,
            LIMITS,
        )
        .unwrap();
        assert_eq!(p.params.top_p, f32::MIN_POSITIVE);
        assert_eq!(p.params.repetition_penalty, f32::MAX);
        assert_eq!(
            param_of(plan(&fields(r#"{"top_p": 0}"#), None, LIMITS)),
            "top_p"
        );
    }

    #[test]
    fn stop_lists_are_bounded_in_the_plan() {
        let ids = serde_json::json!({ "stop_token_ids": vec![1; 257] }).to_string();
        assert_eq!(
            param_of(plan(&fields(&ids), None, LIMITS)),
            "stop_token_ids"
        );
        let stops = serde_json::json!({ "stop": vec!["s"; 17] }).to_string();
        assert_eq!(param_of(plan(&fields(&stops), None, LIMITS)), "stop");
        let long = serde_json::json!({ "stop": "x".repeat(257) }).to_string();
        assert_eq!(param_of(plan(&fields(&long), None, LIMITS)), "stop");
    }

    #[test]
    fn max_tokens_resolves_against_the_context() {
        let with = plan(&fields(r#"{"max_tokens": 10}"#), None, LIMITS).unwrap();
        assert_eq!(
            resolve_max_tokens(&with, 54, LIMITS).unwrap().max_tokens,
            10
        );
        let err = resolve_max_tokens(&with, 55, LIMITS).unwrap_err();
        assert!(
            err.to_string().contains("maximum context length is 64"),
            "{err}"
        );
        let open = plan(&fields("{}"), None, LIMITS).unwrap();
        assert_eq!(resolve_max_tokens(&open, 60, LIMITS).unwrap().max_tokens, 4);
        assert!(resolve_max_tokens(&open, 64, LIMITS).is_err());
        assert!(resolve_max_tokens(&open, 0, LIMITS).is_err());
    }

    /// CI's fuzzer: `1 + u64::MAX` in the error message overflowed (a panic with overflow
    /// checks, a wrong total without).
    #[test]
    fn the_largest_max_tokens_is_a_context_error_with_the_exact_total() {
        for field in ["max_tokens", "max_completion_tokens"] {
            let json = format!(r#"{{"{field}": 18446744073709551615}}"#);
            let err = plan(&fields(&json), None, LIMITS).unwrap_err();
            assert_eq!(err.status().as_u16(), 400);
            assert!(
                err.to_string()
                    .contains("you requested 18446744073709551616 tokens"),
                "{err}"
            );
        }
    }
}
