//! `--speculative-config`: vLLM's JSON, validated at start-up with errors that name the field.
//! A draft model's own checks (vocabulary and size against the target's) need both models
//! loaded: `super::draft_model::check_compatible`.

use serde::Serialize;
use serde_json::{Map, Value};

/// The most drafts per step accepted. Each draft adds a row through attention and the LM head
/// to every verification step; past a handful the chance that all stand is tiny (acceptance
/// compounds per position), so a larger value is a mistake, not a tuning.
pub const MAX_SPECULATIVE_TOKENS: usize = 16;

/// How drafts are proposed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum SpeculativeMethod {
    /// Prompt lookup: the tokens that followed an earlier occurrence of the last n-gram,
    /// `n` from `prompt_lookup_max` down to `prompt_lookup_min`.
    Ngram {
        prompt_lookup_min: usize,
        prompt_lookup_max: usize,
    },
    /// A smaller model of the same tokenizer proposes greedily (`draft_model`); `model` is
    /// any `--model` form, resolved and checked against the target when the engine loads.
    DraftModel { model: String },
}

/// A validated speculative configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SpeculativeConfig {
    pub method: SpeculativeMethod,
    /// `K`: draft tokens per verification step, 1..=[`MAX_SPECULATIVE_TOKENS`].
    pub num_speculative_tokens: usize,
}

impl SpeculativeConfig {
    /// Parses vLLM's form, e.g. `{"method": "ngram", "num_speculative_tokens": 4,
    /// "prompt_lookup_min": 1, "prompt_lookup_max": 3}`. A missing lookup bound takes the
    /// other's value (vLLM's rule); with neither, the window is 1..=5. Every error names the
    /// field.
    pub fn parse(json: &str) -> Result<SpeculativeConfig, String> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| format!("--speculative-config is not valid JSON: {e}"))?;
        let Value::Object(fields) = value else {
            return Err("--speculative-config must be a JSON object".into());
        };
        let method = match fields.get("method") {
            Some(Value::String(m)) => m.as_str(),
            Some(_) => return Err("--speculative-config: `method` must be a string".into()),
            None => {
                return Err(
                    "--speculative-config: `method` is required (\"ngram\" or \"draft_model\")"
                        .into(),
                );
            }
        };
        let allowed: &[&str] = match method {
            "ngram" => &[
                "method",
                "num_speculative_tokens",
                "prompt_lookup_min",
                "prompt_lookup_max",
            ],
            "draft_model" => &["method", "num_speculative_tokens", "model"],
            other => {
                return Err(format!(
                    "--speculative-config: unknown `method` {other:?} (supported: \"ngram\", \
                     \"draft_model\")"
                ));
            }
        };
        if let Some(unknown) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "--speculative-config: unknown field `{unknown}` for method {method:?}"
            ));
        }
        let k = count(&fields, "num_speculative_tokens")?
            .ok_or("--speculative-config: `num_speculative_tokens` is required")?;
        if !(1..=MAX_SPECULATIVE_TOKENS).contains(&k) {
            return Err(format!(
                "--speculative-config: `num_speculative_tokens` must be in 1..={MAX_SPECULATIVE_TOKENS}, got {k}"
            ));
        }
        if method == "draft_model" {
            let model = match fields.get("model") {
                Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
                Some(_) => {
                    return Err("--speculative-config: `model` must be a non-empty string \
                                (any --model form)"
                        .into());
                }
                None => {
                    return Err(
                        "--speculative-config: `model` is required for method \"draft_model\""
                            .into(),
                    );
                }
            };
            return Ok(SpeculativeConfig {
                method: SpeculativeMethod::DraftModel { model },
                num_speculative_tokens: k,
            });
        }
        let (min, max) = match (
            count(&fields, "prompt_lookup_min")?,
            count(&fields, "prompt_lookup_max")?,
        ) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) => (a, a),
            (None, Some(b)) => (b, b),
            (None, None) => (1, 5),
        };
        if min == 0 {
            return Err("--speculative-config: `prompt_lookup_min` must be at least 1".into());
        }
        if min > max {
            return Err(format!(
                "--speculative-config: `prompt_lookup_min` ({min}) must not exceed `prompt_lookup_max` ({max})"
            ));
        }
        Ok(SpeculativeConfig {
            method: SpeculativeMethod::Ngram {
                prompt_lookup_min: min,
                prompt_lookup_max: max,
            },
            num_speculative_tokens: k,
        })
    }
}

