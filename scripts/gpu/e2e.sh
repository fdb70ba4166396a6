#!/usr/bin/env bash
# Section 6 of the GPU run (issue 21): Metrum serving a load on the GPU, measured by `metrum bench`
# over real HTTP, one server for every run (so the runs share its warm state, as a deployment would).
#
#   scripts/gpu/e2e.sh BIN RUNS_DIR REPORT_MD [SECONDS]
#
# Runs, in order, until SECONDS (default 200) are spent: one stream (batch-1 decode, what the
# transformers peer's batch-1 row is compared with), 64 requests at once (the 64-stream row), then
# Poisson arrivals at a light load, near capacity and past it, then a capacity search under the
# deadline SLO; with E2E_DRAFT=1, a draft-model speculation run (issue 17) instead of the capacity
# search. Each run's directory (report.md, summary.json, requests.jsonl) lands in RUNS_DIR;
# REPORT_MD gets a table of their one-line summaries. Every knob is on the command lines below.
set -uo pipefail
BIN=$1 RUNS=$2 MD=$3 BUDGET=${4:-200}
END=$((SECONDS + BUDGET))
MODEL=${E2E_MODEL:-synthetic:llama-3.1-8b}
PORT=${E2E_PORT:-8811}
URL=http://127.0.0.1:$PORT
WORKLOAD=${E2E_WORKLOAD:-synthetic:prompt=fixed:512,output=fixed:128}
SERVE_ARGS=(--model "$MODEL" --device "${E2E_DEVICE:-cuda}" --dtype "${E2E_DTYPE:-bf16}" ${E2E_MEM_ARGS:---gpu-memory-utilization 0.85}
  --max-num-seqs 128 --max-num-batched-tokens 2048 --max-model-len 4096 --port "$PORT")
mkdir -p "$RUNS"

{
  echo
  echo "## 6. End to end: \`metrum serve\` on the GPU under \`metrum bench\`"
  echo
  echo "Server: \`metrum serve ${SERVE_ARGS[*]}\` (random weights; byte-level tokenizer). Workload \`$WORKLOAD\`, temperature 0, \`ignore_eos\` (every request gets exactly its output length). TBT deadline 30 ms, TTFT slack 0.3 s (bench defaults). The client runs on the same machine's CPU."
  echo
} >> "$MD"

"$BIN" serve "${SERVE_ARGS[@]}" > "$RUNS/server.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
trap 'exit 143' TERM INT
t0=$SECONDS
until curl -sf "$URL/health" > /dev/null; do
  if ! kill -0 $SERVER 2>/dev/null || (( SECONDS > END )); then
    echo "server did not come up: last log lines:" >> "$MD"
    { echo '```'; tail -20 "$RUNS/server.log"; echo '```'; } >> "$MD"
    exit 1
  fi
  sleep 1
done
echo "Server ready (model built, KV cache allocated) in $((SECONDS - t0)) s." >> "$MD"
echo >> "$MD"
echo "| run | arrivals | requests | summary (client side; \`report.md\` in the run's directory has the rest) |" >> "$MD"
echo "| --- | --- | --- | --- |" >> "$MD"

status=0
bench() { # name, arrival description, then bench args
  local name=$1 desc=$2; shift 2
  local left=$((END - SECONDS))
  if (( left < 15 )); then echo "| $name | $desc | - | not run: the section's time was spent |" >> "$MD"; return; fi
  timeout "$left" "$BIN" bench run --url "$URL" --workload "$WORKLOAD" --no-progress \
    --out "$RUNS/$name" "$@" > "$RUNS/$name.txt" 2>&1 || status=1
  local head summary
  head=$(grep -m1 -E '^[0-9]+ requests' "$RUNS/$name.txt" | sed 's/ -> .*//')
  summary=$(grep -m1 -E '^\s+TTFT' "$RUNS/$name.txt" | sed 's/^ *//')
  echo "| $name | $desc | ${head:-failed} | ${summary:-$(tail -1 "$RUNS/$name.txt")} |" >> "$MD"
}

bench one-stream "one at a time (constant 0.5 QPS)" --arrival constant --qps 0.5 --num-requests 6
bench 64-at-once "64 at t=0" --arrival constant --qps 10000 --num-requests 64
bench light "Poisson 2 QPS, 15 s" --arrival poisson --qps 2 --duration 15
bench near "Poisson 12 QPS, 15 s" --arrival poisson --qps 12 --duration 15
bench past "Poisson 30 QPS, 10 s" --arrival poisson --qps 30 --duration 10

left=$((END - SECONDS))
if [[ -z ${E2E_DRAFT:-} ]] && (( left > 60 )); then  # E2E_DRAFT spends this time on the draft run
  echo >> "$MD"
  echo "Capacity under the deadline SLO (P99 over requests of the miss rate <= 10%), probes of 8 s of Poisson arrivals, at most 6 probes:" >> "$MD"
  timeout "$left" "$BIN" bench capacity --url "$URL" --workload "$WORKLOAD" --no-progress \
    --slo deadline --start-qps 10 --duration 8 --max-iterations 6 --granularity-pct 15 \
    --out "$RUNS/capacity" > "$RUNS/capacity.txt" 2>&1 || status=1
  { echo '```'; tail -8 "$RUNS/capacity.txt"; echo '```'; } >> "$MD"
fi
curl -s "$URL/metrics" > "$RUNS/metrics.txt"

# Issue 17's draft-model run on the GPU (opt-in: E2E_DRAFT=1): the same target with a
# Llama-3.2-1B-shaped draft of the same vocabulary, K = 4. Both have random weights, so drafts are
# almost never accepted: this measures what a draft-model step costs on the GPU (the draft's
# forwards plus K+1 verified rows), and proves the path runs there; acceptance needs real weights.
if [[ -n ${E2E_DRAFT:-} ]] && (( END - SECONDS > 60 )); then
  kill -TERM $SERVER; wait $SERVER 2>/dev/null
  SPEC="{\"method\":\"draft_model\",\"model\":\"${E2E_DRAFT_MODEL:-synthetic:llama-3.2-1b}\",\"num_speculative_tokens\":4}"
  "$BIN" serve "${SERVE_ARGS[@]}" --speculative-config "$SPEC" > "$RUNS/server-draft.log" 2>&1 &
  SERVER=$!
  until curl -sf "$URL/health" > /dev/null; do
    kill -0 $SERVER 2>/dev/null && (( SECONDS < END )) || break
    sleep 1
  done
  echo >> "$MD"
  echo "With \`--speculative-config $SPEC\` (random draft: acceptance near 0, so this is the cost side):" >> "$MD"
  echo >> "$MD"
  echo "| run | arrivals | requests | summary |" >> "$MD"
  echo "| --- | --- | --- | --- |" >> "$MD"
  bench draft-one-stream "one at a time (constant 0.5 QPS)" --arrival constant --qps 0.5 --num-requests 6
  bench draft-64-at-once "64 at t=0" --arrival constant --qps 10000 --num-requests 64
  curl -s "$URL/metrics" > "$RUNS/metrics-draft.txt"
  echo >> "$MD"
  grep -E '^metrum_spec_decode_mean_acceptance_length ' "$RUNS/metrics-draft.txt" | sed 's/^/Mean acceptance length: /' >> "$MD"
fi
exit $status
