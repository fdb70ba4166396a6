//! The chaos client: open-loop Poisson arrivals of the [`MIX`] kinds, bursts of aborts on a
//! fixed period, and a sample of the server's resident memory every second; everything goes
//! into a [`ChaosReport`].

use super::kinds::{ChaosKind, MIX, Outcome};
use super::send::{Target, judged, token_prompt};
use anyhow::{Context, Result, bail};
use metrum_workload::arrival::PoissonGaps;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

/// How much chaos, for how long.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrafficConfig {
    pub duration_s: f64,
    /// Rate of the [`MIX`] arrivals.
    pub qps: f64,
    pub seed: u64,
    /// A burst of aborts every this many seconds (0: none).
    pub burst_every_s: f64,
    pub burst_size: usize,
}

/// One chaos request as it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub kind: ChaosKind,
    /// Seconds since the chaos client started.
    pub at_s: f64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A kind of the mix this server cannot serve, left out of the schedule (never silently: it
/// is logged and lands in `chaos.json` and `soak.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkippedKind {
    pub kind: ChaosKind,
    pub why: String,
}

/// Everything the chaos client saw; `metrum-soak check` judges it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChaosReport {
    pub config: TrafficConfig,
    pub max_model_len: u32,
    pub requests: Vec<RequestRecord>,
    /// `(seconds since start, server VmRSS in KiB)`, once a second.
    pub rss_kib: Vec<(f64, u64)>,
    pub wall_s: f64,
    /// Kinds of the mix that were not sent, and why.
    pub skipped: Vec<SkippedKind>,
}

/// The server's resident set in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What to send when: single requests of the mix and whole bursts.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    One(ChaosKind),
    Burst(usize),
}

/// Every job of the run with its offset, from the seed alone; the `skipped` kinds' weight
/// goes to the rest of the mix in proportion.
pub fn schedule(config: &TrafficConfig, skipped: &[ChaosKind]) -> Result<Vec<(Duration, Job)>> {
    if !(config.qps.is_finite() && config.qps > 0.0) {
        bail!("the chaos rate must be positive, got {}", config.qps);
    }
    let mix: Vec<(ChaosKind, f64)> = MIX
        .into_iter()
        .filter(|(k, _)| !skipped.contains(k))
        .collect();
    let Some(&(first, _)) = mix.first() else {
        bail!("every kind of the chaos mix is skipped");
    };
    let mut rng = StdRng::seed_from_u64(config.seed);
    // The workload crate's Poisson gaps, on this run's own stream (kinds are drawn from it too).
    let gaps = PoissonGaps::new(config.qps).context("the chaos rate")?;
    let total: f64 = mix.iter().map(|(_, w)| w).sum();
    let mut jobs = Vec::new();
    let mut t = 0.0;
    loop {
        t += gaps.sample(&mut rng);
        if t >= config.duration_s {
            break;
        }
        let mut pick = rng.random_range(0.0..total);
        let kind = mix
            .iter()
            .find(|(_, w)| {
                pick -= w;
                pick < 0.0
            })
            .map_or(first, |(k, _)| *k);
        jobs.push((Duration::from_secs_f64(t), Job::One(kind)));
    }
    if config.burst_every_s > 0.0 && config.burst_size > 0 {
        let mut at = config.burst_every_s;
        while at < config.duration_s {
            jobs.push((Duration::from_secs_f64(at), Job::Burst(config.burst_size)));
            at += config.burst_every_s;
        }
    }
    jobs.sort_by_key(|(at, _)| *at);
    Ok(jobs)
}

/// `size` streams opened together and dropped together once every one has its headers (or
/// was refused): a burst of aborts, mostly of requests still waiting in the engine's queue.
async fn burst(target: &Target, size: usize, rng: &mut StdRng) -> Vec<Outcome> {
    // Token prompts: their length is what was asked for whatever the tokenizer, and
    // prompt + max_tokens stays within half the context.
    let quarter = (target.max_model_len / 4).max(1);
    let bodies: Vec<_> = (0..size)
        .map(|_| {
            let len = rng.random_range(1..=quarter);
            let prompt = token_prompt(rng, len);
            serde_json::json!({
                "prompt": prompt,
                "max_tokens": rng.random_range(1..=quarter),
                "stream": true,
                "ignore_eos": true,
            })
        })
        .collect();
    let opened = futures::future::join_all(bodies.iter().map(|b| target.open(b))).await;
    opened
        .into_iter()
        .map(|r| match r {
            Ok(response) => {
                drop(response);
                Outcome::Aborted
            }
            Err(outcome) => judged(ChaosKind::BurstAbort, outcome),
        })
        .collect()
}

