//! Tokenizers loaded from tokenizer.json (+ tokenizer_config.json, generation_config.json),
//! and the byte-level tokenizer of synthetic models.

use std::path::{Path, PathBuf};

use metrum_engine::source::ModelFiles;
use metrum_engine::tokenizer::Tokenizer;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/text/smollm2")
        .join(name)
}

#[test]
fn special_tokens_come_from_tokenizer_config() {
    let tokenizer = Tokenizer::from_file(
        &fixture("tokenizer.json"),
        Some(&fixture("tokenizer_config.json")),
    )
    .expect("load");
    assert_eq!(tokenizer.vocab_size(), 49152);
    assert_eq!(tokenizer.bos_token_id(), Some(1));
    assert_eq!(tokenizer.eos_token_id(), Some(2));
    assert_eq!(tokenizer.pad_token_id(), Some(2));
    assert_eq!(
        tokenizer
            .eos_token_ids()
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![0, 2]
    );
    assert_eq!(
        tokenizer.token_to_piece(504),
        tokenizer.inner().id_to_token(504)
    );
    let ids = tokenizer.encode("Hello world", false).expect("encode");
    assert_eq!(
        tokenizer.decode(&ids, false).expect("decode"),
        "Hello world"
    );

    // Without a config the special ids are unknown, but end-of-turn tokens are still found.
    let bare = Tokenizer::from_file(&fixture("tokenizer.json"), None).expect("load");
    assert_eq!(bare.bos_token_id(), None);
    assert_eq!(
        bare.eos_token_ids().iter().copied().collect::<Vec<_>>(),
        vec![0, 2]
    );

    assert!(Tokenizer::from_file(&fixture("missing.json"), None).is_err());
    assert!(Tokenizer::from_file(&fixture("chat_template.jinja"), None).is_err());
}

#[test]
fn generation_config_adds_end_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generation_config = dir.path().join("generation_config.json");
    std::fs::write(&generation_config, r#"{"eos_token_id": [2, 5, 999999]}"#).expect("write");
    let files = ModelFiles::SafetensorsDir {
        dir: dir.path().to_path_buf(),
        config: dir.path().join("config.json"),
        weights: Vec::new(),
        tokenizer_json: fixture("tokenizer.json"),
        tokenizer_config: Some(fixture("tokenizer_config.json")),
        generation_config: Some(generation_config),
    };
    let tokenizer = Tokenizer::from_model_files(&files).expect("load");
    // 999999 is outside the vocabulary and ignored.
    assert_eq!(
        tokenizer
            .eos_token_ids()
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![0, 2, 5]
    );
    assert_eq!(tokenizer.eos_token_id(), Some(2));
}

#[test]
fn byte_level_is_one_token_per_byte() {
    let tokenizer = Tokenizer::byte_level();
    assert_eq!(tokenizer.vocab_size(), 256);
    let text = "aé \n😀\u{0}\u{ff}";
    let ids = tokenizer.encode(text, true).expect("encode");
    assert_eq!(ids, text.bytes().map(u32::from).collect::<Vec<_>>());
    assert_eq!(tokenizer.decode(&ids, false).expect("decode"), text);
    assert!(tokenizer.eos_token_ids().is_empty());
    assert_eq!(tokenizer.bos_token_id(), None);
    assert!(tokenizer.decode(&[256], false).is_err());
    let synthetic = Tokenizer::from_model_files(&ModelFiles::Synthetic {
        name: "tiny".into(),
    })
    .expect("synthetic");
    assert_eq!(
        synthetic.encode("hi", false).expect("encode"),
        vec![104, 105]
    );
}
