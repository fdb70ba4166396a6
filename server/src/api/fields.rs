//! Refuse what is not understood: every request field Metrum does not implement is a 400 that
//! names it.
//!
//! OpenAI itself ignores nothing it does not know ("Unrecognized request argument supplied"),
//! but vLLM and most compatible servers do, and that is how constraints got silently dropped
//! (a client asks for JSON, gets prose, status 200). So the extractors check every key of the
//! body against the fields the wire types declare, before any field is read:
//!
//! * a field an endpoint's types declare is read (and then validated);
//! * an OpenAI field Metrum does not implement is a 400, code `unsupported_parameter`, with the
//!   reason (see `UNSUPPORTED`); vLLM's removed `guided_*` fields name their replacement;
//! * any other field is a 400, code `unknown_parameter`;
//! * `null` counts as absent for every field (it means "not set" in OpenAI's API, and clients
//!   that build bodies from typed objects send it), so nothing is dropped by accepting it;
//! * a few OpenAI toggles are accepted at the one value that asks for nothing (`echo: false`,
//!   `store: false`, `best_of: 1`): those are exactly what Metrum does.
//!
//! The same rules apply inside chat messages, their content parts and `stream_options`. The
//! known-field lists come from the serde derives themselves ([`serde_fields`]), so adding a
//! field to a wire type is all it takes to accept it.

use super::types::{ChatMessage, ContentPart, StreamOptions};
use crate::error::ApiError;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde_json::Value;

/// OpenAI request fields Metrum does not implement, with the reason given in the 400.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("echo", "echoing the prompt is not implemented"),
    (
        "best_of",
        "server-side best-of sampling is not implemented; use `n`",
    ),
    (
        "suffix",
        "insertion (a suffix after the completion) is not implemented",
    ),
    (
        "functions",
        "the legacy `functions` API is not implemented; use `tools`",
    ),
    (
        "function_call",
        "the legacy `functions` API is not implemented; use `tool_choice`",
    ),
    ("audio", "audio output is not implemented"),
    ("modalities", "only text output is implemented"),
    ("prediction", "predicted outputs are not implemented"),
    ("store", "stored completions are not implemented"),
    (
        "metadata",
        "stored completions (and their metadata) are not implemented",
    ),
    ("service_tier", "service tiers are not implemented"),
    ("reasoning_effort", "reasoning effort is not implemented"),
    ("web_search_options", "web search is not implemented"),
    ("verbosity", "verbosity is not implemented"),
    (
        "prompt_cache_key",
        "prompt cache keys are not implemented (prefix caching is automatic)",
    ),
    (
        "safety_identifier",
        "safety identifiers are not implemented; `user` is logged",
    ),
];

/// vLLM's pre-0.12 constraint fields: refused with the field that replaced them, because
/// silently ignoring them is how clients got unconstrained output (outlines#1887).
const RENAMED: &[(&str, &str)] = &[
    ("guided_json", "structured_outputs.json"),
    ("guided_regex", "structured_outputs.regex"),
    ("guided_choice", "structured_outputs.choice"),
    ("guided_grammar", "structured_outputs.grammar"),
    (
        "guided_decoding_backend",
        "nothing (Metrum has one backend, llguidance)",
    ),
    ("guided_whitespace_pattern", "nothing (not supported)"),
];

/// OpenAI toggles accepted at the value that asks for nothing.
fn is_no_op(key: &str, value: &Value) -> bool {
    match key {
        "echo" | "store" => *value == Value::Bool(false),
        "best_of" => value.as_u64() == Some(1),
        _ => false,
    }
}

/// The field names a derived `Deserialize` struct reads (its `deserialize_struct` list).
/// Works for any `#[derive(Deserialize)]` struct without `flatten`; anything else yields `&[]`.
pub fn serde_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut capture = FieldCapture(&[]);
    let _ = T::deserialize(&mut capture);
    capture.0
}

/// A deserializer that only records the field list a struct asks for, then fails.
struct FieldCapture(&'static [&'static str]);

