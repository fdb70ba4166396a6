//! A family checkpoint whose config is missing, malformed or contradictory is a load error
//! that names the field, never a panic and never a silently different model. Each case
//! copies a committed transformers fixture (`tests/fixtures/families/`), breaks one field of
//! its `config.json`, and loads it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use metrum_engine::model::{DecoderModel, ModelError};
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/families/{name}"))
}

/// Loads `family`'s fixture with `edit` applied to its config.json.
fn load_edited(family: &str, edit: impl FnOnce(&mut Value)) -> Result<DecoderModel, ModelError> {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(family);
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let weights = src.join("model.safetensors");
    DecoderModel::load_safetensors(
        &dir.path().join("config.json"),
        &[weights],
        &Device::Cpu,
        DType::F32,
    )
}

/// The load fails with a config error whose text names every one of `parts`.
fn fails_naming(result: Result<DecoderModel, ModelError>, parts: &[&str]) {
    let err = result.expect_err("the broken config must not load");
    let text = err.to_string();
    for part in parts {
        assert!(
            text.contains(part),
            "error {text:?} should mention {part:?}"
        );
    }
}

#[test]
fn every_fixture_loads_unedited() {
    for family in [
        "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "phi4mini",
    ] {
        load_edited(family, |_| {}).unwrap_or_else(|e| panic!("{family}: {e}"));
    }
}

#[test]
fn an_unknown_architecture_lists_the_supported_ones() {
    let result = load_edited("qwen2", |c| {
        c["architectures"] = json!(["FalconForCausalLM"]);
    });
    fails_naming(
        result,
        &[
            "FalconForCausalLM",
            "Qwen2ForCausalLM",
            "Gemma3ForCausalLM",
            "Phi3ForCausalLM",
        ],
    );
}

#[test]
fn head_dim_must_be_given_when_hidden_is_not_a_multiple_of_heads() {
    // Qwen3 and Gemma declare head_dim explicitly; without it the split must be exact.
    let result = load_edited("qwen3", |c| {
        c.as_object_mut().unwrap().remove("head_dim");
        c["hidden_size"] = json!(66);
    });
    fails_naming(result, &["head_dim", "66"]);
}

#[test]
fn heads_must_be_a_multiple_of_kv_heads() {
    fails_naming(
        load_edited("gemma2", |c| c["num_key_value_heads"] = json!(3)),
        &["num_key_value_heads", "not a multiple"],
    );
}

#[test]
fn an_unknown_rope_type_is_named() {
    let result = load_edited("qwen2", |c| {
        c["rope_parameters"] =
            json!({"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0});
    });
    fails_naming(result, &["rope_scaling", "dynamic"]);
    // LongRoPE belongs to Phi-3; anywhere else it is refused, not ignored.
    let result = load_edited("qwen3", |c| {
        c["rope_parameters"] = json!({"rope_type": "longrope", "rope_theta": 10000.0});
    });
    fails_naming(result, &["longrope"]);
}

#[test]
fn longrope_factors_must_cover_the_rotary_dims() {
    let result = load_edited("phi4mini", |c| {
        c["rope_parameters"]["long_factor"] = json!([1.0, 2.0]);
    });
    fails_naming(result, &["LongRoPE", "6 factors"]);
    let result = load_edited("phi4mini", |c| {
        c.as_object_mut()
            .unwrap()
            .remove("original_max_position_embeddings");
        c["rope_parameters"]
            .as_object_mut()
            .unwrap()
            .remove("original_max_position_embeddings");
    });
    fails_naming(result, &["original_max_position_embeddings"]);
}

#[test]
fn layer_types_must_match_the_layers() {
    let result = load_edited("gemma3", |c| {
        c["layer_types"] = json!(["sliding_attention", "full_attention"]);
    });
    fails_naming(result, &["layer_types", "2 layer types for 3 layers"]);
    let result = load_edited("gemma2", |c| {
        c["layer_types"] = json!(["sliding_attention", "chunked_attention", "full_attention"]);
    });
    fails_naming(result, &["layer_types", "chunked_attention"]);
    let result = load_edited("gemma2", |c| c["sliding_window"] = Value::Null);
    fails_naming(result, &["sliding_window"]);
}

#[test]
fn wrong_activations_and_biases_are_refused() {
    fails_naming(
        load_edited("gemma2", |c| c["hidden_activation"] = json!("relu")),
        &["hidden_activation", "relu"],
    );
    fails_naming(
        load_edited("qwen2", |c| c["hidden_act"] = json!("gelu")),
        &["hidden_act", "gelu"],
    );
    // Llama with mlp_bias would need weights Metrum does not load: refused, not ignored.
    let result = load_edited("mistral", |c| {
        c["architectures"] = json!(["LlamaForCausalLM"]);
        c["mlp_bias"] = json!(true);
    });
    fails_naming(result, &["mlp_bias"]);
}

#[test]
fn bad_soft_caps_and_scales_are_named() {
    fails_naming(
        load_edited("gemma2", |c| c["attn_logit_softcapping"] = json!(-1.0)),
        &["softcapping"],
    );
    fails_naming(
        load_edited("gemma2", |c| c["query_pre_attn_scalar"] = json!(0)),
        &["query_pre_attn_scalar"],
    );
    fails_naming(
        load_edited("phi4mini", |c| c["partial_rotary_factor"] = json!(1.5)),
        &["partial_rotary_factor"],
    );
}

#[test]
fn a_missing_family_tensor_is_named() {
    // Qwen2 needs its q/k/v biases; a checkpoint without them is refused, not run bias-free.
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("qwen2");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .filter(|(name, _)| name != "model.layers.1.self_attn.k_proj.bias")
        .collect::<std::collections::HashMap<_, _>>();
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let err = DecoderModel::load_safetensors(
        &dir.path().join("config.json"),
        &[dir.path().join("model.safetensors")],
        &Device::Cpu,
        DType::F32,
    )
    .unwrap_err();
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("model.layers.1.self_attn.k_proj.bias")
    );
}
