//! Fitting the fake executor's step-cost model `a + b·batch_tokens + c·kv_tokens_read` to step
//! times measured on a real engine (`metrum profile-step`), by least squares on the relative
//! error, with the fit error.

use crate::executor::StepCostModel;
use metrum_core::Nanos;

/// One measured step: its shape and how long it took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSample {
    pub batch_tokens: u64,
    /// Attention reads: `Σ L·s + L(L+1)/2` over the step's chunks (see [`StepCostModel`]).
    pub kv_tokens_read: u64,
    pub seconds: f64,
}

/// The fitted constants, in seconds, and how well they fit the samples.
#[derive(Clone, Debug, PartialEq)]
pub struct StepCostFit {
    pub base_s: f64,
    pub per_batched_token_s: f64,
    pub per_kv_token_read_s: f64,
    /// Root-mean-square residual, seconds.
    pub rmse_s: f64,
    pub max_abs_error_s: f64,
    /// Largest |predicted − measured| / measured.
    pub max_rel_error: f64,
    /// Coefficient of determination over the samples.
    pub r2: f64,
}

impl StepCostFit {
    pub fn predict_s(&self, batch_tokens: u64, kv_tokens_read: u64) -> f64 {
        self.base_s
            + self.per_batched_token_s * batch_tokens as f64
            + self.per_kv_token_read_s * kv_tokens_read as f64
    }

    /// The model the fake executor runs: each constant rounded to whole nanoseconds and
    /// clamped at zero (a noisy fit can make one slightly negative).
    pub fn model(&self) -> StepCostModel {
        StepCostModel {
            base: Nanos::from_secs_f64(self.base_s),
            per_batched_token: Nanos::from_secs_f64(self.per_batched_token_s),
            per_kv_token_read: Nanos::from_secs_f64(self.per_kv_token_read_s),
        }
    }
}

/// Least squares of the *relative* error over the samples: measured steps span milliseconds
/// (one decode) to seconds (a long prefill chunk on a CPU), and an absolute fit would sacrifice
/// the short decode steps that decide TBT. `None` with fewer than three samples, when the shapes
/// do not determine the three constants (e.g. every step has the same kv-reads-per-token ratio),
/// or when a time is not finite and positive.
pub fn fit_step_cost(samples: &[StepSample]) -> Option<StepCostFit> {
    if samples.len() < 3
        || samples
            .iter()
            .any(|s| !(s.seconds.is_finite() && s.seconds > 0.0))
    {
        return None;
    }
    // Each row divided by its own time: minimizing Σ((predicted − y)/y)².
    let rows: Vec<[f64; 3]> = samples
        .iter()
        .map(|s| {
            let w = 1.0 / s.seconds;
            [w, s.batch_tokens as f64 * w, s.kv_tokens_read as f64 * w]
        })
        .collect();
    let ones = vec![1.0; samples.len()];
    let [a, b, c] = least_squares_3(&rows, &ones)?;
    let y: Vec<f64> = samples.iter().map(|s| s.seconds).collect();
    let mut fit = StepCostFit {
        base_s: a,
        per_batched_token_s: b,
        per_kv_token_read_s: c,
        rmse_s: 0.0,
        max_abs_error_s: 0.0,
        max_rel_error: 0.0,
        r2: 0.0,
    };
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    let (mut ss_res, mut ss_tot) = (0.0, 0.0);
    for s in samples {
        let residual = fit.predict_s(s.batch_tokens, s.kv_tokens_read) - s.seconds;
        ss_res += residual * residual;
        ss_tot += (s.seconds - mean) * (s.seconds - mean);
        fit.max_abs_error_s = fit.max_abs_error_s.max(residual.abs());
        fit.max_rel_error = fit.max_rel_error.max(residual.abs() / s.seconds);
    }
    fit.rmse_s = (ss_res / samples.len() as f64).sqrt();
    fit.r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        f64::NAN
    };
    Some(fit)
}

