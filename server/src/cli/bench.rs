//! `metrum bench run|capacity|compare`: the load generator of `metrum-bench`, against Metrum
//! (`--serve "<serve args>"` starts this same binary) or any OpenAI-compatible server (`--url`).

use metrum_bench::{BenchRunArgs, CapacityArgs, CompareArgs};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// One open-loop run: requests.jsonl, summary.json, report.md and plots in --out.
    Run(BenchRunArgs),
    /// The largest QPS that meets an SLO (bisection with repeats near the boundary).
    Capacity(CapacityArgs),
    /// One table and overlaid CDFs of several run directories.
    Compare(CompareArgs),
}

impl BenchArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            match self.command {
                BenchCommand::Run(a) => metrum_bench::run_bench(a).await.map(drop),
                BenchCommand::Capacity(a) => metrum_bench::run_capacity(a).await.map(drop),
                BenchCommand::Compare(a) => metrum_bench::compare(&a.dirs, a.out).map(drop),
            }
        })
    }
}
