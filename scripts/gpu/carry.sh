#!/usr/bin/env bash
# Packs the binary a GPU machine runs (it has no Rust toolchain): the CUDA release build, stripped
# and gzipped to carry/metrum.gz (~27 MB; carry/ is git-ignored and travels only when named).
#
#   scripts/gpu/carry.sh          # cold: ~14 min on 2 cores (make build-cuda), warm: seconds
#
# Then, on the device tool, one call (the budget leaves ~60 s of the call's 590 s for the start):
#   run(carry=["carry/metrum.gz"], timeout_s=590, command=
#     "gunzip -c carry/metrum.gz > /tmp/metrum && chmod +x /tmp/metrum && export PYTHONUNBUFFERED=1;
#      BUDGET=525 bash scripts/gpu-check.sh --bin /tmp/metrum --out $OUT/gpu.md > $OUT/log.txt 2>&1;
#      echo rc $?; tail -c 10500 $OUT/gpu.md")
# and commit what comes back as docs/results/gpu.md (+ the raw runs in gpu-runs.tgz, if wanted).
set -euo pipefail
cd "$(dirname "$0")/../.."
make build-cuda
mkdir -p carry
strip -o carry/metrum target-cuda/release/metrum
gzip -f -1 carry/metrum
ls -la carry/metrum.gz
