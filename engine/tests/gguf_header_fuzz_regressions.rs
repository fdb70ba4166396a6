//! Inputs the `gguf` fuzz target (fuzz/fuzz_targets/gguf.rs) found, kept as regressions: each
//! must be a clear load error from every reader of GGUF metadata, never a panic.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{DType, Device};
use metrum_engine::chat_template::ChatTemplate;
use metrum_engine::model::DecoderModel;
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
        let err = DecoderModel::read_gguf_header(&mut Cursor::new(&bytes)).unwrap_err();
        assert!(err.contains("general.alignment"), "{alignment:?}: {err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let Err(err) = DecoderModel::load_gguf(&path, &Device::Cpu, DType::F32) else {
            panic!("{alignment:?}: the model loaded");
        };
        assert!(err.to_string().contains("general.alignment"), "{err}");
        let Err(err) = Tokenizer::from_gguf_file(&path) else {
            panic!("{alignment:?}: the tokenizer loaded");
        };
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
    let content = DecoderModel::read_gguf_header(&mut Cursor::new(gguf(&metadata))).unwrap();
    assert_eq!(content.tensor_data_offset % 64, 0);
    assert_eq!(content.metadata.len(), metadata.len());
    // No alignment key at all: candle's default.
    let content = DecoderModel::read_gguf_header(&mut Cursor::new(gguf(&busy_prefix()))).unwrap();
    assert_eq!(content.tensor_data_offset % 32, 0);
    // Not GGUF: candle's own error, no panic.
    assert!(DecoderModel::read_gguf_header(&mut Cursor::new(b"GGML....")).is_err());
    assert!(DecoderModel::read_gguf_header(&mut Cursor::new(b"")).is_err());
}

/// A llama header whose token embedding and `extra` tensors exist, with `block_count` and
/// `context_length` as given (head_dim 16).
fn sized_llama(block_count: u32, context_length: u32, extra: usize) -> Vec<u8> {
    use candle_core::Tensor;
    use candle_core::quantized::{GgmlDType, QTensor};
    let q = |dims: &[usize]| {
        let t = Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap();
        QTensor::quantize(&t, GgmlDType::F32).unwrap()
    };
    let mut tensors = vec![("token_embd.weight".to_string(), q(&[8, 32]))];
    tensors.extend((0..extra).map(|i| (format!("x{i}.weight"), q(&[32]))));
    let metadata = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(block_count)),
        ("llama.context_length", Value::U32(context_length)),
        ("llama.embedding_length", Value::U32(32)),
        ("llama.feed_forward_length", Value::U32(32)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
    ];
    let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut bytes = Vec::new();
    gguf_file::write(&mut Cursor::new(&mut bytes), &refs, &tensor_refs).unwrap();
    bytes
}

fn load_error(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    match DecoderModel::load_gguf(&path, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("the model loaded"),
        Err(e) => e.to_string(),
    }
}

/// crash-…(block_count): a mutated `llama.block_count` sized `Vec::with_capacity` before any
/// layer was read: a 402 GB allocation and an abort. Likewise `llama.context_length` sizes
/// the RoPE tables. Both are now checked against what the file can back.
#[test]
fn counts_the_file_cannot_back_are_load_errors_not_aborts() {
    let err = load_error(&sized_llama(u32::MAX, 256, 9));
    assert!(
        err.contains("llama.block_count") && err.contains("tensors"),
        "{err}"
    );
    let err = load_error(&sized_llama(2, 256, 9));
    assert!(
        err.contains("llama.block_count"),
        "2 layers need 18 tensors: {err}"
    );
    let err = load_error(&sized_llama(1, u32::MAX, 9));
    assert!(err.contains("llama.context_length"), "{err}");
    // Within bounds, loading goes on to the missing layer tensors.
    let err = load_error(&sized_llama(1, 1 << 20, 9));
    assert!(err.contains("blk.0"), "{err}");
}

/// crash-688c136c…, as the fuzzer wrote it: `token_embd.weight` of shape
/// [2^61 + 16, 32] made the byte count wrap to 544, which passed the file-size check, and
/// the quantized kernel then indexed rows the buffer did not have.
#[test]
fn a_tensor_shape_whose_size_overflows_is_a_load_error() {
    let bytes = include_bytes!("../../fuzz/seeds/gguf/crash_shape_overflow.gguf");
    let err = load_error(bytes);
    assert!(
        err.contains("token_embd.weight") && err.contains("impossible shape"),
        "{err}"
    );
}
