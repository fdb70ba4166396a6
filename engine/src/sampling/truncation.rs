//! Random sampling: temperature, then top-k, top-p and min-p truncation (Hugging Face's warper
//! order), then one draw from the renormalized distribution.
//!
//! Every filter keeps a prefix of the [`rank_order`], so the kept set is described by a
//! [`KeepRule`] (a cutoff in rank order plus a minimum weight). Truncation zeroes the weights of
//! dropped tokens in place, and the draw walks block sums and then one block, in id order.

use super::distribution::{RowMax, best_k, rank_order};
use super::vector_math::{exp_nonpositive, sum_mapped_f64};
use rand::Rng;
use rand::rngs::StdRng;

/// The random-sampling knobs of one request, already clamped to values that cannot misbehave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Truncation {
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// In [0, 1]; 1 disables top-p.
    pub top_p: f32,
    /// In [0, 1]; 0 disables min-p.
    pub min_p: f32,
}

/// Which tokens survive truncation. A token is kept when its weight is positive and at least
/// `min_weight`, and it ranks no lower than the cutoff: its logit is above `cutoff_logit`, or
/// equal to it with an id no higher than `cutoff_id`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct KeepRule {
    cutoff_logit: f32,
    cutoff_id: u32,
    min_weight: f32,
}

impl KeepRule {
    const KEEP_ALL: KeepRule = KeepRule {
        cutoff_logit: f32::NEG_INFINITY,
        cutoff_id: u32::MAX,
        min_weight: 0.0,
    };

    #[inline]
    fn keeps(&self, id: u32, logit: f32, weight: f32) -> bool {
        weight > 0.0
            && weight >= self.min_weight
            && (logit > self.cutoff_logit || (logit == self.cutoff_logit && id <= self.cutoff_id))
    }
}

/// Writes `exp((logit - max) / temperature)` for every token into `weights` and returns their
/// sum: the unnormalized tempered distribution. The maximum gets weight exactly 1.
pub(crate) fn tempered_weights(
    logits: &[f32],
    max: f32,
    temperature: f32,
    weights: &mut Vec<f32>,
) -> f64 {
    weights.clear();
    weights.resize(logits.len(), 0.0);
    for (weight, &logit) in weights.iter_mut().zip(logits) {
        *weight = exp_nonpositive((logit - max) / temperature);
    }
    sum_mapped_f64(weights, |w| w)
}

/// Computes the kept set for `trunc` over a cleaned row whose tempered weights are `weights`
/// (summing to `total`). `ranked` is scratch for candidate ids.
pub(crate) fn keep_rule(
    logits: &[f32],
    weights: &[f32],
    total: f64,
    max: RowMax,
    trunc: &Truncation,
    ranked: &mut Vec<u32>,
) -> KeepRule {
    let mut rule = KeepRule::KEEP_ALL;
    if trunc.top_k > 0 && trunc.top_k < logits.len() {
        best_k(logits, trunc.top_k, ranked);
        // Every token tied with the k-th logit stays, as in HF (`scores < topk(...)[-1]`) and
        // vLLM (`logits_sort < kth`): top-k never splits a tie.
        rule.cutoff_logit = ranked
            .last()
            .map_or(f32::NEG_INFINITY, |&id| logits[id as usize]);
    }
    if trunc.top_p < 1.0 {
        let cutoff = nucleus_cutoff(
            logits,
            weights,
            total,
            rule.cutoff_logit,
            trunc.top_p,
            ranked,
        );
        rule.cutoff_logit = logits[cutoff as usize];
        rule.cutoff_id = cutoff;
    }
    // p_i < min_p * p_max  <=>  w_i < min_p * w_max, and the row maximum has w_max = 1. Top-k
    // and top-p always keep the maximum, so renormalizing after them does not move this bound.
    rule.min_weight = trunc.min_p;
    debug_assert!(rule.keeps(max.token, max.logit, weights[max.token as usize]));
    rule
}

