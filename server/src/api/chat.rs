//! `POST /v1/chat/completions`: messages in, rendered through the model's chat template,
//! assistant replies out, streamed or not. With `tools`, replies are parsed for calls in the
//! model's format (`tools`); streamed content is released as soon as it cannot be a call.
//! With `--reasoning-parser`, the reasoning block is split off first (`reasoning`) and only
//! the content after it is parsed for calls (and constrained).

use super::extract::SampledJson;
use super::generate::{self, ChunkWriter, Prelude};
use super::reasoning::{self, ReasoningParser, TextSplit};
use super::text::{self, Turn};
use super::tools::parsers::{self, StreamItem, StreamParser, ToolFormat};
use super::tools::{self, ToolPlan};
use super::types::{
    ChatChoice, ChatChunk, ChatChunkChoice, ChatDelta, ChatMessage, ChatMessageOut, ChatRequest,
    ChatResponse, MessageContent, Usage, unix_now,
};
use super::{AppState, RequestContext, logprobs, structured};
use crate::error::ApiError;
use crate::sse;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use metrum_core::FinishReason;
use metrum_core::sampling::MAX_LOGPROBS;
use metrum_engine::TextCodec;
use metrum_engine::handle::TokenLogprob;
use metrum_engine::structured::reasoning::{ReasoningSplitter, ReplyStart};
use std::sync::Arc;

