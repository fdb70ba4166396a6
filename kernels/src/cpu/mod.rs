//! CPU reference kernels: readable f32 math over candle's CPU storage. They are the oracle the
//! CUDA kernels are tested against, so clarity beats speed here; f16/bf16 inputs are widened to
//! f32 for the math and narrowed once on output.

mod paged_attention;

pub(crate) use paged_attention::{paged_attention, reshape_and_cache};
