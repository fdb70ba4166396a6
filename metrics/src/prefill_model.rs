//! The prefill-time model behind the prefill deadline `D_p(P) = a + b·P + c·P² + S`
//! (spec (b)), its least-squares fit from profiled `(P, min TTFT)` samples, and the JSON
//! [`SloFile`] that carries it from `metrum profile-prefill` to `serve --slo-file` and `bench`.
//!
//! Etalon fits a random forest on `[P, P²]`; the spec allows the closed-form quadratic, which
//! extrapolates sanely past the profiled lengths and fits in three numbers.

use metrum_core::Nanos;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub use metrum_core::PrefillModel;

/// Why a model could not be fitted or used.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PrefillModelError {
    #[error(transparent)]
    NotFinite(#[from] metrum_core::slo::NotFinite),
    #[error("a quadratic fit needs at least 3 distinct prompt lengths, got {distinct}")]
    TooFewLengths { distinct: usize },
    #[error("the prompt lengths do not determine a quadratic (singular system)")]
    Singular,
}

/// One profiling measurement: a single request of `prompt_tokens` and its TTFT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefillSample {
    pub prompt_tokens: u32,
    pub ttft: Nanos,
}

/// One fitted length: the minimum TTFT observed for it and what the model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitPoint {
    pub prompt_tokens: u32,
    pub min_ttft_s: f64,
    pub predicted_s: f64,
}

/// The fitted model and how well it fits the points it was fitted on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefillFit {
    pub model: PrefillModel,
    /// Root-mean-square residual over the fitted points, in seconds.
    pub rmse_s: f64,
    /// Largest absolute residual, in seconds.
    pub max_abs_error_s: f64,
    pub points: Vec<FitPoint>,
}

/// Fits `a + b·P + c·P²` by least squares to the **minimum** TTFT of each prompt length, as
/// the Etalon profiler does (the minimum is the least-contended prefill).
pub fn fit_prefill_model(samples: &[PrefillSample]) -> Result<PrefillFit, PrefillModelError> {
    let mut min_ttft: BTreeMap<u32, Nanos> = BTreeMap::new();
    for s in samples {
        min_ttft
            .entry(s.prompt_tokens)
            .and_modify(|t| *t = (*t).min(s.ttft))
            .or_insert(s.ttft);
    }
    if min_ttft.len() < 3 {
        return Err(PrefillModelError::TooFewLengths {
            distinct: min_ttft.len(),
        });
    }
    // Solve in x = P / P_max: raw P² reaches ~1e8, and P⁴ in the normal equations ~1e17,
    // which would drown the constant term in rounding error.
    let scale = f64::from(*min_ttft.keys().last().unwrap_or(&1)).max(1.0);
    let mut normal = [[0.0f64; 3]; 3];
    let mut rhs = [0.0f64; 3];
    for (&p, &ttft) in &min_ttft {
        let x = f64::from(p) / scale;
        let basis = [1.0, x, x * x];
        for i in 0..3 {
            for j in 0..3 {
                normal[i][j] += basis[i] * basis[j];
            }
            rhs[i] += basis[i] * ttft.as_secs_f64();
        }
    }
    let [a, b_scaled, c_scaled] = solve_3x3(normal, rhs).ok_or(PrefillModelError::Singular)?;
    let model = PrefillModel::new(a, b_scaled / scale, c_scaled / (scale * scale))?;

    let points: Vec<FitPoint> = min_ttft
        .iter()
        .map(|(&p, &ttft)| FitPoint {
            prompt_tokens: p,
            min_ttft_s: ttft.as_secs_f64(),
            predicted_s: model.predict_secs(p as usize),
        })
        .collect();
    let residuals = points.iter().map(|p| p.predicted_s - p.min_ttft_s);
    let sum_sq: f64 = residuals.clone().map(|r| r * r).sum();
    Ok(PrefillFit {
        model,
        rmse_s: (sum_sq / points.len() as f64).sqrt(),
        max_abs_error_s: residuals.map(f64::abs).fold(0.0, f64::max),
        points,
    })
}

/// Gaussian elimination with partial pivoting; `None` if the system is singular.
fn solve_3x3(mut m: [[f64; 3]; 3], mut v: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let pivot = (col..3).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        if m[pivot][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, pivot);
        v.swap(col, pivot);
        for row in col + 1..3 {
            let f = m[row][col] / m[col][col];
            let pivot_row = m[col];
            for (cell, p) in m[row].iter_mut().zip(pivot_row).skip(col) {
                *cell -= f * p;
            }
            v[row] -= f * v[col];
        }
    }
    let mut x = [0.0f64; 3];
    for row in (0..3).rev() {
        let tail: f64 = (row + 1..3).map(|k| m[row][k] * x[k]).sum();
        x[row] = (v[row] - tail) / m[row][row];
    }
    x.iter().all(|c| c.is_finite()).then_some(x)
}

