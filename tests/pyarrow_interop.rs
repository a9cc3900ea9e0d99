//! Rust reads what pyarrow wrote, and pyarrow reads what Rust wrote, value for value.

use half::f16;
use infinity_data::{format, Checksums, Dataset};
use serde_json::Value;

use crate::{path_str, python};

#[test]
fn rust_reads_what_pyarrow_wrote() {
    rust_reads_pyarrow_demo(false);
}

/// Schedules stored for spatial patchify (twice the sides, `spatial_patchify` in the manifest).
#[test]
fn rust_reads_what_pyarrow_wrote_for_spatial_patchify() {
    rust_reads_pyarrow_demo(true);
}

fn rust_reads_pyarrow_demo(patchify: bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("py");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"tools/write_shards.py", &"demo", &"--out", &out, &"--rows", &"40", &"--d", &"20"];
    if patchify {
        args.push(&"--spatial-patchify");
    }
    python(&args);
    let ds = Dataset::open(&out, Checksums::Verify).unwrap();
    assert!(ds.manifest.shards.len() > 2, "pyarrow demo should roll several shards");
    for s in &ds.manifest.schedules {
        assert_eq!((s.spatial_patchify, s.scales[0][1]), (patchify, 1 + patchify as u32), "{}", s.name);
    }
    let expected: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("expected.json")).unwrap()).unwrap();
    assert_eq!(ds.num_rows(), expected.len() as u64);
    let d = ds.manifest.d as usize;
    for (g, want) in expected.iter().enumerate() {
        ds.validate_row(g as u64).unwrap();
        let row = ds.row(g as u64);
        assert_eq!(row.id, want["id"].as_u64().unwrap());
        assert_eq!(row.bucket as u64, want["bucket"].as_u64().unwrap());
        let mut bits = vec![0u8; row.bits.len() / format::bytes_per_token(d) * d];
        format::unpack_bits(row.bits, d, &mut bits);
        let want_bits: Vec<u8> = want["bits"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
        assert!(bits == want_bits, "row {g}: bits differ");
        let latent: Vec<u16> = row.latent.unwrap().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let want_latent: Vec<u16> =
            want["latent"].as_array().unwrap().iter().map(|v| f16::from_f64(v.as_f64().unwrap()).to_bits()).collect();
        assert!(latent == want_latent, "row {g}: latent differs");
        assert_eq!(row.class_label.unwrap() as i64, want["class_label"].as_i64().unwrap());
        let hex: String = row.text_emb.unwrap().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, want["text_bf16_hex"].as_str().unwrap(), "row {g}: text embedding");
        let short = row.text_emb_short.map(|t| t.iter().map(|b| format!("{b:02x}")).collect::<String>());
        assert_eq!(short.as_deref(), want["text_short_bf16_hex"].as_str(), "row {g}: short caption's embedding");
        assert_eq!(row.caption, want["caption"].as_str(), "row {g}: caption");
    }
    let report = infinity_data::inspect::verify(&out);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn pyarrow_reads_what_rust_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rs");
    let opts = infinity_data::synth::SynthOptions {
        rows: 150,
        fit_rows: 64,
        writer: infinity_data::writer::WriterOptions { shard_bytes: 64 << 10, batch_rows: 50, overwrite: false },
        ..Default::default()
    };
    infinity_data::synth::synth(&out, &opts).unwrap();
    let dump = dir.path().join("dump.json");
    python(&[&"tools/read_shards.py", &path_str(&out), &"--dump", &dump]);
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();
    let ds = Dataset::open(&out, Checksums::Verify).unwrap();
    assert_eq!(rows.len() as u64, ds.num_rows());
    let d = ds.manifest.d as usize;
    for (g, py) in rows.iter().enumerate() {
        let row = ds.row(g as u64);
        assert_eq!(py["id"].as_u64().unwrap(), row.id);
        assert_eq!(py["bucket"].as_u64().unwrap(), row.bucket as u64);
        let mut bits = vec![0u8; row.bits.len() / format::bytes_per_token(d) * d];
        format::unpack_bits(row.bits, d, &mut bits);
        let py_bits: Vec<u8> = py["bits"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
        assert!(py_bits == bits, "row {g}: pyarrow unpacked other bits");
        // compare as f16 bit patterns: JSON's decimal round trip is exact at f16 precision
        let latent: Vec<u16> = row.latent.unwrap().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let py_latent: Vec<u16> =
            py["latent"].as_array().unwrap().iter().map(|v| f16::from_f64(v.as_f64().unwrap()).to_bits()).collect();
        assert!(py_latent == latent, "row {g}: pyarrow decoded another latent");
        assert_eq!(py["class_label"].as_i64(), row.class_label.map(i64::from));
        let hex: String = row.text_emb.unwrap().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(py["text_hex"].as_str().unwrap(), hex);
        let short = row.text_emb_short.map(|t| t.iter().map(|b| format!("{b:02x}")).collect::<String>());
        assert_eq!(py["text_short_hex"].as_str(), short.as_deref(), "row {g}: short caption's embedding");
        assert_eq!(py["caption"].as_str(), row.caption);
    }
    // a key Rust refuses (a typo) the second reader refuses too, naming it
    let manifest = out.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"num_classes\"", "\"num_clases\"")).unwrap();
    assert!(Dataset::open(&out, Checksums::Skip).is_err());
    let e = crate::python_fails(&[&"tools/read_shards.py", &path_str(&out)]);
    assert!(e.contains("unknown key `conditions.class.num_clases`"), "{e}");
}

