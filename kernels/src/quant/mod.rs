//! Quantized matrix multiplication on the CPU: `y = x Wᵀ` with `W` kept in its GGUF block
//! format and `x` quantized to bytes on the fly, the way llama.cpp does it, with Metrum's own
//! kernels.
//!
//! | file | what lives there |
//! | --- | --- |
//! | `formats` | [`QuantType`], the ggml block layouts and their repacking for the kernels |
//! | `activations` | per-32 byte quantization of the activations (ggml's Q8_1) |
//! | `scalar` | the reference dot products, one per format; also the fallback |
//! | `avx512` | the AVX-512 tile over the per-row layout: one weight row × up to 4 activation rows |
//! | `block_groups`, `avx2` | the AVX2 layout (each row's blocks in groups of 8, one block per 32-bit lane) and its tile: up to 2 weight rows × up to 4 activation rows |
//! | `interleaved`, `avx512_x16` | the AVX-512 layout (16 rows interleaved per 32-bit lane) and its kernel: 16 rows × up to 4 activation rows |
//! | `kquant`, `avx512_k` | the k-quants: Q8_K activations' reference dot products, the 16-row interleaved super-blocks and their AVX-512 VNNI kernels (Q4_K, Q5_K, Q6_K) |
//! | `avx2_k` | the k-quants' AVX2 kernels: Q4_K over the grouped layout of `block_groups`, Q5_K and Q6_K over ggml's own per-row layout |
//! | `gemm` | the threaded driver: rows split across threads, tokens tiled by 4 |
//!
//! The ISA is chosen at run time ([`Isa::detect`]), so one binary is fast where it runs and
//! correct on any x86-64 (and, through the scalar path, anywhere else). `METRUM_CPU_ISA=scalar
//! |avx2|avx512` forces a path, for comparisons.

mod activations;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_k;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_k;
#[cfg(target_arch = "x86_64")]
mod avx512_x16;
mod block_groups;
mod formats;
mod gemm;
mod interleaved;
mod kquant;
mod scalar;

pub use formats::QuantType;

use std::sync::OnceLock;

use formats::{Packed, SuperBlock, f16_to_f32, nibble_scale_min};

/// The instruction set the quantized kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL + VNNI.
    Avx512Vnni,
}

impl Isa {
    /// The best ISA this CPU supports, unless `METRUM_CPU_ISA` asks for a lesser one.
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = Isa::best_supported();
            match std::env::var("METRUM_CPU_ISA").ok().as_deref() {
                Some("scalar") => Isa::Scalar,
                Some("avx2") if best != Isa::Scalar => Isa::Avx2,
                _ => best,
            }
        })
    }

    fn best_supported() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("f16c");
            if avx512 {
                return Isa::Avx512Vnni;
            }
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Every ISA this CPU can run, scalar first (for tests that compare them).
    pub fn supported() -> Vec<Isa> {
        let best = Isa::best_supported();
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
            .into_iter()
            .filter(|isa| match isa {
                Isa::Scalar => true,
                Isa::Avx2 => best != Isa::Scalar,
                Isa::Avx512Vnni => best == Isa::Avx512Vnni,
            })
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// Why a quantized matrix could not be built or applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantError(pub String);

impl std::fmt::Display for QuantError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QuantError {}

/// A `[rows, cols]` weight matrix in a GGUF quantized format, ready for [`QuantMatrix::matmul`].
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    ty: QuantType,
    rows: usize,
    cols: usize,
    /// The ISA the layout was packed for and the kernels that run on it.
    isa: Isa,
    packed: Packed,
}

