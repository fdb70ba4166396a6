//! Device-vs-reference checks, bandwidth benchmarks and the CPU's int8 compute peak, shared by the test suite (which runs each
//! body on the CPU and, when a GPU is present, on CUDA) and by `metrum gpu-check` on the GPU box.
//!
//! Every check builds random inputs on the host, runs the kernel on the given device, and
//! compares the result (widened to f32) with an *independent* reference computed on the CPU:
//! a naive dense causal (optionally windowed, soft-capped) attention for the paged attention,
//! candle_nn's `rope`/`rope_i`, `rms_norm` and `silu` for the fused ops, the f64 scalar formula
//! for `gelu_tanh_mul`, per-expert candle matmuls and an f64 pair loop for the MoE ops, and a host-side scatter for `reshape_and_cache`.
//! On the CPU device this validates the oracle; on CUDA it validates the kernels.

mod attention;
mod bench;
mod compute_peak;
mod moe;
mod ops;

pub use attention::{AttentionCase, attention_cases, check_attention};
pub use bench::{
    BenchRow, BenchSpec, bench_copy_bandwidth, bench_paged_attention, bench_prefill,
    cpu_read_bandwidth,
};
pub use compute_peak::cpu_int8_mac_peak;
pub use moe::{MoeCase, check_moe, moe_cases};
pub use ops::{
    NormCase, RopeCase, check_add_rms_norm, check_gelu_tanh_mul, check_rms_norm, check_rope,
    check_silu_mul, norm_cases, rope_cases,
};

use candle_core::{DType, Device, Result, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One checked (kernel, dtype, shape): the relative L2 error `||out - ref|| / ||ref||` and
/// whether it is within the dtype's tolerance ([`tolerance`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CheckRow {
    pub kernel: String,
    pub dtype: String,
    pub shape: String,
    pub max_rel_err: f64,
    pub passed: bool,
}

impl CheckRow {
    fn new(kernel: &str, dtype: DType, shape: String, rel_err: f64) -> Self {
        CheckRow {
            kernel: kernel.into(),
            dtype: dtype.as_str().into(),
            shape,
            max_rel_err: rel_err,
            passed: rel_err.is_finite() && rel_err <= tolerance(dtype),
        }
    }
}

/// Largest relative L2 error accepted per dtype. Outputs are rounded to the dtype once (about
/// 2^-9 relative for bf16, 2^-12 for f16), and bf16/f16 attention also rounds the softmax
/// weights to the dtype before the tensor-core product, hence the margins.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 1e-2,
        DType::F16 => 2e-3,
        _ => 5e-5,
    }
}

/// The float dtypes every kernel supports.
pub const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Runs every kernel check over many shapes on `device`; `quick` keeps to the small shapes (a
/// few seconds), otherwise contexts go up to 32k tokens. Rows are returned, not asserted: the
/// caller reports them (`passed` says which are within tolerance).
pub fn run_kernel_checks(device: &Device, quick: bool) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for dtype in DTYPES {
        for (i, case) in attention_cases(quick).iter().enumerate() {
            rows.extend(check_attention(device, dtype, case, 1000 + i as u64)?);
        }
        for (i, case) in norm_cases(quick).iter().enumerate() {
            rows.push(check_rms_norm(device, dtype, case, 2000 + i as u64)?);
            rows.extend(check_add_rms_norm(device, dtype, case, 3000 + i as u64)?);
            rows.push(check_silu_mul(device, dtype, case, 4000 + i as u64)?);
            rows.push(check_gelu_tanh_mul(device, dtype, case, 6000 + i as u64)?);
        }
        for (i, case) in rope_cases(quick).iter().enumerate() {
            rows.push(check_rope(device, dtype, case, 5000 + i as u64)?);
        }
        for (i, case) in moe_cases().iter().enumerate() {
            rows.extend(check_moe(device, dtype, case, 7000 + i as u64)?);
        }
    }
    Ok(rows)
}

/// `||out - reference|| / ||reference||` over f32 copies (0 when both are all zero).
pub fn rel_err(out: &Tensor, reference: &Tensor) -> Result<f64> {
    let out = out
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?
        .flatten_all()?;
    let reference = reference
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?
        .flatten_all()?;
    if out.dims() != reference.dims() {
        candle_core::bail!(
            "rel_err: output has {:?} elements, reference {:?}",
            out.dims(),
            reference.dims()
        );
    }
    let (o, r) = (out.to_vec1::<f32>()?, reference.to_vec1::<f32>()?);
    let (mut diff, mut norm) = (0f64, 0f64);
    for (a, b) in o.iter().zip(&r) {
        diff += (*a as f64 - *b as f64).powi(2);
        norm += (*b as f64).powi(2);
    }
    Ok(if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    })
}

/// `n` standard-normal samples (Box-Muller; seeded so every run checks the same inputs).
pub(crate) fn normal_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random_range(f32::EPSILON..1.0);
            let u2: f32 = rng.random();
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

pub(crate) fn seeded(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A host tensor of normal samples rounded to `dtype`, returned as f32 (the exact values the
/// kernel will see, for the reference) and as `dtype` (for the kernel).
pub(crate) fn random_pair(
    rng: &mut StdRng,
    dims: &[usize],
    dtype: DType,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    let n = dims.iter().product();
    let data: Vec<f32> = normal_vec(rng, n).into_iter().map(|x| x * scale).collect();
    let typed = Tensor::from_vec(data, dims, &Device::Cpu)?.to_dtype(dtype)?;
    Ok((typed.to_dtype(DType::F32)?, typed))
}
