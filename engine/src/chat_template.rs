//! Chat templates: the model's own Jinja template turning messages into a prompt.
//!
//! Templates come only from model files (tokenizer_config.json's `chat_template`, a
//! `chat_template.jinja` beside it, or the GGUF's `tokenizer.chat_template`), never from
//! requests. They are rendered with minijinja the way transformers renders them: blocks trim
//! their newline and strip leading space (`trim_blocks`, `lstrip_blocks`), Python string
//! methods work (minijinja-contrib's pycompat), `raise_exception` aborts with the template's
//! message, `tools` is the request's tool list or `none`. There is no loader, so a template cannot reach the filesystem,
//! and a fuel limit stops runaway loops. Message contents are values passed to the template,
//! never parsed as template code, and every failure is an error, not a panic.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::source::ModelFiles;
use crate::tokenizer::{Tokenizer, special_token_content};

const TEMPLATE_NAME: &str = "chat";
/// Instruction budget for one render: generous for any real template and conversation, but
/// finite, so a template that loops forever fails instead of hanging the server.
const RENDER_FUEL: u64 = 50_000_000;

/// One chat message as the template sees it (`message['role']`, `message.content`, and when
/// the client sent them `message.name`, `message.tool_calls`, `message.tool_call_id`).
/// Absent optional fields are absent to the template too (`message.name is defined` is false).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An assistant turn's calls, as Hugging Face templates expect them: a list of
    /// `{"id", "type": "function", "function": {"name", "arguments": <object>}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Json>,
    /// A `tool` turn's answer to this call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            name: None,
            tool_calls: None,
            tool_call_id: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("reading chat template from {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("chat template does not compile: {0}")]
    Syntax(String),
    #[error("chat template failed to render: {0}")]
    Render(String),
}

/// A compiled chat template with the special-token strings it may reference.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` / `eos_token` are the strings templates see under those names.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate, ChatTemplateError> {
        let source = source.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(RENDER_FUEL));
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| ChatTemplateError::Syntax(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            source,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The template of a resolved model, or `None` when its files carry none.
    /// Order: tokenizer_config.json's `chat_template`, `chat_template.jinja` beside it, the
    /// GGUF metadata. BOS/EOS strings come from tokenizer_config.json, else the tokenizer.
    pub fn from_model_files(
        files: &ModelFiles,
        tokenizer: &Tokenizer,
    ) -> Result<Option<ChatTemplate>, ChatTemplateError> {
        let config = match files.tokenizer_config() {
            Some(path) => read_json(path)?,
            None => Json::Null,
        };
        let bos = special_token_content(&config, "bos_token")
            .unwrap_or_else(|| tokenizer.special_text(tokenizer.bos_token_id()));
        let eos = special_token_content(&config, "eos_token")
            .unwrap_or_else(|| tokenizer.special_text(tokenizer.eos_token_id()));
        if let Some(source) = template_from_config(&config) {
            return ChatTemplate::new(source, bos, eos).map(Some);
        }
        let jinja = files
            .tokenizer_config()
            .and_then(Path::parent)
            .map(|dir| dir.join("chat_template.jinja"))
            .filter(|path| path.is_file());
        if let Some(jinja) = jinja {
            let source = std::fs::read_to_string(&jinja).map_err(|e| ChatTemplateError::Load {
                path: jinja.display().to_string(),
                reason: e.to_string(),
            })?;
            return ChatTemplate::new(source, bos, eos).map(Some);
        }
        match files {
            ModelFiles::Gguf { path, .. } => {
                let metadata = read_gguf_metadata(path)?;
                match template_from_gguf(&metadata) {
                    Some(source) => ChatTemplate::new(source, bos, eos).map(Some),
                    None => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }

    /// The template stored in GGUF metadata (`tokenizer.chat_template`), if any.
    pub fn from_gguf_metadata(
        metadata: &HashMap<String, gguf_file::Value>,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Option<ChatTemplate>, ChatTemplateError> {
        template_from_gguf(metadata)
            .map(|source| ChatTemplate::new(source, bos_token, eos_token))
            .transpose()
    }

    /// The prompt for `messages`; `add_generation_prompt` appends the assistant turn's opening.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_with_tools(messages, add_generation_prompt, None)
    }

    /// [`Self::render`] with the request's `tools` (OpenAI's list of tool objects), which
    /// templates read as `tools`; `None` renders `tools` as `none`.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&Json>,
    ) -> Result<String, ChatTemplateError> {
        let tools = tools.map_or(Value::from(()), Value::from_serialize);
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatTemplateError::Render(describe(&e)))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
                tools => tools,
            })
            .map_err(|e| ChatTemplateError::Render(describe(&e)))
    }

    /// The template text as found in the model files.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// `{{ raise_exception('...') }}`: the template's own way to reject a conversation.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// minijinja's error with its causes, on one line.
fn describe(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn read_json(path: &Path) -> Result<Json, ChatTemplateError> {
    let load_err = |reason: String| ChatTemplateError::Load {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| load_err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| load_err(e.to_string()))
}

fn read_gguf_metadata(path: &Path) -> Result<HashMap<String, gguf_file::Value>, ChatTemplateError> {
    let load_err = |reason: String| ChatTemplateError::Load {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| load_err(e.to_string()))?;
    let mut reader = std::io::BufReader::new(file);
    let content = crate::model::DecoderModel::read_gguf_header(&mut reader).map_err(load_err)?;
    Ok(content.metadata)
}

/// `"chat_template": "..."`, or the list form `[{"name": "default", "template": "..."}, ...]`.
fn template_from_config(config: &Json) -> Option<String> {
    match config.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str())
            .map(str::to_string),
        _ => None,
    }
}

fn template_from_gguf(metadata: &HashMap<String, gguf_file::Value>) -> Option<String> {
    match metadata.get("tokenizer.chat_template")? {
        gguf_file::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}