/// Python (with `json` and `out`, a dataset folder): its first shard's file (`path`) and manifest entry
/// (`s`), for a script to read and change as `t`.
const SHARD_0_READ: &str = r#"m = json.load(open(f"{out}/manifest.json"))
s = m["shards"][0]
path = f"{out}/{s['file']}"
"#;

/// Python after [`SHARD_0_READ`] (with `pyarrow as pa` and `crc32c`): `t` written back as the shard, its
/// manifest entry's checksum and size made the file's.
const SHARD_0_WRITE: &str = r#"with pa.OSFile(path, "wb") as f, pa.ipc.new_file(f, t.schema) as w:
    w.write_table(t)
data = open(path, "rb").read()
s["crc32c"], s["bytes"] = f"{crc32c.crc32c(data):08x}", len(data)
json.dump(m, open(f"{out}/manifest.json", "w"))
"#;

/// Extra columns the shard format does not read are ignored, also of types pyarrow writes with other
/// buffer layouts: a decimal (16-byte values, 8-byte aligned in the file) and an all-null column (what
/// pandas makes of a column of None).
#[test]
fn extra_decimal_and_null_columns_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("py");
    python(&[&"tools/write_shards.py", &"demo", &"--out", &out, &"--rows", &"12", &"--d", &"20"]);
    let add_columns = format!(
        r#"
import decimal, json, sys
import crc32c, pyarrow as pa
out = sys.argv[1]
{SHARD_0_READ}t = pa.ipc.open_file(path).read_all()
t = t.append_column("price", pa.array([decimal.Decimal("1.25")] * t.num_rows, pa.decimal128(10, 2)))
t = t.append_column("note", pa.nulls(t.num_rows))
{SHARD_0_WRITE}"#
    );
    python(&[&"-c", &add_columns, &out]);
    let ds = Dataset::open(&out, Checksums::Verify).unwrap();
    for g in 0..ds.num_rows() {
        ds.validate_row(g).unwrap();
    }
    let report = infinity_data::inspect::verify(&out);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// A null in a column declared without nulls, and text that is not UTF-8,
/// are named by file, row, id and column, not as an unreadable Arrow file.
#[test]
fn nulls_and_bad_text_are_named_by_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    for (case, want) in [
        ("null", "column `bucket`: expected UInt16 without nulls, found 1 null value (at row 1, id 10001)"),
        ("utf8", "row 2 (id 10002), column `caption`: expected text in UTF-8, found bytes that are not UTF-8"),
    ] {
        let out = dir.path().join(case);
        python(&[&"tools/write_shards.py", &"demo", &"--out", &out, &"--rows", &"12", &"--d", &"20"]);
        let mutate = format!(
            r#"
import json, sys
import crc32c, pyarrow as pa
out, case = sys.argv[1], sys.argv[2]
{SHARD_0_READ}t = pa.ipc.open_file(path).read_all().combine_chunks()
if case == "null":
    i = t.schema.get_field_index("bucket")
    values = t["bucket"].to_pylist()
    values[1] = None
    t = t.set_column(i, pa.field("bucket", pa.uint16(), nullable=False), pa.array(values, pa.uint16()))
else:
    texts = [(c or "").encode() for c in t["caption"].to_pylist()]
    texts[2] = b"\xff\xfe not text"
    offsets = pa.array([sum(len(x) for x in texts[:k]) for k in range(t.num_rows + 1)], pa.int32())
    text = pa.Array.from_buffers(pa.string(), t.num_rows, [None, offsets.buffers()[1], pa.py_buffer(b"".join(texts))])
    t = t.set_column(t.schema.get_field_index("caption"), t.schema.field("caption"), text)
{SHARD_0_WRITE}"#
        );
        python(&[&"-c", &mutate, &out, &case]);
        let report = infinity_data::inspect::verify(&out);
        assert!(report.problems.iter().any(|p| p.contains(want)), "{case}: {:?}", report.problems);
    }
}