/// Roles a chat template may see. `developer` is OpenAI's newer name for `system`.
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "generation",
    request_body = super::openapi::ChatBody,
    responses(
        (status = 200, description = "The reply (`stream: false`), or with `stream: true` a `text/event-stream` of `data: <ChatChunk>` events ending in `data: [DONE]`. In a stream, an error after the headers were sent is one `data: {\"error\": ...}` event followed by `data: [DONE]`",
            content((ChatResponse = "application/json"), (super::openapi::SseEvent = "text/event-stream"))),
        super::openapi::GenerationErrors,
    ),
    security((), ("api_key" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    SampledJson(request, sampling): SampledJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let prelude = Prelude::start(&state, request.model.as_deref())?;
    crate::limits::refuse_chat_template(request.chat_template.is_some())?;
    let turns = validate_messages(&request.messages)?;
    state
        .limits
        .check_prompt_bytes("messages", conversation_bytes(&turns))?;
    let top_logprobs = logprob_count(request.logprobs, request.top_logprobs)?;
    let plan = prelude.plan(&sampling, top_logprobs)?;
    prelude.check_output_tokens(&plan, 1)?;
    let codec = text::codec(&state)?;
    let format = state.tool_format.unwrap_or_else(|| {
        ToolFormat::from_template(codec.chat_template.as_ref().map_or("", |t| t.source()))
    });
    let tool_plan = tools::plan(
        request.tools.as_deref(),
        request.tool_choice.as_ref(),
        request.parallel_tool_calls,
        format,
    )?;
    let mut constraint = structured::constraint_of(&sampling)?;
    if let Some(forced) = tool_plan
        .as_ref()
        .map(ToolPlan::constraint)
        .transpose()?
        .flatten()
    {
        if let Some(other) = &constraint {
            return Err(ApiError::param(
                "tool_choice",
                format!(
                    "`required` and named tool choices are enforced by a grammar, which cannot \
                     be combined with `{}`",
                    other.param
                ),
            ));
        }
        constraint = Some(forced);
    }
    let permit = prelude.admit(&plan, 1)?;
    let add_generation_prompt = request.add_generation_prompt.unwrap_or(true);
    let template_tools = tool_plan.as_ref().map(ToolPlan::template_tools);
    let (prompt, rendered) =
        text::encode_chat(codec.clone(), turns, add_generation_prompt, template_tools).await?;
    // Where the reply starts depends on the rendered prompt (an open `<think>` at its end).
    let reasoning = state
        .reasoning_parser
        .map(|p| (p, p.reply_start(&rendered)));
    let constraint = structured::compile(&state, constraint, reasoning).await?;
    let parser = tool_plan.filter(ToolPlan::parses).map(|p| p.format);
    let batch = prelude
        .submit(&ctx, vec![prompt], &plan, permit, constraint)
        .await?;
    let writer = ChatChunks {
        id: format!("chatcmpl-{}", ctx.id),
        created: unix_now(),
        model: prelude.model.clone(),
        codec,
        top: top_logprobs.unwrap_or(0) as usize,
        parser,
        reasoning,
        streams: Vec::new(),
    };
    generate::answer(batch, ctx, &plan, writer, |writer, whole| {
        let choices = whole
            .outputs
            .into_iter()
            .map(|o| {
                let (message, finish_reason) = reply(parser, reasoning, o.text, o.finish);
                ChatChoice {
                    index: o.choice,
                    logprobs: top_logprobs.map(|_| writer.logprobs(&o.logprobs)),
                    message,
                    finish_reason: Some(finish_reason),
                    metrum: o.timing,
                }
            })
            .collect();
        ChatResponse {
            id: writer.id,
            object: "chat.completion",
            created: writer.created,
            model: writer.model,
            choices,
            usage: Some(whole.usage),
            metrum: whole.metrum,
        }
    })
    .await
}

/// A finished reply: its reasoning block split off (with a reasoning parser), the rest parsed
/// for tool calls when the request had tools (`finish_reason` is then `tool_calls`, OpenAI's
/// spelling, unless the output was cut short).
fn reply(
    parser: Option<ToolFormat>,
    reasoning: Option<(ReasoningParser, ReplyStart)>,
    text: String,
    finish: FinishReason,
) -> (ChatMessageOut, &'static str) {
    let (reasoning_content, text) = match reasoning {
        Some((parser, start)) => reasoning::split_whole(parser, start, &text),
        None => (None, text),
    };
    let parsed = match parser {
        Some(format) => tools::parsers::parse(format, &text),
        None => tools::parsers::Parsed {
            content: text,
            calls: Vec::new(),
        },
    };
    if parsed.calls.is_empty() {
        // A reply that is all reasoning (cut inside the block) has no content.
        let only_reasoning = reasoning_content.is_some() && parsed.content.is_empty();
        let message = ChatMessageOut {
            role: "assistant",
            content: (!only_reasoning).then_some(parsed.content),
            reasoning_content,
            tool_calls: None,
        };
        return (message, finish.as_str());
    }
    let message = ChatMessageOut {
        role: "assistant",
        content: (!parsed.content.is_empty()).then_some(parsed.content),
        reasoning_content,
        tool_calls: Some(tools::calls_out(parsed.calls)),
    };
    let reason = match finish {
        FinishReason::Stop => "tool_calls",
        other => other.as_str(),
    };
    (message, reason)
}

/// Checks roles and flattens content parts; the template sees plain `(role, text)` turns.
pub fn validate_messages(messages: &[ChatMessage]) -> Result<Vec<Turn>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::param(
            "messages",
            "at least one message is required",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, message)| {
            if !ROLES.contains(&message.role.as_str()) {
                return Err(ApiError::param(
                    format!("messages[{i}].role"),
                    format!(
                        "unknown role `{}`; expected one of {}",
                        message.role,
                        ROLES.join(", ")
                    ),
                ));
            }
            let content = match &message.content {
                None => String::new(),
                Some(MessageContent::Text(text)) => text.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.iter().enumerate() {
                        match (part.kind.as_str(), &part.text) {
                            ("text", Some(t)) => text.push_str(t),
                            _ => {
                                return Err(ApiError::param(
                                    format!("messages[{i}].content[{j}]"),
                                    "only text content parts are supported",
                                ));
                            }
                        }
                    }
                    text
                }
            };
            if message.tool_call_id.is_some() && message.role != "tool" {
                return Err(ApiError::param(
                    format!("messages[{i}].tool_call_id"),
                    "only `tool` messages answer a tool call",
                ));
            }
            Ok(Turn {
                role: message.role.clone(),
                content,
                name: message.name.clone(),
                tool_calls: tools::history::template_tool_calls(i, message)?,
                tool_call_id: message.tool_call_id.clone(),
            })
        })
        .collect()
}

/// The text a conversation hands the template and the tokenizer, in bytes.
pub fn conversation_bytes(turns: &[Turn]) -> usize {
    turns
        .iter()
        .map(|t| {
            t.role.len()
                + t.content.len()
                + t.name.as_ref().map_or(0, String::len)
                + t.tool_calls.as_ref().map_or(0, |c| c.to_string().len())
                + t.tool_call_id.as_ref().map_or(0, String::len)
        })
        .sum()
}

/// OpenAI's chat rules: `top_logprobs` needs `logprobs: true` and is at most 20.
fn logprob_count(logprobs: Option<bool>, top: Option<u64>) -> Result<Option<u64>, ApiError> {
    match (logprobs.unwrap_or(false), top) {
        (_, Some(k)) if k > MAX_LOGPROBS as u64 => Err(ApiError::param(
            "top_logprobs",
            format!("must be in [0, {MAX_LOGPROBS}], got {k}"),
        )),
        (false, Some(k)) if k > 0 => Err(ApiError::param(
            "top_logprobs",
            "requires `logprobs` to be true",
        )),
        (true, top) => Ok(Some(top.unwrap_or(0))),
        (false, _) => Ok(None),
    }
}

