//! Percentiles that say what they are over (spec (d) R13): a token-level P99 TBT is not a
//! request-level guarantee, so every [`Distribution`] carries its [`Population`].
//!
//! Quantiles are [`metrum_core::quantile`] (numpy's linear interpolation, Etalon's method), the
//! one rule the simulator uses too.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What one sample of a distribution stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Population {
    /// One sample per output token (TBT).
    Tokens,
    /// One sample per request (TTFT, TPOT, fluidity-index, …).
    Requests,
    /// One sample per delivery, bursts collapsed (inter-delivery gaps).
    Deliveries,
}

impl Population {
    pub fn as_str(self) -> &'static str {
        match self {
            Population::Tokens => "tokens",
            Population::Requests => "requests",
            Population::Deliveries => "deliveries",
        }
    }
}

pub use metrum_core::quantile;

/// One labelled percentile, e.g. "P99 over tokens".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Percentile {
    pub population: Population,
    pub q: f64,
    pub value: f64,
}

impl fmt::Display for Percentile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "P{} over {} = {}",
            self.q * 100.0,
            self.population.as_str(),
            self.value
        )
    }
}

/// Samples of one metric over one population, sorted; undefined samples are counted, not
/// mixed in.
#[derive(Clone, Debug, PartialEq)]
pub struct Distribution {
    population: Population,
    values: Vec<f64>,
    undefined: usize,
}

/// The usual summary of a [`Distribution`]; every statistic is `None` when it has no sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistributionSummary {
    pub population: Population,
    pub count: usize,
    /// Samples that were undefined (`None`/NaN) and left out, e.g. TPOT of 1-token requests.
    pub undefined: usize,
    pub mean: Option<f64>,
    pub min: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

impl Distribution {
    pub fn new(population: Population, values: impl IntoIterator<Item = f64>) -> Self {
        Self::from_options(population, values.into_iter().map(Some))
    }

    /// `None` and NaN samples are counted as undefined.
    pub fn from_options(
        population: Population,
        values: impl IntoIterator<Item = Option<f64>>,
    ) -> Self {
        let mut defined = Vec::new();
        let mut undefined = 0;
        for v in values {
            match v {
                Some(x) if !x.is_nan() => defined.push(x),
                _ => undefined += 1,
            }
        }
        defined.sort_by(f64::total_cmp);
        Distribution {
            population,
            values: defined,
            undefined,
        }
    }

    pub fn population(&self) -> Population {
        self.population
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn undefined(&self) -> usize {
        self.undefined
    }

    /// The defined samples, ascending.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    pub fn quantile(&self, q: f64) -> Option<Percentile> {
        quantile(&self.values, q).map(|value| Percentile {
            population: self.population,
            q,
            value,
        })
    }

    pub fn mean(&self) -> Option<f64> {
        (!self.values.is_empty())
            .then(|| self.values.iter().sum::<f64>() / self.values.len() as f64)
    }

    pub fn summary(&self) -> DistributionSummary {
        let q = |q| quantile(&self.values, q);
        DistributionSummary {
            population: self.population,
            count: self.values.len(),
            undefined: self.undefined,
            mean: self.mean(),
            min: self.values.first().copied(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: self.values.last().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_linear_quantiles() {
        // numpy.quantile([1, 2, 3, 4], [0, 0.5, 0.9, 1]) == [1, 2.5, 3.7, 4]
        let d = Distribution::new(Population::Requests, [4.0, 1.0, 3.0, 2.0]);
        assert_eq!(d.quantile(0.0).unwrap().value, 1.0);
        assert_eq!(d.quantile(0.5).unwrap().value, 2.5);
        assert!((d.quantile(0.9).unwrap().value - 3.7).abs() < 1e-12);
        assert_eq!(d.quantile(1.0).unwrap().value, 4.0);
        assert_eq!(d.quantile(1.5), None);
        assert_eq!(
            d.quantile(0.5).unwrap().to_string(),
            "P50 over requests = 2.5"
        );
    }

    #[test]
    fn undefined_samples_are_counted_apart_and_empty_means_none() {
        let d = Distribution::from_options(
            Population::Tokens,
            [Some(0.0), None, Some(f64::NAN), Some(0.02)],
        );
        assert_eq!(d.values(), &[0.0, 0.02]);
        assert_eq!(d.undefined(), 2);
        let empty = Distribution::new(Population::Requests, []).summary();
        assert_eq!((empty.count, empty.p99, empty.mean), (0, None, None));
    }

    #[test]
    fn infinite_samples_do_not_produce_nan() {
        let d = Distribution::new(Population::Requests, [1.0, f64::INFINITY]);
        assert_eq!(d.quantile(0.0).unwrap().value, 1.0);
        assert_eq!(d.quantile(0.99).unwrap().value, f64::INFINITY);
    }
}
