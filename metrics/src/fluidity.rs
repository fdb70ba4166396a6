//! The fluidity-index: token deadlines with carried slack (spec (b), exactly).
//!
//! [`DeadlineTracker`] is the one implementation of the algorithm. Offline calculation folds
//! a finished timeline's ITT vector through it; live tracking ([`crate::live`]) feeds it the
//! same gaps as tokens stream. All arithmetic is in integer nanoseconds (slack in `u128`, so
//! even the 1e10 s upper end of the min-deadline search cannot overflow): in float seconds
//! `floor((0.700 − 0.500)/0.050)` is 3, not 4.
//!
//! Choices the spec leaves open, taken as it recommends:
//! - the denominator is met tokens + missed deadlines (Etalon's code), not the token count;
//! - a request with no deadline at all has an undefined miss rate (`None`), not 0;
//! - a failed request ([`RequestTimeline::is_failed`]) with a known `max_tokens` is charged
//!   one missed deadline for every token it still owed.

use crate::slo::SloError;
use crate::timeline::RequestTimeline;
use metrum_core::Nanos;
use serde::{Deserialize, Serialize};

/// `D_p` for the first token and `D_d` for every later one. `D_d` is never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineParams {
    prefill: Nanos,
    decode: Nanos,
}

impl DeadlineParams {
    pub fn new(prefill: Nanos, decode: Nanos) -> Result<Self, SloError> {
        if decode == Nanos::ZERO {
            return Err(SloError::TbtSloNotPositive);
        }
        Ok(DeadlineParams { prefill, decode })
    }

    /// For callers that already checked `decode > 0` (a validated [`crate::SloConfig`]).
    pub(crate) fn from_validated(prefill: Nanos, decode: Nanos) -> Self {
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

/// The streaming state of spec (b): `slack`, `missed`, `total`, token by token.
#[derive(Clone, Debug)]
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

/// Tokens a failed request ([`RequestTimeline::is_failed`]) still owed: `max_tokens − N`
/// with a known `max_tokens`, else 0.
pub fn unproduced_tokens(timeline: &RequestTimeline) -> u64 {
    match timeline.shape().max_tokens {
        Some(max) if timeline.is_failed() => {
            u64::from(max).saturating_sub(timeline.output_tokens())
        }
        _ => 0,
    }
}

impl RequestTimeline {
    /// Folds this timeline's ITT vector through [`DeadlineTracker`], plus the failure rule.
    pub fn deadline_tally(&self, params: DeadlineParams, first_token: FirstToken) -> DeadlineTally {
        let mut tracker = DeadlineTracker::new(params, first_token);
        let mut previous = self.arrival();
        for d in self.deliveries() {
            tracker.observe_delivery(d.at - previous, d.count);
            previous = d.at;
        }
        tracker.charge_unproduced(unproduced_tokens(self));
        tracker.tally()
    }

    /// The request's fluidity-index under `slo` (first token judged against `D_p(P)`).
    pub fn fluidity_index(&self, slo: &crate::SloConfig) -> Option<f64> {
        self.deadline_tally(slo.deadlines_for(self.shape()), FirstToken::Deadline)
            .fluidity_index()
    }

    /// The smallest `D_d` (to 0.1 ms, Etalon's bisection over (0, 1e10 s]) whose miss rate is
    /// at most `target_miss_rate`, with the first token judged against `prefill_deadline`
    /// or ignored. `None` when the request has no deadline at all, or when even 1e10 s fails
    /// (possible only through the failure rule).
    pub fn min_tbt_deadline_to_meet(
        &self,
        target_miss_rate: f64,
        prefill_deadline: Nanos,
        first_token: FirstToken,
    ) -> Option<Nanos> {
        const GRANULARITY: u64 = 100_000; // 1e-4 s
        const UPPER: u64 = 10_000_000_000 * 1_000_000_000; // 1e10 s
        let rate_at = |decode: u64| {
            self.deadline_tally(
                DeadlineParams::from_validated(prefill_deadline, Nanos(decode)),
                first_token,
            )
            .miss_rate()
        };
        // Etalon returns its upper bound when no probe passes; here only if it really passes.
        let mut best = match rate_at(UPPER)? {
            rate if rate <= target_miss_rate => Some(Nanos(UPPER)),
            _ => return None,
        };
        let (mut left, mut right) = (0u64, UPPER);
        while right > left && right - left > GRANULARITY {
            let mid = left + (right - left) / 2;
            match rate_at(mid) {
                Some(rate) if rate <= target_miss_rate => {
                    best = Some(Nanos(mid));
                    right = mid.saturating_sub(GRANULARITY);
                }
                _ => left = mid + GRANULARITY,
            }
        }
        best
    }
}
