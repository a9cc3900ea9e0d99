#!/usr/bin/env bash
# Build every GPU test, the CUDA kernel benchmark and the CLI with the `cuda` feature, and pack the
# executables for a GPU machine that has CUDA but no Rust toolchain (the lent device machine has no
# cargo and no registry). scripts/gpu-check.sh runs from the pack when it finds one.
#
#   bash scripts/gpu-pack.sh            # -> target/gpu-pack/pack.tar.xz (+ manifest inside)
#   bash scripts/gpu-pack.sh --no-pack  # build and write target/gpu-pack/manifest only (cargo present)
#   bash scripts/gpu-pack.sh --hash     # print the hash of the sources a pack is built from
#
# The manifest has one line per executable: kind name package-dir path. Test binaries find their
# fixtures through paths baked in at build time (CARGO_MANIFEST_DIR = this checkout), so the pack
# records this checkout's path; gpu-check.sh links it to wherever the copy lands.
#
# A new GPU test file goes in `tests=(…)` below, in a `run_tests NAME` line of scripts/gpu-check.sh
# and, for trainer or launcher tests, in scripts/test.sh's on_device lines (it runs every kernels test
# file already); docs/architecture.md, "Adding a kernel".
set -euo pipefail
cd "$(dirname "$0")/.."

# The Rust, CUDA and Cargo files of the checkout (and data/'s JSON, compiled in: the upstream
# schedules), hashed: the manifest records it, and gpu-check.sh compares it with the checkout it runs in,
# so a pack left from other sources is never used unawares.
source_hash() {
    {
        find Cargo.toml Cargo.lock kernels data trainer launcher tests -type f \
            \( -name '*.rs' -o -name '*.cu' -o -name '*.cuh' -o -name Cargo.toml -o -name Cargo.lock \) \
            -not -path '*/target/*' -print0
        find data -type f -name '*.json' -not -path '*/target/*' -print0
    } | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}
if [ "${1:-}" = "--hash" ]; then
    source_hash
    exit 0
fi
root=$PWD
out=target/gpu-pack
rm -rf "$out"
mkdir -p "$out/bin"

tests=(--test cuda_twins --test cuda_compile --test gpu_model --test gpu_sample --test gpu_memory --test nccl --test distributed)
cargo test -p infinity-trainer -p infinity-kernels -p infinity-launcher \
    --features infinity-trainer/cuda,infinity-kernels/cuda,infinity-launcher/cuda \
    "${tests[@]}" --bench cuda_kernels --bin infinity --no-run --message-format=json 2>"$out/build.log" \
    | python3 -c '
import json, os, sys
root = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    kind = "bin" if t["kind"] == ["bin"] and not m["profile"]["test"] else t["kind"][0]
    if kind == "bin" and m["profile"]["test"]:
        continue  # the CLI unit tests run in CI
    pkg = os.path.relpath(os.path.dirname(m["manifest_path"]), root)
    print(kind, t["name"], pkg, os.path.relpath(m["executable"], root))
' "$root" >"$out/manifest.built" || { tail -30 "$out/build.log"; echo "gpu-pack: the build failed"; exit 1; }

# The CLI in the release profile, in place of the dev build's: gpu-check.sh's `model bench` figures (MFU)
# are then of the code users run, not of the dev profile's opt-level 1 host code. (The test binaries
# stay in the dev profile; those that start the CLI find it through target/debug/infinity, which
# gpu-check.sh links to this one.)
release=$(cargo build --release -p infinity-trainer --features infinity-trainer/cuda --bin infinity \
    --message-format=json 2>>"$out/build.log" | python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "infinity":
        print(os.path.relpath(m["executable"], sys.argv[1]))
' "$root") && [ -n "$release" ] || { tail -30 "$out/build.log"; echo "gpu-pack: the release build failed"; exit 1; }
awk -v exe="$release" '$1 == "bin" && $2 == "infinity" { $4 = exe } { print }' "$out/manifest.built" >"$out/manifest.tmp"
mv "$out/manifest.tmp" "$out/manifest.built"

if [ "${1:-}" = "--no-pack" ]; then
    mv "$out/manifest.built" "$out/manifest"
    printf 'root %s\nsources %s\n' "$root" "$(source_hash)" >>"$out/manifest"
    exit 0
fi

# packed: binaries stripped of debug info, placed under bin/, paths rewritten
while read -r kind name pkg exe; do
    objcopy --strip-debug "$exe" "$out/bin/$name"
    echo "$kind $name $pkg target/gpu-pack/bin/$name"
done <"$out/manifest.built" >"$out/manifest"
rm "$out/manifest.built"
printf 'root %s\nsources %s\n' "$root" "$(source_hash)" >>"$out/manifest"
tar -C target -cJf target/gpu-pack.tar.xz gpu-pack
rm -rf "$out"
mkdir -p "$out" && mv target/gpu-pack.tar.xz "$out/pack.tar.xz"
ls -l "$out/pack.tar.xz"
