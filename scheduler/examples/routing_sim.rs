//! Venn-style routing over intersecting eligibility classes: 4 replicas, a scarce long-context
//! class only replica 0 serves, an adapter class on replicas 0-1, a general class on all four.
//! Every routing policy gets the same seeded workload (equal load).
//!
//! ```text
//! cargo run --release -p metrum-server -p metrum-scheduler --example routing_sim [-- LOAD [SEEDS]]
//! ```
//! LOAD multiplies every class's arrival rate (default 1.0). Prints one table per seed and the
//! IRS-vs-least-loaded ratios the issue's target is stated in.

use metrum_core::Nanos;
use metrum_scheduler::sim::{
    ClassReport, ClusterSpec, EligibilityClass, Lengths, ReplicaId, RoutingPolicy, StepCostModel,
    markdown_class_table, simulate_cluster,
};
use metrum_scheduler::{DeadlineSlo, Policy, SchedulerConfig};

fn spec(load: f64, seed: u64) -> ClusterSpec {
    let class =
        |name: &str, replicas: &[usize], rate: f64, prompt, output, prefix| EligibilityClass {
            name: name.to_string(),
            replicas: replicas.iter().map(|&r| ReplicaId(r)).collect(),
            rate_per_s: rate * load,
            lengths: Lengths::Uniform { prompt, output },
            shared_prefix_len: prefix,
        };
    ClusterSpec {
        num_replicas: 4,
        classes: vec![
            class("long-context", &[0], 1.0, (1500, 3000), (50, 150), 0),
            class("adapter", &[0, 1], 8.0, (200, 800), (50, 150), 64),
            class("general", &[0, 1, 2, 3], 20.0, (100, 600), (50, 150), 32),
        ],
        num_requests: 4000,
        seed,
        // The reference step cost of `metrum simulate` (DEFAULT_STEP_COST).
        cost: StepCostModel {
            base: Nanos::from_millis(5),
            per_batched_token: Nanos(60_000),
            per_kv_token_read: Nanos(10),
        },
        config: SchedulerConfig {
            max_num_seqs: 64,
            max_num_batched_tokens: 512,
            block_size: 16,
            num_blocks: 4096,
            max_model_len: 4096,
            enable_prefix_caching: true,
            policy: Policy::Fcfs,
            slo: DeadlineSlo {
                tbt_slo: Nanos::from_millis(30),
                ttft_slack: Nanos::from_millis(300),
                ..DeadlineSlo::default()
            },
        },
    }
}

fn find<'a>(rows: &'a [ClassReport], policy: RoutingPolicy, class: &str) -> &'a ClassReport {
    rows.iter()
        .find(|r| r.policy == policy && r.class == class)
        .expect("every policy reports every class")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let load: f64 = args
        .first()
        .map_or(1.0, |a| a.parse().expect("LOAD is a number"));
    let seeds: u64 = args
        .get(1)
        .map_or(1, |a| a.parse().expect("SEEDS is a count"));
    for seed in 0..seeds {
        let spec = spec(load, seed);
        let mut rows = Vec::new();
        for policy in RoutingPolicy::ALL {
            rows.extend(simulate_cluster(&spec, policy).expect("the simulation runs"));
        }
        println!(
            "seed {seed}, load x{load}:\n\n{}",
            markdown_class_table(&rows)
        );
        // Scarce: fewer eligible replicas than the most flexible class has.
        let most = spec
            .classes
            .iter()
            .map(|c| c.replicas.len())
            .max()
            .unwrap_or(0);
        for class in &spec.classes {
            let ll = find(&rows, RoutingPolicy::LeastLoaded, &class.name);
            let irs = find(&rows, RoutingPolicy::Irs, &class.name);
            println!(
                "{:<13} ({}): mean scheduling delay least-loaded/IRS = {:.2}x, P99 IRS/least-loaded = {:.2}x",
                class.name,
                if class.replicas.len() < most {
                    "scarce"
                } else {
                    "flexible"
                },
                ll.scheduling_delay_mean_s / irs.scheduling_delay_mean_s,
                irs.scheduling_delay_p99_s / ll.scheduling_delay_p99_s,
            );
        }
        println!();
    }
}