/// A non-negative integer field, if present.
fn count(fields: &Map<String, Value>, name: &str) -> Result<Option<usize>, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            format!("--speculative-config: `{name}` must be a non-negative integer")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{SpeculativeConfig, SpeculativeMethod};

    #[test]
    fn parses_vllms_ngram_form() {
        let c = SpeculativeConfig::parse(
            r#"{"method":"ngram","num_speculative_tokens":4,"prompt_lookup_min":2,"prompt_lookup_max":3}"#,
        )
        .unwrap();
        assert_eq!(c.num_speculative_tokens, 4);
        assert_eq!(
            c.method,
            SpeculativeMethod::Ngram {
                prompt_lookup_min: 2,
                prompt_lookup_max: 3
            }
        );
    }

    #[test]
    fn parses_vllms_draft_model_form() {
        let c = SpeculativeConfig::parse(
            r#"{"method":"draft_model","model":"synthetic:tiny","num_speculative_tokens":3}"#,
        )
        .unwrap();
        assert_eq!(c.num_speculative_tokens, 3);
        assert_eq!(
            c.method,
            SpeculativeMethod::DraftModel {
                model: "synthetic:tiny".into()
            }
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (json, field) in [
            (
                r#"{"method":"ngram","num_speculative_tokens":0}"#,
                "num_speculative_tokens",
            ),
            (
                r#"{"method":"ngram","num_speculative_tokens":1000}"#,
                "num_speculative_tokens",
            ),
            (r#"{"method":"ngram"}"#, "num_speculative_tokens"),
            (r#"{"num_speculative_tokens":2}"#, "method"),
            (
                r#"{"method":"medusa","num_speculative_tokens":2}"#,
                "method",
            ),
            (
                r#"{"method":"ngram","num_speculative_tokens":2,"prompt_lookup_min":4,"prompt_lookup_max":2}"#,
                "prompt_lookup_min",
            ),
            (
                r#"{"method":"ngram","num_speculative_tokens":2,"prompt_lookup_min":0}"#,
                "prompt_lookup_min",
            ),
            (
                r#"{"method":"ngram","num_speculative_tokens":2,"lookup":3}"#,
                "lookup",
            ),
            (
                r#"{"method":"ngram","num_speculative_tokens":-1}"#,
                "num_speculative_tokens",
            ),
        ] {
            let err = SpeculativeConfig::parse(json).unwrap_err();
            assert!(err.contains(&format!("`{field}`")), "{json}: {err}");
        }
        for (json, field) in [
            (
                r#"{"method":"draft_model","num_speculative_tokens":2}"#,
                "model",
            ),
            (
                r#"{"method":"draft_model","model":"","num_speculative_tokens":2}"#,
                "model",
            ),
            (
                r#"{"method":"draft_model","model":3,"num_speculative_tokens":2}"#,
                "model",
            ),
            (
                r#"{"method":"draft_model","model":"m","num_speculative_tokens":0}"#,
                "num_speculative_tokens",
            ),
            (
                r#"{"method":"draft_model","model":"m","num_speculative_tokens":17}"#,
                "num_speculative_tokens",
            ),
            (
                r#"{"method":"draft_model","model":"m","num_speculative_tokens":2,"prompt_lookup_max":3}"#,
                "prompt_lookup_max",
            ),
        ] {
            let err = SpeculativeConfig::parse(json).unwrap_err();
            assert!(err.contains(&format!("`{field}`")), "{json}: {err}");
        }
        assert!(SpeculativeConfig::parse("[1]").is_err());
        assert!(SpeculativeConfig::parse("{").is_err());
    }
}
