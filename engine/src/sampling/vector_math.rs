//! Branch-free `exp` and sums that the compiler vectorizes. Sampling walks the whole
//! vocabulary several times per token (49k entries for the default model, 150k for others);
//! with libm's scalar `exp` and one serial f64 accumulator the exponentials alone took about
//! 0.4 ms per row, more than a small model's decode step.

/// `exp(x)` for `x <= 0` (every caller passes `logit - max`), `0` below `-87` (where f32 would go
/// subnormal) and for `-inf`, so masked tokens get exactly zero weight.
///
/// Cephes' `expf` scheme: `x = n ln2 + r` with `|r| <= ln2 / 2`, a degree-6 polynomial for
/// `e^r`, and `2^n` built in the exponent bits. Relative error stays within about 2 ulp
/// (checked against f64 below). Rounding to the nearest `n` uses the 1.5 * 2^23 trick instead
/// of `floor`, which SSE2 cannot vectorize.
#[inline]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.max(-87.0);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let poly = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = poly * r * r + r + 1.0;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    if x < -87.0 { 0.0 } else { e_r * scale }
}

/// `sum(f(v))`: blocks of 64 values are summed in eight f32 lanes (eight terms per lane, which
/// the compiler vectorizes together with `f`), and the block sums are added in f64 so a
/// 150k-entry row loses no more than a 64-entry one.
#[inline]
pub(crate) fn sum_mapped_f64(values: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    values.chunks(64).map(|block| sum_block(block, &f)).sum()
}

#[inline]
fn sum_block(block: &[f32], f: &impl Fn(f32) -> f32) -> f64 {
    // Mapping into a fixed-size array first gives the loop vectorizer a plain counted loop;
    // mapping inside the eight-lane accumulation below left `f` scalar.
    let mut mapped = [0.0f32; 64];
    for (out, &v) in mapped.iter_mut().zip(block) {
        *out = f(v);
    }
    let mut lanes = [0.0f32; 8];
    for chunk in mapped[..block.len()].chunks_exact(8) {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    let tail: f64 = mapped[block.len() - block.len() % 8..block.len()]
        .iter()
        .map(|&v| v as f64)
        .sum();
    lanes.iter().map(|&l| l as f64).sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_f64_within_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > -87.0 {
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x -= 0.001_37;
        }
        assert!(
            worst < 3.0 * f32::EPSILON as f64,
            "worst relative error {worst}"
        );
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-1000.0), 0.0);
        assert_eq!(exp_nonpositive(-f32::MAX), 0.0);
    }

    #[test]
    fn sums_agree_with_a_serial_f64_sum() {
        let values: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.37).sin().abs()).collect();
        let serial: f64 = values.iter().map(|&v| v as f64).sum();
        assert!((sum_mapped_f64(&values, |v| v) - serial).abs() < 1e-4);
        let doubled = sum_mapped_f64(&values[..13], |v| 2.0 * v);
        assert!((doubled - 2.0 * values[..13].iter().map(|&v| v as f64).sum::<f64>()).abs() < 1e-5);
        assert_eq!(sum_mapped_f64(&[], |v| v), 0.0);
    }
}
