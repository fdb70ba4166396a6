//! Token deadlines with carried slack: spec/metrics.md (b), the one implementation.
//!
//! The scheduler's `deadline` policy ranks requests by the next deadline of this state, the
//! metrics crate counts misses with it (offline and live), and the simulator grades runs with
//! it. Those crates must not depend on each other (architecture.md), so the algorithm lives
//! here, pure: no clock, no I/O, the caller passes every gap in.
//!
//! All arithmetic is in integer nanoseconds (slack in `u128`, so even the 1e10 s upper end of
//! the metrics' min-deadline search cannot overflow): in float seconds
//! `floor((0.700 − 0.500)/0.050)` is 3, not 4.

use crate::Nanos;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A decode deadline `D_d` of zero, which would make the miss count undefined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeDeadlineNotPositive;

impl fmt::Display for DecodeDeadlineNotPositive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the decode deadline (tbt_slo) must be positive")
    }
}

impl std::error::Error for DecodeDeadlineNotPositive {}

/// `D_p` for the first token and `D_d` for every later one. `D_d` is never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineParams {
    prefill: Nanos,
    decode: Nanos,
}

impl DeadlineParams {
    pub fn new(prefill: Nanos, decode: Nanos) -> Result<Self, DecodeDeadlineNotPositive> {
        if decode == Nanos::ZERO {
            return Err(DecodeDeadlineNotPositive);
        }
        Ok(DeadlineParams { prefill, decode })
    }

    /// For callers that already validated `decode > 0`: a zero `decode` becomes 1 ns, so the
    /// miss count stays defined whatever is passed.
    pub fn clamped(prefill: Nanos, decode: Nanos) -> Self {
        DeadlineParams {
            prefill,
            decode: decode.max(Nanos(1)),
        }
    }

    /// `D_p`.
    pub fn prefill(&self) -> Nanos {
        self.prefill
    }

    /// `D_d`.
    pub fn decode(&self) -> Nanos {
        self.decode
    }
}

/// Whether token 1 carries a deadline. Etalon ignores it (no deadline, no slack) only for the
/// fluid token generation rate and the miss-rate-vs-TBT curve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FirstToken {
    Deadline,
    Ignore,
}

/// Which deadline a miss belongs to (the `phase` label of `deadline_misses_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Ttft,
    Decode,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Ttft => "ttft",
            Phase::Decode => "decode",
        }
    }
}

/// What one token did to the deadline count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenVerdict {
    /// Token 1 under [`FirstToken::Ignore`].
    Ignored,
    OnTime(Phase),
    /// The token was late and closes `missed` deadlines.
    Late {
        phase: Phase,
        missed: u64,
    },
}

/// Met and missed deadlines. `total = met + missed`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineTally {
    pub met: u64,
    pub missed_ttft: u64,
    pub missed_decode: u64,
}

impl DeadlineTally {
    pub fn missed(&self) -> u64 {
        self.missed_ttft + self.missed_decode
    }

    /// Met tokens plus missed deadlines (Etalon's denominator, which can exceed the token count).
    pub fn total(&self) -> u64 {
        self.met + self.missed()
    }

    /// `missed / total`; `None` when there was no deadline at all.
    pub fn miss_rate(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| self.missed() as f64 / total as f64)
    }

    /// `1 − miss_rate`, in [0, 1]; `None` when there was no deadline at all.
    pub fn fluidity_index(&self) -> Option<f64> {
        self.miss_rate().map(|r| 1.0 - r)
    }

    pub fn add(&mut self, verdict: TokenVerdict) {
        match verdict {
            TokenVerdict::Ignored => {}
            TokenVerdict::OnTime(_) => self.met += 1,
            TokenVerdict::Late { phase, missed } => self.add_missed(phase, missed),
        }
    }

    pub fn add_missed(&mut self, phase: Phase, missed: u64) {
        match phase {
            Phase::Ttft => self.missed_ttft += missed,
            Phase::Decode => self.missed_decode += missed,
        }
    }

    pub fn merge(&mut self, other: DeadlineTally) {
        self.met += other.met;
        self.missed_ttft += other.missed_ttft;
        self.missed_decode += other.missed_decode;
    }
}

