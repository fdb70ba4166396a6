//! The arrival schedule: every send time of a run, fixed before the first request from the
//! seed alone (spec (c): truly open loop). The dispatcher never skips or delays an arrival
//! because earlier requests are slow; it only reports when it fell behind.
//!
//! Times are offsets from the run's start. The first request goes at 0; inter-arrival gaps
//! follow the process: `poisson` (exponential, mean 1/QPS), `gamma:CV` (shape 1/CV², same
//! mean: CV < 1 is smoother than Poisson, CV > 1 burstier), `constant` (exactly 1/QPS), or
//! `trace` (the workload's own arrival times, QPS unused).
//!
//! [`PoissonGaps`] is the one home of Poisson arrivals: [`schedule`] (`metrum bench`,
//! `metrum simulate`), the soak's chaos client and the simulator's [`crate::PoissonWorkload`]
//! all draw their exponential gaps from it, each from its own seeded stream (see "Two seeded
//! streams" in the crate docs).

use crate::prng::SplitMix64;
use anyhow::{Result, anyhow, bail};
use metrum_core::Nanos;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Gamma};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Offset of the arrival RNG stream from the run seed, so arrivals and workload sampling
/// draw from independent streams and changing one never shifts the other.
const ARRIVAL_STREAM: u64 = 0x6172_7269_7661_6c73; // "arrivals"

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ArrivalProcess {
    Poisson,
    Gamma { cv: f64 },
    Constant,
    Trace,
}

impl FromStr for ArrivalProcess {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        match s {
            "poisson" => Ok(ArrivalProcess::Poisson),
            "constant" | "static" => Ok(ArrivalProcess::Constant),
            "trace" => Ok(ArrivalProcess::Trace),
            _ => {
                let cv = s.strip_prefix("gamma:").ok_or_else(|| {
                    anyhow!("unknown arrival process {s:?}: poisson, gamma:CV, constant or trace")
                })?;
                let cv: f64 = cv
                    .parse()
                    .map_err(|_| anyhow!("gamma CV {cv:?} is not a number"))?;
                if !(cv.is_finite() && cv > 0.0) {
                    bail!("gamma CV must be positive, got {cv}");
                }
                Ok(ArrivalProcess::Gamma { cv })
            }
        }
    }
}

impl fmt::Display for ArrivalProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArrivalProcess::Poisson => f.write_str("poisson"),
            ArrivalProcess::Gamma { cv } => write!(f, "gamma:{cv}"),
            ArrivalProcess::Constant => f.write_str("constant"),
            ArrivalProcess::Trace => f.write_str("trace"),
        }
    }
}

/// Inter-arrival gaps of an open-loop Poisson process: exponential, mean `1 / rate` seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoissonGaps {
    rate: f64,
    exp: Exp<f64>,
}

impl PoissonGaps {
    /// `rate` arrivals per second; `Err` unless it is finite and positive.
    pub fn new(rate: f64) -> Result<PoissonGaps> {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("a Poisson rate must be a positive number, got {rate}");
        }
        let exp = Exp::new(rate).map_err(|e| anyhow!("poisson rate {rate}: {e}"))?;
        Ok(PoissonGaps { rate, exp })
    }

    /// [`PoissonGaps::new`], with a rate that is not finite and positive read as "next to
    /// never" (the smallest positive rate): for callers that cannot fail, like the simulator's
    /// generator.
    pub fn or_never(rate: f64) -> PoissonGaps {
        PoissonGaps::new(rate).unwrap_or_else(|_| PoissonGaps {
            rate: f64::MIN_POSITIVE,
            exp: Exp::new(f64::MIN_POSITIVE).unwrap_or_else(|_| unreachable!("a positive rate")),
        })
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The next gap in seconds from `rand`'s generator (`rand_distr`'s ziggurat `Exp`): the
    /// stream of the bench's and the soak's schedules.
    pub fn sample(&self, rng: &mut impl Rng) -> f64 {
        self.exp.sample(rng)
    }

    /// The next gap in seconds from the simulator's [`SplitMix64`], by inversion of one
    /// uniform draw. The simulator's committed results depend on exactly this sequence.
    pub fn sample_splitmix(&self, rng: &mut SplitMix64) -> f64 {
        -(1.0 - rng.next_f64()).ln() / self.rate
    }
}

