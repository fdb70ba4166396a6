//! Times the forward pass alone: prefill of 128 and 512 tokens, and single-stream decode.
//!
//! `cargo run --release -p metrum-engine --example bench_forward -- [MODEL] [--device cpu|cuda]
//! [--dtype auto|f32|f16|bf16] [--decode N] [--repeat N] [--threads N] [--prefill on|off]
//! [--batch N] [--kv-cache-dtype auto|f32|f16] [--context N] [--verify K]`; MODEL is anything
//! `--model` takes (a .gguf, a directory, `synthetic:NAME`); the default is the cached
//! default model.
//! The single-stream decode runs from `--context` tokens (default 128) on, after one timed
//! prefill of them in a single chunk; `--kv-cache-dtype`
//! picks what the KV cache stores as `metrum serve` does (auto: the activation dtype).
//! `--batch N` also times decode steps of N sequences at context 320 (the middle of the
//! 16-stream benchmark's 256 + 128), the step that 16 concurrent streams repeat.
//! `--verify K` times speculative decoding's verification step (1 + K tokens, a logits row
//! each) against the decode step: their ratio is the break-even acceptance length.
//! `--compare-cpu` first runs one mixed batch (chunked prefills and decodes) on the device and
//! on the CPU in f32 and prints how far the logits are apart (not for synthetic models on a
//! GPU, whose random weights come from the device's generator).

use std::time::{Duration, Instant};

use candle_core::Device;
use metrum_engine::config::KvCacheDtype;
use metrum_engine::kv_cache::{KvCache, resolve_kv_dtype};
use metrum_engine::model::{DecoderModel, ForwardBatch, SequenceChunk, resolve_dtype};
use metrum_engine::source::resolve_model;

const BLOCK_SIZE: usize = 16;

