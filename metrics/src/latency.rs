//! Latency calculators over one [`RequestTimeline`] (spec (a), metrics 1-9).
//!
//! Every calculator returns `None` where the spec leaves the value undefined (no token yet,
//! not finished, fewer than two tokens, …): an undefined latency is never reported as 0.
//! Durations stay in integer [`Nanos`]; only averages (TPOT, normalized latency, throughput)
//! are `f64`, in seconds or tokens per second.

use crate::timeline::RequestTimeline;
use metrum_core::Nanos;

impl RequestTimeline {
    /// The ITT vector `T = [T_1, …, T_N]`: `T_1 = t_1 − a`, `T_k = t_k − t_{k−1}`. A delivery
    /// of `m` tokens contributes `[gap, 0, …, 0]` (m − 1 zeros).
    pub fn inter_token_times(&self) -> Vec<Nanos> {
        let mut previous = self.arrival();
        self.token_times()
            .map(|t| {
                let gap = t - previous;
                previous = t;
                gap
            })
            .collect()
    }

    /// TTFT = `t_1 − a`. Includes queueing, prefill and (client-side) the network.
    pub fn ttft(&self) -> Option<Nanos> {
        self.first_token().map(|t| t - self.arrival())
    }

    /// Token-level TBT: `T_2..T_N`, burst zeros included.
    pub fn time_between_tokens(&self) -> Vec<Nanos> {
        self.inter_token_times().into_iter().skip(1).collect()
    }

    /// Gaps between consecutive deliveries only (the "inter-delivery time"): what a reader
    /// of the stream waits, with bursts collapsed. Reported next to TBT because TBT's zeros
    /// pull its percentiles down under speculative decoding.
    pub fn inter_delivery_gaps(&self) -> Vec<Nanos> {
        self.deliveries()
            .windows(2)
            .map(|w| w[1].at - w[0].at)
            .collect()
    }

    /// The longest wait between two tokens (the worst generation stall), N ≥ 2.
    pub fn max_stall(&self) -> Option<Nanos> {
        self.time_between_tokens().into_iter().max()
    }

    /// TPOT = `(t_N − t_1)/(N − 1)` in seconds; undefined for N < 2 (the spec's recommended
    /// definition, which excludes the first token).
    pub fn tpot_secs(&self) -> Option<f64> {
        let n = self.output_tokens();
        if n < 2 {
            return None;
        }
        let span = self.last_token()? - self.first_token()?;
        Some(span.as_secs_f64() / (n - 1) as f64)
    }

    /// `c_r`: the finish time, or, while unfinished, nothing.
    pub fn completion(&self) -> Option<Nanos> {
        self.finish().map(|f| f.at)
    }

    /// E2E latency = `c − a`, defined once the request finished.
    pub fn e2e_latency(&self) -> Option<Nanos> {
        self.completion().map(|c| c - self.arrival())
    }

    /// Normalized E2E latency = `(c − a)/N` in seconds per token; undefined for N = 0.
    pub fn normalized_e2e_secs(&self) -> Option<f64> {
        let n = self.output_tokens();
        if n == 0 {
            return None;
        }
        Some(self.e2e_latency()?.as_secs_f64() / n as f64)
    }

    /// Scheduling delay `d = s − a`: arrival to the first batch that held any of its tokens.
    /// Restarts do not reset it. Undefined client-side and for requests never scheduled.
    pub fn scheduling_delay(&self) -> Option<Nanos> {
        self.first_scheduled().map(|s| s - self.arrival())
    }

    /// Prefill time `f − s`: first schedule to first visible token (server-side only).
    pub fn prefill_time(&self) -> Option<Nanos> {
        Some(self.first_token()? - self.first_scheduled()?)
    }

    /// Execution plus preemption time `c − s`.
    pub fn execution_plus_preemption(&self) -> Option<Nanos> {
        Some(self.completion()? - self.first_scheduled()?)
    }

    /// Preempted time `p`: summed gaps from each preemption to the next schedule; a request
    /// that ends while preempted is charged up to its finish (or its latest event while
    /// still in flight). Zero, a real value, if it was never preempted.
    pub fn preempted_time(&self) -> Nanos {
        let end = self.completion().unwrap_or(self.last_event());
        self.preemptions()
            .iter()
            .map(|p| p.resumed.unwrap_or(end) - p.at)
            .fold(Nanos::ZERO, |acc, d| acc + d)
    }