/// How long the schedule runs: a number of requests, or every arrival before a duration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RunLength {
    Requests(usize),
    Duration(Nanos),
}

/// Upper bound on a schedule, so a typo like `--duration 1e9` fails instead of exhausting
/// memory.
pub const MAX_ARRIVALS: usize = 10_000_000;

/// The send offsets of a run. `trace_times` (seconds, from the workload) is required for
/// [`ArrivalProcess::Trace`]; they are shifted to start at 0 and sorted.
pub fn schedule(
    process: ArrivalProcess,
    qps: f64,
    length: RunLength,
    seed: u64,
    trace_times: Option<&[f64]>,
) -> Result<Vec<Nanos>> {
    if let ArrivalProcess::Trace = process {
        return trace_schedule(length, trace_times);
    }
    if !(qps.is_finite() && qps > 0.0) {
        bail!("--qps must be a positive number, got {qps}");
    }
    let mean = 1.0 / qps;
    let mut rng = StdRng::seed_from_u64(seed ^ ARRIVAL_STREAM);
    let mut gap: Box<dyn FnMut(&mut StdRng) -> f64> = match process {
        ArrivalProcess::Poisson => {
            let gaps = PoissonGaps::new(qps)?;
            Box::new(move |rng| gaps.sample(rng))
        }
        ArrivalProcess::Gamma { cv } => {
            let shape = 1.0 / (cv * cv);
            let gamma =
                Gamma::new(shape, mean / shape).map_err(|e| anyhow!("gamma cv {cv}: {e}"))?;
            Box::new(move |rng| gamma.sample(rng))
        }
        ArrivalProcess::Constant | ArrivalProcess::Trace => Box::new(move |_| mean),
    };
    let mut times = Vec::new();
    let mut t = 0.0f64;
    loop {
        let at = Nanos::from_secs_f64(t);
        let more = match length {
            RunLength::Requests(n) => times.len() < n,
            RunLength::Duration(d) => at < d,
        };
        if !more {
            break;
        }
        if times.len() >= MAX_ARRIVALS {
            bail!("the schedule would exceed {MAX_ARRIVALS} requests");
        }
        times.push(at);
        t += gap(&mut rng);
    }
    Ok(times)
}

