//! The sampler through its public API: processors' exact effects (read back from the processed
//! row and the logprobs), truncation sets, the empirical distribution of many draws, seeding,
//! and robustness against NaN / infinite logits.

use metrum_core::SamplingParams;
use metrum_engine::sampling::{SampledToken, SequenceSampler};

fn params(temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        ..Default::default()
    }
}

/// Hand-computed `log(sum(exp(row)))`, in f64.
fn log_sum_exp(row: &[f64]) -> f64 {
    row.iter().map(|l| l.exp()).sum::<f64>().ln()
}

fn assert_close(got: f32, want: f64, what: &str) {
    assert!(
        (got as f64 - want).abs() < 1e-5,
        "{what}: got {got}, want {want}"
    );
}

/// Draws `n` tokens, each from a fresh copy of `logits`, and counts them.
fn histogram(sampler: &mut SequenceSampler, logits: &[f32], n: usize) -> Vec<usize> {
    let mut counts = vec![0; logits.len()];
    for _ in 0..n {
        counts[sampler.sample(&mut logits.to_vec()).token as usize] += 1;
    }
    counts
}

/// Pearson's chi-square of observed counts against probabilities (zero-probability cells must
/// be empty; they are checked separately by the callers).
fn chi_square(counts: &[usize], probs: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .zip(probs)
        .filter(|&(_, &p)| p > 0.0)
        .map(|(&c, &p)| {
            let expected = p * n as f64;
            (c as f64 - expected).powi(2) / expected
        })
        .sum()
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[test]
fn greedy_takes_the_argmax_and_the_lowest_id_on_ties() {
    let mut s = SequenceSampler::new(&params(0.0), &[], 0);
    assert_eq!(s.sample(&mut [0.1, 3.0, -2.0, 2.9]).token, 1);
    assert_eq!(s.sample(&mut [1.0, 5.0, 5.0, 5.0]).token, 1);
    assert_eq!(s.num_sampled(), 2);
    // Below vLLM's epsilon counts as greedy too.
    let mut s = SequenceSampler::new(&params(1e-6), &[], 0);
    for _ in 0..20 {
        assert_eq!(s.sample(&mut [0.0, 0.1, 0.0]).token, 1);
    }
}

#[test]
fn logit_bias_is_added_and_can_force_a_token() {
    let p = SamplingParams {
        logit_bias: vec![(0, 2.5), (2, -1.0)],
        logprobs: Some(3),
        ..params(0.0)
    };
    let mut row = [1.0f32, 2.0, 3.0];
    let out = SequenceSampler::new(&p, &[], 0).sample(&mut row);
    assert_eq!(row, [3.5, 2.0, 2.0]);
    assert_eq!(out.token, 0);
    let lse = log_sum_exp(&[3.5, 2.0, 2.0]);
    assert_close(out.logprob, 3.5 - lse, "biased logprob");

    // A +100 bias wins every random draw and reports a logprob of (almost) zero.
    let p = SamplingParams {
        logit_bias: vec![(4, 100.0)],
        ..params(1.0)
    };
    let mut s = SequenceSampler::new(&p, &[], 7);
    for _ in 0..200 {
        let out = s.sample(&mut [5.0, 4.0, 3.0, 2.0, 1.0]);
        assert_eq!(out.token, 4);
        assert!(out.logprob > -1e-6 && out.logprob <= 0.0);
    }
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() {
    let p = SamplingParams {
        repetition_penalty: 2.0,
        ..params(0.0)
    };
    let mut s = SequenceSampler::new(&p, &[0, 1], 0);
    let mut row = [3.0, -1.0, 2.0, 1.0];
    assert_eq!(s.sample(&mut row).token, 2);
    assert_eq!(row, [1.5, -2.0, 2.0, 1.0]);
    // Token 2 is now in the output: penalized once, however often it recurs.
    assert_eq!(s.sample(&mut [3.0, -1.0, 2.0, 1.0]).token, 0);
    let mut row = [3.0, -1.0, 2.0, 1.0];
    s.sample(&mut row);
    assert_eq!(row, [1.5, -2.0, 1.0, 1.0]);
}

#[test]
fn presence_and_frequency_penalties_follow_openai_over_output_only() {
    let p = SamplingParams {
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        ..params(0.0)
    };
    // The prompt holds token 0 many times; these penalties must ignore it.
    let mut s = SequenceSampler::new(&p, &[0, 0, 0, 0], 0);
    let base = [2.0f32, 1.9, 1.0];
    let mut row = base;
    assert_eq!(s.sample(&mut row).token, 0);
    assert_eq!(row, base);
    // Token 0 once: 2.0 - 0.25 - 0.5 = 1.25, below 1.9.
    let mut row = base;
    assert_eq!(s.sample(&mut row).token, 1);
    assert_eq!(row, [1.25, 1.9, 1.0]);
    // 0 once, 1 once.
    let mut row = base;
    s.sample(&mut row);
    assert_eq!(row, [1.25, 1.9 - 0.75, 1.0]);
}

#[test]
fn penalties_compose_after_bias_in_vllm_order() {
    // bias -> repetition -> frequency/presence: (1 + 3) / 2 - 0.5 - 1 * 0.25 = 1.25.
    let p = SamplingParams {
        logit_bias: vec![(1, 3.0)],
        repetition_penalty: 2.0,
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        ..params(0.0)
    };
    let mut s = SequenceSampler::new(&p, &[], 0);
    let mut row = [0.0, 1.0];
    assert_eq!(s.sample(&mut row).token, 1);
    let mut row = [0.0, 1.0];
    s.sample(&mut row);
    assert_eq!(row, [0.0, 1.25]);
}

#[test]
fn min_tokens_holds_back_stop_and_eos_ids() {
    let p = SamplingParams {
        min_tokens: 2,
        stop_token_ids: vec![1],
        logprobs: Some(0),
        ..params(0.0)
    };
    let mut s = SequenceSampler::new(&p, &[], 0).with_eos_token_ids(&[0]);
    let row = [9.0f32, 8.0, 1.0];
    let first = s.sample(&mut row.clone());
    assert_eq!(first.token, 2);
    assert_close(first.logprob, 0.0, "only token left");
    assert_eq!(s.sample(&mut row.clone()).token, 2);
    assert_eq!(s.sample(&mut row.clone()).token, 0);
    // ignore_eos: EOS is not a stop, so min_tokens does not mask it.
    let p = SamplingParams {
        min_tokens: 2,
        ignore_eos: true,
        ..params(0.0)
    };
    let mut s = SequenceSampler::new(&p, &[], 0).with_eos_token_ids(&[0]);
    assert_eq!(s.sample(&mut row.clone()).token, 0);
}

#[test]
fn logprobs_are_a_normalized_log_softmax_before_temperature() {
    let row = [2.0f32, -1.0, 0.5, 0.5, 3.0];
    let row64: Vec<f64> = row.iter().map(|&l| l as f64).collect();
    let lse = log_sum_exp(&row64);
    for temperature in [0.0, 0.3, 1.0, 2.5] {
        let p = SamplingParams {
            logprobs: Some(5),
            top_k: 2,
            ..params(temperature)
        };
        let out = SequenceSampler::new(&p, &[], 3).sample(&mut row.clone());
        assert_close(
            out.logprob,
            row[out.token as usize] as f64 - lse,
            "sampled logprob",
        );
        let ids: Vec<u32> = out.top_logprobs.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, [4, 0, 2, 3, 1], "descending, ties by lower id");
        for &(id, lp) in &out.top_logprobs {
            assert_close(lp, row64[id as usize] - lse, "top logprob");
        }
        let mass: f64 = out
            .top_logprobs
            .iter()
            .map(|&(_, lp)| (lp as f64).exp())
            .sum();
        assert!((mass - 1.0).abs() < 1e-5, "probabilities sum to {mass}");
    }
}

#[test]
fn top_logprobs_only_when_asked_and_the_sampled_token_always_has_one() {
    let row = [0.0f32, 1.0, 2.0, 3.0];
    let out = SequenceSampler::new(&params(1.0), &[], 1).sample(&mut row.clone());
    assert!(out.top_logprobs.is_empty());
    assert!(out.logprob.is_finite() && out.logprob < 0.0);
    // k = 1 lists only token 3; a draw of another token still carries its own logprob.
    let p = SamplingParams {
        logprobs: Some(1),
        ..params(5.0)
    };
    let mut s = SequenceSampler::new(&p, &[], 1);
    let outs: Vec<SampledToken> = (0..50).map(|_| s.sample(&mut row.clone())).collect();
    assert!(
        outs.iter()
            .all(|o| o.top_logprobs.len() == 1 && o.top_logprobs[0].0 == 3)
    );
    let other = outs
        .iter()
        .find(|o| o.token != 3)
        .expect("T = 5 spreads the draws");
    let lse = log_sum_exp(&[0.0, 1.0, 2.0, 3.0]);
    assert_close(
        other.logprob,
        other.token as f64 - lse,
        "non-top token logprob",
    );
}

#[test]
fn logprobs_stay_accurate_on_a_large_peaked_vocabulary() {
    // 50k tokens at -30 and one at +30: naive f32 exp/sum loses the tail entirely.
    let mut row = vec![-30.0f32; 50_000];
    row[123] = 30.0;
    let p = SamplingParams {
        logprobs: Some(2),
        ..params(0.0)
    };
    let out = SequenceSampler::new(&p, &[], 0).sample(&mut row);
    let lse = 30.0 + (1.0 + 49_999.0 * (-60.0f64).exp()).ln();
    assert_eq!(out.token, 123);
    assert_close(out.logprob, 30.0 - lse, "peak");
    assert_eq!(out.top_logprobs[1].0, 0, "first of the tied tail");
    assert_close(out.top_logprobs[1].1, -30.0 - lse, "tail");
}

/// Draws from `logits` under `p` and checks the histogram against `want` (the renormalized
/// distribution the truncation should leave): zero-probability tokens never appear, and the
/// chi-square statistic stays below the 99.9% quantile for the degrees of freedom.
fn assert_draws_follow(p: &SamplingParams, logits: &[f32], want: &[f64], seed: u64) {
    let n = 40_000;
    let mut s = SequenceSampler::new(p, &[], seed);
    let counts = histogram(&mut s, logits, n);
    for (id, (&c, &w)) in counts.iter().zip(want).enumerate() {
        if w == 0.0 {
            assert_eq!(
                c, 0,
                "token {id} should have been truncated, counts {counts:?}"
            );
        }
    }
    let dof = want.iter().filter(|&&w| w > 0.0).count() - 1;
    // 99.9% chi-square quantiles for 1..=7 degrees of freedom.
    let limit = [10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32][dof - 1];
    let stat = chi_square(&counts, want);
    assert!(
        stat < limit,
        "chi2 = {stat} (dof {dof}) for counts {counts:?}, want {want:?}"
    );
}

#[test]
fn draws_follow_the_softmax() {
    let logits = [1.0f32, 2.0, 0.5, -1.0, 1.5, 0.0];
    let l64: Vec<f64> = logits.iter().map(|&l| l as f64).collect();
    assert_draws_follow(&params(1.0), &logits, &softmax(&l64), 11);
    // Temperature 0.5 doubles every logit.
    let doubled: Vec<f64> = l64.iter().map(|l| l * 2.0).collect();
    assert_draws_follow(&params(0.5), &logits, &softmax(&doubled), 12);
}

#[test]
fn draws_follow_the_truncated_softmax() {
    // Probabilities 0.4, 0.3, 0.15, 0.1, 0.05 at ids 2, 4, 0, 3, 1: the kept tokens are not a
    // prefix in id order, so a draw that ignored truncation would show.
    let probs = [0.15f32, 0.05, 0.4, 0.1, 0.3];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let renorm = |keep: &[usize]| -> Vec<f64> {
        let mass: f64 = keep.iter().map(|&i| probs[i] as f64).sum();
        (0..5)
            .map(|i| {
                if keep.contains(&i) {
                    probs[i] as f64 / mass
                } else {
                    0.0
                }
            })
            .collect()
    };
    let top_k = SamplingParams {
        top_k: 3,
        ..params(1.0)
    };
    assert_draws_follow(&top_k, &logits, &renorm(&[2, 4, 0]), 21);
    // Cumulative 0.4, 0.7, 0.85: p = 0.8 keeps three tokens.
    let top_p = SamplingParams {
        top_p: 0.8,
        ..params(1.0)
    };
    assert_draws_follow(&top_p, &logits, &renorm(&[2, 4, 0]), 22);
    // min_p 0.3: bound 0.12 drops 0.1 and 0.05.
    let min_p = SamplingParams {
        min_p: 0.3,
        ..params(1.0)
    };
    assert_draws_follow(&min_p, &logits, &renorm(&[2, 4, 0]), 23);
    // top-k 4 then top-p 0.75 of (0.4, 0.3, 0.15, 0.1) / 0.95: cumulative 0.42, 0.74, 0.89.
    let both = SamplingParams {
        top_k: 4,
        top_p: 0.75,
        ..params(1.0)
    };
    assert_draws_follow(&both, &logits, &renorm(&[2, 4, 0]), 24);
    // HF order: top-p 0.55 keeps 0.4 and 0.3, then min-p 0.5 (bound 0.2) keeps both. (vLLM's
    // min-p-first order would leave 0.4 : 0.3 renormalized to 0.57 : 0.43, and top-p one token.)
    let p_then_min = SamplingParams {
        top_p: 0.55,
        min_p: 0.5,
        ..params(1.0)
    };
    assert_draws_follow(&p_then_min, &logits, &renorm(&[2, 4]), 25);
    // Temperature 0.5 squares the ratios before top-p: 0.16 : 0.09 : 0.0225 : ..., so p = 0.6
    // keeps 0.4 and 0.3, now weighted 16 : 9.
    let hot = SamplingParams {
        top_p: 0.6,
        ..params(0.5)
    };
    let want: Vec<f64> = [0.0, 0.0, 16.0 / 25.0, 0.0, 9.0 / 25.0].to_vec();
    assert_draws_follow(&hot, &logits, &want, 26);
}

#[test]
fn same_seed_same_tokens_whatever_else_is_sampled_in_between() {
    let seeded = SamplingParams {
        seed: Some(42),
        temperature: 1.3,
        top_p: 0.95,
        ..Default::default()
    };
    let row = |step: usize| -> Vec<f32> {
        (0..1000)
            .map(|i| ((i * 31 + step * 7) % 97) as f32 / 20.0)
            .collect()
    };
    let alone: Vec<u32> = {
        let mut s = SequenceSampler::new(&seeded, &[1, 2, 3], 0);
        (0..64).map(|step| s.sample(&mut row(step)).token).collect()
    };
    // Interleave with other requests (a different "batch"); the fallback seed is ignored when
    // the request brings its own.
    let mut s = SequenceSampler::new(&seeded, &[1, 2, 3], 999);
    let mut noise = SequenceSampler::new(&params(1.0), &[], 5);
    let batched: Vec<u32> = (0..64)
        .map(|step| {
            noise.sample(&mut row(step + 1));
            s.sample(&mut row(step)).token
        })
        .collect();
    assert_eq!(alone, batched);
    // Unseeded requests use the fallback seed, reproducibly.
    let run = |fallback: u64| -> Vec<u32> {
        let mut s = SequenceSampler::new(&params(1.0), &[], fallback);
        (0..64).map(|step| s.sample(&mut row(step)).token).collect()
    };
    assert_eq!(run(77), run(77));
}

#[test]
fn samplers_move_across_threads_without_changing_tokens() {
    // The engine may sample rows on worker threads; scratch buffers are per thread, results
    // must not be.
    let p = SamplingParams {
        seed: Some(5),
        top_k: 40,
        top_p: 0.9,
        ..params(0.8)
    };
    let row: Vec<f32> = (0..3000).map(|i| ((i * 17) % 101) as f32 / 25.0).collect();
    let here: Vec<u32> = {
        let mut s = SequenceSampler::new(&p, &[], 0);
        (0..16).map(|_| s.sample(&mut row.clone()).token).collect()
    };
    let mut s = SequenceSampler::new(&p, &[], 0);
    let mut there = Vec::new();
    for _ in 0..4 {
        let (moved, tokens) = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut s = s;
                    let tokens: Vec<u32> =
                        (0..4).map(|_| s.sample(&mut row.clone()).token).collect();
                    (s, tokens)
                })
                .join()
                .expect("sampling thread")
        });
        s = moved;
        there.extend(tokens);
    }
    assert_eq!(here, there);
}

