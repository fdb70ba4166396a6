//! Reasoning blocks (`<think>…</think>`, Qwen3 / DeepSeek-R1 style): where a reply's reasoning
//! ends and its content begins, byte by byte. One state machine, [`ReasoningSplitter`], serves
//! both sides:
//! * the server splits reply text into `reasoning_content` and `content`, whole or streamed;
//! * the engine ([`ReasoningGate`]) holds a request's grammar back until the block has ended,
//!   so constraints apply to the content only.
//!
//! How a reply starts ([`ReplyStart`]) is the one difference between vLLM's two parsers:
//! `qwen3` replies open their own block, so a reply that does not begin with the start tag has
//! no reasoning at all; `deepseek_r1` templates open the block in the prompt, so the reply
//! begins inside it (a restated start tag is dropped). Either way a reply that never closes
//! the block (cut by `max_tokens`, or ended by EOS) is all reasoning.
//!
//! Split tags: `</think>` may arrive over several tokens (`</`, `think`, `>`) or share a token
//! with the content after it. The splitter holds back a tail that may still grow into the tag;
//! the gate bans, while reasoning, every token that would complete the end tag *and* carry
//! content bytes past it, so the grammar always starts exactly at a token boundary after the
//! tag. Nothing else inside the block is constrained (EOS included: vLLM's behaviour).
//! Special tokens (EOS, `<|im_end|>`, ...) are not text: the detokenizer skips them, so the
//! splitter never sees their bytes either.

use llguidance::toktrie::{SimpleVob, TokEnv, TokenId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The tags around a reasoning block. Both are ASCII, so splitting UTF-8 text at them keeps
/// every part valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReasoningTags {
    pub start: &'static str,
    pub end: &'static str,
}

/// `<think>` … `</think>`, the tags of every parser Metrum knows.
pub const THINK_TAGS: ReasoningTags = ReasoningTags {
    start: "<think>",
    end: "</think>",
};

/// Where a reply starts relative to the reasoning block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyStart {
    /// The reply may open a block with the start tag as its very first bytes; otherwise it is
    /// all content (vLLM's `qwen3`).
    MayOpen,
    /// The prompt opened the block: the reply starts inside it, and a start tag the reply
    /// restates is dropped (vLLM's `deepseek_r1`, or a prompt that ends in an open block).
    Inside,
}

/// Which part of the reply a byte belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Reasoning,
    Content,
}

/// Where the splitter is. `held` counts tag bytes seen but not yet released (they are always
/// the first `held` bytes of that tag, so no buffer is needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SplitState {
    /// At the reply's start: `held` bytes of the start tag so far.
    Opening { held: usize },
    /// Inside the block: `held` bytes at the tail may be the start of the end tag.
    Reasoning { held: usize },
    /// After the block (or with no block): everything is content.
    Content,
}

/// Splits a reply into reasoning and content, incrementally. Feeding the text in any chunks
/// releases the same bytes, in the same sections, as feeding it whole.
#[derive(Clone, Debug)]
pub struct ReasoningSplitter {
    tags: ReasoningTags,
    start: ReplyStart,
    state: SplitState,
    /// The reply has entered a block (so it has a reasoning part, maybe empty).
    reasoned: bool,
}

impl ReasoningSplitter {
    pub fn new(tags: ReasoningTags, start: ReplyStart) -> ReasoningSplitter {
        ReasoningSplitter {
            tags,
            start,
            state: SplitState::Opening { held: 0 },
            reasoned: false,
        }
    }

    pub fn state(&self) -> SplitState {
        self.state
    }

    pub fn reply_start(&self) -> ReplyStart {
        self.start
    }

    /// The reply has (so far) a reasoning block. `false` for a `qwen3` reply that did not
    /// open one, which then has no `reasoning_content` at all.
    pub fn has_reasoning(&self) -> bool {
        self.reasoned || matches!(self.state, SplitState::Reasoning { .. })
    }

