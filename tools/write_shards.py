#!/usr/bin/env python3
"""Write Infinity bit shards with pyarrow (the format in docs/data-format.md).

Two entry points:

  python tools/write_shards.py upstream (--images DIR | --meta DIR) --out DIR --vae-ckpt CKPT --t5 PATH
                                       [--pn 0.06M] [--d 32 | --d 14 --spatial-patchify]
      Tokenize images with upstream's BSQ-VAE and flan-t5-xl (needs torch and the upstream Infinity
      repo on PYTHONPATH; run it from the upstream checkout). --images: NAME.txt beside an image is its
      caption, NAME.short.txt its short caption (upstream's `text`, for data.short_cap_prob). --meta:
      upstream's metadata files (`<h_div_w_template>_<count>.jsonl`: `image_path`, `long_caption`,
      `text`), each file's images at its template, as `infinity data pack --meta` reads them. Bits are made exactly as upstream's
      bitwise self-correction makes its labels with zero flips. --spatial-patchify: the 8B's VAE,
      latents and bits at twice the schedule's sides (model.apply_spatial_patchify).

  python tools/write_shards.py demo --out DIR [--rows N] [--d D] [--spatial-patchify]
      Random but valid rows with every optional column, plus expected.json holding what was written.
      The Rust test suite uses it to prove that Rust reads what pyarrow wrote.

`ShardWriter` is the part to reuse: give it rows of bits `(L, d)` uint8, optional latent `(d, H, W)`,
class label, text embedding `(n_tokens, width)`, caption and a short caption's embedding; it packs, batches, rolls shards, checksums
them (crc32c) and writes manifest.json last.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import pyarrow as pa
import crc32c

FORMAT_NAME = "infinity-bits"
FORMAT_VERSION = 1
BIT_ORDER = "token-major; ceil(d/8) bytes per token; bit i at byte i/8, bit i%8 (LSB first)"
UPSTREAM_SCHEDULES = os.path.join(os.path.dirname(__file__), "..", "data", "schedules", "upstream.json")


def upstream_schedule(template: str, budget: str) -> dict:
    """A schedule entry for the manifest, from the same table the Rust crate embeds."""
    with open(UPSTREAM_SCHEDULES) as f:
        cat = json.load(f)
    n = cat["pixel_budgets"][budget]
    hws = next(t["scales"] for t in cat["templates"] if t["h_div_w"] == template)
    return {"name": f"{template}/{budget}", "h_div_w_template": template, "pixel_budget": budget,
            "scales": [[1, h, w] for h, w in hws[:n]]}


def patchified(sched: dict) -> dict:
    """The schedule a spatially patchified tokenizer stores (upstream's 8B VAE, apply_spatial_patchify):
    every side doubled, a transformer token being a 2×2 patch of it."""
    return {**sched, "name": sched["name"] + "/patchify", "spatial_patchify": True,
            "scales": [[t, 2 * h, 2 * w] for t, h, w in sched["scales"]]}


def pack_bits(bits: np.ndarray) -> bytes:
    """(L, d) of 0/1 → (L, ceil(d/8)) bytes, bit i at byte i//8, bit i%8, least significant first."""
    return np.packbits(bits.astype(np.uint8), axis=1, bitorder="little").tobytes()


class ShardWriter:
    def __init__(self, out, d, schedules, *, latent=False, num_classes=None, class_names=(),
                 text_width=None, text_dtype="f16", text_max_tokens=512, text_encoder="", short_caption=False,
                 caption=False, tokenizer="bsq-vae", tokenizer_params=None, shard_bytes=256 << 20,
                 batch_rows=1024, created_by="tools/write_shards.py"):
        os.makedirs(out, exist_ok=True)
        if os.path.exists(os.path.join(out, "manifest.json")):
            raise SystemExit(f"{out} already holds a dataset")
        self.out, self.d, self.schedules = out, d, schedules
        self.nb = (d + 7) // 8
        fields = [pa.field("id", pa.uint64(), False), pa.field("bucket", pa.uint16(), False),
                  pa.field("bits", pa.binary(), False)]
        if latent:
            fields.append(pa.field("latent", pa.binary(), False))
        if num_classes is not None:
            fields.append(pa.field("class_label", pa.int32(), False))
        if text_width is not None:
            fields.append(pa.field("text_emb", pa.binary(), False))
            if short_caption:
                # a short caption's embedding beside the long one's; null where a row has none
                fields.append(pa.field("text_emb_short", pa.binary(), True))
        if caption:
            fields.append(pa.field("caption", pa.string(), True))
        self.schema = pa.schema(fields)
        self.cols = {f.name: [] for f in fields}
        if text_width is not None and text_dtype not in ("f16", "bf16"):
            raise ValueError(f"text_dtype {text_dtype!r}: the format stores text features as \"f16\" or \"bf16\"")
        self.manifest = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "d": d, "bit_order": BIT_ORDER,
            "tokenizer": {"name": tokenizer, "file": None, "params": tokenizer_params},
            "conditions": {
                "class": None if num_classes is None else {"num_classes": num_classes, "names": list(class_names)},
                "text": None if text_width is None else {"width": text_width, "dtype": text_dtype,
                                                         "max_tokens": text_max_tokens, "encoder": text_encoder,
                                                         # (the key only when set: as the Rust writer)
                                                         **({"short_caption": True} if short_caption else {})},
                "caption": caption,
            },
            "latent": {"dtype": "f16", "layout": "d,H,W"} if latent else None,
            "schedules": schedules, "shards": [], "total_rows": 0, "created_by": created_by,
        }
        self.shard_bytes, self.batch_rows = shard_bytes, batch_rows
        self.writer = None
        self.shard = None

    def add(self, id, bucket, bits, latent=None, class_label=None, text_emb=None, caption=None, text_emb_short=None):
        s = self.schedules[bucket]
        L = sum(t * h * w for t, h, w in s["scales"])
        if bits.shape != (L, self.d):
            raise ValueError(f"row {id}: bits {bits.shape}, schedule {s['name']} needs {(L, self.d)}")
        row = {"id": id, "bucket": bucket, "bits": pack_bits(bits)}
        if "latent" in self.cols:
            _, H, W = s["scales"][-1]
            if latent is None or np.shape(latent) != (self.d, H, W):
                raise ValueError(f"row {id}: latent {np.shape(latent)}, expected {(self.d, H, W)}")
            row["latent"] = np.ascontiguousarray(latent, dtype="<f2").tobytes()
        if "class_label" in self.cols:
            row["class_label"] = int(class_label)
        if "text_emb" in self.cols:
            row["text_emb"] = self._text_bytes(id, "text_emb", text_emb)
        if "text_emb_short" in self.cols:
            row["text_emb_short"] = None if text_emb_short is None else self._text_bytes(id, "text_emb_short",
                                                                                         text_emb_short)
        if "caption" in self.cols:
            row["caption"] = caption
        if self.writer is None:
            name = f"shard-{len(self.manifest['shards']):05d}.arrow"
            self.writer = pa.ipc.new_file(os.path.join(self.out, name), self.schema)
            self.shard = {"file": name, "rows": 0, "bytes": 0, "bucket_rows": [0] * len(self.schedules)}
        for k, v in row.items():
            self.cols[k].append(v)
        self.shard["rows"] += 1
        self.shard["bucket_rows"][bucket] += 1
        self.shard["bytes"] += sum(len(v) for v in row.values() if isinstance(v, bytes))
        if len(self.cols["id"]) >= self.batch_rows:
            self._flush()
        if self.shard["bytes"] >= self.shard_bytes:
            self._close_shard()

    def _flush(self):
        if not self.cols["id"]:
            return
        arrays = [pa.array(self.cols[f.name], type=f.type) for f in self.schema]
        self.writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
        for v in self.cols.values():
            v.clear()

    def _close_shard(self):
        if self.writer is None:
            return
        self._flush()
        self.writer.close()
        path = os.path.join(self.out, self.shard["file"])
        crc = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                crc = crc32c.crc32c(chunk, crc)
        self.manifest["shards"].append({
            "file": self.shard["file"], "rows": self.shard["rows"], "bytes": os.path.getsize(path),
            "crc32c": f"{crc:08x}", "bucket_rows": self.shard["bucket_rows"]})
        self.writer, self.shard = None, None

    def close(self):
        self._close_shard()
        self.manifest["total_rows"] = sum(s["rows"] for s in self.manifest["shards"])
        tmp = os.path.join(self.out, "manifest.tmp")
        with open(tmp, "w") as f:
            json.dump(self.manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.out, "manifest.json"))
        return self.manifest


    def _text_bytes(self, id, column, features):
        """A caption's features `[tokens, width]` as the manifest's 16-bit type, checked as `infinity data
        verify` would (a transposed array, too many tokens, a value the type cannot hold)."""
        text = self.manifest["conditions"]["text"]
        x = np.asarray(features, dtype=np.float32)
        width, max_tokens = text["width"], text["max_tokens"]
        if x.ndim != 2 or x.shape[1] != width or not 1 <= x.shape[0] <= max_tokens:
            raise ValueError(f"row {id}: {column} has shape {x.shape}, expected [tokens, {width}] with 1 to "
                             f"{max_tokens} tokens (the features of one caption, token by token)")
        if text["dtype"] == "f16":
            with np.errstate(over="ignore"):
                stored = x.astype("<f2")
            finite = np.isfinite(stored)
        else:
            # (bf16: an all-ones exponent is a NaN or an infinity, rounding included)
            stored = np.frombuffer(to_half_bytes(x, "bf16"), dtype="<u2").reshape(x.shape)
            finite = (stored & 0x7F80) != 0x7F80
        if not finite.all():
            bad = tuple(np.argwhere(~finite)[0])
            limit = {"f16": "65504", "bf16": "3.39e38"}[text["dtype"]]
            why = f" ({text['dtype']} holds at most {limit} in magnitude)" if np.isfinite(x[bad]) else ""
            raise ValueError(f"row {id}: {column} at token {bad[0]}, channel {bad[1]}: {float(x[bad]):g} is not a finite "
                             f"{text['dtype']} value{why}")
        return stored.tobytes()


