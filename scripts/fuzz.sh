#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 60), starting from the
# committed seeds (fuzz/seeds/<target>); new inputs go to fuzz/corpus/<target> (ignored by
# git). One `cargo fuzz build` builds all targets; a crash, panic, OOM or timeout fails the
# script and leaves the input under fuzz/artifacts/<target>/ (reproduce in fuzz/ with
# `cargo +nightly fuzz run --sanitizer none --codegen-units 16 <target> artifacts/<target>/<file>`).
#
#   scripts/fuzz.sh [SECONDS]
#   FUZZ_TARGETS="gguf sse" scripts/fuzz.sh 600     # some targets, longer
#   FUZZ_SANITIZER=address scripts/fuzz.sh          # ASan (default none: see below)
#
# The sanitizer defaults to none: the code under test is safe Rust, so what the fuzzer can
# find is a panic, an abort, unbounded allocation or a hang, which libFuzzer catches without
# ASan, and an ASan build of candle + tokenizers roughly doubles the build and slows every
# run. Use FUZZ_SANITIZER=address for long runs.
set -euo pipefail

SECONDS_PER_TARGET=${1:-60}
TARGETS=${FUZZ_TARGETS:-"request_json chat_template gguf sse structured_schema tool_parsers"}
SANITIZER=${FUZZ_SANITIZER:-none}
CARGO_FUZZ_VERSION=0.13.2
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if ! [[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] || ((SECONDS_PER_TARGET < 1)); then
    echo "usage: scripts/fuzz.sh [SECONDS]  (a positive whole number of seconds per target)" >&2
    exit 2
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: cargo-fuzz needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
if [[ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

cd "$ROOT/fuzz"
# Optimized, with debug assertions and overflow checks (cargo-fuzz's default without -O): an
# integer overflow in a parser is a bug worth a crash. 16 codegen units: the build is most of
# the cost on a small CI machine.
FLAGS=(--sanitizer "$SANITIZER" --codegen-units 16)
started=$(date +%s)
cargo +nightly fuzz build "${FLAGS[@]}"
echo "fuzz.sh: built every target in $(($(date +%s) - started)) s"

# What a remote CI log needs to reproduce a failure without its artifacts: the panic message
# (the log's tail is often all backtrace), the tail, and each new crashing input in base64
# (session 4 had to guess CI's input from the panic site alone).
report_failure() {
    local target=$1 log="corpus/$1.log"
    grep -E -A3 "panicked at|ERROR: libFuzzer|SUMMARY:" "$log" | head -n 20 >&2 || true
    tail -n 20 "$log" >&2
    for input in $(grep -oE "artifacts/$target/[A-Za-z0-9_-]+" "$log" | sort -u); do
        [[ -f $input ]] || continue
        echo "fuzz.sh: $input ($(wc -c <"$input") bytes), base64:" >&2
        head -c 4096 "$input" | base64 -w 0 >&2
        echo >&2
    done
}

failed=()
for target in $TARGETS; do
    mkdir -p "corpus/$target"
    echo "fuzz.sh: $target for $SECONDS_PER_TARGET s"
    target_started=$(date +%s)
    # -timeout: one input may take at most 10 s (a hang); -rss_limit_mb: memory per process,
    # which also bounds any single allocation (-malloc_limit_mb defaults to it).
    if ! cargo +nightly fuzz run "${FLAGS[@]}" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 2>"corpus/$target.log"; then
        failed+=("$target")
        report_failure "$target"
    else
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)' "corpus/$target.log" || true
    fi
    echo "fuzz.sh: $target took $(($(date +%s) - target_started)) s"
done
echo "fuzz.sh: done in $(($(date +%s) - started)) s"
if ((${#failed[@]})); then
    echo "fuzz.sh: FAILED: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
