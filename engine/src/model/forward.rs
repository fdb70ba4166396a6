//! The decoder forward pass over a flat varlen batch with a paged KV cache, for every family.
//!
//! Every tensor is `[T, ...]` with `T` the batch's tokens from all sequences: projections,
//! norms and the MLP never care which sequence a row belongs to; only RoPE (per-token
//! positions) and attention (per-sequence context through the block tables) do, and both read
//! that from the batch's [`metrum_kernels::AttentionMetadata`]. Logits are computed for the
//! selected rows only, so a 512-token prefill pays for one LM-head row, not 512.
//!
//! Family differences are the [`crate::model::ArchSpec`] flags, each one branch here: QKV
//! bias, per-head q/k norm, partial rotary, per-layer sliding window and RoPE table, attention
//! and final soft-capping, sandwich norms, the gate activation and the embedding scale.

use candle_core::{DType, Tensor};
use metrum_kernels::AttentionParams;

use crate::kv_cache::KvCache;
use crate::model::{DecoderModel, ForwardBatch, LayerWeights, ModelError, Result, RopeTables};

impl DecoderModel {
    /// Runs one step: writes the batch's K/V into `kv` at the batch's slots and returns f32
    /// logits `[batch.logits_rows().len(), vocab_size]`, one row per selected token in order.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut KvCache) -> Result<Tensor> {
        self.check_batch(batch, kv)?;
        let eps = self.config.rms_norm_eps;
        let mut hidden = self.embed.forward(batch.token_ids_t(), self.dtype)?;
        if self.config.arch.scale_embeddings {
            // Gemma: sqrt(hidden) rounded to the activation dtype, as transformers does.
            let scale = (self.config.hidden_size as f64).sqrt();
            let scale = Tensor::new(scale as f32, &self.device)?.to_dtype(self.dtype)?;
            hidden = hidden.broadcast_mul(&scale)?;
        }
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
            let mut attn = self.attention(index, layer, &normed, key_cache, value_cache, batch)?;
            if let Some(norm) = &layer.post_attn_norm {
                attn = metrum_kernels::rms_norm(&attn, norm, eps)?;
            }
            let (normed, res) = metrum_kernels::add_rms_norm(&attn, &res, &layer.mlp_norm, eps)?;
            hidden = layer.ffn.forward(&normed, self.config.arch.activation)?;
            if let Some(norm) = &layer.post_mlp_norm {
                hidden = metrum_kernels::rms_norm(&hidden, norm, eps)?;
            }
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
        let logits = self.lm_head.forward(&normed)?.to_dtype(DType::F32)?;
        Ok(match self.config.arch.final_soft_cap {
            // Only the selected rows: a few vocab-wide tanh per step.
            Some(cap) => ((logits / cap as f64)?.tanh()? * cap as f64)?,
            None => logits,
        })
    }

    fn rope_tables(&self, layer: usize) -> &RopeTables {
        match &self.rope_local {
            Some(local) if self.config.uses_local_rope(layer) => local,
            _ => &self.rope,
        }
    }

    /// RoPE over the first `rotary_dim` dims of each head of `x: [T, heads, head_dim]`; the
    /// rest pass through (Phi-4-mini's partial rotary, as transformers splits it).
    fn rotate(&self, x: &Tensor, positions: &Tensor, tables: &RopeTables) -> Result<Tensor> {
        let c = &self.config;
        let style = c.rope_style;
        let rotary = c.rotary_dim();
        if rotary == c.head_dim {
            return Ok(metrum_kernels::rope(
                x,
                positions,
                &tables.cos,
                &tables.sin,
                style,
            )?);
        }
        let rotated = metrum_kernels::rope(
            &x.narrow(2, 0, rotary)?,
            positions,
            &tables.cos,
            &tables.sin,
            style,
        )?;
        let passed = x.narrow(2, rotary, c.head_dim - rotary)?;
        Ok(Tensor::cat(&[&rotated, &passed], 2)?)
    }

    fn attention(
        &self,
        index: usize,
        layer: &LayerWeights,
        x: &Tensor,
        key_cache: &Tensor,
        value_cache: &Tensor,
        batch: &ForwardBatch,
    ) -> Result<Tensor> {
        let c = &self.config;
        let eps = c.rms_norm_eps;
        let tokens = x.dim(0)?;
        let [mut q, mut k, mut v] = layer.qkv.forward(x)?;
        if let Some([bq, bk, bv]) = &layer.qkv_bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        let mut q = q.reshape((tokens, c.num_heads, c.head_dim))?;
        let mut k = k.reshape((tokens, c.num_kv_heads, c.head_dim))?;
        let v = v.reshape((tokens, c.num_kv_heads, c.head_dim))?;
        if let Some([q_norm, k_norm]) = &layer.qk_norm {
            q = metrum_kernels::rms_norm(&q, q_norm, eps)?;
            k = metrum_kernels::rms_norm(&k, k_norm, eps)?;
        }
        let positions = &batch.meta().positions_t;
        let tables = self.rope_tables(index);
        let q = self.rotate(&q, positions, tables)?;
        let k = self.rotate(&k, positions, tables)?;
        metrum_kernels::reshape_and_cache(&k, &v, key_cache, value_cache, batch.meta())?;
        let params = AttentionParams {
            scale: c.attn_scale(),
            sliding_window: c.window(index),
            soft_cap: c.arch.attn_soft_cap,
        };
        let out = metrum_kernels::paged_attention_with(
            &q,
            key_cache,
            value_cache,
            batch.meta(),
            &params,
        )?;
        Ok(layer.o_proj.forward(&out.reshape((tokens, c.q_size()))?)?)
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
        crate::kv_cache::check_kv_dtype(kv.layout().dtype, self.dtype, &self.device)?;
        let expected = self.kv_cache_layout_in(meta.block_size, kv.layout().dtype);
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
