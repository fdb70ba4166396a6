//! The llama forward pass over a flat varlen batch with a paged KV cache.
//!
//! Every tensor is `[T, ...]` with `T` the batch's tokens from all sequences: projections,
//! norms and the MLP never care which sequence a row belongs to; only RoPE (per-token
//! positions) and attention (per-sequence context through the block tables) do, and both read
//! that from the batch's [`metrum_kernels::AttentionMetadata`]. Logits are computed for the
//! selected rows only, so a 512-token prefill pays for one LM-head row, not 512.

use candle_core::{DType, Tensor};

use crate::kv_cache::KvCache;
use crate::model::{ForwardBatch, LayerWeights, LlamaModel, ModelError, Result};

impl LlamaModel {
    /// Runs one step: writes the batch's K/V into `kv` at the batch's slots and returns f32
    /// logits `[batch.logits_rows().len(), vocab_size]`, one row per selected token in order.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut KvCache) -> Result<Tensor> {
        self.check_batch(batch, kv)?;
        let meta = batch.meta();
        let positions = &meta.positions_t;
        let eps = self.config.rms_norm_eps;
        let mut hidden = self.embed.forward(batch.token_ids_t(), self.dtype)?;
        let mut residual: Option<Tensor> = None;
        for (index, layer) in self.layers.iter().enumerate() {
            let (normed, res) = match &residual {
                None => (
                    metrum_kernels::rms_norm(&hidden, &layer.attn_norm, eps)?,
                    hidden,
                ),
                Some(r) => metrum_kernels::add_rms_norm(&hidden, r, &layer.attn_norm, eps)?,
            };
            let (key_cache, value_cache) = kv
                .layer(index)
                .ok_or_else(|| ModelError::KvCache(format!("no layer {index} in the KV cache")))?;
            let attn = self.attention(layer, &normed, positions, key_cache, value_cache, batch)?;
            let (normed, res) = metrum_kernels::add_rms_norm(&attn, &res, &layer.mlp_norm, eps)?;
            hidden = self.mlp(layer, &normed)?;
            residual = Some(res);
        }
        let rows = batch.logits_rows_t();
        let hidden = hidden.index_select(rows, 0)?;
        let normed = match residual {
            Some(r) => {
                let r = r.index_select(rows, 0)?;
                metrum_kernels::add_rms_norm(&hidden, &r, &self.final_norm, eps)?.0
            }
            None => metrum_kernels::rms_norm(&hidden, &self.final_norm, eps)?,
        };
        Ok(self.lm_head.forward(&normed)?.to_dtype(DType::F32)?)
    }

    fn attention(
        &self,
        layer: &LayerWeights,
        x: &Tensor,
        positions: &Tensor,
        key_cache: &Tensor,
        value_cache: &Tensor,
        batch: &ForwardBatch,
    ) -> Result<Tensor> {
        let c = &self.config;
        let tokens = x.dim(0)?;
        let [q, k, v] = layer.qkv.forward(x)?;
        let q = q.reshape((tokens, c.num_heads, c.head_dim))?;
        let k = k.reshape((tokens, c.num_kv_heads, c.head_dim))?;
        let v = v.reshape((tokens, c.num_kv_heads, c.head_dim))?;
        let style = c.rope_style;
        let q = metrum_kernels::rope(&q, positions, &self.rope_cos, &self.rope_sin, style)?;
        let k = metrum_kernels::rope(&k, positions, &self.rope_cos, &self.rope_sin, style)?;
        metrum_kernels::reshape_and_cache(&k, &v, key_cache, value_cache, batch.meta())?;
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        let out = metrum_kernels::paged_attention(&q, key_cache, value_cache, batch.meta(), scale)?;
        Ok(layer.o_proj.forward(&out.reshape((tokens, c.q_size()))?)?)
    }

    fn mlp(&self, layer: &LayerWeights, x: &Tensor) -> Result<Tensor> {
        let [gate, up] = layer.gate_up.forward(x)?;
        let act = metrum_kernels::silu_mul(&gate, &up)?;
        Ok(layer.down.forward(&act)?)
    }

    /// Everything the kernels would index unchecked, checked on the host from the batch's
    /// small host-side vectors (no device sync).
    fn check_batch(&self, batch: &ForwardBatch, kv: &KvCache) -> Result<()> {
        let c = &self.config;
        let vocab = c.vocab_size as u32;
        if let Some(bad) = batch.token_ids().iter().find(|&&t| t >= vocab) {
            return Err(ModelError::BadBatch(format!(
                "token id {bad} outside a vocabulary of {vocab}"
            )));
        }
        let meta = batch.meta();
        if meta.max_seq_len > self.max_positions() {
            return Err(ModelError::BadBatch(format!(
                "a sequence reaches {} tokens, past the model's {} positions",
                meta.max_seq_len,
                self.max_positions()
            )));
        }
        let expected = self.kv_cache_layout(meta.block_size);
        if *kv.layout() != expected {
            return Err(ModelError::KvCache(format!(
                "cache layout {:?} does not fit this model and batch, expected {expected:?}",
                kv.layout()
            )));
        }
        meta.check_block_ids(kv.num_blocks())
            .map_err(|e| ModelError::BadBatch(e.to_string()))
    }
}
