//! Logits processors that change which token greedy decoding would pick: logit bias,
//! min-tokens suppression of stop ids, and the repetition / presence / frequency penalties.
//!
//! They all touch a handful of entries, never the whole vocabulary, and ids outside the row
//! (a bias on an id past the vocabulary, a prompt token from another tokenizer) are ignored
//! rather than trusted: the row length is the only vocabulary size the sampler knows.

use std::collections::HashMap;

/// Adds each `(token, bias)` to its logit, as OpenAI's `logit_bias` does. A token listed twice
/// gets both biases.
pub(crate) fn apply_logit_bias(logits: &mut [f32], bias: &[(u32, f32)]) {
    for &(token, b) in bias {
        if let Some(logit) = logits.get_mut(token as usize) {
            *logit += b;
        }
    }
}

/// Masks `tokens` to `-inf` so they cannot be sampled (vLLM's `MinTokensLogitsProcessor`).
pub(crate) fn suppress(logits: &mut [f32], tokens: &[u32]) {
    for &token in tokens {
        if let Some(logit) = logits.get_mut(token as usize) {
            *logit = f32::NEG_INFINITY;
        }
    }
}

/// What the penalties need to remember about one request: which tokens its prompt holds and
/// how often each token has been generated so far.
#[derive(Clone, Debug)]
pub(crate) struct Penalties {
    repetition: f32,
    presence: f32,
    frequency: f32,
    /// Distinct prompt tokens, sorted so output tokens can be looked up by binary search.
    /// Empty unless the repetition penalty is active (only it looks at the prompt).
    prompt_tokens: Vec<u32>,
    /// Generated token -> times generated. Sparse: a request generates far fewer distinct
    /// tokens than the vocabulary holds, and a vocabulary-sized array per request would cost
    /// hundreds of KiB for each of hundreds of concurrent requests.
    output_counts: HashMap<u32, u32>,
}

impl Penalties {
    /// Out-of-domain values (which `SamplingParams::validate` rejects upstream) become neutral
    /// here instead of poisoning the logits: a repetition penalty that is not a positive
    /// finite number acts as 1, a non-finite additive penalty as 0.
    pub(crate) fn new(repetition: f32, presence: f32, frequency: f32, prompt: &[u32]) -> Penalties {
        let repetition = if repetition.is_finite() && repetition > 0.0 {
            repetition
        } else {
            1.0
        };
        let finite_or_zero = |v: f32| if v.is_finite() { v } else { 0.0 };
        let mut prompt_tokens = Vec::new();
        if repetition != 1.0 {
            prompt_tokens.extend_from_slice(prompt);
            prompt_tokens.sort_unstable();
            prompt_tokens.dedup();
        }
        Penalties {
            repetition,
            presence: finite_or_zero(presence),
            frequency: finite_or_zero(frequency),
            prompt_tokens,
            output_counts: HashMap::new(),
        }
    }

    /// True when no penalty would change any logit, so nothing needs remembering.
    pub(crate) fn is_neutral(&self) -> bool {
        self.repetition == 1.0 && self.presence == 0.0 && self.frequency == 0.0
    }

    /// Counts one generated token.
    pub(crate) fn record(&mut self, token: u32) {
        if !self.is_neutral() {
            *self.output_counts.entry(token).or_insert(0) += 1;
        }
    }

    /// Applies the penalties in vLLM's order (`apply_penalties` in
    /// `vllm/model_executor/layers/utils.py`):
    /// 1. repetition (HF `RepetitionPenaltyLogitsProcessor`, CTRL paper): for every token seen
    ///    in the prompt or the output, a positive logit is divided by the penalty and any other
    ///    logit multiplied by it, once per token however often it was seen;
    /// 2. frequency and presence (OpenAI): `logit -= frequency * count + presence * (count > 0)`
    ///    over output tokens only.
    pub(crate) fn apply(&self, logits: &mut [f32]) {
        if self.repetition != 1.0 {
            for &token in &self.prompt_tokens {
                penalize_repetition(logits, token, self.repetition);
            }
            for &token in self.output_counts.keys() {
                if self.prompt_tokens.binary_search(&token).is_err() {
                    penalize_repetition(logits, token, self.repetition);
                }
            }
        }
        if self.presence != 0.0 || self.frequency != 0.0 {
            for (&token, &count) in &self.output_counts {
                if let Some(logit) = logits.get_mut(token as usize) {
                    *logit -= self.frequency * count as f32 + self.presence;
                }
            }
        }
    }
}