impl QuantMatrix {
    /// From the tensor's bytes as stored in a GGUF file (ggml blocks, row-major), laid out
    /// for this CPU's best ISA ([`Isa::detect`]).
    pub fn from_ggml(
        ty: QuantType,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<QuantMatrix, QuantError> {
        QuantMatrix::from_ggml_for(Isa::detect(), ty, rows, cols, data)
    }

    /// [`QuantMatrix::from_ggml`] laid out for, and multiplied with, `isa` (one this CPU
    /// supports; tests compare them).
    pub fn from_ggml_for(
        isa: Isa,
        ty: QuantType,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<QuantMatrix, QuantError> {
        if !Isa::supported().contains(&isa) {
            return Err(QuantError(format!("this CPU cannot run {}", isa.name())));
        }
        if cols == 0 || !cols.is_multiple_of(ty.block_values()) {
            return Err(QuantError(format!(
                "{} rows must be whole blocks of {} values, got {cols} columns",
                ty.name(),
                ty.block_values()
            )));
        }
        let expected = rows * cols / ty.block_values() * ty.block_bytes();
        if data.len() != expected {
            return Err(QuantError(format!(
                "a {rows}x{cols} {} matrix takes {expected} bytes, got {}",
                ty.name(),
                data.len()
            )));
        }
        let mut packed = formats::pack(ty, data);
        packed = match isa {
            Isa::Avx512Vnni => match packed {
                Packed::Super { kind, data } => Packed::SuperX16 {
                    kind,
                    data: kquant::interleave(kind, &data, rows, cols / 256),
                },
                other => interleaved::interleave(other, rows, cols),
            },
            Isa::Avx2 => match packed {
                Packed::Super {
                    kind: formats::KQuant::Q4,
                    mut data,
                } => {
                    block_groups::group_q4k(&mut data);
                    Packed::Q4KG8 { data }
                }
                other => block_groups::group(other, rows, cols),
            },
            Isa::Scalar => packed,
        };
        Ok(QuantMatrix {
            ty,
            rows,
            cols,
            isa,
            packed,
        })
    }

    pub fn quant_type(&self) -> QuantType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The ISA this matrix's kernels use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `out[t, r] = Σ_k x[t, k] · W[r, k]` for `x: [tokens, cols]`, `out: [tokens, rows]`,
    /// on the [`crate::threads::global`] pool.
    pub fn matmul(&self, x: &[f32], tokens: usize, out: &mut [f32]) -> Result<(), QuantError> {
        self.matmul_on(crate::threads::global(), x, tokens, out)
    }

    /// [`QuantMatrix::matmul`] on another pool.
    pub fn matmul_on(
        &self,
        pool: &crate::threads::ThreadPool,
        x: &[f32],
        tokens: usize,
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        if x.len() != tokens * self.cols || out.len() != tokens * self.rows {
            return Err(QuantError(format!(
                "matmul of a {}x{} matrix with {tokens} tokens needs {} inputs and {} outputs, got {} and {}",
                self.rows,
                self.cols,
                tokens * self.cols,
                tokens * self.rows,
                x.len(),
                out.len()
            )));
        }
        gemm::matmul(self, pool, x, tokens, out);
        Ok(())
    }

    /// Row `r` dequantized to f32 (embedding lookups; the tests' reference).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), QuantError> {
        if r >= self.rows || out.len() != self.cols {
            return Err(QuantError(format!(
                "row {r} of {} into {} values (a row has {})",
                self.rows,
                out.len(),
                self.cols
            )));
        }
        let nb = self.cols / 32;
        match &self.packed {
            Packed::Nibbles { scales, mins, qs } => {
                for b in 0..nb {
                    let i = r * nb + b;
                    let (d, m) = nibble_scale_min(scales, mins.as_deref(), i);
                    for j in 0..16 {
                        let byte = qs[i * 16 + j];
                        out[b * 32 + j] = d * (byte & 0xF) as f32 + m;
                        out[b * 32 + j + 16] = d * (byte >> 4) as f32 + m;
                    }
                }
            }
            Packed::Bytes { scales, qs } => {
                for b in 0..nb {
                    let d = f16_to_f32(scales[r * nb + b]);
                    for j in 0..32 {
                        out[b * 32 + j] = d * qs[(r * nb + b) * 32 + j] as f32;
                    }
                }
            }
            Packed::NibblesX16 { .. } | Packed::BytesX16 { .. } => {
                interleaved::dequantize_row(&self.packed, r, out)
            }
            Packed::NibblesG8 { .. } | Packed::BytesG8 { .. } => {
                block_groups::dequantize_row(&self.packed, r, out)
            }
            Packed::SuperX16 { kind, data } => {
                kquant::dequantize_row_x16(*kind, data, self.cols / 256, r, out)
            }
            Packed::Q4KG8 { data } => {
                let bb = self.ty.block_bytes();
                let row = &data[r * self.cols / 256 * bb..][..self.cols / 256 * bb];
                for (s, bytes) in row.chunks_exact(bb).enumerate() {
                    let ggml = block_groups::ungroup_q4k(bytes);
                    let sb = SuperBlock::decode(formats::KQuant::Q4, &ggml);
                    for i in 0..256 {
                        out[s * 256 + i] = sb.value(i);
                    }
                }
            }
            Packed::Super { kind, data } => {
                let bb = self.ty.block_bytes();
                let row_bytes = self.cols / 256 * bb;
                let row = &data[r * row_bytes..(r + 1) * row_bytes];
                for (s, bytes) in row.chunks_exact(bb).enumerate() {
                    let sb = SuperBlock::decode(*kind, bytes);
                    for i in 0..256 {
                        out[s * 256 + i] = sb.value(i);
                    }
                }
            }
        }
        Ok(())
    }
}
