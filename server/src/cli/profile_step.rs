//! `metrum profile-step`: times the real engine's forward step (the [`ModelExecutor`] that
//! `metrum serve` runs) over a grid of batch shapes, fits the simulator's step-cost model
//! `a + b·batch_tokens + c·kv_tokens_read` by least squares, reports the fit error, and writes
//! the constants as a JSON cost file for `metrum simulate --cost-file`.
//!
//! Every shape reads a real KV context: one sequence's prefix is prefilled once, and every
//! sequence of a shape shares those blocks for the positions before its chunk and writes its
//! own chunk into private blocks. Each shape runs once to warm up, then the grid runs `--reps`
//! times round-robin and each shape keeps its minimum (the least-disturbed run on a shared
//! machine). The fit minimizes the relative error, so one-decode steps of a few milliseconds
//! count as much as prefill chunks of a second.
//!
//! The CPU kernels change; refitting is this one command.

use anyhow::{Context, Result, bail};
use candle_core::Device;
use metrum_engine::executor::{Executor, ModelExecutor};
use metrum_engine::kv_cache::KvCache;
use metrum_engine::model::{DecoderModel, SequenceChunk, resolve_dtype};
use metrum_sim::{StepCostModel, StepSample, fit_step_cost};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The on-disk cost model (`format` 1), with the fit it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepCostFile {
    pub format: u32,
    /// `a`: fixed cost of a step, seconds.
    pub base_s: f64,
    /// `b`: per batched token, seconds.
    pub per_batched_token_s: f64,
    /// `c`: per KV token read by attention, seconds.
    pub per_kv_token_read_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit: Option<FitReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    pub rmse_s: f64,
    pub max_abs_error_s: f64,
    pub max_rel_error: f64,
    pub r2: f64,
    pub points: Vec<StepPoint>,
}

/// One measured shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepPoint {
    pub shape: String,
    pub batch_tokens: u64,
    pub kv_tokens_read: u64,
    pub measured_s: f64,
    pub predicted_s: f64,
}

