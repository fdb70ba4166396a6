//! Shared fixtures for the scheduler tests, after vLLM's `tests/v1/core/utils.py`: a small
//! scheduler, request factories, a step driver with the fake executor, and the leak check.
#![allow(dead_code)] // each test binary uses a different subset

use metrum_core::{BlockId, Nanos, RequestId};
use metrum_scheduler::{
    FinishedRequest, NewRequest, Policy, Scheduler, SchedulerConfig, SchedulerOutput, StepResult,
};
use metrum_sim::{FakeExecutor, SimReport, Simulation, StepCostModel, Workload};

/// The token the fake executor samples for everyone.
pub const SAMPLED: u32 = 1000;

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

/// Drives a scheduler with the fake executor; time advances 1 ms per step unless a cost model
/// says otherwise. Checks the invariants after every step.
pub struct Driver {
    pub s: Scheduler,
    pub exec: FakeExecutor,
    pub now: Nanos,
    pub step_time: Nanos,
}

impl Driver {
    pub fn new(config: SchedulerConfig) -> Self {
        Driver {
            s: scheduler(config),
            exec: FakeExecutor::new(StepCostModel::FREE),
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
        let exec = self.exec.execute(&out);
        self.now = self.now + self.step_time + exec.duration;
        let result = self
            .s
            .update(&out, &exec.sampled, self.now)
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

/// The leak check (vLLM's `assert_scheduler_empty`): no request left, every block free with a
/// zero reference count, and the internal invariants hold.
pub fn assert_scheduler_empty(s: &Scheduler) {
    assert!(!s.has_unfinished(), "requests left: {}", s.num_unfinished());
    assert_eq!((s.num_waiting(), s.num_running()), (0, 0));
    let kv = s.kv_cache();
    assert_eq!(kv.num_tables(), 0, "block tables left");
    assert_eq!(kv.num_free_blocks(), kv.num_blocks(), "blocks still in use");
    for b in 0..kv.num_blocks() as u32 {
        assert_eq!(
            kv.ref_count(BlockId(b)),
            Some(0),
            "blk-{b} still referenced"
        );
    }
    assert_eq!(s.stats().kv_usage, 0.0);
    s.check_invariants().expect("invariants");
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
        let exec = d.exec.execute(out);
        d.s.update(out, &exec.sampled, d.now).expect("update");
    }
    d.run_until_done(10_000);
    assert_scheduler_empty(&d.s);
}

/// Runs a workload with every per-step check on, then leak-checks the scheduler.
pub fn run_checked(workload: &Workload, config: SchedulerConfig, cost: StepCostModel) -> SimReport {
    let mut sim = Simulation::new(workload, config, FakeExecutor::new(cost))
        .expect("valid config")
        .with_checks();
    while sim.step().expect("simulation step") {}
    assert_scheduler_empty(sim.scheduler());
    sim.report().expect("every request finished once")
}