#[test]
fn different_seeds_give_different_tokens() {
    let row = vec![0.0f32; 5000];
    let run = |seed: u64| -> Vec<u32> {
        let p = SamplingParams {
            seed: Some(seed),
            ..params(1.0)
        };
        let mut s = SequenceSampler::new(&p, &[], 0);
        (0..32).map(|_| s.sample(&mut row.clone()).token).collect()
    };
    assert_ne!(run(1), run(2));
    let mut a = SequenceSampler::new(&params(1.0), &[], 1);
    let mut b = SequenceSampler::new(&params(1.0), &[], 2);
    let from = |s: &mut SequenceSampler| {
        (0..32)
            .map(|_| s.sample(&mut row.clone()).token)
            .collect::<Vec<_>>()
    };
    assert_ne!(from(&mut a), from(&mut b));
}

#[test]
fn nan_and_infinite_logits_do_not_panic() {
    let p = SamplingParams {
        logprobs: Some(3),
        top_k: 2,
        top_p: 0.9,
        min_p: 0.1,
        ..params(1.0)
    };
    let mut s = SequenceSampler::new(&p, &[], 0);
    // NaN never wins; the finite maximum does.
    let out = s.sample(&mut [f32::NAN, 1.0, f32::NAN, 0.0]);
    assert!(out.token == 1 || out.token == 3);
    assert!(out.logprob.is_finite());
    // +inf dominates: both +inf tokens share the mass, nothing else is drawn.
    let mut seen = [0usize; 4];
    for _ in 0..200 {
        seen[s
            .sample(&mut [0.0, f32::INFINITY, 5.0, f32::INFINITY])
            .token as usize] += 1;
    }
    assert_eq!(seen[0] + seen[2], 0);
    assert!(seen[1] > 50 && seen[3] > 50, "{seen:?}");
    // All NaN: token 0, logprob -inf, top logprobs -inf (never NaN).
    let out = s.sample(&mut [f32::NAN; 3]);
    assert_eq!(out.token, 0);
    assert_eq!(out.logprob, f32::NEG_INFINITY);
    assert!(
        out.top_logprobs
            .iter()
            .all(|&(_, lp)| lp == f32::NEG_INFINITY)
    );
    // Empty row: token 0, no panic.
    assert_eq!(s.sample(&mut []).token, 0);
}

