//! Engine configuration: every knob that decides what runs and how, recorded verbatim in
//! /version and in benchmark results so a run can be reproduced.

use serde::Serialize;

/// Where the forward pass runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(format!(
                    "unknown device '{s}': expected cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

/// How much memory the paged KV cache gets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum KvCacheSize {
    /// Exactly this many blocks (`--num-kv-blocks`).
    Blocks(usize),
    /// This many bytes of KV cache (`--kv-cache-memory`, CPU).
    Bytes(u64),
    /// This fraction of the GPU's total memory for weights + activations + KV (`--gpu-memory-utilization`).
    GpuFraction(f64),
}

/// What the paged KV cache stores (`--kv-cache-dtype`), apart from the activations' dtype.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvCacheDtype {
    /// The activation dtype, as vLLM's `auto` (exact: what the references compare against).
    /// Not f16 on CPU although it is faster there: see `F16`.
    #[default]
    Auto,
    F32,
    /// Half the bytes per cached token (llama.cpp's default): +24% single-stream decode at 2k
    /// context on the default model, but its greedy continuations part from the f32 cache's
    /// after a few tokens on most prompts (engine/tests/kv_cache_f16_agreement.rs); so opt-in.
    F16,
}

impl std::str::FromStr for KvCacheDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(KvCacheDtype::Auto),
            "f32" | "float32" => Ok(KvCacheDtype::F32),
            "f16" | "float16" | "half" => Ok(KvCacheDtype::F16),
            _ => Err(format!(
                "unknown KV cache dtype '{s}': expected auto, f32 or f16"
            )),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct EngineConfig {
    /// `--model`: path, directory, hub id, `synthetic:NAME`; `None` = the default model.
    pub model: Option<String>,
    pub served_model_name: Option<String>,
    pub device: DeviceSpec,
    /// `auto`, `f32`, `f16`, `bf16`. `auto` = f32 on CPU, bf16 on CUDA.
    pub dtype: String,
    /// `--kv-cache-dtype`: what the KV cache stores; `auto` = the activation `dtype`.
    pub kv_cache_dtype: KvCacheDtype,
    /// `--max-model-len`; `None` = the model's own context length.
    pub max_model_len: Option<usize>,
    pub block_size: usize,
    pub kv_cache: KvCacheSize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub max_waiting_requests: usize,
    pub enable_prefix_caching: bool,
    /// `fcfs`, `priority`, `deadline` or `deadline-srpt`.
    pub scheduling_policy: String,
    /// Admission control: refuse (or queue best-effort) requests predicted to miss their
    /// first-token deadline (`--admission`). Needs a prefill model (`--slo-file`).
    #[serde(serialize_with = "serialize_admission")]
    pub admission: metrum_scheduler::Admission,
    /// Seed for requests that bring none (so a whole run is reproducible).
    pub seed: u64,
    /// CPU threads for the forward pass; `None` = all cores.
    pub threads: Option<usize>,
    pub slo: metrum_metrics::SloConfig,
    /// `--speculative-config`, validated; `None` = no speculative decoding.
    pub speculative: Option<crate::speculative::SpeculativeConfig>,
}

/// As its `--admission` spelling (the scheduler crate has no serde).
fn serialize_admission<S: serde::Serializer>(
    admission: &metrum_scheduler::Admission,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(admission.as_str())
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            model: None,
            served_model_name: None,
            device: DeviceSpec::Cpu,
            dtype: "auto".into(),
            kv_cache_dtype: KvCacheDtype::Auto,
            max_model_len: None,
            block_size: 16,
            kv_cache: KvCacheSize::Bytes(1 << 30),
            max_num_seqs: 64,
            max_num_batched_tokens: 512,
            max_waiting_requests: 1024,
            enable_prefix_caching: true,
            scheduling_policy: "fcfs".into(),
            admission: metrum_scheduler::Admission::Off,
            seed: 0,
            threads: None,
            slo: metrum_metrics::SloConfig::default(),
            speculative: None,
        }
    }
}
