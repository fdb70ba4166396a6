//! The HTTP side of one request: a streaming `POST /v1/completions`, every network read
//! timestamped on the run's monotonic clock the moment it arrives, folded by
//! [`crate::stream::StreamRecord`]. Also the small GETs around a run (`/health`,
//! `/v1/models`, `/version`).

use crate::sse::SseDecoder;
use crate::stream::{StreamRecord, clip};
use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use metrum_core::Nanos;
use metrum_core::time::MonotonicClock;
use serde_json::{Value, json};
use std::time::Duration;

/// The response header in which SMG (SGLang's model gateway, also vllm-router's parent) names
/// the replica it routed the request to. Its presence is how a run knows it went through a
/// router: no flag to forget, and the per-replica split comes for free.
pub const ROUTED_WORKER_HEADER: &str = "x-smg-routed-worker-id";

/// What one request needs to be sent.
#[derive(Clone, Debug)]
pub struct CompletionCall {
    pub url: String,
    pub model: String,
    pub prompt: String,
    pub max_tokens: u32,
    pub temperature: f64,
    pub logit_bias: Option<std::collections::BTreeMap<String, f64>>,
    /// Fields added to the body (`--extra-body`), winning over the ones above.
    pub extra_body: Option<serde_json::Map<String, Value>>,
    pub timeout: Duration,
}

impl CompletionCall {
    /// The request body: `max_tokens = N` and `ignore_eos` so every system generates exactly
    /// N tokens (R3), usage requested in the stream so token counts are the server's.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "model": self.model,
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "ignore_eos": true,
            "temperature": self.temperature,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(bias) = &self.logit_bias {
            body["logit_bias"] = json!(bias);
        }
        for (key, value) in self.extra_body.iter().flatten() {
            body[key.as_str()] = value.clone();
        }
        body
    }
}

/// The stream as received and when it ended (last byte, error or timeout).
#[derive(Clone, Debug)]
pub struct CallOutcome {
    pub record: StreamRecord,
    pub ended: Nanos,
}

/// Sends `call` and reads its stream to the end. Never returns early on a failure: the
/// failure is recorded in the outcome's `record.error`, with whatever arrived before it.
pub async fn stream_completion(
    http: &reqwest::Client,
    call: &CompletionCall,
    clock: &MonotonicClock,
) -> CallOutcome {
    let mut record = StreamRecord::default();
    let deadline = tokio::time::Instant::now() + call.timeout;
    let timed_out = |record: &mut StreamRecord| {
        record.fail(format!(
            "timed out after {:.3} s",
            call.timeout.as_secs_f64()
        ));
    };
    let send = http.post(&call.url).json(&call.body()).send();
    let response = match tokio::time::timeout_at(deadline, send).await {
        Err(_) => {
            timed_out(&mut record);
            return CallOutcome {
                record,
                ended: clock.now(),
            };
        }
        Ok(Err(e)) => {
            record.fail(format!("request failed: {e}"));
            return CallOutcome {
                record,
                ended: clock.now(),
            };
        }
        Ok(Ok(r)) => r,
    };
    record.routed_to = response
        .headers()
        .get(ROUTED_WORKER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = response.status();
    if !status.is_success() {
        let body = tokio::time::timeout_at(deadline, response.text()).await;
        let body = body.ok().and_then(Result::ok).unwrap_or_default();
        record.fail(format!("HTTP {status}: {}", clip(body.trim())));
        record.http_status = Some(status.as_u16());
        return CallOutcome {
            record,
            ended: clock.now(),
        };
    }
    let mut decoder = SseDecoder::new();
    let mut bytes = response.bytes_stream();
    loop {
        match tokio::time::timeout_at(deadline, bytes.next()).await {
            Err(_) => {
                timed_out(&mut record);
                break;
            }
            Ok(None) => {
                if !record.done {
                    record.fail("stream closed before [DONE]".to_string());
                }
                break;
            }
            Ok(Some(Err(e))) => {
                record.fail(format!("stream broke: {e}"));
                break;
            }
            Ok(Some(Ok(chunk))) => {
                let at = clock.now();
                match decoder.feed(&chunk) {
                    Ok(events) => events.iter().for_each(|e| record.apply(e, at)),
                    Err(e) => {
                        record.fail(e.to_string());
                        break;
                    }
                }
                if record.done || record.error.is_some() {
                    break;
                }
            }
        }
    }
    CallOutcome {
        record,
        ended: clock.now(),
    }
}

/// `GET url` as JSON, or an error naming the URL.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value> {
    let response = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}");
    }
    response
        .json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))
}

/// The target's advertised models: `(id, context length if stated)`, in listed order.
pub async fn list_models(http: &reqwest::Client, base: &str) -> Result<Vec<(String, Option<u32>)>> {
    let models = get_json(http, &format!("{base}/v1/models")).await?;
    let data = models
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("{base}/v1/models has no `data` list"))?;
    Ok(data
        .iter()
        .filter_map(|m| {
            let id = m.get("id")?.as_str()?.to_string();
            let context = ["max_model_len", "context_length", "n_ctx"]
                .iter()
                .find_map(|k| m.get(*k).and_then(Value::as_u64))
                .or_else(|| {
                    m.get("meta")
                        .and_then(|meta| meta.get("n_ctx_train"))
                        .and_then(Value::as_u64)
                })
                .and_then(|c| u32::try_from(c).ok());
            Some((id, context))
        })
        .collect())
}

/// What `GET /health` says.
#[derive(Debug, PartialEq)]
pub enum Readiness {
    Ready,
    /// Not answering yet, or loading (or draining).
    NotYet,
    /// Up, and its body says it failed (Metrum's `{"status": "failed: …"}`): it never will be.
    Failed(String),
}

/// [`Readiness`] of the server at `base`.
pub async fn readiness(http: &reqwest::Client, base: &str) -> Readiness {
    let response = match http.get(format!("{base}/health")).send().await {
        Ok(r) => r,
        Err(_) => return Readiness::NotYet,
    };
    if response.status().is_success() {
        return Readiness::Ready;
    }
    let status = response
        .json::<Value>()
        .await
        .ok()
        .and_then(|body| body.get("status")?.as_str().map(str::to_string));
    match status {
        Some(s) if s.starts_with("failed") => Readiness::Failed(s),
        _ => Readiness::NotYet,
    }
}

/// `GET /health` answers 2xx.
pub async fn healthy(http: &reqwest::Client, base: &str) -> bool {
    readiness(http, base).await == Readiness::Ready
}
