//! `metrum gpu-check`: proves a device path in one run and writes a markdown report —
//! every kernel against its CPU reference, whole-model logits device vs CPU, and speed against
//! the hardware's measured limits (copy bandwidth, a large GEMM). `scripts/gpu-check.sh` runs it
//! on the GPU machine; on a CPU-only build it checks the CPU path against itself.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use metrum_engine::diag::{self, kernels};
use metrum_engine::model::DecoderModel;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct GpuCheckArgs {
    /// Device to prove (`cuda`, `cuda:N`, or `cpu` for a dry run of the checks themselves).
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Fewer shapes and no large-model timings (a smoke test).
    #[arg(long)]
    pub quick: bool,
    /// Skip the timing sections.
    #[arg(long)]
    pub skip_speed: bool,
    /// Skip the checks (sections 1 and 2): only the timings, for a run whose checks ran already.
    #[arg(long, conflicts_with = "skip_speed")]
    pub skip_checks: bool,
    /// Synthetic model for decode/prefill timings.
    #[arg(long, default_value = "llama-3.1-8b")]
    pub speed_model: String,
    /// Where to write the markdown report (also printed).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only the mixture-of-experts decode section (`scripts/gpu-check.sh --moe-only`).
    #[arg(long)]
    pub moe_only: bool,
    /// Synthetic mixture-of-experts model for the MoE decode timings (`tiny-moe` for a dry run).
    #[arg(long, default_value = "qwen3-30b-a3b")]
    pub moe_model: String,
    /// The device's nominal memory bandwidth in GB/s, the MoE floor's yardstick (H200: 4800).
    #[arg(long, default_value_t = 4800.0)]
    pub nominal_gbps: f64,
}

fn open(device: &str) -> Result<Device> {
    Ok(match device {
        "cpu" => Device::Cpu,
        d => {
            let n = d
                .strip_prefix("cuda:")
                .map(str::parse)
                .transpose()?
                .unwrap_or(0);
            Device::new_cuda(n).with_context(|| format!("opening {d}"))?
        }
    })
}

impl GpuCheckArgs {
    pub fn run(self) -> Result<()> {
        let device = open(&self.device)?;
        let mut md = String::new();
        let mut failures = 0usize;
        writeln!(
            md,
            "# GPU check\n\nDevice: `{}`. Build: metrum {} ({}).\n",
            self.device,
            env!("CARGO_PKG_VERSION"),
            if cfg!(feature = "cuda") {
                "cuda"
            } else {
                "cpu-only"
            }
        )?;
        if self.moe_only {
            self.moe_speed(&device, &mut md)?;
            println!("{md}");
            return self.save(&md);
        }

        if !self.skip_checks {
            failures += self.checks(&device, &mut md)?;
        }
        if !self.skip_speed {
            self.speed(&device, &mut md)?;
        }
        println!("{md}");
        self.save(&md)?;
        if failures > 0 {
            bail!("{failures} check(s) failed");
        }
        Ok(())
    }

    /// Sections 1 and 2: every kernel, then whole models, against the CPU. Returns the failures.
    fn checks(&self, device: &Device, md: &mut String) -> Result<usize> {
        let mut failures = 0usize;
        // 1. Kernels against the CPU reference.
        let t0 = std::time::Instant::now();
        let rows = match kernels::run_kernel_checks(device, self.quick) {
            Ok(rows) => rows,
            Err(e) => {
                failures += 1;
                writeln!(md, "kernel checks failed to run: {e}")?;
                Vec::new()
            }
        };
        writeln!(
            md,
            "## 1. Kernels against the CPU reference\n\nRandom inputs, relative L2 error `||out-ref||/||ref||`; tolerance f32 1e-4, f16 3e-3, bf16 1.5e-2. {} cases in {:.1} s.\n",
            rows.len(),
            t0.elapsed().as_secs_f64()
        )?;
        writeln!(
            md,
            "| kernel | dtype | cases | max rel. err | worst shape | pass |\n| --- | --- | --- | --- | --- | --- |"
        )?;
        failures += rows.iter().filter(|r| !r.passed).count();
        for group in kernels::summarize(&rows) {
            writeln!(
                md,
                "| {} | {} | {} | {:.2e} | {} | {} |",
                group.kernel,
                group.dtype,
                group.cases,
                group.worst_rel_err,
                group.worst_shape,
                if group.passed { "yes" } else { "**NO**" }
            )?;
        }
        for r in rows.iter().filter(|r| !r.passed) {
            writeln!(
                md,
                "\nFAILED: {} {} {} rel err {:.3e}",
                r.kernel, r.dtype, r.shape, r.max_rel_err
            )?;
        }

        // 2. Whole-model logits, device against CPU.
        writeln!(
            md,
            "\n## 2. Whole-model logits, device against CPU f32\n\nA mixed varlen batch (prefill chunks 13+16, 7, 20+41, then one decode each) through the paged forward.\n\n| model | device dtype | max rel. err of logits rows | pass |\n| --- | --- | --- | --- |"
        )?;
        // CUDA attention supports head dims 64/128/256, so the checked models are real shapes
        // (SmolLM2-135M and Llama-3.2-1B have head dim 64); the HF-format path is covered by
        // section 3's transformers-made model.
        for (name, dtype) in [
            ("smollm2-135m", DType::BF16),
            ("smollm2-135m", DType::F16),
            ("smollm2-135m", DType::F32),
            ("llama-3.2-1b", DType::BF16),
            // The grouped MoE kernels on the device against one matmul per expert on the CPU.
            ("tiny-moe", DType::F32),
        ] {
            let result =
                DecoderModel::synthetic(name, &Device::Cpu, DType::F32, 1).and_then(|cpu| {
                    let dev = DecoderModel::synthetic(name, device, dtype, 1)?;
                    diag::compare_devices(&dev, &cpu, 16).map_err(Into::into)
                });
            let tol = if dtype == DType::F32 { 1e-3 } else { 3e-2 };
            match result {
                Ok(err) => {
                    let pass = err.is_finite() && err < tol;
                    failures += usize::from(!pass);
                    writeln!(
                        md,
                        "| synthetic:{name} | {dtype:?} | {err:.2e} | {} |",
                        if pass { "yes" } else { "**NO**" }
                    )?;
                }
                Err(e) => {
                    failures += 1;
                    writeln!(md, "| synthetic:{name} | {dtype:?} | error: {e} | **NO** |")?;
                }
            }
            self.save(md)?;
        }
        self.save(md)?;
        Ok(failures)
    }

