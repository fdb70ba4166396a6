//! Per-step metadata of a varlen batch, built once and shared by every layer.

use candle_core::{Device, Result, Tensor};

/// The layout of one flat varlen batch over the paged KV cache. See the crate docs for the
/// conventions. Host vectors serve the CPU kernels; the tensors are the same data on the model's
/// device for the CUDA kernels (on CPU they are cheap copies).
#[derive(Clone, Debug)]
pub struct AttentionMetadata {
    pub block_size: usize,
    /// `S + 1` prefix sums of the per-sequence query lengths; the last entry is `T`.
    pub query_start_loc: Vec<u32>,
    /// Per sequence: context length after this step (cached tokens + this step's tokens).
    pub seq_lens: Vec<u32>,
    /// Per sequence: physical block ids, in order.
    pub block_tables: Vec<Vec<u32>>,
    /// Per batch token: `block * block_size + row` where its K/V is written.
    pub slot_mapping: Vec<u32>,
    pub max_query_len: usize,
    pub max_seq_len: usize,
    /// Device copies: `query_start_loc` (u32 `[S+1]`), `seq_lens` (u32 `[S]`),
    /// `block_tables` (u32 `[S, max_blocks_per_seq]`, padded with 0), `slot_mapping` (u32 `[T]`).
    pub query_start_loc_t: Tensor,
    pub seq_lens_t: Tensor,
    pub block_tables_t: Tensor,
    pub slot_mapping_t: Tensor,
}

impl AttentionMetadata {
    /// Builds the metadata from per-sequence `(query_len, seq_len, block_table)` triples.
    /// Slot mapping is derived, so it can never disagree with the block tables.
    pub fn new(
        block_size: usize,
        seqs: &[(usize, usize, Vec<u32>)],
        device: &Device,
    ) -> Result<Self> {
        let mut query_start_loc = Vec::with_capacity(seqs.len() + 1);
        let mut seq_lens = Vec::with_capacity(seqs.len());
        let mut block_tables = Vec::with_capacity(seqs.len());
        let mut slot_mapping = Vec::new();
        let mut start = 0u32;
        let (mut max_query_len, mut max_seq_len) = (0usize, 0usize);
        for (q_len, seq_len, table) in seqs {
            let (q_len, seq_len) = (*q_len, *seq_len);
            if q_len == 0 || q_len > seq_len {
                candle_core::bail!("sequence with query_len {q_len} and seq_len {seq_len}");
            }
            if table.len() * block_size < seq_len {
                candle_core::bail!(
                    "block table of {} blocks cannot hold {seq_len} tokens at block size {block_size}",
                    table.len()
                );
            }
            query_start_loc.push(start);
            for pos in seq_len - q_len..seq_len {
                slot_mapping
                    .push(table[pos / block_size] * block_size as u32 + (pos % block_size) as u32);
            }
            start += q_len as u32;
            seq_lens.push(seq_len as u32);
            block_tables.push(table.clone());
            max_query_len = max_query_len.max(q_len);
            max_seq_len = max_seq_len.max(seq_len);
        }
        query_start_loc.push(start);
        let width = block_tables
            .iter()
            .map(|t| t.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut padded = vec![0u32; seqs.len() * width];
        for (s, t) in block_tables.iter().enumerate() {
            padded[s * width..s * width + t.len()].copy_from_slice(t);
        }
        Ok(AttentionMetadata {
            block_size,
            query_start_loc_t: Tensor::new(query_start_loc.as_slice(), device)?,
            seq_lens_t: Tensor::new(seq_lens.as_slice(), device)?,
            block_tables_t: Tensor::from_vec(padded, (seqs.len(), width), device)?,
            slot_mapping_t: Tensor::new(slot_mapping.as_slice(), device)?,
            query_start_loc,
            seq_lens,
            block_tables,
            slot_mapping,
            max_query_len,
            max_seq_len,
        })
    }

    pub fn num_seqs(&self) -> usize {
        self.seq_lens.len()
    }

    pub fn num_tokens(&self) -> usize {
        *self.query_start_loc.last().unwrap_or(&0) as usize
    }

    /// The position of every batch token, in batch order (what RoPE needs).
    pub fn positions(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.num_tokens());
        for s in 0..self.num_seqs() {
            let q_len = self.query_start_loc[s + 1] - self.query_start_loc[s];
            out.extend(self.seq_lens[s] - q_len..self.seq_lens[s]);
        }
        out
    }
}
