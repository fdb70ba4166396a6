//! The softmax side of a logits row: cleaning non-finite values, the log-normalizer, the rank
//! order every tie-break uses, the k best tokens, and the top-k logprobs.

use super::vector_math::{exp_nonpositive, sum_mapped_f64};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Largest entry of a cleaned row and the lowest id holding it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RowMax {
    pub token: u32,
    pub logit: f32,
}

/// NaN becomes `-inf` (an undefined score never wins) and `+inf` becomes `f32::MAX`, so the
/// `logit - max` differences below never compute `inf - inf`. Several `+inf` entries therefore
/// tie at the top and share the probability evenly, which is the limit softmax tends to.
#[inline]
fn clean(logit: f32) -> f32 {
    if logit.is_nan() {
        f32::NEG_INFINITY
    } else {
        logit.min(f32::MAX)
    }
}

/// Cleans a row in place (see [`clean`]) and returns its maximum, lowest id first on ties like
/// torch.argmax; `None` when every entry is `-inf`, i.e. no token has any probability.
///
/// Eight independent running maxima (one per lane) let the pass vectorize; each lane keeps its
/// lowest index by taking only strictly greater values, and the lanes merge by value then index.
pub(crate) fn clean_and_max(logits: &mut [f32]) -> Option<RowMax> {
    const LANES: usize = 8;
    let tail_base = (logits.len() - logits.len() % LANES) as u32;
    let mut best = [f32::NEG_INFINITY; LANES];
    let mut best_at = [0u32; LANES];
    let mut chunks = logits.chunks_exact_mut(LANES);
    for (chunk_index, chunk) in (&mut chunks).enumerate() {
        let base = (chunk_index * LANES) as u32;
        for lane in 0..LANES {
            let value = clean(chunk[lane]);
            chunk[lane] = value;
            let better = value > best[lane];
            best[lane] = if better { value } else { best[lane] };
            best_at[lane] = if better {
                base + lane as u32
            } else {
                best_at[lane]
            };
        }
    }
    let remainder = chunks.into_remainder();
    let mut winner: Option<RowMax> = None;
    let mut consider = |logit: f32, token: u32| {
        let better = match winner {
            None => logit > f32::NEG_INFINITY,
            Some(w) => logit > w.logit || (logit == w.logit && token < w.token),
        };
        if better {
            winner = Some(RowMax { token, logit });
        }
    };
    for (&logit, &token) in best.iter().zip(&best_at) {
        consider(logit, token);
    }
    for (offset, logit) in remainder.iter_mut().enumerate() {
        *logit = clean(*logit);
        consider(*logit, tail_base + offset as u32);
    }
    winner
}

/// `log(sum(exp(logits)))`, computed stably around the row maximum and summed in f64 so a
/// 150k-entry sum of small terms loses nothing.
pub(crate) fn log_normalizer(logits: &[f32], max: f32) -> f32 {
    log_normalizer_from_sum(max, sum_mapped_f64(logits, |l| exp_nonpositive(l - max)))
}

/// The log-normalizer from `sum(exp(logit - max))` when a caller already has that sum.
pub(crate) fn log_normalizer_from_sum(max: f32, sum: f64) -> f32 {
    // `sum >= 1` because the maximum contributes exp(0).
    (max as f64 + sum.ln()) as f32
}

/// The order every selection uses: higher logit first, and on equal logits the lower id first.
/// It is total on cleaned rows (no NaN), so top-k / top-p sets and their tie-breaks do not depend
/// on the algorithm or on the order candidates arrive in.
pub(crate) fn rank_order(logits: &[f32]) -> impl Fn(&u32, &u32) -> Ordering + '_ {
    move |&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    }
}

/// A token as a heap key: greater means better ranked (higher logit, then lower id).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Ranked {
    logit: f32,
    token: u32,
}

impl Eq for Ranked {}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.logit
            .total_cmp(&other.logit)
            .then(other.token.cmp(&self.token))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The `k` best-ranked tokens of a cleaned row, best first, written into `out`.
