//! Public entry points: paged attention over a varlen batch, and writing new K/V into the cache.
//! Each is a candle custom op so it dispatches on the tensors' device: the CPU reference in
//! `crate::cpu`, the CUDA kernels (feature `cuda`) in `crate::cuda`.
//!
//! [`AttentionParams`] carries what differs between model families: the logit scale, a sliding
//! window (Mistral, Gemma 2/3 local layers) and Gemma 2's logit soft-capping. Every path (the
//! oracle, the fast CPU path, the CUDA kernels) honours all three.

use crate::{AttentionMetadata, cpu};
use candle_core::{CpuStorage, CustomOp3, InplaceOp2, Layout, Result, Shape, Tensor, bail};
use std::ops::Range;

/// How the attention logits of one layer are formed and masked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    /// Multiplies q·k before anything else (usually 1/sqrt(head_dim); Gemma: query_pre_attn_scalar^-0.5).
    pub scale: f32,
    /// Sliding-window attention: a query at position p sees only keys at positions k with p - k < w
    /// (i.e. keys max(0, p+1-w) ..= p, w keys including itself), as HF transformers' sliding_window masks do
    /// (Mistral, Gemma 2/3 local layers). None = full causal.
    pub sliding_window: Option<usize>,
    /// Gemma 2's attention logit soft-capping, applied to the scaled scores: cap * tanh(s / cap). None = off.
    pub soft_cap: Option<f32>,
}

impl AttentionParams {
    /// Plain causal attention with `scale`: no window, no soft-cap.
    pub fn new(scale: f32) -> Self {
        AttentionParams {
            scale,
            sliding_window: None,
            soft_cap: None,
        }
    }

    /// The keys a query at position `pos` attends to: `max(0, pos + 1 - w) ..= pos`.
    pub fn visible_keys(&self, pos: usize) -> Range<usize> {
        let first = match self.sliding_window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        first..pos + 1
    }

    /// The final logit of a raw dot product q·k: scaled, then soft-capped when configured.
    #[inline(always)]
    pub fn logit(&self, dot: f32) -> f32 {
        let s = dot * self.scale;
        match self.soft_cap {
            Some(cap) => cap * (s / cap).tanh(),
            None => s,
        }
    }

    /// Errors on parameters no kernel can honour: a zero window (a query would see no key, not
    /// even itself, so its softmax is empty), a soft-cap that is not a positive finite number
    /// (tanh(s / 0) and negative caps are meaningless), a non-finite scale.
    pub fn validate(&self) -> Result<()> {
        if self.sliding_window == Some(0) {
            bail!("attention: a sliding window of 0 keys leaves a query nothing to attend to");
        }
        if let Some(cap) = self.soft_cap
            && !(cap.is_finite() && cap > 0.0)
        {
            bail!("attention: soft_cap must be a positive finite number, got {cap}");
        }
        if !self.scale.is_finite() {
            bail!("attention: scale must be finite, got {}", self.scale);
        }
        Ok(())
    }
}

/// Writes the new keys and values of every batch token into the paged cache, in place.
///
/// `key`, `value`: `[T, num_kv_heads, head_dim]`; `key_cache`, `value_cache`:
/// `[num_blocks, block_size, num_kv_heads, head_dim]`. Destination slots come from
/// `meta.slot_mapping`. On CPU the cache may hold another float dtype than the new K/V (an f16
/// cache for f32 activations): values are converted with round-to-nearest-even. CUDA needs one
/// dtype for both.
pub fn reshape_and_cache(
    key: &Tensor,
    value: &Tensor,
    key_cache: &Tensor,
    value_cache: &Tensor,
    meta: &AttentionMetadata,
) -> Result<()> {
    let (t, _, _) = key.dims3()?;
    if t != meta.num_tokens() || value.dims() != key.dims() {
        candle_core::bail!(
            "reshape_and_cache: key {:?} / value {:?} do not match {} batch tokens",
            key.dims(),
            value.dims(),
            meta.num_tokens()
        );
    }
    let (num_blocks, block_size, _, _) = key_cache.dims4()?;
    let capacity = (num_blocks * block_size) as u32;
    if let Some(bad) = meta.slot_mapping.iter().find(|&&slot| slot >= capacity) {
        candle_core::bail!("reshape_and_cache: slot {bad} outside a cache of {capacity} slots");
    }
    let op = WriteCache { meta };
    key_cache.inplace_op2(&key.contiguous()?, &op)?;
    value_cache.inplace_op2(&value.contiguous()?, &op)?;
    Ok(())
}

/// Causal attention of every batch token's query over its sequence's context in the paged
/// cache (which must already hold this step's K/V, see [`reshape_and_cache`]): [`paged_attention_with`]
/// with `AttentionParams::new(softmax_scale)`.
pub fn paged_attention(
    q: &Tensor,
    key_cache: &Tensor,
    value_cache: &Tensor,
    meta: &AttentionMetadata,
    softmax_scale: f32,
) -> Result<Tensor> {
    let params = AttentionParams::new(softmax_scale);
    paged_attention_with(q, key_cache, value_cache, meta, &params)
}

