//! The grammar compiler's input (structured outputs): arbitrary bytes as a JSON schema, a
//! regex, a Lark grammar or choices, compiled over the byte-level tokenizer, then a few masks
//! and tokens walked.
//!
//! Input: byte 0 picks the kind (mod 4); the rest is the payload (JSON for schemas and
//! choices, text otherwise).
//!
//! Oracles: nothing panics (an invalid input is an `Err`, the 400 a client gets); a compiled
//! grammar's masks never allow an id outside the vocabulary, and a token its mask allows is
//! always accepted by its matcher.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metrum_engine::structured::{ConstraintSpec, GrammarCompiler};
use metrum_engine::tokenizer::Tokenizer;
use std::sync::OnceLock;

fn compiler() -> &'static GrammarCompiler {
    static COMPILER: OnceLock<GrammarCompiler> = OnceLock::new();
    COMPILER.get_or_init(|| {
        GrammarCompiler::new(&Tokenizer::byte_level(), 256).expect("byte-level compiler")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(payload) else {
        return;
    };
    let spec = match kind % 4 {
        0 => match serde_json::from_str(text) {
            Ok(schema) => ConstraintSpec::JsonSchema(schema),
            Err(_) => return,
        },
        1 => ConstraintSpec::Regex(text.to_string()),
        2 => ConstraintSpec::Lark(text.to_string()),
        _ => match serde_json::from_str::<Vec<String>>(text) {
            Ok(choices) => ConstraintSpec::Choice(choices),
            Err(_) => return,
        },
    };
    let Ok(compiled) = compiler().compile(&spec) else {
        return;
    };
    let Ok(matcher) = compiled.matcher() else {
        return;
    };
    metrum_engine::structured::fuzz_walk(matcher, 16);
});