/// What `infinity data verify` refuses, the second reader refuses with the same message (`error: …`, not a
/// Python traceback): a row's bits 2 bytes short, bits packed most significant bit first (padding bits
/// above `d` = 12 set), and a shard the manifest lists that is not there (named with the manifest).
#[test]
fn read_shards_refuses_what_verify_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let opts = infinity_data::synth::SynthOptions { rows: 24, fit_rows: 24, d: 12, ..Default::default() };
    infinity_data::synth::synth(&good, &opts).unwrap();
    for (case, want) in [
        ("short", "row 5 (id 5), column `bits`: expected "),
        ("msb", "column `bits`: expected zero padding bits above bit 12, found token "),
        ("missing", "shard-00000.arrow: missing: "),
    ] {
        let out = dir.path().join(case);
        let damage = format!(
            r#"
import json, os, shutil, sys
import crc32c, numpy as np, pyarrow as pa
good, out, case = sys.argv[1], sys.argv[2], sys.argv[3]
shutil.copytree(good, out)
{SHARD_0_READ}if case == "missing":
    os.remove(path)
    sys.exit()
t = pa.ipc.open_file(path).read_all().combine_chunks()
bits, d = t["bits"].to_pylist(), m["d"]
if case == "short":
    bits[5] = bits[5][:-2]
else:  # np.packbits' default order, most significant bit first: bits 8..11 land above bit d = 12
    tokens = [np.frombuffer(b, np.uint8).reshape(-1, (d + 7) // 8) for b in bits]
    bits = [np.packbits(np.unpackbits(x, axis=1, bitorder="little")[:, :d], axis=1).tobytes() for x in tokens]
t = t.set_column(t.schema.get_field_index("bits"), t.schema.field("bits"), pa.array(bits, pa.binary()))
{SHARD_0_WRITE}"#
        );
        python(&[&"-c", &damage, &good, &out, &case]);
        let report = infinity_data::inspect::verify(&out);
        assert!(report.problems.first().is_some_and(|p| p.contains(want)), "{case}: {:?}", report.problems);
        let e = crate::python_fails(&[&"tools/read_shards.py", &path_str(&out)]);
        assert!(e.starts_with("error: ") && !e.contains("Traceback"), "{case}: {e}");
        if case == "missing" {
            let manifest = out.join("manifest.json");
            assert!(e.contains(want) && e.contains(&format!("{} lists this shard", path_str(&manifest))), "{e}");
        } else {
            assert_eq!(e.trim_end(), format!("error: {}", report.problems[0]), "{case}");
        }
    }
}

/// tools/write_shards.py's writer refuses text features `infinity data verify` would (and some it could
/// not tell: a transposed array of a valid size), naming the row, before anything is written: each case
/// a `ValueError` with its message.
#[test]
fn write_shards_refuses_text_features_verify_would() {
    let dir = tempfile::tempdir().unwrap();
    let code = r#"
import sys
import numpy as np
sys.path.insert(0, "tools")
import write_shards as w
s = [{"name": "1x1", "h_div_w_template": "1.000", "pixel_budget": "custom", "scales": [[1, 1, 1]]}]
def writer(dtype="f16"):
    return w.ShardWriter(sys.argv[1], 4, s, text_width=8, text_dtype=dtype, text_max_tokens=4)
cases = {
    "transposed": lambda x: writer().add(7, 0, np.zeros((1, 4)), text_emb=np.zeros((8, 3))),
    "too many": lambda x: writer().add(7, 0, np.zeros((1, 4)), text_emb=np.zeros((5, 8))),
    "empty": lambda x: writer().add(7, 0, np.zeros((1, 4)), text_emb=np.zeros((0, 8))),
    "overflow": lambda x: writer().add(7, 0, np.zeros((1, 4)), text_emb=np.full((2, 8), 1e6)),
    "nan": lambda x: writer("bf16").add(7, 0, np.zeros((1, 4)), text_emb=np.full((2, 8), np.nan)),
    "bf16 overflow": lambda x: writer("bf16").add(7, 0, np.zeros((1, 4)), text_emb=np.full((2, 8), 3.4e38)),
    "dtype": lambda x: writer("f32"),
}
for name, case in cases.items():
    try:
        case(None)
        print(f"{name}: accepted")
    except ValueError as e:
        print(f"{name}: {e}")
writer().add(7, 0, np.zeros((1, 4)), text_emb=np.ones((4, 8)))
print("fits: accepted")
"#;
    let said = python(&[&"-c", &code, &dir.path().join("out")]);
    for want in [
        "transposed: row 7: text_emb has shape (8, 3), expected [tokens, 8] with 1 to 4 tokens",
        "too many: row 7: text_emb has shape (5, 8)",
        "empty: row 7: text_emb has shape (0, 8)",
        "overflow: row 7: text_emb at token 0, channel 0: 1e+06 is not a finite f16 value (f16 holds at most 65504",
        "nan: row 7: text_emb at token 0, channel 0: nan is not a finite bf16 value\n",
        "bf16 overflow: row 7: text_emb at token 0, channel 0: 3.4e+38 is not a finite bf16 value (bf16 holds at most",
        "dtype: text_dtype 'f32': the format stores text features as \"f16\" or \"bf16\"",
        "fits: accepted",
    ] {
        assert!(said.contains(want), "{want}\n{said}");
    }
}
