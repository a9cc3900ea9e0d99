#!/usr/bin/env python3
"""Read a folder of TensorBoard event files with TensorBoard's own EventAccumulator and print what it
found as JSON: {"scalars": {tag: [[step, value], ...]}, "images": {tag: [[step, w, h], ...]},
"text": {tag: [[step, text], ...]}, "hparams": {name: value}}. Used by the tests to prove TensorBoard
reads what we write (hparams through the HParams plugin's own protobuf)."""
import argparse
import json

from tensorboard.backend.event_processing import event_accumulator


def plugin_tags(acc, plugin):
    """{tag: content} of a plugin's summaries (none when the plugin has none)."""
    try:
        return acc.PluginTagToContent(plugin)
    except KeyError:
        return {}


def main(path):
    acc = event_accumulator.EventAccumulator(path, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    out = {"scalars": {}, "images": {}, "text": {}, "hparams": {}}
    for t in tags.get("scalars", []):
        out["scalars"][t] = [[e.step, e.value] for e in acc.Scalars(t)]
    for t in tags.get("images", []):
        out["images"][t] = [[e.step, e.width, e.height] for e in acc.Images(t)]
    for t in plugin_tags(acc, "text"):
        out["text"][t] = [[e.step, e.tensor_proto.string_val[0].decode()] for e in acc.Tensors(t)]
    hparams = plugin_tags(acc, "hparams")
    if hparams:
        from tensorboard.plugins.hparams import plugin_data_pb2

        for content in hparams.values():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            for name, v in data.session_start_info.hparams.items():
                out["hparams"][name] = getattr(v, v.WhichOneof("kind"))
            out["hparams_group"] = data.session_start_info.group_name
    print(json.dumps(out))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logdir", help="a folder of events.out.tfevents.* files (a run's tb/)")
    main(ap.parse_args().logdir)
