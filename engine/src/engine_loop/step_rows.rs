//! The two halves of a step around the executor: its forward pass, with the grammar masks
//! computed beside it, and the sampling of the logits rows it returns, request by request
//! ([`crate::step_sampling`]). `step` in the parent module calls them in that order and does
//! everything else on the engine thread.

use super::{Engine, Live};
use crate::error::EngineError;
use crate::executor::LogitsRows;
use crate::model::SequenceChunk;
use crate::step_sampling::{self, RequestRows, RowsOutcome};
use crate::structured::GrammarState;
use metrum_core::RequestId;
use metrum_scheduler::{ScheduledRequest, SchedulerOutput};
use std::collections::{HashMap, HashSet};

impl Engine {
    /// Samples the rows of every request in `plan` that samples, each with its own sampler
    /// (and grammar, and drafts to verify), in parallel when that pays
    /// ([`step_sampling::split_for`]); the outcomes follow the plan's order. A request no
    /// longer live (nothing can remove one between schedule and here) is skipped.
    pub(super) fn sample_rows<'p>(
        &mut self,
        plan: &'p SchedulerOutput,
        logits: &mut LogitsRows,
    ) -> Vec<(&'p ScheduledRequest, RowsOutcome)> {
        let vocab = logits.vocab;
        let sampling: Vec<&ScheduledRequest> =
            plan.scheduled.iter().filter(|s| s.samples).collect();
        let position: HashMap<RequestId, usize> = sampling
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        let mut states: Vec<Option<&mut Live>> = sampling.iter().map(|_| None).collect();
        for (id, live) in self.live.iter_mut() {
            if let Some(&i) = position.get(id) {
                states[i] = Some(live);
            }
        }
        let mut rest = logits.data.as_mut_slice();
        let mut requests = Vec::with_capacity(sampling.len());
        let mut owners = Vec::with_capacity(sampling.len());
        for (s, state) in sampling.into_iter().zip(states) {
            let (rows, tail) = std::mem::take(&mut rest).split_at_mut(s.num_logits() * vocab);
            rest = tail;
            let Some(live) = state else {
                continue;
            };
            requests.push(RequestRows {
                sampler: &mut live.sampler,
                grammar: live.grammar.as_mut(),
                drafts: s.draft_tokens(),
                logits: rows,
            });
            owners.push(s);
        }
        let split = step_sampling::split_for(&requests);
        owners
            .into_iter()
            .zip(step_sampling::sample_rows(vocab, requests, split))
            .collect()
    }

    /// The executor's forward pass (or the fault a test armed for it). Meanwhile a scoped
    /// thread computes the grammar masks of the constrained rows in `samplers`: they depend
    /// only on tokens already sampled, and the forward only borrows the executor, so the two
    /// run side by side (llguidance's advice; review §5). A panic on that thread only leaves
    /// masks unset, which sampling then computes itself.
    pub(super) fn forward_with_masks(
        &mut self,
        chunks: &[SequenceChunk<'_>],
        samplers: &[RequestId],
    ) -> Result<LogitsRows, EngineError> {
        #[cfg(feature = "fault-injection")]
        if let Some(fault) = self.armed_fault.take() {
            return crate::executor::suffer(fault);
        }
        let executor = &mut self.executor;
        if !self.live.values().any(|live| live.grammar.is_some()) {
            return executor.execute(chunks);
        }
        let sampling: HashSet<RequestId> = samplers.iter().copied().collect();
        let grammars: Vec<&mut GrammarState> = self
            .live
            .iter_mut()
            .filter(|(id, _)| sampling.contains(id))
            .filter_map(|(_, live)| live.grammar.as_mut())
            .collect();
        if grammars.is_empty() {
            return executor.execute(chunks);
        }
        std::thread::scope(|scope| {
            let masks = scope.spawn(move || grammars.into_iter().for_each(|g| g.prepare_mask()));
            let logits = executor.execute(chunks);
            let _ = masks.join();
            logits
        })
    }
}
