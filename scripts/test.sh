#!/usr/bin/env bash
# All tests. The interop tests need Python 3 with tools/requirements.txt. No GPU is needed: the CUDA
# kernels are compiled with NVRTC from PyPI's nvidia-cuda-nvrtc wheel (so a kernel that does not
# compile fails here), and the GPU tests (the kernels' CUDA twins, the model on CUDA, the NCCL
# communicator and data parallelism over it) run on the emulated CUDA device: libcuda, libcublas and
# libnccl stand-ins that run our host code's calls and the kernels' own source on the CPU
# (kernels/emulator/device, built by tools/emulated_device.py; needs a C++17 compiler).
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests read the console and start launches of their own: a timestamped console (INFINITY_LOG_TIME)
# or a scheduler's variables (run from inside a SLURM allocation or a torchrun-style job) would change
# what they see.
for v in $(compgen -e); do
    case "$v" in
        INFINITY_LOG_TIME | SLURM_* | PET_* | RANK | LOCAL_RANK | WORLD_SIZE | LOCAL_WORLD_SIZE | GROUP_RANK | \
            MASTER_ADDR | MASTER_PORT | TORCHELASTIC_* | JOB_COMPLETION_INDEX) unset "$v" ;;
    esac
done
python3 -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
cargo test --workspace

wheels="${INFINITY_CUDA_WHEELS:-$PWD/target/cuda-wheels}"
if [ ! -f "$wheels/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$wheels" \
        nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96
fi
python3 tools/emulated_device.py --out target/emulated-device
on_device() { # command...: run with the emulated device (and the real NVRTC) on the library path
    LD_LIBRARY_PATH="$PWD/target/emulated-device:$wheels/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}" \
        INFINITY_CUDA_WHEELS="$wheels" "$@"
}
on_device cargo test -p infinity-kernels --features cuda
# the kernel benchmark's own code, every row once at small shapes (its figures mean nothing here)
INFINITY_BENCH_SMOKE=1 INFINITY_BENCH_PYTHON=none on_device \
    cargo test -p infinity-kernels --features cuda --bench cuda_kernels
on_device cargo test -p infinity-trainer --features cuda --test gpu_model --test gpu_sample --test gpu_memory
# the training-step benchmark and its per-kernel profile on the device, one tiny step
on_device cargo run -q -p infinity-trainer --features cuda -- model bench --preset tiny --batch 2 --bf16 \
    --profile --budget demo5 --steps 1 --device cuda --peak-tflops 790
# the NCCL communicator (collectives on 1, 2 and 4 ranks, the watchdog's stall drill), and training
# over NCCL on two emulated GPUs against one
INFINITY_EMULATED_GPUS=4 on_device cargo test -p infinity-launcher --features cuda --test nccl
on_device cargo test -p infinity-trainer --features cuda --test distributed nccl
