//! Sending one chaos request of each kind and deciding its [`Outcome`], checked against what
//! the kind must get ([`ChaosKind::accepts`]).

use super::kinds::{ChaosKind, Outcome};
use super::raw;
use crate::sse::SseDecoder;
use crate::stream::StreamRecord;
use futures::StreamExt;
use metrum_core::Nanos;
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use std::time::Duration;

/// What every sender needs to know about the target.
#[derive(Clone, Debug)]
pub struct Target {
    pub http: reqwest::Client,
    pub base_url: String,
    pub max_model_len: u32,
    /// The server's `--max-request-body-size` in bytes.
    pub body_limit: u64,
    pub timeout: Duration,
}

const WORDS: [&str; 24] = [
    "the",
    "quick",
    "server",
    "streams",
    "tokens",
    "while",
    "a",
    "scheduler",
    "batches",
    "requests",
    "into",
    "paged",
    "blocks",
    "of",
    "memory",
    "and",
    "every",
    "client",
    "waits",
    "for",
    "its",
    "first",
    "answer",
    "today",
];

fn text_prompt(rng: &mut StdRng, words: usize) -> String {
    (0..words)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Token ids every vocabulary of interest has as plain pieces (bytes or merges), none special.
pub fn token_prompt(rng: &mut StdRng, len: u32) -> Vec<u32> {
    (0..len).map(|_| rng.random_range(32..256)).collect()
}

fn stream_body(prompt: Value, max_tokens: Option<u32>) -> Value {
    let mut body = json!({
        "prompt": prompt,
        "stream": true,
        "stream_options": {"include_usage": true},
        "ignore_eos": true,
        "temperature": 0.0,
    });
    if let Some(m) = max_tokens {
        body["max_tokens"] = json!(m);
    }
    body
}

/// The schema the constrained kinds ask for: every value is drawn from a closed set, so the
/// compact JSON is ~30 characters whatever the model, and a small `max_tokens` always holds it.
fn answer_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "pick": {"enum": ["red", "green", "blue"]},
        },
        "required": ["ok", "pick"],
        "additionalProperties": false,
    })
}

/// Room for [`answer_schema`]'s longest answer at one token a character (byte-level
/// vocabularies such as synthetic:tiny's), so a constrained request ends by `stop`.
const CONSTRAINED_MAX_TOKENS: u32 = 48;

/// A required tool call also spends tokens on the format's wrapper (hermes' `<tool_call>`, the
/// name, `"arguments":`): SmolLM2-135M cut at 48 tokens inside the arguments.
const TOOL_MAX_TOKENS: u32 = 128;

fn json_schema_body(prompt: &str, stream: bool, seed: u64) -> Value {
    let mut body = json!({
        "prompt": prompt,
        "max_tokens": CONSTRAINED_MAX_TOKENS,
        "temperature": 0.8,
        "seed": seed,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "answer", "schema": answer_schema()}},
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn tool_body(prompt: &str, seed: u64) -> Value {
    json!({
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": TOOL_MAX_TOKENS,
        "temperature": 0.8,
        "seed": seed,
        "tools": [{"type": "function", "function": {
            "name": "pick_colour",
            "description": "Answers with a colour.",
            "parameters": answer_schema(),
        }}],
        "tool_choice": "required",
        "parallel_tool_calls": false,
    })
}

/// Whether `text` is a JSON object with every key `answer_schema` requires; why not if not.
pub fn has_required_keys(text: &str) -> Result<(), String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("the constrained text {text:?} is not JSON: {e}"))?;
    let schema = answer_schema();
    let required = schema["required"].as_array().into_iter().flatten();
    let missing: Vec<&str> = required
        .filter_map(Value::as_str)
        .filter(|key| value.get(key).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("the constrained JSON {text} lacks {missing:?}"))
    }
}

