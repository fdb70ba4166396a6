//! The text side of a loaded model, shared read-only with the HTTP handlers (which tokenize
//! off the async runtime) and the engine thread (which detokenizes as tokens stream out).

use crate::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError};
use crate::tokenizer::Tokenizer;

pub struct TextCodec {
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
}

impl TextCodec {
    /// Renders a conversation with the model's own template. Models without one cannot serve
    /// chat; the error says so.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        match &self.chat_template {
            Some(t) => t.render(messages, add_generation_prompt),
            None => Err(ChatTemplateError::Render(
                "this model has no chat template; use /v1/completions".into(),
            )),
        }
    }
}