impl<'de> Deserializer<'de> for &mut FieldCapture {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field capture"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = fields;
        Err(de::Error::custom("field capture"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Checks every key of `body` against `allowed` (the endpoint's wire types' fields), and the
/// nested objects whose shapes Metrum knows (chat messages, content parts, `stream_options`).
pub fn check_body(body: &Value, allowed: &[&[&str]]) -> Result<(), ApiError> {
    let Value::Object(map) = body else {
        return Ok(()); // the typed parse reports a non-object body
    };
    check_keys(map, "", allowed)?;
    if let Some(Value::Array(messages)) = map.get("messages") {
        let message_fields = serde_fields::<ChatMessage>();
        let part_fields = serde_fields::<ContentPart>();
        for (i, message) in messages.iter().enumerate() {
            let Value::Object(message) = message else {
                continue;
            };
            let path = format!("messages[{i}].");
            check_keys(message, &path, &[message_fields])?;
            if let Some(Value::Array(parts)) = message.get("content") {
                for (j, part) in parts.iter().enumerate() {
                    if let Value::Object(part) = part {
                        // Non-text parts are refused by type in `chat::validate_messages`,
                        // which says so better than "unknown field `image_url`".
                        if part.get("type").and_then(Value::as_str) == Some("text") {
                            let path = format!("messages[{i}].content[{j}].");
                            check_keys(part, &path, &[part_fields])?;
                        }
                    }
                }
            }
        }
    }
    if let Some(Value::Object(options)) = map.get("stream_options") {
        check_keys(
            options,
            "stream_options.",
            &[serde_fields::<StreamOptions>()],
        )?;
    }
    Ok(())
}

/// Checks one object's keys; `prefix` is its path (`messages[0].`) for the error's `param`.
pub fn check_keys(
    map: &serde_json::Map<String, Value>,
    prefix: &str,
    allowed: &[&[&str]],
) -> Result<(), ApiError> {
    for (key, value) in map {
        if value.is_null() || allowed.iter().any(|fields| fields.contains(&key.as_str())) {
            continue;
        }
        if prefix.is_empty() && is_no_op(key, value) {
            continue;
        }
        let param = format!("{prefix}{key}");
        let unsupported = UNSUPPORTED.iter().find(|(name, _)| name == key);
        let renamed = RENAMED.iter().find(|(name, _)| name == key);
        let (message, code) = match (prefix.is_empty(), unsupported, renamed) {
            (true, Some((_, why)), _) => (
                format!("`{param}` is not supported by this server: {why}"),
                "unsupported_parameter",
            ),
            (true, _, Some((_, instead))) => (
                format!(
                    "`{param}` was removed from vLLM's API and is not supported; use {instead}"
                ),
                "unsupported_parameter",
            ),
            _ => (
                format!(
                    "unrecognized request field `{param}`; this server refuses fields it does \
                     not implement instead of ignoring them (docs/api.md lists the accepted ones)"
                ),
                "unknown_parameter",
            ),
        };
        return Err(ApiError::BadRequest {
            message,
            param: Some(param),
            code: Some(code),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{ChatRequest, SamplingFields};
    use serde_json::json;

    fn chat_fields() -> Vec<&'static [&'static str]> {
        vec![
            serde_fields::<ChatRequest>(),
            serde_fields::<SamplingFields>(),
        ]
    }

    fn refused(body: Value) -> (String, &'static str) {
        match check_body(&body, &chat_fields()) {
            Err(ApiError::BadRequest {
                param: Some(p),
                code: Some(c),
                ..
            }) => (p, c),
            other => panic!("expected a 400 naming a field for {body}, got {other:?}"),
        }
    }

    #[test]
    fn serde_field_lists_come_from_the_derives() {
        let fields = serde_fields::<SamplingFields>();
        assert!(fields.contains(&"max_tokens") && fields.contains(&"stream_options"));
        assert!(serde_fields::<ChatRequest>().contains(&"messages"));
        assert!(serde_fields::<u32>().is_empty());
    }

    #[test]
    fn known_fields_nulls_and_no_op_toggles_pass() {
        let body = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
            "max_tokens": 3, "top_k": 5, "echo": false, "store": false, "best_of": 1,
            "audio": null, "stream_options": {"include_usage": true}});
        check_body(&body, &chat_fields()).unwrap();
    }

    #[test]
    fn unimplemented_and_unknown_fields_are_named() {
        let base = || json!({"messages": [{"role": "user", "content": "x"}]});
        let with = |key: &str, value: Value| {
            let mut body = base();
            body[key] = value;
            body
        };
        assert_eq!(
            refused(with("audio", json!({}))),
            ("audio".into(), "unsupported_parameter")
        );
        assert_eq!(
            refused(with("echo", json!(true))),
            ("echo".into(), "unsupported_parameter")
        );
        assert_eq!(
            refused(with("best_of", json!(2))),
            ("best_of".into(), "unsupported_parameter")
        );
        assert_eq!(
            refused(with("guided_json", json!({}))),
            ("guided_json".into(), "unsupported_parameter")
        );
        assert_eq!(
            refused(with("temprature", json!(1))),
            ("temprature".into(), "unknown_parameter")
        );
        let mut body = base();
        body["messages"][0]["cache_control"] = json!({});
        assert_eq!(refused(body).0, "messages[0].cache_control");
        let body = json!({"messages": [{"role": "user",
            "content": [{"type": "text", "text": "x", "extra": 1}]}]});
        assert_eq!(refused(body).0, "messages[0].content[0].extra");
        let body = json!({"messages": [], "stream_options": {"include_obfuscation": true}});
        assert_eq!(refused(body).0, "stream_options.include_obfuscation");
    }
}
