//! `metrum-soak`: the parts of `scripts/soak.sh` that need more than a shell: the chaos
//! traffic, `/metrics` scrapes, the load from a capacity search, and the final verdict.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use metrum_bench::capacity::CapacityReport;
use metrum_bench::client::{healthy, list_models};
use metrum_bench::output::{jsonl, read_json, write_json};
use metrum_bench::soak::check::{Bounds, ServerState, judge};
use metrum_bench::soak::prom::Scrape;
use metrum_bench::soak::send::Target;
use metrum_bench::soak::traffic::{self, ChaosReport, TrafficConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Chaos traffic and the end-of-soak verdict for scripts/soak.sh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send the chaos mix for DURATION seconds and write what happened to OUT (JSON).
    Traffic {
        #[arg(long)]
        url: String,
        #[arg(long)]
        duration: f64,
        /// Arrivals per second of the mix (bursts come on top).
        #[arg(long)]
        qps: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 20.0)]
        burst_every: f64,
        #[arg(long, default_value_t = 8)]
        burst_size: usize,
        /// The server's process id, for its memory samples.
        #[arg(long)]
        pid: Option<u32>,
        /// The server's --max-request-body-size, in bytes.
        #[arg(long, default_value_t = 1 << 20)]
        body_limit: u64,
        /// Seconds one request may take before it counts as failed.
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Wait until GET /health answers 200.
    Wait {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
    },
    /// Save GET /metrics to OUT.
    Scrape {
        #[arg(long)]
        url: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print FRACTION of the capacity a `metrum bench capacity` run found.
    Qps {
        #[arg(long)]
        capacity: PathBuf,
        #[arg(long, default_value_t = 0.8)]
        fraction: f64,
    },
    /// Wait for the server to go idle, judge the soak, write OUT; exit 1 if it failed.
    Check {
        #[arg(long)]
        url: String,
        #[arg(long)]
        pid: u32,
        /// The `metrum bench run` directory (its requests.jsonl).
        #[arg(long)]
        bench_dir: PathBuf,
        #[arg(long)]
        chaos: PathBuf,
        /// The /metrics scrape taken before the traffic started.
        #[arg(long)]
        before: PathBuf,
        #[arg(long)]
        warmup: f64,
        #[arg(long, default_value_t = 64.0)]
        rss_growth_mib: f64,
        #[arg(long, default_value_t = 120.0)]
        idle_timeout: f64,
        /// The server's --speculative-config JSON, when it runs with one: recorded in the
        /// verdict, which then also requires that drafts were made.
        #[arg(long)]
        speculative_config: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

async fn metrics(http: &reqwest::Client, url: &str) -> Result<String> {
    let response = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .with_context(|| format!("GET {url}/metrics"))?;
    if !response.status().is_success() {
        bail!("GET {url}/metrics: HTTP {}", response.status());
    }
    Ok(response.text().await?)
}

fn is_idle(s: &Scrape) -> bool {
    s.value("metrum_requests_running", &[]) == Some(0.0)
        && s.value("metrum_requests_waiting", &[]) == Some(0.0)
        && s.value("metrum_kv_cache_usage_ratio", &[]) == Some(0.0)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse().command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    let http = reqwest::Client::builder()
        // Below the server's 10 s header timeout, so a pooled connection is never reused
        // just as the server closes it.
        .pool_idle_timeout(Duration::from_secs(5))
        .build()?;
    match command {
        Command::Traffic {
            url,
            duration,
            qps,
            seed,
            burst_every,
            burst_size,
            pid,
            body_limit,
            timeout,
            out,
        } => {
            let url = url.trim_end_matches('/').to_string();
            let models = list_models(&http, &url).await?;
            let max_model_len = models
                .first()
                .and_then(|(_, c)| *c)
                .ok_or_else(|| anyhow!("{url}/v1/models states no max_model_len"))?;
            let target = Target {
                http,
                base_url: url,
                max_model_len,
                body_limit,
                timeout: Duration::from_secs_f64(timeout),
            };
            let config = TrafficConfig {
                duration_s: duration,
                qps,
                seed,
                burst_every_s: burst_every,
                burst_size,
            };
            let report = traffic::run(target, config, pid).await?;
            println!(
                "chaos: {} requests in {:.0} s",
                report.requests.len(),
                report.wall_s
            );
            write_json(&out, &report)
        }
        Command::Wait { url, timeout } => {
            let started = Instant::now();
            while !healthy(&http, url.trim_end_matches('/')).await {
                if started.elapsed().as_secs_f64() > timeout {
                    bail!("{url}/health did not answer 200 within {timeout} s");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(())
        }
        Command::Scrape { url, out } => {
            let text = metrics(&http, url.trim_end_matches('/')).await?;
            std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))
        }
        Command::Qps { capacity, fraction } => {
            let report: CapacityReport = read_json(&capacity)?;
            let max = report.result.max_qps_under_slo.ok_or_else(|| {
                anyhow!(
                    "{}: the search found no QPS under the SLO",
                    capacity.display()
                )
            })?;
            println!("{:.3}", max * fraction);
            Ok(())
        }
        Command::Check {
            url,
            pid,
            bench_dir,
            chaos,
            before,
            warmup,
            rss_growth_mib,
            idle_timeout,
            speculative_config,
            out,
        } => {
            let speculative_config = speculative_config
                .map(|s| serde_json::from_str::<serde_json::Value>(&s))
                .transpose()
                .context("--speculative-config must be JSON")?;
            let url = url.trim_end_matches('/');
            let bench = jsonl::read(&bench_dir.join("requests.jsonl"))?;
            let chaos: ChaosReport = read_json(&chaos)?;
            let before_text = std::fs::read_to_string(&before)
                .with_context(|| format!("reading {}", before.display()))?;
            let started = Instant::now();
            let mut after = Scrape::default();
            let mut idle = false;
            while started.elapsed().as_secs_f64() < idle_timeout {
                if let Ok(text) = metrics(&http, url).await {
                    after = Scrape::parse(&text);
                    if is_idle(&after) {
                        idle = true;
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let state = ServerState {
                alive: healthy(&http, url).await && traffic::rss_kib(pid).is_some(),
                idle,
                idle_after_s: started.elapsed().as_secs_f64(),
                rss_final_kib: traffic::rss_kib(pid),
            };
            let bounds = Bounds {
                warmup_s: warmup,
                rss_growth_mib,
                speculative_config,
            };
            let verdict = judge(
                &bench,
                &chaos,
                &Scrape::parse(&before_text),
                &after,
                state,
                &bounds,
            );
            write_json(&out, &verdict)?;
            for c in &verdict.checks {
                let mark = if c.passed { "ok  " } else { "FAIL" };
                println!("{mark} {}: {}", c.name, c.detail);
            }
            for f in verdict.failures.iter().take(20) {
                println!("     {f}");
            }
            println!(
                "bench: {:?}\nchaos: {:?}\nserver finished (Δ): {:?}\ncut streams {:.1}% of streams, malformed {:.1}% of requests, {} burst aborts, {} aborts finished first; RSS baseline/final/max {:?}/{:?}/{:?} KiB",
                verdict.bench,
                verdict.chaos,
                verdict.server_finished,
                verdict.disconnect_share_of_streams * 100.0,
                verdict.malformed_share_of_requests * 100.0,
                verdict.burst_aborts,
                verdict.aborts_finished_first,
                verdict.rss_baseline_kib,
                verdict.rss_final_kib,
                verdict.rss_max_kib,
            );
            match &verdict.speculative_config {
                Some(config) => println!("served with speculative decoding: {config}"),
                None => println!("served without speculative decoding"),
            }
            for s in &verdict.skipped_kinds {
                println!("chaos kind not sent: {:?}: {}", s.kind, s.why);
            }
            if !verdict.passed {
                bail!("the soak failed; see {}", out.display());
            }
            Ok(())
        }
    }
}