    /// Feeds the next bytes; `emit` receives what is now known to be reasoning or content.
    pub fn push(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(Section, &[u8])) {
        while !bytes.is_empty() {
            match self.state {
                SplitState::Content => {
                    emit(Section::Content, bytes);
                    return;
                }
                SplitState::Opening { held } => {
                    let tag = self.tags.start.as_bytes();
                    let rest = &tag[held..];
                    let same = rest.iter().zip(bytes).take_while(|(a, b)| a == b).count();
                    if same == rest.len() {
                        self.enter_block();
                        bytes = &bytes[same..];
                    } else if same == bytes.len() {
                        self.state = SplitState::Opening { held: held + same };
                        return;
                    } else {
                        // Not the start tag: what was held is ordinary text of the section
                        // the reply starts in, and is fed again from there.
                        self.state = match self.start {
                            ReplyStart::MayOpen => SplitState::Content,
                            ReplyStart::Inside => {
                                self.reasoned = true;
                                SplitState::Reasoning { held: 0 }
                            }
                        };
                        self.push(&tag[..held + same], emit);
                        bytes = &bytes[same..];
                    }
                }
                SplitState::Reasoning { held } => {
                    let tag = self.tags.end.as_bytes();
                    let mut pending = Vec::with_capacity(held + bytes.len());
                    pending.extend_from_slice(&tag[..held]);
                    pending.extend_from_slice(bytes);
                    if let Some(at) = find(&pending, tag) {
                        if at > 0 {
                            emit(Section::Reasoning, &pending[..at]);
                        }
                        self.state = SplitState::Content;
                        let after = &pending[at + tag.len()..];
                        if !after.is_empty() {
                            emit(Section::Content, after);
                        }
                        return;
                    }
                    let keep = partial_suffix(&pending, tag);
                    let release = pending.len() - keep;
                    if release > 0 {
                        emit(Section::Reasoning, &pending[..release]);
                    }
                    self.state = SplitState::Reasoning { held: keep };
                    return;
                }
            }
        }
    }

    /// The reply ended: held bytes are released where they stand (an unclosed block is all
    /// reasoning; a `qwen3` reply that is only a prefix of `<think>` is content).
    pub fn finish(&mut self, emit: &mut impl FnMut(Section, &[u8])) {
        match self.state {
            SplitState::Opening { held } => {
                let section = match self.start {
                    ReplyStart::MayOpen => Section::Content,
                    ReplyStart::Inside => {
                        self.reasoned = true;
                        Section::Reasoning
                    }
                };
                if held > 0 {
                    emit(section, &self.tags.start.as_bytes()[..held]);
                }
            }
            SplitState::Reasoning { held } if held > 0 => {
                emit(Section::Reasoning, &self.tags.end.as_bytes()[..held]);
            }
            SplitState::Reasoning { .. } | SplitState::Content => {}
        }
        // Nothing is held any more (a second `finish` releases nothing).
        self.state = match self.state {
            SplitState::Opening { .. } if self.start == ReplyStart::MayOpen => SplitState::Content,
            SplitState::Content => SplitState::Content,
            _ => SplitState::Reasoning { held: 0 },
        };
    }

    fn enter_block(&mut self) {
        self.reasoned = true;
        self.state = SplitState::Reasoning { held: 0 };
    }
}

/// The first occurrence of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The longest suffix of `text` that is a proper prefix of `tag`.
fn partial_suffix(text: &[u8], tag: &[u8]) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| tag.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

/// One model's view of the reasoning tags over its vocabulary: for each splitter state, the
/// tokens that keep the reply out of content (cached; a state's set costs one vocabulary pass).
pub struct ReasoningGate {
    env: TokEnv,
    tags: ReasoningTags,
    masks: Mutex<HashMap<(ReplyStart, SplitState), Arc<SimpleVob>>>,
}

impl ReasoningGate {
    pub fn new(env: TokEnv, tags: ReasoningTags) -> ReasoningGate {
        ReasoningGate {
            env,
            tags,
            masks: Mutex::new(HashMap::new()),
        }
    }

    pub fn tags(&self) -> ReasoningTags {
        self.tags
    }

    /// A token's text as the detokenizer shows it: special tokens (marked by llguidance's
    /// 0xFF prefix) have none.
    pub fn token_text(&self, token: TokenId) -> &[u8] {
        let trie = self.env.tok_trie();
        if (token as usize) >= trie.vocab_size() || trie.is_special_token(token) {
            return &[];
        }
        trie.token(token)
    }

    /// Computes the masks of every state a reply starting at `start` can wait in (one
    /// vocabulary pass each, tens of milliseconds in all): call it off the engine thread.
    pub fn prepare(&self, start: ReplyStart) {
        for held in 0..self.tags.start.len() {
            self.waiting_mask(start, SplitState::Opening { held });
        }
        for held in 0..self.tags.end.len() {
            self.waiting_mask(start, SplitState::Reasoning { held });
        }
    }

