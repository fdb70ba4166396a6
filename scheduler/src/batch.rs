//! Batch formation: Sarathi-Serve's stall-free batching under a token budget.
//!
//! NOTE: there is no separate prefill or decode phase in a request's life. Each request has
//! `num_computed_tokens` and a list of known tokens; every step closes part of that gap within
//! the budget (vLLM's rule). Phases only order the work within one step:
//! 1. running decodes (1 token each), so a prefill can never stall a decode;
//! 2. running partial prefills, each chunk taking only the budget left;
//! 3. waiting requests (new or preempted), in policy order, while a sequence slot and budget
//!    remain, skipped entirely in a step that had to preempt (memory is tight).
//!
//! Under the deadline policy the prefill share of the budget also shrinks when a scheduled
//! decode is close to its deadline, so the step finishes in time for it.

use crate::config::Policy;
use crate::kv_cache_manager::{AllocStatus, ComputedBlocks};
use crate::output::{ChunkKind, ScheduledRequest, SchedulerOutput};
use crate::policy::{PolicyKey, policy_key};
use crate::scheduler::Scheduler;
use metrum_core::{EngineEvent, EventKind, FinishReason, Nanos, RequestId, RequestStatus};

/// One request's share of the step before the output is built.
struct Planned {
    id: RequestId,
    num_tokens: usize,
    num_cached_tokens: usize,
    /// Admitted from the waiting queue in this step.
    admitted: bool,
}

/// The step under construction.
struct Plan {
    budget_left: usize,
    planned: Vec<Planned>,
    preempted: Vec<RequestId>,
    /// Policy keys of running requests at the start of the step, best first.
    running_keys: Vec<(PolicyKey, RequestId)>,
}

impl Plan {
    fn contains(&self, id: RequestId) -> bool {
        self.planned.iter().any(|p| p.id == id)
    }

    fn key_of(&self, id: RequestId) -> Option<PolicyKey> {
        self.running_keys
            .iter()
            .find(|(_, r)| *r == id)
            .map(|(k, _)| *k)
    }

    fn add(&mut self, id: RequestId, num_tokens: usize, num_cached_tokens: usize, admitted: bool) {
        self.budget_left -= num_tokens;
        self.planned.push(Planned {
            id,
            num_tokens,
            num_cached_tokens,
            admitted,
        });
    }
}

/// Whether a running request that cannot get blocks may preempt itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WhenNoLowerVictim {
    /// A decode: preempt itself (it is the lowest priority left), as vLLM and Sarathi do.
    PreemptSelf,
    /// A partial prefill: keep its blocks and wait for a later step.
    Wait,
}

impl Scheduler {
    /// Forms the next batch at time `now`. See the module docs for the order.
    pub fn schedule(&mut self, now: Nanos) -> SchedulerOutput {
        self.step += 1;
        let mut plan = Plan {
            budget_left: self.config.max_num_batched_tokens,
            planned: Vec::new(),
            preempted: Vec::new(),
            running_keys: self.rank_running(),
        };
        let order: Vec<RequestId> = plan.running_keys.iter().map(|&(_, id)| id).collect();

        for &id in &order {
            if self.uncomputed(id) == Some(1) {
                self.schedule_running(id, 1, WhenNoLowerVictim::PreemptSelf, &mut plan, now);
            }
        }

        let mut prefill_budget = plan.budget_left;
        if self.config.policy == Policy::Deadline {
            prefill_budget = prefill_budget.min(self.deadline_prefill_cap(&plan, now));
        }

        for &id in &order {
            if prefill_budget == 0 {
                break;
            }
            let Some(uncomputed) = self.uncomputed(id) else {
                continue; // preempted earlier in this step
            };
            if uncomputed <= 1 || plan.contains(id) {
                continue;
            }
            let n = uncomputed.min(prefill_budget);
            if self.schedule_running(id, n, WhenNoLowerVictim::Wait, &mut plan, now) {
                prefill_budget -= n;
            }
        }

        if plan.preempted.is_empty() {
            while prefill_budget > 0 && self.running.len() < self.config.max_num_seqs {
                let Some(id) = self.waiting.first() else {
                    break;
                };
                match self.admit(id, prefill_budget, &mut plan, now) {
                    Some(n) => prefill_budget -= n,
                    None => break,
                }
            }
        }
        self.build_output(plan, now)
    }

