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
    /// drives the requests' deadlines.
    ///
    /// For each scheduled request still live: registers its newly completed full blocks in the
    /// prefix cache; if it sampled, appends the token and checks, in order, EOS (unless
    /// `ignore_eos`) and stop token ids (both only once `min_tokens` outputs exist), then
    /// `max_tokens` and `max_model_len`. Finished requests free their blocks.
    ///
    /// Requests aborted between `schedule` and `update` are skipped. A request due a token
    /// that `sampled` lacks ends with [`FinishReason::Error`] (it could never progress).
    pub fn update(
        &mut self,
        output: &SchedulerOutput,
        sampled: &[(RequestId, u32)],
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
        let mut tokens: HashMap<RequestId, u32> = HashMap::with_capacity(sampled.len());
        for &(id, token) in sampled {
            tokens.entry(id).or_insert(token);
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
            self.kv
                .cache_full_blocks(s.id, req.tokens(), s.context_len());
            if !s.samples {
                continue;
            }
            let reason = match tokens.get(&s.id) {
                Some(&token) => {
                    req.append_output(token);
                    req.deadline.on_tokens(now, 1);
                    self.events.push(EngineEvent {
                        request: s.id,
                        at: now,
                        kind: EventKind::Tokens { count: 1 },
                    });
                    result.appended.push((s.id, token));
                    req.stop_reason(max_model_len)
                }
                None => Some(FinishReason::Error),
            };
            if let Some(reason) = reason {
                result.finished.extend(self.finish(s.id, reason, now));
            }
        }
        Ok(result)
    }
}
