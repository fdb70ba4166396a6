#!/usr/bin/env bash
# Issue 20's CPU speed table: Metrum against llama.cpp's llama-server on an OLMoE-1B-7B-shaped
# mixture of experts (GGUF `qwen3moe`: 16 layers, hidden 2048, 64 experts of width 1024, top 8,
# 16 heads of 128; random weights; Q4_K_M and Q8_0), same machine, same files, same threads:
# single-stream decode, a 512-token prefill and 16 streams, with the bytes of the active experts
# per token against the read bandwidth measured in the same run. It is scripts/compare-cpu-sizes.sh
# with SHAPES=olmoe (one home for the runs, the floors and the table).
#
#   scripts/compare-cpu-moe.sh [OUT_DIR]      (default bench-out/cpu-moe-<timestamp>)
#
# Knobs: those of compare-cpu-sizes.sh (TYPES, THREADS, REPEATS, GGUF_DIR, LLAMA_VENV); RESULTS
# defaults to docs/results/cpu-moe.md. The GGUFs (7.3 GB Q8_0 + 4.2 GB Q4_K_M in GGUF_DIR) are
# written on the first run (~10 min on 2 cores) and kept; the source is written as Q8_0 and
# Q4_K_M requantized from it (SOURCE_TYPE=f16 for llama.cpp's usual f16 route: +13.8 GB of disk).
# Cost on 2 cores once they exist: ~6 min per type and repeat.
set -euo pipefail
cd "$(dirname "$0")/.."
export SHAPES=olmoe
export SOURCE_TYPE=${SOURCE_TYPE:-Q8_0}
export RESULTS=${RESULTS-docs/results/cpu-moe.md}
exec bash scripts/compare-cpu-sizes.sh "${1:-bench-out/cpu-moe-$(date +%Y%m%d-%H%M%S)}"
