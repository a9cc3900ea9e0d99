#!/usr/bin/env bash
# The main job on a fresh machine: build the `infinity` binary, make the demo dataset on the CPU,
# verify it and decode some of its bits back to images (runs/demo-data/samples.png).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "error: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }

cargo build --release -p infinity-trainer
bin=target/release/infinity
"$bin" data synth --out runs/demo-data --rows 20000 --seed 0 --overwrite
"$bin" data verify runs/demo-data
"$bin" data stats runs/demo-data --png runs/demo-data/samples.png --n 32
