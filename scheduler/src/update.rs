//! Applying a step's results: cache the blocks the step completed, append sampled tokens,
//! check stop conditions, and end finished requests.

use crate::output::{SchedulerOutput, StepResult, UpdateError};
use crate::scheduler::Scheduler;
use metrum_core::{EngineEvent, EventKind, FinishReason, Nanos, RequestId, RequestStatus};
use std::collections::HashMap;

impl Scheduler {
    /// Applies the results of the step `output` described: `sampled` holds one token per
    /// request with `samples == true` (extra entries are ignored; the first entry per id
    /// counts). `now` is when the tokens became visible: it stamps the `Tokens` events and
    /// drives the requests' deadlines. See [`Scheduler::update_multi`] for speculative steps.
    pub fn update(
        &mut self,
        output: &SchedulerOutput,
        sampled: &[(RequestId, u32)],
        now: Nanos,
    ) -> Result<StepResult, UpdateError> {
        let sampled: Vec<(RequestId, Vec<u32>)> =
            sampled.iter().map(|&(id, t)| (id, vec![t])).collect();
        self.update_multi(output, &sampled, now)
    }

    /// [`Scheduler::update`] for steps that verified draft tokens: each sampling request gets
    /// the tokens its rows produced, in order. For a request with `k` drafts that is the
    /// accepted drafts and then one token sampled after them (at most `k + 1`); the tokens are
    /// accepted only while they match the drafts, so the first mismatch is the last token kept
    /// (its KV was never computed, and nothing after it was conditioned on the right context).
    ///
    /// For each scheduled request still live: appends the tokens one by one, checking after
    /// each, in order, EOS (unless `ignore_eos`) and stop token ids (both only once
    /// `min_tokens` outputs exist), then `max_tokens` and `max_model_len`; the first stop ends
    /// the request and drops the rest. The rejected drafts roll back: `num_computed_tokens`
    /// loses them and the blocks allocated only for them go back to the pool, before the newly
    /// completed full blocks are registered in the prefix cache (so no block holding rejected
    /// KV is ever cached). Finished requests free their blocks. All tokens of one request count
    /// as one delivery (`Tokens { count }`).
    ///
    /// Requests aborted between `schedule` and `update` are skipped. A request due a token
    /// that `sampled` lacks (or gets an empty list) ends with [`FinishReason::Error`].
    pub fn update_multi(
        &mut self,
        output: &SchedulerOutput,
        sampled: &[(RequestId, Vec<u32>)],
        now: Nanos,
    ) -> Result<StepResult, UpdateError> {
        if output.step != self.step {
            return Err(UpdateError::StaleOutput {
                expected: self.step,
                got: output.step,
            });
        }
        if self.applied_step == output.step {
            return Err(UpdateError::AlreadyApplied { step: output.step });
        }
        self.applied_step = output.step;
        let mut tokens: HashMap<RequestId, &[u32]> = HashMap::with_capacity(sampled.len());
        for (id, list) in sampled {
            tokens.entry(*id).or_insert(list.as_slice());
        }
        let max_model_len = self.config.max_model_len;
        let mut result = StepResult::default();
        for s in &output.scheduled {
            let Some(req) = self.requests.get_mut(&s.id) else {
                continue;
            };
            if req.status != RequestStatus::Running || req.num_computed_tokens < s.context_len() {
                continue;
            }
            if !s.samples {
                self.kv
                    .cache_full_blocks(s.id, req.tokens(), s.context_len());
                continue;
            }
            let accepted = match tokens.get(&s.id) {
                Some(list) if !list.is_empty() => accepted_prefix(s.draft_tokens(), list),
                _ => &[][..],
            };
            let mut reason = accepted.is_empty().then_some(FinishReason::Error);
            let mut appended = 0;
            for &token in accepted {
                req.append_output(token);
                result.appended.push((s.id, token));
                appended += 1;
                reason = req.stop_reason(max_model_len);
                if reason.is_some() {
                    break;
                }
            }
            // The step computed KV for the last known token and every draft; only the
            // accepted drafts' KV is valid (the last appended token's KV is not computed yet).
            let rejected = s.num_draft_tokens + 1 - accepted.len();
            req.num_computed_tokens -= rejected;
            let computed = req.num_computed_tokens;
            self.kv.truncate(s.id, computed);
            self.kv.cache_full_blocks(s.id, req.tokens(), computed);
            if appended > 0 {
                req.deadline.on_tokens(now, appended as u32);
                self.events.push(EngineEvent {
                    request: s.id,
                    at: now,
                    kind: EventKind::Tokens {
                        count: appended as u32,
                    },
                });
            }
            if let Some(reason) = reason {
                result.finished.extend(self.finish(s.id, reason, now));
            }
        }
        Ok(result)
    }

    /// Proposes `drafts` for running request `id`'s next decode step (speculative decoding);
    /// they replace any earlier proposal. `schedule` verifies them if the request decodes in
    /// that step and there is room (see `batch`), and drops them otherwise. No-op for a
    /// request that is not live.
    pub fn set_draft_tokens(&mut self, id: RequestId, drafts: Vec<u32>) {
        if let Some(req) = self.requests.get_mut(&id) {
            req.draft_tokens = drafts;
        }
    }
}

/// The tokens of `sampled` that stand: those matching `drafts`, then the first that does not
/// (or the one after the last draft). Never more than `drafts.len() + 1`.
fn accepted_prefix<'a>(drafts: &[u32], sampled: &'a [u32]) -> &'a [u32] {
    let matching = drafts
        .iter()
        .zip(sampled)
        .take_while(|(d, t)| d == t)
        .count();
    &sampled[..(matching + 1).min(sampled.len())]
}
