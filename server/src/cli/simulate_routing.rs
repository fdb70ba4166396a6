//! `metrum simulate-routing`: several replicas, each the real scheduler on the fake executor,
//! behind a router (round-robin, least-loaded, prefix-affinity, IRS) over intersecting
//! eligibility classes (`metrum_sim::cluster`). Prints one table per seed and the
//! IRS-vs-least-loaded ratios; docs/results/routing.md is its output.

use super::profile_step::StepCostFile;
use super::simulate::DEFAULT_STEP_COST;
use anyhow::{Context, Result, bail};
use metrum_sim::{
    ClusterSpec, EligibilityClass, ReplicaId, RoutingPolicy, irs_vs_least_loaded,
    markdown_class_table, simulate_cluster,
};
use metrum_workload::Lengths;
use std::path::PathBuf;

#[derive(Clone, Debug, clap::Args)]
pub struct SimulateRoutingArgs {
    /// Replicas in the cluster (with --class; the built-in example has 4).
    #[arg(long)]
    pub replicas: Option<usize>,
    /// An eligibility class, repeatable: NAME:REPLICAS:RATE:PROMPT:OUTPUT, optionally
    /// followed by :PREFIX, with REPLICAS like 0+1, RATE per second, PROMPT and OUTPUT token
    /// ranges like 200-800, PREFIX the tokens every prompt of the class shares. Default: docs/results/routing.md's three.
    #[arg(long = "class")]
    pub classes: Vec<String>,
    /// Multiplies every class's rate.
    #[arg(long, default_value_t = 1.0)]
    pub load: f64,
    /// Requests in all, split over the classes by rate.
    #[arg(long, default_value_t = 4000)]
    pub num_requests: usize,
    /// Seeds 0..SEEDS, one table each.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Routing policies, comma-separated.
    #[arg(long, default_value = "round-robin,least-loaded,prefix-affinity,irs")]
    pub policies: String,
    /// Step-cost model from `metrum profile-step` (default: `metrum simulate`'s reference).
    #[arg(long)]
    pub cost_file: Option<PathBuf>,
}

fn range(text: &str) -> Result<(usize, usize)> {
    let (lo, hi) = text
        .split_once('-')
        .with_context(|| format!("{text:?} is not a MIN-MAX range"))?;
    let (lo, hi): (usize, usize) = (lo.parse()?, hi.parse()?);
    if lo == 0 || lo > hi {
        bail!("range {text:?} must have 1 <= MIN <= MAX");
    }
    Ok((lo, hi))
}

/// Parses one `--class` value against a cluster of `replicas`.
pub fn parse_class(text: &str, replicas: usize) -> Result<EligibilityClass> {
    let parts: Vec<&str> = text.split(':').collect();
    if !(5..=6).contains(&parts.len()) {
        bail!("--class {text:?}: expected NAME:REPLICAS:RATE:PROMPT:OUTPUT[:PREFIX]");
    }
    let eligible = parts[1]
        .split('+')
        .map(|r| {
            let r: usize = r
                .parse()
                .with_context(|| format!("--class {text:?}: replica {r:?} is not a number"))?;
            if r >= replicas {
                bail!("--class {text:?}: replica {r} is outside 0..{replicas}");
            }
            Ok(ReplicaId(r))
        })
        .collect::<Result<Vec<_>>>()?;
    let rate: f64 = parts[2]
        .parse()
        .with_context(|| format!("--class {text:?}: bad rate"))?;
    if !(rate.is_finite() && rate > 0.0) {
        bail!("--class {text:?}: the rate must be positive");
    }
    Ok(EligibilityClass {
        name: parts[0].to_string(),
        replicas: eligible,
        rate_per_s: rate,
        lengths: Lengths::uniform(
            range(parts[3]).with_context(|| format!("--class {text:?}: prompt"))?,
            range(parts[4]).with_context(|| format!("--class {text:?}: output"))?,
        ),
        shared_prefix_len: parts
            .get(5)
            .map_or(Ok(0), |p| p.parse())
            .with_context(|| format!("--class {text:?}: prefix"))?,
    })
}

impl SimulateRoutingArgs {
    fn spec(&self, seed: u64) -> Result<ClusterSpec> {
        if !(self.load.is_finite() && self.load > 0.0) {
            bail!("--load must be positive, got {}", self.load);
        }
        if self.num_requests == 0 {
            bail!("--num-requests must be at least 1");
        }
        let cost = match &self.cost_file {
            Some(path) => StepCostFile::load(path)?.model(),
            None => DEFAULT_STEP_COST,
        };
        let mut spec = ClusterSpec::intersecting_example(self.load, self.num_requests, seed, cost);
        if !self.classes.is_empty() {
            let replicas = self.replicas.context("--class needs --replicas")?;
            if replicas == 0 {
                bail!("--replicas must be at least 1");
            }
            spec.num_replicas = replicas;
            spec.classes = self
                .classes
                .iter()
                .map(|c| {
                    let mut class = parse_class(c, replicas)?;
                    class.rate_per_s *= self.load;
                    Ok(class)
                })
                .collect::<Result<_>>()?;
        } else if self.replicas.is_some_and(|r| r != spec.num_replicas) {
            bail!("--replicas without --class: the built-in classes need exactly 4 replicas");
        }
        Ok(spec)
    }

    pub fn run(self) -> Result<()> {
        let policies = self
            .policies
            .split(',')
            .map(|p| {
                RoutingPolicy::parse(p.trim()).with_context(|| {
                    format!(
                        "unknown policy {p:?} (round-robin, least-loaded, prefix-affinity, irs)"
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for seed in 0..self.seeds.max(1) {
            let spec = self.spec(seed)?;
            let mut rows = Vec::new();
            for &policy in &policies {
                rows.extend(simulate_cluster(&spec, policy).map_err(|e| anyhow::anyhow!("{e}"))?);
            }
            println!(
                "seed {seed}, load x{}:\n\n{}",
                self.load,
                markdown_class_table(&rows)
            );
            println!("{}", irs_vs_least_loaded(&spec, &rows));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_parse_and_bad_ones_say_why() {
        let c = parse_class("lora:0+2:1.5:100-200:10-20:32", 3).unwrap();
        assert_eq!(c.replicas, vec![ReplicaId(0), ReplicaId(2)]);
        assert_eq!(c.shared_prefix_len, 32);
        assert_eq!(c.lengths, Lengths::uniform((100, 200), (10, 20)));
        for (bad, why) in [
            ("x:3:1:1-2:1-2", "outside"),
            ("x:0:-1:1-2:1-2", "positive"),
            ("x:0:1:5-2:1-2", "prompt"),
            ("x:0:1", "expected"),
        ] {
            let err = format!("{:#}", parse_class(bad, 3).unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
