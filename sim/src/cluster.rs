//! Several replicas behind a router, Venn-style (spec/metrics.md (e)): requests belong to
//! eligibility classes (model, adapter, context range, hardware), each class may run only on
//! its replicas, and classes intersect. Each replica is a [`Simulation`]: the real scheduler
//! on the fake executor's step-cost model. The router sees what SMG and the EPP scrape from
//! `/metrics` (running + waiting per replica) and routes each arrival on its arrival time.
//!
//! [`RoutingPolicy::Irs`] is contention-aware (Venn's IRS): a flexible request avoids the
//! replicas scarcer classes depend on unless they are much less loaded, and each replica
//! serves the scarcest class first, smallest demand first within a class (the request's
//! `priority`, under the scheduler's priority policy).

use crate::report::{RequestOutcome, percentile};
use crate::run::{SimError, Simulation};
use crate::{FakeExecutor, StepCostModel};
use metrum_core::{Nanos, RequestId};
use metrum_scheduler::routing::prefix_hash;
pub use metrum_scheduler::routing::{ClassId, ReplicaId, Router, RoutingPolicy};
use metrum_scheduler::{Policy, SchedulerConfig};
use metrum_workload::{Lengths, PoissonWorkload, SimRequest, Workload};

/// A class of requests and the replicas that can serve it.
#[derive(Clone, Debug, PartialEq)]
pub struct EligibilityClass {
    pub name: String,
    pub replicas: Vec<ReplicaId>,
    pub rate_per_s: f64,
    pub lengths: Lengths,
    /// Every prompt of the class starts with the same this-many tokens (its system prompt).
    pub shared_prefix_len: usize,
}

/// The cluster and its offered load.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub num_replicas: usize,
    pub classes: Vec<EligibilityClass>,
    pub num_requests: usize,
    pub seed: u64,
    /// Each replica's scheduler (IRS switches its policy to `Priority`).
    pub config: SchedulerConfig,
    pub cost: StepCostModel,
}

impl ClusterSpec {
    /// The workload of docs/results/routing.md: 4 replicas; a scarce long-context class only
    /// replica 0 serves, an adapter class on replicas 0-1, a general class on all four; every
    /// rate times `load`. Scheduler and step cost: `metrum simulate`'s defaults.
    pub fn intersecting_example(
        load: f64,
        num_requests: usize,
        seed: u64,
        cost: StepCostModel,
    ) -> ClusterSpec {
        let class =
            |name: &str, replicas: &[usize], rate: f64, prompt, output, prefix| EligibilityClass {
                name: name.to_string(),
                replicas: replicas.iter().map(|&r| ReplicaId(r)).collect(),
                rate_per_s: rate * load,
                lengths: Lengths::uniform(prompt, output),
                shared_prefix_len: prefix,
            };
        ClusterSpec {
            num_replicas: 4,
            classes: vec![
                class("long-context", &[0], 1.0, (1500, 3000), (50, 150), 0),
                class("adapter", &[0, 1], 8.0, (200, 800), (50, 150), 64),
                class("general", &[0, 1, 2, 3], 20.0, (100, 600), (50, 150), 32),
            ],
            num_requests,
            seed,
            cost,
            config: SchedulerConfig {
                max_num_seqs: 64,
                max_num_batched_tokens: 512,
                block_size: 16,
                num_blocks: 4096,
                max_model_len: 4096,
                enable_prefix_caching: true,
                policy: Policy::Fcfs,
                slo: metrum_scheduler::DeadlineSlo {
                    tbt_slo: Nanos::from_millis(30),
                    ttft_slack: Nanos::from_millis(300),
                    ..metrum_scheduler::DeadlineSlo::default()
                },
                admission: metrum_scheduler::admission::Admission::Off,
            },
        }
    }
}

/// One class's outcome under one routing policy.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassReport {
    pub policy: RoutingPolicy,
    pub class: String,
    pub eligible_replicas: usize,
    pub requests: usize,
    pub completed: usize,
    pub scheduling_delay_mean_s: f64,
    pub scheduling_delay_p50_s: f64,
    pub scheduling_delay_p99_s: f64,
    pub ttft_p50_s: f64,
    pub ttft_p99_s: f64,
    /// Missed token deadlines over all token deadlines (spec (b)).
    pub deadline_miss_rate: f64,
    pub fluidity_mean: f64,
}

