//! Verification of draft tokens, exact in distribution.
//!
//! The rejection-sampling rule (Leviathan et al. 2023, Chen et al. 2023) accepts a draft `d`
//! drawn from the draft distribution `q` with probability `min(1, p(d) / q(d))`, `p` being the
//! target's distribution at that position, and on rejection draws from `norm(max(0, p - q))`;
//! after `j` accepted drafts the target's row `j` gives one more token. The output is then
//! distributed exactly as the target's.
//!
//! Every draft Metrum proposes is a point mass (`q = δ_d`: n-gram lookup is deterministic).
//! The rule then reads: accept `d` with probability `p(d)`; on rejection draw from `p` with `d`
//! removed and renormalised. One draw `x ~ p` with "accept iff `x == d`, else emit `x`" has
//! exactly that law (`P(x = d) = p(d)`, and `x` given `x != d` is `p` without `d`,
//! renormalised). So verification is: sample each row with the request's own sampler (every
//! processor, penalty, truncation and seed applies as without speculation), stop at the first
//! token that differs from its draft. Greedy requests get "accept iff argmax == draft".

use crate::sampling::SampledToken;

/// Samples rows `0..=drafts.len()` in order with `sample_row` (row `i` is the target's
/// distribution after the first `i` drafts) and returns the tokens that stand: the drafts
/// accepted, then the first sampled token that is not its draft, or the token after the last
/// draft. Rows after the first mismatch are never sampled (they were conditioned on a wrong
/// token), so the sampler's state (penalties, RNG) records exactly the tokens returned.
pub fn verify(
    drafts: &[u32],
    mut sample_row: impl FnMut(usize) -> SampledToken,
) -> Vec<SampledToken> {
    let mut out = Vec::with_capacity(drafts.len() + 1);
    for row in 0..=drafts.len() {
        let token = sample_row(row);
        let stands_as_draft = drafts.get(row) == Some(&token.token);
        out.push(token);
        if !stands_as_draft {
            break;
        }
    }
    out
}

/// Drafts accepted among `tokens` returned by [`verify`] for `num_drafts` drafts.
pub fn num_accepted(tokens: usize, num_drafts: usize) -> usize {
    tokens.saturating_sub(1).min(num_drafts)
}

#[cfg(test)]
mod tests {
    use super::{num_accepted, verify};
    use crate::sampling::SampledToken;

    fn tok(token: u32) -> SampledToken {
        SampledToken {
            token,
            logprob: 0.0,
            top_logprobs: Vec::new(),
        }
    }

    #[test]
    fn stops_at_the_first_mismatch_and_never_samples_past_it() {
        let targets = [5, 6, 9, 1];
        let mut sampled_rows = Vec::new();
        let out = verify(&[5, 6, 7], |row| {
            sampled_rows.push(row);
            tok(targets[row])
        });
        let got: Vec<u32> = out.iter().map(|t| t.token).collect();
        assert_eq!(got, vec![5, 6, 9]);
        assert_eq!(sampled_rows, vec![0, 1, 2]);
        assert_eq!(num_accepted(out.len(), 3), 2);
    }

    #[test]
    fn all_drafts_accepted_give_one_more_token_and_no_drafts_one_token() {
        let out = verify(&[1, 2], |row| tok([1, 2, 3][row]));
        assert_eq!(
            out.iter().map(|t| t.token).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(num_accepted(out.len(), 2), 2);
        let out = verify(&[], |_| tok(4));
        assert_eq!(out.len(), 1);
        assert_eq!(num_accepted(out.len(), 0), 0);
    }
}
