//! What each request asks for: prompt length P, output length N (sent as `max_tokens = N`
//! with `ignore_eos: true`, so every system does the same work, R3), and the prompt text.
//!
//! `--workload` forms:
//! - `synthetic[:prompt=DIST,output=DIST]` with DIST from [`crate::lengths`]. Without `--workload`
//!   the default is [`DEFAULT_WORKLOAD`]: prompts uniform in 64..=256 tokens, outputs
//!   uniform in 32..=128. 16 requests average ~1.3k output tokens, so 16 requests at 2 QPS
//!   finish in well under a minute for SmolLM2-135M on a 2-core CPU (~50-100 tok/s per stream).
//! - `trace:sharegpt`, `trace:arxiv`, `trace:bwb`: rows drawn at random (seeded, without
//!   replacement until the trace is exhausted) from the shipped traces.
//! - `file:PATH` or a path ending in `.csv`/`.jsonl`: rows in file order, cycled if too few.
//!
//! **Length rule for traces** ([`fit_to_context`]): first `--length-scale F` multiplies both
//! lengths (rounded up, at least 1); then a request with `P + N` above the model's context C
//! is shrunk to `(⌊P·C/(P+N)⌋, ⌊N·C/(P+N)⌋)` (each at least 1), which keeps its
//! prompt:output ratio, the property the trace is chosen for.

use crate::lengths::LengthDist;
use crate::trace::{self, NamedTrace};
use anyhow::{Result, anyhow, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The workload used without `--workload`.
pub const DEFAULT_WORKLOAD: &str = "synthetic:prompt=uniform:64:256,output=uniform:32:128";

/// Offset of the workload RNG stream from the run seed (see `crate::arrival`'s `ARRIVAL_STREAM`).
const WORKLOAD_STREAM: u64 = 0x776f_726b_6c6f_6164; // "workload"

/// One request's shape before its prompt text exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestSpec {
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// Arrival offset from a trace file, seconds (used with `--arrival trace`).
    pub arrival_s: Option<f64>,
    /// Prompt text from a trace file; sent as is.
    pub text: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum WorkloadSpec {
    Synthetic {
        prompt: LengthDist,
        output: LengthDist,
    },
    Trace(NamedTrace),
    File(PathBuf),
}

impl FromStr for WorkloadSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s == "synthetic" {
            return DEFAULT_WORKLOAD.parse();
        }
        if let Some(params) = s.strip_prefix("synthetic:") {
            let (mut prompt, mut output) = (None, None);
            for part in params.split(',') {
                let (key, value) = part
                    .split_once('=')
                    .ok_or_else(|| anyhow!("{part:?}: expected prompt=DIST or output=DIST"))?;
                match key.trim() {
                    "prompt" => prompt = Some(value.parse()?),
                    "output" => output = Some(value.parse()?),
                    other => bail!("unknown synthetic parameter {other:?}"),
                }
            }
            let default = default_dists();
            return Ok(WorkloadSpec::Synthetic {
                prompt: prompt.unwrap_or(default.0),
                output: output.unwrap_or(default.1),
            });
        }
        if let Some(name) = s.strip_prefix("trace:") {
            return Ok(WorkloadSpec::Trace(NamedTrace::parse(name)?));
        }
        if let Some(path) = s.strip_prefix("file:") {
            return Ok(WorkloadSpec::File(PathBuf::from(path)));
        }
        if s.ends_with(".csv") || s.ends_with(".jsonl") || s.ends_with(".ndjson") {
            return Ok(WorkloadSpec::File(PathBuf::from(s)));
        }
        bail!(
            "unknown workload {s:?}: synthetic[:prompt=DIST,output=DIST], trace:NAME or file:PATH"
        )
    }
}

fn default_dists() -> (LengthDist, LengthDist) {
    (
        LengthDist::Uniform { min: 64, max: 256 },
        LengthDist::Uniform { min: 32, max: 128 },
    )
}

