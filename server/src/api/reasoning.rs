//! `--reasoning-parser`: chat replies of reasoning models split into `reasoning_content` and
//! `content`, as vLLM's parsers of the same names do (docs/structured-outputs.md).
//!
//! The bytes are split by the engine's [`ReasoningSplitter`], the same state machine whose
//! gate holds a request's grammar back until the block ends, so the text the client sees as
//! content is exactly the text the constraint governed. Without the flag nothing changes: no
//! reply ever gets a `reasoning_content` field.

use metrum_engine::structured::reasoning::{
    ReasoningSplitter, ReasoningTags, ReplyStart, Section, THINK_TAGS,
};

/// A reasoning parser, by vLLM's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasoningParser {
    /// Qwen3: the reply opens its own `<think>` block, or has none (then it is all content).
    Qwen3,
    /// DeepSeek-R1: the template opens the block in the prompt, so the reply starts inside it.
    DeepseekR1,
}

impl ReasoningParser {
    pub const NAMES: [&'static str; 2] = ["qwen3", "deepseek_r1"];

    pub fn tags(self) -> ReasoningTags {
        THINK_TAGS
    }

    /// Where a reply to `prompt` (the rendered chat) starts. A Qwen3 prompt that itself ends
    /// in an open block (the Qwen3 "Thinking-2507" templates end with `<think>\n`) starts the
    /// reply inside it too.
    pub fn reply_start(self, prompt: &str) -> ReplyStart {
        match self {
            ReasoningParser::DeepseekR1 => ReplyStart::Inside,
            ReasoningParser::Qwen3 if prompt.trim_end().ends_with(self.tags().start) => {
                ReplyStart::Inside
            }
            ReasoningParser::Qwen3 => ReplyStart::MayOpen,
        }
    }

    pub fn splitter(self, start: ReplyStart) -> ReasoningSplitter {
        ReasoningSplitter::new(self.tags(), start)
    }
}

impl std::str::FromStr for ReasoningParser {
    type Err = String;

    fn from_str(name: &str) -> Result<ReasoningParser, String> {
        match name {
            "qwen3" => Ok(ReasoningParser::Qwen3),
            "deepseek_r1" => Ok(ReasoningParser::DeepseekR1),
            _ => Err(format!(
                "unknown reasoning parser `{name}`; expected one of {}",
                ReasoningParser::NAMES.join(", ")
            )),
        }
    }
}

/// Text released by a splitter, per section.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TextSplit {
    pub reasoning: String,
    pub content: String,
}

/// Feeds `text` (the next chunk of a reply) to `splitter`.
pub fn push(splitter: &mut ReasoningSplitter, text: &str) -> TextSplit {
    collect(|mut emit| splitter.push(text.as_bytes(), &mut emit))
}

/// The reply ended: what the splitter still held.
pub fn finish(splitter: &mut ReasoningSplitter) -> TextSplit {
    collect(|mut emit| splitter.finish(&mut emit))
}

/// A whole reply: `(reasoning_content, content)`; the reasoning is `None` when the reply had
/// no block.
pub fn split_whole(
    parser: ReasoningParser,
    start: ReplyStart,
    text: &str,
) -> (Option<String>, String) {
    let mut splitter = parser.splitter(start);
    let mut whole = push(&mut splitter, text);
    let tail = finish(&mut splitter);
    whole.reasoning.push_str(&tail.reasoning);
    whole.content.push_str(&tail.content);
    let reasoning = splitter.has_reasoning().then_some(whole.reasoning);
    (reasoning, whole.content)
}

/// The splitter cuts UTF-8 text only next to the tags' ASCII bytes, so every piece is valid
/// UTF-8; the lossy conversion is never taken.
fn collect(run: impl FnOnce(&mut dyn FnMut(Section, &[u8]))) -> TextSplit {
    let (mut reasoning, mut content) = (Vec::new(), Vec::new());
    run(&mut |section, bytes| match section {
        Section::Reasoning => reasoning.extend_from_slice(bytes),
        Section::Content => content.extend_from_slice(bytes),
    });
    let text = |bytes: Vec<u8>| {
        String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    };
    TextSplit {
        reasoning: text(reasoning),
        content: text(content),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_vllms_and_unknown_ones_are_refused() {
        assert_eq!("qwen3".parse(), Ok(ReasoningParser::Qwen3));
        assert_eq!("deepseek_r1".parse(), Ok(ReasoningParser::DeepseekR1));
        let err = "deepseek-r1".parse::<ReasoningParser>().unwrap_err();
        assert!(err.contains("qwen3, deepseek_r1"), "{err}");
    }

    #[test]
    fn the_reply_start_follows_the_parser_and_the_prompt() {
        let qwen = ReasoningParser::Qwen3;
        assert_eq!(
            qwen.reply_start("<|im_start|>assistant\n"),
            ReplyStart::MayOpen
        );
        assert_eq!(
            qwen.reply_start("<|im_start|>assistant\n<think>\n"),
            ReplyStart::Inside
        );
        // Qwen3 with thinking off: the template closes an empty block.
        assert_eq!(
            qwen.reply_start("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
            ReplyStart::MayOpen
        );
        assert_eq!(
            ReasoningParser::DeepseekR1.reply_start("anything"),
            ReplyStart::Inside
        );
    }

    /// Streaming in any two or three chunks gives the same split as the whole text.
    #[test]
    fn streamed_text_splits_as_the_whole_text_at_every_cut() {
        let cases = [
            (ReasoningParser::Qwen3, "<think>Paris é là</think>\n\nParis"),
            (ReasoningParser::Qwen3, "Paris, no block"),
            (ReasoningParser::Qwen3, "<think>cut short </thi"),
            (ReasoningParser::DeepseekR1, "ok ü</think>{\"a\": 1}"),
            (ReasoningParser::DeepseekR1, "<think>ok</think></think>"),
        ];
        for (parser, text) in cases {
            let start = parser.reply_start("");
            let (reasoning, content) = split_whole(parser, start, text);
            let cuts: Vec<usize> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .collect();
            for &i in &cuts {
                for &j in cuts.iter().filter(|&&j| j >= i) {
                    let mut splitter = parser.splitter(start);
                    let mut got = TextSplit::default();
                    for piece in [&text[..i], &text[i..j], &text[j..]] {
                        let part = push(&mut splitter, piece);
                        got.reasoning.push_str(&part.reasoning);
                        got.content.push_str(&part.content);
                    }
                    let tail = finish(&mut splitter);
                    got.reasoning.push_str(&tail.reasoning);
                    got.content.push_str(&tail.content);
                    let streamed = (
                        splitter.has_reasoning().then_some(got.reasoning),
                        got.content,
                    );
                    assert_eq!(
                        streamed,
                        (reasoning.clone(), content.clone()),
                        "{text:?} cut at {i}, {j}"
                    );
                }
            }
        }
        assert_eq!(
            split_whole(
                ReasoningParser::Qwen3,
                ReplyStart::MayOpen,
                "<think>a</think>b"
            ),
            (Some("a".into()), "b".into())
        );
    }
}
