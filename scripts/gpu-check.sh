#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and CUDA 13: build the CUDA twins, run every GPU test (each kernel
# against its CPU twin; NVRTC compilation for the device) and print a summary. Meant to fit one device
# run: the build is the long part (about 2 minutes from scratch on 16 cores).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi not found"
# CUDA's headers for NVRTC: the toolkit's, else the pip wheel's
if [ -z "${INFINITY_CUDA_INCLUDE:-}" ] && [ -d /usr/local/cuda/include ]; then
    export INFINITY_CUDA_INCLUDE=/usr/local/cuda/include
fi
echo "== build"
cargo build --release -p infinity-kernels --features cuda 2>&1 | tail -2
echo "== GPU tests (kernels against their CPU twins)"
cargo test --release -p infinity-kernels --features cuda --test cuda_twins --test cuda_compile -- --nocapture --test-threads 1 2>&1 \
    | grep -E "max relative error|skipped|ms$|^test |test result|panicked|error" | tee /tmp/gpu-check-tests.log
status=${PIPESTATUS[0]}
echo "== summary"
echo "tests: $(grep -c '\.\.\. ok' /tmp/gpu-check-tests.log) passed, $(grep -c 'FAILED' /tmp/gpu-check-tests.log) failed, $(grep -c 'skipped' /tmp/gpu-check-tests.log) skipped"
echo "elapsed: $(( $(date +%s) - start )) s"
exit "$status"
