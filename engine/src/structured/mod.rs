//! Structured outputs: grammars that constrain what a request may generate (issue 15).
//!
//! | piece | where | when |
//! | --- | --- | --- |
//! | [`ConstraintSpec`] | what the client asked for: JSON schema, any JSON object, regex, choice, Lark | parsed by the server |
//! | [`GrammarCompiler`] | one per model: llguidance's `ParserFactory` over Metrum's own token bytes (`tokenv`), plus a cache keyed by the spec | built lazily by the server on a blocking thread |
//! | [`CompiledGrammar`] | a compiled, started parser; every request deep-clones its own [`GrammarMatcher`] | compiled off the engine thread |
//! | `GrammarState` | a request's matcher and its next mask, in the engine loop's `Live` | masks computed while the forward runs |
//! | [`reasoning`] | `<think>…</think>`: the splitter the server parses replies with, and the gate that holds a grammar back until the block ends | with `--reasoning-parser` |
//!
//! Rules the engine keeps (see `engine_loop` and `sampling`):
//! * the mask is applied before anything else touches the row (bias, penalties, logprobs), so
//!   reported logprobs describe the constrained distribution;
//! * a row the mask (with `min_tokens` and the rest) leaves empty ends that request with an
//!   error event; it never falls back to an unconstrained token;
//! * every model EOS id is in the trie's EOS set, so each is allowed exactly when the grammar
//!   may end; once the grammar has ended (nothing but EOS can follow) the request finishes
//!   with `stop` right away, without waiting for the model's EOS; under `ignore_eos` it runs
//!   on instead, with only EOS allowed;
//! * a grammar error ends that one request, never the engine; llguidance catches its own
//!   panics and reports them as errors;
//! * with a reasoning parser, the grammar waits while the reply reasons: inside the block
//!   only tokens that would carry content past `</think>` are masked, and the grammar's first
//!   token is the one after the tag ([`reasoning`] has the rules).

pub mod reasoning;
mod tokenv;

use crate::error::EngineError;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv};
use llguidance::{Matcher, ParserFactory};
use reasoning::{ReasoningGate, ReasoningSplitter, ReasoningTags, ReplyStart, Section, SplitState};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use tokenv::metrum_tok_env;

/// What a request's output must match. One per request.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstraintSpec {
    /// A JSON Schema (OpenAI's `response_format.json_schema.schema`, vLLM's `json`).
    JsonSchema(Value),
    /// Any JSON object (`json_object`).
    JsonObject,
    /// A regular expression the whole output must match (Rust `regex` syntax, no lookaround).
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A Lark grammar (llguidance's dialect).
    Lark(String),
}

impl ConstraintSpec {
    /// The cache key: the kind and the exact payload.
    fn cache_key(&self) -> String {
        match self {
            ConstraintSpec::JsonSchema(v) => format!("json:{v}"),
            ConstraintSpec::JsonObject => "json_object".into(),
            ConstraintSpec::Regex(r) => format!("regex:{r}"),
            ConstraintSpec::Choice(c) => format!("choice:{}", Value::from(c.clone())),
            ConstraintSpec::Lark(g) => format!("lark:{g}"),
        }
    }

    fn to_grammar(&self) -> TopLevelGrammar {
        match self {
            ConstraintSpec::JsonSchema(schema) => {
                TopLevelGrammar::from_json_schema(compact_json(schema.clone()))
            }
            ConstraintSpec::JsonObject => TopLevelGrammar::from_json_schema(compact_json(
                serde_json::json!({"type": "object"}),
            )),
            ConstraintSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            ConstraintSpec::Choice(choices) => {
                let alternatives: Vec<String> = choices.iter().map(|c| escape_regex(c)).collect();
                TopLevelGrammar::from_regex(&format!("(?:{})", alternatives.join("|")))
            }
            ConstraintSpec::Lark(grammar) => TopLevelGrammar::from_lark(grammar.clone()),
        }
    }
}

/// JSON without free whitespace between tokens, unless the schema sets llguidance's own
/// `x-guidance` options. With flexible whitespace small models often emit newlines until
/// `max_tokens` (vLLM's `disable_any_whitespace` exists for this); compact JSON is still JSON.
fn compact_json(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance")
            .or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
    }
    schema
}