    /// Running requests by policy key, best first; `running` is kept in that order.
    fn rank_running(&mut self) -> Vec<(PolicyKey, RequestId)> {
        let mut keys: Vec<(PolicyKey, RequestId)> = self
            .running
            .iter()
            .map(|id| {
                let req = &self.requests[id];
                (policy_key(self.config.policy, &self.config.slo, req), *id)
            })
            .collect();
        keys.sort();
        self.running = keys.iter().map(|&(_, id)| id).collect();
        keys
    }

    /// Tokens a running request still has to compute; `None` if it is not running.
    fn uncomputed(&self, id: RequestId) -> Option<usize> {
        let req = self.requests.get(&id)?;
        (req.status == RequestStatus::Running).then(|| req.num_uncomputed_tokens())
    }

    /// Allocates slots for `n` more tokens of running request `id`, preempting lower-priority
    /// running requests that are not in this step's batch until it fits. Returns whether `id`
    /// was scheduled.
    fn schedule_running(
        &mut self,
        id: RequestId,
        n: usize,
        fallback: WhenNoLowerVictim,
        plan: &mut Plan,
        now: Nanos,
    ) -> bool {
        loop {
            let total = self.requests[&id].num_computed_tokens + n;
            match self.kv.allocate_slots(id, &ComputedBlocks::none(), total) {
                AllocStatus::Ok => {
                    plan.add(id, n, 0, false);
                    return true;
                }
                AllocStatus::Later => match self.lower_victim(id, plan) {
                    Some(victim) => self.preempt(victim, plan, now),
                    None => {
                        if fallback == WhenNoLowerVictim::PreemptSelf {
                            self.preempt(id, plan, now);
                        }
                        return false;
                    }
                },
                AllocStatus::Impossible => {
                    // Admission guarantees a request fits alone; keep going if that breaks.
                    self.finish(id, FinishReason::Error, now);
                    return false;
                }
            }
        }
    }

    /// The lowest-priority running request outside this step's batch, if it ranks below `id`.
    fn lower_victim(&self, id: RequestId, plan: &Plan) -> Option<RequestId> {
        let own = plan.key_of(id)?;
        plan.running_keys
            .iter()
            .rev()
            .find(|(key, r)| {
                *r != id && self.uncomputed(*r).is_some() && !plan.contains(*r) && *key > own
            })
            .map(|&(_, r)| r)
    }

    /// Recompute preemption: drop the KV and put the request back in the queue. Arrival and
    /// first-schedule time are kept, so its scheduling delay is not reset.
    fn preempt(&mut self, id: RequestId, plan: &mut Plan, now: Nanos) {
        self.running.retain(|&r| r != id);
        self.kv.free(id);
        let req = self
            .requests
            .get_mut(&id)
            .expect("preempted request is live");
        req.num_computed_tokens = 0;
        req.transition(RequestStatus::Preempted);
        req.preempted_at = Some(now);
        req.num_preemptions += 1;
        let key = policy_key(self.config.policy, &self.config.slo, req);
        req.queue_key = Some(key);
        self.waiting.push(key, id);
        self.num_preemptions += 1;
        plan.preempted.push(id);
        self.events.push(EngineEvent {
            request: id,
            at: now,
            kind: EventKind::Preempted,
        });
    }

