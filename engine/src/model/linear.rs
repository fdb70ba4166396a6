//! The weight kinds a llama layer can hold: GGUF blocks kept quantized and dense
//! f32/f16/bf16 matrices. On the CPU, quantized blocks go through Metrum's own kernels
//! ([`metrum_kernels::quant`]: SIMD, threaded, batched); on GPUs through candle's `QMatMul`.
//! Both quantize the activations on the fly.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, ggml_file};
use candle_core::{CpuStorage, DType, Device, Module, Result, Storage, Tensor};
use metrum_kernels::quant::{QuantMatrix, QuantType};

/// A bias-free projection `y = x W^T` with `W: [out, in]`.
#[derive(Debug)]
pub(crate) enum Linear {
    /// Quantized weights on a GPU (candle's kernels).
    Quantized(QMatMul),
    /// Quantized weights on the CPU (Metrum's kernels).
    CpuQuantized(Arc<QuantMatrix>),
    Dense(Tensor),
}

/// The formats Metrum's CPU kernels multiply directly.
pub(crate) fn cpu_quant_type(dtype: GgmlDType) -> Option<QuantType> {
    Some(match dtype {
        GgmlDType::Q4_0 => QuantType::Q4_0,
        GgmlDType::Q4_1 => QuantType::Q4_1,
        GgmlDType::Q8_0 => QuantType::Q8_0,
        GgmlDType::Q4K => QuantType::Q4K,
        GgmlDType::Q5K => QuantType::Q5K,
        GgmlDType::Q6K => QuantType::Q6K,
        _ => return None,
    })
}

/// A `[rows, cols]` GGUF tensor's raw blocks as a projection on `device`: Metrum's CPU kernels
/// where they support the format, candle's `QMatMul` otherwise, dense for f32/f16/bf16.
pub(crate) fn linear_from_ggml(
    ggml: GgmlDType,
    data: &[u8],
    rows: usize,
    cols: usize,
    device: &Device,
    dtype: DType,
) -> Result<Linear> {
    if device.is_cpu()
        && let Some(ty) = cpu_quant_type(ggml)
    {
        let matrix = QuantMatrix::from_ggml(ty, rows, cols, data)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        return Ok(Linear::CpuQuantized(Arc::new(matrix)));
    }
    let q = ggml_file::qtensor_from_ggml(ggml, data, vec![rows, cols], device)?;
    Ok(match q.dtype() {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
            Linear::Dense(q.dequantize(device)?.to_dtype(dtype)?)
        }
        _ => Linear::quantized(Arc::new(q)),
    })
}

/// `x · Wᵀ` through Metrum's CPU kernels; `x: [T, in]` of any float dtype, result in `x`'s.
fn cpu_quantized_forward(w: &QuantMatrix, x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let (tokens, cols) = x.dims2()?;
    if cols != w.cols() {
        candle_core::bail!(
            "a {}x{} matrix times {tokens}x{cols} inputs",
            w.rows(),
            w.cols()
        );
    }
    let mut out = vec![0f32; tokens * w.rows()];
    {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
            candle_core::bail!("Metrum's quantized CPU matmul needs f32 inputs on the CPU");
        };
        let start = layout.start_offset();
        let input = &data[start..start + tokens * cols];
        w.matmul(input, tokens, &mut out)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    }
    Tensor::from_vec(out, (tokens, w.rows()), x.device())?.to_dtype(dtype)
}

impl Linear {
    /// A quantized weight used as is. `QMatMul::from_arc` is bypassed on purpose: it dequantizes
    /// everything to f32 when `CANDLE_DEQUANTIZE_ALL` is set, which would break bf16 activations.
    pub fn quantized(weight: Arc<QTensor>) -> Linear {
        Linear::Quantized(QMatMul::QTensor(weight))
    }

    /// The weight matrix `[out, in]` when it is dense (f32/f16/bf16).
    pub fn as_dense(&self) -> Option<&Tensor> {
        match self {
            Linear::Dense(w) => Some(w),
            _ => None,
        }
    }

    /// `x: [T, in]` to `[T, out]` in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Quantized(w) => w.forward(x),
            Linear::CpuQuantized(w) => cpu_quantized_forward(w, x),
            Linear::Dense(w) => x.matmul(&w.t()?),
        }
    }
}

/// Token embeddings. A quantized table dequantizes only the looked-up rows, so the GGUF's
/// tied output head and the embedding share one copy of the weights.
#[derive(Debug)]
pub(crate) enum Embedding {
    Quantized(Arc<QTensor>),
    /// Shares its matrix with a tied [`Linear::CpuQuantized`] output head.
    CpuQuantized(Arc<QuantMatrix>),
    Dense(Tensor),
}

impl Embedding {
    /// `ids: u32 [T]` to `[T, hidden]` in `dtype`.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        match self {
            Embedding::Quantized(table) => table.embedding(ids)?.to_dtype(dtype),
            Embedding::CpuQuantized(table) => {
                let device = ids.device().clone();
                let ids = ids.to_vec1::<u32>()?;
                let width = table.cols();
                let mut out = vec![0f32; ids.len() * width];
                for (row, &id) in out.chunks_exact_mut(width).zip(&ids) {
                    table
                        .dequantize_row(id as usize, row)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                }
                Tensor::from_vec(out, (ids.len(), width), &device)?.to_dtype(dtype)
            }
            Embedding::Dense(table) => table.index_select(ids, 0)?.to_dtype(dtype),
        }
    }
}

/// `N` projections of one input (q/k/v, or gate/up), stacked into as few matmuls as their
/// weights allow: dense and same-type quantized weights are stacked along the output dim at
/// load time, so the activations are read (and, for GGUF, quantized) once instead of `N` times.
#[derive(Debug)]
pub(crate) struct SplitLinear<const N: usize> {
    /// Each group: one matmul and the output widths it splits into, in order.
    groups: Vec<(Linear, Vec<usize>)>,
}

impl<const N: usize> SplitLinear<N> {
    pub fn new(groups: Vec<(Linear, Vec<usize>)>) -> Result<Self> {
        let outputs: usize = groups.iter().map(|(_, widths)| widths.len()).sum();
        if outputs != N {
            candle_core::bail!("split projection yields {outputs} outputs, expected {N}");
        }
        Ok(SplitLinear { groups })
    }

    /// The one dense matrix all `N` outputs are stacked in, when there is exactly one.
    pub fn as_single_dense(&self) -> Option<&Tensor> {
        match self.groups.as_slice() {
            [(linear, _)] => linear.as_dense(),
            _ => None,
        }
    }

    /// `x: [T, in]` to the `N` outputs `[T, width_i]`.
    pub fn forward(&self, x: &Tensor) -> Result<[Tensor; N]> {
        let mut out = Vec::with_capacity(N);
        for (linear, widths) in &self.groups {
            let y = linear.forward(x)?;
            if let [_] = widths.as_slice() {
                out.push(y);
                continue;
            }
            let mut start = 0;
            for &width in widths {
                out.push(y.narrow(1, start, width)?);
                start += width;
            }
        }
        out.try_into()
            .map_err(|_| candle_core::Error::Msg("split projection output count".into()))
    }
}
