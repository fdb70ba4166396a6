//! The grouped mixture-of-experts launches (`moe.cu`): one grouped GEMM launch per projection
//! over every expert's rows, and the per-token weighted combine.

use super::{DeviceU32, KernelType, load, view};
use crate::moe::ExpertRows;
use candle_core::cuda_backend::CudaStorageSlice as S;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result, bail};
use half::{bf16, f16};

/// Must match `moe.cu`: pair rows and output columns per block, threads per block.
const ROWS_PER_BLOCK: usize = 8;
const COLS_PER_BLOCK: usize = 32;
const THREADS: u32 = 256;

type Input<'a> = (&'a CudaStorage, &'a Layout);

pub(crate) fn moe_grouped_matmul(
    (x, xl): Input<'_>,
    (w, wl): Input<'_>,
    rows: &ExpertRows,
) -> Result<CudaStorage> {
    let (total, k) = xl.shape().dims2()?;
    let (experts, n, _) = wl.shape().dims3()?;
    let dev = x.device.clone();
    let offsets_lock = DeviceU32::new(rows.device_offsets(), "expert offsets")?;
    let offsets = offsets_lock.view()?;
    let cfg = LaunchConfig {
        grid_dim: (
            n.div_ceil(COLS_PER_BLOCK) as u32,
            rows.max_rows().div_ceil(ROWS_PER_BLOCK).max(1) as u32,
            experts as u32,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (n32, k32) = (n as u32, k as u32);
    macro_rules! run {
        ($t:ty) => {{
            let xv = view::<$t>(x, xl, "x")?;
            let wv = view::<$t>(w, wl, "weights")?;
            // Zeroed: an empty batch launches nothing that would write it.
            let mut out = dev.alloc_zeros::<$t>(total * n)?;
            if total > 0 {
                let func = load(&dev, "moe", &format!("moe_grouped_gemm_{}", <$t>::SUFFIX))?;
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&func);
                b.arg(&xv)
                    .arg(&wv)
                    .arg(&mut out)
                    .arg(&offsets)
                    .arg(&n32)
                    .arg(&k32);
                unsafe { b.launch(cfg) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    Ok(match (&x.slice, &w.slice) {
        (S::F32(_), S::F32(_)) => run!(f32),
        (S::F16(_), S::F16(_)) => run!(f16),
        (S::BF16(_), S::BF16(_)) => run!(bf16),
        _ => bail!("moe_grouped_matmul: x and weights must share one of f32, f16, bf16"),
    })
}

/// The contiguous u32 part of a CUDA storage (the slot rows arrive as a custom op input).
fn view_u32<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, u32>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{what} must be contiguous");
    };
    match s.as_cuda_slice::<u32>()?.try_slice(start..end) {
        Some(v) => Ok(v),
        None => bail!("{what}: layout {l:?} runs past its storage"),
    }
}

pub(crate) fn moe_combine(
    (y, yl): Input<'_>,
    (r, rl): Input<'_>,
    (wt, wl): Input<'_>,
) -> Result<CudaStorage> {
    let (num_rows, n) = yl.shape().dims2()?;
    let (tokens, per_token) = rl.shape().dims2()?;
    if tokens == 0 || n == 0 {
        bail!("moe_combine: empty input");
    }
    let dev = y.device.clone();
    let rv = view_u32(r, rl, "slot rows")?;
    let wv = view::<f32>(wt, wl, "slot weights")?;
    let cfg = LaunchConfig {
        grid_dim: (tokens as u32, 1, 1),
        block_dim: (n.next_multiple_of(32).clamp(32, 1024) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let dims = [n as u32, per_token as u32, num_rows as u32];
    macro_rules! run {
        ($t:ty) => {{
            let yv = view::<$t>(y, yl, "expert outputs")?;
            // SAFETY: the kernel writes every element.
            let mut out = unsafe { dev.alloc::<$t>(tokens * n)? };
            let func = load(&dev, "moe", &format!("moe_combine_{}", <$t>::SUFFIX))?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            b.arg(&yv).arg(&rv).arg(&wv).arg(&mut out);
            b.arg(&dims[0]).arg(&dims[1]).arg(&dims[2]);
            unsafe { b.launch(cfg) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    Ok(match &y.slice {
        S::F32(_) => run!(f32),
        S::F16(_) => run!(f16),
        S::BF16(_) => run!(bf16),
        _ => bail!("moe_combine: expert outputs must be f32, f16 or bf16"),
    })
}
