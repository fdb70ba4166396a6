#!/usr/bin/env bash
# Forward pass alone, in process, no HTTP: Metrum (engine/examples/bench_forward.rs) against
# llama.cpp (llama-cpp-python, scripts/bench_llamacpp_inprocess.py) on the same GGUF with the
# same thread count, alternating, REPEATS times each. Prints every run; issue notes quote them.
#
#   scripts/compare-inprocess.sh            (GGUF, THREADS, REPEATS, LLAMA_VENV from the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF=${GGUF:-$HOME/.cache/metrum/models/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${THREADS:-$(nproc)}
REPEATS=${REPEATS:-3}
LLAMA_VENV=${LLAMA_VENV:-target/llamacpp-venv}
cargo build --release -p metrum-engine --example bench_forward
if ! "$LLAMA_VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  python3 -m venv "$LLAMA_VENV"
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$LLAMA_VENV/bin/pip" install --quiet 'llama-cpp-python==0.3.36'
fi
echo "threads $THREADS, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), llama-cpp-python $("$LLAMA_VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')"
for rep in $(seq 1 "$REPEATS"); do
  echo "== metrum, run $rep"
  target/release/examples/bench_forward "$GGUF" --threads "$THREADS" --repeat 3 --decode 200 | grep -E "prefill|decode"
  echo "== llama.cpp (llama-cpp-python), run $rep"
  "$LLAMA_VENV/bin/python" scripts/bench_llamacpp_inprocess.py "$GGUF" "$THREADS" --repeat 3 --decode 200
done
