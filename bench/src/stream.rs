//! What one streamed completion said, folded from its SSE events with their receipt times:
//! pure, so the client's I/O stays in [`crate::client`] and this can be tested and fuzzed.
//!
//! The wire format is OpenAI's `/v1/completions` stream: `data: {chunk}` events whose
//! `choices[0].text` carries new text, a final chunk with `usage` (and, from Metrum, a
//! `metrum` object: the server's [`metrum_metrics::RequestTimingReport`]), then
//! `data: [DONE]`. An `error` object in a chunk (vLLM and llama.cpp send one mid-stream)
//! fails the request.

use crate::sse::SseEvent;
use metrum_core::Nanos;
use serde_json::Value;

/// One content chunk as received.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkReceipt {
    /// Monotonic receipt time (bench clock).
    pub at: Nanos,
    pub text: String,
    /// Cumulative completion tokens when the chunk carried its own `usage`
    /// (vLLM's `continuous_usage_stats`), which is an exact count.
    pub cumulative_tokens: Option<u64>,
}

/// The server's token counts from the final `usage` chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// Everything a stream delivered, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamRecord {
    pub chunks: Vec<ChunkReceipt>,
    pub usage: Option<Usage>,
    /// The `metrum` timing object, verbatim.
    pub server_timing: Option<Value>,
    pub finish_reason: Option<String>,
    /// `[DONE]` arrived: the stream ended the way the protocol says it should.
    pub done: bool,
    /// The first error the stream reported (an `error` object or an unparsable chunk).
    pub error: Option<String>,
    /// The HTTP status of a response that was not a success (the stream never started).
    pub http_status: Option<u16>,
    /// The replica a router in front says it sent the request to
    /// ([`crate::client::ROUTED_WORKER_HEADER`]); `None` when no router said so.
    pub routed_to: Option<String>,
}

impl StreamRecord {
    /// Folds one event received at `at`. Events after `[DONE]` are ignored.
    pub fn apply(&mut self, event: &SseEvent, at: Nanos) {
        if self.done {
            return;
        }
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        let chunk: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                self.fail(format!("unparsable stream chunk ({e}): {}", clip(data)));
                return;
            }
        };
        if let Some(err) = chunk.get("error") {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| err.to_string(), str::to_string);
            self.fail(format!("server error in stream: {message}"));
            return;
        }
        let usage = chunk.get("usage").filter(|u| !u.is_null()).map(|u| Usage {
            prompt_tokens: u.get("prompt_tokens").and_then(Value::as_u64),
            completion_tokens: u.get("completion_tokens").and_then(Value::as_u64),
        });
        let choice = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first());
        if let Some(choice) = choice {
            let text = choice.get("text").and_then(Value::as_str).unwrap_or("");
            if !text.is_empty() {
                self.chunks.push(ChunkReceipt {
                    at,
                    text: text.to_string(),
                    cumulative_tokens: usage.and_then(|u| u.completion_tokens),
                });
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(reason.to_string());
            }
        }
        if let Some(usage) = usage {
            self.usage = Some(usage);
        }
        let timing = chunk
            .get("metrum")
            .or_else(|| chunk.get("usage").and_then(|u| u.get("metrum")));
        if let Some(timing) = timing.filter(|t| !t.is_null()) {
            self.server_timing = Some(timing.clone());
        }
    }

    pub fn fail(&mut self, message: String) {
        self.error.get_or_insert(message);
    }
}

/// The first 200 characters of `s`, for error messages.
pub fn clip(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> SseEvent {
        SseEvent {
            data: data.into(),
            ..SseEvent::default()
        }
    }

    #[test]
    fn folds_text_usage_timing_and_done() {
        let mut r = StreamRecord::default();
        r.apply(
            &event(r#"{"choices":[{"text":"Hi","finish_reason":null}]}"#),
            Nanos(5),
        );
        r.apply(
            &event(r#"{"choices":[{"text":"","finish_reason":"length"}]}"#),
            Nanos(6),
        );
        r.apply(
            &event(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1},"metrum":{"ttft_ms":1.0}}"#),
            Nanos(7),
        );
        r.apply(&event("[DONE]"), Nanos(8));
        r.apply(&event(r#"{"choices":[{"text":"late"}]}"#), Nanos(9));
        assert_eq!(r.chunks.len(), 1);
        assert_eq!(r.chunks[0].at, Nanos(5));
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        assert_eq!(r.usage.unwrap().completion_tokens, Some(1));
        assert_eq!(r.server_timing.unwrap()["ttft_ms"], 1.0);
        assert!(r.done && r.error.is_none());
    }

    #[test]
    fn errors_in_the_stream_fail_the_request() {
        let mut r = StreamRecord::default();
        r.apply(&event("not json"), Nanos(1));
        r.apply(&event(r#"{"error":{"message":"boom"}}"#), Nanos(2));
        assert!(r.error.unwrap().starts_with("unparsable"));
        let mut r = StreamRecord::default();
        r.apply(&event(r#"{"error":{"message":"boom"}}"#), Nanos(2));
        assert_eq!(r.error.as_deref(), Some("server error in stream: boom"));
    }
}
