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
    pub experts: Experts,
    pub experts_per_token: usize,
    pub renormalize: bool,
}

/// How a layer's experts are held.
#[derive(Debug)]
pub(crate) enum Experts {
    /// One gated MLP per expert, any weight kind: one matmul per active expert and projection.
    PerExpert(Vec<GatedMlp>),
    /// Dense weights stacked for the grouped kernels (the CUDA path).
    Stacked(StackedExperts),
}

impl Experts {
    /// The per-expert MLPs as the loaders built them, stacked when `device` is a GPU and every
    /// expert is dense (the grouped kernels multiply f32/f16/bf16, not GGUF blocks).
    pub fn for_device(experts: Vec<GatedMlp>, device: &Device) -> Result<Experts> {
        if device.is_cuda()
            && let Some(stacked) = StackedExperts::from_dense(&experts)?
        {
            return Ok(Experts::Stacked(stacked));
        }
        Ok(Experts::PerExpert(experts))
    }

    fn len(&self) -> usize {
        match self {
            Experts::PerExpert(list) => list.len(),
            Experts::Stacked(stacked) => stacked.num_experts,
        }
    }
}

/// Every expert's dense weights in one tensor per projection.
#[derive(Debug)]
pub(crate) struct StackedExperts {
    /// `[E, 2·F, hidden]`: each expert's gate rows, then its up rows.
    gate_up: Tensor,
    /// `[E, hidden, F]`.
    down: Tensor,
    num_experts: usize,
}

impl StackedExperts {
    /// `None` when some expert is not dense or not stacked as one gate/up matrix.
    pub fn from_dense(experts: &[GatedMlp]) -> Result<Option<StackedExperts>> {
        let mut gate_up = Vec::with_capacity(experts.len());
        let mut down = Vec::with_capacity(experts.len());
        for expert in experts {
            match (expert.gate_up.as_single_dense(), expert.down.as_dense()) {
                (Some(gu), Some(d)) => {
                    gate_up.push(gu);
                    down.push(d);
                }
                _ => return Ok(None),
            }
        }
        if experts.is_empty() {
            return Ok(None);
        }
        Ok(Some(StackedExperts {
            gate_up: Tensor::stack(&gate_up, 0)?,
            down: Tensor::stack(&down, 0)?,
            num_experts: experts.len(),
        }))
    }

