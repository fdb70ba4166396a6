//! Diagnostics that prove a device path: every kernel against its CPU reference, whole-model
//! logits against the CPU and against an outside reference, and step timings against the
//! hardware's limits. `metrum gpu-check` and `metrum logits` call these; they are ordinary
//! library code so tests can run them on CPU.

pub mod kernels;
mod logits;
mod speed;

pub use logits::{GreedyTrace, compare_devices, greedy_trace};
pub use speed::{
    DecodeStepRow, MoeStepBytes, PrefillRow, decode_step_time, gemm_tflops, moe_step_bytes,
    prefill_throughput,
};
