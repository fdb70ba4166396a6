//! Grammars over the byte-level tokenizer (token `b` = byte `b`, one pseudo EOS id 256), so
//! every mask can be read as a set of bytes.

use super::*;
use crate::sampling::SequenceSampler;
use crate::tokenizer::Tokenizer;
use metrum_core::SamplingParams;

fn compiler() -> GrammarCompiler {
    GrammarCompiler::new(&Tokenizer::byte_level(), 256).unwrap()
}

fn allowed_bytes(mask: &SimpleVob) -> Vec<u8> {
    (0..256u32)
        .filter(|&t| mask.is_allowed(t))
        .map(|t| t as u8)
        .collect()
}

/// Greedy-free walk: always takes the lowest allowed byte until only EOS is left.
fn walk(spec: &ConstraintSpec, limit: usize) -> String {
    let compiled = compiler().compile(spec).unwrap();
    let mut state = GrammarState::new(compiled.matcher().unwrap());
    let mut out = Vec::new();
    for _ in 0..limit {
        let mask = state.take_mask().unwrap();
        match (0..256u32).find(|&t| mask.is_allowed(t)) {
            Some(t) => {
                out.push(t as u8);
                state.advance(t).unwrap();
            }
            None => break, // only EOS (id 256) is left
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn choice_allows_exactly_the_first_bytes_of_its_options_and_matches_literally() {
    let compiled = compiler()
        .compile(&ConstraintSpec::Choice(vec![
            "yes".into(),
            "no".into(),
            "a.b".into(),
        ]))
        .unwrap();
    let mut state = GrammarState::new(compiled.matcher().unwrap());
    assert_eq!(allowed_bytes(&state.take_mask().unwrap()), b"any".to_vec());
    state.advance(u32::from(b'a')).unwrap();
    // `.` is literal, not "any byte".
    assert_eq!(allowed_bytes(&state.take_mask().unwrap()), b".".to_vec());
}

#[test]
fn a_json_schema_walk_yields_valid_compact_json() {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"n": {"type": "integer"}, "s": {"type": "string", "maxLength": 3}},
        "required": ["n", "s"],
        "additionalProperties": false
    });
    let text = walk(&ConstraintSpec::JsonSchema(schema), 200);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    // serde_json reads the integer `-0` (the lowest bytes spell it) as a float.
    assert!(
        value["n"].as_f64() == Some(0.0) && value["s"].is_string(),
        "{text}"
    );
    // Compact by default: no whitespace between tokens (string contents may hold spaces).
    assert!(
        text.starts_with("{\"n\":") && text.contains(",\"s\":\""),
        "{text}"
    );
}

#[test]
fn regex_walk_matches_and_ends_with_only_eos_allowed() {
    let text = walk(&ConstraintSpec::Regex("[0-9]{3}-x".into()), 50);
    assert_eq!(text, "000-x");
}

#[test]
fn invalid_and_unsupported_schemas_are_errors_not_panics() {
    let c = compiler();
    for bad in [
        serde_json::json!({"type": "no-such-type"}),
        serde_json::json!({"type": "string", "format": "no-such-format"}),
        serde_json::json!({"$ref": "#/$defs/missing"}),
        serde_json::json!({"type": "string", "pattern": "(?=lookahead)"}),
    ] {
        let err = c
            .compile(&ConstraintSpec::JsonSchema(bad.clone()))
            .unwrap_err();
        assert!(!err.is_empty(), "{bad}");
    }
    assert!(
        c.compile(&ConstraintSpec::Lark("start: @@@".into()))
            .is_err()
    );
    assert!(c.compile(&ConstraintSpec::Regex("(".into())).is_err());
}

#[test]
fn the_cache_returns_the_same_compiled_grammar_and_matchers_are_independent() {
    let c = compiler();
    let spec = ConstraintSpec::Regex("ab|cd".into());
    let first = c.compile(&spec).unwrap();
    let second = c.compile(&spec).unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    let mut one = GrammarState::new(first.matcher().unwrap());
    let mut two = GrammarState::new(second.matcher().unwrap());
    one.take_mask().unwrap();
    one.advance(u32::from(b'a')).unwrap();
    assert_eq!(allowed_bytes(&one.take_mask().unwrap()), b"b".to_vec());
    assert_eq!(allowed_bytes(&two.take_mask().unwrap()), b"ac".to_vec());
}

