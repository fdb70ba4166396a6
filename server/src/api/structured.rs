//! Structured outputs over the API: `response_format` and vLLM's `structured_outputs` become
//! one engine constraint, compiled off the async workers (docs/structured-outputs.md).
//!
//! * At most one constraint per request, across both fields; naming two is a 400.
//! * Payloads are bounded ([`crate::limits::MAX_CONSTRAINT_BYTES`]) before any compile work.
//! * The grammar compiler is built once per model, on first use, on the blocking pool (the
//!   token trie takes tens of milliseconds); compiles also run there, and their results are
//!   cached by the engine's compiler, keyed by the constraint.
//! * A schema llguidance cannot honour, or an invalid one, is a 400 with its message: a
//!   constraint is never weakened or dropped.

use super::AppState;
use super::reasoning::ReasoningParser;
use super::types::{ResponseFormat, SamplingFields, StructuredOutputs};
use crate::error::ApiError;
use crate::limits::MAX_CONSTRAINT_BYTES;
use metrum_engine::EngineError;
use metrum_engine::structured::reasoning::{ReasoningGate, ReplyStart};
use metrum_engine::structured::{CompiledGrammar, ConstraintSpec, GrammarCompiler, GrammarMatcher};
use serde_json::Value;
use std::sync::{Arc, OnceLock};

/// The per-model compiler, built on first use (`Err`: the tokenizer cannot back a grammar).
pub type CompilerSlot = Arc<OnceLock<Result<Arc<GrammarCompiler>, String>>>;

/// A validated constraint and the field it came from (for error messages).
#[derive(Clone, Debug, PartialEq)]
pub struct Constraint {
    pub spec: ConstraintSpec,
    pub param: String,
}

/// The request's constraint, if any. Checks shapes, "one constraint", and the size limit.
pub fn constraint_of(fields: &SamplingFields) -> Result<Option<Constraint>, ApiError> {
    let mut found: Vec<Constraint> = Vec::new();
    match &fields.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => found.push(Constraint {
            spec: ConstraintSpec::JsonObject,
            param: "response_format".into(),
        }),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let param = "response_format.json_schema.schema";
            let schema = json_schema.schema.clone().unwrap_or(Value::Bool(true));
            found.push(Constraint {
                spec: ConstraintSpec::JsonSchema(schema_value(schema, param)?),
                param: param.into(),
            });
        }
    }
    if let Some(so) = &fields.structured_outputs {
        found.extend(structured_outputs(so)?);
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|c| c.param.as_str()).collect();
        return Err(ApiError::param(
            found[1].param.clone(),
            format!(
                "a request takes one constraint, got {}: {}",
                found.len(),
                names.join(", ")
            ),
        ));
    }
    let Some(constraint) = found.pop() else {
        if fields.structured_outputs.is_some() {
            return Err(ApiError::param(
                "structured_outputs",
                "set exactly one of `json`, `regex`, `choice`, `grammar` or `json_object: true`",
            ));
        }
        return Ok(None);
    };
    let size = payload_bytes(&constraint.spec);
    if size > MAX_CONSTRAINT_BYTES {
        return Err(ApiError::BadRequest {
            message: format!(
                "`{}`: the constraint is {size} bytes; this server accepts at most \
                 {MAX_CONSTRAINT_BYTES} bytes per constraint",
                constraint.param
            ),
            param: Some(constraint.param),
            code: Some("constraint_too_large"),
        });
    }
    Ok(Some(constraint))
}

fn structured_outputs(so: &StructuredOutputs) -> Result<Vec<Constraint>, ApiError> {
    let mut found = Vec::new();
    let mut push = |spec, param: &str| {
        found.push(Constraint {
            spec,
            param: param.into(),
        })
    };
    if let Some(json) = &so.json {
        let param = "structured_outputs.json";
        let schema = match json {
            // vLLM accepts the schema as JSON text too.
            Value::String(text) => serde_json::from_str(text).map_err(|e| {
                ApiError::param(param, format!("not a JSON Schema (invalid JSON text: {e})"))
            })?,
            other => other.clone(),
        };
        push(
            ConstraintSpec::JsonSchema(schema_value(schema, param)?),
            param,
        );
    }
    if let Some(regex) = &so.regex {
        push(
            ConstraintSpec::Regex(regex.clone()),
            "structured_outputs.regex",
        );
    }
    if let Some(choice) = &so.choice {
        if choice.is_empty() {
            return Err(ApiError::param(
                "structured_outputs.choice",
                "must list at least one string",
            ));
        }
        push(
            ConstraintSpec::Choice(choice.clone()),
            "structured_outputs.choice",
        );
    }
    if let Some(grammar) = &so.grammar {
        push(
            ConstraintSpec::Lark(grammar.clone()),
            "structured_outputs.grammar",
        );
    }
    if so.json_object == Some(true) {
        push(ConstraintSpec::JsonObject, "structured_outputs.json_object");
    }
    Ok(found)
}

/// A schema is an object (or `true`/`false`, JSON Schema's trivial schemas).
fn schema_value(schema: Value, param: &str) -> Result<Value, ApiError> {
    match schema {
        Value::Object(_) | Value::Bool(_) => Ok(schema),
        other => Err(ApiError::param(
            param,
            format!("a JSON Schema must be an object, got {other}"),
        )),
    }
}

fn payload_bytes(spec: &ConstraintSpec) -> usize {
    match spec {
        ConstraintSpec::JsonSchema(v) => v.to_string().len(),
        ConstraintSpec::JsonObject => 0,
        ConstraintSpec::Regex(text) | ConstraintSpec::Lark(text) => text.len(),
        ConstraintSpec::Choice(options) => options.iter().map(|o| o.len() + 1).sum(),
    }
}

