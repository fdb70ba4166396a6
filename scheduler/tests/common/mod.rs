//! Shared fixtures for the scheduler tests, after vLLM's `tests/v1/core/utils.py`: a small
//! scheduler, request factories, a step driver whose fake model samples [`SAMPLED`] for
//! everyone, and the leak check. Tests that need workloads, step costs or the simulation
//! harness live in the simulator crate (`sim/tests/`).
#![allow(dead_code)] // each test binary uses a different subset

use metrum_core::{Nanos, RequestId};
use metrum_scheduler::{
    FinishedRequest, NewRequest, Policy, Scheduler, SchedulerConfig, SchedulerOutput, StepResult,
};

/// The token the fake model samples for everyone (vLLM's scheduler tests use 1000 too).
pub const SAMPLED: u32 = 1000;

/// The fake model: [`SAMPLED`] for every scheduled request that samples, in batch order.
pub fn sample_all(out: &SchedulerOutput) -> Vec<(RequestId, u32)> {
    out.scheduled
        .iter()
        .filter(|s| s.samples)
        .map(|s| (s.id, SAMPLED))
        .collect()
}

/// Small enough that preemption and eviction are easy to provoke: blocks of 4 tokens, 64 of
/// them (256 tokens of KV), budget 32, 8 sequences.
pub fn config() -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 32,
        block_size: 4,
        num_blocks: 64,
        max_model_len: 256,
        enable_prefix_caching: true,
        policy: Policy::Fcfs,
        ..SchedulerConfig::default()
    }
}

pub fn scheduler(config: SchedulerConfig) -> Scheduler {
    Scheduler::new(config).expect("valid test config")
}

/// Prompt tokens that no other seed shares (so no accidental prefix hits).
pub fn prompt(seed: u64, len: usize) -> Vec<u32> {
    (0..len as u64)
        .map(|i| (seed * 100_000 + i) as u32 + 3)
        .collect()
}

pub fn request(id: u64, prompt_len: usize, max_tokens: usize) -> NewRequest {
    NewRequest::new(RequestId(id), prompt(id, prompt_len), max_tokens, Nanos(id))
}

/// Adds `n` requests with ids `0..n`.
pub fn add_requests(s: &mut Scheduler, n: u64, prompt_len: usize, max_tokens: usize) {
    for id in 0..n {
        s.add_request(request(id, prompt_len, max_tokens))
            .expect("admitted");
    }
}

pub fn ms(v: u64) -> Nanos {
    Nanos::from_millis(v)
}

/// Drives a scheduler with the fake model ([`sample_all`]); time advances `step_time` (1 ms)
/// per step. Checks the invariants after every step.
pub struct Driver {
    pub s: Scheduler,
    pub now: Nanos,
    pub step_time: Nanos,
}

impl Driver {
    pub fn new(config: SchedulerConfig) -> Self {
        Driver {
            s: scheduler(config),
            now: Nanos::ZERO,
            step_time: ms(1),
        }
    }

    /// One engine step: schedule, fake execute, update.
    pub fn step(&mut self) -> (SchedulerOutput, StepResult) {
        let out = self.s.schedule(self.now);
        assert!(
            out.num_batched_tokens() <= self.s.config().max_num_batched_tokens,
            "budget exceeded: {out:?}"
        );
        self.now = self.now + self.step_time;
        let result = self
            .s
            .update(&out, &sample_all(&out), self.now)
            .expect("update");
        self.s.check_invariants().expect("invariants");
        (out, result)
    }

    /// Steps until nothing is left; returns every finished request in order.
    pub fn run_until_done(&mut self, max_steps: usize) -> Vec<FinishedRequest> {
        let mut finished = Vec::new();
        for _ in 0..max_steps {
            if !self.s.has_unfinished() {
                return finished;
            }
            finished.extend(self.step().1.finished);
        }
        panic!("not done after {max_steps} steps");
    }
}

/// The leak check ([`Scheduler::check_drained`]) as an assertion.
pub fn assert_scheduler_empty(s: &Scheduler) {
    if let Err(e) = s.check_drained() {
        panic!("scheduler not drained: {e}");
    }
}

/// Applies `pending` (an output not yet updated) with [`SAMPLED`] tokens, runs everything left
/// to completion and leak-checks: the end of every test that stops mid-run.
pub fn finish_run(s: Scheduler, pending: Option<&SchedulerOutput>, now: Nanos) {
    let mut d = Driver {
        s,
        now,
        ..Driver::new(config())
    };
    if let Some(out) = pending {
        d.s.update(out, &sample_all(out), d.now).expect("update");
    }
    d.run_until_done(10_000);
    assert_scheduler_empty(&d.s);
}
