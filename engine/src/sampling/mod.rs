//! Turning one row of logits into one token, per request.
//!
//! The engine keeps one [`SequenceSampler`] per request for the request's whole life and calls
//! [`SequenceSampler::sample`] once per step with that request's vocabulary-sized logits row.
//! Rows are independent: a request's tokens depend only on its own logits, parameters and seed,
//! never on which other requests share the batch or in which order rows are sampled.
//!
//! # Pipeline, in order
//!
//! 0. With a grammar ([`SequenceSampler::sample_masked`], `structured`), every token the
//!    grammar disallows becomes `-inf`, before anything else: bias cannot resurrect a token
//!    the grammar forbids, and the logprobs describe the constrained distribution.
//! 1. Clean the row: NaN becomes `-inf`, `+inf` becomes `f32::MAX` (`distribution.rs`). This is
//!    repeated after steps 2-4, whose arithmetic can overflow; with no processor active the
//!    first pass is skipped, as it would find nothing the second does not.
//! 2. While fewer than `min_tokens` tokens were sampled, mask `stop_token_ids` and the EOS ids
//!    given to [`SequenceSampler::with_eos_token_ids`] (unless `ignore_eos`) to `-inf`.
//! 3. Add `logit_bias`.
//! 4. Penalties in vLLM's order: repetition (prompt and output), then frequency and presence
//!    (output only) (`processors.rs`).
//! 5. **Logprobs are taken here**, from the log-softmax of the processed row.
//! 6. Greedy (`temperature < 1e-5`, vLLM's epsilon): argmax, lowest id on ties. Otherwise divide by
//!    the temperature, then top-k, top-p, min-p (Hugging Face's warper order), and draw from the
//!    renormalized rest with exactly one value from the request's RNG (`truncation.rs`).
//!
//! # Which logprobs
//!
//! Reported logprobs describe the distribution after bias, min-tokens masking and penalties but
//! before temperature and truncation. Sampling knobs then do not change them: a greedy and a
//! `temperature = 0.8, top_p = 0.9` request over the same text report the same numbers, and a
//! token truncation removed still gets its true (finite) logprob. Bias and penalties, on the
//! other hand, are part of the model the client asked for: a token forced by `logit_bias = 100`
//! reports a logprob near 0, consistent with it always being picked. vLLM v1's default
//! (`logprobs_mode = "raw_logprobs"`) instead reports the row before bias and penalties, and its
//! `"processed_logprobs"` the row after temperature and truncation; ours sits between the two.
//!
//! Two more places where vLLM v1 differs: it applies min-p before top-k/top-p (we follow HF's
//! top-k, top-p, min-p; the sets differ only when min-p and top-p are combined), and it samples
//! with an exponential race over the whole vocabulary (one random value per token) instead of one
//! inverse-CDF draw.
//!
//! # Degenerate rows
//!
//! Nothing panics. Under a grammar, a row left with no finite logit is a failure the caller must
//! report ([`SequenceSampler::sample_masked`] returns `None`): falling back to any token would
//! emit one the grammar forbids. Without one, if every processed logit is `-inf` (all NaN, or
//! bias and masks removed every token), the sampler returns the argmax of the cleaned *raw* row, or token 0 if that is `-inf`
//! everywhere too, with logprob `-inf`; a random request still consumes its one draw so later
//! tokens stay on the same RNG stream. An empty row yields token 0.
//!
//! # Reproducibility
//!
//! The RNG is [`StdRng`] seeded from `seed`, else from the engine's `fallback_seed`. Same seed
//! and same logits give the same tokens on the same build; `StdRng`'s algorithm is only stable
//! within a `rand` major version.
//!
//! # Memory
//!
//! Per request the sampler stores only sparse state (distinct prompt tokens, output token
//! counts). The vocabulary-sized buffers (tempered weights, candidate ids) are per thread and
//! reused across requests and steps, so hundreds of concurrent requests over a 150k vocabulary
//! do not each hold their own.

mod distribution;
mod processors;
mod truncation;
mod vector_math;

use distribution::{clean_and_max, log_normalizer, log_normalizer_from_sum, top_logprobs};
use metrum_core::SamplingParams;
use processors::{Penalties, apply_logit_bias, suppress};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use truncation::{Truncation, apply_rule, draw, keep_rule, tempered_weights};

/// The greedy pick of a raw logits row (lowest id on ties, NaN as `-inf`), with no processor
/// applied: what a draft model proposes. Cleans the row in place; `None` if all are `-inf`.
pub(crate) fn argmax(logits: &mut [f32]) -> Option<u32> {
    clean_and_max(logits).map(|max| max.token)
}

