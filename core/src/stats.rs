//! The quantile every percentile in Metrum is computed with, server, simulator and load
//! generator alike: linear interpolation between order statistics, as `numpy.quantile` does by
//! default (the method Etalon uses), so numbers compare directly with Etalon's.

/// The `q` quantile of an ascending, NaN-free slice; `None` if empty or `q` is outside [0, 1].
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let position = q * (sorted.len() - 1) as f64;
    let lower = position.floor() as usize;
    let upper = position.ceil() as usize;
    let fraction = position - lower as f64;
    let (lo, hi) = (sorted[lower], sorted[upper]);
    // Written so an infinite neighbour with zero weight does not turn into NaN.
    Some(if fraction == 0.0 || lo == hi {
        lo
    } else {
        lo + (hi - lo) * fraction
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        // numpy.quantile([1, 2, 3, 4], [0, 0.5, 0.9, 1]) = [1, 2.5, 3.7, 4]
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&v, 0.5), Some(2.5));
        assert!((quantile(&v, 0.9).unwrap() - 3.7).abs() < 1e-12);
        assert_eq!(quantile(&v, 1.0), Some(4.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&v, 1.5), None);
        assert_eq!(quantile(&[1.0, f64::INFINITY], 0.0), Some(1.0));
    }
}
