#!/usr/bin/env python3
"""The real-engine table of docs/results/scheduler.md from a scripts/bench-scheduler.sh directory.

    python3 scripts/sched_table.py target/bench-scheduler

One row per (load, variant): the measures the simulated grid reports, computed the same way
from each run's requests.jsonl (server-side timings; a refused request is a failed request with
no timings): P50/P99 over requests of the per-request deadline miss rate (misses / deadlines),
service miss rate, mean and P99 scheduling delay, TTFT P50/P99, refused share, goodput
(completed requests that missed no deadline, per second of the run) and preemptions.
"""
import json
import os
import sys

VARIANTS = ["fcfs", "deadline", "deadline-srpt", "deadline-srpt+refuse"]


def q(values, x):
    if not values:
        return float("nan")
    v = sorted(values)
    pos = x * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def row(path):
    reqs = [json.loads(line) for line in open(os.path.join(path, "requests.jsonl"))]
    summary = json.load(open(os.path.join(path, "summary.json")))
    served = [r["server"] for r in reqs if r.get("server")]
    refused = summary.get("refused", 0)
    miss = [s["deadline_misses"] / s["deadlines_total"] for s in served if s.get("deadlines_total")]
    missed = sum(s["deadline_misses"] for s in served)
    total = sum(s["deadlines_total"] for s in served)
    delay = [s["scheduling_delay_ms"] for s in served if s.get("scheduling_delay_ms") is not None]
    ttft = [s["ttft_ms"] for s in served if s.get("ttft_ms") is not None]
    good = sum(1 for s in served if s.get("deadline_misses") == 0 and s.get("finish_reason") == "length")
    dur = summary["client"]["duration_s"]
    return {
        "n": len(reqs),
        "p50": q(miss, 0.5),
        "p99": q(miss, 0.99),
        "service": missed / total if total else float("nan"),
        "delay_mean": sum(delay) / len(delay) if delay else float("nan"),
        "delay_p99": q(delay, 0.99),
        "ttft_p50": q(ttft, 0.5),
        "ttft_p99": q(ttft, 0.99),
        "refused": refused / len(reqs) if reqs else 0.0,
        "goodput": good / dur if dur else float("nan"),
        "preempt": summary["server"].get("preemptions_total", 0),
        "dur": dur,
    }


def main(root):
    knee = open(os.path.join(root, "knee.txt")).read().strip()
    print(f"{knee}. Server-side timings; per-request miss rate = missed / deadlines of that request.\n")
    print("| load | variant | requests | P50 / P99 miss rate | service miss rate | mean (P99) scheduling delay, s | vs FCFS mean | TTFT P50 / P99, s | refused | goodput req/s | preemptions | run s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for factor in ["1", "1.25"]:
        base = None
        for variant in VARIANTS:
            path = os.path.join(root, f"{factor}-{variant}", "bench")
            if not os.path.exists(os.path.join(path, "requests.jsonl")):
                continue
            r = row(path)
            if variant == "fcfs":
                base = r["delay_mean"]
            vs = f"{100 * (r['delay_mean'] / base - 1):+.0f}%" if base else "-"
            print(f"| {factor}x | {variant} | {r['n']} | {r['p50']:.3f} / {r['p99']:.3f} | {r['service']:.3f} | "
                  f"{r['delay_mean'] / 1e3:.2f} ({r['delay_p99'] / 1e3:.2f}) | {vs} | "
                  f"{r['ttft_p50'] / 1e3:.2f} / {r['ttft_p99'] / 1e3:.2f} | {100 * r['refused']:.1f}% | "
                  f"{r['goodput']:.3f} | {r['preempt']} | {r['dur']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1])
