//! `--api-key`: every `/v1` route requires `Authorization: Bearer <key>`; `/health` and
//! `/metrics` stay open so probes and Prometheus need no secret.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The configured key, kept only as its SHA-256 digest. Cheap to clone into the middleware.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl ApiKey {
    pub fn new(key: &str) -> ApiKey {
        ApiKey {
            digest: Sha256::digest(key.as_bytes()).into(),
        }
    }

    /// Whether `presented` is the key. Both sides are hashed first, so the comparison always
    /// runs over 32 bytes whatever the lengths: its time says nothing about how many bytes of
    /// a guess were right, nor about the key's length.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        constant_time_eq(&digest, &self.digest)
    }
}

/// Middleware: passes the request on when the bearer token matches, else a 401 OpenAI error.
pub async fn require_api_key(State(key): State<ApiKey>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match presented {
        Some(token) if key.matches(token) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares without an early exit or a data-dependent branch, so the time taken does not reveal
/// how many leading bytes were right (only unequal lengths could show, and [`ApiKey`] compares
/// fixed-length digests).
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = presented.len() ^ expected.len();
    for (i, &e) in expected.iter().enumerate() {
        let p = presented.get(i).copied().unwrap_or(0);
        diff |= usize::from(p ^ e);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_matches_only_equal_keys() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }

    #[test]
    fn api_key_matches_only_itself() {
        let key = ApiKey::new("s3cret");
        assert!(key.matches("s3cret"));
        for wrong in ["s3creT", "s3cret ", "s3cre", "", "s3cret\0"] {
            assert!(!key.matches(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn bearer_scheme_is_parsed() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("abc"), None);
    }
}
