//! Launches of Metrum's CUDA kernels (`csrc/*.cu`, compiled to PTX by `build.rs` and embedded
//! here). Every launch checks shapes, dtypes, contiguity and 16-byte alignment on the host
//! first, and every driver error is returned as a candle error.

mod attention;
mod moe;
mod ops;

pub(crate) use attention::{paged_attention, reshape_and_cache};
pub(crate) use moe::{moe_combine, moe_grouped_matmul};
pub(crate) use ops::{gelu_tanh_mul, rms_norm, rope, silu_mul};

use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaView, DeviceRepr};
use candle_core::{
    CudaDevice, CudaStorage, DType, Layout, Result, Storage, StorageRef, Tensor, bail,
};
use half::{bf16, f16};

/// Every embedded PTX module: (file stem under `csrc/`, PTX text).
pub const MODULES: [(&str, &str); 7] = [
    (
        "attention_decode",
        include_str!(concat!(env!("OUT_DIR"), "/attention_decode.ptx")),
    ),
    (
        "attention_prefill",
        include_str!(concat!(env!("OUT_DIR"), "/attention_prefill.ptx")),
    ),
    (
        "cache",
        include_str!(concat!(env!("OUT_DIR"), "/cache.ptx")),
    ),
    ("norm", include_str!(concat!(env!("OUT_DIR"), "/norm.ptx"))),
    ("rope", include_str!(concat!(env!("OUT_DIR"), "/rope.ptx"))),
    (
        "activation",
        include_str!(concat!(env!("OUT_DIR"), "/activation.ptx")),
    ),
    ("moe", include_str!(concat!(env!("OUT_DIR"), "/moe.ptx"))),
];

/// Loads `func` from the embedded module `module` (once per device; candle caches modules).
/// Launch with `dev.cuda_stream().launch_builder(&func)`.
fn load(dev: &CudaDevice, module: &str, func: &str) -> Result<CudaFunction> {
    let Some((_, ptx)) = MODULES.iter().find(|(name, _)| *name == module) else {
        bail!("no embedded CUDA module {module}");
    };
    Ok(dev
        .get_or_load_custom_func(func, &format!("metrum_{module}"), ptx)?
        .into_cuda_function())
}

/// The element types the kernels are instantiated for, with their kernel-name suffix.
pub(crate) trait KernelType: CudaDType + DeviceRepr + Copy + 'static {
    const SUFFIX: &'static str;
    const DTYPE: DType;
}
impl KernelType for f32 {
    const SUFFIX: &'static str = "f32";
    const DTYPE: DType = DType::F32;
}
impl KernelType for f16 {
    const SUFFIX: &'static str = "f16";
    const DTYPE: DType = DType::F16;
}
impl KernelType for bf16 {
    const SUFFIX: &'static str = "bf16";
    const DTYPE: DType = DType::BF16;
}

/// The contiguous part of a CUDA storage that `l` describes.
fn view<'a, T: KernelType>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{what} must be contiguous");
    };
    match s.as_cuda_slice::<T>()?.try_slice(start..end) {
        Some(v) => Ok(v),
        None => bail!("{what}: layout {l:?} runs past its storage"),
    }
}

/// True when the layout starts on a 16-byte boundary (allocations themselves are 256-aligned),
/// which the vectorized loads need.
fn aligned16<T>(l: &Layout) -> bool {
    (l.start_offset() * std::mem::size_of::<T>()).is_multiple_of(16)
}

/// A u32 tensor on the CUDA device (the attention metadata, RoPE positions), read-locked for
/// the duration of a launch.
pub(crate) struct DeviceU32<'a> {
    guard: StorageRef<'a>,
    start: usize,
    len: usize,
    what: &'static str,
}

impl<'a> DeviceU32<'a> {
    pub(crate) fn new(t: &'a Tensor, what: &'static str) -> Result<Self> {
        if t.dtype() != DType::U32 {
            bail!("{what} must be u32, got {:?}", t.dtype());
        }
        let (guard, l) = t.storage_and_layout();
        let Some((start, end)) = l.contiguous_offsets() else {
            bail!("{what} must be contiguous");
        };
        Ok(DeviceU32 {
            guard,
            start,
            len: end - start,
            what,
        })
    }

    pub(crate) fn view(&self) -> Result<CudaView<'_, u32>> {
        let Storage::Cuda(s) = &*self.guard else {
            bail!(
                "{} is not on the CUDA device (build it with the model's device)",
                self.what
            );
        };
        match s
            .as_cuda_slice::<u32>()?
            .try_slice(self.start..self.start + self.len)
        {
            Some(v) => Ok(v),
            None => bail!("{}: layout runs past its storage", self.what),
        }
    }
}

/// The number of streaming multiprocessors, which sizes the split-KV decode grid.
fn multiprocessors(dev: &CudaDevice) -> usize {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
    static SMS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SMS.get_or_init(|| {
        dev.cuda_stream()
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map(|n| n.max(1) as usize)
            .unwrap_or(132)
    })
}
