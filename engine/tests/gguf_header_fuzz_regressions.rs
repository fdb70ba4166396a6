//! Inputs the `gguf` fuzz target (fuzz/fuzz_targets/gguf.rs) found, kept as regressions: each
//! must be a clear load error from every reader of GGUF metadata, never a panic.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{DType, Device};
use metrum_engine::chat_template::ChatTemplate;
use metrum_engine::model::LlamaModel;
use metrum_engine::source::ModelFiles;
use metrum_engine::tokenizer::Tokenizer;
use std::io::Cursor;

/// A tensor-less GGUF with `metadata` in this order.
fn gguf(metadata: &[(&str, Value)]) -> Vec<u8> {
    let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let mut bytes = Vec::new();
    gguf_file::write(&mut Cursor::new(&mut bytes), &refs, &[]).unwrap();
    bytes
}

/// Metadata of every value shape before the key the scan looks for.
fn busy_prefix() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("a.u8", Value::U8(1)),
        ("a.f64", Value::F64(2.0)),
        ("a.bool", Value::Bool(true)),
        (
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]),
        ),
        (
            "a.nested",
            Value::Array(vec![
                Value::Array(vec![Value::U32(1), Value::U32(2)]),
                Value::Array(vec![Value::String("x".into())]),
            ]),
        ),
        ("a.i64s", Value::Array(vec![Value::I64(-1), Value::I64(5)])),
    ]
}

/// crash-2268f985…: `general.alignment = 0` made candle's `Content::read` divide by zero,
/// so loading such a file panicked the engine thread instead of reporting a bad file.
#[test]
fn alignment_zero_is_a_load_error_not_a_panic() {
    for alignment in [Value::U32(0), Value::U8(0), Value::I32(0), Value::U64(0)] {
        let mut metadata = busy_prefix();
        metadata.push(("general.alignment", alignment.clone()));
        let bytes = gguf(&metadata);
        let err = LlamaModel::read_gguf_header(&mut Cursor::new(&bytes)).unwrap_err();
        assert!(err.contains("general.alignment"), "{alignment:?}: {err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let Err(err) = LlamaModel::load_gguf(&path, &Device::Cpu, DType::F32) else {
            panic!("{alignment:?}: the model loaded");
        };
        assert!(err.to_string().contains("general.alignment"), "{err}");
        let err = Tokenizer::from_gguf_file(&path)
            .err()
            .expect("no tokenizer");
        assert!(err.to_string().contains("general.alignment"), "{err}");
        let files = ModelFiles::Gguf {
            path: path.clone(),
            tokenizer_json: None,
            tokenizer_config: None,
        };
        let tokenizer = Tokenizer::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/text/smollm2/tokenizer.json"),
            None,
        )
        .unwrap();
        let err = ChatTemplate::from_model_files(&files, &tokenizer).unwrap_err();
        assert!(err.to_string().contains("general.alignment"), "{err}");
    }
}

#[test]
fn a_positive_alignment_still_reads_and_is_used() {
    let mut metadata = busy_prefix();
    metadata.push(("general.alignment", Value::U32(64)));
    let content = LlamaModel::read_gguf_header(&mut Cursor::new(gguf(&metadata))).unwrap();
    assert_eq!(content.tensor_data_offset % 64, 0);
    assert_eq!(content.metadata.len(), metadata.len());
    // No alignment key at all: candle's default.
    let content = LlamaModel::read_gguf_header(&mut Cursor::new(gguf(&busy_prefix()))).unwrap();
    assert_eq!(content.tensor_data_offset % 32, 0);
    // Not GGUF: candle's own error, no panic.
    assert!(LlamaModel::read_gguf_header(&mut Cursor::new(b"GGML....")).is_err());
    assert!(LlamaModel::read_gguf_header(&mut Cursor::new(b"")).is_err());
}