/// The class of each request of the merged workload, indexed by request id.
struct ClusterWorkload {
    requests: Vec<SimRequest>,
    class_of: Vec<ClassId>,
}

fn generate(spec: &ClusterSpec) -> ClusterWorkload {
    let total_rate: f64 = spec.classes.iter().map(|c| c.rate_per_s).sum();
    let mut tagged: Vec<(SimRequest, ClassId)> = Vec::new();
    for (i, class) in spec.classes.iter().enumerate() {
        let share = class.rate_per_s / total_rate;
        let n = (spec.num_requests as f64 * share).round() as usize;
        let mut poisson = PoissonWorkload::new(
            spec.seed ^ (0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i as u64 + 1)),
            class.rate_per_s,
            n,
            class.lengths.clone(),
        );
        poisson.shared_prefix_len = class.shared_prefix_len;
        tagged.extend(
            poisson
                .generate()
                .requests
                .into_iter()
                .map(|r| (r, ClassId(i))),
        );
    }
    tagged.sort_by_key(|(r, c)| (r.arrival, *c, r.id));
    let mut requests = Vec::with_capacity(tagged.len());
    let mut class_of = Vec::with_capacity(tagged.len());
    for (i, (mut r, c)) in tagged.into_iter().enumerate() {
        r.id = RequestId(i as u64);
        requests.push(r);
        class_of.push(c);
    }
    ClusterWorkload { requests, class_of }
}

/// A replica and what the router knows of it.
struct Replica {
    sim: Simulation,
    submitted: usize,
}

impl Replica {
    /// Running + waiting + arrived but not yet admitted: what `vllm:num_requests_running` and
    /// `vllm:num_requests_waiting` add up to.
    fn load(&self) -> usize {
        let finished = self
            .sim
            .outcomes()
            .iter()
            .filter(|o| o.finish.is_some() || o.rejected.is_some())
            .count();
        self.submitted - finished
    }

    fn advance_to(&mut self, t: Nanos) -> Result<(), SimError> {
        while self.sim.now() < t && self.sim.step()? {}
        Ok(())
    }
}

/// Scarcity of a class: how many replicas can serve it (fewer = scarcer).
fn scarcity(spec: &ClusterSpec, c: ClassId) -> usize {
    spec.classes[c.0].replicas.len()
}

/// IRS's order inside a replica: scarcest class first, then smallest demand (prompt + output).
fn irs_priority(spec: &ClusterSpec, class: ClassId, request: &SimRequest) -> i32 {
    let demand = (request.prompt.len() + request.max_tokens).min(99_999);
    (scarcity(spec, class) * 100_000 + demand) as i32
}

/// Runs the workload of `spec` through `policy`'s router; one report per class.
pub fn simulate_cluster(
    spec: &ClusterSpec,
    policy: RoutingPolicy,
) -> Result<Vec<ClassReport>, SimError> {
    let workload = generate(spec);
    let mut config = spec.config.clone();
    if policy == RoutingPolicy::Irs {
        config.policy = Policy::Priority;
    }
    let mut replicas = (0..spec.num_replicas)
        .map(|_| {
            Ok(Replica {
                sim: Simulation::new(
                    &Workload::default(),
                    config.clone(),
                    FakeExecutor::new(spec.cost),
                )?,
                submitted: 0,
            })
        })
        .collect::<Result<Vec<_>, SimError>>()?;
    let mut router = Router::new(
        policy,
        spec.classes.iter().map(|c| c.replicas.clone()).collect(),
    );
    for (request, &class) in workload.requests.iter().zip(&workload.class_of) {
        for r in &mut replicas {
            r.advance_to(request.arrival)?;
        }
        let prefix = prefix_hash(request.prompt.iter().map(|&t| u64::from(t)));
        let target = router.route(class, prefix, |r| replicas[r.0].load() as f64);
        let mut request = request.clone();
        if policy == RoutingPolicy::Irs {
            request.priority = irs_priority(spec, class, &request);
        }
        let replica = &mut replicas[target.0];
        replica.sim.submit(request);
        replica.submitted += 1;
    }
    let mut outcomes: Vec<RequestOutcome> = Vec::new();
    for mut r in replicas {
        while r.sim.step()? {}
        outcomes.extend_from_slice(r.sim.outcomes());
    }
    Ok(class_reports(spec, policy, &workload, &outcomes))
}

