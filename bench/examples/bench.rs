//! The load generator on its own, with the command line `metrum bench` embeds:
//!
//! ```text
//! cargo run --release -p metrum-bench --example bench -- run --url http://127.0.0.1:8000 --out bench-out/x
//! cargo run --release -p metrum-bench --example bench -- capacity --url ... --slo deadline --out ...
//! cargo run --release -p metrum-bench --example bench -- compare bench-out/a bench-out/b
//! ```
//!
//! `--serve` starts `<this executable> serve ...`, so it only works from the `metrum` binary.

use clap::{Parser, Subcommand};
use metrum_bench::{BenchRunArgs, CapacityArgs, CompareArgs};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One open-loop run.
    Run(BenchRunArgs),
    /// The largest QPS under an SLO.
    Capacity(CapacityArgs),
    /// A table and overlaid CDFs of several runs.
    Compare(CompareArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => metrum_bench::run_bench(args).await.map(drop),
        Command::Capacity(args) => metrum_bench::run_capacity(args).await.map(drop),
        Command::Compare(args) => metrum_bench::compare(&args.dirs, args.out).map(drop),
    }
}
