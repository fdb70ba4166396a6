//! # Layout
//!
//! `metrum-kernels` holds the attention, KV-cache and fused kernels the engine's forward pass calls.
//! Every kernel has a readable CPU implementation that is the oracle, and (behind feature `cuda`)
//! a CUDA implementation under `csrc/` that is tested against it with the same test body.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`metadata`] | [`AttentionMetadata`]: one varlen batch's sequence layout, block tables, slot mapping |
//! | [`attention`] | [`paged_attention_with`] (and its [`AttentionParams`]: scale, sliding window, soft-cap), [`reshape_and_cache`]: the public entry points, dispatching by device |
//! | [`ops`] | [`rms_norm`], [`add_rms_norm`], [`rope`] (both [`RopeStyle`]s), [`silu_mul`], [`gelu_tanh_mul`] |
//! | [`moe`] | [`moe_grouped_matmul`] (one launch over all experts' rows, sorted by expert, with their [`ExpertRows`]) and [`moe_combine`] (the weighted sum back per token) |
//! | [`quant`] | quantized matmul on the CPU (GGUF Q4_0/Q4_1/Q8_0/Q4_K/Q5_K/Q6_K): scalar reference, AVX2, AVX-512 VNNI |
//! | [`threads`] | the spinning fork-join pool the CPU kernels run on (`--threads`) |
//! | [`vmath`] | vectorizable `exp`, `tanh`, SiLU and softmax sums (libm's `expf` is a scalar call) |
//! | `cpu` | the CPU reference implementations (f32 math; f16/bf16 are converted) |
//! | `cuda` | (feature `cuda`) launches of the kernels in `csrc/*.cu`, compiled to PTX by `build.rs` |
//! | [`check`] | the shared test bodies: device-vs-reference checks and bandwidth benchmarks that the tests and `metrum gpu-check` run |
//!
//! ## Conventions shared by every kernel
//! - A varlen batch is flat: `T` tokens from `S` sequences. Sequence `s` owns query rows
//!   `query_start_loc[s]..query_start_loc[s+1]`; its context after this step is `seq_lens[s]`
//!   tokens, so its query rows sit at positions `seq_lens[s] - q_len .. seq_lens[s]`.
//!   A prefill chunk is `q_len > 1` starting at any position; a decode is `q_len == 1`.
//! - The paged KV cache of one layer is two tensors `[num_blocks, block_size, num_kv_heads, head_dim]`.
//!   Token `p` of sequence `s` lives in block `block_tables[s][p / block_size]`, row `p % block_size`.
//!   `slot_mapping[t] = block * block_size + row` says where the new K/V of batch token `t` goes.
//! - Attention is causal, optionally within a sliding window `w`: query at position `p` sees
//!   keys `max(0, p + 1 - w)..=p` (`0..=p` without a window; see
//!   [`AttentionParams::visible_keys`]). Keys before the window are never read, so windowed
//!   layers cost O(w) per query, not O(p). A logit is `scale * q·k`, then `cap * tanh(logit / cap)`
//!   when soft-capping is on ([`AttentionParams::logit`]). GQA: query head `h` reads
//!   KV head `h / (num_heads / num_kv_heads)`.

pub mod attention;
pub mod check;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod metadata;
pub mod moe;
pub mod ops;
pub mod quant;
pub mod threads;
pub mod vmath;

pub use attention::{
    AttentionParams, paged_attention, paged_attention_reference, paged_attention_reference_with,
    paged_attention_with, reshape_and_cache,
};
pub use metadata::{AttentionMetadata, PREFILL_TILE_TOKENS};
pub use moe::{ExpertRows, moe_combine, moe_grouped_matmul};
pub use ops::{RopeStyle, add_rms_norm, gelu_tanh_mul, rms_norm, rope, silu_mul};

/// Every embedded PTX module as `(name, ptx)`, for validity checks (`ptxas`) without a GPU.
#[cfg(feature = "cuda")]
pub fn embedded_ptx() -> &'static [(&'static str, &'static str)] {
    &cuda::MODULES
}