#[test]
fn when_masks_remove_everything_the_raw_argmax_is_used() {
    // min_tokens masks every token: the raw argmax (2) is returned, the draw is still consumed.
    let p = SamplingParams {
        min_tokens: 1,
        stop_token_ids: vec![0, 1, 2],
        ..params(1.0)
    };
    let mut s = SequenceSampler::new(&p, &[], 9);
    let out = s.sample(&mut [0.0, 1.0, 4.0]);
    assert_eq!((out.token, out.logprob), (2, f32::NEG_INFINITY));
    let mut twin = SequenceSampler::new(
        &SamplingParams {
            seed: Some(9),
            ..params(1.0)
        },
        &[],
        0,
    );
    twin.sample(&mut [0.0, 1.0, 4.0]);
    let row: Vec<f32> = (0..100).map(|i| i as f32 / 30.0).collect();
    assert_eq!(
        s.sample(&mut row.clone()).token,
        twin.sample(&mut row.clone()).token
    );
}

#[test]
fn unvalidated_parameters_do_not_panic() {
    let wild = SamplingParams {
        temperature: f32::NAN,
        top_k: usize::MAX,
        top_p: -1.0,
        min_p: 7.0,
        repetition_penalty: -3.0,
        presence_penalty: f32::NAN,
        frequency_penalty: f32::INFINITY,
        logit_bias: vec![(u32::MAX, f32::NAN), (1, f32::INFINITY)],
        logprobs: Some(usize::MAX),
        ..Default::default()
    };
    let mut s = SequenceSampler::new(&wild, &[u32::MAX, 0], 0);
    let out = s.sample(&mut [0.0, 1.0, 2.0]);
    assert_eq!(out.token, 1, "NaN temperature is greedy and +inf bias wins");
    assert_eq!(out.top_logprobs.len(), 3);
    let hot = SamplingParams {
        temperature: 1e9,
        top_p: -1.0,
        min_p: 7.0,
        ..Default::default()
    };
    let out = SequenceSampler::new(&hot, &[], 0).sample(&mut [0.0, 3.0, 2.0]);
    assert_eq!(
        out.token, 1,
        "p <= 0 and min_p > 1 still keep the best token"
    );
}

