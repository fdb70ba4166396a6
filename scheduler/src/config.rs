//! Scheduler configuration: the knobs of `metrum serve` that decide who runs, with defaults
//! sized for a CPU server running a small model.

use crate::admission::Admission;
use crate::deadline::{DeadlineSlo, PrefillModel};
use std::fmt;
use std::str::FromStr;

/// Which waiting request is admitted next, and which running request is preempted first
/// (`--scheduling-policy`). Decodes always go before prefills whatever the policy (stall-free
/// batching); the policy orders requests within each phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// First come, first served: by arrival time.
    #[default]
    Fcfs,
    /// By the request's `priority` field, lower value first; FCFS within a priority.
    Priority,
    /// Least slack first: by the next token deadline of spec (b) minus the predicted work left
    /// before that token. A request about to miss outranks one with slack.
    Deadline,
    /// `deadline-srpt`: least slack combined with the work left. Before its first token a
    /// request ranks by its deadline plus a multiple of its remaining prefill (shortest
    /// remaining prefill first among equal deadlines), a preempted request never ranks later
    /// than it did on arrival, and waiting is bounded ([`crate::policy`] states the bound).
    /// A separate variant so `deadline` keeps its measured behaviour.
    DeadlineSrpt,
}

impl Policy {
    pub const ALL: [Policy; 4] = [
        Policy::Fcfs,
        Policy::Priority,
        Policy::Deadline,
        Policy::DeadlineSrpt,
    ];

    /// The `--scheduling-policy` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Fcfs => "fcfs",
            Policy::Priority => "priority",
            Policy::Deadline => "deadline",
            Policy::DeadlineSrpt => "deadline-srpt",
        }
    }

    /// Whether steps are capped in time for the decodes' deadlines (`step_budget`) and the
    /// preemption victim is the cheapest to rebuild.
    pub fn is_deadline_aware(self) -> bool {
        matches!(self, Policy::Deadline | Policy::DeadlineSrpt)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ConfigError::UnknownPolicy(s.to_string()))
    }
}

/// Everything the scheduler needs to know. Build one with struct update syntax over
/// [`SchedulerConfig::default`] and check it with [`SchedulerConfig::validate`]
/// ([`crate::Scheduler::new`] does).
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// Most requests running at once (`--max-num-seqs`). Default 64: vLLM's 256 assumes a GPU;
    /// on CPU a larger batch only stretches every step.
    pub max_num_seqs: usize,
    /// Token budget of one step: decodes count 1 each, a prefill chunk its length
    /// (`--max-num-batched-tokens`, alias `--chunk-size`). Default 512, Sarathi-Serve's
    /// `chunk_size`; vLLM's 2048 makes CPU steps too long for a 30–50 ms TBT.
    /// Must be at least `max_num_seqs`, so every running decode always fits in a step.
    pub max_num_batched_tokens: usize,
    /// Tokens per KV block (`--block-size`). Default 16, as vLLM.
    pub block_size: usize,
    /// KV blocks in the pool. Default 1024 (16 Ki tokens: about 0.75 GiB of f32 KV for
    /// SmolLM2-135M); the engine sets it from `--num-kv-blocks` / `--kv-cache-memory`.
    /// Every block is usable: there is no reserved null block (kernels pad tables with 0 and
    /// never read the padding).
    pub num_blocks: usize,
    /// Context length: prompt + `max_tokens` must fit (`--max-model-len`). Default 8192, the
    /// default model's `max_position_embeddings`.
    pub max_model_len: usize,
    /// Reuse KV blocks of cached prompt prefixes (on unless `--no-enable-prefix-caching`).
    pub enable_prefix_caching: bool,
    /// `--scheduling-policy`.
    pub policy: Policy,
    /// Token deadlines: used to rank requests under [`Policy::Deadline`], and by the simulator
    /// to grade every policy.
    pub slo: DeadlineSlo,
    /// What to do with a request predicted to miss its first-token deadline (`--admission`).
    pub admission: Admission,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_num_seqs: 64,
            max_num_batched_tokens: 512,
            block_size: 16,
            num_blocks: 1024,
            max_model_len: 8192,
            enable_prefix_caching: true,
            policy: Policy::Fcfs,
            slo: DeadlineSlo::default(),
            admission: Admission::Off,
        }
    }
}

