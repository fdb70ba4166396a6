//! The feed-forward half of a decoder layer: a dense gated MLP, or a mixture of experts
//! (Mixtral, Qwen3-MoE) where a router picks `k` of `E` gated MLPs per token.
//!
//! The sparse path groups the step's tokens by expert instead of looping over tokens: the
//! router's top-k choices become one permutation of the `T·k` (token, expert) pairs sorted by
//! expert, the permuted rows of each active expert go through that expert's projections as
//! one matmul (the same [`Linear`] kernels and thread pool as a dense layer, quantized or not),
//! and the weighted outputs are scatter-added back to their tokens (`index_add`). Every step
//! is a device tensor op except the routing decision itself (`T × E` floats read to the host),
//! so the same code runs on CUDA.
//!
//! Router numerics follow transformers: softmax over all `E` logits in f32, top-k, then
//! renormalise the k weights to sum to 1 (Mixtral always; Qwen3-MoE when `norm_topk_prob`).

use candle_core::{DType, Device, Tensor};

use crate::model::arch::Activation;
use crate::model::linear::{Linear, SplitLinear};
use crate::model::{ModelError, Result};

/// The mixture-of-experts shape of a model (`None` in [`crate::model::ModelConfig`] for a
/// dense one).
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Experts per sparse layer (`num_local_experts` / `num_experts`; GGUF `expert_count`).
    pub num_experts: usize,
    /// Experts each token is routed to (`num_experts_per_tok`; GGUF `expert_used_count`).
    pub experts_per_token: usize,
    /// Hidden width of one expert (Mixtral: `intermediate_size`; Qwen3-MoE:
    /// `moe_intermediate_size`).
    pub expert_intermediate_size: usize,
    /// Rescale the k chosen probabilities to sum to 1 (Mixtral always; Qwen3-MoE's
    /// `norm_topk_prob`).
    pub renormalize: bool,
    /// Layers that keep a dense MLP of `intermediate_size` (Qwen3-MoE's `mlp_only_layers`
    /// and `decoder_sparse_step`); sorted.
    pub dense_layers: Vec<usize>,
}

impl MoeConfig {
    pub fn is_sparse(&self, layer: usize) -> bool {
        self.dense_layers.binary_search(&layer).is_err()
    }

    /// The relations the forward relies on, as `(field, reason)` for the loaders.
    pub(crate) fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.num_experts == 0 {
            return Err(("num_experts", "must be positive".into()));
        }
        if self.experts_per_token == 0 || self.experts_per_token > self.num_experts {
            return Err((
                "num_experts_per_tok",
                format!(
                    "{} experts per token must be between 1 and the {} experts",
                    self.experts_per_token, self.num_experts
                ),
            ));
        }
        if self.expert_intermediate_size == 0 {
            return Err(("moe_intermediate_size", "must be positive".into()));
        }
        Ok(())
    }
}

/// A gated MLP: `down(act(gate(x)) * up(x))`, gate and up stacked into one matmul.
#[derive(Debug)]
pub(crate) struct GatedMlp {
    /// gate, up.
    pub gate_up: SplitLinear<2>,
    pub down: Linear,
}

impl GatedMlp {
    /// `x: [T, hidden]` to `[T, hidden]`.
    pub fn forward(&self, x: &Tensor, activation: Activation) -> Result<Tensor> {
        let [gate, up] = self.gate_up.forward(x)?;
        let act = match activation {
            Activation::SiluMul => metrum_kernels::silu_mul(&gate, &up)?,
            Activation::GeluTanhMul => metrum_kernels::gelu_tanh_mul(&gate, &up)?,
        };
        Ok(self.down.forward(&act)?)
    }
}

/// One layer's feed-forward block.
#[derive(Debug)]
pub(crate) enum FeedForward {
    Dense(GatedMlp),
    Experts(MoeBlock),
}

impl FeedForward {
    /// `x: [T, hidden]` (the post-attention-norm activations) to `[T, hidden]`.
    pub fn forward(&self, x: &Tensor, activation: Activation) -> Result<Tensor> {
        match self {
            FeedForward::Dense(mlp) => mlp.forward(x, activation),
            FeedForward::Experts(moe) => moe.forward(x, activation),
        }
    }
}

/// A sparse layer: the router and its experts.
#[derive(Debug)]
pub(crate) struct MoeBlock {
    /// `[num_experts, hidden]`: one logit per expert.
    pub router: Linear,
    pub experts: Vec<GatedMlp>,
    pub experts_per_token: usize,
    pub renormalize: bool,
}

/// The step's routing: the `(token, expert)` pairs grouped by expert.
#[derive(Debug, PartialEq)]
pub(crate) struct Routing {
    /// Token index of each pair, the pairs of expert 0 first, then expert 1, ...
    pub tokens: Vec<u32>,
    /// The router weight of each pair, in the same order.
    pub weights: Vec<f32>,
    /// `(expert, pairs)` for each expert that got at least one token, in expert order.
    pub groups: Vec<(usize, usize)>,
}

