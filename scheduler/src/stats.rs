//! Scheduler gauges and counters for the engine's metrics (vLLM's `SchedulerStats`).

/// A snapshot from [`crate::Scheduler::stats`].
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerStats {
    /// Requests waiting for their first or next run, preempted ones included.
    pub num_waiting: usize,
    /// Of `num_waiting`, those preempted and waiting to recompute.
    pub num_preempted_waiting: usize,
    pub num_running: usize,
    pub num_blocks: usize,
    /// Unreferenced blocks, cached (evictable) ones included.
    pub num_free_blocks: usize,
    /// Blocks registered in the prefix cache, in use or not.
    pub num_cached_blocks: usize,
    /// Fraction of blocks referenced by a running request, in [0, 1].
    pub kv_usage: f64,
    /// Tokens looked up in the prefix cache (counted once per admission), and the number
    /// found. Hit rate = hits / queries.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    /// Preemptions since start.
    pub num_preemptions: u64,
    /// Steps scheduled since start.
    pub num_steps: u64,
    /// Requests refused since start because their first token was predicted late.
    pub num_refused_predicted_miss: u64,
    /// Requests queued best-effort since start (predicted late, `--admission best-effort`).
    pub num_best_effort: u64,
}
