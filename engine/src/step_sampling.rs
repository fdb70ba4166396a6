//! Sampling a step's rows: what each request does with its logits rows (a plain sample, an
//! exact verification of its drafts, a grammar-constrained sample), and spreading the requests
//! of one step over the CPU pool.
//!
//! Rows are independent (see [`crate::sampling`]): a request's tokens depend only on its own
//! rows, parameters, penalty memory and RNG, all owned by that request. So the requests of a
//! step can be sampled on any threads in any order and give the same tokens, bit for bit, as
//! one after the other on the engine thread; `tests` below hold the two to that.
//!
//! **Where.** Sampling starts after the forward returned, so the pool the forward ran on (the
//! kernels' pool, sized by `--threads`; [`crate::threads`]) is idle and its workers are still
//! spinning for the next job: the step borrows it rather than starting threads of its own,
//! which would compete with those spinning workers for the same cores. Each request is one
//! chunk the pool's threads claim in turn, so a request verifying four drafts (five rows) does
//! not hold up a thread that was given a fixed share. A step with one request, or with too few
//! logits for the hand-off to pay ([`PARALLEL_MIN_LOGITS`]), stays on the engine thread.

use crate::error::EngineError;
use crate::sampling::{SampledToken, SequenceSampler};
use crate::speculative::rejection;
use crate::structured::GrammarState;
use crate::threads::ThreadPool;
use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Mutex, PoisonError};

/// Below this many logits in a step (rows × vocabulary) the requests are sampled one after the
/// other on the engine thread. Measured with the ignored `bench_sampling_16_rows_128k_vocab` in
/// `tests` (2-core machine, top-p 0.9 over spread logits): sampling costs 20-40 ns a logit
/// (5 ms for a 128k row), a hand-off to spinning workers a few microseconds, to parked ones
/// tens. Two rows of 4096 already ran 1.5x faster on two threads; the threshold sits a little
/// higher so that cheap greedy steps (an argmax is ~1 ns a logit) stay put.
pub const PARALLEL_MIN_LOGITS: usize = 1 << 15;

/// One request's share of a step: its sampler, its grammar, the drafts its rows verify, and
/// those rows.
pub struct RequestRows<'a> {
    pub sampler: &'a mut SequenceSampler,
    /// The request's grammar; a constrained request never speculates, so it has one row.
    pub grammar: Option<&'a mut GrammarState>,
    /// The draft tokens this step verifies (empty without speculation).
    pub drafts: &'a [u32],
    /// `drafts.len() + 1` rows of `vocab` logits, row-major; sampling works on them in place.
    pub logits: &'a mut [f32],
}

/// What a request's rows gave.
#[derive(Debug)]
pub enum RowsOutcome {
    /// The sampled tokens: without drafts one; with drafts the accepted ones plus the token
    /// after them (see [`rejection::verify`]).
    Tokens(Vec<SampledToken>),
    /// The grammar allowed no token (or refused the sampled one): this request alone ends,
    /// with this error.
    GrammarFailed(EngineError),
}

/// Where a step's requests are sampled.
#[derive(Clone, Copy, Debug)]
pub enum Split<'p> {
    /// One after the other, on the calling (engine) thread.
    EngineThread,
    /// Spread over this pool's threads, the caller included.
    Pool(&'p ThreadPool),
}

impl RequestRows<'_> {
    fn sample(self, vocab: usize) -> RowsOutcome {
        let RequestRows {
            sampler,
            grammar,
            drafts,
            logits,
        } = self;
        match grammar {
            Some(grammar) => {
                debug_assert!(drafts.is_empty(), "a constrained request got drafts");
                match crate::structured::sample(sampler, grammar, &mut logits[..vocab]) {
                    Ok(token) => RowsOutcome::Tokens(vec![token]),
                    Err(error) => RowsOutcome::GrammarFailed(error),
                }
            }
            None => RowsOutcome::Tokens(rejection::verify(drafts, |row| {
                sampler.sample(&mut logits[row * vocab..(row + 1) * vocab])
            })),
        }
    }
}

/// The split the engine uses for `requests`: the kernels' pool when there are at least two
/// requests, [`PARALLEL_MIN_LOGITS`] logits and a pool of more than one thread; else the engine
/// thread.
pub fn split_for(requests: &[RequestRows<'_>]) -> Split<'static> {
    let logits: usize = requests.iter().map(|r| r.logits.len()).sum();
    if requests.len() < 2 || logits < PARALLEL_MIN_LOGITS {
        return Split::EngineThread;
    }
    let pool = crate::threads::cpu_pool();
    if pool.threads() < 2 {
        Split::EngineThread
    } else {
        Split::Pool(pool)
    }
}

/// Samples every request's rows (`vocab` logits each); outcomes in the order of `requests`,
/// the same whatever `split` is. A panic while sampling reaches the caller with its message.
pub fn sample_rows(
    vocab: usize,
    requests: Vec<RequestRows<'_>>,
    split: Split<'_>,
) -> Vec<RowsOutcome> {
    let pool = match split {
        Split::Pool(pool) if requests.len() > 1 && pool.threads() > 1 => pool,
        _ => return requests.into_iter().map(|r| r.sample(vocab)).collect(),
    };
    // One slot per request; the chunk that claims it swaps its rows for their outcome. The
    // locks are never contended (each chunk index is claimed once); they only make the
    // hand-over of `&mut` state between threads expressible through the pool's `Fn` job.
    let slots: Vec<Mutex<Slot<'_>>> = requests
        .into_iter()
        .map(|r| Mutex::new(Slot::Pending(r)))
        .collect();
    pool.run(slots.len(), &|i| {
        let mut slot = slots[i].lock().unwrap_or_else(PoisonError::into_inner);
        if let Slot::Pending(request) = std::mem::replace(&mut *slot, Slot::Taken) {
            *slot = match catch_unwind(AssertUnwindSafe(|| request.sample(vocab))) {
                Ok(outcome) => Slot::Done(outcome),
                Err(panic) => Slot::Panicked(panic),
            };
        }
    });
    slots
        .into_iter()
        .map(
            |slot| match slot.into_inner().unwrap_or_else(PoisonError::into_inner) {
                Slot::Done(outcome) => outcome,
                // Re-raised here rather than in the pool, which would only say "a chunk
                // panicked": the engine reports the message when it fails.
                Slot::Panicked(panic) => resume_unwind(panic),
                Slot::Pending(_) | Slot::Taken => {
                    unreachable!("the pool runs every chunk before it returns")
                }
            },
        )
        .collect()
}

/// A request's place in [`sample_rows`]'s hand-over.
enum Slot<'a> {
    Pending(RequestRows<'a>),
    Taken,
    Done(RowsOutcome),
    Panicked(Box<dyn Any + Send>),
}

#[cfg(test)]
mod tests;
