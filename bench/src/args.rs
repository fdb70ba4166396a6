//! Command-line arguments of `metrum bench run | capacity | compare`, derivable with clap so
//! the server's CLI only has to embed them. Every knob lands in `config.json`.

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which server to load, and how to talk to it.
#[derive(Args, Clone, Debug, Serialize)]
pub struct TargetArgs {
    /// Base URL of a running OpenAI-compatible server, e.g. http://127.0.0.1:8000.
    #[arg(long, conflicts_with = "serve", required_unless_present = "serve")]
    pub url: Option<String>,
    /// Start a local `metrum serve <SERVE_ARGS> --port <free port>` (this executable), wait
    /// for /health, run, then stop it with SIGTERM. Arguments split on whitespace.
    #[arg(long, value_name = "SERVE_ARGS", allow_hyphen_values = true)]
    pub serve: Option<String>,
    /// Model name to request; default: the first model /v1/models lists.
    #[arg(long)]
    pub model: Option<String>,
    /// Tokenizer for cutting prompts and counting tokens: a local tokenizer.json, or the
    /// base URL of another server whose /tokenize to use (default: the target's own).
    #[arg(long, value_name = "PATH|URL")]
    pub tokenizer: Option<String>,
    /// Logit biases sent with every request, `ID:BIAS,...` (e.g. `0:-100,2:-100` to rule out
    /// EOS on servers that ignore `ignore_eos`). Send the same to every system compared.
    #[arg(long, value_name = "ID:BIAS,...")]
    pub logit_bias: Option<String>,
    /// A JSON object whose fields are added to every request body, e.g.
    /// `'{"response_format": {"type": "json_schema", "json_schema": {...}}}'` to measure
    /// structured outputs. Its fields win over the bench's own.
    #[arg(long, value_name = "JSON")]
    pub extra_body: Option<String>,
    /// The model's context length in tokens; default: what /v1/models says, else 2048.
    #[arg(long)]
    pub context: Option<u32>,
    /// Seconds before an unfinished request is given up on and counted as failed.
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Seconds to wait for a --serve server's /health.
    #[arg(long, default_value_t = 600.0)]
    pub serve_timeout: f64,
    /// Sampling temperature sent with every request (the same for every system compared).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
}

/// What to send and when.
#[derive(Args, Clone, Debug, Serialize)]
pub struct WorkloadArgs {
    /// synthetic[:prompt=DIST,output=DIST] | trace:sharegpt|arxiv|bwb | file:PATH
    /// (DIST: fixed:N, uniform:MIN:MAX, normal:MEAN:STD, zipf:MIN:MAX:THETA).
    #[arg(long)]
    pub workload: Option<String>,
    /// Inter-arrival process: poisson | gamma:CV | constant | trace.
    #[arg(long, default_value = "poisson")]
    pub arrival: String,
    /// Requests to send (default 16 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    pub num_requests: Option<usize>,
    /// Send arrivals for this many seconds instead of a fixed count.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Requests arriving in the first S seconds are sent and recorded but left out of the
    /// summary.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Seed of the arrival schedule, the lengths and the prompt offsets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Multiply every trace length by F before fitting the context (e.g. 0.1 on a CPU).
    #[arg(long, default_value_t = 1.0)]
    pub length_scale: f64,
}

/// The deadlines every request is judged against (spec (b)).
#[derive(Args, Clone, Debug, Serialize)]
pub struct SloArgs {
    /// Decode deadline D_d in seconds.
    #[arg(long, default_value_t = 0.03)]
    pub tbt_slo: f64,
    /// Scheduling slack S in seconds: D_p(P) = prefill(P) + S.
    #[arg(long, default_value_t = 0.3)]
    pub ttft_slack: f64,
    /// Prefill model from `metrum profile-prefill` (JSON); without it prefill(P) = 0.
    #[arg(long, value_name = "PATH")]
    pub slo_file: Option<PathBuf>,
}

/// `metrum bench run`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct BenchRunArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub slo: SloArgs,
    /// Offered load in requests per second.
    #[arg(long, default_value_t = 2.0)]
    pub qps: f64,
    /// Directory for config.json, requests.jsonl, summary.json, report.md and the plots.
    #[arg(long)]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// The SLO a capacity search holds the server to (spec (c)).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SloKind {
    /// P99 over requests of the deadline miss rate ≤ --miss-rate-slo.
    Deadline,
    /// P99 TBT (tokens) ≤ --tbt-slo and P90 TTFT (requests) ≤ --ttft-slo.
    TbtTtft,
    /// P90 TTFT ≤ --ttft-slo and P90 TPOT ≤ --tpot-slo (requests).
    TtftTpot,
}

/// `metrum bench capacity`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct CapacityArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub slo: SloArgs,
    #[arg(long = "slo", value_enum, default_value = "deadline")]
    pub slo_kind: SloKind,
    #[arg(long, default_value_t = 0.1)]
    pub miss_rate_slo: f64,
    #[arg(long, default_value_t = 0.1)]
    pub ttft_slo: f64,
    #[arg(long, default_value_t = 0.1)]
    pub tpot_slo: f64,
    /// The bisection starts with the bracket [0, 2 × START_QPS].
    #[arg(long, default_value_t = 1.0)]
    pub start_qps: f64,
    /// Stop when the bracket is narrower than this percentage of the probe.
    #[arg(long, default_value_t = 2.5)]
    pub granularity_pct: f64,
    #[arg(long, default_value_t = 20)]
    pub max_iterations: u32,
    /// Seeds run at probes near the boundary; a probe passes only if all pass.
    #[arg(long, default_value_t = 3)]
    pub repeats: u32,
    /// Directory for capacity.json, the metric-vs-QPS plot and one run directory per probe.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub no_progress: bool,
}

/// `metrum bench compare`.
#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    /// Run directories written by `metrum bench run`.
    #[arg(required = true, num_args = 1..)]
    pub dirs: Vec<PathBuf>,
    /// Also write compare.md and overlaid CDF plots here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}
