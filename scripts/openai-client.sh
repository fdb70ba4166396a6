#!/usr/bin/env bash
# The official `openai` Python client (pinned, in a venv under target/) against a live
# `metrum serve` on the default model: structured outputs, tools and refused fields, each
# result checked by independent code (jsonschema, Pydantic). `make test` runs it (test-openai).
#
# Env: METRUM (binary, default target/release/metrum). Needs the default model (`make model`).
set -euo pipefail
cd "$(dirname "$0")/.."

OPENAI_VERSION=3.51.0
PYDANTIC_VERSION=2.14.4
JSONSCHEMA_VERSION=4.26.0
VENV=target/openai-venv
OUT=target/openai-client
METRUM=${METRUM:-target/release/metrum}
CACHE=${METRUM_CACHE:-$HOME/.cache/metrum}
DEFAULT_MODEL=$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf

mkdir -p "$OUT"
[ -x "$METRUM" ] || cargo build --release -p metrum-server
[ -f "$DEFAULT_MODEL" ] || { echo "openai-client: the default model is missing ($DEFAULT_MODEL); run make model" >&2; exit 1; }

want="openai==$OPENAI_VERSION pydantic==$PYDANTIC_VERSION jsonschema==$JSONSCHEMA_VERSION"
if ! "$VENV/bin/pip" freeze 2>/dev/null | grep -qxF "openai==$OPENAI_VERSION" ||
   ! "$VENV/bin/pip" freeze 2>/dev/null | grep -qxF "pydantic==$PYDANTIC_VERSION"; then
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3-venv
    python3 -m venv "$VENV"
  fi
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $want
fi

LOG=$OUT/server.log
"$METRUM" serve --port 0 --threads 2 --max-model-len 2048 --kv-cache-memory 256MiB \
  >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT

fail() {
  echo "openai-client: $*" >&2
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

set +e
METRUM_URL="http://$ADDR" "$VENV/bin/python" scripts/openai_client_test.py
STATUS=$?
set -e
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ADDR/health")" = 200 ] ||
  fail "the server is not healthy after the run"
[ "$STATUS" = 0 ] || fail "the openai client tests failed (exit $STATUS)"
echo "openai-client: all passed"
