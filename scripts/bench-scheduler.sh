#!/bin/bash
# Issue 19, real-engine table (run in session 13: docs/results/scheduler.md section 9, tabulated by
# scripts/sched_table.py): metrum bench against metrum serve with
# --scheduling-policy fcfs / deadline / deadline-srpt / deadline-srpt + --admission refuse, on the
# default model, at the real FCFS knee and 1.25x past it, same seeds, >= 1000 requests.
#
# Steps: (1) refit the step costs for today's kernels (profile-step) and the prefill model
# (profile-prefill, the --slo-file every server gets); (2) find the FCFS knee with
# `metrum bench capacity --slo deadline`; (3) one fresh server per (load, policy), same seed.
# Every request that gets a 429 is kept in requests.jsonl as a failed request (R15), and the
# server's metrum_requests_refused_total is saved beside it.
#
# Usage: KNEE=<req/s> scripts/bench-scheduler.sh   (omit KNEE to search it first; VARIANTS picks
# among fcfs deadline deadline-srpt deadline-srpt+refuse, all four by default)
# Record `uptime` with the numbers; the machine's load changes the real (not the simulated) ones.
# Session 8 learned two things the hard way: (1) capacity probes of bench's default 16 requests
# never build a queue, so they found a "knee" of 2.11 req/s where 1000 requests at that rate
# queued without bound (TTFT P50 299 s; the real knee is about half); probes here are CAP_N
# (default 300) requests. (2) Other builds on the machine, even at nice 19, made prefill and
# decode ~2-3x slower: run this on a quiet machine only (about 2 h at >= 1000 requests).
set -u
BIN=${BIN:-target/release/metrum}
OUT=${OUT:-target/bench-scheduler}
PORT=${PORT:-18979}
N=${N:-1000}
SEED=${SEED:-1}
SERVE_FLAGS=${SERVE_FLAGS:-"--threads 2 --max-model-len 2048 --tbt-slo 100ms --ttft-slack 1s"}
# The workload of every probe, run and simulation (bench's default when empty). A lighter one
# raises the knee so that >= 1000 requests per run fit in an hour, e.g.
# WORKLOAD=synthetic:prompt=uniform:32:96,output=uniform:16:48
WORKLOAD=${WORKLOAD:-}
# Extra arguments of the knee search, e.g. "--start-qps 2 --granularity-pct 10 --repeats 1" to
# bound it to ~6 probes (bench capacity's defaults, 2.5% and 3 seeds, take ~15 probes).
CAP_ARGS=${CAP_ARGS:-}
WL_ARGS=()
[ -n "$WORKLOAD" ] && WL_ARGS=(--workload "$WORKLOAD")
mkdir -p "$OUT"
uptime | tee "$OUT/load-start.txt"

[ -f "$OUT/step_cost.json" ] || $BIN profile-step --reps 7 --out "$OUT/step_cost.json"
[ -f "$OUT/slo.json" ] || $BIN profile-prefill --serve "--max-model-len 2048" --max-exp 10 --out "$OUT/slo.json"

if [ -z "${KNEE:-}" ]; then
  $BIN bench capacity --serve "$SERVE_FLAGS --slo-file $OUT/slo.json --scheduling-policy fcfs" \
    --slo deadline --slo-file "$OUT/slo.json" --tbt-slo 0.1 --ttft-slack 1 --seed "$SEED" \
    --num-requests "${CAP_N:-300}" "${WL_ARGS[@]}" $CAP_ARGS \
    --out "$OUT/capacity" | tee "$OUT/capacity.txt"
  KNEE=$(python3 -c "import json; print(json.load(open('$OUT/capacity/capacity.json'))['result']['max_qps_under_slo'])")
fi
echo "FCFS knee: $KNEE req/s" | tee "$OUT/knee.txt"

for factor in 1 1.25; do
  qps=$(python3 -c "print($KNEE * $factor)")
  for variant in ${VARIANTS:-fcfs deadline deadline-srpt deadline-srpt+refuse}; do
    policy=${variant%+refuse}
    admission=off
    [ "$variant" != "$policy" ] && admission=refuse
    dir=$OUT/$factor-$variant
    rm -rf "$dir"; mkdir -p "$dir"
    uptime > "$dir/load-before.txt"
    $BIN serve --port "$PORT" $SERVE_FLAGS --slo-file "$OUT/slo.json" \
      --scheduling-policy "$policy" --admission "$admission" > "$dir/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do curl -sf "localhost:$PORT/health" >/dev/null && break; sleep 0.5; done
    $BIN bench run --url "http://127.0.0.1:$PORT" --num-requests "$N" --qps "$qps" --seed "$SEED" "${WL_ARGS[@]}" \
      --slo-file "$OUT/slo.json" --tbt-slo 0.1 --ttft-slack 1 --no-progress --out "$dir/bench" \
      > "$dir/bench.txt" 2>&1
    curl -s "localhost:$PORT/metrics" | grep -E '^metrum_requests_refused_total' > "$dir/refused.txt"
    uptime > "$dir/load-after.txt"
    kill "$pid"; wait "$pid" 2>/dev/null
  done
done
# Simulated prediction for the same setup, to compare with the table above:
$BIN simulate --knee --seeds 5 --num-requests "$N" --cost-file "$OUT/step_cost.json" \
  --slo-file "$OUT/slo.json" --max-model-len 2048 --tbt-slo 100ms --ttft-slack 1s \
  --policies fcfs,deadline,deadline-srpt --load-factors 1,1.25 "${WL_ARGS[@]}" > "$OUT/simulated.md"
uptime | tee "$OUT/load-end.txt"
