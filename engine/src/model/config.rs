//! The hyperparameters of a llama-family model, whatever file they came from.

use crate::model::rope::RopeScaling;
use metrum_kernels::RopeStyle;

/// Shapes and constants of one llama model: everything the forward pass and the KV cache
/// need to know besides the weights themselves.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    /// Which head elements RoPE pairs: GGUF llama weights are permuted for
    /// [`RopeStyle::Interleaved`], Hugging Face checkpoints use [`RopeStyle::Neox`].
    pub rope_style: RopeStyle,
    /// The context length the model was trained for; also the size of the RoPE tables.
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Query projection width `num_heads * head_dim` (not always `hidden_size`).
    pub fn q_size(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Key (and value) projection width `num_kv_heads * head_dim`.
    pub fn kv_size(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Parameter count, for logs and memory estimates (embeddings counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let attn = self.hidden_size * (self.q_size() + 2 * self.kv_size())
            + self.q_size() * self.hidden_size;
        let mlp = 3 * self.hidden_size * self.intermediate_size;
        let per_layer = attn + mlp + 2 * self.hidden_size;
        let embed = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        self.num_layers * per_layer + embed + head + self.hidden_size
    }

    /// Checks the relations the forward pass relies on; the error says which one fails.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "{} attention heads are not a multiple of {} KV heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return Err("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }
}
