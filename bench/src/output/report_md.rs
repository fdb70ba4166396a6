//! `report.md`: the summary in prose and tables, and the anti-pattern checklist R1-R16 of
//! spec (d) answered for this run (met, not met, or not applicable, and why).

use super::config::{RouterInfo, RunConfig};
use super::summary::BenchSummary;
use metrum_metrics::{DistributionSummary, RunSummary};
use std::fmt::Write;

fn ms(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |s| format!("{:.1}", s * 1e3))
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".to_string(), |x| format!("{x:.digits$}"))
}

fn row(out: &mut String, name: &str, d: &DistributionSummary, scale_ms: bool) {
    let f = |v: Option<f64>| if scale_ms { ms(v) } else { num(v, 3) };
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {} | {} | {} | {} | {} |",
        d.population.as_str(),
        d.count,
        f(d.p50),
        f(d.p90),
        f(d.p99),
        f(d.max),
        f(d.mean)
    );
}

fn latency_table(out: &mut String, s: &RunSummary) {
    out.push_str("| metric (ms) | over | n | P50 | P90 | P99 | max | mean |\n|---|---|---|---|---|---|---|---|\n");
    row(out, "TTFT", &s.ttft_s, true);
    row(out, "TBT", &s.tbt_s, true);
    row(out, "inter-delivery gap", &s.inter_delivery_s, true);
    row(out, "TPOT", &s.tpot_s, true);
    row(out, "E2E", &s.e2e_s, true);
    row(out, "normalized E2E (per token)", &s.normalized_e2e_s, true);
    row(out, "max stall", &s.max_stall_s, true);
    if s.scheduling_delay_s.count > 0 {
        row(out, "scheduling delay", &s.scheduling_delay_s, true);
        row(out, "prefill time", &s.prefill_time_s, true);
    }
}

/// One checklist answer.
struct Item {
    id: &'static str,
    verdict: &'static str,
    why: String,
}

fn checklist(s: &BenchSummary, c: &RunConfig) -> Vec<Item> {
    let item = |id, verdict, why: String| Item { id, verdict, why };
    let client = &s.client;
    let counts = client.requests;
    let lg = &s.load_generator;
    let bias = s
        .warnings
        .iter()
        .any(|w| w.contains("fell behind") || w.contains("% of this machine"));
    let trace = c.workload.spec.starts_with("trace:") || c.workload.spec.starts_with("file:");
    let fixed = c.workload.spec.contains("fixed:");
    let short = c.workload.short_outputs;
    let prefill_zero = s.slo.prefill_model.a_s == 0.0
        && s.slo.prefill_model.b_s_per_token == 0.0
        && s.slo.prefill_model.c_s_per_token2 == 0.0;
    let bursts = client.tbt_s.count > 0 && client.inter_delivery_s.count < client.tbt_s.count;
    vec![
        item("R1 same engine, kernels, hardware for baselines", "not applicable", format!("one system measured; `metrum bench compare` warns when runs differ in hardware. Hardware here: {}", c.machine.describe())),
        item("R2 baselines tuned for the SLO", "not applicable", "one system measured; its configuration (/version) is in config.json".into()),
        item("R3 same weights, sampling, forced output length", if short == 0 { "met" } else { "not met" }, format!("every request sent max_tokens = N, ignore_eos = true, temperature = {}; {short} completed requests returned fewer than N tokens", c.target.temperature)),
        item("R4 compare at equal load or equal capacity", "not applicable", format!("one load point, offered {} QPS", num(s.offered_qps, 2))),
        item("R5 realistic, heterogeneous workload", if trace { "met" } else { "not met" }, format!("workload {}{}; P/N distributions are in config.json", c.workload.spec, if fixed { " (fixed lengths: a microbenchmark)" } else if trace { "" } else { " (synthetic)" })),
        item("R6 open-loop arrivals", "met", format!("{} arrivals scheduled ahead from seed {}, never skipped or delayed by slow requests; a single load point (use `metrum bench capacity` to sweep)", c.workload.arrival, c.workload.seed)),
        item("R7 client-side streaming timing, server timestamps, client not the bottleneck", if bias { "not met" } else if s.server_reports > 0 { "met" } else { "partly met" }, format!("client timestamps every chunk on a monotonic clock; server timings on {}/{} requests; P99 send lag {} ms, client CPU {} cores{}", s.server_reports, s.requests_sent, ms(lg.send_lag_s.p99), num(lg.cpu_cores_used, 2), if bias { " (see warnings)" } else { "" })),
        item("R8 ≥ 1000 requests, warm-up excluded, fixed seed, repeats", if counts.completed >= 1000 && s.warmup_excluded > 0 { "met" } else { "not met" }, format!("{} completed, {} excluded as warm-up, seed {}; one repeat (capacity runs 3 seeds near the boundary)", counts.completed, s.warmup_excluded, c.workload.seed)),
        item("R9 hardware, software, every flag reported", "met", format!("config.json: machine, target /version ({}), every knob of the run; {}", if c.target.version.is_some() { "present" } else { "the target has none" }, router_note(c.target.router.as_ref()))),
        item("R10 capacity reported", "not applicable", "a single-QPS run; `metrum bench capacity` reports max QPS under the SLO".into()),
        item("R11 distributions, not only averages", "met", "TBT P50/P90/P99/max, the per-request max stall and the fluidity-index distribution are reported beside TPOT".into()),
        item("R12 prompt-length-dependent TTFT deadline", if prefill_zero { "not met" } else { "met" }, if prefill_zero { format!("no --slo-file: D_p = S = {} s for every prompt length", s.slo.ttft_slack_s) } else { "D_p(P) = prefill(P) + S from the --slo-file prefill model".into() }),
        item("R13 percentiles say what they are over", "met", "every table states tokens, requests or deliveries".into()),
        item("R14 scheduling delay apart from prefill", if s.server.is_some() { "met" } else { "not met" }, if s.server.is_some() { "from the server's timing objects".into() } else { "the target sent no timings and a client cannot observe scheduling".into() }),
        item("R15 failures counted, never dropped", "met", format!("{} launched: {} completed, {} failed ({} refused with 429), {} aborted; failed and refused requests are in requests.jsonl and charged in deadline metrics", counts.launched, counts.completed, counts.failed, s.refused, counts.aborted)),
        item("R16 bursty emission judged with deadlines", "met", format!("TBT includes burst zeros, the inter-delivery gaps are reported beside it, and fluidity/fluid TGR are deadline based; bursts {}", if bursts { "were observed" } else { "were not observed" })),
    ]
}

