#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and CUDA 13: run every GPU test (each kernel against its CPU twin,
# the model on the GPU against the CPU model and the golden folders, the NCCL communicator, NCCL data
# parallelism when there are 2+ GPUs), the kernel benchmarks and the training-step benchmark side by
# side with PyTorch eager, Nsight Compute counters of the headline and attention kernels when ncu is
# there and budget is left, and print a summary. Meant to fit one device run.
#
#   bash scripts/gpu-check.sh                 # builds with cargo when it is there
#   bash scripts/gpu-pack.sh   (elsewhere)    # no cargo on the GPU machine: build here, carry
#                                             # target/gpu-pack, and this script runs from the pack
#
# Each test runs in its own process (a CUDA fault poisons the whole context, so one bad kernel must
# not hide the others) under a timeout; a test that fails with a CUDA error is run once more under
# compute-sanitizer when it is installed. GPU_CHECK_OUT (default /tmp/gpu-check) gets every log;
# GPU_CHECK_BUDGET_S (default 480) bounds the whole run: steps that would start after it are skipped.
# GPU_CHECK_SMOKE=1 runs the benchmarks at small shapes: the script itself checked end to end in a
# few minutes, e.g. on the emulated CUDA device (docs/debugging.md), whose figures mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
budget=${GPU_CHECK_BUDGET_S:-480}
out=${GPU_CHECK_OUT:-/tmp/gpu-check}
mkdir -p "$out"
rm -f "$out"/*.log "$out"/*.sanitizer # (an earlier run's: a step skipped now must not send its old log back)
summary=$out/summary.txt
smoke=${GPU_CHECK_SMOKE:-0}
[ "$smoke" = 1 ] && export INFINITY_BENCH_SMOKE=1
: >"$summary"
status=0
left() { echo $((budget - ($(date +%s) - start))); }
note() { echo "$*" | tee -a "$summary"; }

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi not found"
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ -d /usr/local/cuda/lib64 ]; then
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}" # cuBLAS, NVRTC
fi
# NCCL from the pip wheel is libnccl.so.2 only; cudarc opens libnccl.so
nccl_dir=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null || true)
if [ -n "$nccl_dir" ] && [ -f "$nccl_dir/libnccl.so.2" ]; then
    mkdir -p target/nccl-lib && ln -sf "$nccl_dir/libnccl.so.2" target/nccl-lib/libnccl.so
    export LD_LIBRARY_PATH="$PWD/target/nccl-lib:${LD_LIBRARY_PATH:-}"
fi

echo "== build"
manifest=target/gpu-pack/manifest
pack=target/gpu-pack/pack.tar.xz
here=$(bash scripts/gpu-pack.sh --hash)
packed=""
[ -f "$pack" ] && packed=$(tar -xJOf "$pack" gpu-pack/manifest | awk '$1 == "sources" { print $2 }')
if [ -f "$pack" ] && [ "$packed" != "$here" ] && command -v cargo >/dev/null; then
    echo "the pack was built from other sources (${packed:-unrecorded}, this checkout: $here): building afresh"
    rm -f "$pack"
fi
if [ -f "$pack" ]; then
    tar -C target -xJf "$pack" && echo "unpacked $(wc -l <"$manifest") executables"
    if [ "$packed" != "$here" ]; then
        note "WARN  the pack was built from other sources (${packed:-unrecorded}) than this checkout ($here)"
        status=1
    fi
elif command -v cargo >/dev/null; then
    bash scripts/gpu-pack.sh --no-pack || { echo "build failed"; exit 1; }
else
    echo "no cargo and no target/gpu-pack/pack.tar.xz: run scripts/gpu-pack.sh on a machine with Rust"
    exit 1
fi
# test binaries find fixtures through the checkout path they were built in
built_root=$(awk '$1 == "root" { print $2 }' "$manifest")
if [ "$built_root" != "$PWD" ] && [ ! -e "$built_root" ]; then
    mkdir -p "$(dirname "$built_root")" && ln -s "$PWD" "$built_root"
fi
exe() { awk -v n="$2" -v k="$1" '$1 == k && $2 == n { print $4 }' "$manifest"; }
pkg() { awk -v n="$2" -v k="$1" '$1 == k && $2 == n { print $3 }' "$manifest"; }
bin=$PWD/$(exe bin infinity)
mkdir -p target/debug && [ -e target/debug/infinity ] || ln -sf "$bin" target/debug/infinity

passed=0
failed=0
skipped=0
run_tests() { # test-binary name, [filter]: each test alone, from its package folder
    local name=$1 filter=${2:-} path dir t log rc
    path=$PWD/$(exe test "$name")
    dir=$(pkg test "$name")
    echo "== $name"
    for t in $("$path" --list 2>/dev/null | sed -n 's/: test$//p' | grep -F -- "$filter"); do
        if [ "$(left)" -lt 20 ]; then
            note "budget: $name::$t not run"
            status=1
            continue
        fi
        log=$out/$name.$t.log
        local limit=$(( $(left) < 150 ? $(left) : 150 ))
        local t0=$(date +%s)
        (cd "$dir" && timeout -k 10 "$limit" "$path" --exact "$t" --nocapture --test-threads 1) >"$log" 2>&1
        rc=$?
        local took=$(( $(date +%s) - t0 ))
        if [ $rc -eq 0 ] && grep -q "partly skipped" "$log"; then
            note "ok    $name::$t (${took}s; $(grep -m1 -o 'partly skipped.*' "$log"))"
            passed=$((passed + 1))
        elif [ $rc -eq 0 ] && [ "$gpus" -ge 1 ] && grep -qE "skipped: (no CUDA|libnvrtc not found|.*needs libnvrtc)" "$log"; then
            # (a GPU is listed: a test that found no device or library ran nothing)
            note "FAIL  $name::$t (${took}s; nvidia-smi lists a GPU but $(grep -m1 -o 'skipped.*' "$log"))"
            failed=$((failed + 1))
            status=1
        elif [ $rc -eq 0 ] && grep -q "skipped" "$log"; then
            note "skip  $name::$t (${took}s): $(grep -m1 skipped "$log")"
            skipped=$((skipped + 1))
        elif [ $rc -eq 0 ]; then
            note "ok    $name::$t (${took}s)"
            passed=$((passed + 1))
        elif [ $rc -eq 124 ] || { [ $rc -eq 137 ] && [ "$took" -ge "$limit" ]; }; then
            note "FAIL  $name::$t (timed out after ${took}s of the ${limit}s left to it)"
            failed=$((failed + 1))
            status=1
        else
            note "FAIL  $name::$t (rc $rc, ${took}s)"
            grep -E "panicked|error|Error|assert|left|right|differ|rel|emulated" "$log" | head -12 | sed 's/^/      /' | tee -a "$summary"
            failed=$((failed + 1))
            status=1
            if grep -qE "CUDA_ERROR|ILLEGAL|misaligned|DriverError" "$log" && command -v compute-sanitizer >/dev/null \
                && [ "$(left)" -gt 60 ]; then
                (cd "$dir" && timeout -k 10 $(( $(left) - 30 < 90 ? $(left) - 30 : 90 )) compute-sanitizer --tool memcheck --print-limit 8 \
                    "$path" --exact "$t" --nocapture --test-threads 1) >"$log.sanitizer" 2>&1
                grep -E "=========" "$log.sanitizer" | head -20 | sed 's/^/      /' | tee -a "$summary"
            fi
        fi
    done
}

run_tests cuda_compile
run_tests cuda_twins
run_tests gpu_model
run_tests gpu_sample
run_tests gpu_memory
run_tests nccl
if [ "$gpus" -ge 2 ]; then
    run_tests distributed nccl
else
    note "skip  distributed::nccl_data_parallel_matches_one_rank_and_restarts_exactly ($gpus GPU; NCCL needs one device per rank)"
fi

step() { # seconds, name, command...: a bounded step, output kept and shown
    local want=$1 name=$2
    shift 2
    local limit=$(( $(left) < want ? $(left) : want ))
    if [ "$limit" -lt 15 ]; then
        note "budget: $name not run"
        status=1
        return
    fi
    echo "== $name"
    timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    grep -vE "^\s+(grad|note)|^\s*$" "$out/$name.log" | tail -60
    [ $rc -eq 0 ] || { note "FAIL  $name (rc $rc)"; status=1; return 1; }
}

step 60 golden-cuda "$bin" golden check tests/golden --device cuda
bench=$PWD/$(exe bench cuda_kernels)
(cd "$(pkg bench cuda_kernels)" && INFINITY_BENCH_PYTHON=${INFINITY_BENCH_PYTHON:-python3} step 150 kernel-bench "$bench" --bench) \
    || status=1
# training step at 256 px: PyTorch eager beside ours, MFU against 790 TFLOP/s bf16
shapes=("--preset layer12 --batch 16 --python python3" "--preset 2b --batch 8 --bf16 --python python3 --profile"
    "--preset 2b --batch 8 --bf16 --recompute")
schedule="--budget 0.06M --steps 3"
if [ "$smoke" = 1 ]; then
    shapes=("--preset tiny --batch 2" "--preset tiny --batch 2 --bf16 --profile" "--preset tiny --batch 2 --bf16 --recompute")
    schedule="--budget demo5 --steps 1"
fi
i=0
for shape in "${shapes[@]}"; do
    i=$((i + 1))
    # shellcheck disable=SC2086
    step 90 "model-bench-$i" "$bin" model bench $shape --template 1.000 $schedule --device cuda --peak-tflops 790
done

# Hardware counters of the headline and attention kernels, when Nsight Compute is installed and its
# counters are permitted (a failure here is reported, not counted): achieved DRAM and L2 throughput,
# occupancy and warp stall reasons, one launch per launch configuration after the warm-up calls. The
# kernel bench runs once more under it, without PyTorch.
ncu_bin=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
if [ -n "$ncu_bin" ] && [ "$(left)" -gt 120 ]; then
    echo "== ncu"
    kernels='regex:^(head_bitwise_ce_bf16_(h16_)?td64|head_bitwise_ce_f32_l64|self_correct_planes_f32|attention_.*(bf16|tiled).*c128)$'
    (cd "$(pkg bench cuda_kernels)" && INFINITY_BENCH_PYTHON=none timeout -k 10 $(($(left) - 30)) "$ncu_bin" \
        --target-processes application-only --clock-control none --kernel-name "$kernels" --filter-mode per-launch-config \
        --launch-skip 3 --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
        --section Occupancy --section WarpStateStats --section LaunchStats "$bench" --bench) >"$out/ncu.log" 2>&1
    rc=$?
    grep -E "^  [a-z_0-9]+|Duration|DRAM Throughput|L2 Cache Throughput|Memory Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Stall" \
        "$out/ncu.log" | head -120
    if [ $rc -eq 0 ]; then note "ok    ncu (counters in $out/ncu.log)"; else note "skip  ncu (rc $rc: $(grep -m1 -iE 'error|ERR_' "$out/ncu.log"))"; fi
else
    note "skip  ncu (not installed, or under 120 s of budget left)"
fi

echo "== summary"
cat "$summary"
echo "tests: $passed passed, $failed failed, $skipped skipped; elapsed $(( $(date +%s) - start )) s" | tee -a "$summary"
# on the device machine, what is under $OUT comes back: the summary, the benchmarks' logs and every
# log packed (the console's tail alone would lose the tables)
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    cp "$summary" "$out"/kernel-bench.log "$out"/model-bench-*.log "$OUT"/ 2>/dev/null
    tar -C "$(dirname "$out")" -czf "$OUT/gpu-check-logs.tgz" "$(basename "$out")" && echo "logs packed into \$OUT"
fi
exit "$status"
