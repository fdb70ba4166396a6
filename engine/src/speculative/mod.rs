//! Speculative decoding: cheap guesses of the next tokens (drafts), verified by the target model
//! in one forward pass, so that one step can deliver several tokens.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`config`] | [`SpeculativeConfig`]: `--speculative-config` (vLLM's JSON), validated at start-up |
//! | [`ngram`] | prompt lookup: drafts copied from where the latest n-gram occurred before |
//! | [`draft_model`] | a smaller model of the same tokenizer drafts greedily, from its own paged KV cache |
//! | [`rejection`] | verification: which drafts stand, with the output exactly the target's |
//! | [`stats`] | [`SpeculationStats`]: drafts, draft tokens, accepted tokens (per position) |
//!
//! How a step goes (the scheduler side is `metrum_scheduler`'s `set_draft_tokens` and
//! `update_multi`): after a request samples, the engine proposes up to `K` drafts for it; the
//! next step runs its last token and the drafts as one chunk with a logits row per position
//! (`ScheduledRequest::num_logits`); [`rejection::verify`] samples row by row and stops at the
//! first token that differs from its draft; the scheduler appends the tokens that stand and
//! rolls the rejected drafts' KV back.
//!
//! Which requests speculate: every request unless it opts out (`"speculative": false` in the
//! body) or has a grammar (structured outputs). Grammar masks would have to be computed per
//! draft position, advancing the matcher through drafts that may be rejected; serving those
//! requests without speculation is exact and simple. Logprobs and `n > 1` are served *with*
//! speculation, exactly: every token, draft-verified or not, is drawn by the request's own
//! sampler from its own logits row, which is also where its logprobs come from.

pub mod config;
pub mod draft_model;
pub mod ngram;
pub mod rejection;
pub mod stats;

pub use config::{SpeculativeConfig, SpeculativeMethod};
pub use draft_model::DraftModelProposer;
pub use stats::SpeculationStats;

/// Proposes up to `config.num_speculative_tokens` drafts to follow `tokens` (prompt, then
/// outputs), or none. `max_drafts` caps it further (e.g. room left before `max_tokens`).
/// Draft models propose for a whole batch at once instead ([`DraftModelProposer::propose`],
/// which owns the model), so here they propose nothing.
pub fn propose(config: &SpeculativeConfig, tokens: &[u32], max_drafts: usize) -> Vec<u32> {
    let k = config.num_speculative_tokens.min(max_drafts);
    match &config.method {
        SpeculativeMethod::Ngram {
            prompt_lookup_min,
            prompt_lookup_max,
        } => ngram::propose(tokens, *prompt_lookup_min, *prompt_lookup_max, k),
        SpeculativeMethod::DraftModel { .. } => Vec::new(),
    }
}
