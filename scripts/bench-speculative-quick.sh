#!/bin/bash
# Reduced case study of docs/results/speculative.md (session 8): arxiv only, fixed loads 0.25/0.5/1 req/s,
# 40 requests per run, n-gram K=2, speculation off and on; ~13 min on a quiet 2-core machine.
# Reduced case study, arxiv only, fixed loads (the capacity search found no load meeting P99 miss <= 0.1 at D_d 50 ms).
# Needs target/bench-speculative/slo.json first (`metrum profile-prefill --serve "--threads 2 --max-model-len 2048" --max-exp 10 --out target/bench-speculative/slo.json`).
set -u
BIN=target/release/metrum; OUT=target/bench-speculative/arxiv-fixed; PORT=18979
SPEC='{"method":"ngram","num_speculative_tokens":2,"prompt_lookup_min":2,"prompt_lookup_max":4}'
SLOF="--slo-file target/bench-speculative/slo.json --tbt-slo 0.1 --ttft-slack 1"
mkdir -p $OUT
for qps in 0.25 0.5 1.0; do for spec in off on; do
  dir=$OUT/$qps-$spec; rm -rf $dir; mkdir -p $dir; uptime > $dir/load-before.txt
  extra=""; [ $spec = on ] && extra="--speculative-config $SPEC"
  $BIN serve --port $PORT --threads 2 --max-model-len 2048 $SLOF $extra > $dir/server.log 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do curl -sf localhost:$PORT/health >/dev/null && break; sleep 0.5; done
  $BIN bench run --url http://127.0.0.1:$PORT --workload trace:arxiv --length-scale 0.1 --seed 1 \
    --num-requests 40 --qps $qps $SLOF --no-progress --out $dir/bench > $dir/bench.txt 2>&1
  curl -s localhost:$PORT/metrics | grep -E '^metrum_spec_decode' > $dir/spec_metrics.txt
  uptime > $dir/load-after.txt; kill $pid; wait $pid 2>/dev/null
done; done
$BIN bench compare $OUT/*-off/bench $OUT/*-on/bench --out $OUT/compare > $OUT/compare.txt 2>&1
echo done