/// The streaming state of spec (b) for one request: `slack`, `missed`, `total`, token by token.
///
/// Token `i` is due `D + slack` after token `i−1` (after the arrival, for token 1), where `D` is
/// `D_p` for the first token and `D_d` after it. On time, the unused budget carries forward;
/// late, the token closes `1 + floor((T − slack − D) / D_d)` missed deadlines and the slack
/// resets, so later deadlines count from the late token's actual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadlineTracker {
    params: DeadlineParams,
    first_token: FirstToken,
    slack: u128,
    tokens_seen: u64,
    tally: DeadlineTally,
}

impl DeadlineTracker {
    pub fn new(params: DeadlineParams, first_token: FirstToken) -> Self {
        DeadlineTracker {
            params,
            first_token,
            slack: 0,
            tokens_seen: 0,
            tally: DeadlineTally::default(),
        }
    }

    pub fn params(&self) -> DeadlineParams {
        self.params
    }

    pub fn tally(&self) -> DeadlineTally {
        self.tally
    }

    pub fn tokens_seen(&self) -> u64 {
        self.tokens_seen
    }

    /// Slack carried into the next token (saturated to `u64` nanoseconds, ~584 years).
    pub fn slack(&self) -> Nanos {
        Nanos(u64::try_from(self.slack).unwrap_or(u64::MAX))
    }

    /// The deadline of the next token, or `None` if it has none (ignored first token).
    fn next_deadline(&self) -> Option<(Phase, u128)> {
        if self.tokens_seen == 0 {
            match self.first_token {
                FirstToken::Deadline => Some((Phase::Ttft, u128::from(self.params.prefill.0))),
                FirstToken::Ignore => None,
            }
        } else {
            Some((Phase::Decode, u128::from(self.params.decode.0)))
        }
    }

    /// How long after the previous token (or the arrival) the next token is due: `D + slack`,
    /// saturated to `u64` nanoseconds; `None` if it has no deadline (ignored first token).
    pub fn next_budget(&self) -> Option<Nanos> {
        self.next_deadline()
            .map(|(_, d)| Nanos(u64::try_from(d + self.slack).unwrap_or(u64::MAX)))
    }

    /// One token arrived `gap` after the previous one (after the arrival, for token 1).
    pub fn observe(&mut self, gap: Nanos) -> TokenVerdict {
        let deadline = self.next_deadline();
        self.tokens_seen += 1;
        let Some((phase, d)) = deadline else {
            return TokenVerdict::Ignored;
        };
        let gap = u128::from(gap.0);
        let verdict = if gap <= d + self.slack {
            // On time: unused budget carries forward (it shrinks when D < T ≤ D + slack).
            self.slack = self.slack + d - gap;
            TokenVerdict::OnTime(phase)
        } else {
            // Late: one miss for the deadline itself plus one per whole D_d past it. This is
            // `1 + floor((T_1 − D_p)/D_d)` for token 1 and `floor((T − slack)/D_d)` after.
            let past = gap - self.slack - d;
            let missed = 1 + past / u128::from(self.params.decode.0);
            // Later deadlines count from this token's actual arrival.
            self.slack = 0;
            TokenVerdict::Late {
                phase,
                missed: u64::try_from(missed).unwrap_or(u64::MAX),
            }
        };
        self.tally.add(verdict);
        verdict
    }

    /// A delivery of `count` tokens `gap` after the previous one: ITTs `[gap, 0, …, 0]`.
    /// Returns what it added to the tally.
    pub fn observe_delivery(&mut self, gap: Nanos, count: u32) -> DeadlineTally {
        let mut delta = DeadlineTally::default();
        for i in 0..count {
            delta.add(self.observe(if i == 0 { gap } else { Nanos::ZERO }));
        }
        delta
    }

