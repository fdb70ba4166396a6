//! `draft_model` speculation: a smaller model of the same tokenizer proposes the drafts,
//! greedily, from its own paged KV cache.
//!
//! Why its own cache and block pool, not the target's block tables (vLLM v1 gives the draft a
//! second KV group under the target's tables): the scheduler plans the target only, and its
//! block tables change under preemption, prefix-cache hits and rollback; a second group would
//! make every one of those paths allocate, share and roll back two caches at once. An
//! engine-owned cache keeps the scheduler untouched and the draft's state in one place:
//! - per request, the tokens whose KV the draft holds (`DraftSequence::computed`) and their
//!   blocks, from a [`BlockPool`] of its own (no prefix caching: a draft shares nothing);
//! - a proposal first *catches up*: the longest common prefix of what the draft holds and the
//!   request's tokens stands, the rest is truncated (rollback of rejected drafts) and the new
//!   tokens run as one chunk; its last row gives draft 1; then `K - 1` single-token forwards,
//!   batched across the requests that speculate, give the others (each fed back in, so the
//!   draft holds drafts `1..K-1` afterwards);
//! - the catch-up of one proposal is at most the engine's `--max-num-batched-tokens` tokens in
//!   all, shortest first: a request in decode catches up on a few tokens and always fits, while
//!   a new prompt is caught up chunk by chunk over several steps and gets drafts once it is
//!   whole (one forward over a 2k-token prompt would stall every stream in the batch, which is
//!   what chunked prefill exists to prevent);
//! - a request's sequence is freed when it finishes, is aborted or is preempted.
//!
//! The draft's pool has as many blocks as the target's (`loader` splits the KV budget between
//! the two in proportion to their block sizes), so it holds a draft for every token the target
//! can hold; when it still runs out (the target shares prefix blocks, the draft does not), that
//! request simply gets no drafts this step.
//!
//! Drafts are argmax picks, i.e. point masses, so `rejection::verify` (sample the target's row,
//! accept iff equal) is exact for greedy and sampled targets alike; sampling drafts from the
//! draft's distribution would need the min(1, p/q) rule with its residual instead.

use crate::error::EngineError;
use crate::executor::Executor;
use crate::model::{DecoderModel, ModelConfig, SequenceChunk};
use crate::sampling::argmax;
use crate::source::{ModelFiles, resolve_model};
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device};
use metrum_core::{BlockId, RequestId};
use metrum_scheduler::BlockPool;
use std::collections::HashMap;

/// Resolves and loads the draft model `spec` (any `--model` form) next to the target, and
/// checks it can draft for it ([`check_compatible`]): [`EngineError::Load`] names `spec`, the
/// loader names the config field.
pub fn load_draft(
    spec: &str,
    target: (&DecoderModel, &Tokenizer),
    device: &Device,
    dtype: DType,
) -> Result<(DecoderModel, ModelFiles), EngineError> {
    let files = resolve_model(Some(spec)).map_err(|e| EngineError::load(spec, e))?;
    let model =
        DecoderModel::load(&files, device, dtype).map_err(|e| EngineError::load(spec, e))?;
    let tokenizer = Tokenizer::from_model_files(&files).map_err(|e| EngineError::load(spec, e))?;
    check_compatible((target.0.config(), target.1), (model.config(), &tokenizer))?;
    Ok((model, files))
}