impl fmt::Display for WorkloadSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkloadSpec::Synthetic { prompt, output } => {
                write!(f, "synthetic:prompt={prompt},output={output}")
            }
            WorkloadSpec::Trace(t) => write!(f, "trace:{}", t.name()),
            WorkloadSpec::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl WorkloadSpec {
    /// `count` request shapes, reproducible from `seed`, before the context rule.
    pub fn sample(&self, count: usize, seed: u64) -> Result<Vec<RequestSpec>> {
        let mut rng = StdRng::seed_from_u64(seed ^ WORKLOAD_STREAM);
        match self {
            WorkloadSpec::Synthetic { prompt, output } => Ok((0..count)
                .map(|_| RequestSpec {
                    prompt_tokens: prompt.sample(&mut rng),
                    output_tokens: output.sample(&mut rng),
                    arrival_s: None,
                    text: None,
                })
                .collect()),
            WorkloadSpec::Trace(t) => {
                let rows = t.rows()?;
                let mut order: Vec<usize> = (0..rows.len()).collect();
                let mut out = Vec::with_capacity(count);
                while out.len() < count {
                    order.shuffle(&mut rng);
                    let need = count - out.len();
                    out.extend(order.iter().take(need).map(|&i| rows[i].clone()));
                }
                Ok(out)
            }
            WorkloadSpec::File(path) => {
                let rows = trace::read_file(path)?;
                Ok(rows.iter().cycle().take(count).cloned().collect())
            }
        }
    }

    /// Arrival times of a file trace (all rows), if every row has one.
    pub fn trace_arrivals(&self) -> Result<Option<Vec<f64>>> {
        let WorkloadSpec::File(path) = self else {
            return Ok(None);
        };
        let rows = trace::read_file(path)?;
        Ok(rows.iter().map(|r| r.arrival_s).collect())
    }
}

/// The documented length rule (module docs): scale by `length_scale`, then fit `P + N` into
/// `context` keeping the ratio. Returns the number of requests the context rule changed.
pub fn fit_to_context(specs: &mut [RequestSpec], context: u32, length_scale: f64) -> usize {
    let mut shrunk = 0;
    for s in specs.iter_mut() {
        if length_scale != 1.0 {
            let scale = |v: u32| {
                ((f64::from(v) * length_scale).ceil().max(1.0)).min(f64::from(u32::MAX)) as u32
            };
            s.prompt_tokens = scale(s.prompt_tokens);
            s.output_tokens = scale(s.output_tokens);
        }
        let total = u64::from(s.prompt_tokens) + u64::from(s.output_tokens);
        if total > u64::from(context) && context >= 2 {
            let c = u64::from(context);
            s.prompt_tokens = ((u64::from(s.prompt_tokens) * c / total) as u32).max(1);
            s.output_tokens = ((u64::from(s.output_tokens) * c / total) as u32).max(1);
            while s.prompt_tokens + s.output_tokens > context {
                if s.prompt_tokens >= s.output_tokens {
                    s.prompt_tokens -= 1;
                } else {
                    s.output_tokens -= 1;
                }
            }
            shrunk += 1;
        }
    }
    shrunk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_canonically() {
        let w: WorkloadSpec = "synthetic".parse().unwrap();
        assert_eq!(w.to_string(), DEFAULT_WORKLOAD);
        let w: WorkloadSpec = "synthetic:output=fixed:8".parse().unwrap();
        assert_eq!(
            w.to_string(),
            "synthetic:prompt=uniform:64:256,output=fixed:8"
        );
        assert_eq!(
            "trace:arxiv".parse::<WorkloadSpec>().unwrap(),
            WorkloadSpec::Trace(NamedTrace::Arxiv)
        );
        assert!(matches!(
            "x.jsonl".parse::<WorkloadSpec>().unwrap(),
            WorkloadSpec::File(_)
        ));
        assert!(
            "synthetic:prompt=fixed:1,foo=1"
                .parse::<WorkloadSpec>()
                .is_err()
        );
        assert!("nonsense".parse::<WorkloadSpec>().is_err());
    }

    #[test]
    fn sampling_is_seeded_and_traces_cycle_without_repeats_first() {
        let w: WorkloadSpec = "trace:sharegpt".parse().unwrap();
        let a = w.sample(100, 1).unwrap();
        assert_eq!(a, w.sample(100, 1).unwrap());
        assert_ne!(a, w.sample(100, 2).unwrap());
        let s: WorkloadSpec = "synthetic:prompt=fixed:5,output=uniform:1:3"
            .parse()
            .unwrap();
        let specs = s.sample(50, 0).unwrap();
        assert!(
            specs
                .iter()
                .all(|r| r.prompt_tokens == 5 && (1..=3).contains(&r.output_tokens))
        );
    }

    #[test]
    fn context_rule_keeps_the_ratio_and_fits() {
        let mut specs = vec![
            RequestSpec {
                prompt_tokens: 3000,
                output_tokens: 1000,
                arrival_s: None,
                text: None,
            },
            RequestSpec {
                prompt_tokens: 100,
                output_tokens: 50,
                arrival_s: None,
                text: None,
            },
        ];
        assert_eq!(fit_to_context(&mut specs, 2048, 1.0), 1);
        assert_eq!(
            (specs[0].prompt_tokens, specs[0].output_tokens),
            (1536, 512)
        );
        assert_eq!((specs[1].prompt_tokens, specs[1].output_tokens), (100, 50));
        fit_to_context(&mut specs, 2048, 0.1);
        assert_eq!((specs[1].prompt_tokens, specs[1].output_tokens), (10, 5));
    }
}
