//! The `metrum` command line: one clap subcommand per file.
//!
//! Adding a subcommand is one variant in [`Command`] and one arm in [`Command::run`].
//! `--config FILE` (YAML or JSON) works for any subcommand that declares it: the file's keys
//! are turned into `--key value` arguments placed *before* the user's own, and the subcommands
//! let a later flag override an earlier one, so the command line wins over the file while clap
//! still validates every value with the same parsers.

pub mod bench;
pub mod config_file;
pub mod generate;
pub mod gpu_check;
pub mod profile_prefill;
pub mod profile_step;
pub mod route;
pub mod serve;
pub mod simulate;
pub mod simulate_routing;
pub mod units;

use clap::{Parser, Subcommand};
use std::ffi::OsString;

#[derive(Debug, Parser)]
#[command(
    name = "metrum",
    version,
    about = "Metrum: an LLM inference server with per-token SLO metrics"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process, so the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a model over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Generate one completion for a prompt and print it.
    Generate(generate::GenerateArgs),
    /// Load-test Metrum or any OpenAI-compatible server (run, capacity, compare).
    Bench(bench::BenchArgs),
    /// Download (if needed), verify and cache a model; prints where its files are.
    Fetch(gpu_check::FetchArgs),
    /// Prove a device: kernels and whole-model logits against the CPU, speed against limits.
    GpuCheck(gpu_check::GpuCheckArgs),
    /// Print last-position logits and a greedy continuation for reference prompts (JSON).
    Logits(gpu_check::LogitsArgs),
    /// Replay a workload through the scheduler with a fake executor, once per policy.
    Simulate(simulate::SimulateArgs),
    /// Replicas behind a router over intersecting eligibility classes (Venn/IRS), simulated.
    SimulateRouting(simulate_routing::SimulateRoutingArgs),
    /// Route requests over replicas by eligibility class (round-robin, least-loaded, prefix
    /// affinity, IRS), reading each replica's vLLM-named load gauges.
    Route(route::RouteArgs),
    /// Time the real engine's step over batch shapes and fit the simulator's cost model.
    ProfileStep(profile_step::ProfileStepArgs),
    /// Measure min TTFT per prompt length on a server, fit prefill(P), write the SLO file.
    ProfilePrefill(profile_prefill::ProfilePrefillArgs),
}

impl Command {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Serve(args) => args.run(),
            Command::Generate(args) => args.run(),
            Command::Bench(args) => args.run(),
            Command::Fetch(args) => args.run(),
            Command::GpuCheck(args) => args.run(),
            Command::Logits(args) => args.run(),
            Command::Simulate(args) => args.run(),
            Command::SimulateRouting(args) => args.run(),
            Command::Route(args) => args.run(),
            Command::ProfileStep(args) => args.run(),
            Command::ProfilePrefill(args) => args.run(),
        }
    }
}

impl Cli {
    /// Parses `args` (program name first), expanding `--config FILE` first. Exits with clap's
    /// message on bad arguments, like `Parser::parse`.
    pub fn parse_with_config(args: Vec<OsString>) -> Cli {
        match config_file::expand(args) {
            Ok(expanded) => Cli::parse_from(expanded),
            Err(err) => {
                eprintln!("error: {err:#}");
                std::process::exit(2);
            }
        }
    }
}

/// Sets up `tracing` on stderr. `RUST_LOG` overrides the default filter (`info` for Metrum).
pub fn init_tracing(json: bool) {
    init_tracing_at(json, "info");
}

/// Like [`init_tracing`] with another default level (`generate` keeps stderr quiet).
pub fn init_tracing_at(json: bool, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a second call (tests) keeps the first subscriber instead of panicking.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