/// Refuses a draft model that cannot serve `target`: another vocabulary (logits width, token
/// strings, special ids) or more parameters: [`EngineError::DraftModel`] says which.
pub fn check_compatible(
    target: (&ModelConfig, &Tokenizer),
    draft: (&ModelConfig, &Tokenizer),
) -> Result<(), EngineError> {
    let ((tc, tt), (dc, dt)) = (target, draft);
    if tc.vocab_size != dc.vocab_size || tt.vocab_size() != dt.vocab_size() {
        return Err(EngineError::DraftModel(format!(
            "the draft's vocabulary ({} logits, {} tokens) differs from the target's \
             ({} logits, {} tokens); a draft model must share the target's tokenizer",
            dc.vocab_size,
            dt.vocab_size(),
            tc.vocab_size,
            tt.vocab_size()
        )));
    }
    if tt.eos_token_ids() != dt.eos_token_ids() || tt.bos_token_id() != dt.bos_token_id() {
        return Err(EngineError::DraftModel(format!(
            "the draft's special tokens (eos {:?}, bos {:?}) differ from the target's \
             (eos {:?}, bos {:?})",
            dt.eos_token_ids(),
            dt.bos_token_id(),
            tt.eos_token_ids(),
            tt.bos_token_id()
        )));
    }
    let differing =
        (0..tt.vocab_size() as u32).find(|&id| tt.token_to_piece(id) != dt.token_to_piece(id));
    if let Some(id) = differing {
        return Err(EngineError::DraftModel(format!(
            "token {id} is {:?} for the draft but {:?} for the target; a draft model \
             must share the target's tokenizer",
            dt.token_to_piece(id),
            tt.token_to_piece(id)
        )));
    }
    let (tp, dp) = (tc.num_parameters(), dc.num_parameters());
    if dp > tp {
        return Err(EngineError::DraftModel(format!(
            "the draft model ({dp} parameters) is larger than the target ({tp}); \
             a draft must be cheaper to run than the model it drafts for"
        )));
    }
    Ok(())
}

/// What the draft's cache holds for one request.
#[derive(Debug, Default)]
struct DraftSequence {
    /// The tokens whose KV is in the draft's cache, in position order.
    computed: Vec<u32>,
    /// Their blocks (and room for the drafts of the current proposal).
    blocks: Vec<BlockId>,
}

/// One request's part in a proposal round.
struct Round {
    id: RequestId,
    /// Tokens to run next: the catch-up, then one draft at a time.
    feed: Vec<u32>,
    table: Vec<u32>,
    /// Drafts to propose; 0 for a round that only catches up a chunk of its prompt.
    wanted: usize,
    drafts: Vec<u32>,
}

/// The draft model, its own paged KV cache and a sequence per speculating request.
pub struct DraftModelProposer {
    executor: Box<dyn Executor>,
    pool: BlockPool,
    block_size: usize,
    /// The draft model's context length: a request past it gets no drafts (the target's
    /// `--max-model-len` may be longer than a small draft's context).
    max_len: usize,
    /// Most catch-up tokens one proposal runs, over all requests (the target's token budget).
    max_catch_up: usize,
    sequences: HashMap<RequestId, DraftSequence>,
}

impl DraftModelProposer {
    /// `executor` runs the draft model, of context length `max_len`, over a cache of
    /// `num_blocks` blocks of `block_size`; one proposal catches up at most `max_catch_up`
    /// tokens (the engine's `max_num_batched_tokens`).
    pub fn new(
        executor: Box<dyn Executor>,
        num_blocks: usize,
        block_size: usize,
        max_len: usize,
        max_catch_up: usize,
    ) -> Self {
        DraftModelProposer {
            executor,
            pool: BlockPool::new(num_blocks),
            block_size: block_size.max(1),
            max_len,
            max_catch_up: max_catch_up.max(1),
            sequences: HashMap::new(),
        }
    }

    /// Drafts for each `(request, its tokens so far, at most this many drafts)`; a request
    /// absent from the answer gets none (no blocks free, nothing asked, or its catch-up did not
    /// fit this proposal's budget: it caught up a chunk and gets drafts at a later one). `Err`
    /// (always [`EngineError::DraftModel`]) only when a draft forward fails; every sequence is
    /// then dropped (the cache may be half written).
    pub fn propose(
        &mut self,
        requests: &[(RequestId, &[u32], usize)],
    ) -> Result<Vec<(RequestId, Vec<u32>)>, EngineError> {
        let mut rounds: Vec<Round> = Vec::with_capacity(requests.len());
        for &(id, tokens, wanted) in requests {
            // Positions written: the tokens, then drafts 1..wanted-1 fed back in.
            if wanted == 0 || tokens.is_empty() || tokens.len() + wanted - 1 > self.max_len {
                continue;
            }
            let seq = self.sequences.entry(id).or_default();
            // What stands: the common prefix with the request's tokens, leaving at least the
            // last token to run (its row proposes draft 1).
            let stands = seq
                .computed
                .iter()
                .zip(tokens)
                .take_while(|(a, b)| a == b)
                .count()
                .min(tokens.len() - 1);
            seq.computed.truncate(stands);
            let keep = stands.div_ceil(self.block_size);
            if seq.blocks.len() > keep {
                self.pool.free(&seq.blocks[keep..]);
                seq.blocks.truncate(keep);
            }
            let needed = (tokens.len() + wanted - 1).div_ceil(self.block_size);
            let missing = needed.saturating_sub(seq.blocks.len());
            match self.pool.allocate(missing) {
                Some(blocks) => seq.blocks.extend(blocks),
                None => continue,
            }
            rounds.push(Round {
                id,
                feed: tokens[stands..].to_vec(),
                table: seq.blocks.iter().map(|b| b.0).collect(),
                wanted,
                drafts: Vec::with_capacity(wanted),
            });
        }
        self.fit_catch_up(&mut rounds);
        let most = rounds.iter().map(|r| r.wanted.max(1)).max().unwrap_or(0);
        for position in 0..most {
            if let Err(error) = self.forward(&mut rounds, position) {
                self.reset();
                return Err(error);
            }
        }
        Ok(rounds
            .into_iter()
            .filter(|r| r.wanted > 0)
            .map(|r| (r.id, r.drafts))
            .collect())
    }

