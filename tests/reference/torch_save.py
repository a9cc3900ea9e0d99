#!/usr/bin/env python3
"""Write a PyTorch checkpoint in `torch.save`'s zip format without PyTorch, for the tests of
`trainer/src/model/torch_file/` (CI installs no PyTorch).

    python tests/reference/torch_save.py --weights W.safetensors --out W.pth [--nested [--ddp] [--ema E.safetensors]]
        [--bf16 NAME ...] [--f16 NAME ...] [--f64 NAME ...] [--parameters]

The file is what `torch.save(state_dict, 'W.pth')` writes, by the same means: a pickle of protocol 2
whose storages are persistent ids `('storage', torch.FloatStorage, key, 'cpu', numel)`, tensors
rebuilt by `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`,
the state dict an `OrderedDict` with its `_metadata`, and the zip's `ARCHIVE/data.pkl`,
`ARCHIVE/data/KEY`, `ARCHIVE/byteorder`, `ARCHIVE/version` and `ARCHIVE/.data/serialization_id`
stored uncompressed (ARCHIVE the file's stem), each entry's data aligned to 64 bytes by padding in its
local header's extra field as torch's writer pads it. The classes and functions are stand-ins
registered under torch's module names, so the pickle names them as torch's own.

To exercise views as PyTorch makes them: `head.weight` and `head.bias` share one storage (the bias at
an offset), and `word_embed.weight` is stored transposed with swapped strides. `--bf16 NAME` stores
that tensor in a BFloat16Storage (rounded to nearest even), `--f16` in a HalfStorage, `--f64` in a
DoubleStorage; `--parameters` pickles each tensor as an `nn.Parameter` does
(`torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`). `--nested` wraps the state dict as
upstream's training checkpoints do: `{'args': <an Args object>, 'epoch': 0, 'iter': 100, 'trainer':
{'config': {...}, 'gpt_fsdp': state_dict, 'gpt_fsdp_opt': {...}}, 'acc_str': ..., 'milestones': ...}`
(`gpt_wo_ddp` with `--ddp`, as under DDP); `--ema E.safetensors` adds `'gpt_ema_fsdp'`, the moving
average upstream keeps with `--use_fsdp_model_ema`.
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


def _rebuild_parameter(*args):
    raise NotImplementedError("a stand-in: only pickled, never called")


for _f in (_rebuild_tensor_v2, _rebuild_parameter):
    _f.__module__ = "torch._utils"
    setattr(torch_utils, _f.__name__, _f)
for _name in ("FloatStorage", "BFloat16Storage", "HalfStorage", "DoubleStorage", "LongStorage"):
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


class Parameter:
    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce_ex__(self, protocol):
        return (_rebuild_parameter, (self.tensor, True, collections.OrderedDict()))


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


def state_dict(weights, dtypes, parameters, storages):
    """The state dict of `weights`, its storages appended to `storages` (keys numbered on)."""
    sd = collections.OrderedDict()

    def storage(values: np.ndarray, dtype="f32"):
        key = str(len(storages))
        data = {"bf16": lambda v: bf16_bits(v).tobytes(), "f16": lambda v: v.astype("<f2").tobytes(),
                "f64": lambda v: v.astype("<f8").tobytes(), "f32": lambda v: v.astype("<f4").tobytes()}[dtype]
        cls = {"bf16": torch.BFloat16Storage, "f16": torch.HalfStorage, "f64": torch.DoubleStorage,
               "f32": torch.FloatStorage}[dtype]
        s = Storage(key, cls, data(values), values.size)
        storages.append(s)
        return s

    shared = ("head.weight", "head.bias")
    for name, w in weights.items():
        w = w.astype(np.float32)
        if name == shared[1] and shared[0] in weights:
            continue  # stored with head.weight below
        if name == shared[0] and shared[1] in weights:
            b = weights[shared[1]].astype(np.float32)
            s = storage(np.concatenate([w.ravel(), b.ravel()]))
            sd[name] = Tensor(s, 0, w.shape, contiguous_strides(w.shape))
            sd[shared[1]] = Tensor(s, w.size, b.shape, contiguous_strides(b.shape))
        elif name == "word_embed.weight" and w.ndim == 2:
            # the transpose's data, read back through swapped strides: the tensor itself
            s = storage(np.ascontiguousarray(w.T).ravel())
            sd[name] = Tensor(s, 0, w.shape, (1, w.shape[0]))
        else:
            s = storage(w.ravel(), dtypes.get(name, "f32"))
            sd[name] = Tensor(s, 0, w.shape, contiguous_strides(w.shape))
    if parameters:
        sd = collections.OrderedDict((k, Parameter(v)) for k, v in sd.items())
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    return sd


def write_stored(z: zipfile.ZipFile, name: str, data: bytes):
    """An entry whose data starts at a multiple of 64 bytes: torch's writer pads the local header's
    extra field so (an extra field of id 'FB' and the padding)."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_STORED
    at = z.fp.tell() + 30 + len(name.encode()) + 4
    pad = -at % 64
    info.extra = b"FB" + pad.to_bytes(2, "little") + b"Z" * pad
    z.writestr(info, data)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--nested", action="store_true")
    p.add_argument("--ddp", action="store_true")
    p.add_argument("--ema", help="with --nested: these weights as trainer.gpt_ema_fsdp")
    p.add_argument("--parameters", action="store_true")
    for dtype in ("bf16", "f16", "f64"):
        p.add_argument(f"--{dtype}", nargs="*", default=[])
    a = p.parse_args()
    dtypes = {n: d for d in ("bf16", "f16", "f64") for n in getattr(a, d)}
    if a.ema and not a.nested:
        p.error("--ema needs --nested (the moving average lives in a training checkpoint's trainer)")
    storages = []
    sd = state_dict(load_file(a.weights), dtypes, a.parameters, storages)
    obj = sd
    if a.nested:
        args = Args()
        args.model, args.tlr, args.pn = "layer12", 2e-5, "0.06M"
        step = Storage(str(len(storages)), torch.LongStorage, np.array([100], "<i8").tobytes(), 1)
        storages.append(step)
        opt = {"state": {0: {"step": Tensor(step, 0, (), ())}}, "param_groups": [{"lr": 2e-5, "params": [0]}]}
        trainer = {"config": {"tlr": 2e-5}, "gpt_wo_ddp" if a.ddp else "gpt_fsdp": sd, "gpt_fsdp_opt": opt}
        if a.ema:
            trainer["gpt_ema_fsdp"] = state_dict(load_file(a.ema), {}, a.parameters, storages)
        obj = {"args": args, "epoch": 0, "iter": 100, "trainer": trainer,
               "acc_str": "[0.50]", "milestones": (1.5, {2, 3})}
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    archive = os.path.splitext(os.path.basename(a.out))[0]
    with zipfile.ZipFile(a.out, "w", compression=zipfile.ZIP_STORED) as z:
        write_stored(z, f"{archive}/data.pkl", buf.getvalue())
        write_stored(z, f"{archive}/byteorder", b"little")
        for s in storages:
            write_stored(z, f"{archive}/data/{s.key}", s.data)
        write_stored(z, f"{archive}/version", b"3\n")
        write_stored(z, f"{archive}/.data/serialization_id", b"0123456789")


if __name__ == "__main__":
    main()
