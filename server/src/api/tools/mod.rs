//! Tool calling on `/v1/chat/completions` (issue 15).
//!
//! | piece | what |
//! | --- | --- |
//! | [`plan`] | checks `tools`, `tool_choice`, `parallel_tool_calls` into a [`ToolPlan`] |
//! | [`ToolPlan::constraint`] | `required` / named choices: a Lark grammar over the format's call syntax, each call's JSON fixed by the tool's parameters schema |
//! | [`parsers`] | the formats (hermes, llama3_json, mistral, pythonic): whole and streaming |
//! | [`history`] | assistant `tool_calls` and `tool` turns -> what templates expect |
//!
//! The format comes from the chat template's own syntax, or `--tool-call-parser`. With
//! `tool_choice: none` the tools are still shown to the template (as vLLM does by default) and
//! the output is never parsed; with `auto` the model chooses and the parser extracts calls.

pub mod parsers;

use super::structured::Constraint;
use super::types::{ChatMessage, Tool, ToolCallOut};
use crate::error::ApiError;
use metrum_engine::structured::ConstraintSpec;
use parsers::{ParsedCall, ToolFormat};
use serde_json::{Value, json};

/// How the model may use the tools.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A request's validated tool settings.
#[derive(Clone, Debug)]
pub struct ToolPlan {
    pub tools: Vec<Tool>,
    pub choice: Choice,
    pub parallel: bool,
    pub format: ToolFormat,
}

/// `None` when the request has no tools (an empty list counts as none; `tool_choice` then must
/// be absent or `none`/`auto`).
pub fn plan(
    tools: Option<&[Tool]>,
    tool_choice: Option<&Value>,
    parallel: Option<bool>,
    format: ToolFormat,
) -> Result<Option<ToolPlan>, ApiError> {
    let tools = tools.unwrap_or_default();
    for (i, tool) in tools.iter().enumerate() {
        if tool.kind != "function" {
            return Err(ApiError::param(
                format!("tools[{i}].type"),
                format!("only `function` tools exist, got `{}`", tool.kind),
            ));
        }
        let name = &tool.function.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ApiError::param(
                format!("tools[{i}].function.name"),
                "must be 1-64 characters of a-z, A-Z, 0-9, `_` or `-` (OpenAI's rule)",
            ));
        }
        if tools[..i].iter().any(|t| &t.function.name == name) {
            return Err(ApiError::param(
                format!("tools[{i}].function.name"),
                format!("`{name}` is defined twice"),
            ));
        }
        if let Some(p) = &tool.function.parameters
            && !p.is_object()
        {
            return Err(ApiError::param(
                format!("tools[{i}].function.parameters"),
                "must be a JSON Schema object",
            ));
        }
    }
    let choice = match tool_choice {
        None | Some(Value::Null) => {
            if tools.is_empty() {
                Choice::None
            } else {
                Choice::Auto
            }
        }
        Some(Value::String(mode)) => match mode.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => {
                return Err(ApiError::param(
                    "tool_choice",
                    format!(
                        "expected `none`, `auto`, `required` or a named function, got `{other}`"
                    ),
                ));
            }
        },
        Some(named) => {
            let name = named
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| named.get("type").and_then(Value::as_str) == Some("function"));
            let Some(name) = name else {
                return Err(ApiError::param(
                    "tool_choice",
                    "expected `{\"type\": \"function\", \"function\": {\"name\": ...}}`",
                ));
            };
            Choice::Named(name.to_string())
        }
    };
    if tools.is_empty() {
        return match choice {
            Choice::None | Choice::Auto => Ok(None),
            _ => Err(ApiError::param(
                "tool_choice",
                "`required` and named choices need a non-empty `tools` list",
            )),
        };
    }
    if let Choice::Named(name) = &choice
        && !tools.iter().any(|t| &t.function.name == name)
    {
        return Err(ApiError::param(
            "tool_choice",
            format!("no tool named `{name}` in `tools`"),
        ));
    }
    Ok(Some(ToolPlan {
        tools: tools.to_vec(),
        choice,
        parallel: parallel.unwrap_or(true),
        format,
    }))
}

impl ToolPlan {
    /// The tools as the chat template receives them (`tools`), OpenAI's own shape.
    pub fn template_tools(&self) -> Value {
        serde_json::to_value(&self.tools).unwrap_or(Value::Null)
    }

    /// Whether replies are parsed for calls.
    pub fn parses(&self) -> bool {
        self.choice != Choice::None
    }

    /// The grammar that forces calls under `required` and named choices.
    pub fn constraint(&self) -> Result<Option<Constraint>, ApiError> {
        let allowed: Vec<&Tool> = match &self.choice {
            Choice::None | Choice::Auto => return Ok(None),
            Choice::Required => self.tools.iter().collect(),
            Choice::Named(name) => self
                .tools
                .iter()
                .filter(|t| &t.function.name == name)
                .collect(),
        };
        let args_key = match self.format {
            ToolFormat::Llama3Json => "parameters",
            _ => "arguments",
        };
        let bodies: Vec<Value> = allowed
            .iter()
            .map(|t| {
                let params = t
                    .function
                    .parameters
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object"}));
                json!({
                    "type": "object",
                    "properties": {"name": {"const": t.function.name}, args_key: params},
                    "required": ["name", args_key],
                    "additionalProperties": false,
                })
            })
            .collect();
        let mut schema = if bodies.len() == 1 {
            bodies[0].clone()
        } else {
            json!({ "anyOf": bodies })
        };
        schema["x-guidance"] = json!({"whitespace_flexible": false});
        let body = format!("%json {schema}");
        // A named choice is one call to that function (OpenAI's meaning); `required` may make
        // several unless `parallel_tool_calls` is false.
        let several = self.parallel && self.choice == Choice::Required;
        let many = |one: &str, sep: &str| {
            if several {
                format!("{one} ({sep} {one})*")
            } else {
                one.to_string()
            }
        };
        let grammar = match self.format {
            ToolFormat::Hermes => format!(
                "start: {}\ncall: \"<tool_call>\\n\" {body} \"\\n</tool_call>\"\n",
                many("call", "\"\\n\"")
            ),
            ToolFormat::Llama3Json => format!("start: {}\ncall: {body}\n", many("call", "\"; \"")),
            ToolFormat::Mistral => format!(
                "start: \"[TOOL_CALLS][\" {} \"]\"\ncall: {body}\n",
                many("call", "\", \"")
            ),
            ToolFormat::Pythonic => {
                return Err(ApiError::param(
                    "tool_choice",
                    "`required` and named choices are not supported with the pythonic tool-call \
                     format; use `auto`",
                ));
            }
        };
        Ok(Some(Constraint {
            spec: ConstraintSpec::Lark(grammar),
            param: "tool_choice".into(),
        }))
    }
}

