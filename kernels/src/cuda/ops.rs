//! RMSNorm (+ residual), RoPE and the gated activations silu_mul and gelu_tanh_mul on CUDA
//! (`norm.cu`, `rope.cu`, `activation.cu`).

use super::{DeviceU32, KernelType, aligned16, load, view};
use crate::ops::RopeStyle;
use candle_core::cuda_backend::CudaStorageSlice as S;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Tensor, bail};
use half::{bf16, f16};

/// Grid for a grid-stride elementwise kernel over `n` units, 256 threads per block.
fn elementwise_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn elements_per_vector<T>() -> usize {
    16 / std::mem::size_of::<T>()
}

type Input<'a> = (&'a CudaStorage, &'a Layout);

/// `rms_norm` over the last dim; with `residual`, the fused add whose output is `[2, ...]`
/// (normalized rows, then the sums).
pub(crate) fn rms_norm(
    (x, xl): Input<'_>,
    residual: Option<Input<'_>>,
    (w, wl): Input<'_>,
    eps: f32,
) -> Result<CudaStorage> {
    let hidden = wl.shape().elem_count();
    if wl.shape().rank() != 1 || xl.shape().dims().last() != Some(&hidden) || hidden == 0 {
        bail!(
            "rms_norm: weight {:?} does not match the last dim of {:?}",
            wl.shape(),
            xl.shape()
        );
    }
    if let Some((_, rl)) = residual
        && rl.shape() != xl.shape()
    {
        bail!(
            "add_rms_norm: x {:?} and residual {:?} differ",
            xl.shape(),
            rl.shape()
        );
    }
    let rows = xl.shape().elem_count() / hidden;
    if rows == 0 {
        bail!("rms_norm: empty input");
    }
    let dev = x.device.clone();
    macro_rules! run {
        ($t:ty) => {
            CudaStorage::wrap_cuda_slice(
                norm_rows::<$t>(&dev, (x, xl), residual, (w, wl), rows, hidden, eps)?,
                dev,
            )
        };
    }
    Ok(match (&x.slice, &w.slice) {
        (S::F32(_), S::F32(_)) => run!(f32),
        (S::F16(_), S::F16(_)) => run!(f16),
        (S::BF16(_), S::BF16(_)) => run!(bf16),
        _ => bail!("rms_norm: x and weight must share one of f32, f16, bf16"),
    })
}

fn norm_rows<T: KernelType>(
    dev: &CudaDevice,
    (x, xl): Input<'_>,
    residual: Option<Input<'_>>,
    (w, wl): Input<'_>,
    rows: usize,
    hidden: usize,
    eps: f32,
) -> Result<CudaSlice<T>> {
    let per_vec = elements_per_vector::<T>();
    let vec = hidden.is_multiple_of(per_vec)
        && aligned16::<T>(xl)
        && aligned16::<T>(wl)
        && residual.is_none_or(|(_, rl)| aligned16::<T>(rl));
    let units = if vec { hidden / per_vec } else { hidden };
    let threads = units.next_multiple_of(32).clamp(32, 1024) as u32;
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let xv = view::<T>(x, xl, "x")?;
    let wv = view::<T>(w, wl, "weight")?;
    let (hidden, vec) = (hidden as u32, vec as u32);
    let stream = dev.cuda_stream();
    match residual {
        None => {
            // SAFETY: the kernel writes every element.
            let mut out = unsafe { dev.alloc::<T>(rows * hidden as usize)? };
            let func = load(dev, "norm", &format!("rms_norm_{}", T::SUFFIX))?;
            let mut b = stream.launch_builder(&func);
            b.arg(&xv)
                .arg(&wv)
                .arg(&mut out)
                .arg(&hidden)
                .arg(&eps)
                .arg(&vec);
            unsafe { b.launch(cfg) }.w()?;
            Ok(out)
        }
        Some((r, rl)) => {
            let rv = view::<T>(r, rl, "residual")?;
            // SAFETY: the kernel writes both halves, [normed; sum].
            let mut out = unsafe { dev.alloc::<T>(2 * rows * hidden as usize)? };
            let func = load(dev, "norm", &format!("add_rms_norm_{}", T::SUFFIX))?;
            let mut b = stream.launch_builder(&func);
            b.arg(&xv)
                .arg(&rv)
                .arg(&wv)
                .arg(&mut out)
                .arg(&hidden)
                .arg(&eps)
                .arg(&vec);
            unsafe { b.launch(cfg) }.w()?;
            Ok(out)
        }
    }
}

