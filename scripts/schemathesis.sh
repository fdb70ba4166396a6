#!/usr/bin/env bash
# API conformance: schemathesis fuzzes a live `metrum serve` against the server's own
# /openapi.json and fails on any 5xx, and on any status, content type, header or body the
# document does not declare. `make test` runs it (target test-api); about a minute on 2 cores.
#
# Serves the default model when it is cached (it has a chat template, so chat is fuzzed end to
# end), else synthetic:tiny (chat then always answers 400: no template). With CI=true a missing
# default model is an error, like the Rust tests.
#
# Env: METRUM (binary, default target/release/metrum), SCHEMATHESIS_EXAMPLES (per operation,
# default 100), SCHEMATHESIS_SEED (default 20261124; set another to explore).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV=target/schemathesis-venv
OUT=target/schemathesis
METRUM=${METRUM:-target/release/metrum}
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-100}
SEED=${SCHEMATHESIS_SEED:-20261124}
CACHE=${METRUM_CACHE:-$HOME/.cache/metrum}
DEFAULT_MODEL=$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf

mkdir -p "$OUT"
[ -x "$METRUM" ] || cargo build --release -p metrum-server

# A pinned schemathesis in its own venv under target/ (reused while the version matches).
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 ships venv separately.
    apt-get update -qq && apt-get install -y -qq python3-venv
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

if [ -f "$DEFAULT_MODEL" ]; then
  MODEL_ARGS=()
elif [ "${CI:-}" = "true" ]; then
  echo "schemathesis: CI=true but the default model is missing at $DEFAULT_MODEL" >&2
  exit 1
else
  echo "schemathesis: default model not cached ($DEFAULT_MODEL); fuzzing synthetic:tiny instead"
  MODEL_ARGS=(--model synthetic:tiny)
fi

# Small limits keep every generation short: the point is the contract, not throughput.
LOG=$OUT/server.log
"$METRUM" serve "${MODEL_ARGS[@]}" --port 0 --threads 2 --max-model-len 512 \
  --kv-cache-memory 256MiB --max-output-tokens-per-request 64 >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT

fail() {
  echo "schemathesis: $*" >&2
  echo "--- server log (last 40 lines) ---" >&2
  tail -n 40 "$LOG" >&2
  exit 1
}

ADDR=
for _ in $(seq 600); do
  ADDR=$(grep -o 'listening on http://[0-9.:]*' "$LOG" | head -n 1 | sed 's#.*http://##') || true
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER" 2>/dev/null || fail "the server exited before listening"
  sleep 0.1
done
[ -n "$ADDR" ] || fail "the server never said where it listens"
for _ in $(seq 1200); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ADDR/health")" = 200 ] && break
  kill -0 "$SERVER" 2>/dev/null || fail "the server exited while loading"
  sleep 0.1
done

echo "schemathesis $SCHEMATHESIS_VERSION against http://$ADDR (seed $SEED, $EXAMPLES examples per operation)"
set +e
# Run inside $OUT: schemathesis keeps a .schemathesis/ cache in its working directory.
(cd "$OUT" && "../schemathesis-venv/bin/schemathesis" run "http://$ADDR/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "$EXAMPLES" --seed "$SEED" --generation-database none \
  --workers 1 --request-timeout 60 --no-color --report junit --report-dir .)
STATUS=$?
set -e

# The server must still be healthy, then drain on SIGTERM and exit 0.
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ADDR/health")" = 200 ] ||
  fail "the server is not healthy after the run"
kill -TERM "$SERVER"
set +e
wait "$SERVER"
EXIT=$?
set -e
trap - EXIT
[ "$EXIT" = 0 ] || fail "the server exited $EXIT after SIGTERM"
[ "$STATUS" = 0 ] || fail "schemathesis found failures (exit $STATUS); report in $OUT"
echo "schemathesis: no failures"
