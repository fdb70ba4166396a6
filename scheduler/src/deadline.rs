//! Token deadlines with carried slack, spec/metrics.md (b), in the scheduler's terms: the SLO a
//! request's deadlines derive from ([`DeadlineSlo`]) and a tracker in absolute time that the
//! `deadline` policy ranks requests by and the simulator grades a run with.
//!
//! The algorithm itself lives once, in [`metrum_core::deadline`], shared with the metrics
//! crate; its worked-example tests are there.

use metrum_core::DeadlineTracker as CoreTracker;
use metrum_core::{DeadlineParams, FirstToken, Nanos, RequestSlo};

pub use metrum_core::{DEFAULT_TBT_SLO, DEFAULT_TTFT_SLACK, PrefillModel};

/// The service-level objective every token deadline derives from:
/// `D_p(P) = prefill.predict(P) + ttft_slack` for the first token, `D_d = tbt_slo` after it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeadlineSlo {
    /// `D_d`, the decode deadline per output token (`--tbt-slo`). Must be positive.
    pub tbt_slo: Nanos,
    /// `S`, the scheduling slack on top of the predicted prefill time (`--ttft-slack`).
    pub ttft_slack: Nanos,
    /// The prefill-time fit (`--slo-file`).
    pub prefill: PrefillModel,
}

impl Default for DeadlineSlo {
    fn default() -> Self {
        DeadlineSlo {
            tbt_slo: DEFAULT_TBT_SLO,
            ttft_slack: DEFAULT_TTFT_SLACK,
            prefill: PrefillModel::ZERO,
        }
    }
}

impl DeadlineSlo {
    /// `D_p(P)`.
    pub fn prefill_deadline(&self, prompt_tokens: usize) -> Nanos {
        self.prefill.predict(prompt_tokens) + self.ttft_slack
    }

    /// `D_d`, never zero (a zero `tbt_slo` is rejected by config validation; the clamp keeps
    /// the division in [`DeadlineTracker`] defined whatever the caller passes).
    pub fn decode_deadline(&self) -> Nanos {
        self.tbt_slo.max(Nanos(1))
    }

    /// A fresh tracker for a request of `prompt_tokens` tokens that arrived at `arrival`.
    pub fn tracker(&self, prompt_tokens: usize, arrival: Nanos) -> DeadlineTracker {
        self.tracker_for(prompt_tokens, arrival, RequestSlo::SERVER)
    }

    /// A fresh tracker with the request's own targets where it set them (llm-d's
    /// `x-llm-d-slo-ttft-ms` replaces `D_p(P)`, `x-llm-d-slo-tpot-ms` replaces `D_d`).
    pub fn tracker_for(
        &self,
        prompt_tokens: usize,
        arrival: Nanos,
        own: RequestSlo,
    ) -> DeadlineTracker {
        DeadlineTracker::new(
            arrival,
            own.ttft
                .unwrap_or_else(|| self.prefill_deadline(prompt_tokens)),
            own.tpot.unwrap_or_else(|| self.decode_deadline()),
        )
    }
}

/// Spec (b) for one request in absolute scheduler time: the deadline policy ranks by
/// [`next_deadline`](Self::next_deadline), the simulator grades with the counts.
///
/// The algorithm is [`metrum_core::DeadlineTracker`] (its one home, shared with the metrics);
/// this adapter only adds what the scheduler needs on top: the time of the last token, so gaps
/// and the next deadline are absolute instants rather than intervals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadlineTracker {
    spec: CoreTracker,
    last_token_at: Nanos,
}

impl DeadlineTracker {
    /// `decode_deadline` is clamped to at least 1 ns so the miss count is always defined.
    pub fn new(arrival: Nanos, prefill_deadline: Nanos, decode_deadline: Nanos) -> Self {
        DeadlineTracker {
            spec: CoreTracker::new(
                DeadlineParams::clamped(prefill_deadline, decode_deadline),
                FirstToken::Deadline,
            ),
            last_token_at: arrival,
        }
    }

