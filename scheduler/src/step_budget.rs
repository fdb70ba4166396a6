//! The deadline policy's time budget for one step: how many prefill tokens a step can carry
//! and still end before the tightest deadline among its decodes.
//!
//! The step time is predicted from the prefill-time model `a + b·P + c·P²` alone (the only cost
//! model the scheduler is given), read as a marginal cost: a step pays `a` once, and a chunk of
//! `n` tokens that starts at position `s` pays what growing a prompt from `s` to `s + n` tokens
//! costs, `b·n + c·((s+n)² − s²)`. The quadratic term is the attention over the `s` tokens
//! already cached, so a late chunk of a long prompt, or a decode at a long context, costs more
//! than a chunk from position 0 (which is all an earlier version of the cap assumed; it let
//! late chunks overrun the decodes' deadlines).

use crate::deadline::PrefillModel;
use metrum_core::Nanos;

/// What growing a sequence from `start` to `start + tokens` computed tokens adds to a step:
/// `b·n + c·((s+n)² − s²)` (the step's `a` is paid once, by the caller). Admission control
/// predicts with the same costs.
pub(crate) fn marginal_cost(model: &PrefillModel, start: usize, tokens: usize) -> Nanos {
    let (s, e) = (start as f64, (start + tokens) as f64);
    let secs = model.b_s_per_token * (e - s) + model.c_s_per_token2 * (e * e - s * s);
    if secs.is_finite() && secs > 0.0 {
        Nanos::from_secs_f64(secs)
    } else {
        Nanos::ZERO
    }
}

#[derive(Clone, Debug)]
pub(crate) struct StepTimeBudget {
    model: PrefillModel,
    /// Until the tightest deadline of a decode in the step.
    time_left: Nanos,
    /// Predicted time of what the step holds so far.
    spent: Nanos,
    /// Prefill tokens granted so far in this step.
    granted: usize,
    /// Tokens the first prefill chunk of a step always gets (one block), so prefills keep
    /// moving even when a decode is already late.
    floor: usize,
}

impl StepTimeBudget {
    /// A step with the decodes already in it, given as `(start position, tokens)`.
    pub fn new(
        model: PrefillModel,
        time_left: Nanos,
        floor: usize,
        decodes: impl IntoIterator<Item = (usize, usize)>,
    ) -> Self {
        let mut budget = StepTimeBudget {
            model,
            time_left,
            spent: Nanos::from_secs_f64(model.a_s.max(0.0)),
            granted: 0,
            floor,
        };
        for (start, tokens) in decodes {
            budget.spent = budget.spent + budget.chunk_cost(start, tokens);
        }
        budget
    }

    /// Predicted cost of computing tokens `start..start + tokens` of one sequence.
    pub fn chunk_cost(&self, start: usize, tokens: usize) -> Nanos {
        marginal_cost(&self.model, start, tokens)
    }

    /// The largest chunk of at most `wanted` tokens from position `start` that still fits
    /// (never below the floor for the step's first prefill chunk).
    pub fn fit(&self, start: usize, wanted: usize) -> usize {
        let fits = |n: usize| self.spent + self.chunk_cost(start, n) <= self.time_left;
        let (mut lo, mut hi) = (0, wanted);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        if self.granted == 0 {
            lo.max(self.floor.min(wanted))
        } else {
            lo
        }
    }

    /// Adds a chunk that was scheduled.
    pub fn commit(&mut self, start: usize, tokens: usize) {
        self.spent = self.spent + self.chunk_cost(start, tokens);
        self.granted += tokens;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Nanos {
        Nanos::from_millis(v)
    }

    #[test]
    fn late_chunks_pay_for_the_attention_over_their_cached_prefix() {
        // 1 ms per token plus 1 µs per token² of prompt.
        let model = PrefillModel {
            a_s: 0.002,
            b_s_per_token: 1e-3,
            c_s_per_token2: 1e-6,
        };
        let budget = StepTimeBudget::new(model, ms(40), 4, [(100, 1)]);
        // a + decode at 100: 2 ms + (1 ms + 0.201 ms).
        assert_eq!(budget.spent, Nanos(3_201_000));
        let from_zero = budget.fit(0, 512);
        let from_1000 = budget.fit(1000, 512);
        assert!(from_1000 < from_zero, "{from_1000} vs {from_zero}");
        for (start, n) in [(0, from_zero), (1000, from_1000)] {
            assert!(budget.spent + budget.chunk_cost(start, n) <= ms(40));
            assert!(budget.spent + budget.chunk_cost(start, n + 1) > ms(40));
        }
    }

    #[test]
    fn the_first_chunk_keeps_its_floor_and_later_ones_do_not() {
        let model = PrefillModel {
            a_s: 0.0,
            b_s_per_token: 1e-3,
            c_s_per_token2: 0.0,
        };
        let mut budget = StepTimeBudget::new(model, ms(2), 16, [(10, 1)]);
        assert_eq!(budget.fit(0, 100), 16);
        assert_eq!(budget.fit(0, 3), 3);
        budget.commit(0, 16);
        assert_eq!(budget.fit(0, 100), 0);
    }
}