/// Causal attention of every batch token's query over its sequence's context in the paged
/// cache (which must already hold this step's K/V, see [`reshape_and_cache`]), with the logit
/// scale, sliding window and soft-cap of `params`.
///
/// `q`: `[T, num_heads, head_dim]`. Returns `[T, num_heads, head_dim]` in `q`'s dtype.
pub fn paged_attention_with(
    q: &Tensor,
    key_cache: &Tensor,
    value_cache: &Tensor,
    meta: &AttentionMetadata,
    params: &AttentionParams,
) -> Result<Tensor> {
    run_paged_attention(q, key_cache, value_cache, meta, params, false)
}

fn run_paged_attention(
    q: &Tensor,
    key_cache: &Tensor,
    value_cache: &Tensor,
    meta: &AttentionMetadata,
    params: &AttentionParams,
    reference: bool,
) -> Result<Tensor> {
    params.validate()?;
    meta.check_block_ids(key_cache.dims4()?.0)?;
    let op = PagedAttention {
        meta,
        params: *params,
        reference,
    };
    q.contiguous()?
        .apply_op3_no_bwd(key_cache, value_cache, &op)
}

pub(crate) struct WriteCache<'a> {
    pub meta: &'a AttentionMetadata,
}

impl InplaceOp2 for WriteCache<'_> {
    fn name(&self) -> &'static str {
        "metrum-reshape-and-cache"
    }

    fn cpu_fwd(
        &self,
        cache: &mut CpuStorage,
        cl: &Layout,
        new: &CpuStorage,
        nl: &Layout,
    ) -> Result<()> {
        cpu::reshape_and_cache(cache, cl, new, nl, self.meta)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        cache: &mut candle_core::CudaStorage,
        cl: &Layout,
        new: &candle_core::CudaStorage,
        nl: &Layout,
    ) -> Result<()> {
        crate::cuda::reshape_and_cache(cache, cl, new, nl, self.meta)
    }
}

pub(crate) struct PagedAttention<'a> {
    pub meta: &'a AttentionMetadata,
    pub params: AttentionParams,
    /// On CPU, run the readable oracle even for f32 (tests of the fast path).
    pub reference: bool,
}

/// [`paged_attention`] through the readable CPU oracle, whatever the dtype: what the fast CPU
/// path (and the CUDA kernels) are tested against. CPU tensors only.
pub fn paged_attention_reference(
    q: &Tensor,
    key_cache: &Tensor,
    value_cache: &Tensor,
    meta: &AttentionMetadata,
    softmax_scale: f32,
) -> Result<Tensor> {
    let params = AttentionParams::new(softmax_scale);
    paged_attention_reference_with(q, key_cache, value_cache, meta, &params)
}

/// [`paged_attention_with`] through the readable CPU oracle, whatever the dtype. CPU tensors only.
pub fn paged_attention_reference_with(
    q: &Tensor,
    key_cache: &Tensor,
    value_cache: &Tensor,
    meta: &AttentionMetadata,
    params: &AttentionParams,
) -> Result<Tensor> {
    run_paged_attention(q, key_cache, value_cache, meta, params, true)
}

impl CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "metrum-paged-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if !self.reference
            && let Some(fast) = fast_cpu(q, ql, k, kl, v, vl, self.meta, &self.params)
        {
            return fast;
        }
        cpu::paged_attention(q, ql, k, kl, v, vl, self.meta, &self.params)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        ql: &Layout,
        k: &candle_core::CudaStorage,
        kl: &Layout,
        v: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::paged_attention(q, ql, k, kl, v, vl, self.meta, &self.params)
    }
}

/// The fast CPU path for contiguous f32 queries over an f32 or f16 cache, whose shapes the oracle
/// would accept; `None` sends everything else (other dtypes, odd layouts, bad shapes and their
/// errors) to the oracle.
#[allow(clippy::too_many_arguments)]
fn fast_cpu(
    q: &CpuStorage,
    ql: &Layout,
    k: &CpuStorage,
    kl: &Layout,
    v: &CpuStorage,
    vl: &Layout,
    meta: &AttentionMetadata,
    params: &AttentionParams,
) -> Option<Result<(CpuStorage, Shape)>> {
    let CpuStorage::F32(q) = q else {
        return None;
    };
    let (&[t, num_heads, head_dim], &[_, block_size, kv_heads, kd]) =
        (ql.shape().dims(), kl.shape().dims())
    else {
        return None;
    };
    let fits = kd == head_dim
        && kl.shape() == vl.shape()
        && t == meta.num_tokens()
        && block_size == meta.block_size
        && kv_heads > 0
        && num_heads % kv_heads == 0;
    let (q0, q1) = ql.contiguous_offsets()?;
    let (k0, k1) = kl.contiguous_offsets()?;
    let (v0, v1) = vl.contiguous_offsets()?;
    if !fits || q1 > q.len() {
        return None;
    }
    let dims = cpu::FastDims {
        num_heads,
        kv_heads,
        head_dim,
        block_size,
    };
    let q = &q[q0..q1];
    let out = match (k, v) {
        (CpuStorage::F32(k), CpuStorage::F32(v)) if k1 <= k.len() && v1 <= v.len() => {
            cpu::paged_attention_fast(q, &k[k0..k1], &v[v0..v1], meta, dims, params)
        }
        (CpuStorage::F16(k), CpuStorage::F16(v)) if k1 <= k.len() && v1 <= v.len() => {
            cpu::paged_attention_fast(q, &k[k0..k1], &v[v0..v1], meta, dims, params)
        }
        _ => return None,
    };
    Some(Ok((
        CpuStorage::F32(out),
        Shape::from((t, num_heads, head_dim)),
    )))
}