    /// Cuts the rounds' catch-ups to [`Self::max_catch_up`] tokens in all, shortest first: a
    /// round whose catch-up does not fit runs the part that does (if any) and proposes nothing.
    fn fit_catch_up(&self, rounds: &mut Vec<Round>) {
        let mut order: Vec<usize> = (0..rounds.len()).collect();
        order.sort_by_key(|&i| rounds[i].feed.len());
        let mut left = self.max_catch_up;
        for i in order {
            let r = &mut rounds[i];
            if r.feed.len() <= left {
                left -= r.feed.len();
            } else {
                // Its last token must still run in a later proposal: it proposes draft 1.
                r.feed.truncate(left);
                r.wanted = 0;
                left = 0;
            }
        }
        // Only a cut round has `wanted` 0; one cut to nothing has nothing to run.
        rounds.retain(|r| r.wanted > 0 || !r.feed.is_empty());
    }

    /// One batched draft forward over the rounds still wanting a draft at `position`; each
    /// gets its argmax, which becomes its next feed.
    fn forward(&mut self, rounds: &mut [Round], position: usize) -> Result<(), EngineError> {
        // A catch-up-only round (`wanted` 0) runs in the first forward and then rests.
        let active: Vec<usize> = (0..rounds.len())
            .filter(|&i| rounds[i].wanted > position || (position == 0 && rounds[i].wanted == 0))
            .collect();
        let chunks: Vec<SequenceChunk<'_>> = active
            .iter()
            .map(|&i| {
                let r = &rounds[i];
                SequenceChunk {
                    tokens: &r.feed,
                    num_cached: self.sequences[&r.id].computed.len(),
                    block_table: &r.table,
                    num_logits: 1,
                }
            })
            .collect();
        let mut logits = self
            .executor
            .execute(&chunks)
            .map_err(|e| EngineError::DraftModel(e.to_string()))?;
        if logits.rows() != active.len() {
            return Err(EngineError::DraftModel(format!(
                "the draft forward returned {} logits rows for {} sequences",
                logits.rows(),
                active.len()
            )));
        }
        for (row, &i) in active.iter().enumerate() {
            let r = &mut rounds[i];
            let draft = argmax(logits.row_mut(row))
                .ok_or_else(|| EngineError::DraftModel("it gave every token -inf".into()))?;
            let seq = self.sequences.get_mut(&r.id).ok_or_else(|| {
                EngineError::DraftModel(format!("lost the draft sequence of {}", r.id))
            })?;
            seq.computed.append(&mut r.feed);
            if r.wanted > 0 {
                r.drafts.push(draft);
                r.feed.push(draft);
            }
        }
        Ok(())
    }

    /// Frees `id`'s sequence (finished, aborted, preempted); a later proposal starts over.
    pub fn release(&mut self, id: RequestId) {
        if let Some(seq) = self.sequences.remove(&id) {
            self.pool.free(&seq.blocks);
        }
    }

    fn reset(&mut self) {
        let ids: Vec<RequestId> = self.sequences.keys().copied().collect();
        for id in ids {
            self.release(id);
        }
    }

