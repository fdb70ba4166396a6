//! The model families Metrum serves and what sets each apart from Llama, as data.
//!
//! Every supported family is the same pre-norm decoder (embedding, N × [norm, attention,
//! norm, gated MLP], norm, head); they differ in flags: projection biases, per-head q/k norms,
//! Gemma's `(1 + w)` norms, extra "sandwich" norms, the gate activation, an embedding scale,
//! soft-capping, sliding-window layers, partial rotary. [`ArchSpec`] holds those flags and
//! [`crate::model::DecoderModel`] runs any combination, so a new family is a config mapping
//! (see `family/`), not a new forward pass. The registry here maps the names checkpoints
//! declare (HF `architectures[0]` / `model_type`, GGUF `general.architecture`) to a family.

use std::fmt;

/// One model family: which config mapping reads its checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Phi3,
    /// Mistral's mixture of experts (8 experts, 2 per token); GGUF `llama` with experts.
    Mixtral,
    /// Qwen3's attention with a mixture of many small experts.
    Qwen3Moe,
}

impl Family {
    pub const ALL: [Family; 9] = [
        Family::Llama,
        Family::Mistral,
        Family::Mixtral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Qwen3Moe,
        Family::Gemma2,
        Family::Gemma3,
        Family::Phi3,
    ];

    /// The HF `architectures` entry of this family's causal LM class.
    pub fn hf_architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Gemma2 => "Gemma2ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
            Family::Phi3 => "Phi3ForCausalLM",
            Family::Mixtral => "MixtralForCausalLM",
            Family::Qwen3Moe => "Qwen3MoeForCausalLM",
        }
    }

    /// The HF `model_type` (also what `/v1/models` reports as the architecture).
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3_text",
            Family::Phi3 => "phi3",
            Family::Mixtral => "mixtral",
            Family::Qwen3Moe => "qwen3_moe",
        }
    }

    /// The GGUF `general.architecture` llama.cpp writes for this family. Mistral and Mixtral
    /// have none of their own: llama.cpp converts them as `llama` (Mixtral with
    /// `llama.expert_count`, which the llama mapping reads).
    pub fn gguf_architecture(self) -> &'static str {
        match self {
            Family::Llama | Family::Mistral | Family::Mixtral => "llama",
            Family::Qwen3Moe => "qwen3moe",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3",
            Family::Phi3 => "phi3",
        }
    }

    /// The family of an HF checkpoint: `architectures[0]` first, `model_type` otherwise.
    /// `Gemma3ForConditionalGeneration` (the multimodal wrapper) is not a text model and is
    /// not matched here.
    pub fn from_hf(architectures: Option<&[String]>, model_type: Option<&str>) -> Option<Family> {
        if let Some(first) = architectures.and_then(|a| a.first()) {
            return Family::ALL
                .into_iter()
                .find(|f| f.hf_architecture() == first);
        }
        let model_type = model_type?;
        Family::ALL.into_iter().find(|f| {
            f.model_type() == model_type || (*f == Family::Gemma3 && model_type == "gemma3")
        })
    }

    /// The family of a GGUF file (`general.architecture`).
    pub fn from_gguf(architecture: &str) -> Option<Family> {
        Family::ALL
            .into_iter()
            .filter(|f| !matches!(f, Family::Mistral | Family::Mixtral))
            .find(|f| f.gguf_architecture() == architecture)
    }

    /// Whether checkpoints store q/k/v as one `qkv` matrix and gate/up as one `gate_up`
    /// (Phi-3, in both transformers' and llama.cpp's layouts). A storage fact: the forward
    /// sees the same split outputs either way.
    pub fn fused_projections(self) -> bool {
        self == Family::Phi3
    }

    /// What transformers adds to stored RMSNorm weights (Gemma's `1 + w`); the safetensors
    /// loader folds it in, llama.cpp's converter already did for GGUF.
    pub fn hf_norm_offset(self) -> f32 {
        match self {
            Family::Gemma2 | Family::Gemma3 => 1.0,
            _ => 0.0,
        }
    }

    /// For load errors: every HF architecture name accepted.
    pub fn supported_hf() -> String {
        let names: Vec<&str> = Family::ALL.iter().map(|f| f.hf_architecture()).collect();
        names.join(", ")
    }

    /// For load errors: every GGUF `general.architecture` accepted.
    pub fn supported_gguf() -> String {
        let mut names: Vec<&str> = Family::ALL.iter().map(|f| f.gguf_architecture()).collect();
        names.dedup();
        names.join(", ")
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.model_type())
    }
}

/// The gate activation of the MLP: `act(gate) * up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: Llama, Mistral, Qwen, Phi.
    SiluMul,
    /// GeGLU with the tanh approximation (`gelu_pytorch_tanh`): Gemma.
    GeluTanhMul,
}

/// Where a family's decoder differs from Llama's. Norm offsets are not here: Gemma's `(1 + w)`
/// is folded into the weights at load, so the forward only ever sees plain RMSNorm weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchSpec {
    pub family: Family,
    /// Biases on the q, k and v projections (Qwen2).
    pub qkv_bias: bool,
    /// RMSNorm over each head of q and k before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Norms after attention and after the MLP as well as before (Gemma 2/3's "sandwich").
    pub sandwich_norms: bool,
    pub activation: Activation,
    /// Multiply the token embeddings by `sqrt(hidden_size)` (Gemma).
    pub scale_embeddings: bool,
    /// `cap * tanh(score / cap)` on the scaled attention scores (Gemma 2).
    pub attn_soft_cap: Option<f32>,
    /// `cap * tanh(logit / cap)` on the output logits (Gemma 2).
    pub final_soft_cap: Option<f32>,
}

impl ArchSpec {
    /// Llama's defaults, the baseline every family starts from.
    pub fn llama() -> ArchSpec {
        ArchSpec {
            family: Family::Llama,
            qkv_bias: false,
            qk_norm: false,
            sandwich_norms: false,
            activation: Activation::SiluMul,
            scale_embeddings: false,
            attn_soft_cap: None,
            final_soft_cap: None,
        }
    }
}

impl Default for ArchSpec {
    fn default() -> Self {
        ArchSpec::llama()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_round_trips_through_its_names() {
        for family in Family::ALL {
            let archs = vec![family.hf_architecture().to_string()];
            assert_eq!(Family::from_hf(Some(&archs), None), Some(family));
            assert_eq!(
                Family::from_hf(None, Some(family.model_type())),
                Some(family)
            );
        }
        assert_eq!(Family::from_gguf("llama"), Some(Family::Llama));
        assert_eq!(Family::from_gguf("gemma3"), Some(Family::Gemma3));
        assert_eq!(Family::from_gguf("qwen3moe"), Some(Family::Qwen3Moe));
        assert_eq!(Family::from_gguf("falcon"), None);
        let archs = vec!["Gemma3ForConditionalGeneration".to_string()];
        assert_eq!(Family::from_hf(Some(&archs), Some("gemma3")), None);
    }
}