    /// Deadlines of the next token that have already passed, `elapsed` after the previous
    /// token (or the arrival): `#{k ≥ 0 : slack + D + k·D_d < elapsed}`. It never exceeds what
    /// [`observe`](Self::observe) charges when the token finally arrives, so a live view can
    /// show a stall while it is happening.
    pub fn overdue(&self, elapsed: Nanos) -> u64 {
        let Some((_, d)) = self.next_deadline() else {
            return 0;
        };
        let elapsed = u128::from(elapsed.0);
        let budget = self.slack + d;
        if elapsed <= budget {
            return 0;
        }
        let decode = u128::from(self.params.decode.0);
        u64::try_from((elapsed - budget).div_ceil(decode)).unwrap_or(u64::MAX)
    }

    /// The failure rule: a request that fails owing `tokens` more tokens misses every
    /// deadline they would have had. Returns what it added to the tally.
    pub fn charge_unproduced(&mut self, tokens: u64) -> DeadlineTally {
        let mut delta = DeadlineTally::default();
        if tokens == 0 {
            return delta;
        }
        let mut decode = tokens;
        if self.tokens_seen == 0 {
            decode -= 1;
            if self.first_token == FirstToken::Deadline {
                delta.missed_ttft = 1;
            }
        }
        delta.missed_decode = decode;
        self.tokens_seen += tokens;
        self.tally.merge(delta);
        delta
    }
}

#[cfg(test)]
mod tests {
    //! The worked examples of spec (b) (D_p = 500 ms, D_d = 50 ms, one token per delivery).
    use super::*;

    fn ms(v: u64) -> Nanos {
        Nanos::from_millis(v)
    }

    /// Feeds an ITT vector (ms) through a tracker with D_p = 500 ms, D_d = 50 ms.
    fn run(itts: &[u64]) -> DeadlineTracker {
        let params = DeadlineParams::new(ms(500), ms(50)).unwrap();
        let mut t = DeadlineTracker::new(params, FirstToken::Deadline);
        for &gap in itts {
            t.observe(ms(gap));
        }
        t
    }

    #[test]
    fn spec_request_a_meets_every_deadline() {
        let t = run(&[400, 30, 30, 120, 50, 0, 0, 200]);
        assert_eq!((t.tally().missed(), t.tally().total()), (0, 8));
        assert_eq!(t.slack(), ms(20));
        assert_eq!(t.tally().fluidity_index(), Some(1.0));
    }

    #[test]
    fn spec_request_b_misses_three_at_the_last_token() {
        let t = run(&[400, 30, 30, 120, 50, 0, 0, 350]);
        assert_eq!((t.tally().missed(), t.tally().total()), (3, 10));
        assert_eq!(t.slack(), Nanos::ZERO);
    }

    #[test]
    fn spec_request_c_is_exact_in_integer_time() {
        // Float seconds would floor (0.700 − 0.500)/0.050 to 3 and give 7 of 12.
        let t = run(&[700, 30, 30, 120, 50, 0, 0, 200]);
        assert_eq!((t.tally().missed(), t.tally().total()), (8, 13));
        assert_eq!(t.tally().missed_ttft, 5);
    }

    #[test]
    fn early_stall_costs_more_than_late_stall() {
        let mut early = vec![500, 120];
        early.extend([30; 6]);
        let t = run(&early);
        assert_eq!((t.tally().missed(), t.tally().total()), (2, 9));
        let mut late = vec![500];
        late.extend([30; 6]);
        late.push(120);
        assert_eq!(run(&late).tally().missed(), 0);
    }

    #[test]
    fn zero_decode_deadline_is_rejected_or_clamped() {
        assert_eq!(
            DeadlineParams::new(ms(500), Nanos::ZERO),
            Err(DecodeDeadlineNotPositive)
        );
        assert_eq!(
            DeadlineParams::clamped(ms(500), Nanos::ZERO).decode(),
            Nanos(1)
        );
    }

    #[test]
    fn next_budget_is_deadline_plus_slack_and_absent_for_an_ignored_first_token() {
        let params = DeadlineParams::new(ms(500), ms(50)).unwrap();
        let mut t = DeadlineTracker::new(params, FirstToken::Deadline);
        assert_eq!(t.next_budget(), Some(ms(500)));
        t.observe(ms(400));
        assert_eq!(t.next_budget(), Some(ms(150)));
        let ignored = DeadlineTracker::new(params, FirstToken::Ignore);
        assert_eq!(ignored.next_budget(), None);
    }
}
