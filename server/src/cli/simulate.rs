//! `metrum simulate`: replays an open-loop workload through the real scheduler and a fake
//! executor (step time `a + b·batch_tokens + c·kv_tokens_read`) once per policy, on simulated
//! time, and reports per policy: scheduling delay, TTFT, TBT, the fluidity-index distribution
//! and deadline-miss rates. `--knee` also finds the FCFS capacity knee and compares the policies
//! at loads around it.
//!
//! The workload is the one `metrum bench run` would send with the same `--workload`,
//! `--arrival`, `--rate` (= `--qps`), `--num-requests` and `--seed` against a server whose
//! context is `--max-model-len`: the same lengths and arrival offsets, with random token ids for
//! prompts (so no prefix is shared). Everything is deterministic: the same flags print the same
//! output.

use super::profile_step::StepCostFile;
use super::units::parse_duration;
use anyhow::{Context, Result, bail};
use metrum_core::{Nanos, RequestId};
use metrum_scheduler::{DeadlineSlo, Policy, PrefillModel, SchedulerConfig};
use metrum_sim::{
    FakeExecutor, SeedSummary, SimReport, StepCostModel, find_knee, markdown_sweep_table,
    markdown_table, profile_prefill_model, simulate,
};
use metrum_workload::arrival::{ArrivalProcess, RunLength, schedule};
use metrum_workload::{
    DEFAULT_WORKLOAD, SimRequest, SplitMix64, Workload, WorkloadSpec, fit_to_context,
};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// Step-cost constants used without `--cost-file`: a reference server, not a measurement (5 ms
/// per step, 60 µs per token, 10 ns per KV read: a 512-token step takes 36 ms, so Etalon's
/// default 30 ms TBT SLO is tight but reachable). The 2-core development CPU is about 25× slower
/// per token (docs/results/scheduler.md); measure yours with `metrum profile-step`.
pub const DEFAULT_STEP_COST: StepCostModel = StepCostModel {
    base: Nanos(5_000_000),
    per_batched_token: Nanos(60_000),
    per_kv_token_read: Nanos(10),
};

/// Seed stream of the prompt token ids, apart from the arrival and length streams.
const TOKEN_STREAM: u64 = 0x746f_6b65_6e73_2121; // "tokens!!"