    /// Blocks of the draft's cache in use (tests check that nothing leaks).
    pub fn num_used_blocks(&self) -> usize {
        self.pool.num_blocks() - self.pool.num_free_blocks()
    }

    /// Requests with a sequence in the draft's cache.
    pub fn num_sequences(&self) -> usize {
        self.sequences.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::FakeExecutor;

    /// The fake model's argmax is `input + 1`, so drafts from `[.., t]` are `t+1, t+2, ...`.
    fn proposer(blocks: usize) -> DraftModelProposer {
        DraftModelProposer::new(
            Box::new(FakeExecutor {
                vocab: 1000,
                steps: 0,
            }),
            blocks,
            4,
            64,
            512,
        )
    }

    #[test]
    fn drafts_follow_the_draft_models_greedy_chain_and_roll_back() {
        let mut p = proposer(64);
        let (a, b) = (RequestId(1), RequestId(2));
        let ta: Vec<u32> = (10..17).collect();
        let tb: Vec<u32> = vec![500, 3];
        let got = p.propose(&[(a, &ta, 4), (b, &tb, 2)]).unwrap();
        assert_eq!(got, vec![(a, vec![17, 18, 19, 20]), (b, vec![4, 5])]);
        // a: 7 tokens + 3 drafts fed = 10 positions = 3 blocks; b: 2 + 1 = 1 block.
        assert_eq!(p.num_used_blocks(), 4);
        // a accepted two drafts then got 99: the draft's 19 is rolled back; the catch-up is
        // [99] after the common prefix [10..=18].
        let ta2: Vec<u32> = (10..19).chain([99]).collect();
        let got = p.propose(&[(a, &ta2, 3)]).unwrap();
        assert_eq!(got, vec![(a, vec![100, 101, 102])]);
        assert_eq!(p.sequences[&a].computed, [&ta2[..], &[100, 101]].concat());
        p.release(a);
        p.release(b);
        assert_eq!((p.num_used_blocks(), p.num_sequences()), (0, 0));
    }

    #[test]
    fn a_long_catch_up_runs_in_chunks_of_the_budget_while_short_ones_draft() {
        let mut p = DraftModelProposer::new(
            Box::new(FakeExecutor {
                vocab: 1000,
                steps: 0,
            }),
            64,
            4,
            64,
            10,
        );
        let (long, short) = (RequestId(1), RequestId(2));
        let prompt: Vec<u32> = (100..125).collect();
        let decoding: Vec<u32> = vec![7, 8];
        // Budget 10: the short catch-up (2 tokens) first, the long prompt gets 8 of its 25.
        let got = p
            .propose(&[(long, &prompt, 3), (short, &decoding, 3)])
            .unwrap();
        assert_eq!(got, vec![(short, vec![9, 10, 11])]);
        assert_eq!(p.sequences[&long].computed, &prompt[..8]);
        // Alone, it catches up 10 more, then the last 7 and drafts from its last token.
        assert_eq!(p.propose(&[(long, &prompt, 3)]).unwrap(), vec![]);
        assert_eq!(p.sequences[&long].computed, &prompt[..18]);
        let got = p.propose(&[(long, &prompt, 3)]).unwrap();
        assert_eq!(got, vec![(long, vec![125, 126, 127])]);
        assert_eq!(
            p.sequences[&long].computed,
            [&prompt[..], &[125, 126]].concat()
        );
        p.release(long);
        p.release(short);
        assert_eq!(p.num_used_blocks(), 0);
    }

    #[test]
    fn a_request_that_finds_no_blocks_gets_no_drafts() {
        let mut p = proposer(2);
        let long: Vec<u32> = (0..20).collect();
        let short: Vec<u32> = vec![7];
        let got = p
            .propose(&[(RequestId(1), &long, 4), (RequestId(2), &short, 4)])
            .unwrap();
        assert_eq!(got, vec![(RequestId(2), vec![8, 9, 10, 11])]);
        // Past the draft's context (64 positions): no drafts, no blocks taken.
        let too_long: Vec<u32> = (0..62).collect();
        assert_eq!(p.propose(&[(RequestId(3), &too_long, 4)]).unwrap(), vec![]);
        p.release(RequestId(1));
        p.release(RequestId(2));
        assert_eq!(p.num_used_blocks(), 0);
    }
}
