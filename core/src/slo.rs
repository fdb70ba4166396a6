//! The pure SLO vocabulary both the scheduler (which ranks by deadlines) and the metrics (which
//! count their misses) read: Etalon's defaults, a request's own targets, and the prefill-time
//! model behind the first-token deadline `D_p(P) = prefill(P) + S`. One home, so the two can
//! never disagree on what a deadline is.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::Nanos;

/// Etalon's default decode deadline `tbt_slo` (`D_d`): 30 ms. Scheduler and metrics share it.
pub const DEFAULT_TBT_SLO: Nanos = Nanos(30_000_000);
/// Etalon's default `ttft_slack_slo` (`S`): 300 ms.
pub const DEFAULT_TTFT_SLACK: Nanos = Nanos(300_000_000);

/// A request's own latency targets (llm-d's `x-llm-d-slo-ttft-ms` / `x-llm-d-slo-tpot-ms`,
/// or the body's `slo_ttft_ms` / `slo_tpot_ms`); `None` = the server's SLO. The scheduler
/// ranks by them and the metrics count deadline misses against them, so both read this one
/// type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestSlo {
    /// Time to first token, from arrival (the whole `D_p`, not a slack on top of a prediction).
    pub ttft: Option<Nanos>,
    /// Time per output token after the first (`D_d`). Positive.
    pub tpot: Option<Nanos>,
}

impl RequestSlo {
    /// No override: the server's SLO applies.
    pub const SERVER: RequestSlo = RequestSlo {
        ttft: None,
        tpot: None,
    };
}

/// Predicted prefill time of a prompt of `P` tokens run alone: `a + b·P + c·P²` seconds.
///
/// The closed-form fit `metrum profile-prefill` writes (spec (b) allows it in place of Etalon's
/// random forest). The coefficients are floats; a prediction is rounded once to whole
/// nanoseconds so all deadline arithmetic downstream is exact integer arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefillModel {
    pub a_s: f64,
    pub b_s_per_token: f64,
    pub c_s_per_token2: f64,
}

/// A prefill model with a coefficient that is NaN or infinite.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NotFinite {
    pub a: f64,
    pub b: f64,
    pub c: f64,
}

impl fmt::Display for NotFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "prefill model coefficients must be finite, got a={}, b={}, c={}",
            self.a, self.b, self.c
        )
    }
}

impl std::error::Error for NotFinite {}

impl PrefillModel {
    /// No prefill allowance: `D_p = S`. The default until a profile is loaded.
    pub const ZERO: PrefillModel = PrefillModel {
        a_s: 0.0,
        b_s_per_token: 0.0,
        c_s_per_token2: 0.0,
    };

    pub fn new(a_s: f64, b_s_per_token: f64, c_s_per_token2: f64) -> Result<Self, NotFinite> {
        let model = PrefillModel {
            a_s,
            b_s_per_token,
            c_s_per_token2,
        };
        model.validate()?;
        Ok(model)
    }

    pub fn validate(&self) -> Result<(), NotFinite> {
        let (a, b, c) = (self.a_s, self.b_s_per_token, self.c_s_per_token2);
        if a.is_finite() && b.is_finite() && c.is_finite() {
            Ok(())
        } else {
            Err(NotFinite { a, b, c })
        }
    }

    /// Predicted prefill time in seconds (may be negative for a poor fit far off its range).
    pub fn predict_secs(&self, tokens: usize) -> f64 {
        let p = tokens as f64;
        self.a_s + self.b_s_per_token * p + self.c_s_per_token2 * p * p
    }

    /// Predicted prefill time rounded once to whole nanoseconds and clamped at zero.
    pub fn predict(&self, tokens: usize) -> Nanos {
        let secs = self.predict_secs(tokens);
        if secs.is_finite() && secs > 0.0 {
            Nanos::from_secs_f64(secs)
        } else {
            Nanos::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_model_predicts_and_clamps() {
        let m = PrefillModel::new(0.2, 0.0, 1e-9).unwrap();
        assert_eq!(m.predict(1000), Nanos::from_millis(201));
        let negative = PrefillModel::new(-1.0, 0.0, 0.0).unwrap();
        assert_eq!(negative.predict(10), Nanos::ZERO);
        let err = PrefillModel::new(f64::NAN, 0.0, 0.0).unwrap_err();
        assert!(err.to_string().contains("must be finite"), "{err}");
    }
}
