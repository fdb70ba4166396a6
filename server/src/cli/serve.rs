//! `metrum serve`: flags (vLLM's names) -> `EngineConfig` + `ServerOptions`, then bind, start
//! the engine thread, and serve until SIGTERM / SIGINT.

use super::units::{parse_bytes, parse_duration};
use crate::ServerOptions;
use anyhow::Context;
use metrum_engine::config::{DeviceSpec, EngineConfig, KvCacheDtype, KvCacheSize};
use metrum_metrics::SloConfig;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SchedulingPolicy {
    /// First come, first served.
    Fcfs,
    /// By the request's `priority` field (lower first), then arrival.
    Priority,
    /// Earliest token deadline first (from --tbt-slo / --ttft-slack).
    Deadline,
    /// Least slack plus remaining prefill (shortest first among equal deadlines), with a
    /// bounded wait; see docs/operations.md.
    DeadlineSrpt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Engine knobs default to `EngineConfig::default()` when not given.
#[derive(Clone, Debug, clap::Args)]
#[command(args_override_self = true)]
pub struct ServeArgs {
    /// GGUF file, model directory (config.json + safetensors), hub id or `synthetic:NAME`.
    /// Default: the default model (SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<String>,
    /// The name clients use in `model` and see in /v1/models (default: the model's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the log says which).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Most sequences running in one step.
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// Token budget of one step (prefill chunks + decodes); `--chunk-size` is Sarathi's name.
    #[arg(long, visible_alias = "chunk-size")]
    pub max_num_batched_tokens: Option<usize>,
    /// Context length (default: the model's).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Tokens per KV-cache block.
    #[arg(long)]
    pub block_size: Option<usize>,
    /// KV cache size as a block count (the last of the three KV-size flags wins).
    #[arg(long, overrides_with_all = ["kv_cache_memory", "gpu_memory_utilization"])]
    pub num_kv_blocks: Option<usize>,
    /// KV cache size in bytes, e.g. 512MiB or 2GiB (CPU).
    #[arg(long, value_parser = parse_bytes, overrides_with_all = ["num_kv_blocks", "gpu_memory_utilization"])]
    pub kv_cache_memory: Option<u64>,
    /// Fraction of GPU memory for weights, activations and KV cache (CUDA).
    #[arg(long, overrides_with_all = ["num_kv_blocks", "kv_cache_memory"])]
    pub gpu_memory_utilization: Option<f64>,
    /// Which waiting request runs next (default fcfs).
    #[arg(long, value_enum)]
    pub scheduling_policy: Option<SchedulingPolicy>,
    /// Admission control: `refuse` answers 429 (with Retry-After) to a request whose first
    /// token is predicted past its deadline, `best-effort` queues it last; `off` (default)
    /// admits everything that fits. Needs --slo-file.
    #[arg(long)]
    pub admission: Option<metrum_scheduler::Admission>,
    /// Reuse KV blocks of shared prompt prefixes (on by default).
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    /// Turn prefix caching off.
    #[arg(long, overrides_with = "enable_prefix_caching")]
    pub no_enable_prefix_caching: bool,
    /// Require `Authorization: Bearer <key>` on every /v1 route.
    #[arg(long, env = "METRUM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Weight and activation dtype; auto = f32 on CPU, bf16 on CUDA.
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "f16", "bf16"])]
    pub dtype: String,
    /// What the KV cache stores; auto = the activation dtype; f16 on CPU halves the cache's bytes
    /// (faster decode at long context, but not exact: see docs/operations.md).
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "f16"])]
    pub kv_cache_dtype: String,
    /// Speculative decoding, vLLM's JSON, e.g. '{"method":"ngram","num_speculative_tokens":4,
    /// "prompt_lookup_min":1,"prompt_lookup_max":3}' (see docs/speculative.md).
    #[arg(long)]
    pub speculative_config: Option<String>,
    /// Seed for requests that bring none.
    #[arg(long)]
    pub seed: Option<u64>,
    /// CPU threads for the forward pass (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Queue length above which new requests get 429 + Retry-After.
    #[arg(long)]
    pub max_waiting_requests: Option<usize>,
    /// Decode deadline per token (TBT SLO), e.g. 50ms.
    #[arg(long, value_parser = parse_duration)]
    pub tbt_slo: Option<Duration>,
    /// Scheduling slack added to the predicted prefill time for the first-token deadline.
    #[arg(long, value_parser = parse_duration)]
    pub ttft_slack: Option<Duration>,
    /// Prefill-time model (JSON, from `metrum profile-prefill`) for first-token deadlines.
    #[arg(long)]
    pub slo_file: Option<PathBuf>,
    /// YAML or JSON file with any of these flags as keys; command-line flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Largest request body accepted (413 above it).
    #[arg(long, value_parser = parse_bytes, default_value = "32MiB")]
    pub max_request_body_size: u64,
    /// Most text one request may ask to tokenize (prompts or chat contents, summed), checked
    /// before tokenizing (400 above it).
    #[arg(long, value_parser = parse_bytes, default_value = "1MiB")]
    pub max_prompt_bytes: u64,
    /// Most tokens one request may ask to generate: prompts x n x max_tokens, an unset
    /// max_tokens counting as the context length (400 above it).
    #[arg(long, default_value_t = 262_144)]
    pub max_output_tokens_per_request: usize,
    /// Tool-call format replies are parsed in (hermes, llama3_json, mistral, pythonic);
    /// default: the one the model's chat template shows, else hermes.
    #[arg(long)]
    pub tool_call_parser: Option<crate::api::tools::parsers::ToolFormat>,
    /// Split chat replies of reasoning models into `reasoning_content` and `content`, and
    /// apply constraints after the reasoning block (vLLM's names: qwen3, deepseek_r1).
    #[arg(long)]
    pub reasoning_parser: Option<crate::api::reasoning::ReasoningParser>,
    /// Time a client has to send its request headers.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub header_timeout: Duration,
    /// How long in-flight requests may run after SIGTERM before the server exits anyway.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub shutdown_timeout: Duration,
    /// Log lines as human-readable text or as JSON objects.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Leave the vLLM-named metric aliases (`vllm:num_requests_waiting`, ...) off `/metrics`;
    /// routers such as the Inference Extension's EPP and SMG read those names.
    #[arg(long)]
    pub no_vllm_metrics: bool,
}

