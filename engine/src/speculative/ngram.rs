//! Prompt lookup (n-gram) drafting, as vLLM's `ngram` method: find an earlier occurrence of the
//! sequence's last `n` tokens, longest `n` first (from `prompt_lookup_max` down to
//! `prompt_lookup_min`), and propose the tokens that followed it. It costs no model, and pays
//! off when the output copies from the context (summaries, code edits, quoting).

/// Up to `k` drafts following the most recent earlier occurrence of the longest suffix of
/// `tokens` with length in `min_n..=max_n`; empty when no such suffix occurred before.
///
/// The most recent occurrence is taken (vLLM takes the first): on an output that loops or
/// quotes what it just said, the latest context predicts best, and both are valid drafts (any
/// draft is exact; only the acceptance rate depends on the choice).
pub fn propose(tokens: &[u32], min_n: usize, max_n: usize, k: usize) -> Vec<u32> {
    let len = tokens.len();
    if k == 0 || min_n == 0 {
        return Vec::new();
    }
    for n in (min_n..=max_n.min(len.saturating_sub(1))).rev() {
        let suffix = &tokens[len - n..];
        // Occurrences starting at `start` with at least one token after them, latest first.
        let found = (0..len - n)
            .rev()
            .find(|&start| &tokens[start..start + n] == suffix);
        if let Some(start) = found {
            let from = start + n;
            return tokens[from..(from + k).min(len)].to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::propose;

    #[test]
    fn proposes_what_followed_the_latest_occurrence_of_the_longest_suffix() {
        // "1 2 3" occurred at 0 (followed by 4 5) and the suffix "2 3" also at 5 (then 9).
        let tokens = [1, 2, 3, 4, 5, 2, 3, 9, 1, 2, 3];
        assert_eq!(propose(&tokens, 1, 3, 2), vec![4, 5]);
        // With n capped at 2, "2 3" is found latest at 5.
        assert_eq!(propose(&tokens, 1, 2, 2), vec![9, 1]);
    }

    #[test]
    fn nothing_without_an_earlier_occurrence_or_below_the_minimum() {
        assert!(propose(&[1, 2, 3, 4], 1, 3, 4).is_empty());
        assert!(propose(&[7, 1, 7], 2, 3, 4).is_empty());
        assert_eq!(propose(&[7, 1, 7], 1, 3, 4), vec![1, 7]);
        assert!(propose(&[], 1, 3, 4).is_empty());
        assert!(propose(&[5, 5], 1, 3, 0).is_empty());
    }

    #[test]
    fn drafts_stop_at_the_end_of_the_known_tokens() {
        // The suffix "5" occurred at 3; only one token follows before the end.
        assert_eq!(propose(&[1, 2, 3, 5, 6, 5], 1, 1, 5), vec![6, 5]);
    }
}