/// Spells stream chunks the chat way.
struct ChatChunks {
    id: String,
    created: u64,
    model: String,
    codec: Arc<TextCodec>,
    top: usize,
    /// The tool-call format when replies are parsed for calls.
    parser: Option<ToolFormat>,
    /// The reasoning parser and where replies start, with `--reasoning-parser`.
    reasoning: Option<(ReasoningParser, ReplyStart)>,
    /// Per choice: what splits and parses its text.
    streams: Vec<ChoiceStream>,
}

/// One streamed choice's parsers: reasoning first, then tool calls in the content.
struct ChoiceStream {
    splitter: Option<ReasoningSplitter>,
    tools: Option<StreamParser>,
    /// Calls sent so far (the next call's `index`).
    calls_sent: usize,
}

impl ChoiceStream {
    /// The deltas for the next piece of text: reasoning, then content and calls.
    fn push(&mut self, text: String) -> Vec<ChatDelta> {
        let split = match self.splitter.as_mut() {
            Some(splitter) => reasoning::push(splitter, &text),
            None => TextSplit {
                reasoning: String::new(),
                content: text,
            },
        };
        let items = match self.tools.as_mut() {
            Some(tools) => tools.push(&split.content),
            None => parsers::content_items(split.content),
        };
        self.deltas(split.reasoning, items)
    }

    /// The reply ended: what the parsers held (an unclosed reasoning block is all reasoning;
    /// pythonic calls come whole here).
    fn finish(&mut self) -> Vec<ChatDelta> {
        let tail = self
            .splitter
            .as_mut()
            .map(reasoning::finish)
            .unwrap_or_default();
        let items = match self.tools.as_mut() {
            Some(tools) => {
                let mut items = tools.push(&tail.content);
                items.extend(tools.finish());
                items
            }
            None => parsers::content_items(tail.content),
        };
        self.deltas(tail.reasoning, items)
    }

    /// Reasoning first, then the items in order: adjacent content (or adjacent fragments of
    /// one call's arguments) share a delta; a call's first delta carries its `id`, `type`
    /// and `name`, later ones only `index` and an arguments fragment.
    fn deltas(&mut self, reasoning: String, items: Vec<StreamItem>) -> Vec<ChatDelta> {
        let mut deltas: Vec<ChatDelta> = Vec::new();
        if !reasoning.is_empty() {
            deltas.push(ChatDelta {
                reasoning_content: Some(reasoning),
                ..ChatDelta::default()
            });
        }
        for item in items {
            let last = deltas.last_mut();
            match item {
                StreamItem::Content(text) => match last {
                    Some(ChatDelta {
                        content: Some(held),
                        ..
                    }) => held.push_str(&text),
                    _ => deltas.push(ChatDelta {
                        content: Some(text),
                        ..ChatDelta::default()
                    }),
                },
                StreamItem::CallStart { name } => {
                    self.calls_sent += 1;
                    deltas.push(call_delta(self.calls_sent - 1, Some(name), String::new()));
                }
                StreamItem::Arguments(fragment) => {
                    let index = self.calls_sent.saturating_sub(1);
                    let merged = last
                        .and_then(|d| d.tool_calls.as_mut())
                        .and_then(|calls| calls.last_mut())
                        .filter(|call| call.index == index && call.function.name.is_none())
                        .and_then(|call| call.function.arguments.as_mut())
                        .map(|arguments| arguments.push_str(&fragment));
                    if merged.is_none() {
                        deltas.push(call_delta(index, None, fragment));
                    }
                }
                StreamItem::Call(call) => {
                    self.calls_sent += 1;
                    let index = self.calls_sent - 1;
                    deltas.push(call_delta(index, Some(call.name), String::new()));
                    deltas.push(call_delta(index, None, call.arguments));
                }
            }
        }
        deltas
    }
}

impl ChatChunks {
    fn logprobs(&self, entries: &[TokenLogprob]) -> super::types::ChatLogprobs {
        logprobs::chat(entries, self.top, &|t| text::token_text(&self.codec, t))
    }

    fn chunk(
        &self,
        choices: Vec<ChatChunkChoice>,
        usage: Option<Usage>,
        metrum: Option<serde_json::Value>,
    ) -> Bytes {
        sse::data_event(&ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            metrum,
        })
    }
}

