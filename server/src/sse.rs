//! Server-sent-events framing as the OpenAI clients parse it: `data: <json>\n\n` per chunk,
//! `data: [DONE]\n\n` at the end, and an error after the headers went out as one final
//! `data: {"error": {...}}` event followed by `[DONE]` (vLLM's convention).

use crate::error::ApiError;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Serialize;

/// The terminating event.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// One `data:` event carrying `value` as JSON.
pub fn data_event<T: Serialize>(value: &T) -> Bytes {
    // serde_json only fails on maps with non-string keys or failing Serialize impls, which the
    // API types do not have; fall back to an error event instead of panicking anyway.
    let json = serde_json::to_vec(value).unwrap_or_else(|e| {
        serde_json::to_vec(&ApiError::bad_request(format!("serialization failed: {e}")).body())
            .unwrap_or_default()
    });
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The error event plus `[DONE]`, for an error after the stream started.
pub fn error_events(err: &ApiError) -> Bytes {
    err.log();
    let mut out = data_event(&err.body()).to_vec();
    out.extend_from_slice(DONE);
    Bytes::from(out)
}

/// Wraps a stream of ready-made frames in a `text/event-stream` response.
pub fn response<S>(frames: S) -> Response
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    use futures::StreamExt;
    let body = Body::from_stream(frames.map(Ok::<_, std::convert::Infallible>));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell reverse proxies (nginx) not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_data_lines_separated_by_blank_lines() {
        let frame = data_event(&serde_json::json!({"a": "x\ny"}));
        assert_eq!(&frame[..], b"data: {\"a\":\"x\\ny\"}\n\n");
        let err = error_events(&ApiError::internal("r1", "boom"));
        let text = std::str::from_utf8(&err).unwrap();
        let mut events = text.split("\n\n").filter(|e| !e.is_empty());
        let first = events.next().unwrap().strip_prefix("data: ").unwrap();
        let body: crate::error::ErrorBody = serde_json::from_str(first).unwrap();
        assert_eq!(body.error.kind, "server_error");
        assert_eq!(events.next(), Some("data: [DONE]"));
        assert_eq!(events.next(), None);
    }
}
