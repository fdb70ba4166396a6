# Table of docs/results/speculative.md from a bench-speculative-quick.sh output directory:
#   python3 scripts/spec_case_table.py target/bench-speculative/arxiv-fixed
import json, re, sys, glob, os
import statistics
def q(v, x):
    v = sorted(v); pos = x*(len(v)-1); lo = int(pos); hi = min(lo+1, len(v)-1)
    return v[lo] + (v[hi]-v[lo])*(pos-lo)
root = sys.argv[1]
def metric(path, name):
    for line in open(path):
        if line.startswith(name + ' '): return float(line.split()[-1])
    return None
print("| load | speculation | TPOT mean ms | TBT P50 / P99 ms (tokens, with zeros) | inter-delivery gap P50 / P99 ms | fluidity P10 / P50 | fluid TGR tok/s | TPOT-based rate tok/s | deadline miss rate | mean acceptance length | output tok/s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for qps in ["0.25", "0.5", "1.0"]:
    for spec in ["off", "on"]:
        d = f"{root}/{qps}-{spec}"
        if not os.path.exists(f"{d}/bench/summary.json"): continue
        c = json.load(open(f"{d}/bench/summary.json"))["client"]
        ms = lambda x: f"{x*1e3:.1f}" if x is not None else "–"
        acc = metric(f"{d}/spec_metrics.txt", "metrum_spec_decode_mean_acceptance_length") if spec == "on" else None
        t = c["throughput"]
        fl = [json.loads(l)['fluidity_index'] for l in open(f'{d}/bench/requests.jsonl')]
        fl = [f for f in fl if f is not None]
        print(f"| {qps} req/s | {spec} | {ms(c['tpot_s']['mean'])} | {ms(c['tbt_s']['p50'])} / {ms(c['tbt_s']['p99'])} | {ms(c['inter_delivery_s']['p50'])} / {ms(c['inter_delivery_s']['p99'])} | {q(fl,0.1):.3f} / {q(fl,0.5):.3f} | {t['fluid_token_generation_rate']:.2f} | {t['tpot_based']:.1f} | {c['service_miss_rate']['miss_rate']:.4f} | {f'{acc:.2f}' if acc is not None else '–'} | {c['output_tokens_per_s']:.2f} |")
