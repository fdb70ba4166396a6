#!/usr/bin/env bash
# Soak (issues 9, 22): `metrum bench run` and a chaos client (metrum-soak traffic) hold a
# `metrum serve` at ~80% of its measured capacity for M minutes; the chaos mixes in cut
# streams, malformed and oversized requests, bursts of aborts, requests that end exactly
# at max_model_len, and requests that must complete under a constraint: a json_schema
# `response_format` (streamed and not; the text must parse with the schema's keys), `tools`
# with `tool_choice: "required"` (the call's arguments must parse; left out, with the reason
# logged and recorded, for a model without a chat template such as synthetic:tiny), and
# streams with `speculative: false`.
# The server drafts with n-gram speculation (K=2, prompt lookup 1..3) unless
# --no-speculation; soak.json records the config, and drafts must have been made.
# Then `metrum-soak check` asserts: the server is alive; once idle every KV block is free
# (metrum_kv_cache_usage_ratio == 0, nothing running or waiting); its RSS grew at most
# --rss-growth-mib after the warm-up; every request both clients sent is accounted for
# exactly once (completed, aborted or rejected) and the server's metrum_requests_total
# agrees. Finally SIGTERM must drain it to exit 0.
#
#   scripts/soak.sh [--minutes M] [--model SPEC] [--qps Q] [--out DIR]
#                   [--serve-args "..."] [--rss-growth-mib N] [--fraction F]
#                   [--start-qps Q0] [--probe-seconds S] [--ttft-slack S]
#                   [--capacity-args "..."] [--no-speculation]
#
# --no-speculation: serve without speculative decoding (another config: this flag plus
# --serve-args "--speculative-config ..."; soak.json then records none).
# --minutes: soak length (default 30). --model: any `metrum serve --model` spec (default:
# the default model; CI uses synthetic:tiny). --serve-args: more `metrum serve` flags (they
# win over the soak's own). --qps: skip the capacity search and run the
# benchmark at Q. Results: DIR (default a new /tmp/metrum-soak.*): capacity/, bench/,
# chaos.json, metrics-*.prom, server.log and soak.json, the verdict.
#
# Load: the benchmark runs at --fraction (0.7) of the measured capacity and the chaos client
# at a quarter of the benchmark's rate; its requests are light (cut streams, refusals) but for
# the exact-context prefills, adding ~15% of the benchmark's work, so the server carries
# about 80% of its capacity. (Measured: with the benchmark itself at 80% the total was above
# the knee and the queue grew for the whole soak.)
#
# The capacity is `metrum bench capacity` with a deadline SLO (TBT 200 ms, TTFT slack
# --ttft-slack = 2 s, P99 miss rate 10%), one seed per probe and 10% granularity (a soak
# needs the knee, not its third digit), starting at --start-qps (1). Each probe sends
# arrivals for --probe-seconds (45): an overload of e shows as e x S of extra queueing by the
# end of a probe of S seconds, so a probe detects overloads above slack / S, and short probes
# pass far above the knee (15 s probes with 2 s slack passed 64 QPS on synthetic:tiny where
# 51 QPS + chaos built a queue).
#
# RSS bound: 64 MiB over the first sample after the warm-up (the first fifth of the run, at
# least 20 s). The KV cache is allocated zeroed, so its pages become resident only as blocks
# are first used, and prefix caching hands out never-used blocks before evicting cached
# ones: a 1 GiB cache grows RSS for minutes without any leak. So the soak's server gets
# --num-kv-blocks 512 (8192 tokens: SmolLM2 needs ~3k at its capacity on 2 cores; 370 MiB
# of f32 KV for it, 16 MiB for synthetic:tiny), which traffic touches within the warm-up.
# What may still grow after that is allocator fragmentation and per-thread arenas.
set -euo pipefail

MINUTES=30
MODEL=""
QPS=""
OUT=""
SERVE_ARGS=""
START_QPS=1
PROBE_SECONDS=45
TTFT_SLACK=2
FRACTION=0.7
CAPACITY_ARGS="--slo deadline --tbt-slo 0.2 --miss-rate-slo 0.1 --repeats 1 --granularity-pct 10 --max-iterations 8"
RSS_GROWTH_MIB=64
MAX_MODEL_LEN=512
BODY_LIMIT=1048576
SPECULATIVE_CONFIG='{"method":"ngram","num_speculative_tokens":2,"prompt_lookup_min":1,"prompt_lookup_max":3}'

while (($#)); do
    case "$1" in
        --minutes) MINUTES=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        --qps) QPS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --serve-args) SERVE_ARGS=$2; shift 2 ;;
        --capacity-args) CAPACITY_ARGS=$2; shift 2 ;;
        --start-qps) START_QPS=$2; shift 2 ;;
        --probe-seconds) PROBE_SECONDS=$2; shift 2 ;;
        --ttft-slack) TTFT_SLACK=$2; shift 2 ;;
        --fraction) FRACTION=$2; shift 2 ;;
        --rss-growth-mib) RSS_GROWTH_MIB=$2; shift 2 ;;
        --no-speculation) SPECULATIVE_CONFIG=""; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -n $SPECULATIVE_CONFIG && $SERVE_ARGS == *--speculative-config* ]]; then
    echo "soak.sh: --serve-args sets --speculative-config; add --no-speculation to use it" >&2
    exit 2
