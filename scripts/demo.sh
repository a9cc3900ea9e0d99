#!/usr/bin/env bash
# The main job on a fresh machine: build the `infinity` binary, make the demo dataset on the CPU, train
# the tiny class-conditioned demo model on it, and sample a grid of the classes it learned.
#   runs/demo-data/        the dataset (20,000 synthetic shapes, Arrow shards + manifest)
#   runs/demo/             the run: metrics.jsonl, tb/ (tensorboard --logdir runs/demo/tb), checkpoints/
#   runs/demo/grid.png     a row for each of six classes: the colours follow the condition (the shapes
#                          not yet at this size and length)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "error: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }

cargo build --release -p infinity-trainer
bin=target/release/infinity
"$bin" data synth --out runs/demo-data --rows 20000 --seed 0 --overwrite
"$bin" data verify runs/demo-data
"$bin" data stats runs/demo-data --png runs/demo-data/samples.png --n 32
rm -rf runs/demo
"$bin" train configs/demo-cpu.toml
"$bin" sample runs/demo --class "red circle,green square,blue triangle,yellow cross,magenta circle,cyan square" \
    --n 6 --cfg 3 --tau 0.5 --top-p 0.9 -o runs/demo/grid.png
"$bin" export runs/demo -o runs/demo/export/model.safetensors
echo "done: runs/demo/grid.png (samples), runs/demo-data/samples.png (data), tensorboard --logdir runs/demo/tb"
