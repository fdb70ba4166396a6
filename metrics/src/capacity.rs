//! Capacity search (spec (c)): the largest QPS a configuration sustains under an SLO, as a
//! pure state machine. The load generator asks [`CapacitySearch::next_step`] what to run,
//! runs it, and reports back with [`CapacitySearch::record`]; no clock, no I/O here.
//!
//! The bisection is Etalon's: `left = 0`, `right = 2 × start_qps`, probe
//! `round((left + right)/2, 2)`; a pass sets `left` (and doubles `right`, capped by the
//! smallest failure, when the pass is above 80% of it); a failure sets `right`. It stops when
//! a probe repeats, when `|right − left| < granularity% × qps`, or after `max_iterations`.
//!
//! Near the boundary (bracket narrower than `boundary_band_pct` of the probe) a probe is run
//! with `boundary_repeats` seeds and passes only if every seed passes, as the spec's
//! recommended procedure asks; the capacity reported was confirmed under all seeds, and the
//! metric values of those seeds are the spread. QPS values are kept in integer hundredths.

use serde::{Deserialize, Serialize};

/// Search parameters. Defaults: Etalon's (`start_qps` 1, 2.5% granularity, 20 iterations),
/// plus 3 seeds within 10% of the boundary.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapacitySearchConfig {
    pub start_qps: f64,
    pub min_granularity_pct: f64,
    pub max_iterations: u32,
    pub boundary_repeats: u32,
    pub boundary_band_pct: f64,
}

