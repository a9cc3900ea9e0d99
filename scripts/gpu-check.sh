#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and CUDA 13: build the CUDA pieces, run every GPU test (each kernel
# against its CPU twin, the model on the GPU against the CPU model and the golden folders, the NCCL
# communicator, NCCL data parallelism when there are 2+ GPUs), the headline-kernel benchmarks and a
# training-step benchmark side by side with PyTorch eager, and print a summary. Meant to fit one
# device run (8 minutes on one H200). One build: the dev profile (dependencies optimised; the GPU does
# the work), reused by the tests and the benchmarks.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
log=${GPU_CHECK_LOG:-/tmp/gpu-check.log}
: >"$log"
echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi not found"
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
# CUDA's headers for NVRTC: the toolkit's, else the pip wheel's
if [ -z "${INFINITY_CUDA_INCLUDE:-}" ] && [ -d /usr/local/cuda/include ]; then
    export INFINITY_CUDA_INCLUDE=/usr/local/cuda/include
fi
# cuBLAS, NVRTC: the toolkit's libraries when they are not on the loader path already
if [ -d /usr/local/cuda/lib64 ]; then
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
fi
# NCCL from the pip wheel is libnccl.so.2 only; cudarc opens libnccl.so
nccl_dir=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null || true)
if [ -n "$nccl_dir" ] && [ -f "$nccl_dir/libnccl.so.2" ]; then
    mkdir -p target/nccl-lib && ln -sf "$nccl_dir/libnccl.so.2" target/nccl-lib/libnccl.so
    export LD_LIBRARY_PATH="$PWD/target/nccl-lib:${LD_LIBRARY_PATH:-}"
fi
features=infinity-trainer/cuda
bin=target/debug/infinity

echo "== build"
cargo build -p infinity-trainer -p infinity-kernels -p infinity-launcher --features "$features" --tests 2>&1 | tail -2

status=0
run() { # name, command...: run a test command, keep the interesting lines
    echo "== $1"
    shift
    "$@" -- --nocapture --test-threads 1 2>&1 \
        | grep -E "relative error|rel |loss|skipped|differ|aborted|NCCL|^test |test result|panicked|error" | tee -a "$log"
    return "${PIPESTATUS[0]}"
}
run "kernels against their CPU twins" cargo test -p infinity-kernels --features cuda \
    --test cuda_twins --test cuda_compile || status=1
run "the model on the GPU against the CPU model" cargo test -p infinity-trainer --features cuda --test gpu_model || status=1
run "NCCL communicator" cargo test -p infinity-launcher --features cuda --test nccl || status=1
if [ "$gpus" -ge 2 ]; then
    run "NCCL data parallelism" cargo test -p infinity-trainer --features cuda --test distributed nccl || status=1
else
    echo "== NCCL data parallelism: skipped ($gpus GPU; NCCL needs one device per rank)" | tee -a "$log"
fi
echo "== golden folders on CUDA"
"$bin" golden check tests/golden --device cuda 2>&1 | grep -vE "^\s+(grad|note)" || status=1

echo "== kernel benchmarks (PyTorch eager side by side)"
INFINITY_BENCH_PYTHON=${INFINITY_BENCH_PYTHON:-python3} timeout 240 \
    cargo bench --profile dev -p infinity-kernels --features cuda --bench cuda_kernels 2>&1 \
    | grep -vE "^\s*(Compiling|Finished|Running)" || status=1

echo "== training-step benchmark at 256 px (PyTorch eager side by side; MFU against 790 TFLOP/s bf16)"
# each line bounded so a slow one cannot use up the device run; PyTorch beside the main shapes only
for shape in "--preset layer12 --batch 16 --python python3" "--preset 2b --batch 8" \
    "--preset 2b --batch 8 --bf16 --python python3" "--preset 2b --batch 8 --bf16 --recompute"; do
    # shellcheck disable=SC2086
    timeout 150 "$bin" model bench $shape --template 1.000 --budget 0.06M --steps 3 --device cuda \
        --peak-tflops 790 2>&1 || { echo "(exit $?: $shape)"; status=1; }
done

echo "== summary"
echo "tests: $(grep -c ' \.\.\. ok' "$log") passed, $(grep -c 'FAILED' "$log") failed, $(grep -c 'skipped' "$log") skipped"
echo "elapsed: $(( $(date +%s) - start )) s"
exit "$status"