fn penalize_repetition(logits: &mut [f32], token: u32, penalty: f32) {
    if let Some(logit) = logits.get_mut(token as usize) {
        // `> 0` as in vLLM and HF: a logit of exactly zero is multiplied, which leaves it zero.
        if *logit > 0.0 {
            *logit /= penalty;
        } else {
            *logit *= penalty;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_counts_each_token_once_across_prompt_and_output() {
        let mut p = Penalties::new(2.0, 0.0, 0.0, &[1, 1, 2]);
        p.record(1);
        p.record(3);
        p.record(3);
        let mut logits = [4.0, 4.0, -4.0, 4.0, 4.0];
        p.apply(&mut logits);
        // 1 (prompt + output) and 3 (output twice) are divided once; 2 (negative) is multiplied.
        assert_eq!(logits, [4.0, 2.0, -8.0, 2.0, 4.0]);
    }

    #[test]
    fn presence_and_frequency_only_look_at_output() {
        let mut p = Penalties::new(1.0, 0.5, 0.25, &[0, 0, 0]);
        p.record(2);
        p.record(2);
        p.record(2);
        p.record(1);
        let mut logits = [1.0, 1.0, 1.0];
        p.apply(&mut logits);
        assert_eq!(logits, [1.0, 1.0 - 0.25 - 0.5, 1.0 - 0.75 - 0.5]);
    }

    #[test]
    fn neutral_penalties_remember_nothing_and_bad_values_are_neutral() {
        let mut p = Penalties::new(1.0, 0.0, 0.0, &[0, 1]);
        p.record(0);
        assert!(p.output_counts.is_empty() && p.prompt_tokens.is_empty());
        let p = Penalties::new(f32::NAN, f32::INFINITY, f32::NAN, &[0]);
        assert!(p.is_neutral());
    }

    #[test]
    fn out_of_vocabulary_ids_are_ignored() {
        let mut logits = [0.0, 0.0];
        apply_logit_bias(&mut logits, &[(7, 5.0), (1, 3.0), (1, 1.0)]);
        suppress(&mut logits, &[9]);
        assert_eq!(logits, [0.0, 4.0]);
        let mut p = Penalties::new(2.0, 1.0, 1.0, &[100]);
        p.record(50);
        p.apply(&mut logits);
        assert_eq!(logits, [0.0, 4.0]);
    }
}

/// A grammar's mask (`structured`): every token whose bit is clear, or past the mask's end,
/// becomes `-inf`.
pub(super) fn apply_token_mask(logits: &mut [f32], allowed: &[u32]) {
    for (word_index, chunk) in logits.chunks_mut(32).enumerate() {
        let word = allowed.get(word_index).copied().unwrap_or(0);
        if word == u32::MAX {
            continue;
        }
        for (bit, logit) in chunk.iter_mut().enumerate() {
            if word & (1 << bit) == 0 {
                *logit = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod mask_tests {
    use super::apply_token_mask;

    #[test]
    fn only_allowed_ids_keep_their_logits_and_ids_past_the_mask_are_dropped() {
        let mut logits = vec![1.0_f32; 70];
        // Word 0 allows ids 1 and 31; word 1 allows id 32; ids 64.. are past the mask.
        apply_token_mask(&mut logits, &[(1 << 1) | (1 << 31), 1]);
        let kept: Vec<usize> = (0..70).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(kept, vec![1, 31, 32]);
    }
}
