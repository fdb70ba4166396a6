//! From an [`EngineConfig`] to a running engine thread: resolve the model, pick the device and
//! dtype, load weights and tokenizer, size the KV cache, configure the scheduler.
//!
//! Loading happens on the engine thread itself, so [`spawn`] returns at once and the HTTP
//! server can answer `/health` with 503 while the model loads.

use crate::chat_template::ChatTemplate;
use crate::config::{DeviceSpec, EngineConfig, KvCacheSize};
use crate::engine_loop::Engine;
use crate::executor::ModelExecutor;
use crate::handle::{EngineHandle, EngineStatus, ModelInfo, Shared, StatsSnapshot, SubmitError};
use crate::kv_cache::{KvCache, resolve_kv_dtype};
use crate::model::{DecoderModel, resolve_dtype};
use crate::source::{ModelFiles, resolve_model};
use crate::text::TextCodec;
use crate::tokenizer::Tokenizer;
use candle_core::Device;
use metrum_metrics::MetricsRegistry;
use metrum_scheduler::{DeadlineSlo, Policy, PrefillTimeModel, Scheduler, SchedulerConfig};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, RwLock};
use tokio::sync::mpsc;

/// Starts the engine thread. Fails only on configuration errors found before loading
/// (bad policy name, bad SLO); load failures show up as [`EngineStatus::Failed`].
pub fn spawn(config: EngineConfig) -> Result<EngineHandle, String> {
    let policy: Policy = config
        .scheduling_policy
        .parse()
        .map_err(|e| format!("{e:?}"))?;
    let metrics = MetricsRegistry::new(config.slo).map_err(|e| e.to_string())?;
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
            Err(message) => {
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
        .map_err(|e| format!("cannot start the engine thread: {e}"))?;
    Ok(EngineHandle {
        commands: tx,
        shared,
    })
}

/// Loads everything and returns the engine ready to run. Publishes the model info and the
/// text codec as soon as they exist.
fn load(config: &EngineConfig, policy: Policy, shared: Arc<Shared>) -> Result<Engine, String> {
    if let Some(n) = config.threads {
        // candle's CPU ops run on rayon's global pool, Metrum's quantized matmul on its own.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global();
        if !metrum_kernels::threads::set_global_threads(n) {
            tracing::warn!(
                threads = n,
                "the CPU kernel pool already runs with another size"
            );
        }
    }
    let files = resolve_model(config.model.as_deref()).map_err(|e| e.to_string())?;
    let device = match config.device {
        DeviceSpec::Cpu => Device::Cpu,
        DeviceSpec::Cuda(n) => open_cuda(n)?,
    };
    let dtype = resolve_dtype(&config.dtype, &device).map_err(|e| e.to_string())?;
    // Checked before the weights load: a KV dtype CUDA cannot run fails at once.
    let kv_dtype =
        resolve_kv_dtype(config.kv_cache_dtype, dtype, &device).map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let model = DecoderModel::load(&files, &device, dtype).map_err(|e| e.to_string())?;
    let tokenizer = Tokenizer::from_model_files(&files).map_err(|e| e.to_string())?;
    let chat_template =
        ChatTemplate::from_model_files(&files, &tokenizer).map_err(|e| e.to_string())?;
    let layout = model.kv_cache_layout_in(config.block_size, kv_dtype);
    let num_blocks = kv_blocks(&config.kv_cache, layout.bytes_per_block(), &device)?;
    let kv = KvCache::new(layout, num_blocks, &device).map_err(|e| e.to_string())?;
    let model_len = model
        .config()
        .max_position_embeddings
        .min(model.max_positions());
    let max_model_len = match config.max_model_len {
        Some(n) if n > model_len => {
            return Err(format!(
                "--max-model-len {n} exceeds the model's context length {model_len}"
            ));
        }
        Some(n) => n,
        None => model_len,
    };
    let slo = &config.slo;
    let pm = slo.prefill_model();
    let sched_config = SchedulerConfig {
        max_num_seqs: config.max_num_seqs,
        max_num_batched_tokens: config.max_num_batched_tokens,
        block_size: config.block_size,
        num_blocks,
        max_model_len,
        enable_prefix_caching: config.enable_prefix_caching,
        policy,
        slo: DeadlineSlo {
            tbt_slo: slo.tbt_slo(),
            ttft_slack: slo.ttft_slack(),
            prefill: PrefillTimeModel {
                a_s: pm.a_s,
                b_s_per_token: pm.b_s_per_token,
                c_s_per_token2: pm.c_s_per_token2,
            },
        },
    };
    let scheduler = Scheduler::new(sched_config.clone()).map_err(|e| format!("{e:?}"))?;
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
    .with_speculation(config.speculative.clone()))
}

fn lowercase_dtype(dtype: candle_core::DType) -> String {
    format!("{dtype:?}").to_lowercase()
}

fn open_cuda(ordinal: usize) -> Result<Device, String> {
    if !cfg!(feature = "cuda") {
        return Err("this metrum was built without CUDA; rebuild with `--features cuda` or use --device cpu".into());
    }
    // cudarc can panic instead of erroring when the driver library is missing entirely.
    match std::panic::catch_unwind(|| Device::new_cuda(ordinal)) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(format!("cannot open cuda:{ordinal}: {e}")),
        Err(_) => Err(format!(
            "cannot open cuda:{ordinal}: the CUDA driver library could not be loaded"
        )),
    }
}

/// Number of KV blocks for the configured budget.
fn kv_blocks(size: &KvCacheSize, bytes_per_block: usize, device: &Device) -> Result<usize, String> {
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
        return Err(format!(
            "the KV cache budget holds no block (one block is {bytes_per_block} bytes)"
        ));
    }
    Ok(blocks)
}

#[cfg(feature = "cuda")]
fn gpu_memory(device: &Device) -> Result<(u64, u64), String> {
    if !device.is_cuda() {
        return Err(
            "--gpu-memory-utilization needs --device cuda; use --kv-cache-memory on CPU".into(),
        );
    }
    device.synchronize().map_err(|e| e.to_string())?;
    let (free, total) = candle_core::cuda_backend::cudarc::driver::result::mem_get_info()
        .map_err(|e| e.to_string())?;
    Ok((free as u64, total as u64))
}

#[cfg(not(feature = "cuda"))]
fn gpu_memory(_device: &Device) -> Result<(u64, u64), String> {
    Err("--gpu-memory-utilization needs a CUDA build and --device cuda; use --kv-cache-memory on CPU".into())
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
