//! The SLO parameters every deadline is derived from: the decode deadline `D_d` (`--tbt-slo`),
//! the scheduling slack `S` (`--ttft-slack`) and the prefill model from `--slo-file`.

use crate::fluidity::DeadlineParams;
use crate::prefill_model::{PrefillModel, PrefillModelError, SloFile};
use crate::timeline::RequestShape;
use metrum_core::Nanos;
use serde::Serialize;

pub use metrum_core::{DEFAULT_TBT_SLO, DEFAULT_TTFT_SLACK};

/// A value no deadline can be built from.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SloError {
    #[error("the TBT SLO (decode deadline) must be positive")]
    TbtSloNotPositive,
    #[error("{name} must be a finite, non-negative number of seconds, got {value}")]
    BadSeconds { name: &'static str, value: f64 },
    #[error(transparent)]
    Model(#[from] PrefillModelError),
}

/// Validated SLO parameters. `D_p(P) = prefill_model(P) + ttft_slack`, `D_d = tbt_slo`.
///
/// Without an SLO file the prefill model is [`PrefillModel::ZERO`], so `D_p = S` for every
/// prompt: a usable default for short prompts that should be replaced by a profile
/// (`metrum profile-prefill`) before judging long-prompt TTFT.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SloConfig {
    tbt_slo: Nanos,
    ttft_slack: Nanos,
    prefill_model: PrefillModel,
}

impl Default for SloConfig {
    fn default() -> Self {
        SloConfig {
            tbt_slo: DEFAULT_TBT_SLO,
            ttft_slack: DEFAULT_TTFT_SLACK,
            prefill_model: PrefillModel::ZERO,
        }
    }
}

impl SloConfig {
    pub fn new(
        tbt_slo: Nanos,
        ttft_slack: Nanos,
        prefill_model: PrefillModel,
    ) -> Result<Self, SloError> {
        if tbt_slo == Nanos::ZERO {
            return Err(SloError::TbtSloNotPositive);
        }
        prefill_model.validate().map_err(PrefillModelError::from)?;
        Ok(SloConfig {
            tbt_slo,
            ttft_slack,
            prefill_model,
        })
    }

    /// From the server flags: `--tbt-slo` and `--ttft-slack` in seconds, `--slo-file` loaded.
    pub fn from_secs(
        tbt_slo_s: f64,
        ttft_slack_s: f64,
        slo_file: Option<&SloFile>,
    ) -> Result<Self, SloError> {
        let secs = |name, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(Nanos::from_secs_f64(value))
            } else {
                Err(SloError::BadSeconds { name, value })
            }
        };
        let model = slo_file.map_or(PrefillModel::ZERO, |f| f.prefill_model);
        Self::new(
            secs("tbt_slo", tbt_slo_s)?,
            secs("ttft_slack", ttft_slack_s)?,
            model,
        )
    }

    /// `D_d`.
    pub fn tbt_slo(&self) -> Nanos {
        self.tbt_slo
    }

    /// `S`.
    pub fn ttft_slack(&self) -> Nanos {
        self.ttft_slack
    }

    pub fn prefill_model(&self) -> PrefillModel {
        self.prefill_model
    }

    /// `D_p(P) = predicted prefill(P) + S`, in whole nanoseconds.
    pub fn prefill_deadline(&self, prompt_tokens: u32) -> Nanos {
        self.prefill_model.predict(prompt_tokens as usize) + self.ttft_slack
    }

    /// The deadlines of a request: `D_p(P)` and `D_d` from this SLO, each replaced by the
    /// request's own target where it set one (`shape.slo`). The one place both are decided,
    /// so live counters, reports and the bench all judge a request by the same deadlines.
    pub fn deadlines_for(&self, shape: RequestShape) -> DeadlineParams {
        let prefill =
            (shape.slo.ttft).unwrap_or_else(|| self.prefill_deadline(shape.prompt_tokens));
        // A zero TPOT target is refused where it enters (the API); clamp rather than panic.
        let decode = shape.slo.tpot.map_or(self.tbt_slo, |t| t.max(Nanos(1)));
        DeadlineParams::clamped(prefill, decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrum_core::RequestSlo;

    #[test]
    fn defaults_are_etalons_and_flags_are_validated() {
        let slo = SloConfig::default();
        assert_eq!(slo.tbt_slo(), Nanos::from_millis(30));
        assert_eq!(slo.prefill_deadline(4096), Nanos::from_millis(300));
        assert_eq!(
            SloConfig::from_secs(0.0, 0.3, None),
            Err(SloError::TbtSloNotPositive)
        );
        assert!(matches!(
            SloConfig::from_secs(0.05, f64::NAN, None),
            Err(SloError::BadSeconds {
                name: "ttft_slack",
                ..
            })
        ));
        let file = SloFile {
            format: SloFile::FORMAT,
            prefill_model: PrefillModel::new(0.2, 0.0, 1e-9).unwrap(),
            fit: None,
            hardware: None,
            model: None,
        };
        let slo = SloConfig::from_secs(0.05, 0.3, Some(&file)).unwrap();
        // 0.2 + 1e-9 * 1000² = 0.201 s, plus 0.3 s slack.
        assert_eq!(slo.prefill_deadline(1000), Nanos::from_millis(501));
        let shape = RequestShape {
            prompt_tokens: 1000,
            max_tokens: None,
            slo: RequestSlo::SERVER,
        };
        let server = slo.deadlines_for(shape);
        assert_eq!(server.prefill(), Nanos::from_millis(501));
        assert_eq!(server.decode(), Nanos::from_millis(50));
        // A request's own targets replace each half independently.
        let own_ttft = RequestSlo {
            ttft: Some(Nanos::from_millis(80)),
            tpot: None,
        };
        let d = slo.deadlines_for(RequestShape {
            slo: own_ttft,
            ..shape
        });
        assert_eq!(
            (d.prefill(), d.decode()),
            (Nanos::from_millis(80), Nanos::from_millis(50))
        );
        let own_tpot = RequestSlo {
            ttft: None,
            tpot: Some(Nanos::from_millis(7)),
        };
        let d = slo.deadlines_for(RequestShape {
            slo: own_tpot,
            ..shape
        });
        assert_eq!(
            (d.prefill(), d.decode()),
            (Nanos::from_millis(501), Nanos::from_millis(7))
        );
    }
}
