#!/usr/bin/env python3
"""Tables of docs/results/speculative.md from a scripts/bench-speculative.sh workload directory.

    python3 scripts/spec_case_table.py bench-out/spec-s14/arxiv

One row per (load factor, speculation) run directory `<factor>-<off|on>/`: TPOT, TBT over
tokens (with the zero gaps of multi-token deliveries) and the inter-delivery gaps (without
them), fluidity-index P10/P50 and P99 of the per-request deadline miss rate (client side, as
`bench capacity --slo deadline` judges it), fluid TGR beside the TPOT-based rate, the service
miss rate, the mean acceptance length from the server's counters, and output tok/s. Then the
capacity searches (`capacity-<off|on>/capacity.json`) found in the directory.
"""
import glob
import json
import os
import sys

from sched_table import q  # the one quantile rule of the result tables


def metric(path, name):
    if not os.path.exists(path):
        return None
    for line in open(path):
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def ms(x):
    return f"{x * 1e3:.1f}" if x is not None else "–"


def run_row(d):
    summary = json.load(open(f"{d}/bench/summary.json"))
    c = summary["client"]
    reqs = [json.loads(line) for line in open(f"{d}/bench/requests.jsonl")]
    fluidity = [r["fluidity_index"] for r in reqs if r.get("fluidity_index") is not None]
    miss = [r["deadline_misses"] / r["deadlines"] for r in reqs if r.get("deadlines")]
    acc = None
    if d.endswith("-on"):
        acc = metric(f"{d}/spec_metrics.txt", "metrum_spec_decode_mean_acceptance_length")
    t = c["throughput"]
    qps = open(f"{d}/qps.txt").read().strip() if os.path.exists(f"{d}/qps.txt") else "?"
    return (
        f"{qps} | {c['requests']['completed']} | {ms(c['tpot_s']['mean'])} | "
        f"{ms(c['tbt_s']['p50'])} / {ms(c['tbt_s']['p99'])} | "
        f"{ms(c['inter_delivery_s']['p50'])} / {ms(c['inter_delivery_s']['p99'])} | "
        f"{q(fluidity, 0.1):.3f} / {q(fluidity, 0.5):.3f} | {q(miss, 0.99):.3f} | "
        f"{t['fluid_token_generation_rate']:.2f} | {t['tpot_based']:.1f} | "
        f"{c['service_miss_rate']['miss_rate']:.4f} | "
        f"{f'{acc:.2f}' if acc is not None else '–'} | {c['output_tokens_per_s']:.2f} |"
    )


def main():
    root = sys.argv[1].rstrip("/")
    runs = []
    for d in glob.glob(f"{root}/*-o[nf]*"):
        name = os.path.basename(d)
        factor, _, spec = name.rpartition("-")
        if spec in ("on", "off") and os.path.exists(f"{d}/bench/summary.json"):
            try:
                runs.append((float(factor), spec == "on", d))
            except ValueError:
                pass
    print(
        "| load (x knee) | speculation | req/s | completed | TPOT mean ms | TBT P50 / P99 ms "
        "(tokens, with zeros) | inter-delivery gap P50 / P99 ms | fluidity P10 / P50 | "
        "P99 request miss rate | fluid TGR tok/s | TPOT-based rate tok/s | service miss rate | "
        "mean acceptance length | output tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for factor, on, d in sorted(runs):
        print(f"| {factor:g} | {'on' if on else 'off'} | {run_row(d)}")
    for spec in ("off", "on"):
        path = f"{root}/capacity-{spec}/capacity.json"
        if not os.path.exists(path):
            continue
        cap = json.load(open(path))
        result = cap["result"]
        probes = ", ".join(
            f"{p['qps']:g} {'pass' if p['passed'] else 'fail'} ("
            + "/".join(f"{r['metric']:.2f}" for r in p["runs"])
            + ")"
            for p in result["probes"]
        )
        print(
            f"\ncapacity, speculation {spec}: {result['max_qps_under_slo']} req/s "
            f"(stop: {result['stop_reason']}); probes (P99 request miss rate per seed): {probes}"
        )


if __name__ == "__main__":
    main()
