//! Sums that the compiler vectorizes (the `exp` lives in [`metrum_kernels::vmath`]). Sampling
//! walks the whole vocabulary several times per token (49k entries for the default model, 150k
//! for others); with libm's scalar `exp` and one serial f64 accumulator the exponentials alone
//! took about 0.4 ms per row, more than a small model's decode step.

pub(crate) use metrum_kernels::vmath::exp_nonpositive;

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
    fn sums_agree_with_a_serial_f64_sum() {
        let values: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.37).sin().abs()).collect();
        let serial: f64 = values.iter().map(|&v| v as f64).sum();
        assert!((sum_mapped_f64(&values, |v| v) - serial).abs() < 1e-4);
        let doubled = sum_mapped_f64(&values[..13], |v| 2.0 * v);
        assert!((doubled - 2.0 * values[..13].iter().map(|&v| v as f64).sum::<f64>()).abs() < 1e-5);
        assert_eq!(sum_mapped_f64(&[], |v| v), 0.0);
    }
}