/// Escapes every regex meta character (regex-syntax's list), so a choice matches literally.
fn escape_regex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Compiled grammars kept per model; beyond this many the cache starts over (a burst of
/// distinct schemas costs recompiles, never unbounded memory).
const CACHE_ENTRIES: usize = 256;

/// A cache entry: filled once by whichever request compiles it first; requests for the same
/// key that arrive meanwhile wait for that compile instead of repeating it.
type CacheSlot = Arc<OnceLock<Result<Arc<CompiledGrammar>, String>>>;

/// One model's grammar compiler and its cache.
pub struct GrammarCompiler {
    factory: ParserFactory,
    env: TokEnv,
    cache: Mutex<HashMap<String, CacheSlot>>,
    /// Compiles actually run (cache misses), for tests and logs.
    compiles: AtomicU64,
    /// The reasoning gate over this vocabulary (one set of tags per server).
    gate: Mutex<Option<Arc<ReasoningGate>>>,
}

impl GrammarCompiler {
    /// Builds the token trie from `tokenizer`'s bytes, `logits_width` wide (the model's
    /// logits may be wider than the tokenizer; the extra ids can never be chosen). Costs tens
    /// of milliseconds on a 50k vocabulary: build it off the engine thread.
    pub fn new(
        tokenizer: &crate::tokenizer::Tokenizer,
        logits_width: usize,
    ) -> Result<GrammarCompiler, EngineError> {
        let env = metrum_tok_env(tokenizer, logits_width)?;
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Grammar(format!("no parser for this vocabulary: {e}")))?;
        factory.quiet();
        Ok(GrammarCompiler {
            factory,
            env,
            cache: Mutex::new(HashMap::new()),
            compiles: AtomicU64::new(0),
            gate: Mutex::new(None),
        })
    }

    /// The gate that holds grammars back until a reply's reasoning block (`tags`) ends.
    pub fn reasoning_gate(&self, tags: ReasoningTags) -> Arc<ReasoningGate> {
        let mut slot = match self.gate.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        match slot.as_ref() {
            Some(gate) if gate.tags() == tags => gate.clone(),
            _ => slot
                .insert(Arc::new(ReasoningGate::new(self.env.clone(), tags)))
                .clone(),
        }
    }

    /// The compiled grammar for `spec`, from the cache or compiled now (blocking; about a
    /// millisecond for typical schemas). `Err` is llguidance's message, for a 400. A burst of
    /// identical new specs compiles once: the others wait for that compile and share it
    /// (errors included: the same spec fails the same way).
    pub fn compile(&self, spec: &ConstraintSpec) -> Result<Arc<CompiledGrammar>, String> {
        let key = spec.cache_key();
        let bytes = key.len();
        let slot: CacheSlot = {
            let mut cache = match self.cache.lock() {
                Ok(cache) => cache,
                Err(poisoned) => poisoned.into_inner(),
            };
            if !cache.contains_key(&key) && cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.entry(key).or_default().clone()
        };
        slot.get_or_init(|| self.compile_now(spec, bytes)).clone()
    }

    /// How many compiles ran (cache misses).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    fn compile_now(
        &self,
        spec: &ConstraintSpec,
        bytes: usize,
    ) -> Result<Arc<CompiledGrammar>, String> {
        self.compiles.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let parser = self
            .factory
            .create_parser(spec.to_grammar())
            .map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(error);
        }
        let compiled = Arc::new(CompiledGrammar {
            prototype: Mutex::new(matcher),
            compile_time: started.elapsed(),
        });
        tracing::info!(
            compile_ms = compiled.compile_time.as_secs_f64() * 1e3,
            bytes,
            "grammar compiled"
        );
        Ok(compiled)
    }
}

/// A compiled grammar, ready to hand each request its own matcher.
pub struct CompiledGrammar {
    prototype: Mutex<Matcher>,
    /// How long the compile took (zero work for later cache hits, which share this value).
    pub compile_time: Duration,
}

impl CompiledGrammar {
    /// A fresh matcher at the grammar's start, independent of every other.
    pub fn matcher(&self) -> Result<GrammarMatcher, EngineError> {
        self.prototype
            .lock()
            .map(|m| GrammarMatcher {
                matcher: m.deep_clone(),
                reasoning: None,
            })
            .map_err(|_| EngineError::Grammar("the compiled grammar's lock was poisoned".into()))
    }
}

impl std::fmt::Debug for CompiledGrammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledGrammar")
            .field("compile_time", &self.compile_time)
            .finish_non_exhaustive()
    }
}

