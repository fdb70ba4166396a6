//! Load sweeps: the capacity knee (the highest rate that still meets an SLO, by doubling then
//! bisection, as `metrum bench capacity` searches a real server) and several seeds of one load
//! folded into one table row.

use crate::report::SimReport;
use metrum_scheduler::config::Policy;
use std::fmt::Write;

/// The highest rate at which `passes(rate)` holds, to within `granularity` (relative): doubles
/// from `start` while it passes, then bisects. At most `max_probes` calls; returns the best
/// passing rate found (0 if none passed). An error from `passes` ends the search.
///
/// Not `metrum_metrics::CapacitySearch`, on purpose: that is Etalon's procedure for a real
/// server (rates in integer hundredths of a QPS, `right` capped at `2 × start_qps` and only
/// doubled on a pass above 80% of the smallest failure, repeated seeds near the boundary, an
/// absolute stop rule); this one doubles without bound from `start`, bisects continuous rates
/// to a relative `granularity` and caps the probe count. Swapping would change every knee the
/// grid and `metrum simulate --knee` report (and round sub-0.01 rates to 0).
pub fn find_knee<E>(
    start: f64,
    granularity: f64,
    max_probes: usize,
    mut passes: impl FnMut(f64) -> Result<bool, E>,
) -> Result<f64, E> {
    let (mut lo, mut hi) = (0.0f64, start.max(f64::MIN_POSITIVE));
    let mut probes = 0;
    while probes < max_probes {
        probes += 1;
        if !passes(hi)? {
            break;
        }
        lo = hi;
        hi *= 2.0;
    }
    while probes < max_probes && hi - lo > granularity * hi {
        probes += 1;
        let mid = (lo + hi) / 2.0;
        if passes(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// One load and policy over several seeds: means (of the finite values) and the spread of the
/// P99 miss rate, the capacity criterion.
#[derive(Clone, Debug, PartialEq)]
pub struct SeedSummary {
    pub label: String,
    pub rate_per_s: f64,
    pub policy: Policy,
    pub seeds: usize,
    pub miss_rate_p99_mean: f64,
    pub miss_rate_p99_min: f64,
    pub miss_rate_p99_max: f64,
    pub miss_rate_service: f64,
    pub ttft_share_of_misses: f64,
    pub fluidity_p1: f64,
    pub fluidity_p10: f64,
    pub fluidity_p50: f64,
    pub frac_fluidity_at_least_0_9: f64,
    pub sched_delay_p50_ms: f64,
    pub sched_delay_p99_ms: f64,
    pub ttft_p99_ms: f64,
    pub tbt_p99_ms: f64,
    pub num_preemptions: f64,
    pub output_tokens_per_s: f64,
}

/// Mean of the finite values; NaN if there are none.
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values
        .filter(|v| v.is_finite())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

impl SeedSummary {
    /// `None` without reports. The policy is the first report's.
    pub fn new(label: &str, rate_per_s: f64, reports: &[SimReport]) -> Option<Self> {
        let first = reports.first()?;
        let m = |f: fn(&SimReport) -> f64| mean(reports.iter().map(f));
        let p99 = reports
            .iter()
            .map(|r| r.miss_rate_p99)
            .filter(|v| v.is_finite());
        Some(SeedSummary {
            label: label.to_string(),
            rate_per_s,
            policy: first.policy,
            seeds: reports.len(),
            miss_rate_p99_mean: m(|r| r.miss_rate_p99),
            miss_rate_p99_min: p99.clone().fold(f64::NAN, f64::min),
            miss_rate_p99_max: p99.fold(f64::NAN, f64::max),
            miss_rate_service: m(|r| r.miss_rate_service),
            ttft_share_of_misses: m(|r| r.ttft_share_of_misses),
            fluidity_p1: m(|r| r.fluidity_p1),
            fluidity_p10: m(|r| r.fluidity_p10),
            fluidity_p50: m(|r| r.fluidity_p50),
            frac_fluidity_at_least_0_9: m(|r| r.frac_fluidity_at_least_0_9),
            sched_delay_p50_ms: m(|r| r.sched_delay_p50_ms),
            sched_delay_p99_ms: m(|r| r.sched_delay_p99_ms),
            ttft_p99_ms: m(|r| r.ttft_p99_ms),
            tbt_p99_ms: m(|r| r.tbt_p99_ms),
            num_preemptions: m(|r| r.num_preemptions as f64),
            output_tokens_per_s: m(|r| r.output_tokens_per_s),
        })
    }
}

/// One row per [`SeedSummary`]: load, rate, policy, P99 miss (mean, min–max), then the means.
pub fn markdown_sweep_table(rows: &[SeedSummary]) -> String {
    let mut out = String::from(
        "| load | req/s | policy | miss P99 (mean; min–max) | miss Σ | TTFT share of misses \
         | fluidity p1 | fluidity p10 | fluidity p50 | ≥0.9 | sched p50 ms | sched p99 ms \
         | TTFT p99 ms | TBT p99 ms | preempt | tok/s |\n",
    );
    out.push_str(&format!("|{}\n", "---|".repeat(16)));
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {:.3} | {} | {:.3} ({:.3}–{:.3}) | {:.4} | {:.2} | {:.3} | {:.3} | {:.3} \
             | {:.3} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} |",
            r.label,
            r.rate_per_s,
            r.policy,
            r.miss_rate_p99_mean,
            r.miss_rate_p99_min,
            r.miss_rate_p99_max,
            r.miss_rate_service,
            r.ttft_share_of_misses,
            r.fluidity_p1,
            r.fluidity_p10,
            r.fluidity_p50,
            r.frac_fluidity_at_least_0_9,
            r.sched_delay_p50_ms,
            r.sched_delay_p99_ms,
            r.ttft_p99_ms,
            r.tbt_p99_ms,
            r.num_preemptions,
            r.output_tokens_per_s,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_knee_is_found_within_the_granularity() {
        let mut calls = 0;
        let knee = find_knee(1.0, 0.01, 100, |rate| {
            calls += 1;
            Ok::<_, ()>(rate <= 5.3)
        })
        .unwrap();
        assert!((5.3 * 0.99..=5.3).contains(&knee), "{knee}");
        assert!(calls < 20, "{calls}");
        assert_eq!(find_knee(1.0, 0.01, 30, |_| Ok::<_, ()>(false)), Ok(0.0));
        assert_eq!(find_knee(1.0, 0.01, 30, |_| Err::<bool, _>("x")), Err("x"));
    }

    #[test]
    fn means_skip_undefined_values() {
        assert_eq!(mean([1.0, f64::NAN, 3.0].into_iter()), 2.0);
        assert!(mean([f64::NAN].into_iter()).is_nan());
        assert!(SeedSummary::new("x", 1.0, &[]).is_none());
    }
}
