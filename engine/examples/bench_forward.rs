//! Times the forward pass alone: prefill of 128 and 512 tokens, and single-stream decode.
//!
//! `cargo run --release -p metrum-engine --example bench_forward -- [MODEL] [--device cpu|cuda]
//! [--dtype auto|f32|f16|bf16] [--decode N] [--repeat N]`; MODEL is anything `--model` takes
//! (a .gguf, a directory, `synthetic:NAME`); the default is the cached default model.

use std::time::{Duration, Instant};

use candle_core::Device;
use metrum_engine::kv_cache::KvCache;
use metrum_engine::model::{ForwardBatch, LlamaModel, SequenceChunk, resolve_dtype};
use metrum_engine::source::resolve_model;

const BLOCK_SIZE: usize = 16;

struct Args {
    model: Option<String>,
    device: String,
    dtype: String,
    decode: usize,
    repeat: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        model: None,
        device: "cpu".into(),
        dtype: "auto".into(),
        decode: 64,
        repeat: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--device" => args.device = value("--device")?,
            "--dtype" => args.dtype = value("--dtype")?,
            "--decode" => args.decode = value("--decode")?.parse().map_err(|e| format!("{e}"))?,
            "--repeat" => args.repeat = value("--repeat")?.parse().map_err(|e| format!("{e}"))?,
            other if !other.starts_with("--") => args.model = Some(other.to_string()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// Waits for queued device work, so wall time covers the step.
fn sync(device: &Device) -> candle_core::Result<()> {
    device.synchronize()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        other => return Err(format!("unknown device {other}").into()),
    };
    let dtype = resolve_dtype(&args.dtype, &device)?;
    let files = resolve_model(args.model.as_deref())?;
    let started = Instant::now();
    let model = LlamaModel::load(&files, &device, dtype)?;
    let c = model.config();
    println!(
        "model {:?}: {} layers, hidden {}, vocab {}, {:.1}M params; {:?} {dtype:?}; loaded in {:.2?}",
        files,
        c.num_layers,
        c.hidden_size,
        c.vocab_size,
        c.num_parameters() as f64 / 1e6,
        device,
        started.elapsed()
    );
    let max_tokens = 512 + args.decode + 1;
    let blocks = max_tokens.div_ceil(BLOCK_SIZE);
    let mut kv = KvCache::new(model.kv_cache_layout(BLOCK_SIZE), blocks, &device)?;
    // Every other block id, reversed: a scattered table like a busy server's.
    let table: Vec<u32> = (0..blocks as u32).rev().collect();
    let vocab = c.vocab_size.min(256) as u32;
    let prompt: Vec<u32> = (0..512u32).map(|i| (i * 31 + 7) % vocab).collect();
    let step = |tokens: &[u32],
                cached: usize,
                kv: &mut KvCache|
     -> Result<Duration, Box<dyn std::error::Error>> {
        let t0 = Instant::now();
        let chunk = SequenceChunk {
            tokens,
            num_cached: cached,
            block_table: &table,
            compute_logits: true,
        };
        let batch = ForwardBatch::from_chunks(BLOCK_SIZE, &[chunk], &device)?;
        let logits = model.forward(&batch, kv)?;
        sync(&device)?;
        drop(logits);
        Ok(t0.elapsed())
    };
    // Warm-up: first calls allocate and (on CUDA) load kernels.
    step(&prompt[..16], 0, &mut kv)?;
    for len in [128, 512] {
        let mut best = Duration::MAX;
        for _ in 0..args.repeat {
            best = best.min(step(&prompt[..len], 0, &mut kv)?);
        }
        println!(
            "prefill {len:>4} tokens: {:>8.1} ms  ({:.0} tok/s, best of {})",
            best.as_secs_f64() * 1e3,
            len as f64 / best.as_secs_f64(),
            args.repeat
        );
    }
    let context = 128;
    step(&prompt[..context], 0, &mut kv)?;
    let mut total = Duration::ZERO;
    for i in 0..args.decode {
        let token = [prompt[(context + i) % prompt.len()]];
        total += step(&token, context + i, &mut kv)?;
    }
    println!(
        "decode (1 stream, context {context}..{}): {:.2} ms/token, {:.1} tok/s",
        context + args.decode,
        total.as_secs_f64() * 1e3 / args.decode as f64,
        args.decode as f64 / total.as_secs_f64()
    );
    Ok(())
}
