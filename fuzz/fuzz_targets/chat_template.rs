//! Chat-template rendering with hostile message contents (engine `chat_template`): template
//! syntax, control characters, special-token strings, huge or many messages.
//!
//! Input: byte 0 picks the template (`(b >> 1) % 3`) and `add_generation_prompt` (bit 0);
//! the rest, as lossy UTF-8, is messages split on U+001E, each `role U+001F content` (without
//! U+001F the whole part is the content and roles alternate user/assistant).
//!
//! Oracles: nothing panics or hangs (the fuel limit); the default model's template renders
//! every conversation to exactly the text written out below, so no content is ever run as
//! template code.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metrum_engine::chat_template::{ChatMessage, ChatTemplate};
use std::sync::OnceLock;

const SOURCES: [&str; 3] = [
    include_str!("../templates/smollm2.jinja"),
    include_str!("../templates/alternating.jinja"),
    include_str!("../templates/methods.jinja"),
];

fn templates() -> &'static [ChatTemplate] {
    static TEMPLATES: OnceLock<Vec<ChatTemplate>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        SOURCES
            .iter()
            .map(|s| ChatTemplate::new(*s, "<s>", "</s>").expect("the shipped templates compile"))
            .collect()
    })
}

fn messages(text: &str) -> Vec<ChatMessage> {
    if text.is_empty() {
        return Vec::new();
    }
    text.split('\u{1e}')
        .enumerate()
        .map(|(i, part)| match part.split_once('\u{1f}') {
            Some((role, content)) => ChatMessage::new(role, content),
            None => ChatMessage::new(["user", "assistant"][i % 2], part),
        })
        .collect()
}

/// SmolLM2's template, written out by hand.
fn smollm2(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    if messages.first().is_some_and(|m| m.role != "system") {
        out.push_str(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
        );
    }
    for m in messages {
        out.push_str(&format!(
            "<|im_start|>{}\n{}<|im_end|>\n",
            m.role, m.content
        ));
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let add_generation_prompt = flags & 1 == 1;
    let which = usize::from(flags >> 1) % SOURCES.len();
    let messages = messages(&String::from_utf8_lossy(rest));
    let rendered = templates()[which].render(&messages, add_generation_prompt);
    if which == 0 {
        match rendered {
            Ok(text) => assert_eq!(text, smollm2(&messages, add_generation_prompt)),
            Err(e) => panic!("the default template failed on plain messages: {e}"),
        }
    }
});