impl StepCostFile {
    pub const FORMAT: u32 = 1;

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading cost file {}", path.display()))?;
        let file: StepCostFile = serde_json::from_str(&text)
            .with_context(|| format!("cost file {} is not valid", path.display()))?;
        if file.format != Self::FORMAT {
            bail!(
                "cost file {} has format {}, expected {}",
                path.display(),
                file.format,
                Self::FORMAT
            );
        }
        let constants = [
            file.base_s,
            file.per_batched_token_s,
            file.per_kv_token_read_s,
        ];
        if constants.iter().any(|c| !c.is_finite()) {
            bail!("cost file {} has a non-finite constant", path.display());
        }
        Ok(file)
    }

    /// The fake executor's model (constants rounded to nanoseconds, negatives clamped to 0).
    pub fn model(&self) -> StepCostModel {
        StepCostModel {
            base: metrum_core::Nanos::from_secs_f64(self.base_s),
            per_batched_token: metrum_core::Nanos::from_secs_f64(self.per_batched_token_s),
            per_kv_token_read: metrum_core::Nanos::from_secs_f64(self.per_kv_token_read_s),
        }
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct ProfileStepArgs {
    /// GGUF file, model directory, hub id or `synthetic:NAME` (default: the default model).
    #[arg(long)]
    pub model: Option<String>,
    /// CPU threads for the forward pass (default: all cores, as `serve`).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed runs per shape after one warm-up; the minimum is kept.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// A smaller grid (contexts up to 256, batches up to 8) for smoke tests and tiny models.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the cost file.
    #[arg(long, default_value = "step_cost.json")]
    pub out: PathBuf,
}

/// One step's chunks: `(start position, tokens)` per sequence.
struct Shape {
    name: String,
    chunks: Vec<(usize, usize)>,
}

const BLOCK: usize = 16;

fn grid(quick: bool) -> Vec<Shape> {
    let mut shapes = Vec::new();
    let mut add = |name: String, chunks: Vec<(usize, usize)>| shapes.push(Shape { name, chunks });
    let prefills: &[usize] = if quick {
        &[16, 64, 128]
    } else {
        &[16, 64, 128, 256, 512]
    };
    let offsets: &[(usize, usize)] = if quick {
        &[(128, 64)]
    } else {
        &[(512, 128), (1024, 256), (1536, 128)]
    };
    let batches: &[usize] = if quick { &[1, 8] } else { &[1, 8, 32] };
    let contexts: &[usize] = if quick { &[32, 256] } else { &[64, 512, 1536] };
    for &n in prefills {
        add(format!("prefill {n} from 0"), vec![(0, n)]);
    }
    for &(s, n) in offsets {
        add(format!("prefill {n} from {s}"), vec![(s, n)]);
    }
    for &b in batches {
        for &c in contexts {
            add(format!("{b} decodes at {c}"), vec![(c, 1); b]);
        }
    }
    let (d, c, n) = if quick { (4, 128, 64) } else { (16, 512, 128) };
    let mut mixed = vec![(c, 1); d];
    mixed.push((0, n));
    add(format!("{d} decodes at {c} + prefill {n}"), mixed);
    shapes
}

impl Shape {
    fn batch_tokens(&self) -> u64 {
        self.chunks.iter().map(|&(_, n)| n as u64).sum()
    }

    fn kv_tokens_read(&self) -> u64 {
        self.chunks
            .iter()
            .map(|&(s, n)| StepCostModel::kv_tokens_read(s, n))
            .sum()
    }

    /// Private blocks this shape writes into.
    fn private_blocks(&self) -> usize {
        self.chunks
            .iter()
            .map(|&(s, n)| (s + n).div_ceil(BLOCK) - s / BLOCK)
            .sum()
    }
}

impl ProfileStepArgs {
    pub fn run(self) -> Result<()> {
        if self.reps == 0 {
            bail!("--reps must be at least 1");
        }
        if let Some(n) = self.threads {
            if n == 0 {
                bail!("--threads must be at least 1");
            }
            if !metrum_engine::threads::set_kernel_threads(n) {
                eprintln!("warning: the CPU kernel pool already runs with another size");
            }
        }
        let device = Device::Cpu;
        let files = metrum_engine::source::resolve_model(self.model.as_deref())?;
        let model = DecoderModel::load(&files, &device, resolve_dtype("auto", &device)?)?;
        let shapes = grid(self.quick);
        let prefix = shapes
            .iter()
            .flat_map(|s| s.chunks.iter().map(|&(start, _)| start))
            .max()
            .unwrap_or(0);
        let longest = shapes
            .iter()
            .flat_map(|s| s.chunks.iter().map(|&(start, n)| start + n))
            .max()
            .unwrap_or(0);
        if longest > model.max_positions() {
            bail!(
                "the grid needs {longest} positions but the model has {}; try --quick",
                model.max_positions()
            );
        }
        let prefix_blocks = prefix.div_ceil(BLOCK);
        let private = shapes.iter().map(Shape::private_blocks).max().unwrap_or(0);
        let kv = KvCache::new(
            model.kv_cache_layout(BLOCK),
            prefix_blocks + private,
            &device,
        )?;
        let vocab = model.config().vocab_size as u32;
        let mut exec = ModelExecutor { model, kv, device };
        fill_prefix(&mut exec, prefix, vocab)?;

        let prepared: Vec<Prepared> = shapes
            .iter()
            .map(|s| Prepared::new(s, prefix_blocks, vocab))
            .collect();
        for p in &prepared {
            exec.execute(&p.chunks())?; // warm-up
        }
        // Round-robin over the shapes, so a burst of load from elsewhere on the machine costs
        // one repetition of several shapes rather than every repetition of one.
        let mut best = vec![f64::INFINITY; prepared.len()];
        for _ in 0..self.reps {
            for (p, best) in prepared.iter().zip(&mut best) {
                let chunks = p.chunks();
                let t0 = Instant::now();
                exec.execute(&chunks)?;
                *best = best.min(t0.elapsed().as_secs_f64());
            }
        }
        let mut samples = Vec::new();
        let mut names = Vec::new();
        for (shape, &seconds) in shapes.iter().zip(&best) {
            eprintln!("{:<32} {:>9.2} ms", shape.name, seconds * 1e3);
            samples.push(StepSample {
                batch_tokens: shape.batch_tokens(),
                kv_tokens_read: shape.kv_tokens_read(),
                seconds,
            });
            names.push(shape.name.clone());
        }
        let fit =
            fit_step_cost(&samples).context("the measured shapes do not determine a, b, c")?;
        let points: Vec<StepPoint> = samples
            .iter()
            .zip(names)
            .map(|(s, shape)| StepPoint {
                shape,
                batch_tokens: s.batch_tokens,
                kv_tokens_read: s.kv_tokens_read,
                measured_s: s.seconds,
                predicted_s: fit.predict_s(s.batch_tokens, s.kv_tokens_read),
            })
            .collect();
        let machine = metrum_bench::machine::MachineInfo::detect();
        let file = StepCostFile {
            format: StepCostFile::FORMAT,
            base_s: fit.base_s,
            per_batched_token_s: fit.per_batched_token_s,
            per_kv_token_read_s: fit.per_kv_token_read_s,
            fit: Some(FitReport {
                rmse_s: fit.rmse_s,
                max_abs_error_s: fit.max_abs_error_s,
                max_rel_error: fit.max_rel_error,
                r2: fit.r2,
                points,
            }),
            model: Some(describe_model(&files)),
            hardware: Some(machine.describe()),
            threads: Some(metrum_engine::threads::kernel_threads()),
        };
        println!("{}", render(&file));
        std::fs::write(&self.out, serde_json::to_string_pretty(&file)? + "\n")
            .with_context(|| format!("writing {}", self.out.display()))?;
        eprintln!("wrote {}", self.out.display());
        Ok(())
    }
}

fn describe_model(files: &metrum_engine::source::ModelFiles) -> String {
    use metrum_engine::source::ModelFiles;
    match files {
        ModelFiles::Gguf { path, .. } => path.display().to_string(),
        ModelFiles::SafetensorsDir { dir, .. } => dir.display().to_string(),
        ModelFiles::Synthetic { name } => format!("synthetic:{name}"),
    }
}

/// Prefills `len` tokens of one sequence into blocks `0..len/BLOCK`.
fn fill_prefix(exec: &mut ModelExecutor, len: usize, vocab: u32) -> Result<()> {
    let tokens: Vec<u32> = (0..len as u32).map(|i| (i * 7919 + 17) % vocab).collect();
    let table: Vec<u32> = (0..len.div_ceil(BLOCK) as u32).collect();
    for start in (0..len).step_by(512) {
        let end = (start + 512).min(len);
        let chunk = [SequenceChunk {
            tokens: &tokens[start..end],
            num_cached: start,
            block_table: &table,
            num_logits: 0,
        }];
        exec.execute(&chunk)?;
    }
    Ok(())
}

/// One shape's token ids and block tables: the positions before each chunk read the shared
/// prefix blocks, the chunk itself writes private blocks after them.
struct Prepared {
    starts: Vec<usize>,
    tokens: Vec<Vec<u32>>,
    tables: Vec<Vec<u32>>,
}

impl Prepared {
    fn new(shape: &Shape, prefix_blocks: usize, vocab: u32) -> Self {
        let mut next_private = prefix_blocks as u32;
        let mut p = Prepared {
            starts: Vec::new(),
            tokens: Vec::new(),
            tables: Vec::new(),
        };
        for (i, &(start, n)) in shape.chunks.iter().enumerate() {
            let shared = (start / BLOCK) as u32;
            let own = ((start + n).div_ceil(BLOCK) - start / BLOCK) as u32;
            let mut table: Vec<u32> = (0..shared).collect();
            table.extend(next_private..next_private + own);
            next_private += own;
            p.starts.push(start);
            p.tables.push(table);
            p.tokens.push(
                (0..n as u32)
                    .map(|t| (t * 31 + i as u32 * 101 + 5) % vocab)
                    .collect(),
            );
        }
        p
    }

    /// Every chunk computes logits for its last token, as a decode or a prompt's last chunk.
    fn chunks(&self) -> Vec<SequenceChunk<'_>> {
        (0..self.starts.len())
            .map(|i| SequenceChunk {
                tokens: &self.tokens[i],
                num_cached: self.starts[i],
                block_table: &self.tables[i],
                num_logits: 1,
            })
            .collect()
    }
}

