//! Token deadlines with carried slack: spec/metrics.md (b), implemented here so the `deadline`
//! policy can rank requests by their next deadline and the simulator can grade a run.
//!
//! The metrics crate has its own implementation of the same algorithm; the two crates must not
//! depend on each other (architecture.md), and the worked examples of spec (b) are unit tests in
//! both, so they cannot drift apart silently.
//!
//! All deadline arithmetic is in integer nanoseconds: in float seconds,
//! `floor((0.700 − 0.500) / 0.050)` is 3, not 4.

use metrum_core::{Nanos, RequestSlo};

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

/// The streaming state of spec (b) for one request: slack, met and missed deadlines.
///
/// Token `i` has the absolute deadline `t_{i−1} + D + slack`, where `t_0` is the arrival and `D`
/// is `D_p` for the first token and `D_d` after it. On time, the unused budget carries forward;
/// late, the token closes `1 + floor((T − slack − D) / D_d)` missed deadlines and the slack resets,
/// so later deadlines count from the late token's actual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadlineTracker {
    prefill_deadline: Nanos,
    decode_deadline: Nanos,
    last_token_at: Nanos,
    slack: Nanos,
    tokens_seen: u64,
    met: u64,
    missed: u64,
    /// Of `missed`, those closed by the first token (TTFT deadline misses).
    missed_first: u64,
}

impl DeadlineTracker {
    /// `decode_deadline` is clamped to at least 1 ns so the miss count is always defined.
    pub fn new(arrival: Nanos, prefill_deadline: Nanos, decode_deadline: Nanos) -> Self {
        DeadlineTracker {
            prefill_deadline,
            decode_deadline: decode_deadline.max(Nanos(1)),
            last_token_at: arrival,
            slack: Nanos::ZERO,
            tokens_seen: 0,
            met: 0,
            missed: 0,
            missed_first: 0,
        }
    }

    /// The deadline budget of the next token: `D_p` before the first token, `D_d` after.
    fn next_budget(&self) -> Nanos {
        if self.tokens_seen == 0 {
            self.prefill_deadline
        } else {
            self.decode_deadline
        }
    }

    /// The absolute time by which the next token must be visible to count as on time.
    pub fn next_deadline(&self) -> Nanos {
        Nanos(
            self.last_token_at
                .0
                .saturating_add(self.next_budget().0)
                .saturating_add(self.slack.0),
        )
    }

    /// `count` tokens became visible at `at` (a burst: the first has the gap since the previous
    /// token, the rest a gap of 0). Returns the deadlines newly missed.
    pub fn on_tokens(&mut self, at: Nanos, count: u32) -> u64 {
        let mut newly_missed = 0;
        for i in 0..count {
            let gap = if i == 0 {
                at.saturating_sub(self.last_token_at)
            } else {
                Nanos::ZERO
            };
            newly_missed += self.on_gap(gap);
        }
        self.last_token_at = self.last_token_at.max(at);
        newly_missed
    }

    fn on_gap(&mut self, gap: Nanos) -> u64 {
        let d = self.next_budget().0;
        self.tokens_seen += 1;
        let budget = d.saturating_add(self.slack.0);
        if gap.0 <= budget {
            // Slack shrinks when D < T ≤ D + slack and grows when T < D.
            self.slack = Nanos(budget - gap.0);
            self.met += 1;
            0
        } else {
            // One miss for the deadline itself, plus one per whole D_d past it. For the first
            // token this is 1 + floor((T − D_p)/D_d); later, floor((T − slack)/D_d).
            let over = gap.0 - budget;
            let m = 1 + over / self.decode_deadline.0;
            self.missed += m;
            if self.tokens_seen == 1 {
                self.missed_first += m;
            }
            self.slack = Nanos::ZERO;
            m
        }
    }

    /// `D_p`: the first token's deadline budget, from arrival.
    pub fn prefill_deadline(&self) -> Nanos {
        self.prefill_deadline
    }

    pub fn tokens_seen(&self) -> u64 {
        self.tokens_seen
    }

    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// Deadlines missed by the first token (the TTFT deadline and the `D_d` periods after it).
    pub fn missed_first_token(&self) -> u64 {
        self.missed_first
    }

    /// Met tokens plus missed deadlines (Etalon's denominator, which can exceed the token count).
    pub fn total(&self) -> u64 {
        self.met + self.missed
    }

    /// Slack carried into the next token.
    pub fn slack(&self) -> Nanos {
        self.slack
    }

    /// `missed / total`; `None` before any deadline was due (no token yet).
    pub fn miss_rate(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| self.missed as f64 / total as f64)
    }

    /// `1 − miss_rate`.
    pub fn fluidity_index(&self) -> Option<f64> {
        self.miss_rate().map(|r| 1.0 - r)
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
    fn spec_request_a_meets_every_deadline() {
        let t = run(&[400, 30, 30, 120, 50, 0, 0, 200]);
        assert_eq!((t.missed(), t.total()), (0, 8));
        assert_eq!(t.slack(), ms(20));
        assert_eq!(t.fluidity_index(), Some(1.0));
    }

    #[test]
    fn spec_request_b_misses_three_at_the_last_token() {
        let t = run(&[400, 30, 30, 120, 50, 0, 0, 350]);
        assert_eq!((t.missed(), t.total()), (3, 10));
        assert_eq!(t.slack(), Nanos::ZERO);
    }

    #[test]
    fn spec_request_c_is_exact_in_integer_time() {
        // Float seconds would floor (0.700 − 0.500)/0.050 to 3 and give 7 of 12.
        let t = run(&[700, 30, 30, 120, 50, 0, 0, 200]);
        assert_eq!((t.missed(), t.total()), (8, 13));
        assert_eq!(t.missed_first_token(), 5);
    }

    #[test]
    fn early_stall_costs_more_than_late_stall() {
        let mut early = vec![500, 120];
        early.extend([30; 6]);
        let t = run(&early);
        assert_eq!((t.missed(), t.total()), (2, 9));
        let mut late = vec![500];
        late.extend([30; 6]);
        late.push(120);
        assert_eq!(run(&late).missed(), 0);
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
