//! Streaming text out of generated tokens.
//!
//! [`IncrementalDetokenizer`] turns token ids into text deltas one token at a time. A character
//! can span several tokens (byte-level BPE and SentencePiece byte fallback split emoji and CJK
//! into byte tokens), so text whose decode still ends in U+FFFD is held back until the
//! character completes. Each step decodes only a short window of recent tokens (the approach
//! of vLLM and TGI), and the deltas add up to the full decode of the sequence.
//!
//! [`StopChecker`] applies stop strings to those deltas with OpenAI semantics: the output ends
//! just before the earliest stop string, the stop string itself is not emitted, and text that
//! could still turn into a stop string is held back until it is resolved.
//!
//! [`TextStream`] is the two together, which is what a request's output needs.

use crate::tokenizer::{Tokenizer, TokenizerError};

/// Prompt tokens kept as decoding context, enough for any decoder's look-behind (a
/// SentencePiece leading space, a multi-byte character started in the prompt).
const CONTEXT_TOKENS: usize = 6;

/// Token ids in, valid UTF-8 text deltas out.
#[derive(Clone, Debug)]
pub struct IncrementalDetokenizer {
    ids: Vec<u32>,
    /// Start of the window decoded as context for the next delta.
    prefix_offset: usize,
    /// End of the text already emitted (in tokens).
    read_offset: usize,
    skip_special_tokens: bool,
}

impl IncrementalDetokenizer {
    /// A detokenizer for text that starts at the first pushed token.
    pub fn new(skip_special_tokens: bool) -> IncrementalDetokenizer {
        IncrementalDetokenizer::with_context(&[], skip_special_tokens)
    }

    /// A detokenizer continuing after `context` (the prompt): the first generated token
    /// decodes as it does mid-text, e.g. SentencePiece's `▁Paris` keeps its space.
    pub fn with_context(context: &[u32], skip_special_tokens: bool) -> IncrementalDetokenizer {
        let tail = &context[context.len().saturating_sub(CONTEXT_TOKENS)..];
        IncrementalDetokenizer {
            ids: tail.to_vec(),
            prefix_offset: 0,
            read_offset: tail.len(),
            skip_special_tokens,
        }
    }

    /// Adds one token; returns the text that became final (often empty while a character
    /// is incomplete).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        self.step(tokenizer, false)
    }

    /// Ends the sequence: returns whatever was held back, with U+FFFD for bytes that never
    /// formed a character (exactly what a full decode shows there).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String, TokenizerError> {
        self.step(tokenizer, true)
    }

    fn step(&mut self, tokenizer: &Tokenizer, flush: bool) -> Result<String, TokenizerError> {
        let skip = self.skip_special_tokens;
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], skip)?;
        let incomplete = full.ends_with('\u{FFFD}') && !flush;
        if full.len() <= prefix.len() || incomplete {
            return Ok(String::new());
        }
        // Decoders are prefix-stable on the windows chosen here, so `full` extends `prefix`;
        // if some decoder ever rewrites earlier text, fall back to the longest common prefix
        // rather than slicing inside a character.
        let start = if full.starts_with(&prefix) {
            prefix.len()
        } else {
            common_prefix_len(&prefix, &full)
        };
        let delta = full[start..].to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(delta)
    }
}

/// Byte length of the longest common prefix of `a` and `b` that ends on a char boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

/// What [`StopChecker::push`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// No stop string yet; this text is safe to show.
    Continue(String),
    /// A stop string matched: show `text` (everything before it) and end the request.
    Stop { text: String, stop: String },
}

/// Finds the earliest stop string across deltas and holds back possible stop-string prefixes.
#[derive(Clone, Debug)]
pub struct StopChecker {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopChecker {
    /// Empty stop strings are ignored (they would match everywhere).
    pub fn new<S: Into<String>>(stops: impl IntoIterator<Item = S>) -> StopChecker {
        StopChecker {
            stops: stops
                .into_iter()
                .map(Into::into)
                .filter(|s: &String| !s.is_empty())
                .collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Feeds one text delta. After a `Stop`, everything further is swallowed.
    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome::Continue(String::new());
        }
        self.held.push_str(delta);
        let earliest = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()).map(|at| (at, stop)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = earliest {
            let stop = stop.clone();
            let text = self.held[..at].to_string();
            self.held.clear();
            self.stopped = true;
            return StopOutcome::Stop { text, stop };
        }
        let keep_from = self.partial_stop_start();
        let text = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        StopOutcome::Continue(text)
    }

    /// Generation ended for another reason: release the held-back text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Where the longest suffix of `held` that begins some stop string starts (`held.len()`
    /// when there is none).
    fn partial_stop_start(&self) -> usize {
        let longest_stop = self.stops.iter().map(String::len).max().unwrap_or(0);
        let earliest = self
            .held
            .len()
            .saturating_sub(longest_stop.saturating_sub(1));
        self.held
            .char_indices()
            .map(|(i, _)| i)
            .filter(|&i| i >= earliest)
            .find(|&i| {
                let suffix = &self.held[i..];
                self.stops.iter().any(|stop| stop.starts_with(suffix))
            })
            .unwrap_or(self.held.len())
    }
}

/// A request's text output: detokenization followed by stop strings.
#[derive(Clone, Debug)]
pub struct TextStream {
    detokenizer: IncrementalDetokenizer,
    stops: StopChecker,
}

impl TextStream {
    pub fn new<S: Into<String>>(
        prompt: &[u32],
        skip_special_tokens: bool,
        stop_strings: impl IntoIterator<Item = S>,
    ) -> TextStream {
        TextStream {
            detokenizer: IncrementalDetokenizer::with_context(prompt, skip_special_tokens),
            stops: StopChecker::new(stop_strings),
        }
    }

    /// One generated token in, the text to show (and whether a stop string ended it) out.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<StopOutcome, TokenizerError> {
        let delta = self.detokenizer.push(tokenizer, id)?;
        Ok(self.stops.push(&delta))
    }

    /// Generation ended without a stop string: the remaining text (which may still contain
    /// one, completed by the last held-back bytes).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<StopOutcome, TokenizerError> {
        let delta = self.detokenizer.finish(tokenizer)?;
        Ok(match self.stops.push(&delta) {
            StopOutcome::Continue(text) => StopOutcome::Continue(text + &self.stops.finish()),
            stop => stop,
        })
    }
}