fi
if ! [[ $MINUTES =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "soak.sh: --minutes must be a number, got $MINUTES" >&2
    exit 2
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [[ -z ${METRUM_SOAK_NO_BUILD:-} ]]; then
    cargo build --release -p metrum-server -p metrum-bench --bins
fi
METRUM=$ROOT/target/release/metrum
SOAK=$ROOT/target/release/metrum-soak
OUT=${OUT:-$(mktemp -d /tmp/metrum-soak.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log() { echo "soak.sh [$(date +%H:%M:%S)]: $*"; }

serve=(serve --port 0 --max-model-len "$MAX_MODEL_LEN" --max-request-body-size "$BODY_LIMIT"
    --num-kv-blocks 512)
[[ -n $MODEL ]] && serve+=(--model "$MODEL")
[[ -n $SPECULATIVE_CONFIG ]] && serve+=(--speculative-config "$SPECULATIVE_CONFIG")
# shellcheck disable=SC2206 # the extra serve flags are words on purpose
serve+=($SERVE_ARGS)
log "starting: metrum ${serve[*]} (log: $OUT/server.log)"
"$METRUM" "${serve[@]}" >"$OUT/server.log" 2>&1 &
PID=$!
cleanup() {
    if kill -0 "$PID" 2>/dev/null; then
        kill -KILL "$PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

URL=""
for _ in $(seq 600); do
    URL=$(grep -o 'listening on http://[0-9.:]*' "$OUT/server.log" | head -n1 | sed 's/listening on //') || true
    [[ -n $URL ]] && break
    kill -0 "$PID" 2>/dev/null || { log "the server exited:"; tail -n 20 "$OUT/server.log"; exit 1; }
    sleep 1
done
[[ -n $URL ]] || { log "the server never said where it listens"; exit 1; }
"$SOAK" wait --url "$URL" --timeout 600
log "server $PID ready at $URL"

if [[ -z $QPS ]]; then
    log "measuring capacity: metrum bench capacity $CAPACITY_ARGS"
    # shellcheck disable=SC2086 # CAPACITY_ARGS holds several flags
    "$METRUM" bench capacity --url "$URL" --out "$OUT/capacity" --no-progress $CAPACITY_ARGS \
        --ttft-slack "$TTFT_SLACK" --start-qps "$START_QPS" --duration "$PROBE_SECONDS"
    QPS=$("$SOAK" qps --capacity "$OUT/capacity/capacity.json" --fraction "$FRACTION")
fi
CHAOS_QPS=$(awk -v q="$QPS" 'BEGIN { printf "%.3f", q / 4 }')
DURATION=$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 }')
WARMUP=$(awk -v d="$DURATION" 'BEGIN { w = d / 5; if (w < 20) w = 20; printf "%d", w }')
log "soak: $DURATION s, benchmark at $QPS QPS + chaos at $CHAOS_QPS QPS, warm-up $WARMUP s, speculative config: ${SPECULATIVE_CONFIG:-none}"

"$SOAK" scrape --url "$URL" --out "$OUT/metrics-before.prom"
"$METRUM" bench run --url "$URL" --qps "$QPS" --duration "$DURATION" --warmup "$WARMUP" \
    --seed 1 --tbt-slo 0.2 --ttft-slack "$TTFT_SLACK" --out "$OUT/bench" --no-progress \
    >"$OUT/bench.log" 2>&1 &
BENCH=$!
"$SOAK" traffic --url "$URL" --duration "$DURATION" --qps "$CHAOS_QPS" --seed 1 \
    --pid "$PID" --body-limit "$BODY_LIMIT" --out "$OUT/chaos.json" >"$OUT/chaos.log" 2>&1 &
CHAOS=$!
bench_rc=0
chaos_rc=0
wait "$BENCH" || bench_rc=$?
wait "$CHAOS" || chaos_rc=$?
cat "$OUT/bench.log" "$OUT/chaos.log"
if ((bench_rc != 0 || chaos_rc != 0)); then
    log "a client failed (bench rc $bench_rc, chaos rc $chaos_rc)"
    exit 1
fi

check_rc=0
spec_args=()
[[ -n $SPECULATIVE_CONFIG ]] && spec_args=(--speculative-config "$SPECULATIVE_CONFIG")
"$SOAK" check --url "$URL" --pid "$PID" --bench-dir "$OUT/bench" --chaos "$OUT/chaos.json" \
    --before "$OUT/metrics-before.prom" --warmup "$WARMUP" --rss-growth-mib "$RSS_GROWTH_MIB" \
    "${spec_args[@]}" --out "$OUT/soak.json" || check_rc=$?
"$SOAK" scrape --url "$URL" --out "$OUT/metrics-after.prom" || true

log "SIGTERM: the idle server must drain and exit 0"
kill -TERM "$PID"
drain_rc=0
wait "$PID" || drain_rc=$?
if ((drain_rc != 0)); then
    log "FAIL: the server exited $drain_rc after SIGTERM"
    exit 1
fi
if ((check_rc != 0)); then
    log "FAIL: see $OUT/soak.json"
    exit 1
fi
log "PASS: $OUT/soak.json"