#[test]
fn a_burst_of_one_new_schema_compiles_once() {
    let c = compiler();
    let spec = ConstraintSpec::JsonSchema(serde_json::json!({
        "type": "object",
        "properties": {"a": {"type": "array", "items": {"type": "string", "pattern": "[a-z]{2,9}"}}},
        "required": ["a"]
    }));
    let start = std::sync::Barrier::new(8);
    let grammars: Vec<Arc<CompiledGrammar>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    c.compile(&spec).unwrap()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(c.compiles(), 1);
    assert!(grammars.iter().all(|g| Arc::ptr_eq(g, &grammars[0])));
    // A different spec is a new compile; an invalid one fails again without recompiling.
    c.compile(&ConstraintSpec::Regex("x".into())).unwrap();
    let bad = ConstraintSpec::Regex("(".into());
    assert!(c.compile(&bad).is_err() && c.compile(&bad).is_err());
    assert_eq!(c.compiles(), 3);
}

#[test]
fn a_token_the_grammar_refuses_is_an_error() {
    let compiled = compiler()
        .compile(&ConstraintSpec::Regex("a".into()))
        .unwrap();
    let mut state = GrammarState::new(compiled.matcher().unwrap());
    assert!(state.advance(u32::from(b'z')).is_err());
}

#[test]
fn constrained_sampling_follows_the_mask_against_the_logits() {
    let compiled = compiler()
        .compile(&ConstraintSpec::Choice(vec!["zz".into()]))
        .unwrap();
    let mut state = GrammarState::new(compiled.matcher().unwrap());
    let params = SamplingParams {
        temperature: 1.0,
        seed: Some(1),
        ..SamplingParams::default()
    };
    let mut sampler = SequenceSampler::new(&params, &[], 0);
    for _ in 0..2 {
        // The row strongly prefers 'a'; the grammar only allows 'z'.
        let mut logits = vec![0.0_f32; 257];
        logits[usize::from(b'a')] = 50.0;
        let token = sample(&mut sampler, &mut state, &mut logits).unwrap();
        assert_eq!(token.token, u32::from(b'z'));
    }
}

mod reasoning_gate {
    //! The grammar waits for the reasoning block: a byte-level vocabulary (so `</think>` can
    //! arrive byte by byte) plus whole-tag tokens, a token that straddles the end tag, and a
    //! special EOS.
    use super::*;
    use crate::structured::reasoning::{ReplyStart, THINK_TAGS};
    use tokenizers::AddedToken;

    const END_TAG: u32 = 256;
    const START_TAG: u32 = 257;
    /// `k>{`: would finish `</think` and begin the content in the same token.
    const STRADDLE: u32 = 258;
    const EOS: u32 = 259;

    fn gated(spec: &ConstraintSpec, start: ReplyStart) -> GrammarState {
        let mut inner = Tokenizer::byte_level().inner().clone();
        inner.add_tokens(&[
            AddedToken::from("</think>", false),
            AddedToken::from("<think>", false),
            AddedToken::from("k>{", false),
        ]);
        inner.add_special_tokens(&[AddedToken::from("<eos>", true)]);
        let tokenizer = Tokenizer::with_specials(inner, None, vec![EOS]);
        assert_eq!(tokenizer.piece_to_token("k>{"), Some(STRADDLE));
        let compiler = GrammarCompiler::new(&tokenizer, tokenizer.vocab_size()).unwrap();
        let matcher = compiler.compile(spec).unwrap().matcher().unwrap();
        GrammarState::new(matcher.after_reasoning(compiler.reasoning_gate(THINK_TAGS), start))
    }

    fn feed(state: &mut GrammarState, text: &str) {
        for byte in text.bytes() {
            let mask = state.take_mask().unwrap();
            assert!(
                mask.is_allowed(u32::from(byte)),
                "{byte} refused in {text:?}"
            );
            state.advance(u32::from(byte)).unwrap();
        }
    }

