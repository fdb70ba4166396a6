//! `act(gate) * up`, the gated MLP activation: SiLU for llama-style models, tanh-approximated
//! GELU (GeGLU) for Gemma.
//!
//! f32 (what the engine runs on CPU) takes the fast path: the vectorizable `exp` of
//! [`crate::vmath`], compiled for AVX-512 when the CPU has it, split over the thread pool for
//! prefill-sized inputs (a 512-token prefill of the default model is 786k activations per
//! layer). f16/bf16 keep the readable widening loop. The activation is a const generic
//! (`GELU`), so each one compiles to its own branch-free loop.

use super::{contiguous, map_float};
use crate::quant::Isa;
use crate::vmath;
use candle_core::{CpuStorage, Layout, Result, WithDType, bail};

/// Below this many elements one thread does it all: forking costs more than it saves.
const PARALLEL_MIN: usize = 1 << 15;

/// The gate activation: SiLU, or GELU with the tanh approximation when `GELU`.
#[inline(always)]
fn act<const GELU: bool>(g: f32) -> f32 {
    if GELU {
        vmath::gelu_tanh(g)
    } else {
        vmath::silu(g)
    }
}

fn gated_rows<const GELU: bool, T: WithDType>(gate: &[T], up: &[T]) -> Vec<T> {
    gate.iter()
        .zip(up)
        .map(|(g, u)| {
            let g = g.to_f64() as f32;
            T::from_f64((act::<GELU>(g) * u.to_f64() as f32) as f64)
        })
        .collect()
}

fn gated_f32<const GELU: bool>(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; gate.len()];
    let isa = Isa::detect();
    let pool = crate::threads::global();
    let chunks = if gate.len() >= PARALLEL_MIN {
        pool.threads()
    } else {
        1
    };
    let dst = OutPtr(out.as_mut_ptr());
    let job = |i: usize| {
        let range = crate::threads::split_range(gate.len(), i, chunks, 64);
        // SAFETY: the ranges of different chunks are disjoint parts of `out`.
        let out = unsafe { std::slice::from_raw_parts_mut(dst.at(range.start), range.len()) };
        gated_dispatch::<GELU>(isa, &gate[range.clone()], &up[range], out);
    };
    if chunks == 1 {
        job(0);
    } else {
        pool.run(chunks, &job);
    }
    out
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, so closures capture the whole (Sync) wrapper rather than its raw field.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

fn gated_dispatch<const GELU: bool>(isa: Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: the CPU has AVX-512 F/VL (Isa::detect checked).
        return unsafe { gated_avx512::<GELU>(gate, up, out) };
    } else if isa == Isa::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { gated_avx2::<GELU>(gate, up, out) };
    }
    let _ = isa;
    gated_into::<GELU>(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn gated_avx512<const GELU: bool>(gate: &[f32], up: &[f32], out: &mut [f32]) {
    gated_into::<GELU>(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gated_avx2<const GELU: bool>(gate: &[f32], up: &[f32], out: &mut [f32]) {
    gated_into::<GELU>(gate, up, out)
}

#[inline(always)]
fn gated_into<const GELU: bool>(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = act::<GELU>(g) * u;
    }
}

fn gated<const GELU: bool>(
    name: &'static str,
    gate: &CpuStorage,
    gl: &Layout,
    up: &CpuStorage,
    ul: &Layout,
) -> Result<CpuStorage> {
    if gl.shape() != ul.shape() {
        bail!(
            "{name}: gate {:?} and up {:?} differ",
            gl.shape(),
            ul.shape()
        );
    }
    if let (CpuStorage::F32(g), CpuStorage::F32(u)) = (gate, up) {
        return Ok(CpuStorage::F32(gated_f32::<GELU>(
            contiguous(g, gl, "gate")?,
            contiguous(u, ul, "up")?,
        )));
    }
    map_float!(
        "gated activation",
        (gate, up),
        |g, u| gated_rows::<GELU, _>(contiguous(g, gl, "gate")?, contiguous(u, ul, "up")?)
    )
}

/// `silu(gate) * up`.
pub(crate) fn silu_mul(
    gate: &CpuStorage,
    gl: &Layout,
    up: &CpuStorage,
    ul: &Layout,
) -> Result<CpuStorage> {
    gated::<false>("silu_mul", gate, gl, up, ul)
}

/// `gelu_tanh(gate) * up` (Gemma's GeGLU).
pub(crate) fn gelu_tanh_mul(
    gate: &CpuStorage,
    gl: &Layout,
    up: &CpuStorage,
    ul: &Layout,
) -> Result<CpuStorage> {
    gated::<true>("gelu_tanh_mul", gate, gl, up, ul)
}
