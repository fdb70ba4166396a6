//! Abuse limits of a shared server, all checked before any tokenizer or engine work, so one
//! request cannot buy minutes of CPU or a whole KV cache with a few kilobytes of JSON.
//!
//! | limit | default | flag |
//! | --- | --- | --- |
//! | text a request asks to tokenize (prompts, chat contents) | 1 MiB | `--max-prompt-bytes` |
//! | tokens a request may ask to generate: prompts × n × max_tokens | 262144 | `--max-output-tokens-per-request` |
//! | stop strings per request | 16 | fixed |
//! | bytes per stop string | 256 | fixed |
//! | stop token ids per request | 256 | fixed |
//! | bytes of a constraint (JSON schema, regex, choices, grammar) | 64 KiB | fixed |
//!
//! An unset `max_tokens` means "the rest of the context", so before tokenization it counts as
//! the whole context length. Stop strings are bounded because every generated token is checked
//! against each of them and the detokenizer holds back up to the longest one; the fixed bounds
//! are far above what any client uses (OpenAI allows 4 stop strings).

use crate::error::ApiError;

pub const MAX_STOP_STRINGS: usize = 16;
pub const MAX_STOP_STRING_BYTES: usize = 256;
pub const MAX_STOP_TOKEN_IDS: usize = 256;
/// Structured outputs: a constraint's payload in bytes. Compile time and grammar size grow
/// with it; real schemas (openai-python's `parse()` of a sizeable Pydantic model) are a few KiB.
pub const MAX_CONSTRAINT_BYTES: usize = 64 << 10;

/// The configurable limits (`ServerOptions::limits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// `--max-prompt-bytes`: text bytes one request may ask to tokenize, summed over its
    /// prompts or chat messages.
    pub max_prompt_bytes: usize,
    /// `--max-output-tokens-per-request`: prompts × n × max_tokens.
    pub max_output_tokens: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_prompt_bytes: 1 << 20,
            max_output_tokens: 1 << 18,
        }
    }
}

impl RequestLimits {
    /// 400 when `bytes` of prompt text (field `param`) exceed `--max-prompt-bytes`.
    pub fn check_prompt_bytes(&self, param: &str, bytes: usize) -> Result<(), ApiError> {
        if bytes > self.max_prompt_bytes {
            return Err(ApiError::BadRequest {
                message: format!(
                    "`{param}`: the prompt text is {bytes} bytes; this server accepts at most {} \
                     bytes per request (--max-prompt-bytes)",
                    self.max_prompt_bytes
                ),
                param: Some(param.to_string()),
                code: Some("prompt_too_large"),
            });
        }
        Ok(())
    }

    /// 400 when `prompts × n × max_tokens` exceeds `--max-output-tokens-per-request`; an unset
    /// `max_tokens` counts as `max_model_len`.
    pub fn check_output_tokens(
        &self,
        prompts: usize,
        n: usize,
        max_tokens: Option<usize>,
        max_model_len: usize,
    ) -> Result<(), ApiError> {
        let per_choice = max_tokens.unwrap_or(max_model_len);
        let total = prompts.saturating_mul(n).saturating_mul(per_choice);
        if total > self.max_output_tokens {
            let spelled = match max_tokens {
                Some(m) => format!("max_tokens {m}"),
                None => format!("max_tokens unset, so up to the context length {max_model_len}"),
            };
            return Err(ApiError::BadRequest {
                message: format!(
                    "`max_tokens`: {prompts} prompt(s) × n {n} × {spelled} asks for {total} \
                     tokens; this server generates at most {} tokens per request \
                     (--max-output-tokens-per-request). Lower max_tokens or n, or split the \
                     request",
                    self.max_output_tokens
                ),
                param: Some("max_tokens".into()),
                code: Some("too_many_output_tokens"),
            });
        }
        Ok(())
    }
}

/// 400 unless the stop strings and stop token ids are within the fixed bounds.
pub fn check_stops(stop: &[String], stop_token_ids: &[u32]) -> Result<(), ApiError> {
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::param(
            "stop",
            format!(
                "at most {MAX_STOP_STRINGS} stop strings, got {}",
                stop.len()
            ),
        ));
    }
    if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_STRING_BYTES) {
        return Err(ApiError::param(
            "stop",
            format!(
                "a stop string may be at most {MAX_STOP_STRING_BYTES} bytes, got one of {}",
                long.len()
            ),
        ));
    }
    if stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(ApiError::param(
            "stop_token_ids",
            format!(
                "at most {MAX_STOP_TOKEN_IDS} stop token ids, got {}",
                stop_token_ids.len()
            ),
        ));
    }
    Ok(())
}

/// 400 for a request that brings its own chat template: chats are rendered only with the
/// model's template. vLLM accepts `chat_template` in requests; a shared server must not run
/// template code its clients send (it is Jinja: loops, string building, fuel to burn).
pub fn refuse_chat_template(present: bool) -> Result<(), ApiError> {
    if present {
        return Err(ApiError::param(
            "chat_template",
            "this server renders chats only with the model's own chat template; a request \
             cannot supply one (remove the field)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_and_message(err: ApiError) -> (String, String) {
        match err {
            ApiError::BadRequest { param, message, .. } => (param.unwrap_or_default(), message),
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn prompt_bytes_are_bounded_and_the_message_names_the_flag() {
        let limits = RequestLimits {
            max_prompt_bytes: 10,
            ..RequestLimits::default()
        };
        assert!(limits.check_prompt_bytes("prompt", 10).is_ok());
        let (param, message) =
            param_and_message(limits.check_prompt_bytes("prompt", 11).unwrap_err());
        assert_eq!(param, "prompt");
        assert!(message.contains("--max-prompt-bytes"), "{message}");
    }

    #[test]
    fn output_tokens_multiply_prompts_n_and_max_tokens() {
        let limits = RequestLimits {
            max_output_tokens: 1000,
            ..RequestLimits::default()
        };
        assert!(limits.check_output_tokens(2, 5, Some(100), 64).is_ok());
        let (_, message) =
            param_and_message(limits.check_output_tokens(2, 5, Some(101), 64).unwrap_err());
        assert!(message.contains("1010") && message.contains("--max-output-tokens-per-request"));
        // Unset max_tokens counts as the whole context.
        assert!(limits.check_output_tokens(1, 1, None, 1000).is_ok());
        assert!(limits.check_output_tokens(1, 2, None, 1000).is_err());
        assert!(
            limits
                .check_output_tokens(usize::MAX, usize::MAX, None, 9)
                .is_err()
        );
    }

    #[test]
    fn stops_are_bounded_in_count_and_length() {
        let many: Vec<String> = (0..=MAX_STOP_STRINGS).map(|i| i.to_string()).collect();
        assert!(check_stops(&many[..MAX_STOP_STRINGS], &[]).is_ok());
        assert_eq!(
            param_and_message(check_stops(&many, &[]).unwrap_err()).0,
            "stop"
        );
        let long = vec!["x".repeat(MAX_STOP_STRING_BYTES + 1)];
        assert_eq!(
            param_and_message(check_stops(&long, &[]).unwrap_err()).0,
            "stop"
        );
        let ids = vec![1u32; MAX_STOP_TOKEN_IDS + 1];
        let (param, _) = param_and_message(check_stops(&[], &ids).unwrap_err());
        assert_eq!(param, "stop_token_ids");
    }

    #[test]
    fn a_chat_template_in_a_request_is_refused() {
        assert!(refuse_chat_template(false).is_ok());
        let (param, _) = param_and_message(refuse_chat_template(true).unwrap_err());
        assert_eq!(param, "chat_template");
    }
}
