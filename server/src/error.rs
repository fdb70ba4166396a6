//! The one error type of the HTTP API and its one mapping to HTTP.
//!
//! Every handler returns `Result<_, ApiError>`; nothing else decides a status code. The body is
//! always OpenAI's `{"error": {"message", "type", "param", "code"}}`, so the openai client raises
//! the matching exception class (it keys on the status) and shows the message. The same error
//! inside a stream that already sent its headers becomes one SSE `data:` event (see `sse`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrum_engine::handle::SubmitError;
use serde::Serialize;

/// Why a request failed. The variant alone decides the status; see [`ApiError::status`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, a field has the wrong type, or a value is out of range.
    /// `param` names the offending field as the API spells it (e.g. `messages[1].role`).
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// Missing or wrong `Authorization: Bearer` key.
    #[error("invalid or missing API key")]
    Unauthorized,
    /// The request named a model this server does not serve.
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    /// No route at this path.
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Too many requests queued; the client should come back after `retry_after_secs`.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after_secs: u64,
    },
    /// The model is still loading or the server is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an engine failure. Logged with the request id when turned into a response.
    #[error("internal error: {message}")]
    Internal { message: String, request_id: String },
}

/// OpenAI's error object.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// OpenAI's error envelope: `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

impl ApiError {
    /// A 400 about one named field; the message is prefixed with the field's name so it reads
    /// on its own (clients often show only the message).
    pub fn param(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        ApiError::BadRequest {
            message: format!("`{param}`: {}", message.into()),
            param: Some(param),
            code: None,
        }
    }

    /// A 400 about the request as a whole.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn internal(request_id: &str, message: impl Into<String>) -> Self {
        ApiError::Internal {
            message: message.into(),
            request_id: request_id.to_string(),
        }
    }

    /// Maps an engine admission failure; `request_id` is only used for the 500 case.
    pub fn from_submit(err: SubmitError, request_id: &str) -> Self {
        match err {
            SubmitError::Invalid(message) => ApiError::bad_request(message),
            SubmitError::Overloaded { .. } => ApiError::Overloaded {
                message: err.to_string(),
                retry_after_secs: 1,
            },
            SubmitError::PredictedMiss {
                message,
                retry_after_secs,
            } => ApiError::Overloaded {
                message,
                retry_after_secs,
            },
            SubmitError::Unavailable(message) => ApiError::Unavailable(message),
            SubmitError::EngineDead(_) => ApiError::internal(request_id, err.to_string()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` field; also a stable label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. }
            | ApiError::ModelNotFound(_)
            | ApiError::RouteNotFound(_)
            | ApiError::MethodNotAllowed
            | ApiError::PayloadTooLarge { .. } => "invalid_request_error",
            ApiError::Unauthorized => "authentication_error",
            ApiError::Overloaded { .. } => "rate_limit_error",
            ApiError::Unavailable(_) => "service_unavailable_error",
            ApiError::Internal { .. } => "server_error",
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::BadRequest { code, .. } => *code,
            ApiError::Unauthorized => Some("invalid_api_key"),
            ApiError::ModelNotFound(_) => Some("model_not_found"),
            ApiError::RouteNotFound(_) => Some("not_found"),
            ApiError::MethodNotAllowed => Some("method_not_allowed"),
            ApiError::PayloadTooLarge { .. } => Some("request_too_large"),
            ApiError::Overloaded { .. } => Some("rate_limit_exceeded"),
            ApiError::Unavailable(_) => Some("service_unavailable"),
            ApiError::Internal { .. } => Some("internal_error"),
        }
    }

    fn param_name(&self) -> Option<String> {
        match self {
            ApiError::BadRequest { param, .. } => param.clone(),
            ApiError::ModelNotFound(_) => Some("model".into()),
            _ => None,
        }
    }

    /// The OpenAI error body. Internal errors show the request id and the first line of the
    /// cause only (engine errors may carry backtraces); the full text is in the log line.
    pub fn body(&self) -> ErrorBody {
        let message = match self {
            ApiError::Internal {
                message,
                request_id,
            } => {
                let first_line: String = message
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(300)
                    .collect();
                format!("internal server error (request id {request_id}): {first_line}")
            }
            other => other.to_string(),
        };
        ErrorBody {
            error: ErrorDetail {
                message,
                kind: self.kind().to_string(),
                param: self.param_name(),
                code: self.code().map(str::to_string),
            },
        }
    }

    /// Server-side logging, done once wherever an error leaves the server (response or SSE).
    pub fn log(&self) {
        match self {
            ApiError::Internal {
                message,
                request_id,
            } => tracing::error!(request_id = %request_id, error = %message, "request failed"),
            other => {
                tracing::debug!(status = other.status().as_u16(), error = %other, "request rejected")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let ApiError::Overloaded {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if let ApiError::Unauthorized = self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_status_and_an_openai_body() {
        let cases = [
            (ApiError::param("top_p", "bad"), 400, Some("top_p")),
            (ApiError::Unauthorized, 401, None),
            (ApiError::ModelNotFound("x".into()), 404, Some("model")),
            (ApiError::PayloadTooLarge { limit: 10 }, 413, None),
            (
                ApiError::Overloaded {
                    message: "full".into(),
                    retry_after_secs: 1,
                },
                429,
                None,
            ),
            (ApiError::Unavailable("loading".into()), 503, None),
            (ApiError::internal("r1", "boom"), 500, None),
        ];
        for (err, status, param) in cases {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            let body = err.body();
            assert_eq!(body.error.param.as_deref(), param);
            assert!(!body.error.message.is_empty());
            assert_eq!(body.error.kind, err.kind());
        }
    }

    #[test]
    fn overload_sets_retry_after_and_internal_names_the_request_id() {
        let resp = ApiError::Overloaded {
            message: "full".into(),
            retry_after_secs: 3,
        }
        .into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        let body = ApiError::internal("req-42", "engine gone\n   0: <backtrace frame>").body();
        assert!(body.error.message.contains("req-42"));
        assert!(
            body.error.message.ends_with("engine gone"),
            "{}",
            body.error.message
        );
    }

    #[test]
    fn submit_errors_map_to_distinct_statuses() {
        let over = SubmitError::Overloaded {
            waiting: 5,
            limit: 4,
        };
        assert_eq!(ApiError::from_submit(over, "r").status().as_u16(), 429);
        let bad = SubmitError::Invalid("too long".into());
        assert_eq!(ApiError::from_submit(bad, "r").status().as_u16(), 400);
        let gone = SubmitError::EngineDead("x".into());
        assert_eq!(ApiError::from_submit(gone, "r").status().as_u16(), 500);
        let busy = SubmitError::Unavailable("loading".into());
        assert_eq!(ApiError::from_submit(busy, "r").status().as_u16(), 503);
    }
}