/// The last token, in rank order, of the smallest prefix of the tokens at or above `floor_logit`
/// whose weight reaches `top_p` of theirs (HF `TopPLogitsWarper` / vLLM `apply_top_k_top_p`: a
/// token stays when the mass ranked strictly before it is below `top_p`, so the first always
/// stays).
///
/// Only plausible members are sorted. Of `n` tokens with mass `m`, those with weight below
/// `(1 - p) m / n` together weigh less than `(1 - p) m`, and every token ranked after one of them
/// is no heavier, so each of them has at least `p m` ranked before it and is dropped. The rest
/// is sorted in growing chunks (selection, then a sort of the chunk), so a peaked distribution
/// costs a few short passes, not a sort of the vocabulary.
fn nucleus_cutoff(
    logits: &[f32],
    weights: &[f32],
    total: f64,
    floor_logit: f32,
    top_p: f32,
    candidates: &mut Vec<u32>,
) -> u32 {
    let in_floor = |id: usize| logits[id] >= floor_logit && weights[id] > 0.0;
    let (count, mass) = if floor_logit == f32::NEG_INFINITY {
        (logits.len(), total)
    } else {
        (0..logits.len())
            .filter(|&id| in_floor(id))
            .fold((0, 0.0f64), |(n, m), id| (n + 1, m + weights[id] as f64))
    };
    let plausible = ((1.0 - top_p as f64) * mass / count.max(1) as f64) as f32;
    candidates.clear();
    candidates.extend(
        (0..logits.len())
            .filter(|&id| in_floor(id) && weights[id] >= plausible)
            .map(|id| id as u32),
    );

    let order = rank_order(logits);
    let target = top_p as f64 * mass;
    let len = candidates.len();
    let mut sorted = 0;
    let mut running = 0.0f64;
    while sorted < len {
        let chunk_end = (sorted * 4).max(64).min(len);
        let rest = &mut candidates[sorted..];
        if chunk_end < len {
            rest.select_nth_unstable_by(chunk_end - sorted - 1, &order);
        }
        rest[..chunk_end - sorted].sort_unstable_by(&order);
        for &id in &candidates[sorted..chunk_end] {
            running += weights[id as usize] as f64;
            if running >= target {
                return id;
            }
        }
        sorted = chunk_end;
    }
    // Rounding kept the running sum just under `target`: every candidate stays.
    candidates.last().copied().unwrap_or(0)
}

/// Zeroes the weight of every token the rule drops.
pub(crate) fn apply_rule(logits: &[f32], weights: &mut [f32], rule: &KeepRule) {
    if *rule == KeepRule::KEEP_ALL {
        return;
    }
    for (id, (&logit, weight)) in logits.iter().zip(weights.iter_mut()).enumerate() {
        if !rule.keeps(id as u32, logit, *weight) {
            *weight = 0.0;
        }
    }
}

/// Tokens per block of the draw's two-level walk.
const DRAW_BLOCK: usize = 256;

/// Draws one token with probability proportional to its weight, taking exactly one value from
/// `rng`. The walk is in id order (block sums first, then inside one block), so the mapping from
/// the random value to a token is fixed. `block_sums` is scratch.
pub(crate) fn draw(weights: &[f32], block_sums: &mut Vec<f64>, rng: &mut StdRng) -> u32 {
    block_sums.clear();
    block_sums.extend(
        weights
            .chunks(DRAW_BLOCK)
            .map(|block| sum_mapped_f64(block, |w| w)),
    );
    let total: f64 = block_sums.iter().sum();
    let mut target = rng.random::<f64>() * total;
    // Rounding can leave `target` at or past the last running sum; then the last block (and the
    // last token) with weight is taken.
    let mut block = block_sums.iter().rposition(|&s| s > 0.0).unwrap_or(0);
    for (index, &sum) in block_sums.iter().enumerate() {
        if target < sum {
            block = index;
            break;
        }
        target -= sum;
    }
    let start = block * DRAW_BLOCK;
    let block_weights = &weights[start..weights.len().min(start + DRAW_BLOCK)];
    let mut running = 0.0f64;
    let mut last_positive = 0;
    for (offset, &weight) in block_weights.iter().enumerate() {
        if weight > 0.0 {
            running += weight as f64;
            if running > target {
                return (start + offset) as u32;
            }
            last_positive = offset;
        }
    }
    (start + last_positive) as u32
}

#[cfg(test)]
mod tests {
    use super::super::distribution::clean_and_max;
    use super::*;

    fn kept(logits: &[f32], trunc: Truncation) -> Vec<u32> {
        let mut row = logits.to_vec();
        let max = clean_and_max(&mut row).expect("a finite entry");
        let mut weights = Vec::new();
        let total = tempered_weights(&row, max.logit, trunc.temperature, &mut weights);
        let rule = keep_rule(&row, &weights, total, max, &trunc, &mut Vec::new());
        apply_rule(&row, &mut weights, &rule);
        (0..row.len() as u32)
            .filter(|&id| weights[id as usize] > 0.0)
            .collect()
    }