/// A non-streaming chat answer must call a tool with JSON arguments holding the schema's keys.
pub fn check_tool_answer(answer: &Value) -> Result<(), String> {
    let call = &answer["choices"][0]["message"]["tool_calls"][0];
    let Some(arguments) = call["function"]["arguments"].as_str() else {
        return Err(format!("no tool_calls[0].function.arguments in {answer}"));
    };
    if call["function"]["name"] != "pick_colour" {
        return Err(format!(
            "the call names {} (only pick_colour exists)",
            call["function"]["name"]
        ));
    }
    has_required_keys(arguments)
}

impl Target {
    fn url(&self) -> String {
        format!("{}/v1/completions", self.base_url)
    }

    fn chat_url(&self) -> String {
        format!("{}/v1/chat/completions", self.base_url)
    }

    /// A non-2xx status as an outcome: 4xx refusals, anything else a failure.
    fn refused(status: reqwest::StatusCode) -> Outcome {
        if status.is_client_error() {
            Outcome::Rejected {
                status: status.as_u16(),
            }
        } else {
            Outcome::Failed {
                why: format!("HTTP {status}"),
            }
        }
    }

    /// POSTs `body` to /v1/completions; `Ok(response)` once 2xx headers are in (the engine
    /// then holds it).
    pub async fn open(&self, body: &Value) -> Result<reqwest::Response, Outcome> {
        self.open_at(self.url(), body).await
    }

    async fn open_at(&self, url: String, body: &Value) -> Result<reqwest::Response, Outcome> {
        let sent = self.http.post(url).json(body).send();
        match tokio::time::timeout(self.timeout, sent).await {
            Err(_) => Err(Outcome::Failed {
                why: "no response headers in time".into(),
            }),
            Ok(Err(e)) => Err(Outcome::Failed {
                why: format!("request failed: {e}"),
            }),
            Ok(Ok(r)) if r.status().is_success() => Ok(r),
            Ok(Ok(r)) => Err(Self::refused(r.status())),
        }
    }

