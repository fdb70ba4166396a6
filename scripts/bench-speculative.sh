#!/bin/bash
# Issue 17, the speculative-decoding case study (spec/metrics.md, "Speculative-decoding case
# study"): the same workload served with n-gram speculation off and on, at three loads (light,
# the knee, past it), on a workload where prompt lookup can help (arXiv summarization: the
# output restates the input) and one where it should not (ShareGPT). `metrum bench` reports TPOT
# beside TBT over tokens (with the zero gaps of multi-token deliveries), the inter-delivery gaps
# (without them), fluidity, fluid TGR, deadline misses and miss rate vs target TBT; `bench
# compare` overlays the CDFs; the server's /metrics gives the acceptance length.
#
# Knee: `metrum bench capacity` under the deadline SLO with speculation off, per workload, and
# with it on for the workloads in CAP_ON (e.g. CAP_ON="arxiv sharegpt").
# Loads: FACTORS (default "0.5 1 1.5") times the knee; FACTORS_<workload> overrides per workload.
# Usage: scripts/bench-speculative.sh   (env: N requests per run (R8: >= 1000 completed), CAP_N
# per capacity probe, CAP_ITERS, WORKLOADS, SPEC, LENGTH_SCALE, SERVE_FLAGS, TBT_SLO, TTFT_SLACK). Every
# setting is written to $OUT/config.txt; `uptime` before and after each run: a busy machine
# moves the real numbers. Tables: `python3 scripts/spec_case_table.py $OUT/<workload>`.
set -u
BIN=${BIN:-target/release/metrum}
OUT=${OUT:-target/bench-speculative}
PORT=${PORT:-18979}
N=${N:-1010}
WARMUP=${WARMUP:-10}
CAP_N=${CAP_N:-300}
CAP_ITERS=${CAP_ITERS:-6}
CAP_START=${CAP_START:-2}
CAP_ON=${CAP_ON:-}
SEED=${SEED:-1}
WORKLOADS=${WORKLOADS:-"arxiv sharegpt"}
FACTORS=${FACTORS:-"0.5 1 1.5"}
LENGTH_SCALE=${LENGTH_SCALE:-0.1}
SPEC=${SPEC:-'{"method":"ngram","num_speculative_tokens":2,"prompt_lookup_min":2,"prompt_lookup_max":4}'}
SERVE_FLAGS=${SERVE_FLAGS:-"--threads 2 --max-model-len 2048"}
TBT_SLO=${TBT_SLO:-0.1}
TTFT_SLACK=${TTFT_SLACK:-1}
SLO_FLAGS="--tbt-slo $TBT_SLO --ttft-slack $TTFT_SLACK"
mkdir -p "$OUT"
cat > "$OUT/config.txt" <<EOF
$(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null) $(nproc) cores
N=$N WARMUP=$WARMUP CAP_N=$CAP_N CAP_ITERS=$CAP_ITERS CAP_START=$CAP_START CAP_ON=$CAP_ON SEED=$SEED
WORKLOADS=$WORKLOADS FACTORS=$FACTORS LENGTH_SCALE=$LENGTH_SCALE
SPEC=$SPEC
SERVE_FLAGS=$SERVE_FLAGS
SLO_FLAGS=$SLO_FLAGS
EOF
uptime | tee "$OUT/load-start.txt"
[ -f "$OUT/slo.json" ] || $BIN profile-prefill --serve "$SERVE_FLAGS" --max-exp 10 --out "$OUT/slo.json"
WL_FLAGS() { echo "--workload trace:$1 --length-scale $LENGTH_SCALE --seed $SEED"; }
serve_flags() { # $1 = off|on
  # The server gets the client's SLO too, so its own per-request fluidity uses the same D_d.
  if [ "$1" = on ]; then echo "$SERVE_FLAGS --slo-file $OUT/slo.json $SLO_FLAGS --speculative-config $SPEC"
  else echo "$SERVE_FLAGS --slo-file $OUT/slo.json $SLO_FLAGS"; fi
}

for wl in $WORKLOADS; do
  mkdir -p "$OUT/$wl"
  caps=off
  case " $CAP_ON " in *" $wl "*) caps="off on" ;; esac
  for spec in $caps; do
    cap=$OUT/$wl/capacity-$spec
    [ -f "$cap/capacity.json" ] || $BIN bench capacity --serve "$(serve_flags $spec)" \
      $(WL_FLAGS "$wl") --num-requests "$CAP_N" --slo deadline --slo-file "$OUT/slo.json" \
      $SLO_FLAGS --start-qps "$CAP_START" --max-iterations "$CAP_ITERS" --no-progress \
      --out "$cap" 2>&1 | tail -1 | tee "$OUT/$wl/capacity-$spec.txt"
  done
  KNEE=$(python3 -c "import json; print(json.load(open('$OUT/$wl/capacity-off/capacity.json'))['result']['max_qps_under_slo'])")
  echo "$wl: knee (speculation off) $KNEE req/s" | tee "$OUT/$wl/knee.txt"
  # No load met the SLO (session 8: arxiv at D_d 50 ms on 2 cores, where one 512-token step
  # of chunked prefill alone outlasts the decode deadline): give KNEE_<workload> by hand.
  override=KNEE_$wl; KNEE=${!override:-$KNEE}
  if ! python3 -c "float('$KNEE')" 2>/dev/null; then
    echo "$wl: no knee; set KNEE_$wl=<req/s> to run the loads" >&2; continue
  fi
  factors=FACTORS_$wl; factors=${!factors:-$FACTORS}
  for factor in $factors; do
    qps=$(python3 -c "print(round($KNEE * $factor, 3))")
    for spec in off on; do
      dir=$OUT/$wl/$factor-$spec
      [ -f "$dir/bench/summary.json" ] && continue
      rm -rf "$dir"; mkdir -p "$dir"
      echo "$qps" > "$dir/qps.txt"
      uptime > "$dir/load-before.txt"
      $BIN serve --port "$PORT" $(serve_flags $spec) > "$dir/server.log" 2>&1 &
      pid=$!
      for _ in $(seq 1 600); do curl -sf "localhost:$PORT/health" >/dev/null && break; sleep 0.5; done
      $BIN bench run --url "http://127.0.0.1:$PORT" $(WL_FLAGS "$wl") --num-requests "$N" \
        --qps "$qps" --slo-file "$OUT/slo.json" $SLO_FLAGS --warmup "$WARMUP" --no-progress \
        --out "$dir/bench" > "$dir/bench.txt" 2>&1
      curl -s "localhost:$PORT/metrics" | grep -E '^metrum_spec_decode' > "$dir/spec_metrics.txt"
      uptime > "$dir/load-after.txt"
      kill "$pid"; wait "$pid" 2>/dev/null
      echo "$wl $factor $spec: $(tail -1 "$dir/bench.txt")"
    done
  done
  $BIN bench compare $OUT/$wl/*-off/bench $OUT/$wl/*-on/bench --out "$OUT/$wl/compare" \
    > "$OUT/$wl/compare.txt" 2>&1
done
uptime | tee "$OUT/load-end.txt"
