#!/usr/bin/env python3
"""Read a folder of TensorBoard event files with TensorBoard's own EventAccumulator and print what it
found as JSON: {"scalars": {tag: [[step, value], ...]}, "images": {tag: [[step, w, h], ...]},
"text": {tag: [[step, text], ...]}}. Used by the tests to prove TensorBoard reads what we write."""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator


def main(path):
    acc = event_accumulator.EventAccumulator(path, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    out = {"scalars": {}, "images": {}, "text": {}}
    for t in tags.get("scalars", []):
        out["scalars"][t] = [[e.step, e.value] for e in acc.Scalars(t)]
    for t in tags.get("images", []):
        out["images"][t] = [[e.step, e.width, e.height] for e in acc.Images(t)]
    for t in tags.get("tensors", []):
        out["text"][t] = [[e.step, e.tensor_proto.string_val[0].decode()] for e in acc.Tensors(t)]
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
