#!/usr/bin/env bash
# Runs the same seeded workload against `metrum serve` and llama-cpp-python's OpenAI server on
# the same GGUF, then `metrum bench compare`s the two runs.
#
#   scripts/compare-llamacpp.sh [OUT_DIR]
#
# Writes OUT_DIR/metrum/ and OUT_DIR/llamacpp/ (config.json, requests.jsonl, summary.json,
# report.md, plots) and OUT_DIR/compare/ (compare.md, overlaid CDFs). Default OUT_DIR:
# bench-out/llamacpp-compare-<timestamp>. Knobs (environment):
#   GGUF          model file (default ~/.cache/metrum/models/SmolLM2-135M-Instruct.Q4_1.gguf;
#                 no spaces: --serve arguments are split on whitespace)
#   WORKLOAD      --workload (default: the bench default synthetic workload)
#   QPS NUM_REQUESTS SEED ARRIVAL   offered load (defaults 1, 16, 0, poisson)
#   THREADS       CPU threads for both servers (default: nproc)
#   CONTEXT       context length for both servers and the length rule (default 2048)
#   LOGIT_BIAS    sent to both (default 0:-100,2:-100: SmolLM2's <|endoftext|> and
#                 <|im_end|>), because llama-cpp-python ignores `ignore_eos`; without it
#                 llama.cpp could stop early and do less work than metrum (R3)
#   LLAMA_PORT    port for llama-cpp-python (default 8089)
#   VENV          virtualenv for llama-cpp-python (default target/llamacpp-venv)
#   TOKENIZER     tokenizer.json that cuts prompts and counts tokens for both (default: the
#                 shared reference conversion of the default GGUF)
#
# Fairness notes (printed in each report's checklist too): both servers get the same model
# file, threads, context, seed, prompts' token counts, max_tokens, temperature and logit bias.
# llama-cpp-python serves one request at a time (no continuous batching); metrum batches.
set -euo pipefail
cd "$(dirname "$0")/.."

GGUF=${GGUF:-$HOME/.cache/metrum/models/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${1:-bench-out/llamacpp-compare-$(date +%Y%m%d-%H%M%S)}
QPS=${QPS:-1}
NUM_REQUESTS=${NUM_REQUESTS:-16}
SEED=${SEED:-0}
ARRIVAL=${ARRIVAL:-poisson}
THREADS=${THREADS:-$(nproc)}
CONTEXT=${CONTEXT:-2048}
LOGIT_BIAS=${LOGIT_BIAS:-0:-100,2:-100}
LLAMA_PORT=${LLAMA_PORT:-8089}
VENV=${VENV:-target/llamacpp-venv}
METRUM=target/release/metrum

[ -f "$GGUF" ] || { echo "no model at $GGUF (run 'make model' or set GGUF)" >&2; exit 1; }
mkdir -p "$OUT"

echo "== building metrum"
cargo build --release -p metrum-server

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
  echo "== installing llama-cpp-python[server] into $VENV (compiles llama.cpp; takes a while)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'llama-cpp-python[server]'
fi

# One tokenizer for both sides (llama-cpp-python has no OpenAI-style /tokenize): the model's
# tokenizer.json, Hugging Face's conversion of the same GGUF.
TOKENIZER=${TOKENIZER:-../shared/models/smollm2-135m-instruct/tokenizer.json}
common=(--qps "$QPS" --num-requests "$NUM_REQUESTS" --seed "$SEED" --arrival "$ARRIVAL"
        --context "$CONTEXT" --logit-bias "$LOGIT_BIAS" --temperature 0 --tokenizer "$TOKENIZER")
if [ -n "${WORKLOAD:-}" ]; then common+=(--workload "$WORKLOAD"); fi

echo "== metrum serve"
"$METRUM" bench run --serve "--model $GGUF --threads $THREADS --max-model-len $CONTEXT" \
  "${common[@]}" --out "$OUT/metrum"

echo "== llama-cpp-python server on 127.0.0.1:$LLAMA_PORT"
"$VENV/bin/python" -m llama_cpp.server --model "$GGUF" --host 127.0.0.1 --port "$LLAMA_PORT" \
  --n_ctx "$CONTEXT" --n_threads "$THREADS" --model_alias smollm2-135m-instruct \
  >"$OUT/llamacpp-server.log" 2>&1 &
llama_pid=$!
trap 'kill "$llama_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$LLAMA_PORT/v1/models" >/dev/null 2>&1 && break
  kill -0 "$llama_pid" 2>/dev/null || { echo "llama-cpp-python exited; see $OUT/llamacpp-server.log" >&2; exit 1; }
  sleep 1
done
"$METRUM" bench run --url "http://127.0.0.1:$LLAMA_PORT" "${common[@]}" --out "$OUT/llamacpp"
kill "$llama_pid" 2>/dev/null || true
wait "$llama_pid" 2>/dev/null || true
trap - EXIT

echo "== compare"
"$METRUM" bench compare "$OUT/metrum" "$OUT/llamacpp" --out "$OUT/compare"
echo "reports: $OUT/metrum/report.md $OUT/llamacpp/report.md; comparison: $OUT/compare/compare.md"