struct Args {
    model: Option<String>,
    device: String,
    dtype: String,
    decode: usize,
    repeat: usize,
    compare_cpu: bool,
    prefill: bool,
    batch: usize,
    kv_cache_dtype: KvCacheDtype,
    context: usize,
    /// `K` of a speculative verification step to time (0 = none).
    verify: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        model: None,
        device: "cpu".into(),
        dtype: "auto".into(),
        decode: 64,
        repeat: 3,
        compare_cpu: false,
        prefill: true,
        batch: 0,
        kv_cache_dtype: KvCacheDtype::Auto,
        context: 128,
        verify: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--device" => args.device = value("--device")?,
            "--dtype" => args.dtype = value("--dtype")?,
            "--decode" => args.decode = value("--decode")?.parse().map_err(|e| format!("{e}"))?,
            "--compare-cpu" => args.compare_cpu = true,
            "--threads" => {
                let n: usize = value("--threads")?.parse().map_err(|e| format!("{e}"))?;
                metrum_kernels::threads::set_global_threads(n);
                let _ = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build_global();
            }
            "--batch" => args.batch = value("--batch")?.parse().map_err(|e| format!("{e}"))?,
            "--prefill" => args.prefill = value("--prefill")? == "on",
            "--kv-cache-dtype" => args.kv_cache_dtype = value("--kv-cache-dtype")?.parse()?,
            "--context" => {
                args.context = value("--context")?.parse().map_err(|e| format!("{e}"))?
            }
            "--verify" => args.verify = value("--verify")?.parse().map_err(|e| format!("{e}"))?,
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
    let model = DecoderModel::load(&files, &device, dtype)?;
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
    if args.compare_cpu && !device.is_cpu() {
        compare_with_cpu(&model, &files)?;
    }
    let kv_dtype = resolve_kv_dtype(args.kv_cache_dtype, dtype, &device)?;
    let layout = model.kv_cache_layout_in(BLOCK_SIZE, kv_dtype);
    println!(
        "KV cache {kv_dtype:?}: {} bytes per {BLOCK_SIZE}-token block, {} blocks per GiB",
        layout.bytes_per_block(),
        layout.blocks_for_bytes(1 << 30)
    );
    let prompt_len = args.context.max(512);
    let max_tokens = prompt_len + args.decode + args.verify + 1;
    let blocks = max_tokens.div_ceil(BLOCK_SIZE);
    let mut kv = KvCache::new(layout, blocks, &device)?;
    // Every other block id, reversed: a scattered table like a busy server's.
    let table: Vec<u32> = (0..blocks as u32).rev().collect();
    let vocab = c.vocab_size.min(256) as u32;
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 31 + 7) % vocab)
        .collect();
    // `num_logits`: 1 for prefill and decode; K + 1 for a verification step, which needs a
    // logits row per draft position (the LM head's share of its cost).
    let step_with = |tokens: &[u32],
                     cached: usize,
                     num_logits: usize,
                     kv: &mut KvCache|
     -> Result<Duration, Box<dyn std::error::Error>> {
        let t0 = Instant::now();
        let chunk = SequenceChunk {
            tokens,
            num_cached: cached,
            block_table: &table,
            num_logits,
        };
        let batch = ForwardBatch::from_chunks(BLOCK_SIZE, &[chunk], &device)?;
        let logits = model.forward(&batch, kv)?;
        sync(&device)?;
        drop(logits);
        Ok(t0.elapsed())
    };
    let step = |tokens: &[u32], cached: usize, kv: &mut KvCache| step_with(tokens, cached, 1, kv);
    // Warm-up: first calls allocate and (on CUDA) load kernels.
    step(&prompt[..16], 0, &mut kv)?;
    let lens: &[usize] = if args.prefill { &[128, 512] } else { &[] };
    for &len in lens {
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
    let context = args.context;
    let context_prefill = step(&prompt[..context], 0, &mut kv)?;
    println!(
        "prefill of the context ({context} tokens, one chunk, once): {:.1} ms ({:.0} tok/s)",
        context_prefill.as_secs_f64() * 1e3,
        context as f64 / context_prefill.as_secs_f64()
    );
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
    if args.verify > 0 {
        // Speculative decoding's verification step: the last token and K drafts as one chunk
        // over the same contexts as the decode above (the KV written there is overwritten).
        // It pays for itself when a step delivers more than `t_verify / t_decode` tokens on
        // average (accepted drafts + 1): that ratio is the break-even acceptance length.
        let k = args.verify;
        let mut verify_total = Duration::ZERO;
        for i in 0..args.decode {
            let start = (context + i) % (prompt.len() - k);
            verify_total += step_with(&prompt[start..start + k + 1], context + i, k + 1, &mut kv)?;
        }
        let t_decode = total.as_secs_f64() / args.decode as f64;
        let t_verify = verify_total.as_secs_f64() / args.decode as f64;
        println!(
            "verify (1 stream, K = {k}, {} rows, context {context}..{}): {:.2} ms/step = {:.2}x a \
             decode step; break-even acceptance length {:.2} tokens/step (of at most {})",
            k + 1,
            context + args.decode,
            t_verify * 1e3,
            t_verify / t_decode,
            t_verify / t_decode,
            k + 1
        );
    }
    if args.batch > 0 {
        batched_decode(&model, &prompt, args.batch, args.decode, layout)?;
    }
    Ok(())
}

