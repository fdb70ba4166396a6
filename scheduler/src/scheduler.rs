//! [`Scheduler`]: the state and its admin side (admission, finish/abort, stats, events,
//! invariant audit). Batch formation ([`Scheduler::schedule`]) is in `batch.rs`, applying
//! results ([`Scheduler::update`]) in `update.rs`.

use crate::admission::Admission;
use crate::config::{ConfigError, SchedulerConfig};
use crate::kv_cache_manager::KvCacheManager;
use crate::output::{FinishedRequest, RequestStats};
use crate::policy::policy_key;
use crate::queue::WaitingQueue;
use crate::request::{AdmissionError, NewRequest, Request};
use crate::stats::SchedulerStats;
use metrum_core::{BlockId, EngineEvent, EventKind, FinishReason, Nanos, RequestId, RequestStatus};
use std::collections::HashMap;

/// The continuous-batching scheduler. Pure and synchronous: every method that depends on time
/// takes `now`, and nothing here touches a device. The engine step is:
///
/// ```text
/// let out = scheduler.schedule(now);                 // who runs, which tokens, which blocks
/// let sampled = executor.execute(&out);              // one forward + sampling
/// let result = scheduler.update(&out, &sampled, now)?; // append, stop checks, free blocks
/// ```
#[derive(Debug)]
pub struct Scheduler {
    pub(crate) config: SchedulerConfig,
    pub(crate) kv: KvCacheManager,
    pub(crate) requests: HashMap<RequestId, Request>,
    pub(crate) waiting: WaitingQueue,
    /// Requests holding KV blocks. Re-sorted by policy at the start of every step.
    pub(crate) running: Vec<RequestId>,
    pub(crate) events: Vec<EngineEvent>,
    pub(crate) finished_since_last_step: Vec<RequestId>,
    next_seq: u64,
    /// The last step `schedule` produced (0 before the first).
    pub(crate) step: u64,
    /// The last step whose results `update` applied.
    pub(crate) applied_step: u64,
    pub(crate) num_preemptions: u64,
    /// Requests refused by admission control (`--admission refuse`).
    num_refused_predicted_miss: u64,
    /// Requests queued best-effort by admission control (`--admission best-effort`).
    num_best_effort: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Scheduler {
            kv: KvCacheManager::new(
                config.num_blocks,
                config.block_size,
                config.enable_prefix_caching,
            ),
            config,
            requests: HashMap::new(),
            waiting: WaitingQueue::default(),
            running: Vec::new(),
            events: Vec::new(),
            finished_since_last_step: Vec::new(),
            next_seq: 0,
            step: 0,
            applied_step: 0,
            num_preemptions: 0,
            num_refused_predicted_miss: 0,
            num_best_effort: 0,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues a request, or refuses it with the reason if it can never run (too long for the
    /// context or for the whole KV cache) or is malformed, or (admission control) its first
    /// token is predicted after its deadline. A refused request leaves no trace but a count in
    /// [`SchedulerStats::num_refused_predicted_miss`].
    pub fn add_request(&mut self, req: NewRequest) -> Result<(), AdmissionError> {
        self.check_admission(&req)?;
        let seq = self.next_seq;
        let (id, arrival) = (req.id, req.arrival);
        let tracker = self
            .config
            .slo
            .tracker_for(req.prompt.len(), arrival, req.slo);
        let mut request = Request::new(req, seq, tracker);
        let mut key = policy_key(self.config.policy, &self.config.slo, &request);
        if self.config.admission != Admission::Off {
            let forecast = self.forecast_first_token(&request, key);
            if forecast.misses() {
                if self.config.admission == Admission::Refuse {
                    self.num_refused_predicted_miss += 1;
                    return Err(AdmissionError::PredictedMiss {
                        predicted_ttft: forecast.predicted_ttft,
                        ttft_deadline: forecast.ttft_deadline,
                        retry_after_secs: forecast.retry_after_secs(),
                    });
                }
                self.num_best_effort += 1;
                request.best_effort = true;
                key = policy_key(self.config.policy, &self.config.slo, &request);
            }
        }
        self.next_seq += 1;
        request.queue_key = Some(key);
        self.waiting.push(key, id);
        self.requests.insert(id, request);
        self.events.push(EngineEvent {
            request: id,
            at: arrival,
            kind: EventKind::Queued,
        });
        Ok(())
    }

    fn check_admission(&self, req: &NewRequest) -> Result<(), AdmissionError> {
        if req.prompt.is_empty() {
            return Err(AdmissionError::EmptyPrompt);
        }
        if req.max_tokens == 0 {
            return Err(AdmissionError::ZeroMaxTokens);
        }
        if req.min_tokens > req.max_tokens {
            return Err(AdmissionError::MinTokensAboveMax {
                min_tokens: req.min_tokens,
                max_tokens: req.max_tokens,
            });
        }
        if self.requests.contains_key(&req.id) {
            return Err(AdmissionError::DuplicateId(req.id));
        }
        let total = req.prompt.len().saturating_add(req.max_tokens);
        if total > self.config.max_model_len {
            return Err(AdmissionError::ExceedsContext {
                prompt_tokens: req.prompt.len(),
                max_tokens: req.max_tokens,
                max_model_len: self.config.max_model_len,
            });
        }
        // The last sampled token is never fed back, so its KV is never written.
        let needed_tokens = total - 1;
        if !self.kv.can_ever_fit(needed_tokens) {
            return Err(AdmissionError::ExceedsKvCapacity {
                needed_tokens,
                capacity_tokens: self.config.kv_capacity_tokens(),
            });
        }
        Ok(())
    }

    /// Ends a live request from outside the step (a stop string the engine detected, an
    /// engine error, a client abort), whatever its state. Frees its blocks and emits
    /// `Finished(reason)`. `None` if no live request has this id (already finished: ending a
    /// request twice is a no-op).
    pub fn finish(
        &mut self,
        id: RequestId,
        reason: FinishReason,
        now: Nanos,
    ) -> Option<FinishedRequest> {
        let status = self.requests.get(&id)?.status;
        match status {
            RequestStatus::Running => {
                self.running.retain(|&r| r != id);
                self.kv.free(id);
            }
            RequestStatus::Waiting | RequestStatus::Preempted => {
                if let Some(key) = self.requests.get_mut(&id)?.queue_key.take() {
                    self.waiting.remove(key, id);
                }
            }
            RequestStatus::Finished(_) => return None,
        }
        let mut req = self.requests.remove(&id)?;
        if let Some(at) = req.preempted_at.take() {
            req.preempted_time = req.preempted_time + now.saturating_sub(at);
        }
        req.transition(RequestStatus::Finished(reason));
        self.events.push(EngineEvent {
            request: id,
            at: now,
            kind: EventKind::Finished(reason),
        });
        self.finished_since_last_step.push(id);
        Some(FinishedRequest {
            id,
            reason,
            stats: RequestStats {
                arrival: req.arrival,
                first_scheduled: req.first_scheduled,
                finished_at: now,
                num_prompt_tokens: req.num_prompt_tokens(),
                num_output_tokens: req.num_output_tokens(),
                num_cached_tokens: req.num_cached_tokens,
                num_preemptions: req.num_preemptions,
                num_restarts: req.num_restarts,
                preempted_time: req.preempted_time,
                deadlines_missed: req.deadline.missed(),
                deadlines_total: req.deadline.total(),
            },
        })
    }

    /// [`Scheduler::finish`] with [`FinishReason::Abort`]: works from waiting, running and
    /// preempted.
    pub fn abort(&mut self, id: RequestId, now: Nanos) -> Option<FinishedRequest> {
        self.finish(id, FinishReason::Abort, now)
    }

    /// Events since the last call, in emission order (each stamped with the time the scheduler
    /// was given: `Queued` at the arrival, the rest at a `now`).
    pub fn drain_events(&mut self) -> Vec<EngineEvent> {
        std::mem::take(&mut self.events)
    }

    /// Any request waiting, preempted or running.
    pub fn has_unfinished(&self) -> bool {
        !self.requests.is_empty()
    }

    pub fn num_unfinished(&self) -> usize {
        self.requests.len()
    }

    /// Waiting requests, preempted ones included.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn status(&self, id: RequestId) -> Option<RequestStatus> {
        self.requests.get(&id).map(|r| r.status)
    }

    /// Output tokens appended so far to a live request.
    pub fn output_tokens(&self, id: RequestId) -> Option<&[u32]> {
        self.requests
            .get(&id)
            .map(|r| &r.tokens()[r.num_prompt_tokens()..])
    }

    /// The KV bookkeeping, read-only (block tables, ref counts, free queue).
    pub fn kv_cache(&self) -> &KvCacheManager {
        &self.kv
    }

    pub fn stats(&self) -> SchedulerStats {
        let num_preempted_waiting = self
            .waiting
            .iter()
            .filter(|id| self.status(*id) == Some(RequestStatus::Preempted))
            .count();
        SchedulerStats {
            num_waiting: self.waiting.len(),
            num_preempted_waiting,
            num_running: self.running.len(),
            num_blocks: self.kv.num_blocks(),
            num_free_blocks: self.kv.num_free_blocks(),
            num_cached_blocks: self.kv.num_cached_blocks(),
            kv_usage: self.kv.usage(),
            prefix_cache_queries: self.kv.prefix_cache_queries(),
            prefix_cache_hits: self.kv.prefix_cache_hits(),
            num_preemptions: self.num_preemptions,
            num_steps: self.step,
            num_refused_predicted_miss: self.num_refused_predicted_miss,
            num_best_effort: self.num_best_effort,
        }
    }

    /// Checks every internal invariant (block ref counts match block tables, the free queue
    /// holds exactly the unreferenced blocks, queue and running set agree with request states,
    /// each running request's table covers exactly its computed tokens). Tests call it after
    /// every step; it is O(blocks + requests).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.kv.audit()?;
        if self.running.len() > self.config.max_num_seqs {
            return Err(format!("{} running > max_num_seqs", self.running.len()));
        }
        if self.requests.len() != self.running.len() + self.waiting.len() {
            return Err(format!(
                "{} requests but {} running + {} waiting",
                self.requests.len(),
                self.running.len(),
                self.waiting.len()
            ));
        }
        if self.kv.num_tables() != self.running.len() {
            return Err(format!(
                "{} block tables for {} running requests",
                self.kv.num_tables(),
                self.running.len()
            ));
        }
        for &id in &self.running {
            let req = self
                .requests
                .get(&id)
                .ok_or(format!("running {id} unknown"))?;
            if req.status != RequestStatus::Running {
                return Err(format!("{id} is in running with status {:?}", req.status));
            }
            let blocks = self.kv.block_table(id).map_or(0, <[_]>::len);
            if blocks != self.kv.blocks_for(req.num_computed_tokens) {
                return Err(format!(
                    "{id} holds {blocks} blocks for {} computed tokens",
                    req.num_computed_tokens
                ));
            }
            if req.num_computed_tokens > req.num_tokens() {
                return Err(format!("{id} computed more tokens than it has"));
            }
        }
        for id in self.waiting.iter() {
            let req = self
                .requests
                .get(&id)
                .ok_or(format!("waiting {id} unknown"))?;
            let ok_status = matches!(
                req.status,
                RequestStatus::Waiting | RequestStatus::Preempted
            );
            if !ok_status || req.num_computed_tokens != 0 || req.queue_key.is_none() {
                return Err(format!("waiting {id} in state {:?}", req.status));
            }
        }
        Ok(())
    }

