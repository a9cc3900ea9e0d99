#!/usr/bin/env python3
"""Write a PyTorch checkpoint in `torch.save`'s zip format without PyTorch, for the tests of
`trainer/src/model/torch_file.rs` (CI installs no PyTorch).

    python tests/reference/torch_save.py --weights W.safetensors --out W.pth [--nested] [--bf16 NAME ...]

The file is what `torch.save(state_dict, 'W.pth')` writes, by the same means: a pickle of protocol 2
whose storages are persistent ids `('storage', torch.FloatStorage, key, 'cpu', numel)`, tensors
rebuilt by `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`,
the state dict an `OrderedDict` with its `_metadata`, and the zip's `ARCHIVE/data.pkl`,
`ARCHIVE/data/KEY`, `ARCHIVE/byteorder` and `ARCHIVE/version` stored uncompressed (ARCHIVE the file's
stem). The classes and functions are stand-ins registered under torch's module names, so the pickle
names them as torch's own.

To exercise views as PyTorch makes them: `head.weight` and `head.bias` share one storage (the bias at
an offset), and `word_embed.weight` is stored transposed with swapped strides. `--bf16 NAME` stores
that tensor in a BFloat16Storage (rounded to nearest even). `--nested` wraps the state dict as
upstream's training checkpoints do: `{'args': <an Args object>, 'epoch': 0, 'iter': 100, 'trainer':
{'config': {...}, 'gpt_fsdp': state_dict, 'gpt_fsdp_opt': {...}}, 'acc_str': ..., 'milestones': ...}`.
"""
import argparse
import collections
import io
import os
import pickle
import sys
import types
import zipfile

import numpy as np
from safetensors.numpy import load_file

# ---- stand-ins under torch's names ------------------------------------------------------------------
torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
torch._utils = torch_utils
sys.modules["torch"], sys.modules["torch._utils"] = torch, torch_utils


def _rebuild_tensor_v2(*args):
    raise NotImplementedError("a stand-in: only pickled, never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
for _name in ("FloatStorage", "BFloat16Storage", "LongStorage"):
    setattr(torch, _name, type(_name, (), {"__module__": "torch"}))

# an object of a training script's own class, as upstream pickles its parsed arguments
arg_util = types.ModuleType("infinity.utils.arg_util")
for _package in ("infinity", "infinity.utils"):
    sys.modules[_package] = types.ModuleType(_package)
sys.modules["infinity"].utils = sys.modules["infinity.utils"]
sys.modules["infinity.utils"].arg_util = arg_util
sys.modules["infinity.utils.arg_util"] = arg_util


class Args:
    pass


Args.__module__ = "infinity.utils.arg_util"
arg_util.Args = Args


class Storage:
    def __init__(self, key, cls, data: bytes, numel):
        self.key, self.cls, self.data, self.numel = key, cls, data, numel


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce_ex__(self, protocol):
        hooks = collections.OrderedDict()
        return (_rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False, hooks))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns, rounded to nearest even."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def contiguous_strides(shape):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def state_dict(weights, bf16_names):
    storages, sd = [], collections.OrderedDict()

    def storage(values: np.ndarray, bf16: bool):
        key = str(len(storages))
        if bf16:
            s = Storage(key, torch.BFloat16Storage, bf16_bits(values).tobytes(), values.size)
        else:
            s = Storage(key, torch.FloatStorage, values.astype("<f4").tobytes(), values.size)
        storages.append(s)
        return s

    shared = ("head.weight", "head.bias")
    for name, w in weights.items():
        w = w.astype(np.float32)
        if name == shared[1] and shared[0] in weights:
            continue  # stored with head.weight below
        if name == shared[0] and shared[1] in weights:
            b = weights[shared[1]].astype(np.float32)
            s = storage(np.concatenate([w.ravel(), b.ravel()]), False)
            sd[name] = Tensor(s, 0, w.shape, contiguous_strides(w.shape))
            sd[shared[1]] = Tensor(s, w.size, b.shape, contiguous_strides(b.shape))
        elif name == "word_embed.weight" and w.ndim == 2:
            # the transpose's data, read back through swapped strides: the tensor itself
            s = storage(np.ascontiguousarray(w.T).ravel(), False)
            sd[name] = Tensor(s, 0, w.shape, (1, w.shape[0]))
        else:
            s = storage(w.ravel(), name in bf16_names)
            sd[name] = Tensor(s, 0, w.shape, contiguous_strides(w.shape))
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    return sd, storages


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--nested", action="store_true")
    p.add_argument("--bf16", nargs="*", default=[])
    a = p.parse_args()
    sd, storages = state_dict(load_file(a.weights), set(a.bf16))
    obj = sd
    if a.nested:
        args = Args()
        args.model, args.tlr, args.pn = "layer12", 2e-5, "0.06M"
        step = Storage(str(len(storages)), torch.LongStorage, np.array([100], "<i8").tobytes(), 1)
        storages.append(step)
        opt = {"state": {0: {"step": Tensor(step, 0, (), ())}}, "param_groups": [{"lr": 2e-5, "params": [0]}]}
        obj = {"args": args, "epoch": 0, "iter": 100,
               "trainer": {"config": {"tlr": 2e-5}, "gpt_fsdp": sd, "gpt_fsdp_opt": opt},
               "acc_str": "[0.50]", "milestones": (1.5, {2, 3})}
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    archive = os.path.splitext(os.path.basename(a.out))[0]
    with zipfile.ZipFile(a.out, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", buf.getvalue())
        z.writestr(f"{archive}/byteorder", "little")
        for s in storages:
            z.writestr(f"{archive}/data/{s.key}", s.data)
        z.writestr(f"{archive}/version", "3\n")


if __name__ == "__main__":
    main()