    fn trunc(top_k: usize, top_p: f32, min_p: f32) -> Truncation {
        Truncation {
            temperature: 1.0,
            top_k,
            top_p,
            min_p,
        }
    }

    /// Logits whose softmax is exactly the given probabilities.
    fn logits_of(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn top_k_keeps_ties_with_the_kth_logit() {
        let row = [1.0, 5.0, 3.0, 3.0, 0.0];
        assert_eq!(kept(&row, trunc(1, 1.0, 0.0)), [1]);
        assert_eq!(kept(&row, trunc(2, 1.0, 0.0)), [1, 2, 3]);
        assert_eq!(kept(&row, trunc(4, 1.0, 0.0)), [0, 1, 2, 3]);
        assert_eq!(kept(&row, trunc(99, 1.0, 0.0)), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_p() {
        // Probabilities 0.5, 0.25, 0.15, 0.1 at ids 2, 0, 3, 1.
        let row = logits_of(&[0.25, 0.1, 0.5, 0.15]);
        assert_eq!(kept(&row, trunc(0, 0.45, 0.0)), [2]);
        assert_eq!(kept(&row, trunc(0, 0.7, 0.0)), [0, 2]);
        assert_eq!(kept(&row, trunc(0, 0.8, 0.0)), [0, 2, 3]);
        assert_eq!(kept(&row, trunc(0, 0.95, 0.0)), [0, 1, 2, 3]);
        // Never empty, however small p is.
        assert_eq!(kept(&row, trunc(0, 1e-9, 0.0)), [2]);
    }

    #[test]
    fn top_p_applies_to_the_distribution_left_by_top_k() {
        // After top-2 the mass is 0.5 : 0.25, i.e. 2/3 : 1/3; p = 0.7 needs both.
        let row = logits_of(&[0.25, 0.1, 0.5, 0.15]);
        assert_eq!(kept(&row, trunc(2, 0.7, 0.0)), [0, 2]);
        assert_eq!(kept(&row, trunc(2, 0.6, 0.0)), [2]);
    }

    #[test]
    fn top_p_splits_ties_by_lower_id() {
        let row = [0.0; 4];
        assert_eq!(kept(&row, trunc(0, 0.5, 0.0)), [0, 1]);
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_top_probability() {
        let row = logits_of(&[0.25, 0.1, 0.5, 0.15]);
        // Bound 0.29 * 0.5 = 0.145: 0.15 stays, 0.1 goes; 0.31 * 0.5 = 0.155 drops 0.15 too.
        assert_eq!(kept(&row, trunc(0, 1.0, 0.29)), [0, 2, 3]);
        assert_eq!(kept(&row, trunc(0, 1.0, 0.31)), [0, 2]);
        assert_eq!(kept(&row, trunc(0, 1.0, 0.51)), [2]);
        // min_p = 1 keeps exactly the tokens tied at the top.
        assert_eq!(kept(&[2.0, 1.0, 2.0], trunc(0, 1.0, 1.0)), [0, 2]);
    }

    #[test]
    fn temperature_reshapes_what_top_p_keeps() {
        // T = 0.5 squares the ratios: 0.5 and 0.25 become 0.8 and 0.2 of the top two.
        let row = logits_of(&[0.25, 0.1, 0.5, 0.15]);
        let t = Truncation {
            temperature: 0.5,
            top_k: 0,
            top_p: 0.6,
            min_p: 0.0,
        };
        assert_eq!(kept(&row, t), [2]);
        assert_eq!(kept(&row, trunc(0, 0.6, 0.0)), [0, 2]);
    }

    #[test]
    fn nucleus_over_a_large_vocabulary_matches_a_full_sort() {
        // Enough candidates to need several chunks; compare with the obvious full-sort answer.
        let row: Vec<f32> = (0..5000u32)
            .map(|i| ((i * 7919) % 5000) as f32 / 700.0)
            .collect();
        for p in [0.1f32, 0.5, 0.9, 0.99] {
            let got = kept(&row, trunc(0, p, 0.0));
            let max = row.iter().cloned().fold(f32::MIN, f32::max);
            let weights: Vec<f64> = row.iter().map(|&l| ((l - max) as f64).exp()).collect();
            let total: f64 = weights.iter().sum();
            let mut ids: Vec<u32> = (0..5000).collect();
            ids.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            let mut mass = 0.0;
            let mut want = Vec::new();
            for id in ids {
                want.push(id);
                mass += weights[id as usize];
                if mass >= p as f64 * total {
                    break;
                }
            }
            want.sort();
            assert_eq!(got, want, "top_p = {p}");
        }
    }
}