/// A configuration the scheduler cannot run with. Messages name the flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A count that must be at least 1 is 0.
    Zero {
        field: &'static str,
    },
    /// Running decodes would not fit in one step's budget.
    BudgetBelowMaxNumSeqs {
        max_num_batched_tokens: usize,
        max_num_seqs: usize,
    },
    /// Block ids are `u32`.
    TooManyBlocks {
        num_blocks: usize,
    },
    UnknownPolicy(String),
    ZeroTbtSlo,
    PrefillModelNotFinite,
    /// Admission control predicts with the prefill model; without one every prediction is 0.
    AdmissionWithoutPrefillModel,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Zero { field } => write!(f, "--{field} must be at least 1"),
            ConfigError::BudgetBelowMaxNumSeqs {
                max_num_batched_tokens,
                max_num_seqs,
            } => write!(
                f,
                "--max-num-batched-tokens ({max_num_batched_tokens}) must be at least \
                 --max-num-seqs ({max_num_seqs}) so every running decode fits in one step"
            ),
            ConfigError::TooManyBlocks { num_blocks } => {
                write!(f, "--num-kv-blocks {num_blocks} exceeds {}", u32::MAX)
            }
            ConfigError::UnknownPolicy(s) => write!(
                f,
                "unknown --scheduling-policy '{s}': expected fcfs, priority, deadline or deadline-srpt"
            ),
            ConfigError::ZeroTbtSlo => write!(f, "--tbt-slo must be positive"),
            ConfigError::PrefillModelNotFinite => {
                write!(f, "the prefill-time model has a non-finite coefficient")
            }
            ConfigError::AdmissionWithoutPrefillModel => write!(
                f,
                "--admission needs a prefill-time model to predict first tokens: pass \
                 --slo-file (from `metrum profile-prefill`)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every running decode must fit in one step: the token budget is at least the running cap.
/// Known before the model loads, so `metrum serve` checks it at start-up with this same rule.
pub fn check_step_budget(
    max_num_batched_tokens: usize,
    max_num_seqs: usize,
) -> Result<(), ConfigError> {
    if max_num_batched_tokens < max_num_seqs {
        return Err(ConfigError::BudgetBelowMaxNumSeqs {
            max_num_batched_tokens,
            max_num_seqs,
        });
    }
    Ok(())
}

impl SchedulerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("max-num-seqs", self.max_num_seqs),
            ("max-num-batched-tokens", self.max_num_batched_tokens),
            ("block-size", self.block_size),
            ("num-kv-blocks", self.num_blocks),
            ("max-model-len", self.max_model_len),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        check_step_budget(self.max_num_batched_tokens, self.max_num_seqs)?;
        if u32::try_from(self.num_blocks).is_err() {
            return Err(ConfigError::TooManyBlocks {
                num_blocks: self.num_blocks,
            });
        }
        if self.slo.tbt_slo.0 == 0 {
            return Err(ConfigError::ZeroTbtSlo);
        }
        if self.slo.prefill.validate().is_err() {
            return Err(ConfigError::PrefillModelNotFinite);
        }
        if self.admission != Admission::Off && self.slo.prefill == PrefillModel::ZERO {
            return Err(ConfigError::AdmissionWithoutPrefillModel);
        }
        Ok(())
    }

    /// KV capacity in tokens.
    pub fn kv_capacity_tokens(&self) -> usize {
        self.num_blocks.saturating_mul(self.block_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_flag() {
        assert_eq!(SchedulerConfig::default().validate(), Ok(()));
        let zero = SchedulerConfig {
            block_size: 0,
            ..Default::default()
        };
        assert_eq!(
            zero.validate().unwrap_err().to_string(),
            "--block-size must be at least 1"
        );
        let small_budget = SchedulerConfig {
            max_num_batched_tokens: 8,
            max_num_seqs: 9,
            ..Default::default()
        };
        assert!(matches!(
            small_budget.validate(),
            Err(ConfigError::BudgetBelowMaxNumSeqs { .. })
        ));
    }

    #[test]
    fn policies_round_trip_through_their_flag_spelling() {
        for p in Policy::ALL {
            assert_eq!(p.as_str().parse::<Policy>(), Ok(p));
        }
        assert!("lifo".parse::<Policy>().is_err());
    }
}
