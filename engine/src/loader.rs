//! From an [`EngineConfig`] to a running engine thread: resolve the model, pick the device and
//! dtype, load weights and tokenizer, size the KV cache, configure the scheduler.
//!
//! Loading happens on the engine thread itself, so [`spawn`] returns at once and the HTTP
//! server can answer `/health` with 503 while the model loads.

use crate::chat_template::{ChatTemplate, ChatTemplateError};
use crate::config::{DeviceSpec, EngineConfig, KvCacheSize};
use crate::engine_loop::Engine;
use crate::error::EngineError;
use crate::executor::ModelExecutor;
use crate::handle::{EngineHandle, EngineStatus, ModelInfo, Shared, StatsSnapshot, SubmitError};
use crate::kv_cache::{KvCache, resolve_kv_dtype};
use crate::model::{DecoderModel, ModelError, resolve_dtype};
use crate::source::{ModelFiles, SourceError, resolve_model};
use crate::speculative::SpeculativeMethod;
use crate::speculative::draft_model::{DraftModelProposer, load_draft};
use crate::text::TextCodec;
use crate::tokenizer::{Tokenizer, TokenizerError};
use candle_core::Device;
use metrum_metrics::{MetricsError, MetricsRegistry};
use metrum_scheduler::{ConfigError, DeadlineSlo, Policy, Scheduler, SchedulerConfig};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, RwLock};
use tokio::sync::mpsc;

/// Why an engine could not start or load its model. `Display` is the message users see (the
/// CLI's error, `/health`'s failure, a request's 503); it never shows a `Debug` dump.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Scheduler(#[from] ConfigError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    ChatTemplate(#[from] ChatTemplateError),
    /// The device cannot be opened or sized (no CUDA build, no driver, a GPU-only flag on CPU).
    #[error("{0}")]
    Device(String),
    #[error("the KV cache budget holds no block (one block is {bytes_per_block} bytes)")]
    NoKvBlock { bytes_per_block: usize },
    #[error("--max-model-len {requested} exceeds the model's context length {model_len}")]
    MaxModelLen { requested: usize, model_len: usize },
    /// `--speculative-config` names a draft model that cannot be loaded or cannot draft for
    /// this target; the message names the field. Boxed: an [`EngineError::Load`] holds a
    /// `LoadError` in turn.
    #[error("--speculative-config: `model`: {0}")]
    Speculative(#[source] Box<EngineError>),
    #[error("cannot start the engine thread: {0}")]
    Thread(std::io::Error),
}