    /// Tries to start the first waiting request with a chunk of at most `budget` tokens,
    /// reusing its longest cached prefix. Returns the chunk size, or `None` if it must wait
    /// (no memory now).
    fn admit(
        &mut self,
        id: RequestId,
        budget: usize,
        plan: &mut Plan,
        now: Nanos,
    ) -> Option<usize> {
        let req = &self.requests[&id];
        let hit = self.kv.get_computed_blocks(req.tokens());
        let start = hit.num_computed_tokens();
        let n = (req.num_tokens() - start).min(budget);
        match self.kv.allocate_slots(id, &hit, start + n) {
            AllocStatus::Ok => {}
            AllocStatus::Later => return None,
            AllocStatus::Impossible => {
                // Unreachable after admission checks; never let it block the queue.
                self.finish(id, FinishReason::Error, now);
                return Some(0);
            }
        }
        let req = self.requests.get_mut(&id).expect("waiting request is live");
        if let Some(key) = req.queue_key.take() {
            self.waiting.remove(key, id);
        }
        req.num_computed_tokens = start;
        if req.first_scheduled.is_none() {
            req.first_scheduled = Some(now);
            req.num_cached_tokens = start;
        }
        if let Some(at) = req.preempted_at.take() {
            req.preempted_time = req.preempted_time + now.saturating_sub(at);
            req.num_restarts += 1;
        }
        req.transition(RequestStatus::Running);
        self.running.push(id);
        plan.add(id, n, start, true);
        self.events.push(EngineEvent {
            request: id,
            at: now,
            kind: EventKind::Scheduled,
        });
        Some(n)
    }

    /// Under the deadline policy: the most prefill tokens this step can carry and still end
    /// before the tightest deadline among its decodes, by the prefill-time model (used as a
    /// step-time model: `predict(batch tokens)`). Never below one block, so prefills keep
    /// moving when decodes are already late.
    fn deadline_prefill_cap(&self, plan: &Plan, now: Nanos) -> usize {
        let tightest = plan
            .planned
            .iter()
            .map(|p| self.requests[&p.id].deadline.next_deadline())
            .min();
        let Some(deadline) = tightest else {
            return usize::MAX;
        };
        let time_left = deadline.saturating_sub(now);
        let decodes = plan.planned.len();
        let model = &self.config.slo.prefill;
        if model.predict(decodes + plan.budget_left) <= time_left {
            return usize::MAX;
        }
        // Largest n in [0, budget_left] with predict(decodes + n) <= time_left.
        let (mut lo, mut hi) = (0, plan.budget_left);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if model.predict(decodes + mid) <= time_left {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo.max(self.config.block_size.min(plan.budget_left))
    }

    /// Turns the plan into the output, advancing each request's computed-token count (the
    /// step's KV counts as written from here on; `update` only appends the sampled tokens).
    fn build_output(&mut self, plan: Plan, now: Nanos) -> SchedulerOutput {
        let mut scheduled = Vec::with_capacity(plan.planned.len());
        for p in &plan.planned {
            let req = self
                .requests
                .get_mut(&p.id)
                .expect("planned request is live");
            let start = req.num_computed_tokens;
            let end = start + p.num_tokens;
            let is_decode = req.num_uncomputed_tokens() == 1 && req.num_output_tokens() > 0;
            let kind = if is_decode && !p.admitted {
                ChunkKind::Decode
            } else if req.num_preemptions == 0 {
                ChunkKind::Prefill
            } else {
                ChunkKind::Recompute
            };
            scheduled.push(ScheduledRequest {
                id: p.id,
                token_ids: req.tokens()[start..end].to_vec(),
                start_position: start,
                block_table: self.kv.block_table(p.id).unwrap_or_default().to_vec(),
                samples: end == req.num_tokens(),
                kind,
                num_cached_tokens: p.num_cached_tokens,
            });
            req.num_computed_tokens = end;
        }
        SchedulerOutput {
            step: self.step,
            scheduled_at: now,
            scheduled,
            preempted: plan.preempted,
            finished: std::mem::take(&mut self.finished_since_last_step),
        }
    }
}
