#!/usr/bin/env bash
# Issue 14's speed check: each family's synthetic preset against a Llama of exactly the same
# shapes (`NAME-as-llama`: same sizes, no family features), forward pass alone on the CPU
# (f32 dense weights, the path synthetic models take), runs alternating so both see the same
# machine. Writes docs/results/families.md (or $OUT).
#   scripts/compare-families.sh [REPEATS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
THREADS=${2:-2}
OUT=${OUT:-docs/results/families.md}
cargo build --release -q -p metrum-engine --example bench_forward
BIN=target/release/examples/bench_forward
RAW=$(mktemp)
for pair in ${PAIRS:-qwen2.5-0.5b gemma-2-2b}; do
  for rep in $(seq "$REPEATS"); do
    for model in "$pair" "$pair-as-llama"; do
      echo "== $model run $rep" >&2
      "$BIN" "synthetic:$model" --decode 32 --repeat 1 --threads "$THREADS" 2>&1 \
        | awk -v m="$model" -v r="$rep" '
            /^prefill +512/ { print m, r, "prefill512_ms", $4 }
            /^decode \(1 stream/ { for (i = 1; i <= NF; i++) if ($i == "ms/token,") print m, r, "decode_ms", $(i-1) }' \
        | tee -a "$RAW" >&2
    done
  done
done
python3 - "$RAW" "$OUT" "$REPEATS" "$THREADS" <<'PY'
import sys, statistics, subprocess, collections
raw, out, repeats, threads = sys.argv[1:]
runs = collections.defaultdict(list)
for line in open(raw):
    model, rep, key, value = line.split()
    runs[(model, key)].append(float(value))
cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | sed 's/.*: *//'"], capture_output=True, text=True).stdout.strip()
sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
lines = [
    "# Families against Llama of the same shape (CPU, forward pass)",
    "",
    f"`scripts/compare-families.sh {repeats} {threads}` at {sha}: `bench_forward` on `synthetic:NAME` (f32 dense",
    f"weights, seeded random) and `synthetic:NAME-as-llama` (identical shapes, no family features), {threads} threads,",
    f"runs alternating, median of {repeats}. CPU: {cpu}.",
    "Decode is one stream at context 128-160; prefill is one 512-token prompt.",
    "",
    "| model | decode ms/token | 512-token prefill ms | decode vs Llama twin | prefill vs Llama twin |",
    "| --- | --- | --- | --- | --- |",
]
for pair in [p for p in ["qwen2.5-0.5b", "gemma-2-2b"] if runs[(p, "decode_ms")]]:
    twin = pair + "-as-llama"
    med = lambda m, k: statistics.median(runs[(m, k)]) if runs[(m, k)] else float("nan")
    for m in [pair, twin]:
        d, p = med(m, "decode_ms"), med(m, "prefill512_ms")
        rd = d / med(twin, "decode_ms"); rp = p / med(twin, "prefill512_ms")
        every = lambda k: ", ".join(f"{v:.0f}" for v in runs[(m, k)])
        lines.append(f"| `{m}` | {d:.1f} ({every('decode_ms')}) | {p:.0f} ({every('prefill512_ms')}) | {rd:.3f}x | {rp:.3f}x |")
lines.append("")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