fn class_reports(
    spec: &ClusterSpec,
    policy: RoutingPolicy,
    workload: &ClusterWorkload,
    outcomes: &[RequestOutcome],
) -> Vec<ClassReport> {
    let slo = &spec.config.slo;
    spec.classes
        .iter()
        .enumerate()
        .map(|(i, class)| {
            let mine: Vec<&RequestOutcome> = outcomes
                .iter()
                .filter(|o| workload.class_of[o.id.0 as usize] == ClassId(i))
                .collect();
            let sorted = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v
            };
            let delays = sorted(
                mine.iter()
                    .filter_map(|o| o.first_scheduled.map(|s| (s - o.arrival).as_secs_f64()))
                    .collect(),
            );
            let ttfts = sorted(
                mine.iter()
                    .filter_map(|o| {
                        o.token_times
                            .first()
                            .map(|&t| (t - o.arrival).as_secs_f64())
                    })
                    .collect(),
            );
            let (mut missed, mut total, mut fluidity) = (0u64, 0u64, Vec::new());
            for o in &mine {
                let t = o.deadlines(slo);
                missed += t.missed();
                total += t.tokens_seen();
                if t.tokens_seen() > 0 {
                    fluidity.push(1.0 - t.missed() as f64 / t.tokens_seen() as f64);
                }
            }
            let mean = |v: &[f64]| {
                if v.is_empty() {
                    f64::NAN
                } else {
                    v.iter().sum::<f64>() / v.len() as f64
                }
            };
            ClassReport {
                policy,
                class: class.name.clone(),
                eligible_replicas: class.replicas.len(),
                requests: mine.len(),
                completed: mine.iter().filter(|o| o.is_completed()).count(),
                scheduling_delay_mean_s: mean(&delays),
                scheduling_delay_p50_s: percentile(&delays, 50.0),
                scheduling_delay_p99_s: percentile(&delays, 99.0),
                ttft_p50_s: percentile(&ttfts, 50.0),
                ttft_p99_s: percentile(&ttfts, 99.0),
                deadline_miss_rate: if total > 0 {
                    missed as f64 / total as f64
                } else {
                    0.0
                },
                fluidity_mean: mean(&fluidity),
            }
        })
        .collect()
}

/// Per class, IRS against least-loaded in the terms of the target: the mean scheduling
/// delay ratio (above 1: IRS waits less) and the P99 ratio (below 1.10: not raised by >10%).
/// Scarce = fewer eligible replicas than the most flexible class. Empty unless `rows` has both.
pub fn irs_vs_least_loaded(spec: &ClusterSpec, rows: &[ClassReport]) -> String {
    let most = spec
        .classes
        .iter()
        .map(|c| c.replicas.len())
        .max()
        .unwrap_or(0);
    let find = |policy, name: &str| rows.iter().find(|r| r.policy == policy && r.class == name);
    let mut out = String::new();
    for class in &spec.classes {
        let (Some(ll), Some(irs)) = (
            find(RoutingPolicy::LeastLoaded, &class.name),
            find(RoutingPolicy::Irs, &class.name),
        ) else {
            continue;
        };
        out.push_str(&format!(
            "{:<13} ({}): mean scheduling delay least-loaded/IRS = {:.2}x, P99 IRS/least-loaded = {:.2}x\n",
            class.name,
            if class.replicas.len() < most { "scarce" } else { "flexible" },
            ll.scheduling_delay_mean_s / irs.scheduling_delay_mean_s,
            irs.scheduling_delay_p99_s / ll.scheduling_delay_p99_s,
        ));
    }
    out
}