    /// Number of recompute preemptions (restarts).
    pub fn num_preemptions(&self) -> u32 {
        u32::try_from(self.preemptions().len()).unwrap_or(u32::MAX)
    }

    /// Per-request output throughput `N / ΣT = N/(t_N − a)` in tokens per second.
    pub fn output_throughput(&self) -> Option<f64> {
        let span = self.last_token()? - self.arrival();
        if span == Nanos::ZERO {
            return None;
        }
        Some(self.output_tokens() as f64 / span.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use crate::timeline::{RequestShape, TimelineBuilder};
    use metrum_core::{FinishReason, Nanos, RequestId};

    fn ms(v: u64) -> Nanos {
        Nanos::from_millis(v)
    }

    const SHAPE: RequestShape = RequestShape {
        prompt_tokens: 8,
        max_tokens: None,
        slo: metrum_core::RequestSlo::SERVER,
    };

    #[test]
    fn classic_latencies_of_a_preempted_request() {
        let mut b = TimelineBuilder::new(RequestId(1), ms(100), SHAPE);
        b.scheduled(ms(110)).unwrap();
        b.tokens(ms(150), 1).unwrap();
        b.tokens(ms(170), 1).unwrap();
        b.preempted(ms(180)).unwrap();
        b.scheduled(ms(230)).unwrap();
        b.tokens(ms(260), 3).unwrap();
        b.finished(ms(261), FinishReason::Stop).unwrap();
        let t = b.build();

        assert_eq!(
            t.inter_token_times(),
            vec![ms(50), ms(20), ms(90), ms(0), ms(0)]
        );
        assert_eq!(t.ttft(), Some(ms(50)));
        assert_eq!(t.time_between_tokens(), vec![ms(20), ms(90), ms(0), ms(0)]);
        assert_eq!(t.inter_delivery_gaps(), vec![ms(20), ms(90)]);
        assert_eq!(t.max_stall(), Some(ms(90)));
        assert!((t.tpot_secs().unwrap() - 0.110 / 4.0).abs() < 1e-12);
        assert_eq!(t.e2e_latency(), Some(ms(161)));
        assert!((t.normalized_e2e_secs().unwrap() - 0.161 / 5.0).abs() < 1e-12);
        assert_eq!(t.scheduling_delay(), Some(ms(10)));
        assert_eq!(t.prefill_time(), Some(ms(40)));
        assert_eq!(t.execution_plus_preemption(), Some(ms(151)));
        assert_eq!(t.preempted_time(), ms(50));
        assert_eq!(t.num_preemptions(), 1);
        assert!((t.output_throughput().unwrap() - 5.0 / 0.160).abs() < 1e-9);
    }

    #[test]
    fn undefined_values_are_absent_not_zero() {
        let mut b = TimelineBuilder::new(RequestId(2), ms(0), SHAPE);
        assert_eq!(b.timeline().ttft(), None);
        assert_eq!(b.timeline().e2e_latency(), None);
        assert_eq!(b.timeline().scheduling_delay(), None);
        // Client-side: a token without any schedule event.
        b.tokens(ms(40), 1).unwrap();
        b.finished(ms(40), FinishReason::Length).unwrap();
        let t = b.build();
        assert_eq!(t.ttft(), Some(ms(40)));
        assert_eq!(t.tpot_secs(), None);
        assert_eq!(t.max_stall(), None);
        assert_eq!(t.prefill_time(), None);
        assert_eq!(t.scheduling_delay(), None);

        let mut b = TimelineBuilder::new(RequestId(3), ms(0), SHAPE);
        b.scheduled(ms(1)).unwrap();
        b.preempted(ms(2)).unwrap();
        b.finished(ms(9), FinishReason::Error).unwrap();
        let t = b.build();
        assert_eq!(t.normalized_e2e_secs(), None);
        assert_eq!(t.output_throughput(), None);
        assert_eq!(t.preempted_time(), ms(7));
        assert!(t.is_failed());
    }
}
