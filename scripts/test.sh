#!/usr/bin/env bash
# All tests. The interop tests need Python 3 with tools/requirements.txt. No GPU is needed: the CUDA
# kernels are compiled with NVRTC from PyPI's nvidia-cuda-nvrtc wheel (so a kernel that does not
# compile fails here) and their equivalence tests say they skipped without a device.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
cargo test --workspace

wheels="${INFINITY_CUDA_WHEELS:-$PWD/target/cuda-wheels}"
if [ ! -f "$wheels/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$wheels" \
        nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96
fi
LD_LIBRARY_PATH="$wheels/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}" INFINITY_CUDA_WHEELS="$wheels" \
    cargo test -p infinity-kernels --features cuda
# the NCCL communicator and the trainer's GPU code paths build (their GPU tests say they skipped)
cargo test -p infinity-launcher --features cuda --test nccl
cargo build -p infinity-trainer --features cuda
