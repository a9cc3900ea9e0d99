#!/usr/bin/env python3
"""The reference for `infinity data bench`: pyarrow reading the same shards the same way (memory-mapped,
random global batches of G rows gathered into contiguous arrays with Table.take). Prints one line:
samples_per_s=<float> gb_per_s=<float>"""
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa


def main(dir, global_batch, samples):
    with open(os.path.join(dir, "manifest.json")) as f:
        m = json.load(f)
    tables = [pa.ipc.open_file(pa.memory_map(os.path.join(dir, s["file"]))).read_all() for s in m["shards"]]
    table = pa.concat_tables(tables)
    cols = [c for c in ("id", "bucket", "bits", "latent", "class_label") if c in table.column_names]
    table = table.select(cols)
    # Table.take on a chunked table concatenates every chunk on each call (O(dataset) per batch), and
    # 32-bit binary offsets overflow past 2 GiB: widen and combine once, outside the timed loop. This
    # copies the dataset into memory, which favours pyarrow (no page-cache reads while timing).
    table = table.cast(pa.schema([pa.field(f.name, pa.large_binary() if f.type == pa.binary() else f.type)
                                  for f in table.schema])).combine_chunks()
    n = table.num_rows
    perm = np.random.default_rng(0).permutation(n)
    batches = max(1, samples // global_batch)
    table.take(perm[:global_batch])  # warm-up
    t = time.perf_counter()
    nbytes = 0
    for k in range(batches):
        start = (k * global_batch) % (n - n % global_batch or n)
        batch = table.take(perm[start:start + global_batch])
        nbytes += sum(batch.column(c).nbytes for c in ("bits", "latent", "class_label") if c in cols)
    s = time.perf_counter() - t
    print(f"samples_per_s={batches * global_batch / s:.1f} gb_per_s={nbytes / s / 1e9:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