    /// The tokens allowed while the grammar waits in `state`: every token that releases no
    /// content bytes from there. At a `MayOpen` start only tokens that continue the start tag
    /// qualify (the grammar's own mask adds the content-starting ones, EOS included).
    pub fn waiting_mask(&self, start: ReplyStart, state: SplitState) -> Arc<SimpleVob> {
        let key = (start, state);
        if let Some(hit) = self.masks.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return hit;
        }
        let trie = self.env.tok_trie();
        let mut mask = SimpleVob::alloc(trie.vocab_size());
        for token in 0..trie.vocab_size() as TokenId {
            let text = self.token_text(token);
            if start == ReplyStart::MayOpen
                && matches!(state, SplitState::Opening { .. })
                && text.is_empty()
            {
                continue;
            }
            let mut splitter = ReasoningSplitter {
                tags: self.tags,
                start,
                state,
                reasoned: false,
            };
            let mut content = false;
            splitter.push(text, &mut |section, _| {
                content |= section == Section::Content
            });
            if !content {
                mask.allow_token(token);
            }
        }
        let mask = Arc::new(mask);
        if let Ok(mut masks) = self.masks.lock() {
            masks.insert(key, mask.clone());
        }
        mask
    }
}

impl std::fmt::Debug for ReasoningGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReasoningGate")
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole text, split into (reasoning if the reply had a block, content).
    pub(crate) fn split(start: ReplyStart, chunks: &[&[u8]]) -> (Option<String>, String) {
        let mut splitter = ReasoningSplitter::new(THINK_TAGS, start);
        let (mut reasoning, mut content) = (Vec::new(), Vec::new());
        let mut emit = |section: Section, bytes: &[u8]| match section {
            Section::Reasoning => reasoning.extend_from_slice(bytes),
            Section::Content => content.extend_from_slice(bytes),
        };
        for chunk in chunks {
            splitter.push(chunk, &mut emit);
        }
        splitter.finish(&mut emit);
        let reasoning = splitter
            .has_reasoning()
            .then(|| String::from_utf8(reasoning).unwrap());
        (reasoning, String::from_utf8(content).unwrap())
    }

    fn whole(start: ReplyStart, text: &str) -> (Option<String>, Option<String>) {
        let (r, c) = split(start, &[text.as_bytes()]);
        (r, Some(c))
    }

    fn some(r: &str, c: &str) -> (Option<String>, Option<String>) {
        (Some(r.into()), Some(c.into()))
    }

    #[test]
    fn qwen3_replies_open_their_block_or_have_none() {
        use ReplyStart::MayOpen;
        assert_eq!(
            whole(MayOpen, "<think>plan</think>answer"),
            some("plan", "answer")
        );
        assert_eq!(
            whole(MayOpen, "<think>\nplan\n</think>\n\nanswer"),
            some("\nplan\n", "\n\nanswer")
        );
        // No block: all content, no reasoning field; a later tag is just text.
        assert_eq!(
            whole(MayOpen, "answer <think>x</think>"),
            (None, Some("answer <think>x</think>".into()))
        );
        assert_eq!(whole(MayOpen, "<thin"), (None, Some("<thin".into())));
        // Cut inside the block: all reasoning, a held partial end tag included.
        assert_eq!(
            whole(MayOpen, "<think>still going </th"),
            some("still going </th", "")
        );
        assert_eq!(whole(MayOpen, ""), (None, Some(String::new())));
    }

    #[test]
    fn deepseek_r1_replies_start_inside_the_block() {
        use ReplyStart::Inside;
        assert_eq!(whole(Inside, "plan</think>answer"), some("plan", "answer"));
        // A restated start tag is dropped, as vLLM's parser does.
        assert_eq!(
            whole(Inside, "<think>plan</think>answer"),
            some("plan", "answer")
        );
        assert_eq!(whole(Inside, "<th"), some("<th", ""));
        assert_eq!(whole(Inside, "no end"), some("no end", ""));
        assert_eq!(whole(Inside, "</think>"), some("", ""));
        // `<` both diverges from `<think>` and may start `</think>`.
        assert_eq!(whole(Inside, "</think></think>"), some("", "</think>"));
        assert_eq!(whole(Inside, "a<</think>b"), some("a<", "b"));
        assert_eq!(whole(Inside, "é</think>ü"), some("é", "ü"));
    }

    /// Every way of cutting the text into two or three chunks releases the same split.
    #[test]
    fn streaming_equals_whole_for_every_split() {
        let texts = [
            "<think>a</think>b",
            "<think></think>",
            "<thinkx",
            "<<think>>a</</think>>b",
            "plan </thi</think>\n\n{\"a\": 1}",
            "é<think>ü</think>ö",
            "</think",
            "",
        ];
        for start in [ReplyStart::MayOpen, ReplyStart::Inside] {
            for text in texts {
                let bytes = text.as_bytes();
                let expected = split(start, &[bytes]);
                for i in 0..=bytes.len() {
                    for j in i..=bytes.len() {
                        let got = split(start, &[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                        assert_eq!(got, expected, "{start:?} {text:?} cut at {i}, {j}");
                    }
                }
                // Byte by byte.
                let singles: Vec<&[u8]> = bytes.chunks(1).collect();
                assert_eq!(split(start, &singles), expected, "{start:?} {text:?}");
            }
        }
    }
}