/// One request's matcher, and the reasoning block it waits for, if any. Cloning deep-clones
/// it (two requests never share parser state).
pub struct GrammarMatcher {
    matcher: Matcher,
    reasoning: Option<(Arc<ReasoningGate>, ReplyStart)>,
}

impl GrammarMatcher {
    /// The grammar applies only once the reply's reasoning block has ended (or, for a
    /// [`ReplyStart::MayOpen`] reply, from the start if it opens none).
    pub fn after_reasoning(mut self, gate: Arc<ReasoningGate>, start: ReplyStart) -> Self {
        self.reasoning = Some((gate, start));
        self
    }
}

impl Clone for GrammarMatcher {
    fn clone(&self) -> Self {
        GrammarMatcher {
            matcher: self.matcher.deep_clone(),
            reasoning: self.reasoning.clone(),
        }
    }
}

impl std::fmt::Debug for GrammarMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrammarMatcher")
    }
}

/// A live request's grammar: its matcher, the mask for its next sampled token, and what the
/// masks cost (reported when the request finishes).
pub(crate) struct GrammarState {
    matcher: Matcher,
    /// Set while the grammar waits for the reply's reasoning block to end.
    waiting: Option<Waiting>,
    next_mask: Option<Result<SimpleVob, EngineError>>,
    pub mask_time: Duration,
    pub masks: u64,
}

/// A grammar waiting for the reasoning block: the splitter follows the reply's text.
struct Waiting {
    gate: Arc<ReasoningGate>,
    splitter: ReasoningSplitter,
    /// At a `MayOpen` start the first bytes may be the start tag or the content's first bytes:
    /// the matcher follows them as content for as long as it accepts them, and is replaced by
    /// `fresh` (a copy taken at the start) if they turn out to open the block.
    speculating: bool,
    fresh: Option<Matcher>,
}

impl GrammarState {
    pub fn new(matcher: GrammarMatcher) -> GrammarState {
        let may_open = |start| start == ReplyStart::MayOpen;
        let waiting = matcher.reasoning.map(|(gate, start)| Waiting {
            splitter: ReasoningSplitter::new(gate.tags(), start),
            speculating: may_open(start),
            fresh: may_open(start).then(|| matcher.matcher.deep_clone()),
            gate,
        });
        GrammarState {
            matcher: matcher.matcher,
            waiting,
            next_mask: None,
            mask_time: Duration::ZERO,
            masks: 0,
        }
    }

    /// Computes the next token's mask unless it is ready. Safe to run on another thread while
    /// the forward pass runs (it touches only this request's state).
    pub fn prepare_mask(&mut self) {
        if self.next_mask.is_some() {
            return;
        }
        let started = Instant::now();
        let mask = match &mut self.waiting {
            // After the grammar ended this is the EOS-only mask.
            None => self
                .matcher
                .compute_mask_or_eos()
                .map_err(|e| EngineError::Grammar(e.to_string())),
            Some(waiting) => {
                let start = waiting.splitter.reply_start();
                let mut mask =
                    SimpleVob::clone(&waiting.gate.waiting_mask(start, waiting.splitter.state()));
                if waiting.speculating {
                    match self.matcher.compute_mask() {
                        Ok(content) => mask.or(&content),
                        // Content can no longer start here; the start tag still may.
                        Err(_) => waiting.speculating = false,
                    }
                }
                Ok(mask)
            }
        };
        self.mask_time += started.elapsed();
        self.masks += 1;
        self.next_mask = Some(mask);
    }

    /// The mask for the token about to be sampled, as packed 32-bit words (bit `i` of word
    /// `i / 32` allows token `i`; tokens past the end are disallowed).
    pub fn take_mask(&mut self) -> Result<SimpleVob, EngineError> {
        self.prepare_mask();
        self.next_mask
            .take()
            .unwrap_or_else(|| Err(EngineError::Grammar("the token's mask is missing".into())))
    }

    /// The grammar has ended (no error): nothing but EOS may follow. The engine then ends the
    /// request with `stop` at once, unless it ignores EOS.
    pub fn is_done(&self) -> bool {
        self.waiting.is_none() && self.matcher.is_stopped() && self.matcher.get_error().is_none()
    }