    fn allowed(state: &mut GrammarState) -> Vec<u32> {
        let mask = state.take_mask().unwrap();
        (0..260).filter(|&t| mask.is_allowed(t)).collect()
    }

    fn digits() -> Vec<u32> {
        (u32::from(b'0')..=u32::from(b'9')).collect()
    }

    #[test]
    fn inside_the_block_nothing_is_constrained_and_the_grammar_starts_after_a_split_end_tag() {
        let spec = ConstraintSpec::Regex("[0-9]+".into());
        let mut state = gated(&spec, ReplyStart::Inside);
        // Free text, EOS included (a reply may end inside the block, all reasoning).
        assert_eq!(allowed(&mut state).len(), 260);
        feed(&mut state, "let me think: x < y </b>");
        assert!(!state.is_done());
        // `</think>` byte by byte. After `</thin` the straddling `k>{` is banned (it would
        // start the content inside the token that ends the block), nothing else.
        feed(&mut state, "</thin");
        let mask = allowed(&mut state);
        assert!(!mask.contains(&STRADDLE) && mask.len() == 259, "{mask:?}");
        feed(&mut state, "k");
        assert_eq!(allowed(&mut state).len(), 260);
        feed(&mut state, ">");
        // The grammar's first token is the one after the tag.
        assert_eq!(allowed(&mut state), digits());
        feed(&mut state, "42");
        assert!(allowed(&mut state).contains(&EOS));
    }

    #[test]
    fn a_whole_end_tag_token_starts_the_grammar_and_a_restated_start_tag_is_reasoning() {
        let spec = ConstraintSpec::Choice(vec!["yes".into(), "no".into()]);
        let mut state = gated(&spec, ReplyStart::Inside);
        for token in [START_TAG, u32::from(b'h'), END_TAG] {
            assert!(state.take_mask().unwrap().is_allowed(token));
            state.advance(token).unwrap();
        }
        assert_eq!(allowed(&mut state), vec![u32::from(b'n'), u32::from(b'y')]);
        feed(&mut state, "no");
        assert!(state.is_done());
    }

    #[test]
    fn a_reply_that_may_open_a_block_is_constrained_from_its_first_token_unless_it_does() {
        let spec = ConstraintSpec::Regex("[0-9]+".into());
        // No block: the first token is the grammar's or the start tag's.
        let mut state = gated(&spec, ReplyStart::MayOpen);
        let mut first = digits();
        first.extend([u32::from(b'<'), START_TAG]);
        first.sort_unstable();
        assert_eq!(allowed(&mut state), first);
        feed(&mut state, "7");
        assert_eq!(allowed(&mut state).len(), 11, "digits and EOS only");
        // A block: the start tag byte by byte, free reasoning, then the grammar.
        let mut state = gated(&spec, ReplyStart::MayOpen);
        feed(&mut state, "<thi");
        assert_eq!(allowed(&mut state), vec![u32::from(b'n')]);
        feed(&mut state, "nk>I'd say seven");
        assert_eq!(allowed(&mut state).len(), 260);
        state.take_mask().unwrap();
        state.advance(END_TAG).unwrap();
        assert_eq!(allowed(&mut state), digits());
    }

    #[test]
    fn content_that_starts_like_the_start_tag_is_followed_by_the_grammar_throughout() {
        // `<` is both the start tag's first byte and the content's: the matcher follows it
        // speculatively, and starts over when the tag completes.
        let spec = ConstraintSpec::Regex("<[a-z]>".into());
        let mut state = gated(&spec, ReplyStart::MayOpen);
        feed(&mut state, "<");
        let next = allowed(&mut state);
        assert!(next.contains(&u32::from(b'a')) && next.contains(&u32::from(b't')));
        feed(&mut state, "a>");
        assert!(state.is_done());
        let mut state = gated(&spec, ReplyStart::MayOpen);
        feed(&mut state, "<think>ok");
        state.take_mask().unwrap();
        state.advance(END_TAG).unwrap();
        assert_eq!(allowed(&mut state), vec![u32::from(b'<')]);
        feed(&mut state, "<z>");
        assert!(state.is_done());
    }
}
