//! The two weight kinds a llama layer can hold: GGUF blocks kept quantized (multiplied with
//! `QMatMul`, which quantizes the activations on the fly) and dense f32/f16/bf16 matrices.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};

/// A bias-free projection `y = x W^T` with `W: [out, in]`.
#[derive(Debug)]
pub(crate) enum Linear {
    Quantized(QMatMul),
    Dense(Tensor),
}

impl Linear {
    /// A quantized weight used as is. `QMatMul::from_arc` is bypassed on purpose: it dequantizes
    /// everything to f32 when `CANDLE_DEQUANTIZE_ALL` is set, which would break bf16 activations.
    pub fn quantized(weight: Arc<QTensor>) -> Linear {
        Linear::Quantized(QMatMul::QTensor(weight))
    }

    /// `x: [T, in]` to `[T, out]` in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Quantized(w) => w.forward(x),
            Linear::Dense(w) => x.matmul(&w.t()?),
        }
    }
}

/// Token embeddings. A quantized table dequantizes only the looked-up rows, so the GGUF's
/// tied output head and the embedding share one copy of the weights.
#[derive(Debug)]
pub(crate) enum Embedding {
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Embedding {
    /// `ids: u32 [T]` to `[T, hidden]` in `dtype`.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        match self {
            Embedding::Quantized(table) => table.embedding(ids)?.to_dtype(dtype),
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
