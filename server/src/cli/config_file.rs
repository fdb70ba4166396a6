//! `--config FILE`: a YAML or JSON mapping whose keys are the subcommand's long flags
//! (`max-num-seqs` or `max_num_seqs`), turned into arguments that precede the user's own.
//!
//! Going through clap instead of a second serde schema keeps one source of truth for names,
//! defaults and value parsing, so a typo in the file fails exactly like a typo on the command line.

use super::Cli;
use anyhow::{Context, bail};
use clap::CommandFactory;
use std::ffi::OsString;
use std::path::Path;

/// Returns `args` with the config file's settings spliced in right after the subcommand name.
/// Arguments without `--config` come back unchanged.
pub fn expand(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    let Some(subcommand) = args.get(1).and_then(|s| s.to_str()) else {
        return Ok(args);
    };
    let settings = load(Path::new(&path))?;
    let file_args = to_arguments(subcommand, &settings)
        .with_context(|| format!("in config file {}", path.to_string_lossy()))?;
    let mut expanded = args[..2].to_vec();
    expanded.extend(file_args.into_iter().map(OsString::from));
    expanded.extend_from_slice(&args[2..]);
    Ok(expanded)
}

/// The value of `--config PATH` or `--config=PATH`, if present.
fn config_path(args: &[OsString]) -> Option<OsString> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            return None;
        }
        if text == "--config" {
            return iter.next().cloned();
        }
        if let Some(value) = text.strip_prefix("--config=") {
            return Some(OsString::from(value));
        }
    }
    None
}

/// Reads the file as JSON (`.json`) or YAML (anything else).
fn load(path: &Path) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let value: serde_json::Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .with_context(|| format!("config file {} is not valid JSON", path.display()))?
    } else {
        serde_yaml_ng::from_str(&text)
            .with_context(|| format!("config file {} is not valid YAML", path.display()))?
    };
    match value {
        serde_json::Value::Object(map) => Ok(map),
        serde_json::Value::Null => Ok(Default::default()),
        _ => bail!(
            "config file {} must hold a mapping of flag names to values",
            path.display()
        ),
    }
}

/// Turns `{key: value}` into `--key=value` (`true` -> `--key`, `false` -> `--no-key` when the
/// subcommand has such a flag, else nothing).
fn to_arguments(
    subcommand: &str,
    settings: &serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<Vec<String>> {
    let root = Cli::command();
    let Some(command) = root.find_subcommand(subcommand) else {
        bail!("unknown subcommand `{subcommand}`");
    };
    let has_flag = |name: &str| command.get_arguments().any(|a| a.get_long() == Some(name));
    let mut out = Vec::new();
    for (raw_key, value) in settings {
        let key = raw_key.trim_start_matches('-').replace('_', "-");
        if key == "config" {
            bail!("`config` cannot be set from a config file");
        }
        if !has_flag(&key) {
            bail!("unknown setting `{raw_key}` (no --{key} flag on `metrum {subcommand}`)");
        }
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::Bool(true) => out.push(format!("--{key}")),
            serde_json::Value::Bool(false) => {
                let negated = format!("no-{key}");
                if has_flag(&negated) {
                    out.push(format!("--{negated}"));
                }
            }
            serde_json::Value::Number(n) => out.push(format!("--{key}={n}")),
            serde_json::Value::String(s) => out.push(format!("--{key}={s}")),
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
                bail!("setting `{raw_key}` must be a string, number or boolean")
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;
    use clap::Parser;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn serve_args(list: &[&str]) -> crate::cli::serve::ServeArgs {
        match Cli::try_parse_from(expand(args(list)).unwrap())
            .unwrap()
            .command
        {
            Command::Serve(a) => a,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn yaml_keys_become_flags_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrum.yaml");
        std::fs::write(
            &path,
            "max_num_seqs: 8\nport: 9000\nenable-prefix-caching: false\nmodel: tiny\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let a = serve_args(&["metrum", "serve", "--config", p, "--port", "9100"]);
        assert_eq!(a.max_num_seqs, Some(8));
        assert_eq!(a.port, 9100);
        assert_eq!(a.model.as_deref(), Some("tiny"));
        assert!(!a.prefix_caching());
        let a = serve_args(&[
            "metrum",
            "serve",
            &format!("--config={p}"),
            "--enable-prefix-caching",
        ]);
        assert!(a.prefix_caching());
    }

    #[test]
    fn json_files_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, r#"{"max-num-batched-tokens": 256, "api_key": "k"}"#).unwrap();
        let a = serve_args(&["metrum", "serve", "--config", path.to_str().unwrap()]);
        assert_eq!(a.max_num_batched_tokens, Some(256));
        assert_eq!(a.api_key.as_deref(), Some("k"));
        std::fs::write(&path, r#"{"max-num-sequences": 3}"#).unwrap();
        let err = expand(args(&[
            "metrum",
            "serve",
            "--config",
            path.to_str().unwrap(),
        ]));
        assert!(format!("{:#}", err.unwrap_err()).contains("max-num-sequences"));
        std::fs::write(&path, r#"[1, 2]"#).unwrap();
        assert!(
            expand(args(&[
                "metrum",
                "serve",
                "--config",
                path.to_str().unwrap()
            ]))
            .is_err()
        );
    }

    #[test]
    fn no_config_means_no_change() {
        let list = args(&["metrum", "serve", "--port", "1"]);
        assert_eq!(expand(list.clone()).unwrap(), list);
    }
}
