//! One forward step's input: a flat varlen batch of tokens from many sequences, each a prefill
//! chunk (any length, starting at any position) or a decode, plus the rows that need logits.

use candle_core::{Device, Tensor};
use metrum_kernels::AttentionMetadata;

use crate::model::{ModelError, Result};

/// What one sequence contributes to a step.
#[derive(Clone, Copy, Debug)]
pub struct SequenceChunk<'a> {
    /// This step's tokens: a prefill chunk, or the one token of a decode.
    pub tokens: &'a [u32],
    /// Tokens of this sequence already in the KV cache (the position of `tokens[0]`).
    pub num_cached: usize,
    /// Physical blocks of the whole sequence, in order; must cover `num_cached + tokens.len()`.
    pub block_table: &'a [u32],
    /// How many of the chunk's last tokens get a logits row: 1 for a decode or the chunk that
    /// completes a prompt, 0 for the earlier chunks of a split prompt, and `1 + k` for a
    /// speculative verification step (the last sampled token and `k` draft tokens), whose rows
    /// score every draft position.
    pub num_logits: usize,
}

/// The flat batch the forward pass runs: token ids `[T]`, their attention layout, and which of
/// the `T` rows get logits.
#[derive(Clone, Debug)]
pub struct ForwardBatch {
    token_ids: Vec<u32>,
    token_ids_t: Tensor,
    meta: AttentionMetadata,
    logits_rows: Vec<u32>,
    logits_rows_t: Tensor,
}

impl ForwardBatch {
    /// `token_ids` in batch order (matching `meta`'s sequences); `logits_rows` index into them,
    /// and logits come back in that order.
    pub fn new(
        token_ids: &[u32],
        meta: AttentionMetadata,
        logits_rows: &[u32],
        device: &Device,
    ) -> Result<ForwardBatch> {
        if token_ids.is_empty() || token_ids.len() != meta.num_tokens() {
            return Err(ModelError::BadBatch(format!(
                "{} token ids for attention metadata of {} tokens",
                token_ids.len(),
                meta.num_tokens()
            )));
        }
        if let Some(bad) = logits_rows.iter().find(|&&r| r as usize >= token_ids.len()) {
            return Err(ModelError::BadBatch(format!(
                "logits row {bad} outside a batch of {} tokens",
                token_ids.len()
            )));
        }
        Ok(ForwardBatch {
            token_ids_t: Tensor::new(token_ids, device)?,
            logits_rows_t: Tensor::new(logits_rows, device)?,
            token_ids: token_ids.to_vec(),
            logits_rows: logits_rows.to_vec(),
            meta,
        })
    }

    /// Builds the batch from per-sequence chunks; logits rows are the last token of each chunk
    /// `num_logits` last tokens of each chunk, in chunk order.
    pub fn from_chunks(
        block_size: usize,
        chunks: &[SequenceChunk<'_>],
        device: &Device,
    ) -> Result<ForwardBatch> {
        let mut tokens = Vec::new();
        let mut seqs = Vec::with_capacity(chunks.len());
        let mut rows = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            if chunk.tokens.is_empty() {
                return Err(ModelError::BadBatch(format!("sequence {i} has no tokens")));
            }
            if chunk.num_logits > chunk.tokens.len() {
                return Err(ModelError::BadBatch(format!(
                    "sequence {i} asks for {} logits rows but has {} tokens",
                    chunk.num_logits,
                    chunk.tokens.len()
                )));
            }
            tokens.extend_from_slice(chunk.tokens);
            let end = tokens.len() as u32;
            rows.extend(end - chunk.num_logits as u32..end);
            let seq_len = chunk.num_cached + chunk.tokens.len();
            seqs.push((chunk.tokens.len(), seq_len, chunk.block_table.to_vec()));
        }
        if block_size == 0 {
            return Err(ModelError::BadBatch("block size 0".into()));
        }
        let meta = AttentionMetadata::new(block_size, &seqs, device)
            .map_err(|e| ModelError::BadBatch(e.to_string()))?;
        ForwardBatch::new(&tokens, meta, &rows, device)
    }

    pub fn token_ids(&self) -> &[u32] {
        &self.token_ids
    }

    pub(crate) fn token_ids_t(&self) -> &Tensor {
        &self.token_ids_t
    }

    pub fn meta(&self) -> &AttentionMetadata {
        &self.meta
    }

    /// Batch rows whose logits the forward returns, in output order.
    pub fn logits_rows(&self) -> &[u32] {
        &self.logits_rows
    }

    pub(crate) fn logits_rows_t(&self) -> &Tensor {
        &self.logits_rows_t
    }

    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }
}
