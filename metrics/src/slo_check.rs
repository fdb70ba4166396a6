//! Pass/fail of one benchmark run against a capacity SLO (spec (c)): Etalon's three SLO
//! types plus Sarathi-Serve's. A request that failed counts against the SLO (spec (a),
//! failed requests): where its value is undefined it is taken as the worst possible
//! (miss rate 1, infinite latency) instead of being left out.

use crate::capacity::RunResult;
use crate::fluidity::FirstToken;
use crate::percentiles::{Distribution, Population};
use crate::slo::SloConfig;
use crate::summary::tbt_distribution;
use crate::timeline::RequestTimeline;
use metrum_core::Nanos;
use serde::{Deserialize, Serialize};

/// The SLO a capacity search holds a configuration to.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum CapacitySlo {
    /// P`request_quantile` over requests of the per-request deadline miss rate (first token
    /// judged against `D_p(P)`) ≤ `miss_rate_slo`. Etalon's default: P99 ≤ 0.1.
    Deadline {
        miss_rate_slo: f64,
        request_quantile: f64,
    },
    /// P`tbt_quantile` over tokens of TBT ≤ `tbt_slo` and P`ttft_quantile` over requests of
    /// TTFT ≤ `ttft_slo`. Etalon's defaults: P99 TBT ≤ `D_d`, P90 TTFT ≤ 0.1 s.
    TbtTtft {
        tbt_slo: Nanos,
        tbt_quantile: f64,
        ttft_slo: Nanos,
        ttft_quantile: f64,
    },
    /// P`q` over requests of TTFT and of TPOT. Etalon's defaults: P90 ≤ 0.1 s each.
    TtftTpot {
        ttft_slo: Nanos,
        ttft_quantile: f64,
        tpot_slo: Nanos,
        tpot_quantile: f64,
    },
    /// Sarathi-Serve: P50 over requests of scheduling delay ≤ 2 s and P99 over tokens of
    /// TBT ≤ `tbt_slo` (default 0.2 s).
    SchedulingDelayTbt {
        scheduling_delay_slo: Nanos,
        scheduling_delay_quantile: f64,
        tbt_slo: Nanos,
        tbt_quantile: f64,
    },
}

impl CapacitySlo {
    pub fn etalon_deadline() -> Self {
        CapacitySlo::Deadline {
            miss_rate_slo: 0.1,
            request_quantile: 0.99,
        }
    }

    pub fn etalon_tbt_ttft(slo: &SloConfig) -> Self {
        CapacitySlo::TbtTtft {
            tbt_slo: slo.tbt_slo(),
            tbt_quantile: 0.99,
            ttft_slo: Nanos::from_millis(100),
            ttft_quantile: 0.9,
        }
    }

    pub fn etalon_ttft_tpot() -> Self {
        CapacitySlo::TtftTpot {
            ttft_slo: Nanos::from_millis(100),
            ttft_quantile: 0.9,
            tpot_slo: Nanos::from_millis(100),
            tpot_quantile: 0.9,
        }
    }

    pub fn sarathi() -> Self {
        CapacitySlo::SchedulingDelayTbt {
            scheduling_delay_slo: Nanos::from_millis(2000),
            scheduling_delay_quantile: 0.5,
            tbt_slo: Nanos::from_millis(200),
            tbt_quantile: 0.99,
        }
    }

    /// Judges one run. An empty run, or one where a checked quantile is undefined, fails.
    pub fn evaluate(&self, timelines: &[RequestTimeline], slo: &SloConfig) -> SloVerdict {
        let secs = |n: Nanos| n.as_secs_f64();
        let per_request = |worst: f64, f: &dyn Fn(&RequestTimeline) -> Option<f64>| {
            let values = timelines
                .iter()
                .map(|t| f(t).or(t.is_failed().then_some(worst)));
            Distribution::from_options(Population::Requests, values)
        };
        let checks = match *self {
            CapacitySlo::Deadline {
                miss_rate_slo,
                request_quantile,
            } => {
                let rates = per_request(1.0, &|t| {
                    let params = slo.deadlines_for(t.shape());
                    t.deadline_tally(params, FirstToken::Deadline).miss_rate()
                });
                vec![SloCheck::new(
                    "deadline_miss_rate",
                    &rates,
                    request_quantile,
                    miss_rate_slo,
                )]
            }
            CapacitySlo::TbtTtft {
                tbt_slo,
                tbt_quantile,
                ttft_slo,
                ttft_quantile,
            } => {
                let ttft = per_request(f64::INFINITY, &|t| t.ttft().map(secs));
                vec![
                    SloCheck::new(
                        "tbt",
                        &tbt_distribution(timelines),
                        tbt_quantile,
                        secs(tbt_slo),
                    ),
                    SloCheck::new("ttft", &ttft, ttft_quantile, secs(ttft_slo)),
                ]
            }
            CapacitySlo::TtftTpot {
                ttft_slo,
                ttft_quantile,
                tpot_slo,
                tpot_quantile,
            } => {
                let ttft = per_request(f64::INFINITY, &|t| t.ttft().map(secs));
                let tpot = per_request(f64::INFINITY, &|t| t.tpot_secs());
                vec![
                    SloCheck::new("ttft", &ttft, ttft_quantile, secs(ttft_slo)),
                    SloCheck::new("tpot", &tpot, tpot_quantile, secs(tpot_slo)),
                ]
            }
            CapacitySlo::SchedulingDelayTbt {
                scheduling_delay_slo,
                scheduling_delay_quantile,
                tbt_slo,
                tbt_quantile,
            } => {
                let delay = per_request(f64::INFINITY, &|t| t.scheduling_delay().map(secs));
                vec![
                    SloCheck::new(
                        "scheduling_delay",
                        &delay,
                        scheduling_delay_quantile,
                        secs(scheduling_delay_slo),
                    ),
                    SloCheck::new(
                        "tbt",
                        &tbt_distribution(timelines),
                        tbt_quantile,
                        secs(tbt_slo),
                    ),
                ]
            }
        };
        SloVerdict {
            passed: !timelines.is_empty() && checks.iter().all(|c| c.passed),
            checks,
        }
    }
}

/// One quantile compared with its threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloCheck {
    pub metric: String,
    pub population: Population,
    pub quantile: f64,
    pub threshold: f64,
    /// `None` when the distribution had no sample.
    pub value: Option<f64>,
    pub passed: bool,
}

impl SloCheck {
    fn new(metric: &str, d: &Distribution, quantile: f64, threshold: f64) -> Self {
        let value = d.quantile(quantile).map(|p| p.value);
        SloCheck {
            metric: metric.to_string(),
            population: d.population(),
            quantile,
            threshold,
            value,
            passed: value.is_some_and(|v| v <= threshold),
        }
    }
}

/// A run's verdict; `checks[0]` holds the headline metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloVerdict {
    pub passed: bool,
    pub checks: Vec<SloCheck>,
}

impl SloVerdict {
    /// What [`crate::CapacitySearch::record`] takes; the metric is the first check's value
    /// (NaN when undefined).
    pub fn run_result(&self) -> RunResult {
        RunResult {
            passed: self.passed,
            metric: self
                .checks
                .first()
                .and_then(|c| c.value)
                .unwrap_or(f64::NAN),
        }
    }
}
