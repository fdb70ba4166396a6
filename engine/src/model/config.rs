//! The hyperparameters of a decoder model, whatever file and family they came from.

use crate::model::arch::{ArchSpec, Family};
use crate::model::moe::MoeConfig;
use crate::model::rope::RopeScaling;
use metrum_kernels::RopeStyle;

/// Shapes and constants of one model: everything the forward pass and the KV cache need to
/// know besides the weights themselves. Family differences are data ([`ArchSpec`], the
/// per-layer windows, the rotary fraction), never a different code path.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: ArchSpec,
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
    /// [`RopeStyle::Interleaved`], Hugging Face checkpoints (and every other GGUF family) use
    /// [`RopeStyle::Neox`].
    pub rope_style: RopeStyle,
    /// Leading dims of each head that RoPE rotates (Phi-4-mini: 3/4 of them); `None` = all.
    pub rotary_dim: Option<usize>,
    /// Gemma 3's RoPE base for its sliding-window layers (global layers use `rope_theta` and
    /// `rope_scaling`); `None` = every layer shares one table.
    pub rope_local_theta: Option<f32>,
    /// The context length the model was trained for; also the size of the RoPE tables.
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Sliding window of each layer (`None` = full attention); empty = no layer slides.
    pub layer_windows: Vec<Option<usize>>,
    /// The attention score scale; `None` = `1 / sqrt(head_dim)` (Gemma sets its own through
    /// `query_pre_attn_scalar`).
    pub attn_scale: Option<f32>,
    /// Mixture-of-experts shape (Mixtral, Qwen3-MoE); `None` = every layer has a dense MLP.
    pub moe: Option<MoeConfig>,
}

impl ModelConfig {
    pub fn family(&self) -> Family {
        self.arch.family
    }

    /// Query projection width `num_heads * head_dim` (not always `hidden_size`).
    pub fn q_size(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Key (and value) projection width `num_kv_heads * head_dim`.
    pub fn kv_size(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Dims of each head that RoPE rotates.
    pub fn rotary_dim(&self) -> usize {
        self.rotary_dim.unwrap_or(self.head_dim)
    }

    /// The sliding window of `layer`, if it has one.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.layer_windows.get(layer).copied().flatten()
    }

    /// Whether `layer` reads the local (sliding-window) RoPE table (Gemma 3).
    pub fn uses_local_rope(&self, layer: usize) -> bool {
        self.rope_local_theta.is_some() && self.window(layer).is_some()
    }

    pub fn attn_scale(&self) -> f32 {
        self.attn_scale
            .unwrap_or_else(|| 1.0 / (self.head_dim as f32).sqrt())
    }

    /// Parameter count, for logs and memory estimates (embeddings counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let attn = self.hidden_size * (self.q_size() + 2 * self.kv_size())
            + self.q_size() * self.hidden_size;
        let dense_mlp = 3 * self.hidden_size * self.intermediate_size;
        let norms = if self.arch.sandwich_norms { 4 } else { 2 };
        let mlps: usize = (0..self.num_layers)
            .map(|layer| match &self.moe {
                Some(m) if m.is_sparse(layer) => {
                    m.num_experts
                        * (3 * self.hidden_size * m.expert_intermediate_size + self.hidden_size)
                }
                _ => dense_mlp,
            })
            .sum();
        let per_layer = attn + norms * self.hidden_size;
        let embed = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        self.num_layers * per_layer + mlps + embed + head + self.hidden_size
    }

    /// Checks the relations the forward pass relies on. The error is `(field, reason)` so the
    /// loader can name the field in the checkpoint's own vocabulary.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err((name, "must be positive".into()));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err((
                "num_key_value_heads",
                format!(
                    "{} attention heads are not a multiple of {} KV heads",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        let rotary = self.rotary_dim();
        if rotary == 0 || !rotary.is_multiple_of(2) || rotary > self.head_dim {
            return Err((
                "rotary_dim",
                format!(
                    "{rotary} rotary dims must be even, positive and at most head_dim {}",
                    self.head_dim
                ),
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return Err((
                "rms_norm_eps",
                "rms_norm_eps and rope_theta must be positive".into(),
            ));
        }
        if self
            .rope_local_theta
            .is_some_and(|t| t.is_nan() || t <= 0.0)
        {
            return Err(("rope_local_base_freq", "must be positive".into()));
        }
        if !self.layer_windows.is_empty() && self.layer_windows.len() != self.num_layers {
            return Err((
                "layer_types",
                format!(
                    "{} layer types for {} layers",
                    self.layer_windows.len(),
                    self.num_layers
                ),
            ));
        }
        if let Some(w) = self.layer_windows.iter().flatten().find(|w| **w == 0) {
            return Err(("sliding_window", format!("a window of {w} tokens")));
        }
        for cap in [self.arch.attn_soft_cap, self.arch.final_soft_cap]
            .into_iter()
            .flatten()
        {
            if cap.is_nan() || cap <= 0.0 {
                return Err((
                    "softcapping",
                    format!("a soft cap of {cap}; it must be positive"),
                ));
            }
        }
        if let Some(scale) = self.attn_scale
            && (scale.is_nan() || scale <= 0.0)
        {
            return Err(("query_pre_attn_scalar", "must be positive".into()));
        }
        if let RopeScaling::LongRope { short, long, .. } = &self.rope_scaling
            && (short.len() != rotary / 2 || long.len() != rotary / 2)
        {
            return Err((
                "rope_scaling",
                format!(
                    "LongRoPE needs {} factors each (rotary dims / 2), got {} short and {} long",
                    rotary / 2,
                    short.len(),
                    long.len()
                ),
            ));
        }
        if let Some(moe) = &self.moe {
            moe.validate()?;
        }
        Ok(())
    }
}