/// Wire calls with fresh ids (`call_` + 24 random alphanumerics, OpenAI's shape).
pub fn calls_out(calls: Vec<ParsedCall>) -> Vec<ToolCallOut> {
    calls
        .into_iter()
        .map(|c| ToolCallOut {
            id: call_id(),
            kind: "function",
            function: super::types::FunctionCall {
                name: c.name,
                arguments: c.arguments,
            },
        })
        .collect()
}

pub fn call_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..24)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("call_{tail}")
}

pub mod history {
    //! The conversation's tool turns, checked and shaped for templates.

    use super::*;

    /// Assistant `tool_calls` as Hugging Face templates expect them: `arguments` an object,
    /// not JSON text (vLLM's `_postprocess_messages` does the same). Bad JSON is a 400.
    pub fn template_tool_calls(i: usize, message: &ChatMessage) -> Result<Option<Value>, ApiError> {
        let Some(calls) = &message.tool_calls else {
            return Ok(None);
        };
        if message.role != "assistant" {
            return Err(ApiError::param(
                format!("messages[{i}].tool_calls"),
                "only assistant messages carry tool calls",
            ));
        }
        if calls.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(calls.len());
        for (j, call) in calls.iter().enumerate() {
            let arguments: Value = serde_json::from_str(&call.function.arguments).map_err(|e| {
                ApiError::param(
                    format!("messages[{i}].tool_calls[{j}].function.arguments"),
                    format!("must be JSON text: {e}"),
                )
            })?;
            out.push(json!({
                "id": call.id,
                "type": call.kind,
                "function": {"name": call.function.name, "arguments": arguments},
            }));
        }
        Ok(Some(Value::Array(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::extract::parse_json;

    fn tools() -> Vec<Tool> {
        parse_json(
            br#"[{"type": "function", "function": {"name": "get_weather",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]}}},
                 {"type": "function", "function": {"name": "get_time"}}]"#,
        )
        .unwrap()
    }

    fn param(r: Result<Option<ToolPlan>, ApiError>) -> String {
        match r {
            Err(ApiError::BadRequest { param, .. }) => param.unwrap_or_default(),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn choices_parse_and_bad_ones_are_named() {
        let t = tools();
        let hermes = ToolFormat::Hermes;
        let p = plan(Some(&t), None, None, hermes).unwrap().unwrap();
        assert_eq!(p.choice, Choice::Auto);
        let named = json!({"type": "function", "function": {"name": "get_time"}});
        let p = plan(Some(&t), Some(&named), Some(false), hermes)
            .unwrap()
            .unwrap();
        assert_eq!(p.choice, Choice::Named("get_time".into()));
        assert!(!p.parallel);
        assert!(plan(None, None, None, hermes).unwrap().is_none());
        assert_eq!(
            param(plan(Some(&t), Some(&json!("sometimes")), None, hermes)),
            "tool_choice"
        );
        let missing = json!({"type": "function", "function": {"name": "nope"}});
        assert_eq!(
            param(plan(Some(&t), Some(&missing), None, hermes)),
            "tool_choice"
        );
        assert_eq!(
            param(plan(None, Some(&json!("required")), None, hermes)),
            "tool_choice"
        );
        let mut dup = tools();
        dup[1].function.name = "get_weather".into();
        assert_eq!(
            param(plan(Some(&dup), None, None, hermes)),
            "tools[1].function.name"
        );
    }

    #[test]
    fn required_and_named_choices_become_lark_grammars_per_format() {
        let t = tools();
        for format in [
            ToolFormat::Hermes,
            ToolFormat::Llama3Json,
            ToolFormat::Mistral,
        ] {
            let p = plan(Some(&t), Some(&json!("required")), None, format)
                .unwrap()
                .unwrap();
            let Some(Constraint {
                spec: ConstraintSpec::Lark(g),
                ..
            }) = p.constraint().unwrap()
            else {
                panic!("no grammar for {format:?}");
            };
            assert!(g.contains("get_weather") && g.contains("get_time"), "{g}");
        }
        let auto = plan(Some(&t), None, None, ToolFormat::Hermes)
            .unwrap()
            .unwrap();
        assert!(auto.constraint().unwrap().is_none());
        let pythonic = plan(
            Some(&t),
            Some(&json!("required")),
            None,
            ToolFormat::Pythonic,
        )
        .unwrap()
        .unwrap();
        assert!(pythonic.constraint().is_err());
    }

    #[test]
    fn call_ids_look_like_openai_ones() {
        let id = call_id();
        assert!(id.starts_with("call_") && id.len() == 29, "{id}");
        assert_ne!(call_id(), id);
    }
}