///
/// One pass with a bounded min-heap: once `k` tokens are held, a token enters only with a logit
/// strictly above the worst held (ids grow during the scan, so an equal logit ranks lower), which
/// is a single comparison for almost every token. O(V log k) at worst, versus a selection over
/// the whole vocabulary with indirect comparisons.
pub(crate) fn best_k(logits: &[f32], k: usize, out: &mut Vec<u32>) {
    out.clear();
    if k == 0 {
        return;
    }
    let mut heap: BinaryHeap<Reverse<Ranked>> = BinaryHeap::with_capacity(k.min(logits.len()));
    let mut worst = f32::NEG_INFINITY;
    for (token, &logit) in logits.iter().enumerate() {
        if heap.len() < k {
            heap.push(Reverse(Ranked {
                logit,
                token: token as u32,
            }));
            worst = heap.peek().map_or(worst, |r| r.0.logit);
        } else if logit > worst {
            if let Some(mut top) = heap.peek_mut() {
                *top = Reverse(Ranked {
                    logit,
                    token: token as u32,
                });
            }
            worst = heap.peek().map_or(worst, |r| r.0.logit);
        }
    }
    // Ascending `Reverse` order is descending rank: best first.
    out.extend(heap.into_sorted_vec().into_iter().map(|r| r.0.token));
}

/// The `k` most likely tokens with their logprobs, best first, lower id first on ties.
pub(crate) fn top_logprobs(
    logits: &[f32],
    log_norm: f32,
    k: usize,
    scratch: &mut Vec<u32>,
) -> Vec<(u32, f32)> {
    best_k(logits, k, scratch);
    scratch
        .iter()
        .map(|&id| (id, logprob(logits[id as usize], log_norm)))
        .collect()
}

/// `logit - log_norm`, except that a row with no probability anywhere (`log_norm = -inf`)
/// reports `-inf` for every token instead of `-inf - -inf = NaN`.
fn logprob(logit: f32, log_norm: f32) -> f32 {
    if log_norm == f32::NEG_INFINITY {
        f32::NEG_INFINITY
    } else {
        logit - log_norm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_maps_nan_and_infinities_and_argmax_prefers_lower_id() {
        let mut row = [f32::NAN, 2.0, f32::NEG_INFINITY, 2.0];
        assert_eq!(
            clean_and_max(&mut row),
            Some(RowMax {
                token: 1,
                logit: 2.0
            })
        );
        assert_eq!(row[0], f32::NEG_INFINITY);
        let mut row = [0.0, f32::INFINITY, f32::INFINITY];
        assert_eq!(
            clean_and_max(&mut row),
            Some(RowMax {
                token: 1,
                logit: f32::MAX
            })
        );
        let mut row = [f32::NAN, f32::NEG_INFINITY];
        assert_eq!(clean_and_max(&mut row), None);
        assert_eq!(clean_and_max(&mut []), None);
    }

    #[test]
    fn argmax_across_lanes_and_tail_matches_a_plain_scan() {
        for len in [1usize, 7, 8, 9, 17, 100, 1003] {
            for modulus in [3u32, 7, 50, 1000] {
                let mut row: Vec<f32> = (0..len as u32)
                    .map(|i| ((i * 7919 + 13) % modulus) as f32)
                    .collect();
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let first = row.iter().position(|&l| l == max).unwrap() as u32;
                assert_eq!(
                    clean_and_max(&mut row),
                    Some(RowMax {
                        token: first,
                        logit: max
                    })
                );
            }
        }
    }

    #[test]
    fn log_normalizer_is_stable_for_huge_logits() {
        // Naive exp(1000) overflows; log(2 e^1000) = 1000 + ln 2.
        let lse = log_normalizer(&[1000.0, 1000.0, f32::NEG_INFINITY], 1000.0);
        assert!((lse - (1000.0 + 2f32.ln())).abs() < 1e-3);
        // Two tied f32::MAX entries (cleaned +inf) must not overflow to inf or NaN.
        let lse = log_normalizer(&[f32::MAX, f32::MAX, 0.0], f32::MAX);
        assert!(lse.is_finite());
    }

    #[test]
    fn best_k_sorts_with_id_tie_break_whatever_the_input_order() {
        let logits = [1.0, 3.0, 3.0, 0.0, 2.0, 3.0];
        let mut out = Vec::new();
        best_k(&logits, 4, &mut out);
        assert_eq!(out, [1, 2, 5, 4]);
        best_k(&logits, 10, &mut out);
        assert_eq!(out, [1, 2, 5, 4, 0, 3]);
        best_k(&logits, 0, &mut out);
        assert!(out.is_empty());
        // Ascending rows make every token enter the heap: still exact.
        let rising: Vec<f32> = (0..500).map(|i| (i / 3) as f32).collect();
        best_k(&rising, 5, &mut out);
        assert_eq!(out, [498, 499, 495, 496, 497]);
    }
}
