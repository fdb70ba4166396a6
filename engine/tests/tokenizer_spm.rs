//! A GGUF with a SentencePiece (`llama`) vocabulary against the sentencepiece library itself.
//!
//! The vocabulary and the expected ids come from `fixtures/text/spm/spm_reference.json`,
//! made by sentencepiece 0.2.1 (see the README there). The test writes a real GGUF file with
//! candle's writer and loads it through the same path as any model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use metrum_engine::tokenizer::Tokenizer;
use serde_json::Value as Json;

struct Reference {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    cases: Vec<(String, Vec<u32>, String)>,
}

fn reference() -> Reference {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text/spm/spm_reference.json");
    let doc: Json =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    let strings = |key: &str| -> Vec<String> {
        doc[key]
            .as_array()
            .expect(key)
            .iter()
            .map(|v| v.as_str().expect("string").to_string())
            .collect()
    };
    Reference {
        tokens: strings("tokens"),
        scores: doc["scores"]
            .as_array()
            .expect("scores")
            .iter()
            .map(|v| v.as_f64().expect("f") as f32)
            .collect(),
        types: doc["types"]
            .as_array()
            .expect("types")
            .iter()
            .map(|v| v.as_i64().expect("i") as i32)
            .collect(),
        cases: doc["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| {
                let ids = c["ids"]
                    .as_array()
                    .expect("ids")
                    .iter()
                    .map(|v| v.as_u64().expect("id") as u32)
                    .collect();
                (
                    c["text"].as_str().expect("text").to_string(),
                    ids,
                    c["decoded"].as_str().expect("decoded").to_string(),
                )
            })
            .collect(),
    }
}

/// Writes a tensor-less GGUF whose metadata is a llama SentencePiece vocabulary.
fn write_gguf(dir: &Path, reference: &Reference, add_bos: Option<bool>) -> std::path::PathBuf {
    let mut metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.model", Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(
                reference
                    .tokens
                    .iter()
                    .cloned()
                    .map(Value::String)
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.scores",
            Value::Array(reference.scores.iter().copied().map(Value::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(reference.types.iter().copied().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
    ];
    if let Some(add_bos) = add_bos {
        metadata.push(("tokenizer.ggml.add_bos_token", Value::Bool(add_bos)));
    }
    let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let path = dir.join("spm.gguf");
    let mut file = std::fs::File::create(&path).expect("create gguf");
    gguf_file::write(&mut file, &refs, &[]).expect("write gguf");
    path
}

#[test]
fn spm_gguf_tokenizer_gives_sentencepiece_ids() {
    let reference = reference();
    let dir = tempfile::tempdir().expect("tempdir");
    let tokenizer =
        Tokenizer::from_gguf_file(&write_gguf(dir.path(), &reference, None)).expect("tokenizer");
    assert_eq!(tokenizer.vocab_size(), reference.tokens.len());
    assert_eq!(reference.cases.len(), 25);
    let mut byte_fallback_seen = false;
    for (text, ids, decoded) in &reference.cases {
        let got = tokenizer.encode(text, false).expect("encode");
        assert_eq!(&got, ids, "ids for {text:?}");
        assert_eq!(
            &tokenizer.decode(&got, false).expect("decode"),
            decoded,
            "decode of {text:?}"
        );
        byte_fallback_seen |= got.iter().any(|&id| (3..259).contains(&id));
    }
    assert!(
        byte_fallback_seen,
        "the cases exercise <0xNN> byte fallback"
    );
}

#[test]
fn spm_adds_bos_by_default_and_honours_the_flag() {
    let reference = reference();
    let dir = tempfile::tempdir().expect("tempdir");
    let (text, ids, _) = &reference.cases[0];
    let default =
        Tokenizer::from_gguf_file(&write_gguf(dir.path(), &reference, None)).expect("tokenizer");
    let mut with_bos = vec![1];
    with_bos.extend(ids);
    assert_eq!(default.encode(text, true).expect("encode"), with_bos);
    assert_eq!(default.bos_token_id(), Some(1));
    assert_eq!(
        default.eos_token_ids().iter().copied().collect::<Vec<_>>(),
        vec![2]
    );
    let no_bos = Tokenizer::from_gguf_file(&write_gguf(dir.path(), &reference, Some(false)))
        .expect("tokenizer");
    assert_eq!(&no_bos.encode(text, true).expect("encode"), ids);
    // Control tokens written as text are matched as the tokens themselves.
    assert_eq!(default.encode("<s>", false).expect("encode"), vec![1]);
    assert_eq!(
        default.decode(&[1, ids[0]], true).expect("decode"),
        default.decode(&ids[..1], true).expect("decode")
    );
}

#[test]
fn bad_metadata_is_an_error_not_a_panic() {
    let mut md: HashMap<String, Value> = HashMap::new();
    assert!(
        Tokenizer::from_gguf_metadata(&md).is_err(),
        "no tokenizer.ggml.model"
    );
    md.insert("tokenizer.ggml.model".into(), Value::String("rwkv".into()));
    assert!(
        Tokenizer::from_gguf_metadata(&md).is_err(),
        "unknown model kind"
    );
    md.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    md.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(vec![Value::String("a".into())]),
    );
    assert!(
        Tokenizer::from_gguf_metadata(&md).is_err(),
        "llama without scores"
    );
    md.insert(
        "tokenizer.ggml.scores".into(),
        Value::Array(vec![Value::F32(0.0), Value::F32(1.0)]),
    );
    assert!(
        Tokenizer::from_gguf_metadata(&md).is_err(),
        "scores of the wrong length"
    );
    md.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    md.insert("tokenizer.ggml.merges".into(), Value::Array(vec![]));
    md.insert(
        "tokenizer.ggml.pre".into(),
        Value::String("some-future-pre".into()),
    );
    md.remove("tokenizer.ggml.scores");
    let err = Tokenizer::from_gguf_metadata(&md).expect_err("unknown pre-tokenizer");
    assert!(err.to_string().contains("some-future-pre"), "{err}");
    md.insert("tokenizer.ggml.pre".into(), Value::String("smollm".into()));
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(7));
    assert!(
        Tokenizer::from_gguf_metadata(&md).is_err(),
        "eos id outside the vocabulary"
    );
}
