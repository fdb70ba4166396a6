//! Branch-free `exp` (and `tanh` on top of it) that the compiler vectorizes, for every softmax,
//! soft-cap and activation on the CPU.
//!
//! libm's `expf` is a scalar call: in a 512-token prefill of the default model the attention
//! softmax and SiLU take ~60M of them, and in sampling the vocabulary's 49k exponentials per
//! token took about 0.4 ms. Written as straight-line f32 math, loops over slices of these
//! compile to 16-lane AVX-512 (or 8-lane AVX2) code.
//!
//! Cephes' `expf` scheme: `x = n ln2 + r` with `|r| <= ln2 / 2`, a degree-6 polynomial for
//! `e^r`, and `2^n` built in the exponent bits. Relative error stays within about 2 ulp
//! (checked against f64 below). Rounding to the nearest `n` uses the 1.5 * 2^23 trick instead
//! of `floor`, which SSE2 cannot vectorize.

/// `exp(x)` for `x <= 0` (softmax callers pass `logit - max`): `0` below `-87` (where f32 would
/// go subnormal) and for `-inf`, so masked entries get exactly zero weight.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    let e = exp_clamped(x.max(-87.0));
    if x < -87.0 { 0.0 } else { e }
}

/// `exp(x)` for any `x`: `0` below `-87`, and `exp(88)` (about 1.65e38, still finite) above 88,
/// so `x / (1 + exp(-x))` (SiLU) stays finite and exact enough at both ends.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let e = exp_clamped(x.clamp(-87.0, 88.0));
    if x < -87.0 { 0.0 } else { e }
}

/// `x * sigmoid(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `x * sigmoid(2y)` with `y = sqrt(2/pi) (x + 0.044715 x³)`: the same value as HF's
/// `gelu_pytorch_tanh`, `0.5 x (1 + tanh(y))`, since `1 + tanh(y) = 2 sigmoid(2y)`. This form
/// has no `1 + tanh` cancellation for negative `x`, and is one [`exp`] like SiLU.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6;
    let y2 = TWO_SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp(-y2))
}

/// `tanh(x)`, within a few ulp: Cephes' odd polynomial below |x| = 0.625 (where
/// `1 - 2 / (e^2x + 1)` would lose digits to cancellation), that formula above. Both branches
/// are computed and one is selected, so loops over slices vectorize.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    // tanh(10) = 1 - 4e-9 rounds to 1 in f32, so clamping keeps e^2a finite without changing it.
    let big = 1.0 - 2.0 / (exp(2.0 * a.min(10.0)) + 1.0);
    let z = x * x;
    let small =
        ((((-5.704_988_6e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328e-1)
            * z
            * x
            + x;
    if a < 0.625 { small } else { big.copysign(x) }
}

/// Gemma 2's logit soft-capping in place: `x = cap * tanh(x / cap)` (every entry must be a
/// real logit: a masked -inf would become -cap).
#[inline(always)]
pub fn soft_cap(row: &mut [f32], cap: f32) {
    let inv = 1.0 / cap;
    for x in row {
        *x = cap * tanh(*x * inv);
    }
}

/// Replaces every entry of `row` with `exp(entry - max(row))` and returns their sum (16 f32
/// lanes, then a tree): a softmax row's numerators and denominator. Masked entries (`-inf`)
/// become exactly 0.
#[inline(always)]
pub fn softmax_numerators(row: &mut [f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            chunk[l] = exp_nonpositive(chunk[l] - max);
            acc[l] += chunk[l];
        }
    }
    let mut tail = 0f32;
    for x in chunks.into_remainder() {
        *x = exp_nonpositive(*x - max);
        tail += *x;
    }
    sum_lanes(acc) + tail
}

/// Lanes of the vectorizable loops: 16 f32 = one AVX-512 register, two AVX2 ones.
pub(crate) const LANES: usize = 16;

/// The sum of 16 lane accumulators as a tree of halvings, which vectorizes; a left-to-right
/// sum would be 15 dependent adds.
#[inline(always)]
pub(crate) fn sum_lanes(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0]
}

