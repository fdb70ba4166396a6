//! Hugging Face hub access through hf-hub: `org/name` and `org/name:file.gguf` specs.
//!
//! `HF_HOME` and `HF_ENDPOINT` are honoured by hf-hub itself. `HF_HUB_OFFLINE=1`, or an
//! endpoint that does not accept a TCP connection within [`CONNECT_TIMEOUT`], means only the
//! local hub cache is consulted: hf-hub has no connect timeout of its own, and a server that
//! cannot reach the hub should say so in seconds, not minutes.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::Cache;
use hf_hub::api::sync::{Api, ApiBuilder};

use super::{ModelFiles, SourceError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// `org/name`, optionally with the one file (a GGUF) to take from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HubSpec {
    pub repo: String,
    pub file: Option<String>,
}

impl HubSpec {
    /// `org/name` or `org/name:file`; anything else is not a hub id.
    pub fn parse(spec: &str) -> Option<HubSpec> {
        let (repo, file) = match spec.split_once(':') {
            Some((repo, file)) if !file.is_empty() => (repo, Some(file.to_string())),
            Some(_) => return None,
            None => (spec, None),
        };
        let (org, name) = repo.split_once('/')?;
        let valid = |part: &str| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (valid(org) && valid(name)).then(|| HubSpec {
            repo: repo.to_string(),
            file,
        })
    }
}

/// Where files come from: the network (through hf-hub's cache) or the local hub cache only.
enum Access {
    Online(Api),
    CacheOnly { why: String },
}

fn access(repo: &str) -> Result<Access, SourceError> {
    if offline_requested() {
        return Ok(Access::CacheOnly {
            why: "HF_HUB_OFFLINE is set".into(),
        });
    }
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.into());
    if let Err(why) = reachable(&endpoint) {
        return Ok(Access::CacheOnly {
            why: format!("{endpoint} unreachable ({why})"),
        });
    }
    let api = ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| hub_err(repo, format!("building the hub client: {e}")))?;
    Ok(Access::Online(api))
}

fn offline_requested() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Resolves and connects to the endpoint's host within the timeout.
fn reachable(endpoint: &str) -> Result<(), String> {
    let without_scheme = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = without_scheme.split('/').next().unwrap_or_default();
    let default_port = if endpoint.starts_with("http://") {
        80
    } else {
        443
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().map_err(|_| "bad port".to_string())?),
        None => (authority, default_port),
    };
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?;
    let mut last = format!("no address for {host}");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(last)
}

fn hub_err(repo: &str, reason: impl Into<String>) -> SourceError {
    SourceError::Hub {
        repo: repo.to_string(),
        reason: reason.into(),
    }
}

/// One file of a repo, from the network or the hub cache.
pub(crate) fn fetch_file(repo: &str, file: &str) -> Result<PathBuf, SourceError> {
    get(&access(repo)?, repo, file)
}

fn get(access: &Access, repo: &str, file: &str) -> Result<PathBuf, SourceError> {
    match access {
        Access::Online(api) => api
            .model(repo.to_string())
            .get(file)
            .map_err(|e| hub_err(repo, format!("{file}: {e}"))),
        Access::CacheOnly { why } => Cache::from_env()
            .model(repo.to_string())
            .get(file)
            .ok_or_else(|| hub_err(repo, format!("{file} is not in the hub cache and {why}"))),
    }
}

/// Resolves a hub spec to local files, downloading what is missing.
pub(crate) fn resolve(spec: &HubSpec) -> Result<ModelFiles, SourceError> {
    let repo = spec.repo.as_str();
    let access = access(repo)?;
    let files = match &spec.file {
        Some(file) => vec![file.clone()],
        None => list_repo(repo, &access)?,
    };
    let get = |file: &str| get(&access, repo, file);
    let optional = |file: &str| {
        files
            .iter()
            .any(|f| f == file)
            .then(|| get(file).ok())
            .flatten()
    };

    let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
    let has_safetensors = files.iter().any(|f| f.ends_with(".safetensors"));
    if files.iter().any(|f| f == "config.json") && has_safetensors && spec.file.is_none() {
        let config = get("config.json")?;
        get("tokenizer.json")?;
        for file in files
            .iter()
            .filter(|f| f.ends_with(".safetensors") && !f.contains('/'))
        {
            get(file)?;
        }
        optional("tokenizer_config.json");
        optional("generation_config.json");
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        return super::resolve_local(&dir);
    }
    match ggufs.as_slice() {
        [only] => {
            let path = get(only)?;
            let sibling = |name: &str| {
                if spec.file.is_some() {
                    get(name).ok()
                } else {
                    optional(name)
                }
            };
            Ok(ModelFiles::Gguf {
                tokenizer_json: sibling("tokenizer.json"),
                tokenizer_config: sibling("tokenizer_config.json"),
                path,
            })
        }
        [] => Err(hub_err(
            repo,
            "holds neither config.json + *.safetensors nor a .gguf",
        )),
        many => Err(hub_err(
            repo,
            format!(
                "holds {} GGUF files; pick one as {repo}:FILE, one of: {}",
                many.len(),
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The repo's file names: from the hub's API when online, else from the cached snapshot.
fn list_repo(repo: &str, access: &Access) -> Result<Vec<String>, SourceError> {
    match access {
        Access::Online(api) => {
            let info = api
                .model(repo.to_string())
                .info()
                .map_err(|e| hub_err(repo, format!("listing files: {e}")))?;
            Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
        }
        Access::CacheOnly { why } => cached_snapshot_files(repo)
            .ok_or_else(|| hub_err(repo, format!("not in the hub cache and {why}"))),
    }
}

/// Top-level file names of the cached `main` snapshot (hf-hub's layout:
/// `models--org--name/refs/main` names the snapshot directory).
fn cached_snapshot_files(repo: &str) -> Option<Vec<String>> {
    let cache = Cache::from_env();
    let repo_dir = cache
        .path()
        .join(format!("models--{}", repo.replace('/', "--")));
    let commit = std::fs::read_to_string(repo_dir.join("refs/main")).ok()?;
    let snapshot = repo_dir.join("snapshots").join(commit.trim());
    let names = std::fs::read_dir(snapshot)
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::HubSpec;

    #[test]
    fn parses_repo_ids_and_rejects_paths() {
        assert_eq!(
            HubSpec::parse("HuggingFaceTB/SmolLM2-135M-Instruct"),
            Some(HubSpec {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                file: None
            })
        );
        assert_eq!(
            HubSpec::parse("org/name:model.Q4_0.gguf").and_then(|s| s.file),
            Some("model.Q4_0.gguf".into())
        );
        for not_hub in [
            "name",
            "a/b/c",
            "/abs/path",
            "../x/y",
            "org/",
            "org/name:",
            "o g/n",
        ] {
            assert_eq!(HubSpec::parse(not_hub), None, "{not_hub}");
        }
    }
}
