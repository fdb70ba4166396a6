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
//! Under the deadline policy two things differ:
//! - the prefill share of the step shrinks when a scheduled decode is close to its deadline, so
//!   the step finishes in time for it (`step_budget`: each chunk's cost depends on where it
//!   starts);
//! - the preemption victim is the lower-ranked running request with the least KV to rebuild,
//!   not the one with the most slack (see [`crate::policy`] for why).

use crate::kv_cache_manager::{AllocStatus, ComputedBlocks};
use crate::output::{ChunkKind, ScheduledRequest, SchedulerOutput};
use crate::policy::{PolicyKey, policy_key};
use crate::scheduler::Scheduler;
use crate::step_budget::StepTimeBudget;
use metrum_core::{EngineEvent, EventKind, FinishReason, Nanos, RequestId, RequestStatus};

/// One request's share of the step before the output is built.
struct Planned {
    id: RequestId,
    num_tokens: usize,
    num_cached_tokens: usize,
    /// Admitted from the waiting queue in this step.
    admitted: bool,
    /// Draft tokens verified in this decode (the last of its `num_tokens`).
    drafts: Vec<u32>,
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
            drafts: Vec::new(),
        });
    }
}

/// Whether a running request that cannot get blocks, and finds no victim, may preempt itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WhenNoVictim {
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

        // Every decode gets its one token; drafts only take the budget those leave.
        let mut decodes_left = order
            .iter()
            .filter(|&&id| self.uncomputed(id) == Some(1))
            .count();
        for &id in &order {
            let drafts = match self.requests.get_mut(&id) {
                Some(req) => std::mem::take(&mut req.draft_tokens),
                None => continue,
            };
            if self.uncomputed(id) != Some(1) {
                continue;
            }
            let draft_budget = plan.budget_left.saturating_sub(decodes_left);
            decodes_left -= 1;
            if !self.schedule_with_drafts(id, drafts, draft_budget, &mut plan) {
                self.schedule_running(id, 1, WhenNoVictim::PreemptSelf, &mut plan, now);
            }
        }

        let mut prefill_budget = plan.budget_left;
        let mut clock = if self.config.policy.is_deadline_aware() {
            self.deadline_step_budget(&plan, now)
        } else {
            None
        };

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
            let start = self.requests[&id].num_computed_tokens;
            let mut n = uncomputed.min(prefill_budget);
            if let Some(clock) = &clock {
                n = clock.fit(start, n);
                if n == 0 {
                    break; // the step is full in time, if not in tokens
                }
            }
            if self.schedule_running(id, n, WhenNoVictim::Wait, &mut plan, now) {
                prefill_budget -= n;
                if let Some(clock) = &mut clock {
                    clock.commit(start, n);
                }
            }
        }

        if plan.preempted.is_empty() {
            while prefill_budget > 0 && self.running.len() < self.config.max_num_seqs {
                let Some(id) = self.waiting.first() else {
                    break;
                };
                match self.admit(id, prefill_budget, clock.as_mut(), &mut plan, now) {
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

    /// Allocates slots for `n` more tokens of running request `id`, preempting running
    /// requests that are not in this step's batch ([`Scheduler::victim_for`]) until it fits.
    /// Returns whether `id` was scheduled.
    fn schedule_running(
        &mut self,
        id: RequestId,
        n: usize,
        fallback: WhenNoVictim,
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
                AllocStatus::Later => match self.victim_for(id, plan) {
                    Some(victim) => self.preempt(victim, plan, now),
                    None => {
                        if fallback == WhenNoVictim::PreemptSelf {
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

    /// Speculative decoding: schedules decode `id` with its draft tokens (as many as the token
    /// budget, `max_tokens` and the context allow) if their KV slots are free without
    /// preempting anyone: drafts are a bet, never worth another request's KV. Returns false
    /// (nothing planned) when there are no drafts to verify; the plain decode then follows.
    fn schedule_with_drafts(
        &mut self,
        id: RequestId,
        mut drafts: Vec<u32>,
        draft_budget: usize,
        plan: &mut Plan,
    ) -> bool {
        let req = &self.requests[&id];
        // Accepting all k drafts appends k + 1 tokens.
        let room_in_output = req.max_tokens.saturating_sub(req.num_output_tokens() + 1);
        let room_in_context = self
            .config
            .max_model_len
            .saturating_sub(req.num_tokens() + 1);
        drafts.truncate(room_in_output.min(room_in_context).min(draft_budget));
        if drafts.is_empty() {
            return false;
        }
        let total = req.num_computed_tokens + 1 + drafts.len();
        if self.kv.allocate_slots(id, &ComputedBlocks::none(), total) != AllocStatus::Ok {
            return false;
        }
        plan.add(id, 1 + drafts.len(), 0, false);
        if let Some(planned) = plan.planned.last_mut() {
            planned.drafts = drafts;
        }
        true
    }

    /// The running request outside this step's batch to preempt so that `id` fits.
    ///
    /// - fcfs, priority: the lowest-ranked, if it ranks below `id`.
    /// - deadline: the one with the fewest computed tokens (the least KV to rebuild), whatever
    ///   its rank; the lowest-ranked among equals. Recompute throws the victim's KV away and
    ///   every request waits while it is rebuilt, so the cheapest victim costs the least; a
    ///   victim more urgent than `id` goes back to the head of the queue, where its freed
    ///   blocks are usually still in the prefix cache. (Picking the one with the most slack
    ///   chose long-running on-time decodes, the most expensive KV there is.)
    fn victim_for(&self, id: RequestId, plan: &Plan) -> Option<RequestId> {
        let own = plan.key_of(id)?;
        let mut candidates = plan
            .running_keys
            .iter()
            .filter(|(_, r)| *r != id && self.uncomputed(*r).is_some() && !plan.contains(*r));
        let victim = if self.config.policy.is_deadline_aware() {
            candidates.min_by_key(|(key, r)| {
                (
                    self.requests[r].num_computed_tokens,
                    std::cmp::Reverse(*key),
                )
            })
        } else {
            candidates.rfind(|(key, _)| *key > own)
        };
        victim.map(|&(_, r)| r)
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
        req.draft_tokens.clear(); // proposed for KV it no longer has
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
        clock: Option<&mut StepTimeBudget>,
        plan: &mut Plan,
        now: Nanos,
    ) -> Option<usize> {
        let req = &self.requests[&id];
        let hit = self.kv.get_computed_blocks(req.tokens());
        let start = hit.num_computed_tokens();
        let mut n = (req.num_tokens() - start).min(budget);
        if let Some(clock) = &clock {
            n = clock.fit(start, n);
            if n == 0 {
                return None;
            }
        }
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
        if let Some(clock) = clock {
            clock.commit(start, n);
        }
        self.running.push(id);
        plan.add(id, n, start, true);
        self.events.push(EngineEvent {
            request: id,
            at: now,
            kind: EventKind::Scheduled,
        });
        Some(n)
    }

    /// Under the deadline policy: the time budget of this step, up to the tightest deadline
    /// among the decodes already planned; `None` (no limit) without decodes.
    fn deadline_step_budget(&self, plan: &Plan, now: Nanos) -> Option<StepTimeBudget> {
        let tightest = plan
            .planned
            .iter()
            .map(|p| self.requests[&p.id].deadline.next_deadline())
            .min()?;
        let decodes = plan
            .planned
            .iter()
            .map(|p| (self.requests[&p.id].num_computed_tokens, p.num_tokens));
        Some(StepTimeBudget::new(
            self.config.slo.prefill,
            tightest.saturating_sub(now),
            self.config.block_size,
            decodes,
        ))
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
            let known_end = end - p.drafts.len();
            let mut token_ids = req.tokens()[start..known_end].to_vec();
            token_ids.extend_from_slice(&p.drafts);
            let kind = if is_decode && !p.admitted {
                ChunkKind::Decode
            } else if req.num_preemptions == 0 {
                ChunkKind::Prefill
            } else {
                ChunkKind::Recompute
            };
            scheduled.push(ScheduledRequest {
                id: p.id,
                token_ids,
                start_position: start,
                block_table: self.kv.block_table(p.id).unwrap_or_default().to_vec(),
                samples: known_end == req.num_tokens(),
                kind,
                num_cached_tokens: p.num_cached_tokens,
                num_draft_tokens: p.drafts.len(),
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

#[cfg(test)]
mod tests {
    use crate::{DeadlineSlo, NewRequest, Policy, PrefillModel, Scheduler, SchedulerConfig};
    use metrum_core::{Nanos, RequestId};

    fn ms(v: u64) -> Nanos {
        Nanos::from_millis(v)
    }

    fn prompt(seed: u32, len: usize) -> Vec<u32> {
        (0..len as u32).map(|i| seed * 10_000 + i + 3).collect()
    }

    fn sample(out: &crate::SchedulerOutput) -> Vec<(RequestId, u32)> {
        out.scheduled
            .iter()
            .filter(|s| s.samples)
            .map(|s| (s.id, 7))
            .collect()
    }

    /// Runs to the end (1 ms steps) and checks nothing leaked.
    fn drain(mut s: Scheduler, mut now: Nanos) {
        for _ in 0..10_000 {
            if !s.has_unfinished() {
                break;
            }
            let out = s.schedule(now);
            now = now + ms(1);
            s.update(&out, &sample(&out), now).unwrap();
            s.check_invariants().unwrap();
        }
        assert!(!s.has_unfinished());
        let kv = s.kv_cache();
        assert_eq!(kv.num_free_blocks(), kv.num_blocks());
    }

    /// C (late, so most urgent) needs a fifth block of five; B (3 prompt tokens) and A (11)
    /// decode with slack, A ranked last. Returns who was preempted for C.
    fn victim_when_memory_runs_out(policy: Policy) -> Vec<RequestId> {
        let mut s = Scheduler::new(SchedulerConfig {
            max_num_seqs: 8,
            max_num_batched_tokens: 32,
            block_size: 4,
            num_blocks: 5,
            max_model_len: 64,
            policy,
            ..SchedulerConfig::default()
        })
        .unwrap();
        let (a, b, c) = (RequestId(1), RequestId(2), RequestId(3));
        s.add_request(NewRequest::new(c, prompt(3, 4), 8, ms(600)))
            .unwrap();
        s.add_request(NewRequest::new(b, prompt(2, 3), 8, ms(1000)))
            .unwrap();
        s.add_request(NewRequest::new(a, prompt(1, 11), 8, ms(1000)))
            .unwrap();
        let out = s.schedule(ms(1000));
        assert_eq!(out.scheduled.len(), 3);
        s.update(&out, &sample(&out), ms(1001)).unwrap();
        let out = s.schedule(ms(1001));
        let preempted = out.preempted.clone();
        s.update(&out, &sample(&out), ms(1002)).unwrap();
        drain(s, ms(1002));
        preempted
    }

    #[test]
    fn deadline_preempts_the_cheapest_victim_and_fcfs_the_latest_arrival() {
        // A's 11 computed tokens would all be recomputed; B's 3 are the least KV to lose.
        assert_eq!(
            victim_when_memory_runs_out(Policy::Deadline),
            vec![RequestId(2)]
        );
        assert_eq!(
            victim_when_memory_runs_out(Policy::Fcfs),
            vec![RequestId(1)]
        );
    }

    #[test]
    fn a_late_chunk_of_a_long_prompt_is_capped_by_its_attention_cost() {
        // Prefill time 1 µs·P²: a chunk from s to s + n costs (s + n)² − s² µs.
        let slo = DeadlineSlo {
            tbt_slo: ms(30),
            ttft_slack: ms(300),
            prefill: PrefillModel {
                a_s: 0.0,
                b_s_per_token: 0.0,
                c_s_per_token2: 1e-6,
            },
        };
        let mut s = Scheduler::new(SchedulerConfig {
            max_num_seqs: 8,
            max_num_batched_tokens: 1000,
            block_size: 4,
            num_blocks: 1024,
            max_model_len: 4096,
            policy: Policy::Deadline,
            slo,
            ..SchedulerConfig::default()
        })
        .unwrap();
        let (d, long) = (RequestId(0), RequestId(1));
        s.add_request(NewRequest::new(d, prompt(0, 4), 20, Nanos::ZERO))
            .unwrap();
        s.add_request(NewRequest::new(long, prompt(1, 2000), 2, Nanos::ZERO))
            .unwrap();
        let out = s.schedule(Nanos::ZERO);
        assert_eq!(out.get(long).unwrap().num_tokens(), 996);
        // D's first token lands exactly on D_p(4) = 16 µs + 300 ms: no slack, 30 ms left.
        let first_token = Nanos(300_016_000);
        s.update(&out, &sample(&out), first_token).unwrap();
        let out = s.schedule(first_token);
        // Decode at 4: 9 µs. 14 tokens from 996 cost 14·2006 = 28 084 µs; 15 would cost 30 105.
        // (Costed as a chunk from position 0, as before, it would have been 172.)
        assert_eq!(out.get(long).unwrap().num_tokens(), 14);
        s.update(&out, &sample(&out), first_token + ms(30)).unwrap();
        drain(s, first_token + ms(30));
    }
}
