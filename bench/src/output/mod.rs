//! Everything a run writes into its directory:
//!
//! | file | module |
//! | --- | --- |
//! | `config.json` | [`config`] |
//! | `requests.jsonl` | [`jsonl`] |
//! | `summary.json` | [`summary`] |
//! | `report.md` | [`report_md`] |
//! | `ttft_cdf.svg`, `tbt_cdf.svg`, `fluidity_hist.svg`, `tokens_vs_time.svg`, `miss_rate_vs_tbt.svg` | [`plots`] |

pub mod config;
pub mod jsonl;
pub mod plots;
pub mod report_md;
pub mod summary;

use crate::results::RequestResult;
use anyhow::{Context, Result};
use config::RunConfig;
use jsonl::RequestLine;
use metrum_core::Nanos;
use plots::Series;
use std::path::Path;
use summary::BenchSummary;

/// Requests drawn in tokens_vs_time.svg.
const SAMPLE_REQUESTS: usize = 6;

/// Bytes written (and synced) by [`prepare_dir`]: enough to need real blocks on any disk.
const PROBE_BYTES: usize = 64 << 10;

/// Creates `dir` and proves it takes writes (a probe file written, synced and removed), so a
/// read-only or full disk fails the run before the server starts and the load is sent,
/// rather than after minutes of measurements.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let probe = dir.join(".metrum-write-probe");
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&[0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let removed = std::fs::remove_file(&probe);
    written.with_context(|| format!("{} does not take writes", dir.display()))?;
    removed.with_context(|| format!("removing {}", probe.display()))
}

pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Writes every file of a run directory.
pub fn write_run(
    dir: &Path,
    config: &RunConfig,
    summary: &BenchSummary,
    lines: &[RequestLine],
    results: &[RequestResult],
) -> Result<()> {
    let written = (|| {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_json(&dir.join("config.json"), config)?;
        jsonl::write(&dir.join("requests.jsonl"), lines)?;
        write_json(&dir.join("summary.json"), summary)?;
        let report = dir.join("report.md");
        std::fs::write(&report, report_md::render(summary, config))
            .with_context(|| format!("writing {}", report.display()))?;
        write_plots(dir, summary, results)
    })();
    // The run itself is over; say plainly that its results did not all reach the disk.
    written.with_context(|| {
        format!(
            "the run finished but its results could not be written to {}",
            dir.display()
        )
    })
}

fn write_plots(dir: &Path, summary: &BenchSummary, results: &[RequestResult]) -> Result<()> {
    let secs = |n: Nanos| n.as_secs_f64();
    let ttft: Vec<f64> = results
        .iter()
        .filter_map(|r| r.timeline.ttft().map(secs))
        .collect();
    let server_ttft: Vec<f64> = results
        .iter()
        .filter_map(|r| r.server_timeline.as_ref()?.ttft().map(secs))
        .collect();
    let mut ttft_series = vec![("client", ttft.as_slice())];
    if !server_ttft.is_empty() {
        ttft_series.push(("server", server_ttft.as_slice()));
    }
    plots::cdf(
        &dir.join("ttft_cdf.svg"),
        "TTFT CDF (over requests)",
        "seconds",
        &ttft_series,
    )?;
    let tbt: Vec<f64> = results
        .iter()
        .flat_map(|r| r.timeline.time_between_tokens())
        .map(secs)
        .collect();
    let gaps: Vec<f64> = results
        .iter()
        .flat_map(|r| r.timeline.inter_delivery_gaps())
        .map(secs)
        .collect();
    plots::cdf(
        &dir.join("tbt_cdf.svg"),
        "TBT CDF (over tokens, burst zeros included) and inter-delivery gaps",
        "seconds",
        &[
            ("TBT (tokens)", &tbt),
            ("inter-delivery gap (deliveries)", &gaps),
        ],
    )?;
    let slo = metrum_metrics::SloConfig::new(
        Nanos::from_secs_f64(summary.slo.tbt_slo_s),
        Nanos::from_secs_f64(summary.slo.ttft_slack_s),
        summary.slo.prefill_model,
    )?;
    let fluidity: Vec<f64> = results
        .iter()
        .filter_map(|r| r.timeline.fluidity_index(&slo))
        .collect();
    plots::unit_histogram(
        &dir.join("fluidity_hist.svg"),
        "Fluidity-index (per request)",
        "fluidity-index",
        &fluidity,
        20,
    )?;
    let step = (results.len() / SAMPLE_REQUESTS).max(1);
    let names: Vec<String> = results
        .iter()
        .step_by(step)
        .take(SAMPLE_REQUESTS)
        .map(|r| format!("request {}", r.id))
        .collect();
    let samples: Vec<Series> = results
        .iter()
        .step_by(step)
        .take(SAMPLE_REQUESTS)
        .zip(&names)
        .map(|(r, name)| {
            let arrival = r.timeline.arrival();
            // A staircase: the count holds until the next token arrives.
            let mut points = vec![(0.0, 0.0)];
            for (k, t) in r.timeline.token_times().enumerate() {
                let at = secs(t - arrival);
                points.push((at, k as f64));
                points.push((at, (k + 1) as f64));
            }
            Series { name, points }
        })
        .collect();
    plots::lines(
        &dir.join("tokens_vs_time.svg"),
        "Tokens received vs time since arrival",
        "seconds",
        "tokens",
        &samples,
        None,
    )?;
    let curve = Series {
        name: "P99 over requests",
        points: summary
            .client
            .tbt_curve
            .iter()
            .filter_map(|p| Some((p.tbt_deadline_s * 1e3, p.miss_rate?)))
            .collect(),
    };
    plots::lines(
        &dir.join("miss_rate_vs_tbt.svg"),
        "Deadline miss rate vs target TBT (first token ignored)",
        "target TBT (ms)",
        "miss rate",
        &[curve],
        Some((0.0, 1.0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_dir_creates_the_directory_and_leaves_no_probe_behind() {
        let dir = std::env::temp_dir().join(format!("metrum-bench-prep-{}", std::process::id()));
        let run = dir.join("a/b");
        prepare_dir(&run).unwrap();
        assert_eq!(std::fs::read_dir(&run).unwrap().count(), 0);
        let message = format!("{:#}", prepare_dir(Path::new("/dev/full/run")).unwrap_err());
        assert!(message.contains("creating /dev/full/run"), "{message}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_full_disk_error_names_the_file() {
        // /dev/full takes the open and answers every write with ENOSPC.
        let err = write_json(Path::new("/dev/full"), &serde_json::json!({"a": 1})).unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("writing /dev/full: No space left on device"),
            "{message}"
        );
        let line = jsonl::RequestLine {
            id: 0,
            prompt_tokens: 1,
            output_tokens: 0,
            send_time_s: 0.0,
            ttft_s: None,
            itts_s: Vec::new(),
            tpot_s: None,
            e2e_s: None,
            fluidity_index: None,
            deadline_misses: 0,
            deadlines: 0,
            error: None,
            server: None,
        };
        let err = jsonl::write(Path::new("/dev/full"), &[line]).unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("writing /dev/full: No space left on device"),
            "{message}"
        );
    }
}