    /// Writes the report so far, so a run cut short still leaves its finished sections.
    fn save(&self, md: &str) -> Result<()> {
        if let Some(out) = &self.out {
            std::fs::write(out, md).with_context(|| format!("writing {}", out.display()))?;
        }
        eprintln!("{}", md.lines().last().unwrap_or(""));
        Ok(())
    }

    /// Decode steps of a synthetic mixture of experts at batch 1/8/32 against the bytes they
    /// must read: per token the `k` chosen experts of every layer; per step everything else once,
    /// the experts the batch is expected to touch (uniform routing), and the K/V.
    fn moe_speed(&self, device: &Device, md: &mut String) -> Result<()> {
        let dtype = if device.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        };
        let copy_gbps = kernels::bench_copy_bandwidth(device)?;
        let t0 = std::time::Instant::now();
        let model = DecoderModel::synthetic(&self.moe_model, device, dtype, 0)?;
        let cfg = model.config();
        let Some(moe) = &cfg.moe else {
            bail!("synthetic:{} is not a mixture of experts", self.moe_model);
        };
        let per_token = diag::moe_step_bytes(cfg, dtype.size_in_bytes(), 1, 0)
            .context("MoE bytes")?
            .active_expert_bytes_per_token;
        writeln!(
            md,
            "\n## 5. Mixture-of-experts decode, synthetic:{} ({:.1} B params, {} experts, top {}, expert width {}, {dtype:?}, built in {:.0} s)\n\nActive-expert bytes per token: **{:.2} GB** (the k chosen experts of every layer). Step bytes = everything but the experts + the experts the batch is expected to touch (uniform routing) + K/V. Floors: step bytes over the nominal {:.0} GB/s and over this run's copy bandwidth {copy_gbps:.0} GB/s.\n\n| batch | context | step (ms) | tok/s | experts/layer (expected) | step GB | floor @nominal (ms) | nominal floor / step | floor @copy (ms) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            self.moe_model,
            cfg.num_parameters() as f64 / 1e9,
            moe.num_experts,
            moe.experts_per_token,
            moe.expert_intermediate_size,
            t0.elapsed().as_secs_f64(),
            per_token as f64 / 1e9,
            self.nominal_gbps,
        )?;
        let context = 512;
        for batch in [1usize, 8, 32] {
            let bytes = diag::moe_step_bytes(cfg, dtype.size_in_bytes(), batch, context)
                .context("MoE bytes")?;
            match diag::decode_step_time(&model, batch, context, copy_gbps, 10) {
                Ok(r) => {
                    let nominal_ms = bytes.step_bytes as f64 / (self.nominal_gbps * 1e9) * 1e3;
                    writeln!(
                        md,
                        "| {batch} | {context} | {:.2} | {:.0} | {:.1} | {:.2} | {nominal_ms:.2} | {:.0}% | {:.2} |",
                        r.step_ms,
                        batch as f64 / r.step_ms * 1e3,
                        bytes.expected_experts_per_layer,
                        bytes.step_bytes as f64 / 1e9,
                        100.0 * nominal_ms / r.step_ms,
                        bytes.step_bytes as f64 / (copy_gbps * 1e9) * 1e3,
                    )?
                }
                Err(e) => writeln!(md, "| {batch} | {context} | failed: {e} | | | | | | |")?,
            }
            self.save(md)?;
        }
        Ok(())
    }

    fn speed(&self, device: &Device, md: &mut String) -> Result<()> {
        let copy_gbps = kernels::bench_copy_bandwidth(device)?;
        let gemm = diag::gemm_tflops(device, if self.quick { 2048 } else { 8192 }, 10)?;
        writeln!(
            md,
            "\n## 4. Speed against the limit\n\nMeasured ceilings in this run: device-to-device copy **{copy_gbps:.0} GB/s** (bytes read + written), square GEMM through candle/cuBLAS **{gemm:.0} TFLOP/s** (bf16 on CUDA).\n"
        )?;
        writeln!(
            md,
            "### Paged-attention decode kernel (Llama-3-8B attention: 32 q heads, 8 KV heads, d=128, bf16, block 16)\n\n| context | batch | time (µs) | K/V bytes | achieved GB/s | % of copy bw |\n| --- | --- | --- | --- | --- | --- |"
        )?;
        let spec = kernels::BenchSpec::default();
        let ctxs: &[usize] = if self.quick {
            &[4096]
        } else {
            &[4096, 16384, 32768]
        };
        for &ctx in ctxs {
            for batch in [1usize, 8, 32] {
                let r = kernels::bench_paged_attention(device, ctx, batch, &spec)?;
                writeln!(
                    md,
                    "| {ctx} | {batch} | {:.1} | {} | {:.0} | {:.0}% |",
                    r.time_us,
                    r.bytes,
                    r.gbps,
                    100.0 * r.gbps / copy_gbps
                )?;
                self.save(md)?;
            }
        }
        if self.quick {
            return Ok(());
        }
        let dtype = if device.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        };
        let model = DecoderModel::synthetic(&self.speed_model, device, dtype, 0)?;
        let params = model.config().num_parameters();
        writeln!(
            md,
            "\n### Decode step, synthetic:{} ({:.2} B params, {dtype:?})\n\nFloor = (weight bytes + K/V bytes) / copy bandwidth.\n\n| batch | context | step (ms) | floor (ms) | floor / step | tok/s |\n| --- | --- | --- | --- | --- | --- |",
            self.speed_model,
            params as f64 / 1e9
        )?;
        for context in [512usize, 4096] {
            for batch in [1usize, 8, 32, 64] {
                match diag::decode_step_time(&model, batch, context, copy_gbps, 10) {
                    Ok(r) => writeln!(
                        md,
                        "| {batch} | {context} | {:.2} | {:.2} | {:.0}% | {:.0} |",
                        r.step_ms,
                        r.floor_ms,
                        100.0 * r.floor_ms / r.step_ms,
                        batch as f64 / r.step_ms * 1e3
                    )?,
                    Err(e) => writeln!(md, "| {batch} | {context} | failed: {e} | | | |")?,
                }
                self.save(md)?;
            }
        }
        self.save(md)?;
        let p = diag::prefill_throughput(&model, 2048, 5)?;
        writeln!(
            md,
            "\n### Prefill\n\n| chunk | time (ms) | TFLOP/s | % of GEMM ceiling |\n| --- | --- | --- | --- |\n| {} | {:.1} | {:.0} | {:.0}% |",
            p.chunk,
            p.ms,
            p.tflops,
            100.0 * p.tflops / gemm
        )?;
        Ok(())
    }
}