impl ServeArgs {
    pub fn prefix_caching(&self) -> bool {
        // On unless the last word was --no-enable-prefix-caching (vLLM's default for V1).
        !self.no_enable_prefix_caching
    }

    /// The engine's configuration: given flags over `EngineConfig::default()`.
    pub fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        let defaults = EngineConfig::default();
        let kv_cache = match (
            self.num_kv_blocks,
            self.kv_cache_memory,
            self.gpu_memory_utilization,
        ) {
            (Some(blocks), _, _) => KvCacheSize::Blocks(blocks),
            (_, Some(bytes), _) => KvCacheSize::Bytes(bytes),
            (_, _, Some(fraction)) => {
                anyhow::ensure!(
                    fraction > 0.0 && fraction <= 1.0,
                    "--gpu-memory-utilization must be in (0, 1], got {fraction}"
                );
                KvCacheSize::GpuFraction(fraction)
            }
            (None, None, None) => match self.device {
                DeviceSpec::Cuda(_) => KvCacheSize::GpuFraction(0.9),
                DeviceSpec::Cpu => defaults.kv_cache.clone(),
            },
        };
        let policy = match self.scheduling_policy {
            None => defaults.scheduling_policy.clone(),
            Some(SchedulingPolicy::Fcfs) => "fcfs".into(),
            Some(SchedulingPolicy::Priority) => "priority".into(),
            Some(SchedulingPolicy::Deadline) => "deadline".into(),
            Some(SchedulingPolicy::DeadlineSrpt) => "deadline-srpt".into(),
        };
        for (name, value) in [
            ("--max-num-seqs", self.max_num_seqs),
            ("--max-num-batched-tokens", self.max_num_batched_tokens),
            ("--block-size", self.block_size),
            ("--num-kv-blocks", self.num_kv_blocks),
            ("--max-model-len", self.max_model_len),
            ("--threads", self.threads),
        ] {
            anyhow::ensure!(value != Some(0), "{name} must be at least 1");
        }
        let max_num_seqs = self.max_num_seqs.unwrap_or(defaults.max_num_seqs);
        let max_num_batched_tokens = self
            .max_num_batched_tokens
            .unwrap_or(defaults.max_num_batched_tokens);
        // A start-up error, not a model that "failed to load" behind a listening server.
        metrum_scheduler::config::check_step_budget(max_num_batched_tokens, max_num_seqs)?;
        Ok(EngineConfig {
            model: self.model.clone(),
            served_model_name: self.served_model_name.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            kv_cache_dtype: self
                .kv_cache_dtype
                .parse::<KvCacheDtype>()
                .map_err(anyhow::Error::msg)?,
            max_model_len: self.max_model_len,
            block_size: self.block_size.unwrap_or(defaults.block_size),
            kv_cache,
            max_num_seqs,
            max_num_batched_tokens,
            max_waiting_requests: self
                .max_waiting_requests
                .unwrap_or(defaults.max_waiting_requests),
            enable_prefix_caching: self.prefix_caching(),
            scheduling_policy: policy,
            admission: self.admission.unwrap_or_default(),
            seed: self.seed.unwrap_or(defaults.seed),
            threads: self.threads,
            slo: self.slo_config()?,
            speculative: self
                .speculative_config
                .as_deref()
                .map(metrum_engine::speculative::SpeculativeConfig::parse)
                .transpose()
                .map_err(anyhow::Error::msg)?,
        })
    }

    fn slo_config(&self) -> anyhow::Result<SloConfig> {
        let defaults = SloConfig::default();
        let file = match &self.slo_file {
            Some(path) => Some(
                metrum_metrics::SloFile::load(path)
                    .with_context(|| format!("cannot load --slo-file {}", path.display()))?,
            ),
            None => None,
        };
        let tbt = self
            .tbt_slo
            .map_or(defaults.tbt_slo().as_secs_f64(), |d| d.as_secs_f64());
        let slack = self
            .ttft_slack
            .map_or(defaults.ttft_slack().as_secs_f64(), |d| d.as_secs_f64());
        Ok(SloConfig::from_secs(tbt, slack, file.as_ref())?)
    }

    /// The HTTP side's settings, given the engine configuration they sit next to.
    pub fn server_options(&self, engine: &EngineConfig) -> anyhow::Result<ServerOptions> {
        Ok(ServerOptions {
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            max_body_bytes: usize::try_from(self.max_request_body_size)
                .context("--max-request-body-size is too large")?,
            header_timeout: self.header_timeout,
            shutdown_grace: self.shutdown_timeout,
            max_in_flight: engine.max_num_seqs + engine.max_waiting_requests,
            engine_config: serde_json::to_value(engine)?,
            limits: crate::limits::RequestLimits {
                max_prompt_bytes: usize::try_from(self.max_prompt_bytes)
                    .context("--max-prompt-bytes is too large")?,
                max_output_tokens: self.max_output_tokens_per_request,
            },
            tool_call_parser: self.tool_call_parser,
            reasoning_parser: self.reasoning_parser,
            vllm_metric_aliases: !self.no_vllm_metrics,
        })
    }

    pub fn run(self) -> anyhow::Result<()> {
        super::init_tracing(self.log_format == LogFormat::Json);
        let engine_config = self.engine_config()?;
        let options = self.server_options(&engine_config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("metrum-http")
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind((self.host.as_str(), self.port))
                .await
                .with_context(|| format!("cannot listen on {}:{}", self.host, self.port))?;
            let addr = listener.local_addr()?;
            // Loading happens on the engine thread; /health answers 503 until it is done.
            let engine = metrum_engine::engine_loop::spawn(engine_config)
                .map_err(|e| anyhow::anyhow!("cannot start the engine: {e}"))?;
            tracing::info!(%addr, "listening on http://{addr}");
            crate::run(listener, engine, options, crate::shutdown::signal()).await?;
            tracing::info!("server stopped");
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(list: &[&str]) -> ServeArgs {
        match Cli::try_parse_from(list).unwrap().command {
            Command::Serve(a) => a,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_the_engine_and_vllm() {
        let a = parse(&["metrum", "serve"]);
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 8000));
        let cfg = a.engine_config().unwrap();
        let defaults = EngineConfig::default();
        assert_eq!(cfg.max_num_seqs, defaults.max_num_seqs);
        assert!(cfg.enable_prefix_caching);
        assert_eq!(cfg.kv_cache, defaults.kv_cache);
        let options = a.server_options(&cfg).unwrap();
        assert_eq!(options.max_body_bytes, 32 << 20);
        assert_eq!(options.api_key, None);
        assert_eq!(options.limits, crate::limits::RequestLimits::default());
    }

    /// A budget below the running cap used to reach the engine thread and leave a listening
    /// server whose model "failed to load" (and `profile-prefill --serve` waiting on it).
    #[test]
    fn a_step_budget_below_the_running_cap_is_a_start_up_error() {
        let a = parse(&["metrum", "serve", "--max-num-batched-tokens", "32"]);
        let err = a.engine_config().unwrap_err().to_string();
        assert!(
            err.contains("--max-num-batched-tokens (32) must be at least --max-num-seqs (64)"),
            "{err}"
        );
        let a = parse(&[
            "metrum",
            "serve",
            "--max-num-batched-tokens",
            "32",
            "--max-num-seqs",
            "32",
        ]);
        assert_eq!(a.engine_config().unwrap().max_num_batched_tokens, 32);
    }

    #[test]
    fn flags_map_onto_the_engine_config() {
        let a = parse(&[
            "metrum",
            "serve",
            "--chunk-size",
            "128",
            "--max-num-seqs",
            "4",
            "--num-kv-blocks",
            "99",
            "--kv-cache-memory",
            "64MiB",
            "--scheduling-policy",
            "deadline",
            "--no-enable-prefix-caching",
            "--device",
            "cuda:1",
            "--dtype",
            "bf16",
            "--kv-cache-dtype",
            "f32",
            "--seed",
            "7",
            "--threads",
            "2",
            "--max-waiting-requests",
            "3",
            "--tbt-slo",
            "50ms",
            "--ttft-slack",
            "1s",
            "--max-model-len",
            "512",
            "--block-size",
            "32",
            "--max-prompt-bytes",
            "4KiB",
            "--max-output-tokens-per-request",
            "1000",
        ]);
        let cfg = a.engine_config().unwrap();
        assert_eq!(cfg.max_num_batched_tokens, 128);
        assert_eq!(
            cfg.kv_cache,
            KvCacheSize::Bytes(64 << 20),
            "the last KV flag wins"
        );
        assert_eq!(cfg.scheduling_policy, "deadline");
        assert!(!cfg.enable_prefix_caching);
        assert_eq!(cfg.device, DeviceSpec::Cuda(1));
        assert_eq!(cfg.kv_cache_dtype, KvCacheDtype::F32);
        assert_eq!(
            (cfg.seed, cfg.threads, cfg.max_waiting_requests),
            (7, Some(2), 3)
        );
        assert_eq!((cfg.max_model_len, cfg.block_size), (Some(512), 32));
        assert_eq!(cfg.slo.tbt_slo(), metrum_core::Nanos::from_millis(50));
        assert_eq!(cfg.slo.ttft_slack(), metrum_core::Nanos::from_millis(1000));
        let options = a.server_options(&cfg).unwrap();
        assert_eq!(options.max_in_flight, 4 + 3);
        assert_eq!(options.limits.max_prompt_bytes, 4096);
        assert_eq!(options.limits.max_output_tokens, 1000);
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Cli::try_parse_from(["metrum", "serve", "--device", "tpu"]).is_err());
        assert!(Cli::try_parse_from(["metrum", "serve", "--dtype", "f8"]).is_err());
        assert!(Cli::try_parse_from(["metrum", "serve", "--kv-cache-dtype", "q8"]).is_err());
        assert!(Cli::try_parse_from(["metrum", "serve", "--scheduling-policy", "x"]).is_err());
        let a = parse(&["metrum", "serve", "--gpu-memory-utilization", "1.5"]);
        assert!(a.engine_config().is_err());
        let a = parse(&["metrum", "serve", "--max-num-seqs", "0"]);
        assert!(a.engine_config().is_err());
        let a = parse(&["metrum", "serve", "--slo-file", "/nonexistent/slo.json"]);
        assert!(a.engine_config().is_err());
    }

    #[test]
    fn speculative_config_is_parsed_and_bad_ones_name_the_field() {
        let ok = r#"{"method":"ngram","num_speculative_tokens":3,"prompt_lookup_max":4}"#;
        let a = parse(&["metrum", "serve", "--speculative-config", ok]);
        let spec = a.engine_config().unwrap().speculative.unwrap();
        assert_eq!(spec.num_speculative_tokens, 3);
        for (json, field) in [
            (
                r#"{"method":"ngram","num_speculative_tokens":0}"#,
                "num_speculative_tokens",
            ),
            (
                r#"{"method":"ngram","num_speculative_tokens":99}"#,
                "num_speculative_tokens",
            ),
            (
                r#"{"method":"draft_model","num_speculative_tokens":2}"#,
                "model",
            ),
            (r#"{"method":"eagle","num_speculative_tokens":2}"#, "method"),
        ] {
            let a = parse(&["metrum", "serve", "--speculative-config", json]);
            let err = a.engine_config().unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{json}: {err}");
        }
        assert!(
            parse(&["metrum", "serve"])
                .engine_config()
                .unwrap()
                .speculative
                .is_none()
        );
    }
}
