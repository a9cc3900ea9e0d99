#!/usr/bin/env bash
# All tests. The pyarrow interop tests need Python 3 with tools/requirements.txt; nothing needs CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
cargo test --workspace
