//! The fluidity-index of finished timelines: token deadlines with carried slack (spec (b)).
//!
//! The algorithm itself is [`metrum_core::DeadlineTracker`] (its one home, shared with the
//! scheduler and the simulator); this module re-exports its types and adds what is metrics'
//! own: folding a finished timeline's ITT vector through it, the failure rule, and the
//! min-TBT-deadline search. Live tracking ([`crate::live`]) feeds the same tracker event by
//! event.
//!
//! Choices the spec leaves open, taken as it recommends:
//! - the denominator is met tokens + missed deadlines (Etalon's code), not the token count;
//! - a request with no deadline at all has an undefined miss rate (`None`), not 0;
//! - a failed request ([`RequestTimeline::is_failed`]) with a known `max_tokens` is charged
//!   one missed deadline for every token it still owed.

use crate::timeline::RequestTimeline;
use metrum_core::Nanos;

pub use metrum_core::{
    DeadlineParams, DeadlineTally, DeadlineTracker, FirstToken, Phase, TokenVerdict,
};

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
                DeadlineParams::clamped(prefill_deadline, Nanos(decode)),
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