/// RoPE of `x` `[T, heads, D]` with tables `[max_pos, D/2]` in f32 or `x`'s dtype.
pub(crate) fn rope(
    (x, xl): Input<'_>,
    (cos, cl): Input<'_>,
    (sin, sl): Input<'_>,
    positions: &Tensor,
    style: RopeStyle,
) -> Result<CudaStorage> {
    let (tokens, heads, dim) = xl.shape().dims3()?;
    let (max_pos, half) = cl.shape().dims2()?;
    if dim != 2 * half || sl.shape() != cl.shape() || positions.dims() != [tokens] || max_pos == 0 {
        bail!(
            "rope: x {:?}, cos {:?}, sin {:?}, positions {:?} disagree",
            xl.shape(),
            cl.shape(),
            sl.shape(),
            positions.dims()
        );
    }
    if tokens * heads * half == 0 {
        bail!("rope: empty input");
    }
    let dev = x.device.clone();
    let pos_lock = DeviceU32::new(positions, "positions")?;
    let pos = pos_lock.view()?;
    let kind = match style {
        RopeStyle::Neox => "neox",
        RopeStyle::Interleaved => "interleaved",
    };
    let dims = [tokens as u32, heads as u32, half as u32, max_pos as u32];
    macro_rules! run {
        ($t:ty, $c:ty) => {{
            let xv = view::<$t>(x, xl, "x")?;
            let cv = view::<$c>(cos, cl, "cos")?;
            let sv = view::<$c>(sin, sl, "sin")?;
            // SAFETY: the kernel writes every element.
            let mut out = unsafe { dev.alloc::<$t>(xl.shape().elem_count())? };
            let name = format!("rope_{kind}_{}_{}", <$t>::SUFFIX, <$c>::SUFFIX);
            let func = load(&dev, "rope", &name)?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            b.arg(&xv).arg(&pos).arg(&cv).arg(&sv).arg(&mut out);
            b.arg(&dims[0]).arg(&dims[1]).arg(&dims[2]).arg(&dims[3]);
            unsafe { b.launch(elementwise_cfg(tokens * heads * half)) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    Ok(match (&x.slice, &cos.slice, &sin.slice) {
        (S::F32(_), S::F32(_), S::F32(_)) => run!(f32, f32),
        (S::F16(_), S::F16(_), S::F16(_)) => run!(f16, f16),
        (S::F16(_), S::F32(_), S::F32(_)) => run!(f16, f32),
        (S::BF16(_), S::BF16(_), S::BF16(_)) => run!(bf16, bf16),
        (S::BF16(_), S::F32(_), S::F32(_)) => run!(bf16, f32),
        _ => bail!("rope: x must be f32/f16/bf16 and cos/sin f32 or x's dtype"),
    })
}

pub(crate) fn silu_mul(gate: Input<'_>, up: Input<'_>) -> Result<CudaStorage> {
    gated(gate, up, "silu_mul")
}

pub(crate) fn gelu_tanh_mul(gate: Input<'_>, up: Input<'_>) -> Result<CudaStorage> {
    gated(gate, up, "gelu_tanh_mul")
}

/// `act(gate) * up` through the `activation.cu` kernels named `{kind}_{dtype}` (scalar) and
/// `{kind}_vec_{dtype}` (16-byte vectors).
fn gated((g, gl): Input<'_>, (u, ul): Input<'_>, kind: &str) -> Result<CudaStorage> {
    if gl.shape() != ul.shape() {
        bail!(
            "{kind}: gate {:?} and up {:?} differ",
            gl.shape(),
            ul.shape()
        );
    }
    let n = gl.shape().elem_count();
    if n == 0 {
        bail!("{kind}: empty input");
    }
    let dev = g.device.clone();
    macro_rules! run {
        ($t:ty) => {{
            let gv = view::<$t>(g, gl, "gate")?;
            let uv = view::<$t>(u, ul, "up")?;
            // SAFETY: the kernel writes every element.
            let mut out = unsafe { dev.alloc::<$t>(n)? };
            let per_vec = elements_per_vector::<$t>();
            let vec = n.is_multiple_of(per_vec) && aligned16::<$t>(gl) && aligned16::<$t>(ul);
            let (name, units) = if vec {
                (format!("{kind}_vec_{}", <$t>::SUFFIX), n / per_vec)
            } else {
                (format!("{kind}_{}", <$t>::SUFFIX), n)
            };
            let func = load(&dev, "activation", &name)?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            let count = units as u64;
            b.arg(&gv).arg(&uv).arg(&mut out).arg(&count);
            unsafe { b.launch(elementwise_cfg(units)) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    Ok(match (&g.slice, &u.slice) {
        (S::F32(_), S::F32(_)) => run!(f32),
        (S::F16(_), S::F16(_)) => run!(f16),
        (S::BF16(_), S::BF16(_)) => run!(bf16),
        _ => bail!("{kind}: gate and up must share one of f32, f16, bf16"),
    })
}