/// `metrum logits`: last-position logits and a greedy continuation for reference prompts, as JSON
/// (what `scripts/gpu/hf_reference.py compare` reads).
#[derive(Debug, clap::Args)]
pub struct LogitsArgs {
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// JSON with `"prompts": [[ids...], ...]` (the reference file).
    #[arg(long)]
    pub prompts: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub new_tokens: usize,
    #[arg(long)]
    pub out: PathBuf,
}

impl LogitsArgs {
    pub fn run(self) -> Result<()> {
        let device = open(&self.device)?;
        let dtype = metrum_engine::model::resolve_dtype(&self.dtype, &device)?;
        let files = metrum_engine::source::resolve_model(Some(&self.model))?;
        let model = DecoderModel::load(&files, &device, dtype)?;
        let input: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&self.prompts)?)?;
        let prompts: Vec<Vec<u32>> = serde_json::from_value(input["prompts"].clone())
            .context("prompts must be a list of token-id lists")?;
        let mut logits_last = Vec::new();
        let mut greedy = Vec::new();
        for p in &prompts {
            let t = diag::greedy_trace(&model, p, self.new_tokens, &device)?;
            logits_last.push(t.logits_last);
            greedy.push(t.greedy);
        }
        std::fs::write(
            &self.out,
            serde_json::to_string(
                &serde_json::json!({"logits_last": logits_last, "greedy": greedy}),
            )?,
        )?;
        eprintln!("wrote {}", self.out.display());
        Ok(())
    }
}

/// `metrum fetch [--model M]`: resolve (and for the default model, download, verify and cache)
/// the model files, then print where they are.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    #[arg(long)]
    pub model: Option<String>,
}

impl FetchArgs {
    pub fn run(self) -> Result<()> {
        let files = metrum_engine::source::resolve_model(self.model.as_deref())?;
        println!("{files:?}");
        Ok(())
    }
}
