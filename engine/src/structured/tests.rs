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