def to_half_bytes(x: np.ndarray, dtype: str) -> bytes:
    if dtype == "f16":
        return x.astype("<f2").tobytes()
    # bf16: the upper half of the f32 bit pattern, rounded to nearest even
    u = x.astype("<f4").view(np.uint32)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    return u.tobytes()


# ---------------------------------------------------------------------------------------------------
# multi-scale BSQ in numpy (no torch): PyTorch's `area` and `trilinear` (align_corners=False) resizes
# in f32, as kernels/src/resample.rs documents them; other sums may round a near-zero residual the
# other way, which `infinity data verify` tolerates
# ---------------------------------------------------------------------------------------------------
def area_resize(x, h, w):
    """adaptive_avg_pool over (H, W) of x (d, H, W) to (d, h, w)."""
    d, H, W = x.shape
    out = np.empty((d, h, w), np.float32)
    for i in range(h):
        r0, r1 = (i * H) // h, -((-(i + 1) * H) // h)
        for j in range(w):
            c0, c1 = (j * W) // w, -((-(j + 1) * W) // w)
            out[:, i, j] = x[:, r0:r1, c0:c1].sum(axis=(1, 2), dtype=np.float32) / np.float32(r1 - r0) / np.float32(c1 - c0)
    return out


def linear_taps(src, dst):
    scale = np.float32(src) / np.float32(dst)
    pos = np.maximum(scale * (np.arange(dst, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.minimum(np.floor(pos).astype(np.int64), src - 1)
    lam = np.clip(pos - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = i0 + (i0 < src - 1)
    return i0, i1, np.float32(1) - lam, lam


def bilinear_resize(x, H, W):
    """x (d, h, w) up-sampled to (d, H, W): the width axis first, then the height."""
    _, h, w = x.shape
    h0, h1, l0, l1 = linear_taps(h, H)
    w0, w1, m0, m1 = linear_taps(w, W)
    rows = x[:, :, w0] * m0 + x[:, :, w1] * m1
    return (rows[:, h0, :] * l0[:, None] + rows[:, h1, :] * l1[:, None]).astype(np.float32)


def multiscale_bits_np(latent, scales):
    """Bits (L, d) of the multi-scale residual BSQ of latent (d, H, W) (f32), scales [(1, h, w)…]."""
    d, H, W = latent.shape
    cum = np.zeros_like(latent, dtype=np.float32)
    out = []
    for si, (_, h, w) in enumerate(scales):
        r = latent - cum
        if si != len(scales) - 1:
            r = area_resize(r, h, w)
        pos = r > 0
        out.append(pos.reshape(d, -1).T)
        q = np.where(pos, np.float32(1), np.float32(-1)) / np.float32(math.sqrt(d))
        cum = cum + (bilinear_resize(q.astype(np.float32), H, W) if (h, w) != (H, W) else q.astype(np.float32))
    return np.concatenate(out).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# demo: random latents, their bits, random conditions + expected.json (for the Rust interop test)
# ---------------------------------------------------------------------------------------------------
def demo(out, rows, d, seed, spatial_patchify=False):
    rng = np.random.default_rng(seed)
    schedules = [upstream_schedule("1.000", "demo4"), upstream_schedule("0.500", "demo4")]
    if spatial_patchify:
        schedules = [patchified(s) for s in schedules]
    w = ShardWriter(out, d, schedules, latent=True, num_classes=7, text_width=5, text_dtype="bf16",
                    text_max_tokens=4, text_encoder="random", short_caption=True, caption=True, tokenizer="demo-random",
                    shard_bytes=4096, batch_rows=5, created_by="tools/write_shards.py demo")
    expected = []
    for i in range(rows):
        b = int(rng.integers(0, 2))
        s = schedules[b]
        L = sum(t * h * ww for t, h, ww in s["scales"])
        _, H, W = s["scales"][-1]
        latent = rng.uniform(-2, 2, size=(d, H, W)).astype(np.float16)
        bits = multiscale_bits_np(latent.astype(np.float32), s["scales"])
        assert bits.shape == (L, d)
        n_text = int(rng.integers(1, 5))
        text = rng.uniform(-1, 1, size=(n_text, 5)).astype(np.float32)
        caption = None if i % 4 == 0 else f"row {i}: ünïcode ✓"
        short = None if i % 3 == 0 else rng.uniform(-1, 1, size=(1 + i % 2, 5)).astype(np.float32)
        label = int(rng.integers(0, 7))
        w.add(10_000 + i, b, bits, latent, label, text, caption, short)
        expected.append({"id": 10_000 + i, "bucket": b, "bits": bits.flatten().tolist(),
                         "latent": latent.astype(np.float32).flatten().tolist(), "class_label": label,
                         "text_bf16_hex": to_half_bytes(text, "bf16").hex(), "caption": caption,
                         "text_short_bf16_hex": None if short is None else to_half_bytes(short, "bf16").hex()})
    w.close()
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f)


# ---------------------------------------------------------------------------------------------------
# upstream: BSQ-VAE + flan-t5-xl (not run by CI: it needs the upstream weights)
# ---------------------------------------------------------------------------------------------------
def multiscale_bits(raw, scales):
    """Multi-scale residual BSQ of a raw VAE feature (1, d, 1, H, W), as upstream's bitwise
    self-correction with zero flips: area down-sampling of the residual, sign → ±1/√d,
    trilinear up-sampling into the running sum. Returns bits (L, d) uint8."""
    import torch
    import torch.nn.functional as F
    d = raw.shape[1]
    cum = torch.zeros_like(raw)
    out = []
    for si, (t, h, w) in enumerate(scales):
        r = raw - cum
        if si != len(scales) - 1:
            r = F.interpolate(r, size=(t, h, w), mode="area")
        pos = r > 0
        q = torch.where(pos, 1.0, -1.0) / math.sqrt(d)
        out.append(pos.permute(0, 2, 3, 4, 1).reshape(-1, d))
        cum = cum + F.interpolate(q, size=raw.shape[-3:], mode="trilinear")
    return torch.cat(out).to(torch.uint8).cpu().numpy()


def upstream_meta(folder, templates):
    """The rows of upstream's metadata files in `folder` (`<h_div_w_template>_<count>.jsonl`, one JSON
    object per line with `image_path`, `long_caption` and optionally `text`), as
    (image path, template, long caption, short caption or None), files in name order; the same rules
    as `infinity data pack --meta` (data/src/meta.rs). A relative image path is taken from `folder`."""
    names = sorted(n for n in os.listdir(folder) if n.endswith(".jsonl") and not n.startswith(".")
                   and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise ValueError(f"{folder}: no metadata files (<h_div_w_template>_<count>.jsonl, upstream's format)")
    rows = []
    for name in names:
        path = os.path.join(folder, name)
        stem, _, count = name[: -len(".jsonl")].rpartition("_")
        if not stem or not (count.isascii() and count.isdigit()):
            raise ValueError(f"{path}: expected <h_div_w_template>_<count>.jsonl, e.g. 1.000_000002500.jsonl")
        # "0.5" is upstream's 0.500: the catalog's spelling, as the RoPE frame is looked up by it
        template = next((t for t in templates if t == stem), None) or next(
            (t for t in templates if _ratio(stem) == float(t)), None)
        if template is None:
            raise ValueError(f"{path}: `{stem}` is not an aspect-ratio template: expected one of {templates}")
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
        # lines end at "\n" alone (a "\r" before it dropped), as Rust's str::lines splits: JSON strings may
        # hold U+2028 or U+0085, where str.splitlines would split
        lines = [l[:-1] if l.endswith("\r") else l for l in text.split("\n")]
        if text.endswith("\n") or not text:
            lines.pop()
        for i, line in enumerate(lines, 1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {i}: not JSON ({e})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path} line {i}: expected a JSON object")
            for key in ("image_path", "long_caption", "text"):
                if obj.get(key) is not None and not isinstance(obj[key], str):
                    raise ValueError(f"{path} line {i}: `{key}` is {json.dumps(obj[key])}, expected a string")
            if not obj.get("image_path"):
                raise ValueError(f"{path} line {i}: no `image_path`")
            if obj.get("long_caption") is None:
                raise ValueError(f"{path} line {i}: no `long_caption`")
            short = (obj.get("text") or "").strip() or None
            rows.append((os.path.join(folder, obj["image_path"]), template, obj["long_caption"].strip(), short))
        if len(lines) != int(count):
            raise ValueError(f"{path}: the name says {int(count)} lines, the file has {len(lines)} "
                             "(upstream's loader needs them equal: rename it)")
    return rows


def _ratio(text):
    try:
        return float(text)
    except ValueError:
        return None


def upstream(args):
    import torch
    from PIL import Image
    sys.path.insert(0, os.getcwd())
    # Upstream's own loaders (tools/run_infinity.py in the Infinity repo).
    from tools.run_infinity import load_tokenizer, load_visual_tokenizer, transform
    vae = load_visual_tokenizer(argparse.Namespace(
        vae_type=args.d, vae_path=args.vae_ckpt, apply_spatial_patchify=int(args.spatial_patchify)))
    text_tokenizer, text_encoder = load_tokenizer(t5_path=args.t5)
    with open(UPSTREAM_SCHEDULES) as f:
        templates = [t["h_div_w"] for t in json.load(f)["templates"]]
    schedules = [upstream_schedule(t, args.pn) for t in templates]
    # the 8B's VAE (stride 8) encodes at twice the transformer's sides; the others at stride 16
    stride = 16
    if args.spatial_patchify:
        schedules, stride = [patchified(s) for s in schedules], 8
    if args.meta:
        # upstream's metadata files: each file's template, `long_caption` and `text` (the short caption)
        rows = upstream_meta(args.meta, templates)
    else:
        files = sorted(p for p in os.listdir(args.images) if p.lower().endswith((".png", ".jpg", ".jpeg")))
        read = lambda p: open(p).read().strip() if os.path.exists(p) else None
        stem = lambda name: os.path.join(args.images, os.path.splitext(name)[0])
        # upstream's `text` beside `long_caption`: NAME.short.txt; an empty one is none (the long one is read)
        rows = [(os.path.join(args.images, n), None, read(stem(n) + ".txt") or "", read(stem(n) + ".short.txt") or None)
                for n in files]
    # read in training with data.short_cap_prob
    short_captions = any(r[3] is not None for r in rows)

    def encode(caption):
        tok = text_tokenizer(text=[caption], max_length=512, padding="max_length", truncation=True,
                             return_tensors="pt")
        mask = tok.attention_mask.to(text_encoder.device)
        feats = text_encoder(input_ids=tok.input_ids.to(text_encoder.device), attention_mask=mask)
        return feats["last_hidden_state"].float()[0, : int(mask.sum())].cpu().numpy()

    # T5 runs in fp16 (upstream's load_tokenizer): f16 stores its outputs exactly, bf16 would drop 3 bits
    w = ShardWriter(args.out, args.d, schedules, latent=True, text_width=2048, text_dtype="f16",
                    text_max_tokens=512, text_encoder="flan-t5-xl", short_caption=short_captions, caption=True,
                    tokenizer=f"bsq-vae-d{args.d}", tokenizer_params={"ckpt": os.path.basename(args.vae_ckpt)},
                    created_by="tools/write_shards.py upstream")
    for i, (path, template, caption, short) in enumerate(rows):
        img = Image.open(path).convert("RGB")
        b = templates.index(template) if template else int(np.argmin([abs(img.height / img.width - float(t)) for t in templates]))
        _, H, W = schedules[b]["scales"][-1]
        x = transform(img, H * stride, W * stride).unsqueeze(0).to(vae.device if hasattr(vae, "device") else "cuda")
        with torch.no_grad():
            raw = vae.encode_for_raw_features(x, scale_schedule=schedules[b]["scales"])[0].float()
            if raw.dim() == 4:
                raw = raw.unsqueeze(2)  # (1, d, 1, H, W)
            feats, short_feats = encode(caption), None if short is None else encode(short)
        raw16 = raw.half().float()  # store f16 and derive the bits from what is stored
        w.add(i, b, multiscale_bits(raw16, schedules[b]["scales"]), raw16[0, :, 0].cpu().numpy(),
              text_emb=feats, caption=caption, text_emb_short=short_feats)
    print(json.dumps(w.close()["total_rows"]), "rows written to", args.out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo")
    d.add_argument("--out", required=True)
    d.add_argument("--rows", type=int, default=40)
    d.add_argument("--d", type=int, default=20)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--spatial-patchify", action="store_true")
    u = sub.add_parser("upstream")
    src = u.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="a folder of images, NAME.txt beside NAME.png its caption")
    src.add_argument("--meta", help="a folder of upstream's <h_div_w_template>_<count>.jsonl metadata files")
    u.add_argument("--out", required=True)
    u.add_argument("--vae-ckpt", required=True)
    u.add_argument("--t5", required=True)
    u.add_argument("--d", type=int, default=32)
    u.add_argument("--pn", default="0.06M")
    u.add_argument("--spatial-patchify", action="store_true",
                   help="the 8B's VAE (use with --d 14): latents at twice the schedule's sides")
    a = p.parse_args()
    if a.cmd == "demo":
        demo(a.out, a.rows, a.d, a.seed, a.spatial_patchify)
    else:
        upstream(a)


if __name__ == "__main__":
    main()
