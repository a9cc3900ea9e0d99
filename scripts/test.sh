#!/usr/bin/env bash
# All tests. The interop tests need Python 3 with tools/requirements.txt. No GPU is needed: the CUDA
# kernels are compiled with NVRTC from PyPI's nvidia-cuda-nvrtc wheel (so a kernel that does not
# compile fails here), and the GPU tests (kernels' CUDA twins, the trainer's model on CUDA) run on the
# emulated CUDA device: libcuda and libcublas stand-ins that run our host code's calls and the
# kernels' own source on the CPU (kernels/emulator/device, built by tools/emulated_device.py; needs a
# C++17 compiler).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
cargo test --workspace

wheels="${INFINITY_CUDA_WHEELS:-$PWD/target/cuda-wheels}"
if [ ! -f "$wheels/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$wheels" \
        nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96
fi
python3 tools/emulated_device.py --out target/emulated-device
emulated="$PWD/target/emulated-device:$wheels/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
LD_LIBRARY_PATH="$emulated" INFINITY_CUDA_WHEELS="$wheels" cargo test -p infinity-kernels --features cuda
LD_LIBRARY_PATH="$emulated" INFINITY_CUDA_WHEELS="$wheels" \
    cargo test -p infinity-trainer --features cuda --test gpu_model
# the NCCL communicator builds (its two-GPU test says it skipped)
cargo test -p infinity-launcher --features cuda --test nccl
