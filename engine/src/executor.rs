//! The executor runs one batched forward pass for a scheduled step and hands back logits.
//! It never decides who runs (that is the scheduler) and never samples (that is the engine
//! loop, which owns each request's sampler), so a fake executor can stand in for a model in
//! tests of the loop without changing anything else.
//!
//! Only the rows that sample leave the device: each [`SequenceChunk`] asks for `num_logits`
//! rows (its last tokens: none for a prefill chunk that does not finish its prompt, one for a
//! decode, one per draft plus one when verifying drafts), and the model computes the LM head
//! and copies to the host for those rows alone, not for every token of the batch. What the
//! step then does with the rows (masks, verification, parallel sampling) is the engine loop's
//! side of this boundary (see "Where a step-level feature goes" in [`crate::engine_loop`]).

use crate::error::EngineError;
use crate::kv_cache::KvCache;
use crate::model::{DecoderModel, ForwardBatch, ModelError, SequenceChunk};
use candle_core::{DType, Device};

/// Logits of the rows that sample this step, row-major `[rows, vocab]`, f32 on the host.
#[derive(Debug, Default)]
pub struct LogitsRows {
    pub data: Vec<f32>,
    pub vocab: usize,
}

impl LogitsRows {
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.vocab).unwrap_or(0)
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.vocab..(i + 1) * self.vocab]
    }
}

pub trait Executor: Send {
    /// One forward over every chunk; returns `num_logits` rows per chunk (its last tokens, in
    /// position order), chunks in order.
    fn execute(&mut self, chunks: &[SequenceChunk<'_>]) -> Result<LogitsRows, EngineError>;
}

/// The real executor: a loaded model and its paged KV cache on one device.
pub struct ModelExecutor {
    pub model: DecoderModel,
    pub kv: KvCache,
    pub device: Device,
}

impl Executor for ModelExecutor {
    fn execute(&mut self, chunks: &[SequenceChunk<'_>]) -> Result<LogitsRows, EngineError> {
        let batch = ForwardBatch::from_chunks(self.kv.block_size(), chunks, &self.device)?;
        let logits = self.model.forward(&batch, &mut self.kv)?;
        let (rows, vocab) = logits.dims2()?;
        let data = logits
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())?;
        debug_assert_eq!(data.len(), rows * vocab);
        Ok(LogitsRows { data, vocab })
    }
}

/// A deterministic stand-in for a model: every logits row puts all mass on
/// `(its input token + 1) % vocab`. Used by the engine-loop tests.
pub struct FakeExecutor {
    pub vocab: usize,
    /// Steps executed so far (tests assert on batching behaviour with it).
    pub steps: usize,
}

impl Executor for FakeExecutor {
    fn execute(&mut self, chunks: &[SequenceChunk<'_>]) -> Result<LogitsRows, EngineError> {
        self.steps += 1;
        let mut out = LogitsRows {
            data: Vec::new(),
            vocab: self.vocab,
        };
        for c in chunks {
            let first_row = c.tokens.len().checked_sub(c.num_logits).ok_or_else(|| {
                ModelError::BadBatch(format!(
                    "a chunk of {} tokens asks for {} logits rows",
                    c.tokens.len(),
                    c.num_logits
                ))
            })?;
            for &input in &c.tokens[first_row..] {
                let mut row = vec![-10.0f32; self.vocab];
                row[(input as usize + 1) % self.vocab] = 10.0;
                out.data.extend_from_slice(&row);
            }
        }
        Ok(out)
    }
}

/// Faults a test can make the next forward pass suffer, to prove that a failing engine fails
/// its requests, turns `/health` 503 and stops the server. Compiled only with the cargo feature
/// `fault-injection`, which only the server's dev-dependencies enable: a release build has no
/// way to trigger one (no flag, no environment variable, no endpoint).
#[cfg(feature = "fault-injection")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The forward pass panics (a bug: an index out of bounds, a failed assertion).
    Panic,
    /// The forward pass returns an error (a device error, e.g. a failed CUDA launch).
    ForwardError,
}

/// What the forward pass does instead of running when `fault` is armed.
#[cfg(feature = "fault-injection")]
pub(crate) fn suffer(fault: Fault) -> Result<LogitsRows, EngineError> {
    match fault {
        Fault::Panic => panic!("injected fault: the forward pass panicked"),
        Fault::ForwardError => Err(EngineError::Fault),
    }
}