    /// The absolute time by which the next token must be visible to count as on time.
    pub fn next_deadline(&self) -> Nanos {
        // The first token always has a deadline (`FirstToken::Deadline`), so the budget exists.
        let budget = self.spec.next_budget().unwrap_or(Nanos(u64::MAX));
        Nanos(self.last_token_at.0.saturating_add(budget.0))
    }

    /// `count` tokens became visible at `at` (a burst: the first has the gap since the previous
    /// token, the rest a gap of 0). Returns the deadlines newly missed.
    pub fn on_tokens(&mut self, at: Nanos, count: u32) -> u64 {
        let gap = at.saturating_sub(self.last_token_at);
        let delta = self.spec.observe_delivery(gap, count);
        self.last_token_at = self.last_token_at.max(at);
        delta.missed()
    }

    /// `D_p`: the first token's deadline budget, from arrival.
    pub fn prefill_deadline(&self) -> Nanos {
        self.spec.params().prefill()
    }

    pub fn tokens_seen(&self) -> u64 {
        self.spec.tokens_seen()
    }

    pub fn missed(&self) -> u64 {
        self.spec.tally().missed()
    }

    /// Deadlines missed by the first token (the TTFT deadline and the `D_d` periods after it).
    pub fn missed_first_token(&self) -> u64 {
        self.spec.tally().missed_ttft
    }

    /// Met tokens plus missed deadlines (Etalon's denominator, which can exceed the token count).
    pub fn total(&self) -> u64 {
        self.spec.tally().total()
    }

    /// Slack carried into the next token.
    pub fn slack(&self) -> Nanos {
        self.spec.slack()
    }

    /// `missed / total`; `None` before any deadline was due (no token yet).
    pub fn miss_rate(&self) -> Option<f64> {
        self.spec.tally().miss_rate()
    }

    /// `1 − miss_rate`.
    pub fn fluidity_index(&self) -> Option<f64> {
        self.spec.tally().fluidity_index()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Nanos {
        Nanos::from_millis(v)
    }

    /// Feeds an ITT vector (ms) through a tracker with D_p = 500 ms, D_d = 50 ms.
    fn run(itts: &[u64]) -> DeadlineTracker {
        let mut t = DeadlineTracker::new(Nanos::ZERO, ms(500), ms(50));
        let mut now = Nanos::ZERO;
        for &gap in itts {
            now = now + ms(gap);
            t.on_tokens(now, 1);
        }
        t
    }

    #[test]
    fn absolute_times_become_the_spec_gaps() {
        // Spec request C, fed as instants: the adapter must hand the core the same ITTs.
        let t = run(&[700, 30, 30, 120, 50, 0, 0, 200]);
        assert_eq!((t.missed(), t.total()), (8, 13));
        assert_eq!(t.missed_first_token(), 5);
        assert_eq!(t.tokens_seen(), 8);
    }

    #[test]
    fn burst_tokens_earn_a_full_decode_deadline_each() {
        let mut t = DeadlineTracker::new(Nanos::ZERO, ms(500), ms(50));
        t.on_tokens(ms(400), 3);
        assert_eq!((t.missed(), t.total()), (0, 3));
        assert_eq!(t.slack(), ms(100 + 50 + 50));
        assert_eq!(t.next_deadline(), ms(400 + 50 + 200));
    }

    #[test]
    fn next_deadline_follows_the_late_token() {
        let mut t = DeadlineTracker::new(ms(1000), ms(500), ms(50));
        assert_eq!(t.next_deadline(), ms(1500));
        assert_eq!(t.on_tokens(ms(1700), 1), 5);
        assert_eq!(t.next_deadline(), ms(1750));
        assert_eq!(t.miss_rate(), Some(1.0));
    }

    #[test]
    fn prefill_model_predicts_and_clamps() {
        let m = PrefillModel {
            a_s: 0.2,
            b_s_per_token: 0.0,
            c_s_per_token2: 1e-9,
        };
        assert_eq!(m.predict(1000), ms(201));
        let slo = DeadlineSlo {
            prefill: m,
            ..DeadlineSlo::default()
        };
        assert_eq!(slo.prefill_deadline(1000), ms(501));
        let negative = PrefillModel {
            a_s: -1.0,
            ..PrefillModel::ZERO
        };
        assert_eq!(negative.predict(10), Nanos::ZERO);
    }
}
