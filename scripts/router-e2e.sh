#!/usr/bin/env bash
# Metrum behind a real router: three `metrum serve` replicas (synthetic:tiny) on loopback behind
# SMG (PyPI `smg`, SGLang's Rust model gateway, pinned, in a venv under target/). Checks, each
# on the replicas' own /metrics:
#   1. SMG reads the vLLM-named gauges (its /get_loads shows a replica's running requests);
#   2. a load-aware policy (power_of_two over those loads) spreads concurrent requests;
#   3. cache_aware sends requests sharing a long prefix to one replica, which hits its prefix
#      cache;
#   4. `metrum bench --url <router>` reports that it measured through a router (R9);
#   5. a replica killed mid-run: every request is answered or counted as failed (none dropped).
# `make test` runs it (test-scale-out). Env: METRUM (binary, default target/release/metrum).
set -euo pipefail
cd "$(dirname "$0")/.."

SMG_VERSION=1.13.0
VENV=target/router-venv
OUT=target/router-e2e
METRUM=${METRUM:-target/release/metrum}
SECONDS=0

[ -x "$METRUM" ] || cargo build --release -p metrum-server
if ! "$VENV/bin/pip" freeze 2>/dev/null | grep -qxF "smg==$SMG_VERSION"; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "smg==$SMG_VERSION"
fi
rm -rf "$OUT" && mkdir -p "$OUT"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
fail() { echo "router-e2e: FAIL: $*" >&2; exit 1; }

# A replica on a free port; prints its base URL once /health says ready.
start_replica() {
  local log=$OUT/replica-$1.log
  "$METRUM" serve --model synthetic:tiny --port 0 --threads 1 --max-num-seqs 8 >"$log" 2>&1 &
  PIDS+=($!)
  echo $! >"$OUT/replica-$1.pid"
  local url=""
  for _ in $(seq 100); do
    url=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$log" | head -1 | sed 's/\x1b\[[0-9;]*m//g')
    [ -n "$url" ] && curl -sf "$url/health" >/dev/null && { echo "$url"; return; }
    sleep 0.1
  done
  fail "replica $1 did not start: $(tail -5 "$log")"
}