impl ChunkWriter for ChatChunks {
    fn opening(&mut self, choices: usize) -> Vec<Bytes> {
        self.streams = (0..choices)
            .map(|_| ChoiceStream {
                splitter: self.reasoning.map(|(parser, start)| parser.splitter(start)),
                tools: self.parser.map(StreamParser::new),
                calls_sent: 0,
            })
            .collect();
        (0..choices)
            .map(|index| {
                let delta = ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    ..ChatDelta::default()
                };
                let choice = ChatChunkChoice {
                    index,
                    delta,
                    logprobs: None,
                    finish_reason: None,
                };
                self.chunk(vec![choice], None, None)
            })
            .collect()
    }

    fn delta(&mut self, choice: usize, text: String, entries: &[TokenLogprob]) -> Option<Bytes> {
        let mut deltas = match self.streams.get_mut(choice) {
            Some(stream) => stream.push(text),
            None => vec![ChatDelta {
                content: Some(text),
                ..ChatDelta::default()
            }],
        };
        if deltas.is_empty() {
            if entries.is_empty() {
                return None;
            }
            deltas.push(ChatDelta::default());
        }
        let mut logprobs = (!entries.is_empty()).then(|| self.logprobs(entries));
        let mut frames = Vec::new();
        for delta in deltas {
            let choice = ChatChunkChoice {
                index: choice,
                delta,
                logprobs: logprobs.take(),
                finish_reason: None,
            };
            frames.extend_from_slice(&self.chunk(vec![choice], None, None));
        }
        Some(Bytes::from(frames))
    }

    /// What the parsers held comes out now, then the finish chunk.
    fn finished(&mut self, choice: usize, reason: FinishReason) -> Bytes {
        let mut frames = Vec::new();
        let mut called = false;
        if let Some(stream) = self.streams.get_mut(choice) {
            let deltas = stream.finish();
            called = stream.calls_sent > 0;
            for delta in deltas {
                let choice = ChatChunkChoice {
                    index: choice,
                    delta,
                    logprobs: None,
                    finish_reason: None,
                };
                frames.extend_from_slice(&self.chunk(vec![choice], None, None));
            }
        }
        let finish_reason = match reason {
            FinishReason::Stop if called => "tool_calls",
            other => other.as_str(),
        };
        let choice = ChatChunkChoice {
            index: choice,
            delta: ChatDelta::default(),
            logprobs: None,
            finish_reason: Some(finish_reason),
        };
        frames.extend_from_slice(&self.chunk(vec![choice], None, None));
        Bytes::from(frames)
    }

    fn usage(&mut self, usage: Usage, metrum: Option<serde_json::Value>) -> Bytes {
        self.chunk(Vec::new(), Some(usage), metrum)
    }
}

fn call_delta(index: usize, name: Option<String>, arguments: String) -> ChatDelta {
    use super::types::{FunctionCallDelta, ToolCallDelta};
    let first = name.is_some();
    ChatDelta {
        tool_calls: Some(vec![ToolCallDelta {
            index,
            id: first.then(tools::call_id),
            kind: first.then_some("function"),
            function: FunctionCallDelta {
                name,
                arguments: Some(arguments),
            },
        }]),
        ..ChatDelta::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::extract::parse_json;

    fn messages(json: &str) -> Vec<ChatMessage> {
        parse_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn roles_and_parts_are_checked() {
        let turns = validate_messages(&messages(
            r#"[{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}]"#,
        ))
        .unwrap();
        assert_eq!(turns[1].content, "hi there");
        let err =
            validate_messages(&messages(r#"[{"role": "wizard", "content": "x"}]"#)).unwrap_err();
        assert!(
            matches!(err, ApiError::BadRequest { param: Some(p), .. } if p == "messages[0].role")
        );
        let err = validate_messages(&messages(
            r#"[{"role": "user", "content": [{"type": "image_url"}]}]"#,
        ))
        .unwrap_err();
        assert!(
            matches!(err, ApiError::BadRequest { param: Some(p), .. } if p == "messages[0].content[0]")
        );
        assert!(validate_messages(&[]).is_err());
    }

    #[test]
    fn top_logprobs_rules() {
        assert_eq!(logprob_count(None, None).unwrap(), None);
        assert_eq!(logprob_count(Some(true), None).unwrap(), Some(0));
        assert_eq!(logprob_count(Some(true), Some(3)).unwrap(), Some(3));
        assert!(logprob_count(Some(false), Some(3)).is_err());
        assert!(logprob_count(Some(true), Some(21)).is_err());
    }
}