/// Starts the engine thread. Fails only on configuration errors found before loading
/// (bad policy name, bad SLO); load failures show up as [`EngineStatus::Failed`].
pub fn spawn(config: EngineConfig) -> Result<EngineHandle, LoadError> {
    let policy: Policy = config.scheduling_policy.parse()?;
    let metrics = MetricsRegistry::new(config.slo)?;
    let shared = Arc::new(Shared {
        status: RwLock::new(EngineStatus::Loading),
        stats: Default::default(),
        info: OnceLock::new(),
        text: OnceLock::new(),
        metrics: Arc::new(metrics),
        next_id: AtomicU64::new(0),
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name("metrum-engine".into())
        .spawn(move || match load(&config, policy, thread_shared.clone()) {
            Ok(engine) => {
                if let Ok(mut s) = thread_shared.status.write() {
                    *s = EngineStatus::Ready;
                }
                engine.run(rx);
                if let Ok(mut s) = thread_shared.status.write() {
                    *s = EngineStatus::Failed("engine stopped".into());
                }
            }
            Err(error) => {
                let message = error.to_string();
                tracing::error!(%message, "model failed to load");
                if let Ok(mut s) = thread_shared.status.write() {
                    *s = EngineStatus::Failed(message.clone());
                }
                // Answer whoever is waiting instead of leaving them hung.
                while let Some(cmd) = rx.blocking_recv() {
                    use crate::engine_loop::Command;
                    if let Command::Add { admitted, .. } | Command::AddAll { admitted, .. } = cmd {
                        let _ = admitted.send(Err(SubmitError::EngineDead(message.clone())));
                    }
                }
            }
        })
        .map_err(LoadError::Thread)?;
    Ok(EngineHandle {
        commands: tx,
        shared,
    })
}

/// Loads everything and returns the engine ready to run. Publishes the model info and the
/// text codec as soon as they exist.
fn load(config: &EngineConfig, policy: Policy, shared: Arc<Shared>) -> Result<Engine, LoadError> {
    if let Some(n) = config.threads
        && !crate::threads::size_cpu_pools(n)
    {
        tracing::warn!(
            threads = n,
            "the CPU kernel pool already runs with another size"
        );
    }
    let files = resolve_model(config.model.as_deref())?;
    let device = match config.device {
        DeviceSpec::Cpu => Device::Cpu,
        DeviceSpec::Cuda(n) => open_cuda(n)?,
    };
    let dtype = resolve_dtype(&config.dtype, &device)?;
    // Checked before the weights load: a KV dtype CUDA cannot run fails at once.
    let kv_dtype = resolve_kv_dtype(config.kv_cache_dtype, dtype, &device)?;
    let started = std::time::Instant::now();
    let model = DecoderModel::load(&files, &device, dtype)?;
    let tokenizer = Tokenizer::from_model_files(&files)?;
    let chat_template = ChatTemplate::from_model_files(&files, &tokenizer)?;
    // Loaded before the KV cache is sized: its weights take memory first, its cache a share.
    let draft = match config.speculative.as_ref().map(|s| &s.method) {
        Some(SpeculativeMethod::DraftModel { model: spec }) => Some(
            load_draft(spec, (&model, &tokenizer), &device, dtype)
                .map_err(|e| LoadError::Speculative(Box::new(e)))?,
        ),
        _ => None,
    };
    let layout = model.kv_cache_layout_in(config.block_size, kv_dtype);
    let draft_layout = draft
        .as_ref()
        .map(|(d, _)| d.kv_cache_layout_in(config.block_size, kv_dtype));
    // The draft's cache gets as many blocks as the target's (a draft token per target token),
    // and the budget is split between them in proportion to their block sizes.
    let bytes_per_token_slot =
        layout.bytes_per_block() + draft_layout.map_or(0, |l| l.bytes_per_block());
    let num_blocks = kv_blocks(&config.kv_cache, bytes_per_token_slot, &device)?;
    let kv = KvCache::new(layout, num_blocks, &device)?;
    let model_len = model
        .config()
        .max_position_embeddings
        .min(model.max_positions());
    let max_model_len = match config.max_model_len {
        Some(requested) if requested > model_len => {
            return Err(LoadError::MaxModelLen {
                requested,
                model_len,
            });
        }
        Some(n) => n,
        None => model_len,
    };
    let slo = &config.slo;
    let sched_config = SchedulerConfig {
        max_num_seqs: config.max_num_seqs,
        max_num_batched_tokens: config.max_num_batched_tokens,
        block_size: config.block_size,
        num_blocks,
        max_model_len,
        enable_prefix_caching: config.enable_prefix_caching,
        policy,
        admission: config.admission,
        slo: DeadlineSlo {
            tbt_slo: slo.tbt_slo(),
            ttft_slack: slo.ttft_slack(),
            // One type (metrum_core::PrefillModel) on both sides: the scheduler ranks by the
            // same prediction the metrics judge by.
            prefill: slo.prefill_model(),
        },
    };
    let scheduler = Scheduler::new(sched_config.clone())?;
    let draft_model = match (draft, draft_layout) {
        (Some((draft, draft_files)), Some(draft_layout)) => {
            let draft_kv = KvCache::new(draft_layout, num_blocks, &device)?;
            let draft_len = draft
                .config()
                .max_position_embeddings
                .min(draft.max_positions());
            let described = serde_json::json!({
                "method": "draft_model",
                "source": describe_source(&draft_files),
                "architecture": draft.config().family().model_type(),
                "parameters": draft.config().num_parameters(),
                "target_parameters": model.config().num_parameters(),
                "kv_cache_bytes": draft_kv.total_bytes(),
            });
            tracing::info!(draft = %described, "draft model loaded for speculative decoding");
            let executor = Box::new(ModelExecutor {
                model: draft,
                kv: draft_kv,
                device: device.clone(),
            });
            Some((
                DraftModelProposer::new(
                    executor,
                    num_blocks,
                    config.block_size,
                    draft_len,
                    config.max_num_batched_tokens,
                ),
                described,
            ))
        }
        _ => None,
    };
    let source = describe_source(&files);
    let info = ModelInfo {
        served_model_name: config
            .served_model_name
            .clone()
            .unwrap_or_else(|| default_served_name(config, &files)),
        source,
        architecture: model.config().family().model_type().into(),
        dtype: lowercase_dtype(dtype),
        device: match config.device {
            DeviceSpec::Cpu => "cpu".into(),
            DeviceSpec::Cuda(n) => format!("cuda:{n}"),
        },
        max_model_len,
        vocab_size: model.config().vocab_size,
        num_kv_blocks: num_blocks,
        block_size: config.block_size,
        scheduler: serde_json::json!({
            "scheduling_policy": policy.as_str(),
            "admission": config.admission.as_str(),
            "max_num_seqs": sched_config.max_num_seqs,
            "max_num_batched_tokens": sched_config.max_num_batched_tokens,
            "block_size": sched_config.block_size,
            "num_kv_blocks": num_blocks,
            "kv_cache_bytes": kv.total_bytes(),
            "kv_cache_dtype": lowercase_dtype(kv_dtype),
            "max_model_len": max_model_len,
            "enable_prefix_caching": sched_config.enable_prefix_caching,
            "max_waiting_requests": config.max_waiting_requests,
            "seed": config.seed,
            "threads": config.threads.unwrap_or_else(rayon::current_num_threads),
            "slo": config.slo,
            "speculative": match &draft_model {
                Some((_, described)) => described.clone(),
                None => serde_json::to_value(&config.speculative).unwrap_or_default(),
            },
        }),
    };
    tracing::info!(
        model = %info.served_model_name, device = %info.device, dtype = %info.dtype,
        kv_cache_dtype = lowercase_dtype(kv_dtype), kv_blocks = num_blocks,
        kv_cache_bytes = kv.total_bytes(), load_s = started.elapsed().as_secs_f64(), "model loaded"
    );
    let _ = shared.info.set(info);
    let codec = Arc::new(TextCodec {
        tokenizer,
        chat_template,
    });
    let _ = shared.text.set(codec.clone());
    let executor = Box::new(ModelExecutor { model, kv, device });
    Ok(Engine::new(
        scheduler,
        executor,
        codec,
        shared,
        config.max_waiting_requests,
        config.seed,
    )
    .with_speculation(config.speculative.clone())
    .with_draft_model(draft_model.map(|(proposer, _)| proposer)))
}

fn lowercase_dtype(dtype: candle_core::DType) -> String {
    format!("{dtype:?}").to_lowercase()
}

fn open_cuda(ordinal: usize) -> Result<Device, LoadError> {
    if !cfg!(feature = "cuda") {
        return Err(LoadError::Device(
            "this metrum was built without CUDA; rebuild with `--features cuda` or use --device cpu"
                .into(),
        ));
    }
    // cudarc can panic instead of erroring when the driver library is missing entirely.
    match std::panic::catch_unwind(|| Device::new_cuda(ordinal)) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(LoadError::Device(format!(
            "cannot open cuda:{ordinal}: {e}"
        ))),
        Err(_) => Err(LoadError::Device(format!(
            "cannot open cuda:{ordinal}: the CUDA driver library could not be loaded"
        ))),
    }
}

/// Number of KV blocks for the configured budget.
fn kv_blocks(
    size: &KvCacheSize,
    bytes_per_block: usize,
    device: &Device,
) -> Result<usize, LoadError> {
    let blocks = match *size {
        KvCacheSize::Blocks(n) => n,
        KvCacheSize::Bytes(b) => (b / bytes_per_block as u64) as usize,
        KvCacheSize::GpuFraction(f) => {
            let (free, total) = gpu_memory(device)?;
            // Weights are already resident: give the KV cache what is left of the fraction.
            let reserved = ((1.0 - f) * total as f64) as u64;
            (free.saturating_sub(reserved) / bytes_per_block as u64) as usize
        }
    };
    if blocks == 0 {
        return Err(LoadError::NoKvBlock { bytes_per_block });
    }
    Ok(blocks)
}

#[cfg(feature = "cuda")]
fn gpu_memory(device: &Device) -> Result<(u64, u64), LoadError> {
    if !device.is_cuda() {
        return Err(LoadError::Device(
            "--gpu-memory-utilization needs --device cuda; use --kv-cache-memory on CPU".into(),
        ));
    }
    fn failed(e: impl std::fmt::Display) -> LoadError {
        LoadError::Device(format!("cannot size the GPU: {e}"))
    }
    device.synchronize().map_err(failed)?;
    let (free, total) =
        candle_core::cuda_backend::cudarc::driver::result::mem_get_info().map_err(failed)?;
    Ok((free as u64, total as u64))
}

#[cfg(not(feature = "cuda"))]
fn gpu_memory(_device: &Device) -> Result<(u64, u64), LoadError> {
    Err(LoadError::Device(
        "--gpu-memory-utilization needs a CUDA build and --device cuda; use --kv-cache-memory on CPU"
            .into(),
    ))
}

fn describe_source(files: &ModelFiles) -> String {
    match files {
        ModelFiles::Gguf { path, .. } => path.display().to_string(),
        ModelFiles::SafetensorsDir { dir, .. } => dir.display().to_string(),
        ModelFiles::Synthetic { name } => format!("synthetic:{name}"),
    }
}

fn default_served_name(config: &EngineConfig, files: &ModelFiles) -> String {
    match (&config.model, files) {
        (None, _) => "SmolLM2-135M-Instruct".into(),
        (Some(spec), _) => spec.clone(),
    }
}

/// Snapshot helper for callers that only need numbers.
pub fn stats(handle: &EngineHandle) -> StatsSnapshot {
    handle.stats()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_policy_is_a_message_not_a_debug_dump() {
        let config = EngineConfig {
            scheduling_policy: "fastest".into(),
            ..EngineConfig::default()
        };
        let err = spawn(config)
            .err()
            .expect("an unknown policy must not start");
        assert!(
            matches!(err, LoadError::Scheduler(ConfigError::UnknownPolicy(_))),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("fastest") && !message.contains("UnknownPolicy"),
            "{message}"
        );
    }

    #[test]
    fn a_load_failure_reaches_the_status_as_its_message() {
        let config = EngineConfig {
            model: Some("synthetic:tiny".into()),
            max_model_len: Some(1 << 30),
            ..EngineConfig::default()
        };
        let engine = spawn(config).expect("the configuration itself is valid");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let failed = loop {
            match engine.status() {
                EngineStatus::Failed(message) => break message,
                EngineStatus::Loading if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => panic!("expected a load failure, got {other:?}"),
            }
        };
        assert!(
            failed.starts_with("--max-model-len 1073741824 exceeds the model's context length"),
            "{failed}"
        );
    }
}
