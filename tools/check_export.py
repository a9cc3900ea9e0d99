#!/usr/bin/env python3
"""Check an `infinity export` folder the way a PyTorch user would load it.

    python tools/check_export.py EXPORT/model.safetensors --expect tests/golden/export-state-dict.json

(EXPORT, the folder, reads as its model.safetensors.) What it compares the weights with is the reference
model (tests/reference/infinity_ref.py, written from upstream's code); where upstream's own `Infinity`
cannot build or sample the model (a text width under 128, one block chunk), it says so in `upstream:`
lines, which do not fail the check: the export also serves this framework.

1. Reads config.json beside the weights and the safetensors file with the `safetensors` package
   (numpy for f32; bf16 has no numpy type, so its bytes are read directly and widened) and checks every
   tensor's dtype against config.json and every value for being finite; and the shard index beside it
   (model.safetensors.index.json, what upstream's `--checkpoint_type torch_shard` loads) names every
   tensor; and that config.json describes this file (its `weights`: one export per folder) and, where
   it records one, that the file has its checksum (`weights_crc32c`: a file changed since the export).
2. Checks that the block keys are laid out as `constructor_kwargs.block_chunks` makes upstream's
   `Infinity` register them: `block_chunks.C.module.J` (C < block_chunks, J < depth / block_chunks)
   for more than one chunk, `blocks.N` for one.
3. --expect: compares names and shapes with a state_dict listing of the reference PyTorch model
   (tests/reference/infinity_ref.py --state-dict). The listing holds a few models (the golden one: the
   tiny configs the tests export); for constructor arguments it does not list, --expect is skipped with
   a line saying so and checks 1, 2 and 4 are what applies (4 builds the reference for any arguments).
4. With PyTorch installed: builds tests/reference's `Infinity` from config.json's constructor
   arguments and loads the file with `safetensors.torch.load_file` and `load_state_dict(strict=True)`.
   (The reference registers its blocks as `blocks.N`; 2. stands for upstream's chunked names, so
   3. and 4. compare the names with the chunks spelled out as `blocks.N`.)

Prints one line per check and exits non-zero on the first mismatch.
"""
import argparse
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"]) for k, v in h.items()}


def bf16_arrays(path):
    """{name: float32 array} of a bf16 safetensors file (bf16 is the high half of an f32)."""
    import numpy as np

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))
        data = f.read()
    h.pop("__metadata__", None)
    return {k: (np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dtype="<u2").astype(np.uint32) << 16)
            .view(np.float32) for k, v in h.items()}


def canonical(name, per_chunk):
    """`block_chunks.C.module.J.rest` -> `blocks.N.rest` (N = C * per_chunk + J); other names as they are."""
    parts = name.split(".")
    if parts[0] != "block_chunks":
        return name
    return ".".join(["blocks", str(int(parts[1]) * per_chunk + int(parts[3]))] + parts[4:])


def check_block_layout(names, kwargs):
    chunks, depth = kwargs.get("block_chunks", 1), kwargs["depth"]
    per = depth // chunks
    for n in names:
        parts = n.split(".")
        if chunks > 1:
            ok = (parts[0] != "blocks" and (parts[0] != "block_chunks" or (
                len(parts) > 4 and parts[2] == "module" and int(parts[1]) < chunks and int(parts[3]) < per)))
        else:
            ok = parts[0] != "block_chunks" and (parts[0] != "blocks" or int(parts[1]) < depth)
        if not ok:
            want = f"block_chunks.C.module.J (C < {chunks}, J < {per})" if chunks > 1 else "blocks.N"
            fail(f"`{n}`: config.json says block_chunks = {chunks}, so upstream's Infinity registers {want} keys; "
                 "load_state_dict(strict=True) would reject this file")


def check_expect(path, cfg, tensors, per_chunk):
    """Names and shapes against the listed reference model of config.json's constructor arguments and d."""
    kwargs, ref = cfg["constructor_kwargs"], json.load(open(path))
    match = [e for e in ref["models"] if e["d"] == cfg["d"]
             and all(e["constructor_kwargs"].get(k) == kwargs.get(k) for k in e["constructor_kwargs"])]
    if not match:
        # a listing holds the models it was made for: no verdict on any other (not a fault of the export)
        print(f"skipped: --expect ({path} lists {len(ref['models'])} reference models, none with this export's "
              f"constructor_kwargs and d {cfg['d']}; --expect compares against the models it lists only). The checks "
              "above apply (dtypes, finite values, shard index and block keys against config.json), and with "
              "PyTorch the load below compares every name and shape")
        return
    expected = match[0]["state_dict"]
    ours = {canonical(k, per_chunk): shape for k, (_, shape) in tensors.items()}
    missing, extra = sorted(set(expected) - set(ours)), sorted(set(ours) - set(expected))
    shapes = sorted(k for k in set(expected) & set(ours) if list(expected[k]) != list(ours[k]))
    if missing or extra or shapes:
        fail(f"missing {missing}, unexpected {extra}, shape mismatches "
             f"{[(k, ours[k], expected[k]) for k in shapes]}")
    print(f"ok: names and shapes equal the reference model's state_dict ({len(expected)} entries)")


