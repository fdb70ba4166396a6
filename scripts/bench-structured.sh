#!/bin/bash
# A/B: 16 concurrent streams of 128 tokens, without and with a JSON schema on every request,
# interleaved, a fresh server per run (its log keeps the grammar's compile and mask times).
set -u
BIN=${BIN:-target/release/metrum}
OUT=${OUT:-target/bench-structured}
SCHEMA='{"response_format": {"type": "json_schema", "json_schema": {"name": "people", "schema": {"type": "array", "minItems": 30, "items": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"], "additionalProperties": false}}}}}'
PORT=18977
for round in ${ROUNDS:-1 2 3}; do
  for mode in plain schema; do
    dir=$OUT/$mode-$round
    rm -rf "$dir"; mkdir -p "$dir"
    uptime > "$dir/load-before.txt"
    $BIN serve --port $PORT --threads 2 --max-num-seqs 16 --max-model-len 1024 --kv-cache-memory 256MiB > "$dir/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do curl -sf localhost:$PORT/health >/dev/null && break; sleep 0.5; done
    extra=()
    [ "$mode" = schema ] && extra=(--extra-body "$SCHEMA")
    $BIN bench run --url http://127.0.0.1:$PORT --workload synthetic:prompt=fixed:64,output=fixed:128 \
      --num-requests 16 --qps 1000 --arrival constant --seed 1 --no-progress "${extra[@]}" --out "$dir/bench" > "$dir/bench.txt" 2>&1
    uptime > "$dir/load-after.txt"
    kill "$pid"; wait "$pid" 2>/dev/null
    echo "$mode-$round: done ($dir)"
  done
done