fn trace_schedule(length: RunLength, trace_times: Option<&[f64]>) -> Result<Vec<Nanos>> {
    let times = trace_times.ok_or_else(|| {
        anyhow!("--arrival trace needs a workload file with an arrival_time_s column")
    })?;
    if let Some(bad) = times.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
        bail!("trace arrival time {bad} is not a finite non-negative number of seconds");
    }
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let first = sorted.first().copied().unwrap_or(0.0);
    let offsets = sorted.into_iter().map(|t| Nanos::from_secs_f64(t - first));
    Ok(match length {
        RunLength::Requests(n) => offsets.take(n).collect(),
        RunLength::Duration(d) => offsets.take_while(|t| *t < d).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(times: &[Nanos]) -> Vec<f64> {
        times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect()
    }

    fn mean_and_cv(x: &[f64]) -> (f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn poisson_has_the_asked_rate_and_exponential_gaps() {
        let n = 20_000;
        let qps = 8.0;
        let times = schedule(
            ArrivalProcess::Poisson,
            qps,
            RunLength::Requests(n),
            7,
            None,
        )
        .unwrap();
        assert_eq!(times.len(), n);
        assert_eq!(times[0], Nanos::ZERO);
        let g = gaps(&times);
        let (mean, cv) = mean_and_cv(&g);
        // Mean of n exponential gaps: standard error (1/qps)/sqrt(n); allow 5 of them.
        let se = (1.0 / qps) / (g.len() as f64).sqrt();
        assert!((mean - 1.0 / qps).abs() < 5.0 * se, "mean gap {mean}");
        assert!((cv - 1.0).abs() < 0.05, "cv {cv}");
        // Kolmogorov-Smirnov against Exp(qps): the 0.1% critical value is 1.95/sqrt(n).
        let mut sorted = g.clone();
        sorted.sort_by(f64::total_cmp);
        let m = sorted.len() as f64;
        let d = sorted
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let cdf = 1.0 - (-qps * x).exp();
                (cdf - i as f64 / m)
                    .abs()
                    .max(((i + 1) as f64 / m - cdf).abs())
            })
            .fold(0.0, f64::max);
        assert!(d < 1.95 / m.sqrt(), "KS distance {d}");
    }

    #[test]
    fn splitmix_gaps_have_the_requested_mean() {
        // Moved from prng.rs, where `SplitMix64::exponential` drew these gaps.
        let gaps = PoissonGaps::new(4.0).unwrap();
        let mut r = SplitMix64::new(7);
        let n = 200_000;
        let mean = (0..n).map(|_| gaps.sample_splitmix(&mut r)).sum::<f64>() / n as f64;
        assert!((mean - 0.25).abs() < 0.005, "mean {mean}");
    }

    #[test]
    fn bad_rates_are_refused_or_read_as_never() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(PoissonGaps::new(rate).is_err(), "{rate}");
            assert_eq!(PoissonGaps::or_never(rate).rate(), f64::MIN_POSITIVE);
        }
        assert_eq!(PoissonGaps::or_never(2.5).rate(), 2.5);
    }

    #[test]
    fn gamma_keeps_the_mean_and_sets_the_cv_and_constant_is_exact() {
        let times = schedule(
            ArrivalProcess::Gamma { cv: 0.5 },
            4.0,
            RunLength::Requests(20_000),
            1,
            None,
        )
        .unwrap();
        let (mean, cv) = mean_and_cv(&gaps(&times));
        assert!((mean - 0.25).abs() < 0.005, "mean {mean}");
        assert!((cv - 0.5).abs() < 0.03, "cv {cv}");
        let times = schedule(
            ArrivalProcess::Constant,
            4.0,
            RunLength::Duration(Nanos::from_millis(1000)),
            1,
            None,
        )
        .unwrap();
        assert_eq!(times, [0, 250, 500, 750].map(Nanos::from_millis));
    }

    #[test]
    fn the_seed_alone_fixes_the_schedule() {
        let a = schedule(
            ArrivalProcess::Poisson,
            2.0,
            RunLength::Requests(50),
            3,
            None,
        )
        .unwrap();
        let b = schedule(
            ArrivalProcess::Poisson,
            2.0,
            RunLength::Requests(50),
            3,
            None,
        )
        .unwrap();
        let c = schedule(
            ArrivalProcess::Poisson,
            2.0,
            RunLength::Requests(50),
            4,
            None,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn trace_arrivals_are_shifted_sorted_and_validated() {
        let t = schedule(
            ArrivalProcess::Trace,
            0.0,
            RunLength::Requests(3),
            0,
            Some(&[5.5, 5.0, 7.0, 9.0]),
        )
        .unwrap();
        assert_eq!(t, [0, 500, 2000].map(Nanos::from_millis));
        assert!(schedule(ArrivalProcess::Trace, 1.0, RunLength::Requests(3), 0, None).is_err());
        assert!(
            schedule(
                ArrivalProcess::Poisson,
                0.0,
                RunLength::Requests(3),
                0,
                None
            )
            .is_err()
        );
        assert!("gamma:0".parse::<ArrivalProcess>().is_err());
        assert_eq!(
            "gamma:0.5".parse::<ArrivalProcess>().unwrap(),
            ArrivalProcess::Gamma { cv: 0.5 }
        );
    }
}
