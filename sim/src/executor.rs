//! The fake executor: deterministic tokens and a configurable step-cost model, standing in for
//! the model in scheduler tests and policy simulations (vLLM's tests return token 1000 for
//! every request in the same way).

use metrum_core::{Nanos, RequestId};
use metrum_scheduler::output::SchedulerOutput;
use metrum_workload::mix64;

/// Step time `a + b·batch_tokens + c·kv_tokens_read`, in integer nanoseconds.
///
/// `kv_tokens_read` is the attention work: a query token at position `p` reads `p + 1` keys, so
/// a chunk of `L` tokens starting at `s` reads `L·s + L(L+1)/2`. A prompt of `P` tokens reads
/// `P(P+1)/2` in total however it is chunked, which gives prefill its quadratic term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepCostModel {
    /// `a`: fixed cost of a step (weights read once, launch overheads).
    pub base: Nanos,
    /// `b`: per token in the batch (the matmuls).
    pub per_batched_token: Nanos,
    /// `c`: per KV token read by attention.
    pub per_kv_token_read: Nanos,
}

impl StepCostModel {
    /// Free steps: time stands still (for tests that only care about order).
    pub const FREE: StepCostModel = StepCostModel {
        base: Nanos(0),
        per_batched_token: Nanos(0),
        per_kv_token_read: Nanos(0),
    };

    /// Attention reads of one scheduled chunk.
    pub fn kv_tokens_read(start: usize, len: usize) -> u64 {
        let (s, l) = (start as u64, len as u64);
        l.saturating_mul(s)
            .saturating_add(l.saturating_mul(l + 1) / 2)
    }

    pub fn step_time(&self, output: &SchedulerOutput) -> Nanos {
        let batch_tokens = output.num_batched_tokens() as u64;
        let kv_reads: u64 = output
            .scheduled
            .iter()
            .map(|s| Self::kv_tokens_read(s.start_position, s.token_ids.len()))
            .fold(0, u64::saturating_add);
        Nanos(
            self.base
                .0
                .saturating_add(self.per_batched_token.0.saturating_mul(batch_tokens))
                .saturating_add(self.per_kv_token_read.0.saturating_mul(kv_reads)),
        )
    }
}

/// Which token the fake model "samples".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeTokens {
    /// Always this token.
    Constant(u32),
    /// A hash of (request id, position) below `vocab_size`: varied but reproducible.
    Hashed { vocab_size: u32 },
}

/// What one fake step produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    /// One token per scheduled request with `samples == true`, in batch order.
    pub sampled: Vec<(RequestId, u32)>,
    pub duration: Nanos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeExecutor {
    pub cost: StepCostModel,
    pub tokens: FakeTokens,
}

impl FakeExecutor {
    /// Samples token 1000 for everyone, as vLLM's scheduler tests do.
    pub fn new(cost: StepCostModel) -> Self {
        FakeExecutor {
            cost,
            tokens: FakeTokens::Constant(1000),
        }
    }

    pub fn execute(&self, output: &SchedulerOutput) -> Execution {
        let sampled = output
            .scheduled
            .iter()
            .filter(|s| s.samples)
            .map(|s| (s.id, self.token_for(s.id, s.context_len())))
            .collect();
        Execution {
            sampled,
            duration: self.cost.step_time(output),
        }
    }

    fn token_for(&self, id: RequestId, position: usize) -> u32 {
        match self.tokens {
            FakeTokens::Constant(t) => t,
            FakeTokens::Hashed { vocab_size } => {
                let h = mix64(id.0 ^ (position as u64).rotate_left(32));
                (h % u64::from(vocab_size.max(1))) as u32
            }
        }
    }
}
