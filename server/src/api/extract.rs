//! Request-body extraction that speaks the API's error language.
//!
//! axum's `Json` rejects a missing content type with 415 and a type mismatch with 422, each with
//! a plain-text body. vLLM accepts any content type for JSON bodies and the OpenAI contract says
//! 400 with an error object, so this extractor reads the bytes itself and names the offending
//! field (`messages[0].role`) through `serde_path_to_error`. Before any field is read, every key
//! is checked against the fields the wire types declare (`fields`): an unimplemented or unknown
//! field is a 400 naming it, never silently ignored.

use super::types::SamplingFields;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

/// The configured body limit, stored in request extensions so the 413 message can quote it.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// A JSON body parsed with OpenAI-style 400/413 errors.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        let mut value: serde_json::Value = parse_json(&bytes)?;
        super::fields::check_body(&value, &[super::fields::serde_fields::<T>()])?;
        integral_floats_as_integers(&mut value);
        parse_value(&value).map(ApiJson)
    }
}

/// A generation request: the endpoint's own fields `T` plus the shared [`SamplingFields`],
/// both read from the same JSON object. (serde's `flatten` would lose the field name in type
/// errors, and naming the field is the point of a good 400.)
pub struct SampledJson<T>(pub T, pub SamplingFields);

impl<S, T> FromRequest<S> for SampledJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        let mut value: serde_json::Value = parse_json(&bytes)?;
        integral_floats_as_integers(&mut value);
        if !value.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        use super::fields::{check_body, serde_fields};
        check_body(
            &value,
            &[serde_fields::<T>(), serde_fields::<SamplingFields>()],
        )?;
        Ok(SampledJson(parse_value(&value)?, parse_value(&value)?))
    }
}

/// Reads the whole body within the configured limit. A `Content-Length` over the limit is
/// refused before any of the body is read.
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let limit = req
        .extensions()
        .get::<BodyLimit>()
        .map_or(usize::MAX, |l| l.0);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::bad_request(format!("could not read the request body: {rejection}"))
        }
    })
}

/// Deserializes `T` from an already-parsed JSON value, naming the offending field on error.
/// (The extractors run [`integral_floats_as_integers`] on the value first.)
pub fn parse_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        type_error(path, err.into_inner())
    })
}

/// Rewrites every float with no fractional part that fits an `i64` or `u64` (`287.0`, `1e3`) as
/// that integer, in place. JSON Schema counts `287.0` as an integer and Python clients send
/// floats where ints are meant (vLLM's pydantic accepts them), but serde refuses a float for
/// an integer field. Integers still read fine into float fields, so nothing else changes.
pub fn integral_floats_as_integers(value: &mut serde_json::Value) {
    use serde_json::{Number, Value};
    match value {
        Value::Number(n) if n.is_f64() => {
            let Some(f) = n.as_f64() else { return };
            // Exact bounds: 2^63 and 2^64 are floats; anything below converts without loss.
            const I64_END: f64 = 9_223_372_036_854_775_808.0;
            const U64_END: f64 = 18_446_744_073_709_551_616.0;
            if f.fract() != 0.0 || !f.is_finite() {
                return;
            }
            if (-I64_END..I64_END).contains(&f) {
                *n = Number::from(f as i64);
            } else if (0.0..U64_END).contains(&f) {
                *n = Number::from(f as u64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

fn type_error(path: String, inner: serde_json::Error) -> ApiError {
    let param = (path != ".").then_some(path);
    let message = match &param {
        Some(p) => format!("invalid value for `{p}`: {inner}"),
        None => format!("invalid request body: {inner}"),
    };
    ApiError::BadRequest {
        message,
        param,
        code: None,
    }
}

/// Parses `bytes` as `T`. Syntax errors say "malformed JSON"; type errors name the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; expected a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("malformed JSON in the request body: {inner}"))
        } else {
            type_error(path, inner)
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad_request(format!("malformed JSON in the request body: {e}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Probe {
        #[allow(dead_code)]
        temperature: Option<f32>,
        #[allow(dead_code)]
        messages: Option<Vec<Inner>>,
    }
    #[derive(serde::Deserialize, Debug)]
    struct Inner {
        #[allow(dead_code)]
        role: String,
    }

    fn param_of(err: ApiError) -> Option<String> {
        match err {
            ApiError::BadRequest { param, .. } => param,
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn malformed_json_is_a_400_without_param() {
        let err = parse_json::<Probe>(b"{\"temperature\": ").unwrap_err();
        assert!(err.to_string().contains("malformed JSON"), "{err}");
        assert_eq!(param_of(err), None);
        assert!(parse_json::<Probe>(b"{} trailing").is_err());
        assert!(parse_json::<Probe>(b"  ").is_err());
    }

    #[test]
    fn wrong_types_name_the_nested_field() {
        let err = parse_json::<Probe>(br#"{"temperature": "hot"}"#).unwrap_err();
        assert_eq!(param_of(err).as_deref(), Some("temperature"));
        let err =
            parse_json::<Probe>(br#"{"messages": [{"role": "user"}, {"role": 3}]}"#).unwrap_err();
        assert_eq!(param_of(err).as_deref(), Some("messages[1].role"));
    }

    #[test]
    fn values_name_their_field_too() {
        let value = serde_json::json!({"temperature": "hot"});
        let err = parse_value::<Probe>(&value).unwrap_err();
        assert_eq!(param_of(err).as_deref(), Some("temperature"));
    }

    #[test]
    fn integral_floats_read_as_integers_and_fractions_still_fail() {
        #[derive(serde::Deserialize, Debug)]
        struct Ints {
            n: u32,
            p: i32,
            ids: Vec<u32>,
            t: f32,
        }
        let read = |mut value: serde_json::Value| {
            integral_floats_as_integers(&mut value);
            parse_value::<Ints>(&value)
        };
        let ints =
            read(serde_json::json!({"n": 287.0, "p": -3.0, "ids": [66.0, 1e3], "t": 1.0})).unwrap();
        assert_eq!(
            (ints.n, ints.p, ints.ids, ints.t),
            (287, -3, vec![66, 1000], 1.0)
        );
        let err = read(serde_json::json!({"n": 1.5, "p": 0, "ids": [], "t": 0}));
        assert_eq!(param_of(err.unwrap_err()).as_deref(), Some("n"));
        assert!(read(serde_json::json!({"n": 1e30, "p": 0, "ids": [], "t": 0})).is_err());
    }

    /// The typed parse alone ignores unknown keys; the extractors refuse them first
    /// (`fields::check_body`), so this only documents why that check must run.
    #[test]
    fn the_typed_parse_alone_would_ignore_unknown_fields() {
        assert!(parse_json::<Probe>(br#"{"temperature": 0.5, "foo": [1, 2]}"#).is_ok());
    }
}
