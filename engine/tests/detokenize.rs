//! Incremental detokenization and stop strings, on a byte-per-token tokenizer, SmolLM2's
//! byte-level BPE (fixtures/text/smollm2/tokenizer.json) and a SentencePiece vocabulary with
//! byte fallback (fixtures/text/spm).

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::Value;
use metrum_engine::detokenize::{IncrementalDetokenizer, StopChecker, StopOutcome, TextStream};
use metrum_engine::tokenizer::Tokenizer;
use proptest::prelude::*;

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/text"))
}

fn smollm2() -> Tokenizer {
    // Loaded once: proptest calls this for every case.
    static SMOLLM2: OnceLock<Tokenizer> = OnceLock::new();
    SMOLLM2
        .get_or_init(|| {
            let dir = fixtures().join("smollm2");
            Tokenizer::from_file(
                &dir.join("tokenizer.json"),
                Some(&dir.join("tokenizer_config.json")),
            )
            .expect("tokenizer")
        })
        .clone()
}

fn spm() -> Tokenizer {
    let text = std::fs::read_to_string(fixtures().join("spm/spm_reference.json")).expect("fixture");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let array = |key: &str, f: &dyn Fn(&serde_json::Value) -> Value| {
        Value::Array(doc[key].as_array().expect(key).iter().map(f).collect())
    };
    let md: HashMap<String, Value> = [
        ("tokenizer.ggml.model", Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            array("tokens", &|v| Value::String(v.as_str().expect("s").into())),
        ),
        (
            "tokenizer.ggml.scores",
            array("scores", &|v| Value::F32(v.as_f64().expect("f") as f32)),
        ),
        (
            "tokenizer.ggml.token_type",
            array("types", &|v| Value::I32(v.as_i64().expect("i") as i32)),
        ),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Tokenizer::from_gguf_metadata(&md).expect("spm tokenizer")
}

/// Streams `ids` token by token; returns the deltas (the last one from `finish`).
fn stream(tokenizer: &Tokenizer, context: &[u32], ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut detok = IncrementalDetokenizer::with_context(context, skip_special);
    let mut deltas: Vec<String> = ids
        .iter()
        .map(|&id| detok.push(tokenizer, id).expect("push"))
        .collect();
    deltas.push(detok.finish(tokenizer).expect("finish"));
    deltas
}

const TEXTS: &[&str] = &[
    "Hello, world!",
    "Emoji: 😀👍🏽🇺🇸 and ❤️ 👨‍👩‍👧‍👦 done",
    "🎉",
    "你好，世界！这是一个测试。日本語のテキスト",
    "  leading\tand\n\ntrailing  ",
    "Ωμέγα ψ and Россия",
    "def f(x):\n    return x ** 2",
];

#[test]
fn an_emoji_split_over_byte_tokens_comes_out_whole() {
    let tokenizer = Tokenizer::byte_level();
    let ids = tokenizer.encode("a😀b", false).expect("encode");
    assert_eq!(ids, vec![0x61, 0xF0, 0x9F, 0x98, 0x80, 0x62]);
    assert_eq!(
        stream(&tokenizer, &[], &ids, false),
        vec!["a", "", "", "", "😀", "b", ""]
    );
}

#[test]
fn bytes_that_never_complete_become_one_replacement_at_the_end() {
    let tokenizer = Tokenizer::byte_level();
    let deltas = stream(&tokenizer, &[], &[0x61, 0xF0, 0x9F], false);
    assert_eq!(deltas, vec!["a", "", "", "\u{FFFD}"]);
    assert_eq!(
        deltas.concat(),
        tokenizer
            .decode(&[0x61, 0xF0, 0x9F], false)
            .expect("decode")
    );
    // A stray continuation byte mid-stream shows as U+FFFD once the next character arrives.
    assert_eq!(
        stream(&tokenizer, &[], &[0x80, 0x61], false),
        vec!["", "\u{FFFD}a", ""]
    );
}

#[test]
fn real_tokenizers_stream_valid_text_that_adds_up_to_the_full_decode() {
    for (name, tokenizer) in [
        ("smollm2", smollm2()),
        ("spm", spm()),
        ("bytes", Tokenizer::byte_level()),
    ] {
        for text in TEXTS {
            let ids = tokenizer.encode(text, false).expect("encode");
            let deltas = stream(&tokenizer, &[], &ids, false);
            let full = tokenizer.decode(&ids, false).expect("decode");
            assert!(
                deltas.iter().all(|d| !d.contains('\u{FFFD}')),
                "{name}: partial character leaked for {text:?}: {deltas:?}"
            );
            assert_eq!(deltas.concat(), full, "{name}: {text:?}");
            assert_eq!(full, *text, "{name} round trip");
        }
    }
    // The SentencePiece fixture spells emoji with <0xNN> byte-fallback tokens.
    let spm = spm();
    let ids = spm.encode("🎉", false).expect("encode");
    assert!(ids.len() >= 4, "{ids:?}");
}

#[test]
fn context_keeps_the_first_generated_space_and_special_tokens_can_be_skipped() {
    for tokenizer in [smollm2(), spm()] {
        let ids = tokenizer
            .encode("The capital of France is Paris.", false)
            .expect("encode");
        // Generation starts at a word-initial token (`▁P` / `ĠParis`), whose space only shows
        // in context: decoded alone, SentencePiece strips it.
        let split = (1..ids.len())
            .rev()
            .find(|&i| {
                tokenizer
                    .token_to_piece(ids[i])
                    .is_some_and(|p| p.starts_with('▁') || p.starts_with('Ġ'))
            })
            .expect("a word-initial token");
        let (prompt, generated) = ids.split_at(split);
        let deltas = stream(&tokenizer, prompt, generated, false);
        let whole = tokenizer.decode(&ids, false).expect("decode");
        let prompt_text = tokenizer.decode(prompt, false).expect("decode");
        assert_eq!(deltas.concat(), whole[prompt_text.len()..]);
        assert!(deltas.concat().starts_with(' '), "{deltas:?}");
    }
    let tokenizer = smollm2();
    let ids = tokenizer.encode("Paris.<|im_end|>", false).expect("encode");
    assert_eq!(stream(&tokenizer, &[], &ids, true).concat(), "Paris.");
    assert_eq!(
        stream(&tokenizer, &[], &ids, false).concat(),
        "Paris.<|im_end|>"
    );
}

fn outcome_text(outcome: &StopOutcome) -> &str {
    match outcome {
        StopOutcome::Continue(text) | StopOutcome::Stop { text, .. } => text,
    }
}

#[test]
fn stop_strings_across_deltas() {
    let mut checker = StopChecker::new(["STOP", "\n\n"]);
    assert_eq!(
        checker.push("Hello S"),
        StopOutcome::Continue("Hello ".into())
    );
    assert_eq!(checker.push("TO"), StopOutcome::Continue(String::new()));
    assert_eq!(
        checker.push("P and more"),
        StopOutcome::Stop {
            text: String::new(),
            stop: "STOP".into()
        }
    );
    assert!(checker.is_stopped());
    assert_eq!(
        checker.push("ignored"),
        StopOutcome::Continue(String::new())
    );

    // A held prefix that turns out not to be a stop string is released.
    let mut checker = StopChecker::new(["STOP"]);
    assert_eq!(checker.push("ST"), StopOutcome::Continue(String::new()));
    assert_eq!(checker.push("ay"), StopOutcome::Continue("STay".into()));
    assert_eq!(checker.push("S"), StopOutcome::Continue(String::new()));
    assert_eq!(checker.finish(), "S");

    // The earliest match wins when several complete in the same delta.
    let mut checker = StopChecker::new(["world", "lo w"]);
    assert_eq!(
        checker.push("Hello world"),
        StopOutcome::Stop {
            text: "Hel".into(),
            stop: "lo w".into()
        }
    );

    // Empty stop strings are ignored; multi-byte stop strings hold back whole characters.
    let mut checker = StopChecker::new(["", "😀!"]);
    assert_eq!(checker.push("a😀"), StopOutcome::Continue("a".into()));
    assert_eq!(checker.push("?"), StopOutcome::Continue("😀?".into()));
}

#[test]
fn text_stream_stops_on_a_string_spanning_tokens() {
    let tokenizer = smollm2();
    let text = "The answer is 42.\n\nQuestion: next one?";
    let ids = tokenizer.encode(text, false).expect("encode");
    let mut stream = TextStream::new(&[], true, ["\n\nQuestion"]);
    let mut shown = String::new();
    let mut stopped_at = None;
    for (i, &id) in ids.iter().enumerate() {
        let outcome = stream.push(&tokenizer, id).expect("push");
        shown.push_str(outcome_text(&outcome));
        if let StopOutcome::Stop { stop, .. } = outcome {
            assert_eq!(stop, "\n\nQuestion");
            stopped_at = Some(i);
            break;
        }
    }
    assert_eq!(shown, "The answer is 42.");
    let stop_token = stopped_at.expect("stopped");
    let through_stop = tokenizer
        .decode(&ids[..=stop_token], false)
        .expect("decode");
    assert!(
        through_stop.ends_with("Question"),
        "stopped on the token completing the stop string: {through_stop:?}"
    );

    // Without a stop string, finish() flushes everything held back.
    let mut stream = TextStream::new(&[], true, ["never"]);
    let ids = tokenizer.encode("ends with nev", false).expect("encode");
    let mut shown: String = ids
        .iter()
        .map(|&id| outcome_text(&stream.push(&tokenizer, id).expect("push")).to_string())
        .collect();
    shown.push_str(outcome_text(&stream.finish(&tokenizer).expect("finish")));
    assert_eq!(shown, "ends with nev");
}

/// Earliest-completing stop (ties: earliest start), as char-by-char streaming must find it.
fn reference_cut(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|start| (start + s.len(), start)))
        .min()
        .map(|(_, start)| start)
}

