//! `metrum bench compare DIR...`: one table over several run directories and overlaid CDFs,
//! with a warning for every difference that makes the runs unfair to compare (R1-R4):
//! workload, seed, the `max_tokens` sequence, temperature, arrival process and load,
//! hardware, and the SLO the deadline metrics were computed under.

use crate::output::config::RunConfig;
use crate::output::jsonl::{self, RequestLine};
use crate::output::summary::BenchSummary;
use crate::output::{plots, read_json};
use anyhow::{Context, Result, bail};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// One run directory, read back.
pub struct RunView {
    pub dir: PathBuf,
    pub name: String,
    pub config: RunConfig,
    pub summary: BenchSummary,
    pub lines: Vec<RequestLine>,
}

impl RunView {
    pub fn load(dir: &Path) -> Result<Self> {
        let name = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(RunView {
            dir: dir.to_path_buf(),
            name,
            config: read_json(&dir.join("config.json"))?,
            summary: read_json(&dir.join("summary.json"))?,
            lines: jsonl::read(&dir.join("requests.jsonl"))?,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CompareOutcome {
    /// Markdown: the table, then the warnings.
    pub markdown: String,
    pub warnings: Vec<String>,
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |s| format!("{:.1}", s * 1e3))
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".to_string(), |x| format!("{x:.digits$}"))
}

/// Differences that make the comparison unfair, one message per field.
pub fn fairness_warnings(runs: &[RunView]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(first) = runs.first() else {
        return out;
    };
    let mut check = |what: &str, rule: &str, f: &dyn Fn(&RunView) -> String| {
        let base = f(first);
        let differing: Vec<String> = runs
            .iter()
            .filter(|r| f(r) != base)
            .map(|r| format!("{} = {}", r.name, f(r)))
            .collect();
        if !differing.is_empty() {
            out.push(format!(
                "{rule}: runs differ in {what} ({} = {base}; {})",
                first.name,
                differing.join("; ")
            ));
        }
    };
    check("workload", "R3/R5", &|r| r.config.workload.spec.clone());
    check("seed", "R3", &|r| r.config.workload.seed.to_string());
    check("max_tokens", "R3", &|r| {
        format!(
            "{} tokens, digest {}",
            r.config.workload.max_tokens_total, r.config.workload.max_tokens_digest
        )
    });
    check("temperature", "R3", &|r| {
        r.config.target.temperature.to_string()
    });
    check("arrival process or load", "R4", &|r| {
        format!(
            "{} at {} QPS",
            r.config.workload.arrival, r.config.workload.qps
        )
    });
    check("hardware", "R1", &|r| r.config.machine.describe());
    check("SLO parameters", "deadline metrics", &|r| {
        let s = &r.summary.slo;
        format!(
            "D_d {} s, S {} s, prefill {:?}",
            s.tbt_slo_s, s.ttft_slack_s, s.prefill_model
        )
    });
    out
}

fn table(runs: &[RunView]) -> String {
    let mut t = String::from(
        "| run | target | model | QPS | done/failed | TTFT P50/P99 ms | TBT P50/P99 ms (tokens) | TPOT P50/P99 ms | E2E P99 ms | fluidity P50/mean | miss rate | fluid TGR tok/s | out tok/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        let c = &r.summary.client;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {}/{} | {}/{} | {}/{} | {}/{} | {} | {}/{} | {} | {} | {} |",
            r.name,
            r.config.target.base_url,
            r.config.target.model,
            num(r.summary.offered_qps, 2),
            c.requests.completed,
            c.requests.failed,
            ms(c.ttft_s.p50),
            ms(c.ttft_s.p99),
            ms(c.tbt_s.p50),
            ms(c.tbt_s.p99),
            ms(c.tpot_s.p50),
            ms(c.tpot_s.p99),
            ms(c.e2e_s.p99),
            num(c.fluidity_index.p50, 3),
            num(c.fluidity_index.mean, 3),
            num(c.service_miss_rate.miss_rate, 4),
            num(c.throughput.fluid_token_generation_rate, 1),
            num(c.output_tokens_per_s, 1),
        );
    }
    t
}

/// Compares run directories; with `out`, writes compare.md and overlaid CDF plots there.
pub fn compare(dirs: &[PathBuf], out: Option<PathBuf>) -> Result<CompareOutcome> {
    if dirs.is_empty() {
        bail!("compare needs at least one run directory");
    }
    let runs: Vec<RunView> = dirs
        .iter()
        .map(|d| RunView::load(d).with_context(|| format!("run {}", d.display())))
        .collect::<Result<_>>()?;
    let warnings = fairness_warnings(&runs);
    let mut markdown = format!("# Comparison of {} runs\n\n{}", runs.len(), table(&runs));
    if !warnings.is_empty() {
        markdown.push_str("\n## Warnings: these runs are not like for like\n\n");
        for w in &warnings {
            let _ = writeln!(markdown, "- {w}");
        }
    }
    if let Some(out) = out {
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        std::fs::write(out.join("compare.md"), &markdown).context("writing compare.md")?;
        let ttft: Vec<Vec<f64>> = runs
            .iter()
            .map(|r| r.lines.iter().filter_map(|l| l.ttft_s).collect())
            .collect();
        let tbt: Vec<Vec<f64>> = runs
            .iter()
            .map(|r| {
                r.lines
                    .iter()
                    .flat_map(|l| l.itts_s.iter().skip(1).copied())
                    .collect()
            })
            .collect();
        // Deliveries: a multi-token delivery's tokens after its first arrive with a zero gap
        // (spec/metrics.md "Multi-token emission"); without them, the gaps a reader waits.
        let deliveries: Vec<Vec<f64>> = tbt
            .iter()
            .map(|gaps| gaps.iter().copied().filter(|&g| g > 0.0).collect())
            .collect();
        let series = |v: &'_ [Vec<f64>]| -> Vec<(String, Vec<f64>)> {
            runs.iter()
                .zip(v)
                .map(|(r, s)| (r.name.clone(), s.clone()))
                .collect()
        };
        for (file, title, data) in [
            ("ttft_cdf.svg", "TTFT CDF (over requests)", series(&ttft)),
            (
                "tbt_cdf.svg",
                "TBT CDF (over tokens, burst zeros included)",
                series(&tbt),
            ),
            (
                "inter_delivery_cdf.svg",
                "Inter-delivery gap CDF (over deliveries)",
                series(&deliveries),
            ),
        ] {
            let refs: Vec<(&str, &[f64])> = data
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect();
            plots::cdf(&out.join(file), title, "seconds", &refs)?;
        }
    }
    println!("{markdown}");
    Ok(CompareOutcome { markdown, warnings })
}