/// Runs the chaos traffic against `target`, sampling `server_pid`'s memory.
pub async fn run(
    target: Target,
    config: TrafficConfig,
    server_pid: Option<u32>,
) -> Result<ChaosReport> {
    // The probe is a chaos request like the others (a refusal the engine never sees), sent
    // before the clock starts so the schedule knows which kinds this model can serve.
    let (probe, message) = target.chat_over_context().await;
    let probe = judged(ChaosKind::ChatOverContext, probe);
    let mut skipped = Vec::new();
    if message.contains("no chat template") {
        skipped.push(SkippedKind {
            kind: ChaosKind::ToolRequired,
            why: format!("tool calls need a chat template; the server said: {message}"),
        });
    }
    for s in &skipped {
        eprintln!("chaos: not sending {:?}: {}", s.kind, s.why);
    }
    let skipped_kinds: Vec<ChaosKind> = skipped.iter().map(|s| s.kind).collect();
    let jobs = schedule(&config, &skipped_kinds)?;
    let start = Instant::now();
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Some(kib) = server_pid.and_then(rss_kib) {
                samples.push((start.elapsed().as_secs_f64(), kib));
            }
            if start.elapsed().as_secs_f64() > config.duration_s {
                return samples;
            }
        }
    });
    let mut handles = Vec::with_capacity(jobs.len());
    for (i, (at, job)) in jobs.into_iter().enumerate() {
        tokio::time::sleep_until(start + at).await;
        let target = target.clone();
        let seed = config.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        handles.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let at_s = at.as_secs_f64();
            let record = |kind, outcome| RequestRecord {
                kind,
                at_s,
                outcome,
            };
            match job {
                Job::One(kind) => vec![record(kind, target.send(kind, &mut rng).await)],
                Job::Burst(size) => burst(&target, size, &mut rng)
                    .await
                    .into_iter()
                    .map(|o| record(ChaosKind::BurstAbort, o))
                    .collect(),
            }
        }));
    }
    let mut requests = vec![RequestRecord {
        kind: ChaosKind::ChatOverContext,
        at_s: 0.0,
        outcome: probe,
    }];
    for handle in handles {
        match handle.await {
            Ok(records) => requests.extend(records),
            Err(e) => bail!("a chaos request task died: {e}"),
        }
    }
    let wall_s = start.elapsed().as_secs_f64();
    let rss_kib = sampler.await.unwrap_or_default();
    Ok(ChaosReport {
        config,
        max_model_len: target.max_model_len,
        requests,
        rss_kib,
        wall_s,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_follows_the_mix_and_the_burst_period() {
        let config = TrafficConfig {
            duration_s: 2000.0,
            qps: 2.0,
            seed: 5,
            burst_every_s: 100.0,
            burst_size: 8,
        };
        let jobs = schedule(&config, &[]).unwrap();
        assert_eq!(jobs, schedule(&config, &[]).unwrap(), "fixed by the seed");
        let singles: Vec<ChaosKind> = jobs
            .iter()
            .filter_map(|(_, j)| match j {
                Job::One(k) => Some(*k),
                Job::Burst(_) => None,
            })
            .collect();
        // ~4000 arrivals; Poisson count within 5 sigma.
        assert!((4000.0 - singles.len() as f64).abs() < 5.0 * 4000f64.sqrt());
        for (kind, weight) in MIX {
            let share =
                singles.iter().filter(|k| **k == kind).count() as f64 / singles.len() as f64;
            let sigma = (weight * (1.0 - weight) / singles.len() as f64).sqrt();
            assert!(
                (share - weight).abs() < 5.0 * sigma,
                "{kind:?}: {share} vs {weight}"
            );
        }
        let bursts = jobs
            .iter()
            .filter(|(_, j)| matches!(j, Job::Burst(8)))
            .count();
        assert_eq!(bursts, 19);
        assert!(jobs.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(
            schedule(
                &TrafficConfig {
                    qps: 0.0,
                    ..config.clone()
                },
                &[]
            )
            .is_err()
        );
        let without_tools = schedule(&config, &[ChaosKind::ToolRequired]).unwrap();
        assert!(
            without_tools
                .iter()
                .all(|(_, j)| *j != Job::One(ChaosKind::ToolRequired))
        );
        assert!(
            without_tools.len() > 3000,
            "the other kinds take the skipped weight"
        );
        let everything: Vec<ChaosKind> = MIX.iter().map(|(k, _)| *k).collect();
        assert!(schedule(&config, &everything).is_err());
    }

    #[test]
    fn reads_this_process_rss() {
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
        assert_eq!(rss_kib(u32::MAX), None);
    }
}
