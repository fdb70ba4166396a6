//! The paged KV cache tensors: per layer one key and one value tensor
//! `[num_blocks, block_size, num_kv_heads, head_dim]` on the model's device. The scheduler owns
//! which block belongs to whom (block ids are plain data); this module only owns the memory,
//! and the choice of what it stores ([`resolve_kv_dtype`]).

use candle_core::{DType, Device, Tensor};

use crate::config::KvCacheDtype;
use crate::model::ModelError;

/// The dtype the KV cache stores for `choice` (`--kv-cache-dtype`), next to activations of
/// `activation` dtype on `device`; an error for a pair no kernel runs.
pub fn resolve_kv_dtype(
    choice: KvCacheDtype,
    activation: DType,
    device: &Device,
) -> Result<DType, ModelError> {
    let kv = match choice {
        KvCacheDtype::Auto => activation,
        KvCacheDtype::F32 => DType::F32,
        KvCacheDtype::F16 => DType::F16,
    };
    check_kv_dtype(kv, activation, device)?;
    Ok(kv)
}

/// Whether the kernels run a `kv` cache next to `activation`s on `device`: on CPU any of f32,
/// f16, bf16 (values are converted when written and read); on CUDA only the activation dtype,
/// since its kernels read and write the cache in the activations' type.
pub fn check_kv_dtype(kv: DType, activation: DType, device: &Device) -> Result<(), ModelError> {
    let lower = |d: DType| format!("{d:?}").to_lowercase();
    if !matches!(kv, DType::F32 | DType::F16 | DType::BF16) {
        return Err(ModelError::KvCache(format!(
            "dtype {} unsupported, expected f32, f16 or bf16",
            lower(kv)
        )));
    }
    if !device.is_cpu() && kv != activation {
        return Err(ModelError::KvCache(format!(
            "a {} KV cache next to {} activations runs on CPU only: CUDA's kernels keep the \
             cache in the activation dtype; use --kv-cache-dtype auto, or --dtype {}",
            lower(kv),
            lower(activation),
            lower(kv)
        )));
    }
    Ok(())
}

/// The shape of a KV cache, without the memory: what sizing decisions need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheLayout {
    pub num_layers: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// What the cache stores ([`resolve_kv_dtype`]): f16 or f32 on CPU, whatever the
    /// activations are; on CUDA the activation dtype (bf16 or f16).
    pub dtype: DType,
}

impl KvCacheLayout {
    /// Bytes of K and V, over all layers, for one block of `block_size` tokens.
    pub fn bytes_per_block(&self) -> usize {
        2 * self.num_layers
            * self.block_size
            * self.num_kv_heads
            * self.head_dim
            * self.dtype.size_in_bytes()
    }

    /// How many whole blocks fit in `bytes`.
    pub fn blocks_for_bytes(&self, bytes: u64) -> usize {
        match self.bytes_per_block() as u64 {
            0 => 0,
            per_block => (bytes / per_block) as usize,
        }
    }
}

/// The per-layer paged K/V tensors the forward pass writes (`reshape_and_cache`) and reads
/// (`paged_attention`).
#[derive(Debug)]
pub struct KvCache {
    layout: KvCacheLayout,
    num_blocks: usize,
    /// `(key, value)` per layer.
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    /// Allocates `num_blocks` zeroed blocks per layer on `device`.
    pub fn new(
        layout: KvCacheLayout,
        num_blocks: usize,
        device: &Device,
    ) -> Result<KvCache, ModelError> {
        if num_blocks == 0 || layout.block_size == 0 {
            return Err(ModelError::KvCache(format!(
                "needs at least one block of at least one token, got {num_blocks} blocks of {} tokens",
                layout.block_size
            )));
        }
        if !matches!(layout.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(ModelError::KvCache(format!(
                "dtype {:?} unsupported, expected f32, f16 or bf16",
                layout.dtype
            )));
        }
        let shape = (
            num_blocks,
            layout.block_size,
            layout.num_kv_heads,
            layout.head_dim,
        );
        let layers = (0..layout.num_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, layout.dtype, device)?,
                    Tensor::zeros(shape, layout.dtype, device)?,
                ))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(KvCache {
            layout,
            num_blocks,
            layers,
        })
    }

    /// As many blocks as fit in `bytes` (`--kv-cache-memory`, or what is left of the GPU after
    /// the weights); an error when not even one block fits.
    pub fn with_memory_budget(
        layout: KvCacheLayout,
        bytes: u64,
        device: &Device,
    ) -> Result<KvCache, ModelError> {
        let blocks = layout.blocks_for_bytes(bytes);
        if blocks == 0 {
            return Err(ModelError::KvCache(format!(
                "a budget of {bytes} bytes holds no block; one block needs {} bytes",
                layout.bytes_per_block()
            )));
        }
        KvCache::new(layout, blocks, device)
    }

    pub fn layout(&self) -> &KvCacheLayout {
        &self.layout
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn block_size(&self) -> usize {
        self.layout.block_size
    }

    pub fn bytes_per_block(&self) -> usize {
        self.layout.bytes_per_block()
    }

    /// Total bytes held by the cache.
    pub fn total_bytes(&self) -> usize {
        self.num_blocks * self.bytes_per_block()
    }

    /// `(key, value)` cache tensors of layer `layer`; `None` past the last layer.
    pub fn layer(&self, layer: usize) -> Option<(&Tensor, &Tensor)> {
        self.layers.get(layer).map(|(k, v)| (k, v))
    }
}
