//! The grouped mixture-of-experts ops (issue 20): after the router has sorted a step's
//! `(token, expert)` pairs by expert (a permutation the engine computes on the host), every
//! expert's rows go through that expert's weights in **one** launch per projection
//! ([`moe_grouped_matmul`]), and the weighted expert outputs are summed back per token
//! ([`moe_combine`]). Both are candle custom ops: the CPU reference (readable f32 math, the
//! oracle) or, with feature `cuda`, the kernels of `csrc/moe.cu`. Dtypes: f32, f16, bf16, with
//! f32 accumulation.

use crate::cpu;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, bail};

/// Which rows of a batch sorted by expert belong to which expert: expert `e` owns rows
/// `offsets[e]..offsets[e + 1]`. Kept on the host (for the launch grid and the checks) and on
/// the device (for the kernel).
#[derive(Clone, Debug)]
pub struct ExpertRows {
    offsets: Vec<u32>,
    device_offsets: Tensor,
}

impl ExpertRows {
    /// From the number of rows each expert owns (zero for an expert no token picked).
    pub fn new(rows_per_expert: &[usize], device: &Device) -> Result<Self> {
        if rows_per_expert.is_empty() {
            bail!("moe: no experts");
        }
        let mut offsets = Vec::with_capacity(rows_per_expert.len() + 1);
        offsets.push(0u32);
        let mut total = 0usize;
        for &rows in rows_per_expert {
            total += rows;
            let Ok(end) = u32::try_from(total) else {
                bail!("moe: {total} rows do not fit u32 offsets");
            };
            offsets.push(end);
        }
        let device_offsets = Tensor::from_slice(&offsets, offsets.len(), device)?;
        Ok(ExpertRows {
            offsets,
            device_offsets,
        })
    }

    pub fn num_experts(&self) -> usize {
        self.offsets.len() - 1
    }

    /// All rows of all experts (the pair count `T·k`).
    pub fn total_rows(&self) -> usize {
        self.offsets[self.offsets.len() - 1] as usize
    }

    /// The most rows any one expert owns (sizes the launch grid).
    pub fn max_rows(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0)
    }

    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// The offsets as a u32 tensor on the device the rows were built for.
    pub fn device_offsets(&self) -> &Tensor {
        &self.device_offsets
    }
}

/// `out[r] = x[r] · weights[e]ᵀ` for every row `r` of expert `e`. `x`: `[rows, K]` sorted by
/// expert; `weights`: `[E, N, K]` (each expert's `[out, in]` matrix, as a linear layer stores
/// it), same dtype; returns `[rows, N]` in that dtype.
pub fn moe_grouped_matmul(x: &Tensor, weights: &Tensor, rows: &ExpertRows) -> Result<Tensor> {
    let (total, k) = x.dims2()?;
    let (experts, _, wk) = weights.dims3()?;
    if wk != k || experts != rows.num_experts() || total != rows.total_rows() {
        bail!(
            "moe_grouped_matmul: x {:?}, weights {:?} and {} rows of {} experts disagree",
            x.dims(),
            weights.dims(),
            rows.total_rows(),
            rows.num_experts()
        );
    }
    if x.dtype() != weights.dtype() {
        bail!(
            "moe_grouped_matmul: x is {:?}, weights {:?}",
            x.dtype(),
            weights.dtype()
        );
    }
    x.contiguous()?.apply_op3_no_bwd(
        &weights.contiguous()?,
        &rows.device_offsets,
        &GroupedMatmul { rows },
    )
}

/// `out[t] = Σ_j slot_weights[t, j] · expert_out[slot_rows[t, j]]`: each token's `k` expert
/// outputs, weighted and summed in slot order (f32). `expert_out`: `[rows, N]` (f32/f16/bf16);
/// `slot_rows`: u32 `[T, k]`, rows of `expert_out`; `slot_weights`: f32 `[T, k]`. Returns
/// `[T, N]` in `expert_out`'s dtype. Rows must be `< rows`: the CPU path returns an error, the
/// CUDA path (which cannot look without a device sync) skips them.
pub fn moe_combine(
    expert_out: &Tensor,
    slot_rows: &Tensor,
    slot_weights: &Tensor,
) -> Result<Tensor> {
    let (tokens, per_token) = slot_rows.dims2()?;
    expert_out.dims2()?;
    if slot_weights.dims() != [tokens, per_token]
        || slot_rows.dtype() != DType::U32
        || slot_weights.dtype() != DType::F32
    {
        bail!(
            "moe_combine: slot rows must be u32 [T, k] and slot weights f32 [T, k], got {:?} {:?} and {:?} {:?}",
            slot_rows.dtype(),
            slot_rows.dims(),
            slot_weights.dtype(),
            slot_weights.dims()
        );
    }
    expert_out.contiguous()?.apply_op3_no_bwd(
        &slot_rows.contiguous()?,
        &slot_weights.contiguous()?,
        &Combine,
    )
}

struct GroupedMatmul<'a> {
    rows: &'a ExpertRows,
}

impl CustomOp3 for GroupedMatmul<'_> {
    fn name(&self) -> &'static str {
        "metrum-moe-grouped-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = cpu::moe_grouped_matmul(x, xl, w, wl, self.rows.offsets())?;
        let (rows, n) = (xl.shape().dims()[0], wl.shape().dims()[1]);
        Ok((out, Shape::from((rows, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::moe_grouped_matmul((x, xl), (w, wl), self.rows)?;
        let (rows, n) = (xl.shape().dims()[0], wl.shape().dims()[1]);
        Ok((out, Shape::from((rows, n))))
    }
}

struct Combine;

impl CustomOp3 for Combine {
    fn name(&self) -> &'static str {
        "metrum-moe-combine"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        yl: &Layout,
        rows: &CpuStorage,
        rl: &Layout,
        weights: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = cpu::moe_combine(y, yl, rows, rl, weights, wl)?;
        let (tokens, n) = (rl.shape().dims()[0], yl.shape().dims()[1]);
        Ok((out, Shape::from((tokens, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        y: &candle_core::CudaStorage,
        yl: &Layout,
        rows: &candle_core::CudaStorage,
        rl: &Layout,
        weights: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::moe_combine((y, yl), (rows, rl), (weights, wl))?;
        let (tokens, n) = (rl.shape().dims()[0], yl.shape().dims()[1]);
        Ok((out, Shape::from((tokens, n))))
    }
}
