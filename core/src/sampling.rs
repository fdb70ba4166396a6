//! Sampling parameters: the per-request knobs of the OpenAI / vLLM APIs, as plain data.

use serde::{Deserialize, Serialize};

/// Everything that decides which token comes next and when a request stops.
///
/// Defaults follow vLLM: `temperature = 1.0` as in the OpenAI API, no top-k (`0`), `top_p = 1`,
/// `min_p = 0`, neutral penalties. `temperature == 0` means greedy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    /// Multiplicative penalty (>1 discourages) on tokens seen in the prompt or the output.
    pub repetition_penalty: f32,
    /// Additive penalty on tokens that appeared in the output at least once.
    pub presence_penalty: f32,
    /// Additive penalty proportional to how often a token appeared in the output.
    pub frequency_penalty: f32,
    /// Added to the logit of each listed token id before sampling.
    pub logit_bias: Vec<(u32, f32)>,
    /// Same seed + same request = same tokens, whatever else is in the batch.
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// Minimum tokens before EOS / stop ids may end the request.
    pub min_tokens: usize,
    pub stop_token_ids: Vec<u32>,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// Number of top alternatives to return with each sampled token's logprob (`None`: no logprobs).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            max_tokens: 16,
            min_tokens: 0,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

/// A parameter outside its domain. `param` names the field as the API spells it.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingError {
    pub param: &'static str,
    pub message: String,
}

impl std::fmt::Display for SamplingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.param, self.message)
    }
}

impl std::error::Error for SamplingError {}

/// Upper bound on alternatives per token, as in vLLM's default `max_logprobs`.
pub const MAX_LOGPROBS: usize = 20;

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..Default::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Rejects values no sampler can honour. Range checks mirror vLLM's `SamplingParams._verify_args`.
    pub fn validate(&self) -> Result<(), SamplingError> {
        fn err(param: &'static str, message: impl Into<String>) -> Result<(), SamplingError> {
            Err(SamplingError {
                param,
                message: message.into(),
            })
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 || self.temperature > 100.0 {
            return err(
                "temperature",
                format!("must be in [0, 100], got {}", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return err("top_p", format!("must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return err("min_p", format!("must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return err(
                "repetition_penalty",
                format!("must be > 0, got {}", self.repetition_penalty),
            );
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return err(
                "presence_penalty",
                format!("must be in [-2, 2], got {}", self.presence_penalty),
            );
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return err(
                "frequency_penalty",
                format!("must be in [-2, 2], got {}", self.frequency_penalty),
            );
        }
        if self.max_tokens == 0 {
            return err("max_tokens", "must be at least 1");
        }
        if self.min_tokens > self.max_tokens {
            return err("min_tokens", "must not exceed max_tokens");
        }
        if let Some(k) = self.logprobs
            && k > MAX_LOGPROBS
        {
            return err(
                "logprobs",
                format!("at most {MAX_LOGPROBS} alternatives, got {k}"),
            );
        }
        for (_, bias) in &self.logit_bias {
            if !bias.is_finite() || !(-100.0..=100.0).contains(bias) {
                return err(
                    "logit_bias",
                    format!("bias must be in [-100, 100], got {bias}"),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(SamplingParams::default().validate().is_ok());
        let bad = SamplingParams {
            top_p: 0.0,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().param, "top_p");
        let bad = SamplingParams {
            temperature: f32::NAN,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().param, "temperature");
        let bad = SamplingParams {
            max_tokens: 0,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().param, "max_tokens");
    }
}
