//! Bad model input is a clear error naming the file and what was expected, never a panic.

mod forward_common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use forward_common::write_tiny_gguf;
use metrum_engine::model::fixture::write_tiny_llama_fixture;
use metrum_engine::model::{DecoderModel, ModelError, resolve_dtype};
use metrum_engine::source::ModelFiles;

fn gguf(path: &Path) -> Result<DecoderModel, ModelError> {
    DecoderModel::load_gguf(path, &Device::Cpu, DType::F32)
}

fn dir_model(dir: &Path) -> Result<DecoderModel, ModelError> {
    DecoderModel::load_safetensors(
        &dir.join("config.json"),
        &[dir.join("model.safetensors")],
        &Device::Cpu,
        DType::F32,
    )
}

fn message_names(err: &ModelError, parts: &[&str]) {
    let text = err.to_string();
    for part in parts {
        assert!(
            text.contains(part),
            "error {text:?} should mention {part:?}"
        );
    }
}

#[test]
fn unknown_path_names_the_file() {
    let path = Path::new("/nonexistent/dir/model.gguf");
    let err = gguf(path).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err:?}");
    message_names(&err, &["/nonexistent/dir/model.gguf"]);
    let files = ModelFiles::Gguf {
        path: path.into(),
        tokenizer_json: None,
        tokenizer_config: None,
    };
    assert!(DecoderModel::load(&files, &Device::Cpu, DType::F32).is_err());
}

#[test]
fn corrupt_gguf_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let not_gguf = dir.path().join("noise.gguf");
    std::fs::write(&not_gguf, b"this is not a gguf file at all, just some text").unwrap();
    let err = gguf(&not_gguf).unwrap_err();
    assert!(matches!(err, ModelError::BadGguf { .. }), "{err:?}");
    message_names(&err, &["noise.gguf", "not a valid GGUF"]);

    // Right magic, absurd counts.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(u64::MAX.to_le_bytes());
    bytes.extend(u64::MAX.to_le_bytes());
    let lying = dir.path().join("lying.gguf");
    std::fs::write(&lying, bytes).unwrap();
    let err = gguf(&lying).unwrap_err();
    assert!(matches!(err, ModelError::BadGguf { .. }), "{err:?}");
}

#[test]
fn truncated_gguf_is_rejected_at_any_cut() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.gguf");
    write_tiny_gguf(&whole, 1, "llama", false);
    let bytes = std::fs::read(&whole).unwrap();
    assert!(gguf(&whole).is_ok());
    for fraction in [0.02, 0.1, 0.5, 0.9, 0.999] {
        let cut = dir.path().join("cut.gguf");
        std::fs::write(&cut, &bytes[..(bytes.len() as f64 * fraction) as usize]).unwrap();
        let err = gguf(&cut).unwrap_err();
        assert!(
            matches!(err, ModelError::BadGguf { .. }),
            "cut at {fraction}: {err:?}"
        );
        message_names(&err, &["cut.gguf"]);
    }
}

#[test]
fn gguf_of_another_architecture_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt2.gguf");
    write_tiny_gguf(&path, 1, "gpt2", false);
    let err = gguf(&path).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture { .. }),
        "{err:?}"
    );
    message_names(&err, &["gpt2.gguf", "'gpt2'", "llama"]);
}

#[test]
fn config_of_another_architecture_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama_fixture(dir.path(), 1).unwrap();
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("LlamaForCausalLM", "GPT2LMHeadModel")).unwrap();
    let err = dir_model(dir.path()).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture { .. }),
        "{err:?}"
    );
    message_names(
        &err,
        &["config.json", "GPT2LMHeadModel", "LlamaForCausalLM"],
    );
}

#[test]
fn malformed_config_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama_fixture(dir.path(), 1).unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, "{\"architectures\": [\"LlamaForCausalLM\"]}").unwrap();
    let err = dir_model(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::BadConfig { .. }), "{err:?}");
    message_names(&err, &["config.json", "hidden_size"]);
}

