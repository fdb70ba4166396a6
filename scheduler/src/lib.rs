//! # Layout
//!
//! `metrum-scheduler` decides, every engine step, which requests run and how many tokens each
//! gets. It is pure, synchronous and deterministic: no clock (time is passed in), no device, no
//! async, no I/O. The engine calls [`Scheduler::schedule`], runs the batch, and hands the
//! sampled tokens to [`Scheduler::update`].
//!
//! The one rule behind the loop: a request has known tokens (prompt, then outputs) and a count
//! of tokens whose KV is computed; every step closes part of that gap under a token budget.
//! Chunked prefill, decode, recompute after preemption and prefix-cache hits are all the same
//! rule with different gaps. Within a step, decodes go first, then partial prefills, then new
//! requests (Sarathi-Serve's stall-free batching, spec/metrics.md (f)).
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`config`] | [`SchedulerConfig`] (+ defaults for CPU), [`Policy`], [`ConfigError`] |
//! | [`admission`] | [`Admission`]: refuse (or queue best-effort) a request predicted to miss its first token |
//! | [`request`] | [`NewRequest`], [`AdmissionError`]; the private per-request state machine |
//! | [`scheduler`] | [`Scheduler`]: admission, `finish` / `abort`, stats, events, invariant audit, the end-of-run leak check (`check_drained`) |
//! | `batch` | `Scheduler::schedule`: budgeted batch formation and recompute preemption |
//! | `update` | `Scheduler::update`: append sampled tokens, stop checks, cache completed blocks |
//! | [`output`] | [`SchedulerOutput`] / [`ScheduledRequest`] (to the executor), [`StepResult`], [`FinishedRequest`] |
//! | [`kv_cache_manager`] | [`KvCacheManager`]: per-request block tables, [`AllocStatus`], prefix lookups |
//! | [`block_pool`] | [`BlockPool`]: ref counts, the LRU free queue (index-linked list), cache map |
//! | [`prefix_cache`] | [`BlockKey`] / [`PrefixId`]: exact content addressing of full blocks |
//! | [`policy`], `queue` | the per-policy ordering key ([`policy::srpt_waiting_bound`]) and the waiting queue |
//! | `step_budget` | the deadline policy's time budget of one step (marginal chunk costs) |
//! | [`deadline`] | spec (b) token deadlines: [`DeadlineSlo`], [`DeadlineTracker`] (absolute-time adapter over `metrum_core::DeadlineTracker`, the algorithm shared with the metrics), [`PrefillModel`], per-request [`RequestSlo`] (defined in metrum-core) |
//! | [`stats`] | [`SchedulerStats`] |
//! | [`routing`] | [`routing::Router`]: which replica serves a request (round-robin, least-loaded, prefix affinity, Venn's IRS); shared by `metrum_sim::cluster` and `metrum route` |
//!
//! Lifecycle (the [`metrum_core::RequestStatus`] enum): `Waiting → Running → Finished(reason)`,
//! `Running → Preempted → Running` on recompute preemption, and `abort` from any live state.
//! Finished requests are removed at once; their stats come back in [`FinishedRequest`].

pub mod admission;
pub mod block_pool;
pub mod config;
pub mod deadline;
pub mod kv_cache_manager;
pub mod output;
pub mod prefix_cache;
pub mod request;
pub mod routing;
pub mod scheduler;
pub mod stats;

mod batch;
pub mod policy;
mod queue;
mod step_budget;
mod update;

pub use admission::Admission;
pub use block_pool::BlockPool;
pub use config::{ConfigError, Policy, SchedulerConfig};
pub use deadline::{DeadlineSlo, DeadlineTracker, PrefillModel};
pub use kv_cache_manager::{AllocStatus, ComputedBlocks, KvCacheManager};
pub use metrum_core::RequestSlo;
pub use output::{
    ChunkKind, FinishedRequest, RequestStats, ScheduledRequest, SchedulerOutput, StepResult,
    UpdateError,
};
pub use prefix_cache::{BlockKey, PrefixId};
pub use request::{AdmissionError, NewRequest};
pub use scheduler::Scheduler;
pub use stats::SchedulerStats;
