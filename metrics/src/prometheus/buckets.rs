//! Histogram buckets sized for each metric. vLLM's request-latency family starts at 0.3 s,
//! which puts every healthy decode step in one bucket; TBT and TPOT here resolve from 0 (burst
//! tokens) through single milliseconds, and the configured TBT SLO is always a boundary so
//! "share of gaps within `D_d`" is read off one bucket exactly.

/// Inter-token gaps: 0 holds the zero gaps of multi-token deliveries.
pub const TIME_BETWEEN_TOKENS: &[f64] = &[
    0.0, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06,
    0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

/// Mean decode gap per request: same range as TBT, without the zero bucket.
pub const TIME_PER_OUTPUT_TOKEN: &[f64] = &[
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075,
    0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
];

/// TTFT and prefill time: a few ms for short prompts on a GPU up to minutes under overload.
pub const TIME_TO_FIRST_TOKEN: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0,
    3.0, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
];

/// Whole-request latency.
pub const E2E_LATENCY: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0,
];

/// Queueing before the first batch: sub-ms when idle, seconds when saturated.
pub const SCHEDULING_DELAY: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0,
    30.0, 60.0, 120.0,
];

/// Preempted time per request: 0 counts the requests never preempted.
pub const PREEMPTED_TIME: &[f64] = &[
    0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Fluidity-index in [0, 1], dense near 1 where SLO decisions are made (0.9 = Etalon's bar).
pub const FLUIDITY_INDEX: &[f64] = &[
    0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 0.999, 1.0,
];

/// One engine step's duration.
pub const ITERATION_DURATION: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0,
];

/// Tokens in one engine step (decodes count 1, prefill chunks their length).
pub const ITERATION_TOKENS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
    16384.0,
];

/// `buckets` with `boundary` added in order (if it is finite, positive and not already there).
pub fn with_boundary(buckets: &[f64], boundary: f64) -> Vec<f64> {
    let mut out = buckets.to_vec();
    if boundary.is_finite() && boundary > 0.0 && !out.contains(&boundary) {
        let at = out.partition_point(|b| *b < boundary);
        out.insert(at, boundary);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_list_strictly_increases() {
        for buckets in [
            TIME_BETWEEN_TOKENS,
            TIME_PER_OUTPUT_TOKEN,
            TIME_TO_FIRST_TOKEN,
            E2E_LATENCY,
            SCHEDULING_DELAY,
            PREEMPTED_TIME,
            FLUIDITY_INDEX,
            ITERATION_DURATION,
            ITERATION_TOKENS,
        ] {
            assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
        }
    }

    #[test]
    fn the_slo_becomes_a_boundary_once() {
        let b = with_boundary(&[0.01, 0.05, 0.1], 0.035);
        assert_eq!(b, vec![0.01, 0.035, 0.05, 0.1]);
        assert_eq!(with_boundary(&b, 0.05), b);
        assert_eq!(with_boundary(&b, f64::NAN), b);
    }
}