#[test]
fn draws_over_a_multi_block_vocabulary_follow_the_softmax() {
    // 1000 tokens span four draw blocks; bins of 125 do not line up with them, so a walk that
    // mis-sums or skips a block would show as a skewed bin.
    let logits: Vec<f32> = (0..1000)
        .map(|i| (i % 7) as f32 * 0.5 - (i / 250) as f32)
        .collect();
    let probs = softmax(&logits.iter().map(|&l| l as f64).collect::<Vec<_>>());
    let mut s = SequenceSampler::new(&params(1.0), &[], 31);
    let counts = histogram(&mut s, &logits, 40_000);
    let bin = |values: &[f64]| -> Vec<f64> { values.chunks(125).map(|c| c.iter().sum()).collect() };
    let binned_counts: Vec<usize> = counts.chunks(125).map(|c| c.iter().sum()).collect();
    let stat = chi_square(&binned_counts, &bin(&probs));
    // 99.9% quantile of chi-square with 7 degrees of freedom.
    assert!(stat < 24.32, "chi2 = {stat} for bins {binned_counts:?}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn logit() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => -20.0f32..20.0,
            1 => Just(f32::NAN),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(f32::INFINITY),
        ]
    }

    fn sampling_params() -> impl Strategy<Value = SamplingParams> {
        (
            (
                prop_oneof![Just(0.0f32), 0.05f32..3.0],
                0usize..12,
                0.01f32..=1.0,
                0.0f32..=1.0,
            ),
            (0.5f32..2.0, -2.0f32..2.0, -2.0f32..2.0),
            proptest::collection::vec((0u32..40, -100.0f32..100.0), 0..3),
            (any::<u64>(), proptest::option::of(0usize..=20), 0usize..3),
        )
            .prop_map(
                |((temperature, top_k, top_p, min_p), (rep, pres, freq), bias, (seed, lp, min))| {
                    SamplingParams {
                        temperature,
                        top_k,
                        top_p,
                        min_p,
                        repetition_penalty: rep,
                        presence_penalty: pres,
                        frequency_penalty: freq,
                        logit_bias: bias,
                        seed: Some(seed),
                        logprobs: lp,
                        min_tokens: min,
                        stop_token_ids: vec![0],
                        ..Default::default()
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the row and the (validated-range) parameters: the token is in the vocabulary,
        /// has positive probability whenever any token does, logprobs are never NaN or positive,
        /// and the top list is sorted best first and agrees with the sampled token's logprob.
        #[test]
        fn every_sample_is_well_formed(
            p in sampling_params(),
            prompt in proptest::collection::vec(0u32..40, 0..10),
            rows in proptest::collection::vec(proptest::collection::vec(logit(), 1..40), 1..6),
        ) {
            let mut s = SequenceSampler::new(&p, &prompt, 0);
            for row in rows {
                let mut row = row;
                let out = s.sample(&mut row);
                prop_assert!((out.token as usize) < row.len());
                prop_assert!(!out.logprob.is_nan() && out.logprob <= 1e-6);
                if row.iter().any(|&l| l > f32::NEG_INFINITY) {
                    prop_assert!(out.logprob > f32::NEG_INFINITY, "drew an impossible token");
                }
                prop_assert_eq!(out.top_logprobs.len(), p.logprobs.map_or(0, |k| k.min(row.len())));
                // Ranked by the processed logits (left in `row`); the logprobs themselves may tie
                // where f32 cannot tell `x - f32::MAX` apart for small x.
                for pair in out.top_logprobs.windows(2) {
                    let ((a, la), (b, lb)) = (pair[0], pair[1]);
                    let (ra, rb) = (row[a as usize], row[b as usize]);
                    prop_assert!(la >= lb, "unsorted {:?}", out.top_logprobs);
                    prop_assert!(ra > rb || (ra == rb && a < b), "misranked {:?}", out.top_logprobs);
                }
                for &(id, lp) in &out.top_logprobs {
                    prop_assert!(!lp.is_nan() && lp <= 1e-6);
                    prop_assert!(id != out.token || lp == out.logprob || (lp - out.logprob).abs() < 1e-6);
                }
            }
        }
    }
}