impl Default for CapacitySearchConfig {
    fn default() -> Self {
        CapacitySearchConfig {
            start_qps: 1.0,
            min_granularity_pct: 2.5,
            max_iterations: 20,
            boundary_repeats: 3,
            boundary_band_pct: 10.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CapacityError {
    #[error("start_qps must be at least 0.01 and finite, got {0}")]
    BadStartQps(f64),
    #[error("{name} must be finite and non-negative, got {value}")]
    BadPercent { name: &'static str, value: f64 },
    #[error("boundary_repeats must be at least 1")]
    NoRepeats,
    #[error("result recorded for {got:?}, but the search asked for {expected:?}")]
    UnexpectedRun {
        expected: Option<RunRequest>,
        got: RunRequest,
    },
}

/// One benchmark run to perform: Poisson arrivals at `qps`, with the seed numbered
/// `seed_index` (the caller maps it to a real seed, the same way for every probe).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    pub qps: f64,
    pub seed_index: u32,
}

/// The outcome of one run: whether it met the SLO and the SLO metric's value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub passed: bool,
    pub metric: f64,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum SearchStep {
    Run(RunRequest),
    Done(CapacityResult),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    RepeatedQps,
    Granularity,
    MaxIterations,
}

/// One probed QPS and every run made at it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub qps: f64,
    pub passed: bool,
    pub runs: Vec<RunResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapacityResult {
    /// `None` if no probed QPS met the SLO.
    pub max_qps_under_slo: Option<f64>,
    /// The SLO metric of each seed run at the capacity (its spread across seeds).
    pub metric_at_capacity: Vec<f64>,
    pub stop_reason: StopReason,
    pub probes: Vec<Probe>,
}

#[derive(Clone, Debug)]
struct Pending {
    qps: u64,
    seeds: u32,
    runs: Vec<RunResult>,
}

/// The bisection state.
#[derive(Clone, Debug)]
pub struct CapacitySearch {
    config: CapacitySearchConfig,
    left: u64,
    right: u64,
    last_qps: u64,
    min_failing: Option<u64>,
    best: Option<usize>,
    iterations: u32,
    probes: Vec<(u64, Probe)>,
    pending: Option<Pending>,
    stopped: Option<StopReason>,
}

fn to_qps(centi: u64) -> f64 {
    centi as f64 / 100.0
}

impl CapacitySearch {
    pub fn new(config: CapacitySearchConfig) -> Result<Self, CapacityError> {
        if !(config.start_qps.is_finite() && config.start_qps >= 0.01) {
            return Err(CapacityError::BadStartQps(config.start_qps));
        }
        for (name, value) in [
            ("min_granularity_pct", config.min_granularity_pct),
            ("boundary_band_pct", config.boundary_band_pct),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(CapacityError::BadPercent { name, value });
            }
        }
        if config.boundary_repeats == 0 {
            return Err(CapacityError::NoRepeats);
        }
        let start = (config.start_qps * 100.0).round() as u64;
        Ok(CapacitySearch {
            config,
            left: 0,
            right: 2 * start,
            last_qps: 0,
            min_failing: None,
            best: None,
            iterations: 0,
            probes: Vec::new(),
            pending: None,
            stopped: None,
        })
    }

    /// The next run to perform, or the result. Asking again without recording returns the
    /// same run. A QPS probed before is not run again: its recorded runs are reused, and
    /// only the seeds it still lacks are asked for.
    pub fn next_step(&mut self) -> SearchStep {
        loop {
            if let Some(p) = &self.pending {
                return self.run_of(p);
            }
            if self.stopped.is_none() {
                self.stopped = self.stop_reason();
            }
            if self.stopped.is_none() {
                let qps = (self.left + self.right).div_ceil(2);
                if qps == self.last_qps {
                    self.stopped = Some(StopReason::RepeatedQps);
                    continue;
                }
                self.last_qps = qps;
                self.iterations += 1;
                let seeds = if self.near_boundary(qps) {
                    self.config.boundary_repeats
                } else {
                    1
                };
                self.resume(qps, seeds);
                continue;
            }
            // Stopped: the capacity must hold under every seed before it is reported.
            match self.best.map(|i| &self.probes[i]) {
                Some((qps, probe)) if (probe.runs.len() as u32) < self.config.boundary_repeats => {
                    self.resume(*qps, self.config.boundary_repeats);
                }
                _ => return SearchStep::Done(self.result()),
            }
        }
    }

    /// Reports the outcome of the run [`next_step`](Self::next_step) asked for.
    pub fn record(&mut self, run: RunRequest, result: RunResult) -> Result<(), CapacityError> {
        let expected = self.pending.as_ref().and_then(|p| match self.run_of(p) {
            SearchStep::Run(r) => Some(r),
            SearchStep::Done(_) => None,
        });
        let Some(pending) = self.pending.as_mut().filter(|_| expected == Some(run)) else {
            return Err(CapacityError::UnexpectedRun { expected, got: run });
        };
        pending.runs.push(result);
        let all_seeds_run = pending.runs.len() as u32 >= pending.seeds;
        if result.passed && !all_seeds_run {
            return Ok(());
        }
        let Some(done) = self.pending.take() else {
            return Ok(());
        };
        self.conclude(done, result.passed);
        Ok(())
    }

    /// Probes `qps` with `seeds` seeds, reusing runs recorded for it before; concludes at
    /// once if those already decide it.
    fn resume(&mut self, qps: u64, seeds: u32) {
        let runs = self
            .probes
            .iter()
            .find(|(q, _)| *q == qps)
            .map_or(Vec::new(), |(_, p)| p.runs.clone());
        let failed = runs.iter().any(|r| !r.passed);
        let pending = Pending { qps, seeds, runs };
        if failed || pending.runs.len() as u32 >= seeds {
            self.conclude(pending, !failed);
        } else {
            self.pending = Some(pending);
        }
    }

    fn run_of(&self, p: &Pending) -> SearchStep {
        SearchStep::Run(RunRequest {
            qps: to_qps(p.qps),
            seed_index: p.runs.len() as u32,
        })
    }

    fn near_boundary(&self, qps: u64) -> bool {
        let width = self.right.abs_diff(self.left) as f64;
        width <= self.config.boundary_band_pct / 100.0 * qps as f64
    }

    fn stop_reason(&self) -> Option<StopReason> {
        let width = self.right.abs_diff(self.left) as f64;
        if width < self.config.min_granularity_pct / 100.0 * self.last_qps as f64 {
            Some(StopReason::Granularity)
        } else if self.iterations >= self.config.max_iterations {
            Some(StopReason::MaxIterations)
        } else {
            None
        }
    }

    fn conclude(&mut self, done: Pending, passed: bool) {
        let probe = Probe {
            qps: to_qps(done.qps),
            passed,
            runs: done.runs,
        };
        let index = match self.probes.iter().position(|(q, _)| *q == done.qps) {
            Some(i) => {
                self.probes[i].1 = probe;
                i
            }
            None => {
                self.probes.push((done.qps, probe));
                self.probes.len() - 1
            }
        };
        if passed {
            self.best = Some(index);
            self.left = done.qps;
            if done.qps * 10 > 8 * self.right {
                self.right = (2 * self.right).min(self.min_failing.unwrap_or(u64::MAX));
            }
            return;
        }
        self.right = done.qps;
        self.min_failing = Some(self.min_failing.map_or(done.qps, |m| m.min(done.qps)));
        if self.best == Some(index) {
            // A confirmation run failed: fall back to the best other passing probe and let
            // the bisection continue between it and this failure.
            self.best = self
                .probes
                .iter()
                .enumerate()
                .filter(|(_, (q, p))| p.passed && *q < done.qps)
                .max_by_key(|(_, (q, _))| *q)
                .map(|(i, _)| i);
            self.left = self.best.map_or(0, |i| self.probes[i].0);
            self.stopped = None;
        }
    }

    fn result(&self) -> CapacityResult {
        let best = self.best.map(|i| &self.probes[i].1);
        CapacityResult {
            max_qps_under_slo: best.map(|p| p.qps),
            metric_at_capacity: best
                .map_or(Vec::new(), |p| p.runs.iter().map(|r| r.metric).collect()),
            stop_reason: self.stopped.unwrap_or(StopReason::MaxIterations),
            probes: self.probes.iter().map(|(_, p)| p.clone()).collect(),
        }
    }
}
