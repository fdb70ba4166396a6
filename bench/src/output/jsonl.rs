//! `requests.jsonl`: one line per request sent, failures included (R15), with exactly the
//! keys of [`RequestLine`]. Times are seconds; `send_time_s` is the scheduled send offset
//! from the run's start (`a_r`, from which TTFT is measured); undefined values are `null`.

use crate::results::RequestResult;
use anyhow::{Context, Result};
use metrum_core::Nanos;
use metrum_metrics::{FirstToken, SloConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::Write;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestLine {
    pub id: u64,
    pub prompt_tokens: u32,
    pub output_tokens: u64,
    pub send_time_s: f64,
    pub ttft_s: Option<f64>,
    /// The ITT vector; the first entry is the TTFT, burst tokens are 0.
    pub itts_s: Vec<f64>,
    pub tpot_s: Option<f64>,
    pub e2e_s: Option<f64>,
    pub fluidity_index: Option<f64>,
    pub deadline_misses: u64,
    pub deadlines: u64,
    pub error: Option<String>,
    /// The server's `metrum` timing object, when it sent one.
    pub server: Option<Value>,
}

impl RequestLine {
    /// `run_start` is the run clock reading of offset 0.
    pub fn new(r: &RequestResult, slo: &SloConfig, run_start: Nanos) -> Self {
        let t = &r.timeline;
        let tally = t.deadline_tally(slo.deadlines_for(t.shape()), FirstToken::Deadline);
        RequestLine {
            id: r.id,
            prompt_tokens: t.prompt_tokens(),
            output_tokens: t.output_tokens(),
            send_time_s: (t.arrival() - run_start).as_secs_f64(),
            ttft_s: t.ttft().map(Nanos::as_secs_f64),
            itts_s: t
                .inter_token_times()
                .into_iter()
                .map(Nanos::as_secs_f64)
                .collect(),
            tpot_s: t.tpot_secs(),
            e2e_s: t.e2e_latency().map(Nanos::as_secs_f64),
            fluidity_index: tally.fluidity_index(),
            deadline_misses: tally.missed(),
            deadlines: tally.total(),
            error: r.error.clone(),
            server: r.server_timing.clone(),
        }
    }
}

pub fn write(path: &Path, lines: &[RequestLine]) -> Result<()> {
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let written: std::io::Result<()> = lines
        .iter()
        .try_for_each(|line| {
            serde_json::to_writer(&mut out, line)?;
            out.write_all(b"\n")
        })
        .and_then(|()| out.flush());
    written.with_context(|| format!("writing {}", path.display()))
}

pub fn read(path: &Path) -> Result<Vec<RequestLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}