/// Routes `T` tokens from their router logits `[T × E]` (row-major, f32): softmax over all
/// `E`, the `k` largest (ties to the lower expert index, as `torch.topk` on CPU), optionally
/// renormalised, then grouped by expert (tokens in order within an expert).
pub(crate) fn route(logits: &[f32], num_experts: usize, k: usize, renormalize: bool) -> Routing {
    let tokens = logits.len() / num_experts;
    let mut per_expert: Vec<Vec<(u32, f32)>> = vec![Vec::new(); num_experts];
    let mut probs = vec![0f32; num_experts];
    let mut order: Vec<usize> = (0..num_experts).collect();
    for (token, row) in logits.chunks_exact(num_experts).enumerate() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for (p, &l) in probs.iter_mut().zip(row) {
            *p = (l - max).exp();
            sum += *p;
        }
        for p in &mut probs {
            *p /= sum;
        }
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let chosen = &order[..k];
        let total: f32 = if renormalize {
            chosen.iter().map(|&e| probs[e]).sum()
        } else {
            1.0
        };
        for &e in chosen {
            per_expert[e].push((token as u32, probs[e] / total));
        }
    }
    let mut routing = Routing {
        tokens: Vec::with_capacity(tokens * k),
        weights: Vec::with_capacity(tokens * k),
        groups: Vec::new(),
    };
    for (expert, pairs) in per_expert.into_iter().enumerate() {
        if pairs.is_empty() {
            continue;
        }
        routing.groups.push((expert, pairs.len()));
        for (token, weight) in pairs {
            routing.tokens.push(token);
            routing.weights.push(weight);
        }
    }
    routing
}

impl MoeBlock {
    /// `x: [T, hidden]` to `Σ_k weight_k · expert_k(x)` per token.
    pub fn forward(&self, x: &Tensor, activation: Activation) -> Result<Tensor> {
        let (tokens, hidden) = x.dims2()?;
        let device = x.device();
        let logits = self.router.forward(x)?.to_dtype(DType::F32)?;
        let logits = logits.flatten_all()?.to_vec1::<f32>()?;
        let routing = route(
            &logits,
            self.experts.len(),
            self.experts_per_token,
            self.renormalize,
        );
        let token_ids = Tensor::from_vec(routing.tokens.clone(), routing.tokens.len(), device)?;
        let permuted = x.index_select(&token_ids, 0)?;
        let mut outputs = Vec::with_capacity(routing.groups.len());
        let mut start = 0;
        for &(expert, rows) in &routing.groups {
            let expert_mlp = self.experts.get(expert).ok_or_else(|| {
                ModelError::Assembly(format!(
                    "router picked expert {expert} of {}",
                    self.experts.len()
                ))
            })?;
            let input = permuted.narrow(0, start, rows)?;
            outputs.push(expert_mlp.forward(&input, activation)?);
            start += rows;
        }
        let expert_out = Tensor::cat(&outputs, 0)?.to_dtype(DType::F32)?;
        let weights = weight_column(&routing.weights, device)?;
        let weighted = expert_out.broadcast_mul(&weights)?;
        // Accumulated in f32: each token sums k expert outputs.
        let combined = Tensor::zeros((tokens, hidden), DType::F32, device)?
            .index_add(&token_ids, &weighted, 0)?;
        Ok(combined.to_dtype(x.dtype())?)
    }
}

fn weight_column(weights: &[f32], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(weights, (weights.len(), 1), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_takes_the_top_k_of_the_full_softmax_and_groups_by_expert() {
        // Token 0 prefers experts 2 then 0; token 1 prefers 1 then 2.
        let logits = [1.0, -1.0, 2.0, 0.0, 0.5, 3.0, 1.0, -2.0];
        let plain = route(&logits, 4, 2, false);
        assert_eq!(plain.groups, vec![(0, 1), (1, 1), (2, 2)]);
        assert_eq!(plain.tokens, vec![0, 1, 0, 1]);
        let softmax = |row: &[f32]| -> Vec<f32> {
            let sum: f32 = row.iter().map(|l| l.exp()).sum();
            row.iter().map(|l| l.exp() / sum).collect()
        };
        let p0 = softmax(&logits[..4]);
        assert!((plain.weights[0] - p0[0]).abs() < 1e-6);
        assert!((plain.weights[2] - p0[2]).abs() < 1e-6);
        let renorm = route(&logits, 4, 2, true);
        let token0: f32 = renorm.weights[0] + renorm.weights[2];
        assert!((token0 - 1.0).abs() < 1e-6);
        assert!((renorm.weights[0] - p0[0] / (p0[0] + p0[2])).abs() < 1e-6);
    }

    #[test]
    fn routing_breaks_ties_toward_the_lower_expert() {
        let routing = route(&[0.0, 0.0, 0.0], 3, 2, true);
        assert_eq!(routing.groups, vec![(0, 1), (1, 1)]);
        assert_eq!(routing.weights, vec![0.5, 0.5]);
    }
}
