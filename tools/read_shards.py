#!/usr/bin/env python3
"""Read an Infinity bit dataset with pyarrow: check it against its manifest and print a summary, or dump
every row as JSON (bits unpacked to 0/1 per channel) for comparison with another reader.

  python tools/read_shards.py DIR            # checks + summary
  python tools/read_shards.py DIR --dump F   # also write all rows to F
"""
import argparse
import json
import os

import numpy as np
import pyarrow as pa
import crc32c


# The keys each object of a manifest may hold (data/src/manifest.rs refuses any other, as this does).
KEYS = {
    "": {"format", "format_version", "d", "bit_order", "tokenizer", "conditions", "latent", "schedules", "shards",
         "total_rows", "created_by"},
    "tokenizer": {"name", "file", "params"},
    "conditions": {"class", "text", "caption"},
    "conditions.class": {"num_classes", "names"},
    "conditions.text": {"width", "dtype", "max_tokens", "encoder", "short_caption"},
    "latent": {"dtype", "layout"},
    "schedules[]": {"name", "h_div_w_template", "pixel_budget", "scales", "spatial_patchify"},
    "shards[]": {"file", "rows", "bytes", "crc32c", "bucket_rows"},
}


def require(ok, message):
    """A check that holds under `python -O` too (which strips asserts)."""
    if not ok:
        raise SystemExit(f"error: {message}")


def check_keys(path, m):
    """Unknown keys are errors naming their path: a typo (`num_clases`) must not pass unseen."""
    def objects():
        yield "", m
        for k in ("tokenizer", "conditions", "latent"):
            if isinstance(m.get(k), dict):
                yield k, m[k]
        for k in ("class", "text"):
            if isinstance(m.get("conditions", {}).get(k), dict):
                yield f"conditions.{k}", m["conditions"][k]
        for k in ("schedules", "shards"):
            for i, o in enumerate(m.get(k) or []):
                yield f"{k}[{i}]", o
    for at, obj in objects():
        known = KEYS[at.split("[")[0] + ("[]" if "[" in at else "")]
        unknown = sorted(set(obj) - known)
        if unknown:
            require(False, f"{path}: unknown key `{at + '.' if at else ''}{unknown[0]}` (expected one of {sorted(known)})")


def read(dir):
    path = os.path.join(dir, "manifest.json")
    require(os.path.isdir(dir), f"{dir}: no such folder")
    require(os.path.isfile(path), f"{dir}: not a dataset: it holds no manifest.json (written last: an unfinished write?)")
    # (a byte-order mark, which some editors write, is accepted as the Rust reader accepts it)
    try:
        with open(path, encoding="utf-8-sig") as f:
            m = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: {path}: not a valid manifest: {e}")
    require(isinstance(m, dict), f"{path}: not a valid manifest: expected a JSON object")
    check_keys(path, m)
    require(m["format"] == "infinity-bits" and m["format_version"] == 1, f"{path}: unsupported format")
    file = (m.get("tokenizer") or {}).get("file")
    plain = lambda f: f and "/" not in f and "\\" not in f and not f.startswith(".")
    require(file is None or plain(file), f"{path}: tokenizer.file `{file}`: expected a plain file name in the folder")
    d = m["d"]
    nb = (d + 7) // 8
    # the bits of a token's last byte above bit d, which must be zero (none where d is a multiple of 8)
    padding = (0xFF << (d % 8)) & 0xFF if d % 8 else 0
    rows = []
    for entry in m["shards"]:
        path = os.path.join(dir, entry["file"])
        require(os.path.isfile(path), f"{path}: missing: {os.path.join(dir, 'manifest.json')} lists this shard "
                f"({entry['bytes']} bytes), the folder does not hold it")
        with open(path, "rb") as f:
            data = f.read()
        require(len(data) == entry["bytes"], f"{path}: size {len(data)} != manifest {entry['bytes']}")
        require(f"{crc32c.crc32c(data):08x}" == entry["crc32c"], f"{path}: checksum mismatch")
        with pa.memory_map(path) as src:
            table = pa.ipc.open_file(src).read_all()
        require(table.num_rows == entry["rows"], f"{path}: {table.num_rows} rows != manifest {entry['rows']}")
        for column, kind in (("id", pa.uint64()), ("bucket", pa.uint16()), ("bits", pa.binary())):
            found = table.schema.field(column).type if column in table.column_names else "no such column"
            require(found == kind, f"{path}: column `{column}`: expected {kind}, found {found}")
        cols = table.to_pydict()
        for i in range(table.num_rows):
            b = cols["bucket"][i]
            at = f"{path}: row {i} (id {cols['id'][i]})"
            require(0 <= b < len(m["schedules"]),
                    f"{at}, column `bucket`: expected a schedule index < {len(m['schedules'])}, found {b}")
            s = m["schedules"][b]
            L = sum(t * h * w for t, h, w in s["scales"])
            raw = cols["bits"][i]
            require(len(raw) == L * nb, f"{at}, column `bits`: expected {L * nb} bytes (L = {L} tokens of schedule "
                    f"`{s['name']}` × {nb} bytes), found {len(raw)} bytes")
            packed = np.frombuffer(raw, dtype=np.uint8).reshape(L, nb)
            bad = np.flatnonzero(packed[:, -1] & padding)
            if bad.size:
                raise SystemExit(f"error: {at}, column `bits`: expected zero padding bits above bit {d}, "
                                 f"found token {bad[0]} sets them")
            bits = np.unpackbits(packed, axis=1, bitorder="little")[:, :d]
            row = {"id": cols["id"][i], "bucket": b, "bits": bits.flatten().tolist()}
            if "latent" in cols:
                row["latent"] = np.frombuffer(cols["latent"][i], dtype="<f2").astype(np.float32).tolist()
            if "class_label" in cols:
                row["class_label"] = cols["class_label"][i]
            if "text_emb" in cols:
                row["text_hex"] = cols["text_emb"][i].hex()
            if "text_emb_short" in cols:
                short = cols["text_emb_short"][i]
                row["text_short_hex"] = None if short is None else short.hex()
            if "caption" in cols:
                row["caption"] = cols["caption"][i]
            rows.append(row)
    require(len(rows) == m["total_rows"], f"{dir}: {len(rows)} rows, the manifest says {m['total_rows']}")
    return m, rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("--dump")
    a = p.parse_args()
    try:
        m, rows = read(a.dir)
    except (OSError, LookupError, TypeError, ValueError, AttributeError, pa.ArrowException) as e:
        # what the checks above do not name (a manifest key of the wrong type, a file Arrow cannot read):
        # one line, as `infinity data verify` would say it more precisely
        raise SystemExit(f"error: {a.dir}: {type(e).__name__}: {e} (`infinity data verify {a.dir}` says more)")
    print(f"{a.dir}: {len(rows)} rows in {len(m['shards'])} shards, d = {m['d']}, checksums ok")
    if a.dump:
        with open(a.dump, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    main()