/// Whether the run measured one server or a router in front of several (R9: what was measured).
fn router_note(router: Option<&RouterInfo>) -> String {
    let Some(router) = router else {
        return format!(
            "measured the target directly (no response named a replica in `{}`)",
            crate::client::ROUTED_WORKER_HEADER
        );
    };
    let split = router
        .requests_per_replica
        .iter()
        .map(|(replica, n)| {
            let name = if replica.is_empty() {
                "(no header)"
            } else {
                replica
            };
            format!("{name}: {n}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "measured through a router (`{}` named the replica): {} replicas answered; requests per replica: {split}",
        router.header,
        router.replicas()
    )
}

pub fn render(s: &BenchSummary, c: &RunConfig) -> String {
    let mut out = String::new();
    let client = &s.client;
    let counts = client.requests;
    let _ = writeln!(out, "# Benchmark report\n");
    let _ = writeln!(
        out,
        "{} requests of workload `{}` were sent to `{}` (model `{}`) with {} arrivals at {} QPS (seed {}). \
         {} were summarized after a {} s warm-up. {} completed, {} failed ({} refused with 429), {} aborted. \
         Machine: {}.\n",
        s.requests_sent,
        c.workload.spec,
        c.target.base_url,
        c.target.model,
        c.workload.arrival,
        num(s.offered_qps, 2),
        c.workload.seed,
        s.requests_summarized,
        c.workload.warmup_s,
        counts.completed,
        counts.failed,
        s.refused,
        counts.aborted,
        c.machine.describe()
    );
    let _ = writeln!(
        out,
        "Throughput: {} completed req/s, {} output tok/s over {} s. Error rate {}.\n",
        num(client.completed_qps, 3),
        num(client.output_tokens_per_s, 1),
        num(client.duration_s, 2),
        num(client.error_rate, 3)
    );
    let _ = writeln!(
        out,
        "## Latency, as the client saw it\n\nTimed from each request's scheduled arrival (send lag included), at chunk receipt.\n"
    );
    latency_table(&mut out, client);
    if let Some(server) = &s.server {
        let _ = writeln!(
            out,
            "\n## Latency, as the server timed it ({} requests)\n",
            s.server_reports
        );
        latency_table(&mut out, server);
    }
    let _ = writeln!(out, "\n## Deadlines (fluidity)\n");
    let _ = writeln!(
        out,
        "SLO: D_d = tbt_slo_s = {} s, D_p(P) = {} + {}·P + {}·P² + ttft_slack_s ({} s).\n",
        s.slo.tbt_slo_s,
        s.slo.prefill_model.a_s,
        s.slo.prefill_model.b_s_per_token,
        s.slo.prefill_model.c_s_per_token2,
        s.slo.ttft_slack_s
    );
    out.push_str(
        "| metric | over | n | P50 | P90 | P99 | max | mean |\n|---|---|---|---|---|---|---|---|\n",
    );
    row(&mut out, "fluidity-index", &client.fluidity_index, false);
    row(
        &mut out,
        "min TBT deadline for ≤10% misses (s)",
        &client.min_tbt_deadline_s,
        false,
    );
    let d = client.service_miss_rate.deadlines;
    let _ = writeln!(
        out,
        "\nService-level deadline miss rate (Σ missed / Σ deadlines): {} ({} of {}). Fluid token generation rate: {} tok/s \
         (TPOT-based {}, P99-TBT-based {}).\n",
        num(client.service_miss_rate.miss_rate, 4),
        d.missed(),
        d.total(),
        num(client.throughput.fluid_token_generation_rate, 1),
        num(client.throughput.tpot_based, 1),
        num(client.throughput.tbt_based, 1)
    );
    let _ = writeln!(out, "## Load generator\n");
    let lg = &s.load_generator;
    let _ = writeln!(
        out,
        "Send lag P50/P99/max: {}/{}/{} ms. CPU: {} s over {:.2} s wall ({} cores used of {}). Token counts: {:?}.\n",
        ms(lg.send_lag_s.p50),
        ms(lg.send_lag_s.p99),
        ms(lg.send_lag_s.max),
        num(lg.cpu_seconds, 2),
        lg.wall_s,
        num(lg.cpu_cores_used, 2),
        lg.machine_cores,
        lg.token_sources
    );
    if !s.warnings.is_empty() {
        let _ = writeln!(out, "## Warnings\n");
        for w in &s.warnings {
            let _ = writeln!(out, "- {w}");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "## Checklist (spec (d))\n\n| item | verdict | why |\n|---|---|---|"
    );
    for i in checklist(s, c) {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            i.id,
            i.verdict,
            i.why.replace('|', "/")
        );
    }
    let _ = writeln!(
        out,
        "\nPlots: ttft_cdf.svg, tbt_cdf.svg, fluidity_hist.svg, tokens_vs_time.svg, miss_rate_vs_tbt.svg."
    );
    out
}