proptest! {
    #[test]
    fn random_byte_streams_add_up_to_the_full_decode(ids in proptest::collection::vec(0u32..256, 0..40)) {
        let tokenizer = Tokenizer::byte_level();
        let deltas = stream(&tokenizer, &[], &ids, false);
        prop_assert_eq!(deltas.concat(), tokenizer.decode(&ids, false).unwrap());
    }

    #[test]
    fn random_smollm2_streams_add_up_to_the_full_decode(ids in proptest::collection::vec(0u32..49152, 0..30), skip in any::<bool>()) {
        let tokenizer = smollm2();
        let deltas = stream(&tokenizer, &[], &ids, skip);
        prop_assert_eq!(deltas.concat(), tokenizer.decode(&ids, skip).unwrap());
    }

    #[test]
    fn one_stop_string_cuts_at_its_first_occurrence_however_the_text_is_split(
        text in "[ab😀\n]{0,30}",
        stop in "[ab😀\n]{1,4}",
        cuts in proptest::collection::vec(0usize..40, 0..8),
    ) {
        let mut bounds: Vec<usize> = cuts.into_iter().filter(|&c| c < text.len() && text.is_char_boundary(c)).collect();
        bounds.extend([0, text.len()]);
        bounds.sort_unstable();
        bounds.dedup();
        let mut checker = StopChecker::new([stop.clone()]);
        let mut shown = String::new();
        let mut stopped = false;
        for pair in bounds.windows(2) {
            match checker.push(&text[pair[0]..pair[1]]) {
                StopOutcome::Continue(t) => shown.push_str(&t),
                StopOutcome::Stop { text: t, .. } => { shown.push_str(&t); stopped = true; break; }
            }
        }
        if !stopped { shown.push_str(&checker.finish()); }
        let expected = text.find(stop.as_str()).map_or(text.as_str(), |at| &text[..at]);
        prop_assert_eq!(shown, expected);
        prop_assert_eq!(stopped, text.contains(stop.as_str()));
    }

    #[test]
    fn several_stop_strings_streamed_char_by_char(
        text in "[abc]{0,30}",
        stops in proptest::collection::vec("[abc]{1,4}", 1..4),
    ) {
        let mut checker = StopChecker::new(stops.clone());
        let mut shown = String::new();
        let mut stopped = false;
        for ch in text.chars() {
            match checker.push(&ch.to_string()) {
                StopOutcome::Continue(t) => shown.push_str(&t),
                StopOutcome::Stop { text: t, .. } => { shown.push_str(&t); stopped = true; break; }
            }
        }
        if !stopped { shown.push_str(&checker.finish()); }
        let expected = reference_cut(&text, &stops).map_or(text.as_str(), |at| &text[..at]);
        prop_assert_eq!(shown, expected);
    }
}
