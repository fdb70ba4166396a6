//! The target of a benchmark, resolved once: its URL (started with `--serve` if asked), the
//! model (first of /v1/models by default), its context length, its /version, and the
//! tokenizer used to cut prompts and count tokens. A capacity search keeps one session for
//! all its runs.

use crate::args::TargetArgs;
use crate::client::{get_json, list_models};
use crate::serve::ServerProcess;
use crate::tokenizer::TextTokenizer;
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Context assumed when neither --context nor /v1/models states one.
pub const FALLBACK_CONTEXT: u32 = 2048;

/// Where a number came from, for config.json.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Flag,
    Server,
    Fallback,
}

pub struct Session {
    pub http: reqwest::Client,
    pub base_url: String,
    pub model: String,
    pub model_source: Source,
    pub context: u32,
    pub context_source: Source,
    /// The target's `/version` reply, if it has the endpoint.
    pub version: Option<Value>,
    pub tokenizer: TextTokenizer,
    pub request_timeout: Duration,
    pub temperature: f64,
    /// `logit_bias` sent with every request (token id → bias), if any.
    pub logit_bias: Option<BTreeMap<String, f64>>,
    /// `--extra-body`: fields added to every request body.
    pub extra_body: Option<serde_json::Map<String, Value>>,
    server: Option<ServerProcess>,
}

impl Session {
    /// Connects to `--url`, or starts `--serve` (logging to `log_dir/server.log`).
    pub async fn open(args: &TargetArgs, log_dir: &Path) -> Result<Session> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        let seconds = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(anyhow!(
                    "{name} must be a positive number of seconds, got {v}"
                ))
            }
        };
        let request_timeout = seconds("--request-timeout", args.request_timeout)?;
        let logit_bias = args
            .logit_bias
            .as_deref()
            .map(parse_logit_bias)
            .transpose()?;
        let extra_body = match args.extra_body.as_deref() {
            None => None,
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => Some(map),
                Ok(_) => bail!("--extra-body must be a JSON object"),
                Err(e) => bail!("--extra-body is not JSON: {e}"),
            },
        };
        let (base_url, server) = match (&args.url, &args.serve) {
            (Some(url), None) => (url.trim_end_matches('/').to_string(), None),
            (None, Some(serve)) => {
                let exe = std::env::current_exe().context("locating the metrum executable")?;
                let wait = seconds("--serve-timeout", args.serve_timeout)?;
                let server = ServerProcess::start(&exe, serve, log_dir, wait, &http).await?;
                (server.base_url.clone(), Some(server))
            }
            _ => bail!("give exactly one of --url or --serve"),
        };
        let resolved = match resolve(args, &http, &base_url).await {
            Ok(r) => r,
            Err(e) => {
                if let Some(server) = server {
                    let _ = server.stop().await;
                }
                return Err(e);
            }
        };
        Ok(Session {
            http,
            base_url,
            model: resolved.model,
            model_source: resolved.model_source,
            context: resolved.context,
            context_source: resolved.context_source,
            version: resolved.version,
            tokenizer: resolved.tokenizer,
            request_timeout,
            temperature: args.temperature,
            logit_bias,
            extra_body,
            server,
        })
    }

    /// The URL requests go to.
    pub fn completions_url(&self) -> String {
        format!("{}/v1/completions", self.base_url)
    }

    /// Whether the target runs on this machine (client and server then share its cores).
    pub fn is_local(&self) -> bool {
        let host = self.base_url.split("://").nth(1).unwrap_or(&self.base_url);
        ["127.", "localhost", "[::1]", "0.0.0.0"]
            .iter()
            .any(|p| host.starts_with(p))
    }

    pub fn started_server(&self) -> bool {
        self.server.is_some()
    }

    /// Stops a `--serve` server.
    pub async fn close(self) -> Result<()> {
        match self.server {
            Some(server) => server.stop().await,
            None => Ok(()),
        }
    }
}

/// What is learned from the target once it answers.
struct Resolved {
    model: String,
    model_source: Source,
    context: u32,
    context_source: Source,
    version: Option<Value>,
    tokenizer: TextTokenizer,
}

async fn resolve(args: &TargetArgs, http: &reqwest::Client, base_url: &str) -> Result<Resolved> {
    let models = match list_models(http, base_url).await {
        Ok(m) => m,
        Err(e) if args.model.is_some() => {
            eprintln!("warning: {e:#}; using --model as given");
            Vec::new()
        }
        Err(e) => return Err(e.context("listing models (pass --model to skip)")),
    };
    let (model, model_source) = match &args.model {
        Some(m) => (m.clone(), Source::Flag),
        None => match models.first() {
            Some((id, _)) => (id.clone(), Source::Server),
            None => bail!("{base_url}/v1/models lists no model"),
        },
    };
    let advertised = models
        .iter()
        .find(|(id, _)| *id == model)
        .and_then(|(_, c)| *c);
    let (context, context_source) = match (args.context, advertised) {
        (Some(c), _) => (c, Source::Flag),
        (None, Some(c)) => (c, Source::Server),
        (None, None) => (FALLBACK_CONTEXT, Source::Fallback),
    };
    let version = get_json(http, &format!("{base_url}/version")).await.ok();
    let tokenizer = match args.tokenizer.as_deref() {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            let url = url.trim_end_matches('/');
            TextTokenizer::detect_remote(http, url, &model)
                .await
                .ok_or_else(|| anyhow!("{url} has no usable /tokenize"))?
        }
        Some(path) => TextTokenizer::from_file(Path::new(path))?,
        None => TextTokenizer::detect_remote(http, base_url, &model)
            .await
            .ok_or_else(|| {
                anyhow!("{base_url} has no usable /tokenize; pass --tokenizer PATH/tokenizer.json or a server URL")
            })?,
    };
    Ok(Resolved {
        model,
        model_source,
        context,
        context_source,
        version,
        tokenizer,
    })
}

/// `ID:BIAS,...` as the OpenAI `logit_bias` map.
pub fn parse_logit_bias(spec: &str) -> Result<BTreeMap<String, f64>> {
    spec.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (id, bias) = pair
                .split_once(':')
                .ok_or_else(|| anyhow!("logit bias {pair:?}: expected ID:BIAS"))?;
            let id: u32 = id
                .trim()
                .parse()
                .map_err(|_| anyhow!("logit bias {pair:?}: bad token id"))?;
            let bias: f64 = bias
                .trim()
                .parse()
                .map_err(|_| anyhow!("logit bias {pair:?}: bad bias"))?;
            if !(-100.0..=100.0).contains(&bias) {
                bail!("logit bias {pair:?}: bias must be within [-100, 100]");
            }
            Ok((id.to_string(), bias))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_bias_flags_parse_and_are_checked() {
        let map = parse_logit_bias("0:-100, 2:-100").unwrap();
        assert_eq!(map.get("2"), Some(&-100.0));
        assert!(parse_logit_bias("x:1").is_err());
        assert!(parse_logit_bias("1:-200").is_err());
        assert!(parse_logit_bias("1").is_err());
    }
}