    /// Reads a stream until `[DONE]`, or drops it after `cut_after` content chunks.
    async fn read_stream(
        &self,
        response: reqwest::Response,
        cut_after: Option<usize>,
    ) -> (Outcome, StreamRecord) {
        let mut record = StreamRecord::default();
        if cut_after == Some(0) {
            return (Outcome::Aborted, record);
        }
        let mut decoder = SseDecoder::new();
        let mut bytes = response.bytes_stream();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let next = match tokio::time::timeout_at(deadline, bytes.next()).await {
                Err(_) => return (failed("the stream stalled past the timeout"), record),
                Ok(None) => return (failed("the stream closed before [DONE]"), record),
                Ok(Some(Err(e))) => return (failed(&format!("the stream broke: {e}")), record),
                Ok(Some(Ok(chunk))) => chunk,
            };
            let events = match decoder.feed(&next) {
                Ok(events) => events,
                Err(e) => return (failed(&e.to_string()), record),
            };
            for event in &events {
                record.apply(event, Nanos::ZERO);
                if let Some(why) = &record.error {
                    return (failed(why), record);
                }
                if record.done {
                    return (Outcome::Completed, record);
                }
                if cut_after.is_some_and(|cut| record.chunks.len() >= cut) {
                    // Dropping the body closes the connection mid-stream.
                    return (Outcome::Aborted, record);
                }
            }
        }
    }

    /// Sends one request of `kind`.
    pub async fn send(&self, kind: ChaosKind, rng: &mut StdRng) -> Outcome {
        let l = self.max_model_len.max(2);
        let outcome = match kind {
            ChaosKind::Disconnect => {
                let max_tokens = rng.random_range(16..=128u32).min(l - 1);
                // At most 6 tokens a word (byte-level vocabularies): 240 + 128 fit 512.
                let words = rng.random_range(8..=40);
                let cut = rng.random_range(0..=max_tokens as usize);
                let body = stream_body(json!(text_prompt(rng, words)), Some(max_tokens));
                match self.open(&body).await {
                    Ok(r) => self.read_stream(r, Some(cut)).await.0,
                    Err(o) => o,
                }
            }
            ChaosKind::BurstAbort => {
                // Alone (not in a burst): dropped right after the headers.
                let body = stream_body(json!(text_prompt(rng, 16)), Some(64.min(l - 1)));
                match self.open(&body).await {
                    Ok(_) => Outcome::Aborted,
                    Err(o) => o,
                }
            }
            ChaosKind::BadJson => {
                self.post_raw_body(b"{\"prompt\": \"x\", \"max_tokens\": ".to_vec())
                    .await
            }
            ChaosKind::WrongTypes => {
                self.post_json(&json!({"prompt": {"a": 1}, "max_tokens": "many"}))
                    .await
            }
            ChaosKind::InvalidSchema => {
                let schema = json!({"type": "object", "properties": {"a": {"type": "strin"}}});
                self.post_json(&json!({"prompt": "x", "max_tokens": 4, "response_format":
                    {"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}}}))
                    .await
            }
            ChaosKind::HugeSchema => {
                let regex = "a".repeat(70_000);
                self.post_json(&json!({"prompt": "x", "max_tokens": 4,
                                       "structured_outputs": {"regex": regex}}))
                    .await
            }
            ChaosKind::UnknownModel => {
                self.post_json(&json!({"model": "no-such-model", "prompt": "x", "max_tokens": 4}))
                    .await
            }
            ChaosKind::OversizedBody => self.raw(RawKind::Oversized).await,
            ChaosKind::NotHttp => self.raw(RawKind::NotHttp).await,
            ChaosKind::PromptOverContext => {
                self.post_json(&json!({"prompt": token_prompt(rng, l), "max_tokens": 1}))
                    .await
            }
            ChaosKind::MaxTokensOverContext => {
                self.post_json(&json!({"prompt": "x", "max_tokens": l}))
                    .await
            }
            ChaosKind::ContextPlusOne => {
                let p = rng.random_range(1..l);
                self.post_json(&json!({"prompt": token_prompt(rng, p), "max_tokens": l + 1 - p}))
                    .await
            }
            ChaosKind::ExactContext | ChaosKind::FillContext => {
                let n = rng.random_range(1..=16u32).min(l - 1);
                let p = l - n;
                let max_tokens = (kind == ChaosKind::ExactContext).then_some(n);
                let body = stream_body(json!(token_prompt(rng, p)), max_tokens);
                match self.open(&body).await {
                    Ok(r) => {
                        let (outcome, record) = self.read_stream(r, None).await;
                        exact_length(outcome, &record, p, n)
                    }
                    Err(o) => o,
                }
            }
            ChaosKind::NonStream => {
                let max_tokens = rng.random_range(4..=24u32).min(l / 2);
                let words = rng.random_range(4..=32);
                self.non_stream(&text_prompt(rng, words), max_tokens).await
            }
            ChaosKind::JsonSchema => {
                let words = rng.random_range(4..=32);
                let body = json_schema_body(&text_prompt(rng, words), false, rng.random());
                match self.open(&body).await {
                    Ok(r) => match self.answer(r).await {
                        Ok(answer) => match answer["choices"][0]["text"].as_str() {
                            Some(text) => verdict(has_required_keys(text)),
                            None => failed(&format!("no choices[0].text in {answer}")),
                        },
                        Err(o) => o,
                    },
                    Err(o) => o,
                }
            }
            ChaosKind::JsonSchemaStream => {
                let words = rng.random_range(4..=32);
                let body = json_schema_body(&text_prompt(rng, words), true, rng.random());
                match self.open(&body).await {
                    Ok(r) => match self.read_stream(r, None).await {
                        (Outcome::Completed, record) => {
                            let text: String =
                                record.chunks.iter().map(|c| c.text.as_str()).collect();
                            verdict(has_required_keys(&text))
                        }
                        (other, _) => other,
                    },
                    Err(o) => o,
                }
            }
            ChaosKind::ToolRequired => {
                let words = rng.random_range(4..=32);
                let body = tool_body(&text_prompt(rng, words), rng.random());
                match self.open_at(self.chat_url(), &body).await {
                    Ok(r) => match self.answer(r).await {
                        Ok(answer) => verdict(check_tool_answer(&answer)),
                        Err(o) => o,
                    },
                    Err(o) => o,
                }
            }
            ChaosKind::NoSpeculation => {
                // Repeated words: the prompt n-grams a drafter would match, were it asked.
                let n = rng.random_range(8..=32u32).min(l / 2);
                let prompt = format!("{} ", text_prompt(rng, 6)).repeat(4);
                let mut body = stream_body(json!(prompt), Some(n));
                body["speculative"] = json!(false);
                match self.open(&body).await {
                    Ok(r) => {
                        let (outcome, record) = self.read_stream(r, None).await;
                        let tokens = record.usage.and_then(|u| u.completion_tokens);
                        if outcome == Outcome::Completed && tokens != Some(u64::from(n)) {
                            failed(&format!("max_tokens {n} with ignore_eos gave {tokens:?}"))
                        } else {
                            outcome
                        }
                    }
                    Err(o) => o,
                }
            }
            ChaosKind::ChatOverContext => self.chat_over_context().await.0,
        };
        judged(kind, outcome)
    }

    /// A whole JSON answer, or the outcome that says why there is none.
    async fn answer(&self, response: reqwest::Response) -> Result<Value, Outcome> {
        match tokio::time::timeout(self.timeout, response.json()).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(failed(&format!("the answer is not JSON: {e}"))),
            Err(_) => Err(failed("the answer did not arrive in time")),
        }
    }

    /// Sends a chat prompt of ~2 tokens a context slot, which every server must refuse with
    /// 400 before the engine sees it; returns the outcome and the refusal's message (it says
    /// "no chat template" when the model has none, else that the context is exceeded).
    pub async fn chat_over_context(&self) -> (Outcome, String) {
        let prompt = "the quick server ".repeat(self.max_model_len as usize);
        let body = json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 1});
        let sent = self.http.post(self.chat_url()).json(&body).send();
        let response = match tokio::time::timeout(self.timeout, sent).await {
            Err(_) => return (failed("no answer in time"), String::new()),
            Ok(Err(e)) => return (failed(&format!("request failed: {e}")), String::new()),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let message = match self.answer(response).await {
            Ok(v) => v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            Err(_) => String::new(),
        };
        if status.is_success() {
            (failed("a chat prompt over the context was served"), message)
        } else {
            (Self::refused(status), message)
        }
    }

    async fn post_json(&self, body: &Value) -> Outcome {
        self.post_raw_body(body.to_string().into_bytes()).await
    }

    async fn post_raw_body(&self, body: Vec<u8>) -> Outcome {
        let sent = self
            .http
            .post(self.url())
            .header("content-type", "application/json")
            .body(body)
            .send();
        match tokio::time::timeout(self.timeout, sent).await {
            Err(_) => failed("no answer in time"),
            Ok(Err(e)) => failed(&format!("request failed: {e}")),
            // These kinds all ask for something the server must refuse.
            Ok(Ok(r)) if r.status().is_success() => Outcome::Completed,
            Ok(Ok(r)) => Self::refused(r.status()),
        }
    }

    async fn raw(&self, kind: RawKind) -> Outcome {
        let Some(addr) = raw::authority(&self.base_url) else {
            return failed("raw requests need an http://host:port URL");
        };
        let bytes = match kind {
            RawKind::Oversized => raw::oversized_headers(addr, self.body_limit + 1),
            RawKind::NotHttp => raw::NOT_HTTP.to_vec(),
        };
        match raw::status_of(addr, &bytes, self.timeout).await {
            Ok(0) => Outcome::Rejected { status: 0 },
            Ok(status) if (400..500).contains(&status) => Outcome::Rejected { status },
            Ok(status) => failed(&format!("HTTP {status}")),
            Err(e) => failed(&format!("raw request: {e}")),
        }
    }

    async fn non_stream(&self, prompt: &str, max_tokens: u32) -> Outcome {
        let body = json!({"prompt": prompt, "max_tokens": max_tokens, "n": 2,
                          "ignore_eos": true, "temperature": 0.8, "seed": 7});
        let response = match self.open(&body).await {
            Ok(r) => r,
            Err(o) => return o,
        };
        let answer = match self.answer(response).await {
            Ok(v) => v,
            Err(o) => return o,
        };
        let choices = answer["choices"].as_array().map_or(0, Vec::len);
        let tokens = answer["usage"]["completion_tokens"].as_u64();
        if choices == 2 && tokens == Some(2 * u64::from(max_tokens)) {
            Outcome::Completed
        } else {
            failed(&format!(
                "n=2 × max_tokens={max_tokens} answered {choices} choices, {tokens:?} tokens"
            ))
        }
    }
}

/// `outcome` if `kind` accepts it, else a failure that says what was wrong.
pub fn judged(kind: ChaosKind, outcome: Outcome) -> Outcome {
    if kind.accepts(&outcome) {
        return outcome;
    }
    match outcome {
        Outcome::Failed { why } => Outcome::Failed {
            why: format!("{kind:?}: {why}"),
        },
        other => Outcome::Failed {
            why: format!("{kind:?} must not end as {}", other.label()),
        },
    }
}

enum RawKind {
    Oversized,
    NotHttp,
}

fn verdict(check: Result<(), String>) -> Outcome {
    match check {
        Ok(()) => Outcome::Completed,
        Err(why) => Outcome::Failed { why },
    }
}

fn failed(why: &str) -> Outcome {
    Outcome::Failed {
        why: why.to_string(),
    }
}

/// A request sized to end exactly at `max_model_len` must finish by length with exactly `n`
/// tokens after its `p` prompt tokens.
fn exact_length(outcome: Outcome, record: &StreamRecord, p: u32, n: u32) -> Outcome {
    if outcome != Outcome::Completed {
        return outcome;
    }
    let usage = record.usage.map(|u| (u.prompt_tokens, u.completion_tokens));
    let finish = record.finish_reason.as_deref();
    if finish == Some("length") && usage == Some((Some(u64::from(p)), Some(u64::from(n)))) {
        Outcome::Completed
    } else {
        failed(&format!(
            "prompt {p} + {n} tokens to the context end: finish {finish:?}, usage {usage:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Usage;

    #[test]
    fn constrained_answers_must_be_json_with_the_required_keys() {
        assert_eq!(has_required_keys(r#"{"ok":true,"pick":"red"}"#), Ok(()));
        assert!(
            has_required_keys(r#"{"ok":true}"#)
                .unwrap_err()
                .contains("pick")
        );
        assert!(has_required_keys(r#"{"ok":true,"pick":"re"#).is_err());
        let call = |name: &str, arguments: &str| {
            json!({"choices": [{"message": {"tool_calls": [{"type": "function",
                "function": {"name": name, "arguments": arguments}}]}}]})
        };
        assert_eq!(
            check_tool_answer(&call("pick_colour", r#"{"ok":false,"pick":"blue"}"#)),
            Ok(())
        );
        assert!(check_tool_answer(&call("other", r#"{"ok":false,"pick":"blue"}"#)).is_err());
        assert!(check_tool_answer(&call("pick_colour", "{")).is_err());
        let content_only = json!({"choices": [{"message": {"content": "hi"}}]});
        assert!(check_tool_answer(&content_only).is_err());
    }

    #[test]
    fn exact_length_needs_the_finish_and_both_counts() {
        let mut record = StreamRecord {
            usage: Some(Usage {
                prompt_tokens: Some(500),
                completion_tokens: Some(12),
            }),
            finish_reason: Some("length".into()),
            done: true,
            ..StreamRecord::default()
        };
        assert_eq!(
            exact_length(Outcome::Completed, &record, 500, 12),
            Outcome::Completed
        );
        assert!(matches!(
            exact_length(Outcome::Completed, &record, 500, 13),
            Outcome::Failed { .. }
        ));
        record.finish_reason = Some("stop".into());
        assert!(matches!(
            exact_length(Outcome::Completed, &record, 500, 12),
            Outcome::Failed { .. }
        ));
        assert_eq!(
            exact_length(Outcome::Aborted, &record, 1, 1),
            Outcome::Aborted
        );
    }
}