/// One markdown table, a row per (policy, class).
pub fn markdown_class_table(reports: &[ClassReport]) -> String {
    let ms = |s: f64| format!("{:.1}", s * 1e3);
    let mut out = String::from(
        "| policy | class | eligible replicas | requests | sched. delay mean ms | P50 ms | P99 ms | TTFT P50 ms | TTFT P99 ms | deadline-miss rate | fluidity mean |\n\
         | --- | --- | --: | --: | --: | --: | --: | --: | --: | --: | --: |\n",
    );
    for r in reports {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.3} |\n",
            r.policy,
            r.class,
            r.eligible_replicas,
            r.requests,
            ms(r.scheduling_delay_mean_s),
            ms(r.scheduling_delay_p50_s),
            ms(r.scheduling_delay_p99_s),
            ms(r.ttft_p50_s),
            ms(r.ttft_p99_s),
            r.deadline_miss_rate,
            r.fluidity_mean,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrum_scheduler::DeadlineSlo;

    fn small_spec() -> ClusterSpec {
        let class = |name: &str, replicas: &[usize], rate: f64| EligibilityClass {
            name: name.to_string(),
            replicas: replicas.iter().map(|&r| ReplicaId(r)).collect(),
            rate_per_s: rate,
            lengths: Lengths::uniform((50, 400), (10, 40)),
            shared_prefix_len: 16,
        };
        ClusterSpec {
            num_replicas: 3,
            classes: vec![
                class("scarce", &[0], 4.0),
                class("flexible", &[0, 1, 2], 30.0),
            ],
            num_requests: 300,
            seed: 7,
            config: SchedulerConfig {
                max_num_seqs: 32,
                max_num_batched_tokens: 256,
                block_size: 16,
                num_blocks: 1024,
                max_model_len: 2048,
                enable_prefix_caching: true,
                policy: Policy::Fcfs,
                slo: DeadlineSlo::default(),
                admission: metrum_scheduler::admission::Admission::Off,
            },
            cost: StepCostModel {
                base: Nanos::from_millis(5),
                per_batched_token: Nanos(60_000),
                per_kv_token_read: Nanos(10),
            },
        }
    }

    #[test]
    fn every_policy_finishes_every_request_of_every_class() {
        let spec = small_spec();
        for policy in RoutingPolicy::ALL {
            let rows = simulate_cluster(&spec, policy).unwrap();
            assert_eq!(rows.len(), 2);
            assert_eq!(
                rows.iter().map(|r| r.requests).sum::<usize>(),
                300,
                "{policy}"
            );
            for r in &rows {
                assert_eq!(r.completed, r.requests, "{policy} {}", r.class);
                assert!(r.scheduling_delay_p99_s >= r.scheduling_delay_p50_s);
                assert!((0.0..=1.0).contains(&r.deadline_miss_rate));
            }
        }
    }

    #[test]
    fn runs_are_deterministic_and_policies_differ() {
        let spec = small_spec();
        let a = simulate_cluster(&spec, RoutingPolicy::Irs).unwrap();
        assert_eq!(a, simulate_cluster(&spec, RoutingPolicy::Irs).unwrap());
        let rr = simulate_cluster(&spec, RoutingPolicy::RoundRobin).unwrap();
        assert_ne!(a[0].scheduling_delay_mean_s, rr[0].scheduling_delay_mean_s);
    }

    #[test]
    fn irs_keeps_flexible_requests_off_the_scarce_replica() {
        // One replica only the scarce class can use is the one IRS charges for: the scarce
        // class must wait less there than under least-loaded, which fills it with flexible work.
        let spec = small_spec();
        let ll = simulate_cluster(&spec, RoutingPolicy::LeastLoaded).unwrap();
        let irs = simulate_cluster(&spec, RoutingPolicy::Irs).unwrap();
        assert!(
            irs[0].scheduling_delay_mean_s < ll[0].scheduling_delay_mean_s,
            "IRS {} vs least-loaded {}",
            irs[0].scheduling_delay_mean_s,
            ll[0].scheduling_delay_mean_s
        );
    }
}
