//! A family checkpoint whose config is missing, malformed or contradictory is a load error
//! that names the field, never a panic and never a silently different model. Each case
//! copies a committed transformers fixture (`tests/fixtures/families/`), breaks one field of
//! its `config.json`, and loads it.

use std::path::{Path, PathBuf};

use candle_core::quantized::{QTensor, gguf_file};
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

/// The mixture-of-experts fixtures (`tests/fixtures/moe/`) through the same helpers.
const MIXTRAL: &str = "../moe/mixtral";
const QWEN3_MOE: &str = "../moe/qwen3moe";

#[test]
fn expert_fields_are_checked_and_named() {
    for family in [MIXTRAL, QWEN3_MOE] {
        load_edited(family, |_| {}).unwrap_or_else(|e| panic!("{family}: {e}"));
    }
    let too_many = load_edited(MIXTRAL, |c| c["num_experts_per_tok"] = json!(5));
    fails_naming(too_many, &["num_experts_per_tok", "5", "4 experts"]);
    let inconsistent = load_edited(QWEN3_MOE, |c| {
        c["num_experts"] = json!(8);
        c["num_local_experts"] = json!(16);
    });
    fails_naming(inconsistent, &["num_experts", "num_local_experts"]);
    let no_count = load_edited(MIXTRAL, |c| {
        c.as_object_mut().unwrap().remove("num_local_experts");
    });
    fails_naming(no_count, &["num_local_experts", "missing"]);
    let no_width = load_edited(QWEN3_MOE, |c| {
        c.as_object_mut().unwrap().remove("moe_intermediate_size");
    });
    fails_naming(no_width, &["moe_intermediate_size"]);
    let bad_step = load_edited(QWEN3_MOE, |c| c["decoder_sparse_step"] = json!(0));
    fails_naming(bad_step, &["decoder_sparse_step"]);
    let bad_layer = load_edited(QWEN3_MOE, |c| c["mlp_only_layers"] = json!([7]));
    fails_naming(bad_layer, &["mlp_only_layers", "layer 7"]);
    // More experts declared than the checkpoint holds: the router's shape says so.
    let more = load_edited(MIXTRAL, |c| c["num_local_experts"] = json!(6));
    fails_naming(
        more,
        &["block_sparse_moe.gate.weight", "[4, 64]", "[6, 64]"],
    );
}

#[test]
fn a_dense_layer_of_qwen3_moe_needs_its_mlp() {
    // mlp_only_layers makes layer 1 dense: the checkpoint has experts there, not mlp.gate_proj.
    let dense = load_edited(QWEN3_MOE, |c| c["mlp_only_layers"] = json!([1]));
    fails_naming(dense, &["model.layers.1.mlp.gate_proj.weight"]);
}

/// Rewrites the Mixtral fixture's GGUF with `edit` applied to its metadata and without the
/// tensor `drop`, and loads it.
fn load_edited_gguf(
    edit: impl FnOnce(&mut std::collections::HashMap<String, gguf_file::Value>),
    drop: Option<&str>,
) -> Result<DecoderModel, ModelError> {
    let src = fixture(MIXTRAL).join("model.gguf");
    let mut file = std::fs::File::open(&src).unwrap();
    let mut content = gguf_file::Content::read(&mut file).unwrap();
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    let tensors: Vec<(String, QTensor)> = names
        .into_iter()
        .filter(|n| Some(n.as_str()) != drop)
        .map(|n| {
            let t = content.tensor(&mut file, &n, &Device::Cpu).unwrap();
            (n, t)
        })
        .collect();
    edit(&mut content.metadata);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edited.gguf");
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &metadata, &refs).unwrap();
    DecoderModel::load_gguf(&path, &Device::Cpu, DType::F32)
}

#[test]
fn gguf_expert_keys_and_tensors_are_checked_and_named() {
    load_edited_gguf(|_| {}, None).unwrap();
    let too_many = load_edited_gguf(
        |m| {
            m.insert("llama.expert_used_count".into(), gguf_file::Value::U32(9));
        },
        None,
    );
    fails_naming(too_many, &["llama.expert_used_count", "9"]);
    // The metadata says 8 experts, the stacked tensors hold 4.
    let inconsistent = load_edited_gguf(
        |m| {
            m.insert("llama.expert_count".into(), gguf_file::Value::U32(8));
        },
        None,
    );
    fails_naming(inconsistent, &["ffn_gate_inp.weight", "[8, 64]"]);
    let missing = load_edited_gguf(|_| {}, Some("blk.1.ffn_up_exps.weight"));
    fails_naming(missing, &["blk.1.ffn_up_exps.weight"]);
    let no_used = load_edited_gguf(
        |m| {
            m.remove("llama.expert_used_count");
        },
        None,
    );
    fails_naming(no_used, &["llama.expert_used_count", "missing"]);
}