    /// The leak check (vLLM's `assert_scheduler_empty`), for the end of a run: no request
    /// left, no block table, every block free with a zero reference count, zero KV usage, and
    /// [`Self::check_invariants`]. The scheduler's and the simulator's tests both end with it.
    pub fn check_drained(&self) -> Result<(), String> {
        if self.has_unfinished() {
            return Err(format!("requests left: {}", self.num_unfinished()));
        }
        if (self.num_waiting(), self.num_running()) != (0, 0) {
            return Err(format!(
                "{} waiting and {} running left",
                self.num_waiting(),
                self.num_running()
            ));
        }
        if self.kv.num_tables() != 0 {
            return Err(format!("{} block tables left", self.kv.num_tables()));
        }
        if self.kv.num_free_blocks() != self.kv.num_blocks() {
            return Err(format!(
                "{} of {} blocks still in use",
                self.kv.num_blocks() - self.kv.num_free_blocks(),
                self.kv.num_blocks()
            ));
        }
        for b in 0..self.kv.num_blocks() as u32 {
            if self.kv.ref_count(BlockId(b)) != Some(0) {
                return Err(format!("blk-{b} still referenced"));
            }
        }
        if self.kv.usage() != 0.0 {
            return Err(format!("KV usage {} with nothing running", self.kv.usage()));
        }
        self.check_invariants()
    }
}