    /// Follows the sampled `token` while the grammar waits. `Ok(true)`: the token belongs to
    /// the reasoning (or to the tag): the grammar does not see it.
    fn advance_waiting(&mut self, token: u32) -> Result<bool, EngineError> {
        let Some(waiting) = self.waiting.as_mut() else {
            return Ok(false);
        };
        let before = waiting.splitter.state();
        let text = waiting.gate.token_text(token);
        let mut content = 0;
        waiting.splitter.push(text, &mut |section, bytes| {
            if section == Section::Content {
                content += bytes.len();
            }
        });
        let opening = matches!(before, SplitState::Opening { .. })
            && waiting.splitter.reply_start() == ReplyStart::MayOpen;
        match waiting.splitter.state() {
            SplitState::Reasoning { .. } => {
                if let Some(fresh) = waiting.fresh.take() {
                    // The bytes were the start tag after all: the grammar starts over later.
                    waiting.speculating = false;
                    self.matcher = fresh;
                }
                Ok(true)
            }
            // Still (maybe) the start tag. A special token (no text) there is reasoning in a
            // reply that starts inside the block, content (EOS, from the grammar's mask) in
            // one that may open it.
            SplitState::Opening { .. } if !(opening && text.is_empty()) => {
                if waiting.speculating && self.matcher.consume_token(token).is_err() {
                    waiting.speculating = false;
                }
                Ok(true)
            }
            SplitState::Opening { .. } | SplitState::Content => {
                let speculated = waiting.speculating;
                self.waiting = None;
                if !opening {
                    // The token ended the block; the mask banned tokens that carry content
                    // past the end tag, so the grammar's first token is the next one.
                    return match content {
                        0 => Ok(true),
                        _ => Err(EngineError::Grammar(
                            "content began inside the token that closed the reasoning block".into(),
                        )),
                    };
                }
                if !speculated {
                    return Err(EngineError::Grammar(
                        "the reply began content the grammar refused".into(),
                    ));
                }
                // The reply opened no block: this token is content, after the ones the
                // matcher already followed.
                Ok(false)
            }
        }
    }

    /// Advances the matcher past the sampled `token`. Tokens after the grammar ended (EOS
    /// under `ignore_eos`) are not fed to it.
    pub fn advance(&mut self, token: u32) -> Result<(), EngineError> {
        self.next_mask = None;
        if self.advance_waiting(token)? {
            return Ok(());
        }
        if self.matcher.is_stopped() {
            return match self.matcher.get_error() {
                Some(e) => Err(EngineError::Grammar(e)),
                None => Ok(()),
            };
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| EngineError::Grammar(e.to_string()))
    }
}

/// Samples one constrained token: the mask (computed ahead, or now), then the sampler under
/// it, then the matcher advanced past the token. `Err` ends the request (see the module docs).
pub(crate) fn sample(
    sampler: &mut crate::sampling::SequenceSampler,
    grammar: &mut GrammarState,
    logits: &mut [f32],
) -> Result<crate::sampling::SampledToken, EngineError> {
    let mask = grammar.take_mask()?;
    let token = sampler
        .sample_masked(logits, mask.as_slice())
        .ok_or_else(|| {
            EngineError::Grammar(
                "no token the grammar allows can be sampled here (the grammar, min_tokens or \
                 stop_token_ids exclude every candidate)"
                    .into(),
            )
        })?;
    grammar.advance(token.token)?;
    Ok(token)
}

/// The fuzz oracle (`fuzz/fuzz_targets/structured_schema.rs`): walks up to `steps` tokens,
/// each the lowest id its mask allows, and panics if a matcher refuses a token its own mask
/// allowed, or a mask allows an id past the vocabulary.
#[doc(hidden)]
pub fn fuzz_walk(matcher: GrammarMatcher, steps: usize) {
    let mut state = GrammarState::new(matcher);
    for _ in 0..steps {
        let Ok(mask) = state.take_mask() else {
            return;
        };
        let mut first = None;
        mask.iter_set_entries(|id| {
            first.get_or_insert(id);
        });
        let Some(token) = first else {
            return;
        };
        let vocab = state
            .matcher
            .tok_env()
            .map_or(usize::MAX, |env| env.tok_trie().vocab_size());
        assert!(
            token < vocab,
            "mask allows id {token} past the vocabulary of {vocab}"
        );
        if let Err(e) = state.advance(token as u32) {
            panic!("the matcher refused token {token}, which its mask allowed: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