/// A compiled constraint, and with a reasoning parser the block the grammar waits for.
#[derive(Clone, Debug)]
pub struct RequestConstraint {
    grammar: Arc<CompiledGrammar>,
    after_reasoning: Option<(Arc<ReasoningGate>, ReplyStart)>,
}

impl RequestConstraint {
    /// A fresh matcher for one choice.
    pub fn matcher(&self) -> Result<GrammarMatcher, EngineError> {
        let matcher = self.grammar.matcher()?;
        Ok(match &self.after_reasoning {
            Some((gate, start)) => matcher.after_reasoning(gate.clone(), *start),
            None => matcher,
        })
    }
}

/// Compiles `constraint` on the blocking pool (building the model's compiler first if this is
/// the first constrained request). Invalid or unsupported constraints are a 400. With
/// `reasoning`, the grammar applies after the reply's reasoning block; the gate's masks for
/// that reply start are computed here too, not on the engine thread.
pub async fn compile(
    state: &AppState,
    constraint: Option<Constraint>,
    reasoning: Option<(ReasoningParser, ReplyStart)>,
) -> Result<Option<RequestConstraint>, ApiError> {
    let Some(constraint) = constraint else {
        return Ok(None);
    };
    let slot = state.grammars.clone();
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || {
        let compiler = slot
            .get_or_init(|| {
                let codec = engine.text().ok_or("the model is still loading")?;
                let width = engine.model_info().map_or(0, |i| i.vocab_size);
                GrammarCompiler::new(&codec.tokenizer, width)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| {
                ApiError::param(
                    constraint.param.clone(),
                    format!("structured outputs are unavailable for this model's tokenizer: {e}"),
                )
            })?;
        let grammar = compiler
            .compile(&constraint.spec)
            .map_err(|e| ApiError::BadRequest {
                message: format!(
                    "`{}`: the constraint cannot be enforced: {e}",
                    constraint.param
                ),
                param: Some(constraint.param.clone()),
                code: Some("invalid_constraint"),
            })?;
        let after_reasoning = reasoning.map(|(parser, start)| {
            let gate = compiler.reasoning_gate(parser.tags());
            gate.prepare(start);
            (gate, start)
        });
        Ok(RequestConstraint {
            grammar,
            after_reasoning,
        })
    })
    .await
    .map_err(|e| ApiError::internal("-", format!("grammar compile task failed: {e}")))?
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::extract::parse_json;

    fn constraint(json: &str) -> Result<Option<Constraint>, ApiError> {
        constraint_of(&parse_json::<SamplingFields>(json.as_bytes()).unwrap())
    }

    fn param_of(json: &str) -> String {
        match constraint(json) {
            Err(ApiError::BadRequest { param, .. }) => param.unwrap_or_default(),
            other => panic!("expected a 400 for {json}, got {other:?}"),
        }
    }

    #[test]
    fn each_form_becomes_its_constraint() {
        let spec = |json: &str| constraint(json).unwrap().map(|c| c.spec);
        assert_eq!(spec(r#"{"response_format": {"type": "text"}}"#), None);
        assert_eq!(
            spec(r#"{"response_format": {"type": "json_object"}}"#),
            Some(ConstraintSpec::JsonObject)
        );
        assert_eq!(
            spec(
                r#"{"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}, "strict": true}}}"#
            ),
            Some(ConstraintSpec::JsonSchema(
                serde_json::json!({"type": "integer"})
            ))
        );
        assert_eq!(
            spec(r#"{"structured_outputs": {"json": "{\"type\": \"string\"}"}}"#),
            Some(ConstraintSpec::JsonSchema(
                serde_json::json!({"type": "string"})
            ))
        );
        assert_eq!(
            spec(r#"{"structured_outputs": {"choice": ["a", "b"]}}"#),
            Some(ConstraintSpec::Choice(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            spec(r#"{"structured_outputs": {"regex": "a+"}}"#),
            Some(ConstraintSpec::Regex("a+".into()))
        );
        assert_eq!(
            spec(r#"{"structured_outputs": {"grammar": "start: \"x\""}}"#),
            Some(ConstraintSpec::Lark("start: \"x\"".into()))
        );
        assert_eq!(
            spec(r#"{"structured_outputs": {"json_object": true}}"#),
            Some(ConstraintSpec::JsonObject)
        );
    }

    #[test]
    fn bad_constraints_name_their_field() {
        assert_eq!(
            param_of(r#"{"structured_outputs": {"regex": "a", "choice": ["b"]}}"#),
            "structured_outputs.choice"
        );
        assert_eq!(
            param_of(
                r#"{"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}"#
            ),
            "structured_outputs.regex"
        );
        // vLLM#45346: these crashed its engine.
        assert_eq!(
            param_of(r#"{"structured_outputs": {"json_object": false}}"#),
            "structured_outputs"
        );
        assert_eq!(
            param_of(r#"{"structured_outputs": {"json": ""}}"#),
            "structured_outputs.json"
        );
        assert_eq!(
            param_of(r#"{"structured_outputs": {"json": 5}}"#),
            "structured_outputs.json"
        );
        assert_eq!(
            param_of(r#"{"structured_outputs": {"choice": []}}"#),
            "structured_outputs.choice"
        );
        let huge = serde_json::json!({"structured_outputs": {"regex": "a".repeat(MAX_CONSTRAINT_BYTES + 1)}});
        assert_eq!(param_of(&huge.to_string()), "structured_outputs.regex");
        // Wrong shapes fail at parse time, with the field named.
        assert!(parse_json::<SamplingFields>(br#"{"response_format": {"type": "xml"}}"#).is_err());
        assert!(
            parse_json::<SamplingFields>(br#"{"structured_outputs": {"structural_tag": {}}}"#)
                .is_err()
        );
    }
}
