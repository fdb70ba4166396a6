#!/bin/bash
# The speed half of issue 17: one stream, default model, n-gram K=2 on arXiv at length scale 0.1
# (prompts ~260 tokens, outputs ~29): 20 requests at a constant 0.25 req/s, so they run one at a
# time; off, on, off, on, a fresh server each. BIN and OUT may be set. Results: docs/results/speculative.md.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/metrum}; OUT=${OUT:-bench-out/spec-s15-one}; PORT=18981
SPEC='{"method":"ngram","num_speculative_tokens":2,"prompt_lookup_min":2,"prompt_lookup_max":4}'
mkdir -p $OUT
for round in 1 2; do for spec in off on; do
  dir=$OUT/$spec-$round; rm -rf $dir; mkdir -p $dir
  extra=""; [ $spec = on ] && extra="--speculative-config $SPEC"
  $BIN serve --port $PORT --threads 2 --max-model-len 2048 $extra > $dir/server.log 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do curl -sf localhost:$PORT/health >/dev/null && break; sleep 0.5; done
  $BIN bench run --url http://127.0.0.1:$PORT --workload trace:arxiv --length-scale 0.1 --seed 1 \
    --num-requests 20 --arrival constant --qps 0.25 --no-progress --out $dir/bench > $dir/bench.txt 2>&1
  curl -s localhost:$PORT/metrics | grep -E '^metrum_spec_decode' > $dir/spec_metrics.txt
  kill $pid; wait $pid 2>/dev/null
  python3 -c "
import json; c=json.load(open('$dir/bench/summary.json'))['client']
print('$spec-$round', 'TPOT mean ms', round(c['tpot_s']['mean']*1e3,2), 'decode tok/s', round(1/c['tpot_s']['mean'],1), 'TBT p50/p99', round(c['tbt_s']['p50']*1e3,1), round(c['tbt_s']['p99']*1e3,1), 'inter-delivery p50', round(c['inter_delivery_s']['p50']*1e3,1))"
  grep mean_acceptance $dir/spec_metrics.txt
done; done