    /// `permuted: [pairs, hidden]` (the routed rows, sorted by expert) to the expert outputs
    /// `[pairs, hidden]`, in two grouped launches around the activation.
    fn forward(
        &self,
        permuted: &Tensor,
        routing: &Routing,
        activation: Activation,
    ) -> Result<Tensor> {
        let mut rows_per_expert = vec![0usize; self.num_experts];
        for &(expert, rows) in &routing.groups {
            rows_per_expert[expert] = rows;
        }
        let rows = metrum_kernels::ExpertRows::new(&rows_per_expert, permuted.device())?;
        let gate_up = metrum_kernels::moe_grouped_matmul(permuted, &self.gate_up, &rows)?;
        let width = self.down.dim(2)?;
        let (gate, up) = (
            gate_up.narrow(1, 0, width)?,
            gate_up.narrow(1, width, width)?,
        );
        let act = match activation {
            Activation::SiluMul => metrum_kernels::silu_mul(&gate, &up)?,
            Activation::GeluTanhMul => metrum_kernels::gelu_tanh_mul(&gate, &up)?,
        };
        Ok(metrum_kernels::moe_grouped_matmul(&act, &self.down, &rows)?)
    }
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

impl Routing {
    /// The inverse of the sort, for the combine: for token `t`, `rows[t·k + j]` is the pair
    /// row of its `j`-th expert (in expert order) and `weights[t·k + j]` that pair's weight.
    fn slots(&self, tokens: usize, k: usize) -> (Vec<u32>, Vec<f32>) {
        let mut filled = vec![0usize; tokens];
        let (mut rows, mut weights) = (vec![0u32; tokens * k], vec![0f32; tokens * k]);
        for (pair, (&token, &weight)) in self.tokens.iter().zip(&self.weights).enumerate() {
            let slot = token as usize * k + filled[token as usize];
            filled[token as usize] += 1;
            rows[slot] = pair as u32;
            weights[slot] = weight;
        }
        (rows, weights)
    }
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
        let experts = match &self.experts {
            Experts::PerExpert(experts) => experts,
            Experts::Stacked(stacked) => {
                let expert_out = stacked.forward(&permuted, &routing, activation)?;
                let k = self.experts_per_token;
                let (rows, weights) = routing.slots(tokens, k);
                let rows = Tensor::from_vec(rows, (tokens, k), device)?;
                let weights = Tensor::from_vec(weights, (tokens, k), device)?;
                return Ok(metrum_kernels::moe_combine(&expert_out, &rows, &weights)?);
            }
        };
        let mut outputs = Vec::with_capacity(routing.groups.len());
        let mut start = 0;
        for &(expert, rows) in &routing.groups {
            let expert_mlp = experts.get(expert).ok_or_else(|| {
                ModelError::Assembly(format!(
                    "router picked expert {expert} of {}",
                    experts.len()
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
    use crate::model::linear::SplitLinear;

    /// A block of `n` random dense experts (hidden 24, width 40) whose router spreads the
    /// tokens over most of them.
    fn random_block(n: usize, k: usize, renormalize: bool) -> (MoeBlock, Vec<GatedMlp>) {
        let device = Device::Cpu;
        let mlp = |_| -> GatedMlp {
            let gu = Tensor::randn(0f32, 0.2, (80, 24), &device).unwrap();
            let d = Tensor::randn(0f32, 0.2, (24, 40), &device).unwrap();
            GatedMlp {
                gate_up: SplitLinear::new(vec![(Linear::Dense(gu), vec![40, 40])]).unwrap(),
                down: Linear::Dense(d),
            }
        };
        let experts: Vec<GatedMlp> = (0..n).map(mlp).collect();
        let copies = experts
            .iter()
            .map(|e| GatedMlp {
                gate_up: SplitLinear::new(vec![(
                    Linear::Dense(e.gate_up.as_single_dense().unwrap().clone()),
                    vec![40, 40],
                )])
                .unwrap(),
                down: Linear::Dense(e.down.as_dense().unwrap().clone()),
            })
            .collect();
        let router = Tensor::randn(0f32, 1.0, (n, 24), &device).unwrap();
        let block = MoeBlock {
            router: Linear::Dense(router),
            experts: Experts::PerExpert(experts),
            experts_per_token: k,
            renormalize,
        };
        (block, copies)
    }

    /// The grouped kernels' path (the one CUDA takes), run here on their CPU reference, gives
    /// the per-expert path's output for a batch whose tokens reach different experts.
    #[test]
    fn stacked_experts_agree_with_one_matmul_per_expert() {
        for (n, k, renormalize) in [(8, 2, true), (6, 3, false)] {
            let (per_expert, copies) = random_block(n, k, renormalize);
            let stacked = MoeBlock {
                router: Linear::Dense(per_expert.router.as_dense().unwrap().clone()),
                experts: Experts::Stacked(StackedExperts::from_dense(&copies).unwrap().unwrap()),
                experts_per_token: k,
                renormalize,
            };
            let x = Tensor::randn(0f32, 1.0, (7, 24), &Device::Cpu).unwrap();
            let a = per_expert.forward(&x, Activation::SiluMul).unwrap();
            let b = stacked.forward(&x, Activation::SiluMul).unwrap();
            let diff = (a - &b).unwrap().abs().unwrap().max_all().unwrap();
            let scale = b.abs().unwrap().max_all().unwrap();
            let (diff, scale) = (
                diff.to_scalar::<f32>().unwrap(),
                scale.to_scalar::<f32>().unwrap(),
            );
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "{n} experts, k={k}: {diff} of {scale}"
            );
        }
    }

    #[test]
    fn only_dense_experts_are_stacked_and_only_on_a_gpu() {
        let (_, copies) = random_block(4, 2, true);
        let kept = Experts::for_device(copies, &Device::Cpu).unwrap();
        assert!(matches!(kept, Experts::PerExpert(ref list) if list.len() == 4));
        assert!(StackedExperts::from_dense(&[]).unwrap().is_none());
    }

    #[test]
    fn slots_invert_the_sort_by_expert() {
        let logits = [1.0, -1.0, 2.0, 0.0, 0.5, 3.0, 1.0, -2.0];
        let routing = route(&logits, 4, 2, true);
        // pairs: (t0,e0) (t1,e1) (t0,e2) (t1,e2)
        let (rows, weights) = routing.slots(2, 2);
        assert_eq!(rows, vec![0, 2, 1, 3]);
        assert_eq!(weights[0], routing.weights[0]);
        assert_eq!(weights[3], routing.weights[3]);
    }

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