/// The constants, the fit error and every point, as markdown.
fn render(file: &StepCostFile) -> String {
    let mut md = format!(
        "# Step-cost fit\n\nstep time = a + b·batch_tokens + c·kv_tokens_read\n\n\
         - a = {:.3} ms\n- b = {:.3} µs per batched token\n- c = {:.3} ns per KV token read\n",
        file.base_s * 1e3,
        file.per_batched_token_s * 1e6,
        file.per_kv_token_read_s * 1e9,
    );
    if let Some(fit) = &file.fit {
        md.push_str(&format!(
            "- fit: RMSE {:.2} ms, max |error| {:.2} ms, max relative error {:.1}%, R² {:.4}\n\n\
             | shape | batch tokens | KV reads | measured ms | predicted ms | error |\n\
             |---|---|---|---|---|---|\n",
            fit.rmse_s * 1e3,
            fit.max_abs_error_s * 1e3,
            fit.max_rel_error * 100.0,
            fit.r2
        ));
        for p in &fit.points {
            md.push_str(&format!(
                "| {} | {} | {} | {:.2} | {:.2} | {:+.1}% |\n",
                p.shape,
                p.batch_tokens,
                p.kv_tokens_read,
                p.measured_s * 1e3,
                p.predicted_s * 1e3,
                (p.predicted_s / p.measured_s - 1.0) * 100.0
            ));
        }
    }
    if [
        file.base_s,
        file.per_batched_token_s,
        file.per_kv_token_read_s,
    ]
    .iter()
    .any(|&c| c < 0.0)
    {
        md.push_str("\nA constant came out negative; the simulator clamps it to 0.\n");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_separates_tokens_from_kv_reads_and_fits_its_blocks() {
        for quick in [true, false] {
            let shapes = grid(quick);
            let samples: Vec<StepSample> = shapes
                .iter()
                .map(|s| StepSample {
                    batch_tokens: s.batch_tokens(),
                    kv_tokens_read: s.kv_tokens_read(),
                    seconds: 0.002
                        + 1e-4 * s.batch_tokens() as f64
                        + 1e-8 * s.kv_tokens_read() as f64,
                })
                .collect();
            let fit = fit_step_cost(&samples).expect("the grid determines a, b, c");
            assert!((fit.per_kv_token_read_s / 1e-8 - 1.0).abs() < 1e-6);
            assert!(shapes.iter().all(|s| s.private_blocks() >= 1));
        }
        // Decodes at 512 share 32 prefix blocks and each writes one block of its own.
        let s = Shape {
            name: String::new(),
            chunks: vec![(512, 1); 3],
        };
        assert_eq!((s.private_blocks(), s.kv_tokens_read()), (3, 3 * 513));
    }

    #[test]
    fn cost_files_round_trip_and_bad_ones_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cost.json");
        let file = StepCostFile {
            format: 1,
            base_s: 0.005,
            per_batched_token_s: 6e-5,
            per_kv_token_read_s: -1e-9,
            fit: None,
            model: None,
            hardware: None,
            threads: None,
        };
        std::fs::write(&path, serde_json::to_string(&file).unwrap()).unwrap();
        let back = StepCostFile::load(&path).unwrap();
        assert_eq!(back, file);
        let m = back.model();
        assert_eq!(
            (m.base.0, m.per_batched_token.0, m.per_kv_token_read.0),
            (5_000_000, 60_000, 0)
        );
        std::fs::write(&path, "{\"format\": 2, \"base_s\": 0, \"per_batched_token_s\": 0, \"per_kv_token_read_s\": 0}").unwrap();
        assert!(StepCostFile::load(&path).is_err());
        assert!(StepCostFile::load(&dir.path().join("missing.json")).is_err());
    }
}