/// Least squares `y ≈ X·β` for three columns. Each column is scaled to unit maximum first (token
/// counts and their squares differ by orders of magnitude), then the normal equations are
/// solved by Gaussian elimination with partial pivoting.
pub(crate) fn least_squares_3(rows: &[[f64; 3]], y: &[f64]) -> Option<[f64; 3]> {
    let mut scale = [0.0f64; 3];
    for row in rows {
        for (s, x) in scale.iter_mut().zip(row) {
            *s = s.max(x.abs());
        }
    }
    if scale.iter().any(|&s| s == 0.0 || !s.is_finite()) {
        return None;
    }
    let mut m = [[0.0f64; 4]; 3];
    for (row, &target) in rows.iter().zip(y) {
        let x = [row[0] / scale[0], row[1] / scale[1], row[2] / scale[2]];
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] += x[i] * x[j];
            }
            m[i][3] += x[i] * target;
        }
    }
    let trace = m[0][0] + m[1][1] + m[2][2];
    for col in 0..3 {
        let pivot = (col..3).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        m.swap(col, pivot);
        // Relative to the matrix size: a near-zero pivot means the columns are dependent.
        if m[col][col].abs() <= 1e-12 * trace {
            return None;
        }
        let pivot_row = m[col];
        for (r, row) in m.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (x, p) in row.iter_mut().zip(pivot_row).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    let beta = [
        m[0][3] / m[0][0] / scale[0],
        m[1][3] / m[1][1] / scale[1],
        m[2][3] / m[2][2] / scale[2],
    ];
    beta.iter().all(|b| b.is_finite()).then_some(beta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: u64, k: u64, seconds: f64) -> StepSample {
        StepSample {
            batch_tokens: t,
            kv_tokens_read: k,
            seconds,
        }
    }

    #[test]
    fn recovers_exact_constants_and_reports_zero_error() {
        let truth = |t: u64, k: u64| 0.004 + 2e-4 * t as f64 + 3e-8 * k as f64;
        let shapes = [
            (1, 100),
            (16, 136),
            (512, 131_328),
            (64, 40_000),
            (256, 300_000),
        ];
        let samples: Vec<_> = shapes
            .iter()
            .map(|&(t, k)| sample(t, k, truth(t, k)))
            .collect();
        let fit = fit_step_cost(&samples).unwrap();
        assert!((fit.base_s - 0.004).abs() < 1e-12, "{fit:?}");
        assert!((fit.per_batched_token_s / 2e-4 - 1.0).abs() < 1e-9);
        assert!((fit.per_kv_token_read_s / 3e-8 - 1.0).abs() < 1e-9);
        assert!(fit.rmse_s < 1e-12 && fit.max_rel_error < 1e-9);
        assert!((fit.r2 - 1.0).abs() < 1e-12);
        assert_eq!(fit.model().base, Nanos::from_millis(4));
        assert_eq!(fit.model().per_kv_token_read, Nanos(30));
    }

    #[test]
    fn noisy_samples_report_their_error_and_degenerate_ones_fail() {
        let samples = [
            sample(1, 10, 0.011),
            sample(10, 100, 0.019),
            sample(100, 5_000, 0.112),
            sample(200, 20_000, 0.205),
            sample(50, 1_000, 0.063),
        ];
        let fit = fit_step_cost(&samples).unwrap();
        assert!(fit.rmse_s > 0.0 && fit.max_abs_error_s >= fit.rmse_s);
        assert!(fit.r2 > 0.9 && fit.r2 < 1.0);
        // kv reads proportional to tokens: b and c cannot be told apart.
        let collinear = [sample(1, 2, 0.1), sample(2, 4, 0.2), sample(3, 6, 0.3)];
        assert!(fit_step_cost(&collinear).is_none());
        assert!(fit_step_cost(&samples[..2]).is_none());
    }
}
