//! Admission control from predicted misses (`--admission`): before a request enters the queue,
//! predict when its first token would come out with the work already ahead of it, and refuse it
//! early (or queue it best-effort) when that is past its first-token deadline.
//!
//! The prediction uses the only cost model the scheduler has, the prefill-time fit
//! `a + b·P + c·P²` of `--slo-file`, read as marginal chunk costs ([`crate::step_budget`]):
//!
//! ```text
//! ahead    = prefill tokens left of running requests + whole prompts (and recomputes) of the
//!            waiting requests that rank before it + its own prompt
//! steps    = ceil(ahead / (token budget − running decodes))
//! predicted = now + steps · (a + cost of one decode token per running decode)
//!                 + Σ marginal cost of every prefill chunk ahead
//! ```
//!
//! It is optimistic on purpose (prefix-cache hits are ignored, but so are the decodes that the
//! requests ahead will add, and memory stalls): a refused request was very likely to miss, and
//! requests that merely might miss are still served.

use crate::policy::PolicyKey;
use crate::request::Request;
use crate::scheduler::Scheduler;
use crate::step_budget::marginal_cost;
use metrum_core::{Nanos, RequestStatus};
use std::fmt;
use std::str::FromStr;

/// What to do with a request predicted to miss its first-token deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Admission {
    /// Admit everything that can ever run (the behaviour without admission control).
    #[default]
    Off,
    /// Refuse it: [`crate::AdmissionError::PredictedMiss`], HTTP 429 with `Retry-After`.
    Refuse,
    /// Queue it after every request that is predicted to make it.
    BestEffort,
}

impl Admission {
    pub const ALL: [Admission; 3] = [Admission::Off, Admission::Refuse, Admission::BestEffort];

    /// The `--admission` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Admission::Off => "off",
            Admission::Refuse => "refuse",
            Admission::BestEffort => "best-effort",
        }
    }
}

impl fmt::Display for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Admission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Admission::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown --admission '{s}': expected off, refuse or best-effort"))
    }
}

/// The prediction for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FirstTokenForecast {
    /// From arrival.
    pub predicted_ttft: Nanos,
    /// `D_p`, from arrival.
    pub ttft_deadline: Nanos,
}

impl FirstTokenForecast {
    pub fn misses(&self) -> bool {
        self.predicted_ttft > self.ttft_deadline
    }

    /// Whole seconds until the work ahead has shrunk enough, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let late = self.predicted_ttft.saturating_sub(self.ttft_deadline).0;
        late.div_ceil(1_000_000_000).max(1)
    }
}

impl Scheduler {
    /// When `req` (not yet queued, under `key`) would see its first token if admitted at its
    /// arrival. See the module docs for the formula.
    pub(crate) fn forecast_first_token(&self, req: &Request, key: PolicyKey) -> FirstTokenForecast {
        let model = self.config.slo.prefill;
        let mut decodes = 0usize;
        let mut decode_cost = Nanos::ZERO;
        let mut prefill_tokens = req.num_tokens();
        let mut prefill_cost = marginal_cost(&model, 0, req.num_tokens());
        for id in &self.running {
            let r = &self.requests[id];
            let left = r.num_uncomputed_tokens();
            if left <= 1 {
                decodes += 1;
                decode_cost = decode_cost + marginal_cost(&model, r.num_computed_tokens, 1);
            } else {
                prefill_tokens += left;
                prefill_cost = prefill_cost + marginal_cost(&model, r.num_computed_tokens, left);
            }
        }
        for (_, id) in self.waiting.iter_keyed().take_while(|(k, _)| *k < key) {
            let r = &self.requests[&id];
            debug_assert!(matches!(
                r.status,
                RequestStatus::Waiting | RequestStatus::Preempted
            ));
            prefill_tokens += r.num_tokens();
            prefill_cost = prefill_cost + marginal_cost(&model, 0, r.num_tokens());
        }
        let per_step = self
            .config
            .max_num_batched_tokens
            .saturating_sub(decodes)
            .max(1);
        let steps = prefill_tokens.div_ceil(per_step) as u64;
        let step_overhead = Nanos::from_secs_f64(model.a_s.max(0.0)) + decode_cost;
        FirstTokenForecast {
            predicted_ttft: Nanos(step_overhead.0.saturating_mul(steps)) + prefill_cost,
            ttft_deadline: req.deadline.prefill_deadline(),
        }
    }
}