/// Temperatures below this are greedy, as vLLM's `_SAMPLING_EPS`: dividing by a near-zero
/// temperature is argmax anyway, only less exact.
pub const GREEDY_TEMPERATURE_EPS: f32 = 1e-5;

/// The highest temperature honoured; `SamplingParams::validate` rejects more, and clamping
/// keeps `(logit - max) / temperature` meaningful if an unvalidated value slips through.
const MAX_TEMPERATURE: f32 = 100.0;

/// One sampled token.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledToken {
    pub token: u32,
    /// Log-probability of `token` under the processed distribution (see the module docs).
    pub logprob: f32,
    /// The `k` most likely tokens when the request asked for `logprobs: Some(k)`, best first,
    /// lower id first on ties; empty otherwise. `token` need not be among them.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// How a request picks among the tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Greedy,
    Random(Truncation),
}

/// The sampling state of one request: its knobs, penalty memory and private RNG.
#[derive(Debug)]
pub struct SequenceSampler {
    mode: Mode,
    logit_bias: Vec<(u32, f32)>,
    penalties: Penalties,
    min_tokens: usize,
    /// Masked while fewer than `min_tokens` tokens were sampled.
    min_tokens_stop_ids: Vec<u32>,
    ignore_eos: bool,
    top_logprobs: Option<usize>,
    rng: StdRng,
    sampled: usize,
}