/// The scheme itself, for `x` already inside `[-87, 88]`.
#[inline(always)]
fn exp_clamped(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let poly = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = poly * r * r + r + 1.0;
    // n is in [-126, 127] for x in [-87, 88], so the biased exponent is a normal one.
    e_r * f32::from_bits(((n_int + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worst_relative_error(from: f32, to: f32, f: impl Fn(f32) -> f32) -> f64 {
        let mut worst = 0.0f64;
        let mut x = from;
        while x < to {
            let want = (x as f64).exp();
            worst = worst.max(((f(x) as f64 - want) / want).abs());
            x += 0.001_37;
        }
        worst
    }

    #[test]
    fn exp_matches_f64_within_a_few_ulp() {
        let eps = f32::EPSILON as f64;
        let worst = worst_relative_error(-87.0, 0.0, exp_nonpositive);
        assert!(
            worst < 3.0 * eps,
            "exp_nonpositive: worst relative error {worst}"
        );
        let worst = worst_relative_error(-87.0, 88.0, exp);
        assert!(worst < 3.0 * eps, "exp: worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp(0.0), 1.0);
        for f in [exp_nonpositive, exp] {
            assert_eq!(f(f32::NEG_INFINITY), 0.0);
            assert_eq!(f(-1000.0), 0.0);
            assert_eq!(f(-f32::MAX), 0.0);
        }
        assert!(exp(1000.0).is_finite() && exp(f32::INFINITY) > 1e38);
    }

    #[test]
    fn silu_matches_f64_at_both_ends() {
        for x in [
            -1000.0f32, -90.0, -20.0, -1.5, -1e-3, 0.0, 1e-3, 0.7, 5.0, 30.0, 90.0, 1e6,
        ] {
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            let got = silu(x) as f64;
            assert!(
                (got - want).abs() <= (1e-6 * want.abs()).max(1e-30),
                "silu({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn tanh_matches_f64_within_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -12.0f32;
        while x < 12.0 {
            let want = (x as f64).tanh();
            // Relative near 0 (tanh(x) ~ x), absolute near ±1.
            let err = (tanh(x) as f64 - want).abs() / want.abs().clamp(1e-30, 1.0);
            worst = worst.max(err);
            x += 0.000_731;
        }
        assert!(
            worst < 4.0 * f32::EPSILON as f64,
            "tanh: worst error {worst}"
        );
        for x in [
            0.0f32, 1e-30, -1e-20, 1e-6, 0.624_99, 0.625, -0.625, 30.0, -1e9,
        ] {
            let want = (x as f64).tanh();
            let err = (tanh(x) as f64 - want).abs();
            assert!(
                err <= 2.0 * f32::EPSILON as f64 * want.abs().max(1e-38),
                "tanh({x})"
            );
        }
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
    }

    #[test]
    fn gelu_tanh_matches_the_hf_formula_in_f64() {
        for i in -2000..2000 {
            let x = i as f32 * 0.006_1;
            let xd = x as f64;
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3));
            let want = 0.5 * xd * (1.0 + inner.tanh());
            let got = gelu_tanh(x) as f64;
            // Relative to the output, plus a term relative to x: for negative x the output is
            // x times a tiny sigmoid, whose f32 argument (~x³) carries an error of ~1 ulp of x³.
            assert!(
                (got - want).abs() <= 4e-7 * want.abs() + 1e-7 * xd.abs(),
                "gelu_tanh({x}) = {got}, want {want}"
            );
        }
        assert_eq!(gelu_tanh(0.0), 0.0);
        assert_eq!(gelu_tanh(1e6), 1e6);
        assert!(gelu_tanh(-1e6).abs() < 1e-30);
    }

    #[test]
    fn shifted_sum_is_a_softmax_denominator() {
        for len in [0, 1, 15, 16, 17, 100, 333] {
            let mut row: Vec<f32> = (0..len).map(|i| (i as f32 * 0.77).sin() * 9.0).collect();
            if len > 3 {
                row[2] = f32::NEG_INFINITY; // a causally masked entry
            }
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            // The shift itself is an f32 subtraction; only the exp is under test.
            let want: Vec<f64> = row.iter().map(|&x| ((x - max) as f64).exp()).collect();
            let sum = softmax_numerators(&mut row);
            for (got, want) in row.iter().zip(&want) {
                assert!((*got as f64 - want).abs() <= 3e-7 * want.max(1e-30));
            }
            let want_sum: f64 = want.iter().sum();
            assert!(
                (sum as f64 - want_sum).abs() <= 1e-6 * want_sum.max(1.0),
                "len {len}"
            );
        }
    }
}
