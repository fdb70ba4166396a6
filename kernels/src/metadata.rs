//! Per-step metadata of a varlen batch, built once and shared by every layer.

use candle_core::{Device, Result, Tensor};

/// Query tokens per CTA of the CUDA prefill kernel; [`AttentionMetadata::prefill_tiles`] is cut
/// at this granularity so the per-step work list is built once, not per layer.
pub const PREFILL_TILE_TOKENS: usize = 64;

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
    /// Per batch token: its position in its sequence (u32 `[T]`), what RoPE needs.
    pub positions_t: Tensor,
    /// Per batch token: the index of its sequence (u32 `[T]`).
    pub token_seqs_t: Tensor,
    /// Batch tokens of the sequences with `q_len == 1` (decodes), in batch order.
    pub decode_tokens: Vec<u32>,
    /// `(sequence, first query offset)` of every [`PREFILL_TILE_TOKENS`]-token tile of the
    /// sequences with `q_len > 1` (prefill chunks).
    pub prefill_tiles: Vec<[u32; 2]>,
    /// Device copies of the two work lists (flattened); `None` when the list is empty.
    pub decode_tokens_t: Option<Tensor>,
    pub prefill_tiles_t: Option<Tensor>,
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
        let mut token_seqs = Vec::with_capacity(start as usize);
        let mut positions = Vec::with_capacity(start as usize);
        let mut decode_tokens = Vec::new();
        let mut prefill_tiles = Vec::new();
        for s in 0..seq_lens.len() {
            let (q0, q1) = (query_start_loc[s], query_start_loc[s + 1]);
            let q_len = q1 - q0;
            token_seqs.extend(std::iter::repeat_n(s as u32, q_len as usize));
            positions.extend(seq_lens[s] - q_len..seq_lens[s]);
            if q_len == 1 {
                decode_tokens.push(q0);
            } else {
                for offset in (0..q_len).step_by(PREFILL_TILE_TOKENS) {
                    prefill_tiles.push([s as u32, offset]);
                }
            }
        }
        let flat_tiles: Vec<u32> = prefill_tiles.iter().flatten().copied().collect();
        let upload = |v: &[u32]| -> Result<Option<Tensor>> {
            if v.is_empty() {
                Ok(None)
            } else {
                Tensor::new(v, device).map(Some)
            }
        };
        Ok(AttentionMetadata {
            block_size,
            positions_t: Tensor::new(positions.as_slice(), device)?,
            token_seqs_t: Tensor::new(token_seqs.as_slice(), device)?,
            decode_tokens_t: upload(&decode_tokens)?,
            prefill_tiles_t: upload(&flat_tiles)?,
            decode_tokens,
            prefill_tiles,
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

    /// Longest block table (the row stride of `block_tables_t`).
    pub fn max_blocks_per_seq(&self) -> usize {
        self.block_tables_t.dims().get(1).copied().unwrap_or(1)
    }

    /// True when every sequence contributes exactly one query token (a pure decode step).
    pub fn is_all_decode(&self) -> bool {
        self.max_query_len <= 1
    }

    /// Errors unless every block id a sequence's context uses is below `num_blocks`: the kernels
    /// index the cache with these ids unchecked, so a bad id must be caught before a launch.
    pub fn check_block_ids(&self, num_blocks: usize) -> Result<()> {
        for (s, table) in self.block_tables.iter().enumerate() {
            let used = (self.seq_lens[s] as usize).div_ceil(self.block_size);
            if let Some(bad) = table[..used].iter().find(|&&b| b as usize >= num_blocks) {
                candle_core::bail!(
                    "sequence {s}: block id {bad} outside a cache of {num_blocks} blocks"
                );
            }
        }
        Ok(())
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