# One metric's value on a replica (sum over its series).
metric() { curl -sf "$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }'; }
finished() { metric "$1" metrum_requests_total; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ROUTER_PORT=$(free_port)
ROUTER=http://127.0.0.1:$ROUTER_PORT
start_router() {
  "$VENV/bin/smg" launch --host 127.0.0.1 --port "$ROUTER_PORT" --worker-urls "${REPLICAS[@]}" \
    --policy "$1" --load-monitor-interval 1 --prometheus-host 127.0.0.1 --prometheus-port "$(free_port)" --log-level warn \
    >"$OUT/smg-$1.log" 2>&1 &
  ROUTER_PID=$!
  PIDS+=($ROUTER_PID)
  for _ in $(seq 100); do
    curl -sf "$ROUTER/v1/models" | grep -q synthetic && return
    sleep 0.2
  done
  fail "SMG ($1) did not come up: $(tail -5 "$OUT/smg-$1.log")"
}
stop_router() { kill "$ROUTER_PID"; wait "$ROUTER_PID" 2>/dev/null || true; }

complete() { # prompt max_tokens -> the routed replica (SMG's header)
  curl -sf -D - -o /dev/null "$ROUTER/v1/completions" -H 'content-type: application/json' \
    -d "{\"model\":\"synthetic:tiny\",\"prompt\":\"$1\",\"max_tokens\":$2,\"ignore_eos\":true}" |
    tr -d '\r' | sed -n 's/^x-smg-routed-worker-id: //Ip'
}

REPLICAS=()
for i in 0 1 2; do REPLICAS+=("$(start_replica $i)"); done
echo "replicas: ${REPLICAS[*]}"

# 1 + 2. Load-aware: 24 concurrent long generations; SMG's load monitor must see Metrum's
# running requests (vllm:num_requests_running) and every replica must get work.
start_router power_of_two
before=(); for r in "${REPLICAS[@]}"; do before+=("$(finished "$r")"); done
CLIENTS=()
for i in $(seq 24); do complete "load request $i" 400 >"$OUT/load-$i.route" & CLIENTS+=($!); done
seen_load=0
for _ in $(seq 30); do
  running=$(curl -sf "$ROUTER/get_loads" | python3 -c 'import json,sys; print(sum(l["num_running_reqs"] for l in json.load(sys.stdin)["loads"]))')
  [ "$running" -gt 0 ] && { seen_load=$running; break; }
  sleep 0.2
done
for pid in "${CLIENTS[@]}"; do wait "$pid" || fail "a load-aware request failed"; done
[ "$seen_load" -gt 0 ] || fail "SMG's /get_loads never saw a running request: it does not read Metrum's vLLM gauges"
spread=""
for i in 0 1 2; do
  got=$(( $(finished "${REPLICAS[$i]}") - ${before[$i]} ))
  spread="$spread $got"
  [ "$got" -gt 0 ] || fail "load-aware: replica $i got none of 24 concurrent requests (split:$spread)"
done
echo "ok load-aware (power_of_two on vLLM gauges, SMG saw $seen_load running): 24 concurrent requests split$spread"
stop_router

# 3. Cache-aware: 8 requests sharing a ~3000-character prefix, one at a time.
start_router cache_aware
prefix=$(python3 -c 'print(" ".join(f"shared context sentence number {i}." for i in range(90)))')
hits_before=(); before=()
for r in "${REPLICAS[@]}"; do hits_before+=("$(metric "$r" metrum_prefix_cache_hits_total)"); before+=("$(finished "$r")"); done
routes=$(for i in $(seq 8); do complete "$prefix question $i" 4; done | sort | uniq -c)
[ "$(echo "$routes" | grep -c .)" -eq 1 ] || fail "cache-aware: the shared-prefix requests went to several replicas: $routes"
for i in 0 1 2; do
  got=$(( $(finished "${REPLICAS[$i]}") - ${before[$i]} ))
  if [ "$got" -gt 0 ]; then
    [ "$got" -eq 8 ] || fail "cache-aware: replica $i finished $got of 8"
    hits=$(python3 -c "print(int($(metric "${REPLICAS[$i]}" metrum_prefix_cache_hits_total) - ${hits_before[$i]}))")
    [ "$hits" -gt 0 ] || fail "cache-aware: replica $i took the shared prefix but its prefix cache never hit"
    echo "ok cache-aware: 8/8 shared-prefix requests on replica $i, $hits prompt tokens hit its prefix cache"
  fi
done

# 4. The bench through the router: its report must say so.
"$METRUM" bench run --url "$ROUTER" --tokenizer "${REPLICAS[0]}" --workload synthetic:prompt=fixed:64,output=fixed:16 \
  --num-requests 12 --qps 6 --no-progress --out "$OUT/bench" >"$OUT/bench.log" 2>&1 || fail "bench through the router: $(tail -5 "$OUT/bench.log")"
grep -q "measured through a router" "$OUT/bench/report.md" || fail "bench report does not say it went through a router"
echo "ok bench --url router: $(grep -o 'measured through a router[^|]*' "$OUT/bench/report.md" | head -1)"

# 5. A replica killed mid-run: nothing dropped.
"$METRUM" bench run --url "$ROUTER" --tokenizer "${REPLICAS[0]}" --workload synthetic:prompt=fixed:64,output=fixed:200 \
  --num-requests 40 --qps 10 --request-timeout 30 --no-progress --out "$OUT/bench-kill" >"$OUT/bench-kill.log" 2>&1 &
BENCH=$!
sleep 1.5
kill -9 "$(cat "$OUT/replica-2.pid")"
wait "$BENCH" || fail "bench with a killed replica: $(tail -5 "$OUT/bench-kill.log")"
python3 - "$OUT/bench-kill" <<'PY' || fail "bench with a killed replica dropped requests"
import json, sys
d = sys.argv[1]
lines = [json.loads(l) for l in open(f"{d}/requests.jsonl")]
c = json.load(open(f"{d}/summary.json"))["client"]["requests"]
assert len(lines) == 40, f"{len(lines)} lines for 40 requests"
assert c["launched"] == 40 and c["completed"] + c["failed"] + c["aborted"] == 40, c
print(f"ok replica killed mid-run: 40 sent, {c['completed']} completed, {c['failed']} failed, {c['aborted']} aborted, 0 dropped")
PY
echo "router-e2e: all checks passed in ${SECONDS}s"