#[derive(Clone, Debug, clap::Args)]
#[command(args_override_self = true)]
pub struct SimulateArgs {
    /// synthetic[:prompt=DIST,output=DIST] | trace:sharegpt|arxiv|bwb | file:PATH, as in
    /// `metrum bench` (DIST: fixed:N, uniform:MIN:MAX, normal:MEAN:STD, zipf:MIN:MAX:THETA).
    #[arg(long)]
    pub workload: Option<String>,
    /// Inter-arrival process: poisson | gamma:CV | constant | trace (a file's arrival times).
    #[arg(long, default_value = "poisson")]
    pub arrival: String,
    /// Offered load in requests per second.
    #[arg(long, visible_alias = "qps", default_value_t = 2.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 1000)]
    pub num_requests: usize,
    /// Seed of the arrivals, the lengths and the prompt tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Multiply every length by F before the context rule (as `metrum bench`).
    #[arg(long, default_value_t = 1.0)]
    pub length_scale: f64,
    /// Clamp prompts to at most this many tokens (after scaling and the context rule).
    #[arg(long)]
    pub max_prompt_len: Option<u32>,
    /// Clamp outputs to at most this many tokens.
    #[arg(long)]
    pub max_output_len: Option<u32>,
    /// Priorities drawn uniformly from 0..N (for the priority policy; 1 = all equal).
    #[arg(long, default_value_t = 1)]
    pub num_priorities: u32,
    /// Policies to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "fcfs,priority,deadline")]
    pub policies: Vec<String>,
    /// Most sequences running in one step.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Token budget of one step.
    #[arg(long, visible_alias = "chunk-size", default_value_t = 512)]
    pub max_num_batched_tokens: usize,
    /// Tokens per KV-cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// KV cache size in blocks.
    #[arg(long, default_value_t = 1024)]
    pub num_kv_blocks: usize,
    /// Context length: longer requests are shrunk to fit, keeping their ratio.
    #[arg(long, default_value_t = 8192)]
    pub max_model_len: usize,
    /// Reuse KV blocks of shared prompt prefixes (on by default).
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    #[arg(long, overrides_with = "enable_prefix_caching")]
    pub no_enable_prefix_caching: bool,
    /// Decode deadline per token (D_d).
    #[arg(long, value_parser = parse_duration, default_value = "30ms")]
    pub tbt_slo: Duration,
    /// Scheduling slack S: D_p(P) = prefill(P) + S.
    #[arg(long, value_parser = parse_duration, default_value = "300ms")]
    pub ttft_slack: Duration,
    /// Prefill model (from `metrum profile-prefill`). Default: profiled on the fake executor,
    /// as profile-prefill would on a server whose steps cost what the cost model says.
    #[arg(long)]
    pub slo_file: Option<PathBuf>,
    /// Step-cost constants from `metrum profile-step`.
    #[arg(long)]
    pub cost_file: Option<PathBuf>,
    /// Override the cost model's fixed cost per step (a).
    #[arg(long, value_parser = parse_duration)]
    pub step_base: Option<Duration>,
    /// Override its cost per batched token (b).
    #[arg(long, value_parser = parse_duration)]
    pub step_per_token: Option<Duration>,
    /// Override its cost per KV token read by attention (c).
    #[arg(long, value_parser = parse_duration)]
    pub step_per_kv_read: Option<Duration>,
    /// Find the FCFS knee (highest rate with P99 miss rate ≤ --miss-rate-slo on every seed),
    /// then compare the policies at --load-factors × knee over --seeds seeds.
    #[arg(long)]
    pub knee: bool,
    #[arg(long, default_value_t = 0.1)]
    pub miss_rate_slo: f64,
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,1.25")]
    pub load_factors: Vec<f64>,
    /// Seeds per load in --knee mode: --seed, --seed + 1, …
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// YAML or JSON file with any of these flags as keys; command-line flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// What every run shares: the validated inputs.
struct Setup {
    policies: Vec<Policy>,
    config: SchedulerConfig,
    cost: StepCostModel,
    cost_source: String,
    slo_source: String,
    workload: WorkloadSpec,
    arrival: ArrivalProcess,
}

impl SimulateArgs {
    pub fn run(self) -> Result<()> {
        let setup = self.setup()?;
        println!("{}", self.describe(&setup));
        let json = if self.knee {
            self.run_knee(&setup)?
        } else {
            let workload = self.workload_at(&setup, self.rate, self.seed)?;
            let reports = setup
                .policies
                .iter()
                .map(|&p| self.run_one(&setup, &workload, p))
                .collect::<Result<Vec<_>>>()?;
            println!("{}", markdown_table(&reports));
            json!({ "reports": reports.iter().map(report_json).collect::<Vec<_>>() })
        };
        if let Some(path) = &self.out {
            let mut doc = self.inputs_json(&setup);
            if let (Some(doc), Value::Object(results)) = (doc.as_object_mut(), json) {
                doc.extend(results);
            }
            std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    }

    fn setup(&self) -> Result<Setup> {
        let policies = self
            .policies
            .iter()
            .map(|p| p.trim().parse::<Policy>().map_err(anyhow::Error::from))
            .collect::<Result<Vec<_>>>()?;
        if policies.is_empty() {
            bail!("--policies is empty");
        }
        if !(self.length_scale.is_finite() && self.length_scale > 0.0) {
            bail!("--length-scale must be positive, got {}", self.length_scale);
        }
        if self.num_requests == 0 || self.num_priorities == 0 {
            bail!("--num-requests and --num-priorities must be at least 1");
        }
        let (cost, cost_source) = self.cost_model()?;
        let mut config = SchedulerConfig {
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            block_size: self.block_size,
            num_blocks: self.num_kv_blocks,
            max_model_len: self.max_model_len,
            enable_prefix_caching: !self.no_enable_prefix_caching,
            policy: Policy::Fcfs,
            slo: DeadlineSlo {
                tbt_slo: Nanos(self.tbt_slo.as_nanos().try_into().unwrap_or(u64::MAX)),
                ttft_slack: Nanos(self.ttft_slack.as_nanos().try_into().unwrap_or(u64::MAX)),
                prefill: PrefillModel::ZERO,
            },
            admission: Default::default(),
        };
        config.validate()?;
        let slo_source = match &self.slo_file {
            Some(path) => {
                let file = metrum_metrics::SloFile::load(path)
                    .with_context(|| format!("cannot load --slo-file {}", path.display()))?;
                let m = file.prefill_model;
                config.slo.prefill = PrefillModel {
                    a_s: m.a_s,
                    b_s_per_token: m.b_s_per_token,
                    c_s_per_token2: m.c_s_per_token2,
                };
                path.display().to_string()
            }
            None => {
                let limit = self.max_model_len.min(config.kv_capacity_tokens());
                let lengths: Vec<usize> = (6..=20)
                    .map(|k| 1usize << k)
                    .take_while(|&p| p + 16 <= limit)
                    .collect();
                if lengths.len() < 3 {
                    bail!("the context is too short to profile prefill; pass --slo-file");
                }
                config.slo.prefill =
                    profile_prefill_model(&config, FakeExecutor::new(cost), &lengths)?;
                format!(
                    "profiled on the fake executor at P = {}..{}",
                    lengths[0],
                    lengths[lengths.len() - 1]
                )
            }
        };
        config.validate()?;
        Ok(Setup {
            policies,
            config,
            cost,
            cost_source,
            slo_source,
            workload: self
                .workload
                .as_deref()
                .unwrap_or(DEFAULT_WORKLOAD)
                .parse()?,
            arrival: self.arrival.parse()?,
        })
    }

    /// `--cost-file`, else the built-in constants, then the per-constant overrides.
    fn cost_model(&self) -> Result<(StepCostModel, String)> {
        let (mut cost, mut source) = match &self.cost_file {
            Some(path) => (
                StepCostFile::load(path)?.model(),
                path.display().to_string(),
            ),
            None => (DEFAULT_STEP_COST, "built-in reference".to_string()),
        };
        let nanos = |d: Duration| Nanos(d.as_nanos().try_into().unwrap_or(u64::MAX));
        for (flag, value, field) in [
            ("a", self.step_base, &mut cost.base),
            ("b", self.step_per_token, &mut cost.per_batched_token),
            ("c", self.step_per_kv_read, &mut cost.per_kv_token_read),
        ] {
            if let Some(v) = value {
                *field = nanos(v);
                source.push_str(&format!(", {flag} overridden"));
            }
        }
        if self.step_base.is_some()
            && self.step_per_token.is_some()
            && self.step_per_kv_read.is_some()
        {
            source = "--step-* flags".to_string();
        }
        Ok((cost, source))
    }

    /// The requests of one run at `rate` with `seed` (see the module docs).
    fn workload_at(&self, setup: &Setup, rate: f64, seed: u64) -> Result<Workload> {
        let trace_times = match setup.arrival {
            ArrivalProcess::Trace => setup.workload.trace_arrivals()?,
            _ => None,
        };
        let times = schedule(
            setup.arrival,
            rate,
            RunLength::Requests(self.num_requests),
            seed,
            trace_times.as_deref(),
        )?;
        let mut specs = setup.workload.sample(times.len(), seed)?;
        let context = u32::try_from(self.max_model_len).unwrap_or(u32::MAX);
        fit_to_context(&mut specs, context, self.length_scale);
        let mut rng = SplitMix64::new(seed ^ TOKEN_STREAM);
        let requests = times
            .into_iter()
            .zip(specs)
            .enumerate()
            .map(|(i, (arrival, spec))| {
                let p = spec
                    .prompt_tokens
                    .min(self.max_prompt_len.unwrap_or(u32::MAX));
                let n = spec
                    .output_tokens
                    .min(self.max_output_len.unwrap_or(u32::MAX));
                SimRequest {
                    id: RequestId(i as u64),
                    arrival,
                    prompt: (0..p.max(1))
                        .map(|_| 3 + rng.below(32_000 - 3) as u32)
                        .collect(),
                    max_tokens: n.max(1) as usize,
                    priority: rng.below(u64::from(self.num_priorities)) as i32,
                    abort_at: None,
                }
            })
            .collect();
        Ok(Workload { requests })
    }

    fn run_one(&self, setup: &Setup, workload: &Workload, policy: Policy) -> Result<SimReport> {
        let config = SchedulerConfig {
            policy,
            ..setup.config.clone()
        };
        simulate(workload, &config, FakeExecutor::new(setup.cost))
            .with_context(|| format!("simulating {policy}"))
    }

    fn run_knee(&self, setup: &Setup) -> Result<Value> {
        let seeds: Vec<u64> = (self.seed..self.seed + self.seeds.max(1)).collect();
        let fcfs_passes = |rate: f64| -> Result<bool> {
            for &seed in &seeds {
                let workload = self.workload_at(setup, rate, seed)?;
                let report = self.run_one(setup, &workload, Policy::Fcfs)?;
                eprintln!(
                    "knee search: {rate:.3} req/s seed {seed}: P99 miss {:.3}",
                    report.miss_rate_p99
                );
                if report.miss_rate_p99.is_nan() || report.miss_rate_p99 > self.miss_rate_slo {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        let knee = find_knee(self.rate, 0.02, 40, fcfs_passes)?;
        if knee <= 0.0 {
            bail!("FCFS misses the SLO at every rate tried; lower the load or relax the SLO");
        }
        println!(
            "FCFS knee: {knee:.3} req/s (P99 miss rate ≤ {} on seeds {:?})\n",
            self.miss_rate_slo, seeds
        );
        let mut rows = Vec::new();
        for &factor in &self.load_factors {
            let rate = knee * factor;
            let workloads = seeds
                .iter()
                .map(|&s| self.workload_at(setup, rate, s))
                .collect::<Result<Vec<_>>>()?;
            for &policy in &setup.policies {
                let reports = workloads
                    .iter()
                    .map(|w| self.run_one(setup, w, policy))
                    .collect::<Result<Vec<_>>>()?;
                let label = format!("{factor}× knee");
                rows.extend(SeedSummary::new(&label, rate, &reports));
            }
        }
        println!("{}", markdown_sweep_table(&rows));
        Ok(json!({
            "knee_rate_per_s": knee,
            "seeds": seeds,
            "rows": rows.iter().map(summary_json).collect::<Vec<_>>(),
        }))
    }

    /// The inputs, as printed above the table.
    fn describe(&self, setup: &Setup) -> String {
        let c = &setup.config;
        let m = c.slo.prefill;
        let mode = if self.knee {
            format!("--knee over {} seed(s) from {}", self.seeds, self.seed)
        } else {
            format!("{} req/s, seed {}", self.rate, self.seed)
        };
        format!(
            "# metrum simulate\n\n\
             - workload: {} ({} arrivals, {} requests, {mode}), length scale {}, prompt ≤ {}, output ≤ {}\n\
             - step cost: a = {:.3} ms, b = {:.3} µs/token, c = {:.3} ns/KV token read ({})\n\
             - SLO: D_d = {:.1} ms, S = {:.1} ms, prefill(P) = {:.4e} + {:.4e}·P + {:.4e}·P² s ({})\n\
             - scheduler: max-num-seqs {}, max-num-batched-tokens {}, block-size {}, num-kv-blocks {}, max-model-len {}, prefix caching {}\n",
            setup.workload,
            setup.arrival,
            self.num_requests,
            self.length_scale,
            self.max_prompt_len.map_or("any".into(), |v| v.to_string()),
            self.max_output_len.map_or("any".into(), |v| v.to_string()),
            setup.cost.base.0 as f64 / 1e6,
            setup.cost.per_batched_token.0 as f64 / 1e3,
            setup.cost.per_kv_token_read.0 as f64,
            setup.cost_source,
            c.slo.tbt_slo.0 as f64 / 1e6,
            c.slo.ttft_slack.0 as f64 / 1e6,
            m.a_s,
            m.b_s_per_token,
            m.c_s_per_token2,
            setup.slo_source,
            c.max_num_seqs,
            c.max_num_batched_tokens,
            c.block_size,
            c.num_blocks,
            c.max_model_len,
            if c.enable_prefix_caching { "on" } else { "off" },
        )
    }

    fn inputs_json(&self, setup: &Setup) -> Value {
        let c = &setup.config;
        json!({
            "workload": setup.workload.to_string(),
            "arrival": setup.arrival.to_string(),
            "rate_per_s": self.rate,
            "num_requests": self.num_requests,
            "seed": self.seed,
            "length_scale": self.length_scale,
            "max_prompt_len": self.max_prompt_len,
            "max_output_len": self.max_output_len,
            "num_priorities": self.num_priorities,
            "step_cost": {
                "base_s": setup.cost.base.as_secs_f64(),
                "per_batched_token_s": setup.cost.per_batched_token.as_secs_f64(),
                "per_kv_token_read_s": setup.cost.per_kv_token_read.as_secs_f64(),
                "source": setup.cost_source,
            },
            "slo": {
                "tbt_slo_s": c.slo.tbt_slo.as_secs_f64(),
                "ttft_slack_s": c.slo.ttft_slack.as_secs_f64(),
                "prefill_model": {
                    "a_s": c.slo.prefill.a_s,
                    "b_s_per_token": c.slo.prefill.b_s_per_token,
                    "c_s_per_token2": c.slo.prefill.c_s_per_token2,
                },
                "source": setup.slo_source,
            },
            "scheduler": {
                "max_num_seqs": c.max_num_seqs,
                "max_num_batched_tokens": c.max_num_batched_tokens,
                "block_size": c.block_size,
                "num_kv_blocks": c.num_blocks,
                "max_model_len": c.max_model_len,
                "enable_prefix_caching": c.enable_prefix_caching,
            },
        })
    }
}

/// A report as JSON; undefined (NaN) values become `null`.
fn report_json(r: &SimReport) -> Value {
    json!({
        "policy": r.policy.as_str(),
        "offered_rate_per_s": r.offered_rate_per_s,
        "num_requests": r.num_requests,
        "num_completed": r.num_completed,
        "num_rejected": r.num_rejected,
        "num_aborted": r.num_aborted,
        "num_errored": r.num_errored,
        "duration_s": r.duration_s,
        "num_steps": r.num_steps,
        "mean_batch_tokens": r.mean_batch_tokens,
        "output_tokens_per_s": r.output_tokens_per_s,
        "sched_delay_p50_ms": r.sched_delay_p50_ms,
        "sched_delay_p99_ms": r.sched_delay_p99_ms,
        "ttft_p50_ms": r.ttft_p50_ms,
        "ttft_p99_ms": r.ttft_p99_ms,
        "tbt_p50_ms": r.tbt_p50_ms,
        "tbt_p99_ms": r.tbt_p99_ms,
        "fluidity_p1": r.fluidity_p1,
        "fluidity_p10": r.fluidity_p10,
        "fluidity_p50": r.fluidity_p50,
        "fluidity_mean": r.fluidity_mean,
        "frac_fluidity_at_least_0_9": r.frac_fluidity_at_least_0_9,
        "miss_rate_service": r.miss_rate_service,
        "miss_rate_p99": r.miss_rate_p99,
        "ttft_share_of_misses": r.ttft_share_of_misses,
        "num_preemptions": r.num_preemptions,
        "prefix_cache_hit_rate": r.prefix_cache_hit_rate,
    })
}

fn summary_json(s: &SeedSummary) -> Value {
    json!({
        "load": s.label,
        "rate_per_s": s.rate_per_s,
        "policy": s.policy.as_str(),
        "seeds": s.seeds,
        "miss_rate_p99_mean": s.miss_rate_p99_mean,
        "miss_rate_p99_min": s.miss_rate_p99_min,
        "miss_rate_p99_max": s.miss_rate_p99_max,
        "miss_rate_service": s.miss_rate_service,
        "ttft_share_of_misses": s.ttft_share_of_misses,
        "fluidity_p1": s.fluidity_p1,
        "fluidity_p10": s.fluidity_p10,
        "fluidity_p50": s.fluidity_p50,
        "frac_fluidity_at_least_0_9": s.frac_fluidity_at_least_0_9,
        "sched_delay_p50_ms": s.sched_delay_p50_ms,
        "sched_delay_p99_ms": s.sched_delay_p99_ms,
        "ttft_p99_ms": s.ttft_p99_ms,
        "tbt_p99_ms": s.tbt_p99_ms,
        "num_preemptions": s.num_preemptions,
        "output_tokens_per_s": s.output_tokens_per_s,
    })
}