/// Decode steps of `n` sequences that each hold 320 tokens of context; block tables interleave
/// the sequences' blocks, as a server's free list does after a while.
fn batched_decode(
    model: &DecoderModel,
    prompt: &[u32],
    n: usize,
    steps: usize,
    layout: metrum_engine::kv_cache::KvCacheLayout,
) -> Result<(), Box<dyn std::error::Error>> {
    let device = model.device();
    let context = 320;
    let per_seq = (context + steps + 1).div_ceil(BLOCK_SIZE);
    let mut kv = KvCache::new(layout, n * per_seq, device)?;
    let tables: Vec<Vec<u32>> = (0..n)
        .map(|s| (0..per_seq).map(|b| (b * n + s) as u32).collect())
        .collect();
    let run = |chunks: &[SequenceChunk],
               kv: &mut KvCache|
     -> Result<Duration, Box<dyn std::error::Error>> {
        let t0 = Instant::now();
        let batch = ForwardBatch::from_chunks(BLOCK_SIZE, chunks, device)?;
        drop(model.forward(&batch, kv)?);
        sync(device)?;
        Ok(t0.elapsed())
    };
    for table in &tables {
        let chunk = SequenceChunk {
            tokens: &prompt[..context],
            num_cached: 0,
            block_table: table,
            num_logits: 1,
        };
        run(&[chunk], &mut kv)?;
    }
    let mut total = Duration::ZERO;
    for i in 0..steps {
        let chunks: Vec<SequenceChunk> = tables
            .iter()
            .enumerate()
            .map(|(s, table)| SequenceChunk {
                tokens: &prompt[(context + i + s) % prompt.len()..][..1],
                num_cached: context + i,
                block_table: table,
                num_logits: 1,
            })
            .collect();
        total += run(&chunks, &mut kv)?;
    }
    let per_step = total.as_secs_f64() / steps as f64;
    println!(
        "decode ({n} streams, context {context}..{}): {:.2} ms/step, {:.1} tok/s aggregate",
        context + steps,
        per_step * 1e3,
        n as f64 / per_step
    );
    Ok(())
}

/// Logits of a two-step mixed batch: three prompts (one split 7 + 13), then a decode each.
fn mixed_batch_logits(model: &DecoderModel) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error>> {
    let device = model.device();
    let mut kv = KvCache::new(model.kv_cache_layout(BLOCK_SIZE), 32, device)?;
    let vocab = model.config().vocab_size.min(256) as u32;
    let prompts: Vec<Vec<u32>> = [21u32, 12, 37]
        .iter()
        .map(|&n| (0..n).map(|i| (i * 17 + n) % vocab).collect())
        .collect();
    let tables: [Vec<u32>; 3] = [vec![9, 2, 30], vec![5, 17], vec![1, 22, 8, 3]];
    let mut rows = Vec::new();
    let steps: [[(usize, usize); 3]; 2] = [[(0, 7), (0, 12), (0, 37)], [(7, 13), (12, 1), (37, 1)]];
    for (s, step) in steps.iter().enumerate() {
        let next: Vec<u32> = (0..3).map(|i| (i as u32 * 5 + s as u32) % vocab).collect();
        let chunks: Vec<SequenceChunk> = step
            .iter()
            .enumerate()
            .map(|(i, &(cached, len))| SequenceChunk {
                tokens: if cached < prompts[i].len() {
                    &prompts[i][cached..cached + len]
                } else {
                    &next[i..i + 1]
                },
                num_cached: cached,
                block_table: &tables[i],
                num_logits: 1,
            })
            .collect();
        let batch = ForwardBatch::from_chunks(BLOCK_SIZE, &chunks, device)?;
        rows.extend(model.forward(&batch, &mut kv)?.to_vec2::<f32>()?);
    }
    Ok(rows)
}

fn compare_with_cpu(
    model: &DecoderModel,
    files: &metrum_engine::source::ModelFiles,
) -> Result<(), Box<dyn std::error::Error>> {
    if matches!(files, metrum_engine::source::ModelFiles::Synthetic { .. }) {
        println!("compare-cpu: skipped, synthetic weights differ between devices");
        return Ok(());
    }
    let cpu = DecoderModel::load(files, &Device::Cpu, candle_core::DType::F32)?;
    let (ours, reference) = (mixed_batch_logits(model)?, mixed_batch_logits(&cpu)?);
    let (mut worst, mut scale, mut same) = (0f32, 0f32, 0);
    for (a, b) in ours.iter().zip(&reference) {
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
            scale = scale.max(y.abs());
        }
        let argmax = |v: &[f32]| (0..v.len()).fold(0, |m, i| if v[i] > v[m] { i } else { m });
        same += usize::from(argmax(a) == argmax(b));
    }
    println!(
        "compare-cpu: {} rows, max |logit diff| {worst:.3e} (largest logit {scale:.2}), argmax equal in {same}",
        ours.len()
    );
    Ok(())
}