#[test]
fn unsupported_dtypes_are_rejected() {
    let err = resolve_dtype("int4", &Device::Cpu).unwrap_err();
    assert!(matches!(err, ModelError::UnsupportedDType(_)));
    message_names(&err, &["int4", "f32, f16 or bf16"]);
    assert_eq!(resolve_dtype("auto", &Device::Cpu).unwrap(), DType::F32);
    assert_eq!(resolve_dtype("BF16", &Device::Cpu).unwrap(), DType::BF16);
    let err = DecoderModel::synthetic("tiny", &Device::Cpu, DType::U8, 0).unwrap_err();
    assert!(matches!(err, ModelError::UnsupportedDType(_)), "{err:?}");

    // A checkpoint holding integer weights.
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama_fixture(dir.path(), 1).unwrap();
    let weights = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    let name = "model.layers.0.self_attn.q_proj.weight";
    let ints = Tensor::zeros(tensors[name].dims(), DType::I64, &Device::Cpu).unwrap();
    tensors.insert(name.into(), ints);
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let err = dir_model(dir.path()).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedTensorDType { .. }),
        "{err:?}"
    );
    message_names(
        &err,
        &["model.safetensors", name, "I64", "f32, f16 or bf16"],
    );
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama_fixture(dir.path(), 1).unwrap();
    let weights = dir.path().join("model.safetensors");
    let original = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();

    let mut tensors = original.clone();
    tensors.remove("model.layers.1.mlp.up_proj.weight");
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let err = dir_model(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err:?}");
    message_names(&err, &["model.layers.1.mlp.up_proj.weight"]);

    let mut tensors = original;
    let name = "model.layers.0.self_attn.k_proj.weight";
    tensors.insert(
        name.into(),
        Tensor::zeros((3, 256), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let err = dir_model(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::TensorShape { .. }), "{err:?}");
    message_names(&err, &[name, "[3, 256]", "[128, 256]"]);
}

#[test]
fn corrupt_safetensors_and_missing_shards_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama_fixture(dir.path(), 1).unwrap();
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = dir_model(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::BadSafetensors { .. }), "{err:?}");
    message_names(&err, &["model.safetensors"]);

    std::fs::write(&weights, &bytes).unwrap();
    let index =
        serde_json::json!({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let err = dir_model(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::BadSafetensors { .. }), "{err:?}");
    message_names(&err, &["model-00002-of-00002.safetensors", "missing"]);
}

#[test]
fn unknown_synthetic_name_lists_the_known_ones() {
    let err = DecoderModel::synthetic("gpt-5", &Device::Cpu, DType::F32, 0).unwrap_err();
    assert!(
        matches!(err, ModelError::UnknownSynthetic { .. }),
        "{err:?}"
    );
    message_names(&err, &["gpt-5", "tiny", "llama-3.1-8b"]);
}

#[test]
fn gguf_with_a_type_candle_cannot_read_names_the_tensor_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iq4.gguf");
    write_tiny_gguf(&path, 1, "llama", false);
    let mut bytes = std::fs::read(&path).unwrap();
    // Tensor info: name, n_dims (u32), dims (u64 each), ggml type (u32), offset (u64).
    let name = b"blk.0.attn_q.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor name in the header");
    let dims_at = at + name.len();
    let n_dims = u32::from_le_bytes(bytes[dims_at..dims_at + 4].try_into().unwrap()) as usize;
    let type_at = dims_at + 4 + 8 * n_dims;
    bytes[type_at..type_at + 4].copy_from_slice(&23u32.to_le_bytes()); // IQ4_XS
    std::fs::write(&path, bytes).unwrap();
    let err = gguf(&path).unwrap_err();
    assert!(matches!(err, ModelError::BadGguf { .. }), "{err:?}");
    message_names(&err, &["iq4.gguf", "'blk.0.attn_q.weight'", "IQ4_XS"]);
}