/// Vocabulary-sized buffers, one set per thread (see "Memory" in the module docs).
#[derive(Default)]
struct Scratch {
    weights: Vec<f32>,
    ranked: Vec<u32>,
    block_sums: Vec<f64>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl SequenceSampler {
    /// A sampler for a request with `params` and prompt tokens `prompt` (the repetition penalty
    /// looks at them). `fallback_seed` seeds the RNG when `params.seed` is `None`; the engine
    /// should make it differ per request, or unseeded requests would all draw alike.
    pub fn new(params: &SamplingParams, prompt: &[u32], fallback_seed: u64) -> SequenceSampler {
        let temperature = params.temperature;
        // An unvalidated NaN temperature has no meaning; greedy is the safe reading.
        let mode = if temperature.is_nan() || temperature < GREEDY_TEMPERATURE_EPS {
            Mode::Greedy
        } else {
            Mode::Random(Truncation {
                temperature: temperature.min(MAX_TEMPERATURE),
                top_k: params.top_k,
                // NaN disables the filter; p <= 0 still keeps the single best token.
                top_p: if params.top_p.is_nan() {
                    1.0
                } else {
                    params.top_p.clamp(0.0, 1.0)
                },
                min_p: if params.min_p.is_nan() {
                    0.0
                } else {
                    params.min_p.clamp(0.0, 1.0)
                },
            })
        };
        SequenceSampler {
            mode,
            logit_bias: params.logit_bias.clone(),
            penalties: Penalties::new(
                params.repetition_penalty,
                params.presence_penalty,
                params.frequency_penalty,
                prompt,
            ),
            min_tokens: params.min_tokens,
            min_tokens_stop_ids: params.stop_token_ids.clone(),
            ignore_eos: params.ignore_eos,
            top_logprobs: params.logprobs,
            rng: StdRng::seed_from_u64(params.seed.unwrap_or(fallback_seed)),
            sampled: 0,
        }
    }

    /// Adds the model's end-of-sequence ids to the tokens `min_tokens` holds back, as vLLM does
    /// with `all_stop_token_ids`; a request with `ignore_eos` does not stop on EOS, so for it
    /// they are not masked.
    pub fn with_eos_token_ids(mut self, eos_token_ids: &[u32]) -> SequenceSampler {
        if !self.ignore_eos {
            self.min_tokens_stop_ids.extend_from_slice(eos_token_ids);
        }
        self
    }

    /// How many tokens this sampler has produced.
    pub fn num_sampled(&self) -> usize {
        self.sampled
    }

    /// Samples the next token from `logits` (one entry per vocabulary id) and remembers it for
    /// the penalties. The row is worked on in place: on return it holds the processed logits
    /// (cleaned, masked, biased, penalized; no temperature), the distribution the logprobs
    /// describe.
    pub fn sample(&mut self, logits: &mut [f32]) -> SampledToken {
        let sampled = SCRATCH.with_borrow_mut(|scratch| self.sample_with(logits, scratch));
        self.penalties.record(sampled.token);
        self.sampled += 1;
        sampled
    }

    /// [`Self::sample`] under a grammar: `allowed` is its mask as packed 32-bit words (bit `i`
    /// of word `i / 32` allows token `i`; ids past the mask are disallowed). `None` when no
    /// allowed token has any probability left (see "Degenerate rows"); nothing is recorded
    /// then, and the caller must end the request.
    pub fn sample_masked(&mut self, logits: &mut [f32], allowed: &[u32]) -> Option<SampledToken> {
        processors::apply_token_mask(logits, allowed);
        // Nothing the grammar allows has a finite logit: no fallback, the caller ends it.
        clean_and_max(logits)?;
        let sampled = SCRATCH.with_borrow_mut(|scratch| self.sample_with(logits, scratch));
        if sampled.logprob == f32::NEG_INFINITY {
            // Processors (min_tokens, penalties) emptied what the grammar allowed.
            return None;
        }
        self.penalties.record(sampled.token);
        self.sampled += 1;
        Some(sampled)
    }

    fn sample_with(&mut self, logits: &mut [f32], scratch: &mut Scratch) -> SampledToken {
        let suppressing = self.sampled < self.min_tokens && !self.min_tokens_stop_ids.is_empty();
        let processing = suppressing || !self.logit_bias.is_empty() || !self.penalties.is_neutral();
        // The raw argmax only matters when processors empty the row; without processors the
        // processed row is the raw one, so the extra pass is skipped.
        let raw_best = if processing {
            clean_and_max(logits)
        } else {
            None
        };
        if suppressing {
            suppress(logits, &self.min_tokens_stop_ids);
        }
        apply_logit_bias(logits, &self.logit_bias);
        self.penalties.apply(logits);
        let top_k_logprobs = self.top_logprobs;

        let Some(max) = clean_and_max(logits) else {
            // No token has any probability left: see "Degenerate rows" in the module docs.
            if let Mode::Random(_) = self.mode {
                let _ = self.rng.random::<f64>();
            }
            return SampledToken {
                token: raw_best.map_or(0, |best| best.token),
                logprob: f32::NEG_INFINITY,
                top_logprobs: top_k_logprobs
                    .map(|k| top_logprobs(logits, f32::NEG_INFINITY, k, &mut scratch.ranked))
                    .unwrap_or_default(),
            };
        };

        let (token, log_norm) = match self.mode {
            Mode::Greedy => (max.token, log_normalizer(logits, max.logit)),
            Mode::Random(trunc) => {
                let weights = &mut scratch.weights;
                let total = tempered_weights(logits, max.logit, trunc.temperature, weights);
                // At temperature 1 the weights are exp(logit - max): their sum is the normalizer's.
                let log_norm = if trunc.temperature == 1.0 {
                    log_normalizer_from_sum(max.logit, total)
                } else {
                    log_normalizer(logits, max.logit)
                };
                let rule = keep_rule(logits, weights, total, max, &trunc, &mut scratch.ranked);
                apply_rule(logits, weights, &rule);
                (
                    draw(weights, &mut scratch.block_sums, &mut self.rng),
                    log_norm,
                )
            }
        };
        SampledToken {
            token,
            logprob: logits[token as usize] - log_norm,
            top_logprobs: top_k_logprobs
                .map(|k| top_logprobs(logits, log_norm, k, &mut scratch.ranked))
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod masked_tests {
    use super::*;

    fn sampler(json: serde_json::Value) -> SequenceSampler {
        let mut params = SamplingParams::default();
        if let Some(t) = json.get("temperature").and_then(|v| v.as_f64()) {
            params.temperature = t as f32;
        }
        if let Some(m) = json.get("min_tokens").and_then(|v| v.as_u64()) {
            params.min_tokens = m as usize;
        }
        params.seed = Some(3);
        SequenceSampler::new(&params, &[], 0).with_eos_token_ids(&[2])
    }

    #[test]
    fn the_mask_wins_over_the_best_logit_at_any_temperature() {
        for temperature in [0.0, 1.0] {
            let mut s = sampler(serde_json::json!({ "temperature": temperature }));
            for _ in 0..20 {
                let mut logits = vec![10.0, 0.0, 0.0, -5.0];
                let t = s.sample_masked(&mut logits, &[0b1000]).unwrap();
                assert_eq!(t.token, 3);
                assert_eq!(t.logprob, 0.0, "the only allowed token is certain");
            }
        }
    }

    /// A grammar that only allows EOS while `min_tokens` holds EOS back: no token is left, and
    /// the sampler must say so instead of falling back to the raw argmax.
    #[test]
    fn an_empty_constrained_row_is_none_never_an_unconstrained_token() {
        let mut s = sampler(serde_json::json!({ "min_tokens": 5 }));
        let mut logits = vec![10.0, 0.0, 1.0];
        assert_eq!(s.sample_masked(&mut logits, &[0b100]), None);
        assert_eq!(s.num_sampled(), 0);
        let mut nan = vec![f32::NAN; 3];
        assert_eq!(s.sample_masked(&mut nan, &[0b111]), None);
        assert_eq!(s.sample_masked(&mut [1.0, 2.0], &[]), None);
    }
}