/// The on-disk SLO profile: the fitted prefill model plus where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloFile {
    /// Format version; this crate reads [`SloFile::FORMAT`] only.
    pub format: u32,
    pub prefill_model: PrefillModel,
    /// The fit quality and the points it was fitted on, if the file came from a profile run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit: Option<PrefillFit>,
    /// Hardware the profile was taken on (the spec asks to record it with the fit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<String>,
    /// Model the profile was taken with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Why an SLO file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SloFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid SLO file JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("SLO file format {found} is not supported (expected {expected})")]
    UnsupportedFormat { found: u32, expected: u32 },
    #[error("SLO file: {0}")]
    Model(#[from] PrefillModelError),
}

impl SloFile {
    pub const FORMAT: u32 = 1;

    /// A file for a fresh fit.
    pub fn from_fit(fit: PrefillFit, hardware: Option<String>, model: Option<String>) -> Self {
        SloFile {
            format: Self::FORMAT,
            prefill_model: fit.model,
            fit: Some(fit),
            hardware,
            model,
        }
    }

    pub fn to_json(&self) -> Result<String, SloFileError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn from_json(json: &str) -> Result<Self, SloFileError> {
        let file: SloFile = serde_json::from_str(json)?;
        if file.format != Self::FORMAT {
            return Err(SloFileError::UnsupportedFormat {
                found: file.format,
                expected: Self::FORMAT,
            });
        }
        file.prefill_model
            .validate()
            .map_err(PrefillModelError::from)?;
        Ok(file)
    }

    pub fn load(path: &Path) -> Result<Self, SloFileError> {
        let json = std::fs::read_to_string(path).map_err(|source| SloFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&json)
    }

    pub fn save(&self, path: &Path) -> Result<(), SloFileError> {
        std::fs::write(path, self.to_json()? + "\n").map_err(|source| SloFileError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(p: u32, secs: f64) -> PrefillSample {
        PrefillSample {
            prompt_tokens: p,
            ttft: Nanos::from_secs_f64(secs),
        }
    }

    #[test]
    fn recovers_an_exact_quadratic_from_profile_lengths() {
        let truth = PrefillModel::new(0.012, 2.5e-5, 3.0e-9).unwrap();
        let mut samples = Vec::new();
        for exp in 8..=14 {
            let p = 1u32 << exp;
            samples.push(sample(p, truth.predict_secs(p as usize)));
            // A slower, contended repetition: the fit must use the minimum.
            samples.push(sample(p, truth.predict_secs(p as usize) * 1.7 + 0.05));
        }
        let fit = fit_prefill_model(&samples).unwrap();
        assert!((fit.model.a_s - truth.a_s).abs() < 1e-7, "{fit:?}");
        assert!((fit.model.b_s_per_token / truth.b_s_per_token - 1.0).abs() < 1e-4);
        assert!((fit.model.c_s_per_token2 / truth.c_s_per_token2 - 1.0).abs() < 1e-4);
        assert!(fit.rmse_s < 1e-8 && fit.max_abs_error_s < 1e-8);
        assert_eq!(fit.points.len(), 7);
    }

    #[test]
    fn reports_the_error_of_a_noisy_fit() {
        // Residuals +e, -e, +e, -e around a line cannot all vanish under a quadratic.
        let samples = [
            sample(100, 0.110),
            sample(200, 0.190),
            sample(300, 0.310),
            sample(400, 0.390),
        ];
        let fit = fit_prefill_model(&samples).unwrap();
        assert!(fit.rmse_s > 1e-3 && fit.rmse_s < 0.01, "{fit:?}");
        assert!(fit.max_abs_error_s >= fit.rmse_s);
    }

    #[test]
    fn rejects_underdetermined_and_non_finite_input() {
        let two = [sample(256, 0.1), sample(512, 0.2), sample(512, 0.15)];
        assert_eq!(
            fit_prefill_model(&two),
            Err(PrefillModelError::TooFewLengths { distinct: 2 })
        );
        assert!(PrefillModel::new(f64::NAN, 0.0, 0.0).is_err());
    }

    #[test]
    fn slo_file_round_trips_and_rejects_bad_files() {
        let samples: Vec<_> = [256u32, 1024, 4096]
            .iter()
            .map(|&p| sample(p, 0.01 + 1e-5 * f64::from(p)))
            .collect();
        let fit = fit_prefill_model(&samples).unwrap();
        let file = SloFile::from_fit(fit, Some("test-cpu".into()), Some("smollm2".into()));
        let dir = std::env::temp_dir().join(format!("metrum-slo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("slo.json");
        file.save(&path).unwrap();
        assert_eq!(SloFile::load(&path).unwrap(), file);
        std::fs::remove_dir_all(&dir).unwrap();

        let wrong_format = file
            .to_json()
            .unwrap()
            .replace("\"format\": 1", "\"format\": 9");
        assert!(matches!(
            SloFile::from_json(&wrong_format),
            Err(SloFileError::UnsupportedFormat { found: 9, .. })
        ));
        assert!(matches!(
            SloFile::from_json("{\"format\": 1}"),
            Err(SloFileError::Json(_))
        ));
        assert!(matches!(
            SloFile::load(Path::new("/nonexistent/metrum/slo.json")),
            Err(SloFileError::Io { .. })
        ));
    }
}