def upstream_limits(kwargs):
    """What stops upstream's own `Infinity` building or sampling a text model of these arguments (its
    text pool's heads, `text_channels // 128`; its sampler's walk over `block_chunks`)."""
    c, ct = kwargs["embed_dim"], kwargs["text_channels"]
    per_head = 64 if c > 4096 else 128
    heads = ct // per_head
    if heads == 0 or c % heads:
        yield (f"text_channels {ct}: its text pool has text_channels // {per_head} = {heads} heads, which must be at "
               f"least 1 and divide embed_dim {c}: its constructor fails")
    if kwargs.get("block_chunks", 1) == 1:
        yield ("block_chunks 1: its sampler (autoregressive_infer_cfg) goes through block_chunks, which a model of "
               "one chunk lacks: export with --block-chunks K (a divisor of the depth above 1)")


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def read_json(path, what):
    """The JSON file at `path` (`what` it is, for the failure), or a FAIL naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        fail(f"{path}: no such file ({what})")
    except (OSError, ValueError) as e:
        fail(f"{path}: not readable JSON ({what}): {e}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights")
    p.add_argument("--expect", help="JSON listing of reference models' state_dict names and shapes (skipped for a "
                   "model it does not list)")
    p.add_argument("--require-torch", action="store_true", help="fail instead of skipping the PyTorch load")
    a = p.parse_args()

    if os.path.isdir(a.weights):
        a.weights = os.path.join(a.weights, "model.safetensors")
    if not os.path.isfile(a.weights):
        fail(f"{a.weights}: no such file")
    cfg = read_json(os.path.join(os.path.dirname(a.weights) or ".", "config.json"), "an export's config.json is "
                    "written beside its weights")
    missing = [k for k in ("constructor_kwargs", "dtype", "conditioning", "parameters", "key_layout") if k not in cfg]
    if missing:
        fail(f"config.json beside {a.weights} lacks {', '.join(missing)}: not an export's")
    kwargs = cfg["constructor_kwargs"]
    # (older exports do not name their file; a folder holds one export)
    if cfg.get("weights", os.path.basename(a.weights)) != os.path.basename(a.weights):
        fail(f"config.json beside it describes {cfg['weights']}, not {os.path.basename(a.weights)}")
    # (exports of earlier builds record no checksum)
    if "weights_crc32c" in cfg:
        import crc32c
        with open(a.weights, "rb") as f:
            found = f"{crc32c.crc32c(f.read()):08x}"
        if found != cfg["weights_crc32c"]:
            fail(f"{a.weights}: crc32c {found}, config.json records {cfg['weights_crc32c']}: changed since the export")
    if cfg["dtype"] not in ("float32", "bfloat16"):
        fail(f"config.json: dtype {cfg['dtype']!r}, expected \"float32\" or \"bfloat16\"")
    want_dtype = {"float32": "F32", "bfloat16": "BF16"}[cfg["dtype"]]
    tensors = header(a.weights)
    bad = [k for k, (dt, _) in tensors.items() if dt != want_dtype]
    if bad:
        fail(f"{len(bad)} tensors are not {want_dtype}: {bad[:5]}")
    if want_dtype == "F32":
        from safetensors.numpy import load_file

        arrays = load_file(a.weights)
        if sorted(arrays) != sorted(tensors):
            fail("safetensors.numpy sees different names than the header")
    else:
        arrays = bf16_arrays(a.weights)
    nonfinite = [k for k, v in arrays.items() if not (abs(v) < float("inf")).all()]
    if nonfinite:
        fail(f"non-finite values in {nonfinite[:5]}")
    # (buffers upstream registers as zeros: a key bias its attention never learns)
    nonzero = [k for k, v in arrays.items() if k.endswith("zero_k_bias") and (v != 0).any()]
    if nonzero:
        fail(f"zero_k_bias buffers are not zero: {nonzero[:5]}")
    index_path = os.path.join(os.path.dirname(a.weights) or ".", "model.safetensors.index.json")
    if not os.path.exists(index_path):
        fail(f"{index_path}: missing (upstream's `--checkpoint_type torch_shard` loads it; export again)")
    weight_map = read_json(index_path, "the export's shard index").get("weight_map", {})
    if sorted(weight_map) != sorted(tensors) or set(weight_map.values()) != {os.path.basename(a.weights)}:
        fail(f"{index_path} does not map every tensor to {os.path.basename(a.weights)}")
    print(f"ok: {len(tensors)} tensors, {cfg['parameters']} parameters, dtype {cfg['dtype']}, keys {cfg['key_layout']}")
    check_block_layout(tensors, kwargs)
    per_chunk = kwargs["depth"] // kwargs.get("block_chunks", 1)
    print(f"ok: block keys as Infinity(block_chunks={kwargs.get('block_chunks', 1)}) registers them")
    if cfg["conditioning"]["kind"] == "text":
        for line in upstream_limits(kwargs):
            print("upstream:", line)

    if a.expect and cfg["conditioning"]["kind"] != "text":
        print("skipped: --expect (a class-conditioned model: upstream's Infinity and the reference are "
              "text-conditioned)")
    elif a.expect:
        check_expect(a.expect, cfg, tensors, per_chunk)

    if cfg["conditioning"]["kind"] != "text" and a.require_torch:
        fail("--require-torch: the PyTorch load builds the text-conditioned reference model; this export is "
             "class-conditioned (leave --require-torch out: its other checks passed)")
    try:
        import torch
        from safetensors.torch import load_file as torch_load
    except ImportError:
        if a.require_torch:
            fail("PyTorch is not installed")
        print("skipped: PyTorch load (torch not installed)")
        return
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
    from infinity_ref import Infinity

    if cfg["conditioning"]["kind"] != "text":
        print("skipped: PyTorch load (the reference model is text-conditioned)")
        return
    model = Infinity(d=cfg["d"], **kwargs)
    sd = {canonical(k, per_chunk): v for k, v in torch_load(a.weights).items()}
    buffers = [k for k in sd if k.endswith("zero_k_bias")]
    model.load_state_dict(sd, strict=True)
    print(f"ok: torch {torch.__version__} load_state_dict(strict=True) into the reference Infinity "
          f"({len(sd) - len(buffers)} parameters + {len(buffers)} zero_k_bias buffers)")

if __name__ == "__main__":
    main()
