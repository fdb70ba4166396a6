//! Counters of speculative decoding, with the meaning of vLLM's
//! `vllm:spec_decode_num_drafts`, `..._num_draft_tokens`, `..._num_accepted_tokens` and
//! `..._num_accepted_tokens_per_pos`.

/// Totals over a request (its `metrum` object) or over the server's life.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpeculationStats {
    /// Verification steps with at least one draft token.
    pub num_drafts: u64,
    /// Draft tokens proposed and verified.
    pub num_draft_tokens: u64,
    /// Draft tokens accepted (not counting the token sampled after the last accepted draft).
    pub num_accepted_tokens: u64,
    /// `accepted_per_position[i]`: drafts at position `i` (0-based) accepted.
    pub accepted_per_position: Vec<u64>,
}

impl SpeculationStats {
    /// Records one verification of `drafted` drafts of which the first `accepted` stood.
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.num_drafts += 1;
        self.num_draft_tokens += drafted as u64;
        self.num_accepted_tokens += accepted as u64;
        if self.accepted_per_position.len() < accepted {
            self.accepted_per_position.resize(accepted, 0);
        }
        for slot in &mut self.accepted_per_position[..accepted] {
            *slot += 1;
        }
    }

    /// Mean tokens delivered per verification step: 1 + accepted drafts per draft (vLLM's
    /// "mean acceptance length"); `None` before any draft.
    pub fn mean_acceptance_length(&self) -> Option<f64> {
        (self.num_drafts > 0)
            .then(|| 1.0 + self.num_accepted_tokens as f64 / self.num_drafts as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::SpeculationStats;

    #[test]
    fn counts_drafts_tokens_and_positions() {
        let mut s = SpeculationStats::default();
        assert_eq!(s.mean_acceptance_length(), None);
        s.record(3, 2);
        s.record(3, 0);
        s.record(0, 0);
        s.record(2, 2);
        assert_eq!(s.num_drafts, 3);
        assert_eq!(s.num_draft_tokens, 8);
        assert_eq!(s.num_accepted_tokens, 4);
        assert_eq!(s.accepted_per_position, vec![2, 2]);
        assert_eq!(s.mean_acceptance_length(), Some(1.0 + 4.0 / 3.0));
    }
}
