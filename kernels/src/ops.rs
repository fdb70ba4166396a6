//! The fused per-layer ops of a llama forward pass besides attention: RMSNorm (optionally fused
//! with the residual add), rotary embedding in both pairings, and the gated MLP activations
//! (SiLU for llama-style models, tanh-approximated GELU for Gemma).
//! Each is a candle custom op, so it runs the CPU reference or (feature `cuda`) the CUDA kernel
//! depending on the tensors' device. Supported dtypes: f32, f16, bf16.

use crate::cpu;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

/// Which elements of a head form the rotated pairs; see `cpu::rope` for the math.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(x[i], x[i + D/2])`: HF `rotate_half`, safetensors llama, `candle_nn::rotary_emb::rope`.
    Neox,
    /// Pairs `(x[2i], x[2i + 1])`: GPT-J; GGUF llama weights, `candle_nn::rotary_emb::rope_i`.
    Interleaved,
}

/// `x / sqrt(mean(x²) + eps) * weight` over the last dim. `x`: `[..., H]`, `weight`: `[H]`,
/// same dtype. Returns `x`'s shape and dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&weight.contiguous()?, &RmsNorm { eps })
}

/// The pre-norm residual step: `sum = x + residual` (rounded to the dtype), returns
/// `(rms_norm(sum, weight, eps), sum)`. `x`, `residual`: same shape `[..., H]`.
pub fn add_rms_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let both = x.contiguous()?.apply_op3_no_bwd(
        &residual.contiguous()?,
        &weight.contiguous()?,
        &AddRmsNorm { eps },
    )?;
    Ok((both.get(0)?, both.get(1)?))
}

/// Rotates every token of `x` (`[T, heads, head_dim]`) by its position. `positions`: u32 `[T]`
/// on `x`'s device (see [`crate::AttentionMetadata::positions_t`]); `cos`, `sin`:
/// `[max_pos, head_dim / 2]`, f32 (recommended) or `x`'s dtype. Positions must be `< max_pos`:
/// the CPU path returns an error, the CUDA path (which cannot look without a device sync) clamps.
pub fn rope(
    x: &Tensor,
    positions: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    style: RopeStyle,
) -> Result<Tensor> {
    let (tokens, _, _) = x.dims3()?;
    if positions.dims() != [tokens] || positions.dtype() != candle_core::DType::U32 {
        bail!(
            "rope: positions must be u32 [{tokens}], got {:?} {:?}",
            positions.dtype(),
            positions.dims()
        );
    }
    let op = Rope {
        positions: &positions.contiguous()?,
        style,
    };
    x.contiguous()?
        .apply_op3_no_bwd(&cos.contiguous()?, &sin.contiguous()?, &op)
}

/// `silu(gate) * up`, elementwise; same shapes and dtype.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?
        .apply_op2_no_bwd(&up.contiguous()?, &SiluMul)
}

/// Gemma's GeGLU: gelu_tanh(gate) * up, gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (HF "gelu_pytorch_tanh").
/// Elementwise; same shapes and dtype.
pub fn gelu_tanh_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?
        .apply_op2_no_bwd(&up.contiguous()?, &GeluTanhMul)
}

pub(crate) struct RmsNorm {
    pub eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "metrum-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((cpu::rms_norm(x, xl, w, wl, self.eps)?, xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::rms_norm((x, xl), None, (w, wl), self.eps)?;
        Ok((out, xl.shape().clone()))
    }
}

pub(crate) struct AddRmsNorm {
    pub eps: f32,
}

fn stacked_shape(l: &Layout) -> Shape {
    let mut dims = vec![2];
    dims.extend_from_slice(l.shape().dims());
    Shape::from(dims)
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "metrum-add-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        r: &CpuStorage,
        rl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = cpu::add_rms_norm((x, xl), (r, rl), (w, wl), self.eps)?;
        Ok((out, stacked_shape(xl)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        r: &candle_core::CudaStorage,
        rl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::rms_norm((x, xl), Some((r, rl)), (w, wl), self.eps)?;
        Ok((out, stacked_shape(xl)))
    }
}

pub(crate) struct Rope<'a> {
    pub positions: &'a Tensor,
    pub style: RopeStyle,
}

impl CustomOp3 for Rope<'_> {
    fn name(&self) -> &'static str {
        "metrum-rope"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        cos: &CpuStorage,
        cl: &Layout,
        sin: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let positions = self.positions.to_vec1::<u32>()?;
        let out = cpu::rope((x, xl), (cos, cl), (sin, sl), &positions, self.style)?;
        Ok((out, xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        cos: &candle_core::CudaStorage,
        cl: &Layout,
        sin: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::rope((x, xl), (cos, cl), (sin, sl), self.positions, self.style)?;
        Ok((out, xl.shape().clone()))
    }
}

pub(crate) struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "metrum-silu-mul"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        u: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((cpu::silu_mul(g, gl, u, ul)?, gl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        g: &candle_core::CudaStorage,
        gl: &Layout,
        u: &candle_core::CudaStorage,
        ul: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((crate::cuda::silu_mul((g, gl), (u, ul))?, gl.shape().clone()))
    }
}

pub(crate) struct GeluTanhMul;

impl CustomOp2 for GeluTanhMul {
    fn name(&self) -> &'static str {
        "metrum-gelu-tanh-mul"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        u: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((cpu::gelu_tanh_mul(g, gl, u, ul)?, gl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        g: &candle_core::CudaStorage,
        gl: &Layout,
        u: &candle_core::CudaStorage,
        ul: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::gelu_tanh_mul((g, gl), (u, ul))?;
        Ok((out, gl.shape().clone()))
    }
}
