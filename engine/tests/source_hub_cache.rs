//! Hub specs (`org/name`, `org/name:file.gguf`) resolved from a local hf-hub cache, offline.
//!
//! This binary has a single test because it sets process-wide environment variables
//! (HF_HOME, HF_HUB_OFFLINE, HF_ENDPOINT); no other test shares its process.

use std::path::Path;

use metrum_engine::source::{
    CachedModel, Fetcher, ModelFiles, SourceError, ensure_cached, resolve_model,
};
use sha2::{Digest, Sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Lays out `files` the way hf-hub caches a repo: refs/main names the snapshot directory.
fn cache_repo(hf_home: &Path, repo: &str, files: &[(&str, &[u8])]) {
    let repo_dir = hf_home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(repo_dir.join("refs")).expect("mkdir refs");
    std::fs::write(repo_dir.join("refs/main"), COMMIT).expect("write ref");
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).expect("mkdir snapshot");
    for (name, bytes) in files {
        std::fs::write(snapshot.join(name), bytes).expect("write file");
    }
}

fn set_env(key: &str, value: &str) {
    // SAFETY: this test binary runs one test, so no other thread reads the environment.
    unsafe { std::env::set_var(key, value) }
}

fn remove_env(key: &str) {
    // SAFETY: as in `set_env`.
    unsafe { std::env::remove_var(key) }
}

#[test]
fn hub_ids_resolve_from_the_local_hub_cache() {
    let hf_home = tempfile::tempdir().expect("tempdir");
    let home = hf_home.path();
    set_env("HF_HOME", home.to_str().expect("utf8"));
    set_env("HF_HUB_OFFLINE", "1");
    let snapshot = |repo: &str| {
        home.join("hub")
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("snapshots")
            .join(COMMIT)
    };

    cache_repo(
        home,
        "org/one-gguf",
        &[("m.Q4_0.gguf", b"GGUF"), ("tokenizer.json", b"{}")],
    );
    assert_eq!(
        resolve_model(Some("org/one-gguf")).expect("one gguf"),
        ModelFiles::Gguf {
            path: snapshot("org/one-gguf").join("m.Q4_0.gguf"),
            tokenizer_json: Some(snapshot("org/one-gguf").join("tokenizer.json")),
            tokenizer_config: None,
        }
    );

    cache_repo(
        home,
        "org/st",
        &[
            ("config.json", b"{}"),
            ("model.safetensors", b""),
            ("tokenizer.json", b"{}"),
        ],
    );
    let files = resolve_model(Some("org/st")).expect("safetensors repo");
    assert!(
        matches!(files, ModelFiles::SafetensorsDir { ref weights, .. } if weights.len() == 1),
        "{files:?}"
    );

    cache_repo(home, "org/two", &[("a.gguf", b"GGUF"), ("b.gguf", b"GGUF")]);
    let err = resolve_model(Some("org/two")).expect_err("ambiguous");
    assert!(
        err.to_string().contains("org/two:FILE") && err.to_string().contains("b.gguf"),
        "{err}"
    );
    let chosen = resolve_model(Some("org/two:b.gguf")).expect("chosen file");
    assert!(
        matches!(chosen, ModelFiles::Gguf { ref path, .. } if path.ends_with("b.gguf")),
        "{chosen:?}"
    );

    let err = resolve_model(Some("org/not-cached")).expect_err("not cached");
    assert!(
        matches!(err, SourceError::Hub { .. }) && err.to_string().contains("HF_HUB_OFFLINE"),
        "{err}"
    );

    // Not offline, but the endpoint refuses connections: the cache is used, quickly.
    remove_env("HF_HUB_OFFLINE");
    set_env("HF_ENDPOINT", "http://127.0.0.1:9");
    let started = std::time::Instant::now();
    assert!(matches!(
        resolve_model(Some("org/one-gguf")),
        Ok(ModelFiles::Gguf { .. })
    ));
    let err = resolve_model(Some("org/not-cached")).expect_err("unreachable and not cached");
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert!(
        started.elapsed().as_secs() < 10,
        "unreachable hub took {:?}",
        started.elapsed()
    );

    // The default-model hub fetcher: verified against the pin, then copied into the Metrum cache.
    let bytes = b"pretend default model";
    let model = CachedModel {
        file_name: "pinned.gguf".into(),
        sha256: Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        size: bytes.len() as u64,
        hub_repo: "org/pinned".into(),
        hub_file: "pinned.gguf".into(),
        pip_requirement: "unused==0".into(),
        wheel_member: "unused".into(),
    };
    let metrum_cache = tempfile::tempdir().expect("tempdir");
    let err =
        ensure_cached(&model, metrum_cache.path(), &[Fetcher::Hub]).expect_err("not in hub cache");
    assert!(
        err.to_string().contains("hub org/pinned/pinned.gguf"),
        "{err}"
    );
    cache_repo(home, "org/pinned", &[("pinned.gguf", b"tampered")]);
    let err =
        ensure_cached(&model, metrum_cache.path(), &[Fetcher::Hub]).expect_err("sha mismatch");
    assert!(err.to_string().contains("sha256"), "{err}");
    cache_repo(home, "org/pinned", &[("pinned.gguf", bytes)]);
    let path = ensure_cached(&model, metrum_cache.path(), &[Fetcher::Hub]).expect("from hub cache");
    assert_eq!(std::fs::read(path).expect("read"), bytes);
}
