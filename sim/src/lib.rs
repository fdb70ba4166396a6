//! # Layout
//!
//! `metrum-sim`: policy simulation without a model, kept out of the pure scheduler crate so
//! that crate only schedules (no workloads, PRNG or markdown). It drives `metrum-scheduler`
//! and shares the deadline algorithm with the metrics through `metrum-core`.
//!
//! Policy simulation without a model: a [`FakeExecutor`] (deterministic tokens, step time
//! `a + b·batch_tokens + c·kv_tokens_read`) drives the real [`metrum_scheduler::Scheduler`] on simulated
//! time, fed by an open-loop Poisson [`metrum_workload::PoissonWorkload`] or a trace (both
//! from `metrum-workload`, the workload home it shares with the load generator; import the
//! workload types from there, this crate does not re-export them). [`simulate`] returns a
//! [`SimReport`] per run: scheduling delay, TTFT, TBT, fluidity-index distribution and
//! deadline-miss rates (spec/metrics.md (a), (b)). One [`SimReport`] per policy renders as one
//! row of [`markdown_table`]; `examples/policy_sweep.rs` runs the fcfs-vs-deadline comparison.
//! (The `metrum simulate` subcommand belongs to the server crate, which calls these functions.)
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`executor`] | [`FakeExecutor`], [`StepCostModel`], [`FakeTokens`] |
//! | [`cost_fit`] | [`fit_step_cost`]: least-squares step-cost constants from measured steps |
//! | [`run`] | [`Simulation`] (step by step, with optional invariant checks), [`simulate`], [`profile_prefill_model`] |
//! | [`report`] | [`SimReport`], [`RequestOutcome`], [`markdown_table`], [`percentile`] |
//! | [`cluster`] | [`simulate_cluster`]: N replicas with eligibility classes behind a router (round-robin, least-loaded, prefix-affinity, IRS) |
//! | [`grid`] | issue 19's grid: cost models × SLOs × knee multiples, fcfs vs deadline vs deadline-srpt (+ admission) |
//! | [`sweep`] | [`find_knee`] (capacity bisection), [`SeedSummary`] / [`markdown_sweep_table`] (multi-seed rows) |

pub mod cluster;
pub mod cost_fit;
pub mod executor;
pub mod grid;
pub mod report;
pub mod run;
pub mod sweep;

pub use cluster::{
    ClassReport, ClusterSpec, EligibilityClass, ReplicaId, RoutingPolicy, irs_vs_least_loaded,
    markdown_class_table, simulate_cluster,
};
pub use cost_fit::{StepCostFit, StepSample, fit_step_cost};
pub use executor::{Execution, FakeExecutor, FakeTokens, StepCostModel};
pub use report::{RequestOutcome, SimReport, markdown_table, percentile};
pub use run::{SimError, Simulation, profile_prefill_model, simulate};
pub use sweep::{SeedSummary, find_knee, markdown_sweep_table};
