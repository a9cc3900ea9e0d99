//! Every kind of bad input gets an error naming the file (and row and column where there is one) and
//! what was expected; never a panic, never a silently skipped row.

mod common;

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, Int32Array, RecordBatch, UInt16Array, UInt64Array};
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema};
use infinity_data::loader::{BadRows, Loader, LoaderOptions};
use infinity_data::manifest::{Manifest, MANIFEST_FILE};
use infinity_data::writer::file_crc32c;
use infinity_data::{Checksums, Dataset};

fn dataset(n: u64) -> (tempfile::TempDir, Manifest) {
    let dir = tempfile::tempdir().unwrap();
    let (_, m) = common::write_random(dir.path(), n, 5);
    (dir, m)
}

fn open_err(dir: &Path) -> String {
    match Dataset::open(dir, Checksums::Verify) {
        Ok(_) => panic!("{} opened although it is broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Re-seal shard `i` after editing it: new size and checksum in the manifest.
fn reseal(dir: &Path, m: &mut Manifest, i: usize) {
    let (bytes, crc) = file_crc32c(&dir.join(&m.shards[i].file)).unwrap();
    m.shards[i].bytes = bytes;
    m.shards[i].crc32c = format!("{crc:08x}");
    m.save(dir).unwrap();
}

#[test]
fn truncated_shard_names_file_and_sizes() {
    let (dir, m) = dataset(30);
    let path = dir.path().join(&m.shards[0].file);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("shard-00000.arrow") && e.contains(&format!("manifest expects {} bytes", bytes.len())), "{e}");
}

#[test]
fn flipped_byte_is_a_checksum_error() {
    let (dir, m) = dataset(30);
    let path = dir.path().join(&m.shards[1].file);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[600] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("shard-00001.arrow") && e.contains("crc32c") && e.contains(&m.shards[1].crc32c), "{e}");
    assert!(e.contains("(corrupt shard, or a checksum other than CRC-32C)"), "{e}");
}

/// A manifest whose checksum is zlib's CRC-32 of the shard (Python's zlib.crc32) is told so.
#[test]
fn a_zlib_crc32_in_the_manifest_is_named_as_such() {
    let (dir, mut m) = dataset(30);
    let bytes = std::fs::read(dir.path().join(&m.shards[1].file)).unwrap();
    m.shards[1].crc32c = format!("{:08x}", crc32fast::hash(&bytes));
    m.save(dir.path()).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("shard-00001.arrow") && e.contains("the manifest holds zlib's CRC-32 of the file"), "{e}");
}

#[test]
fn the_ranks_of_a_group_hash_their_share_of_the_shards() {
    let (dir, m) = dataset(100);
    assert!(m.shards.len() >= 3, "{} shards", m.shards.len());
    let path = dir.path().join(&m.shards[1].file);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2; // (in a record batch's body: the file still decodes)
    bytes[mid] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    // shard 1 is rank 1's of 2 (and of 3): it finds the damage, naming the shard
    for world in [2, 3] {
        let e = Dataset::open(dir.path(), Checksums::Share { rank: 1, world }).err().expect("shard 1 is hashed");
        assert!(e.to_string().contains("shard-00001.arrow") && e.to_string().contains("crc32c"), "{e}");
    }
    // the other ranks leave it to rank 1
    for (rank, world) in [(0, 2), (0, 3), (2, 3)] {
        assert_eq!(Dataset::open(dir.path(), Checksums::Share { rank, world }).unwrap().num_rows(), 100);
    }
    assert_eq!(Checksums::Share { rank: 0, world: 1 }.for_shard(7), Checksums::Verify);
    // a folder of a mix after 5 shards of others: its shard 1 is the 7th, rank 0's of 3 (6 mod 3)
    let after = |rank| Checksums::Share { rank, world: 3 }.after(5).for_shard(1);
    assert_eq!([after(0), after(1), after(2)], [Checksums::Verify, Checksums::Skip, Checksums::Skip]);
    assert_eq!(Checksums::Verify.after(5), Checksums::Verify);
}

#[test]
fn garbage_file_with_valid_checksum_is_named_not_an_ipc_file() {
    let (dir, mut m) = dataset(30);
    std::fs::write(dir.path().join(&m.shards[0].file), vec![7u8; 4000]).unwrap();
    reseal(dir.path(), &mut m, 0);
    let e = open_err(dir.path());
    assert!(e.contains("shard-00000.arrow") && e.contains("not a readable Arrow IPC file"), "{e}");
}

/// Write a one-batch shard with the given columns and splice it into the manifest as shard 0.
fn replace_shard0(dir: &Path, m: &mut Manifest, cols: Vec<(&str, ArrayRef)>) {
    let fields: Vec<Field> = cols.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), cols.into_iter().map(|c| c.1).collect()).unwrap();
    let path = dir.join(&m.shards[0].file);
    let mut w = FileWriter::try_new(std::fs::File::create(&path).unwrap(), &schema).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    m.shards.truncate(1);
    m.shards[0].rows = batch.num_rows() as u64;
    m.shards[0].bucket_rows = vec![batch.num_rows() as u64, 0];
    m.total_rows = batch.num_rows() as u64;
    reseal(dir, m, 0);
}

fn basic_columns(bits: Vec<&[u8]>) -> Vec<(&'static str, ArrayRef)> {
    let n = bits.len();
    let m = common::manifest();
    let (h, w) = m.schedules[0].latent_hw();
    let latent = vec![0u8; common::D * h * w * 2];
    let text = vec![0u8; common::TEXT_WIDTH * 2];
    vec![
        ("id", Arc::new(UInt64Array::from_iter_values(0..n as u64)) as ArrayRef),
        ("bucket", Arc::new(UInt16Array::from(vec![0u16; n]))),
        ("bits", Arc::new(BinaryArray::from(bits))),
        ("latent", Arc::new(BinaryArray::from(vec![latent.as_slice(); n]))),
        ("class_label", Arc::new(Int32Array::from(vec![1; n]))),
        ("text_emb", Arc::new(BinaryArray::from(vec![text.as_slice(); n]))),
        (
            "text_emb_short",
            Arc::new(BinaryArray::from_opt_vec((0..n).map(|i| (i % 2 == 1).then_some(text.as_slice())).collect())),
        ),
        ("caption", Arc::new(arrow_array::StringArray::from(vec![Some("c"); n]))),
    ]
}

#[test]
fn schema_mismatch_names_the_column_and_types() {
    let (dir, mut m) = dataset(30);
    let mut cols = basic_columns(vec![&[0u8; 4]; 3]);
    cols[4] = ("class_label", Arc::new(arrow_array::Int64Array::from(vec![1i64; 3])));
    replace_shard0(dir.path(), &mut m, cols);
    let e = open_err(dir.path());
    assert!(e.contains("column `class_label`") && e.contains("expected Int32") && e.contains("found Int64"), "{e}");

    let mut cols = basic_columns(vec![&[0u8; 4]; 3]);
    cols.remove(2);
    replace_shard0(dir.path(), &mut m, cols);
    let e = open_err(dir.path());
    assert!(e.contains("column `bits`") && e.contains("no such column"), "{e}");
    // a short caption's column the manifest does not declare names the key that would
    m.conditions.text.as_mut().unwrap().short_caption = false;
    replace_shard0(dir.path(), &mut m, basic_columns(vec![&[0u8; 4]; 3]));
    let e = open_err(dir.path());
    assert!(e.contains("column `text_emb_short`") && e.contains("declare it (conditions.text.short_caption)"), "{e}");
    m.conditions.text.as_mut().unwrap().short_caption = true;

    // a null where the format has none: its row named, and its id
    let mut cols = basic_columns(vec![&[0u8; 4]; 3]);
    cols[4] = ("class_label", Arc::new(Int32Array::from(vec![Some(1), None, None])));
    replace_shard0(dir.path(), &mut m, cols);
    let e = open_err(dir.path());
    assert!(
        e.contains(
            "column `class_label`: expected Int32 without nulls, found 2 null values (the first at row 1, id 1)"
        ),
        "{e}"
    );
}

/// Text embeddings of the wrong length say what the length would fit: f32 values where the manifest says
/// 16-bit ones, empty bytes where a row without a short caption holds a null.
#[test]
fn text_embeddings_of_a_writers_usual_mistakes_are_named_as_such() {
    let (dir, mut m) = dataset(30);
    let l = m.schedules[0].num_tokens();
    let good = vec![0u8; l * 2];
    let f32_text = vec![0u8; 4 * common::TEXT_WIDTH * 4]; // 4 tokens of f32: 8 tokens of 2 bytes, over 5
    let mut cols = basic_columns(vec![&good; 3]);
    let text = vec![0u8; common::TEXT_WIDTH * 2];
    cols[5] = ("text_emb", Arc::new(BinaryArray::from(vec![text.as_slice(), f32_text.as_slice(), text.as_slice()])));
    cols[6] = ("text_emb_short", Arc::new(BinaryArray::from_opt_vec(vec![None, None, Some(&[][..])])));
    replace_shard0(dir.path(), &mut m, cols);
    let ds = Dataset::open(dir.path(), Checksums::Verify).unwrap();
    let e = ds.validate_row(1).unwrap_err().to_string();
    let bytes = f32_text.len();
    assert!(e.contains(&format!("found {bytes} bytes (8 tokens at 2 bytes a value, or 4 at 4: f32 values")), "{e}");
    let e = ds.validate_row(2).unwrap_err().to_string();
    assert!(e.contains("column `text_emb_short`") && e.contains("holds a null, not empty bytes"), "{e}");

    // f32 values widened from 16-bit ones, few enough tokens to fit the length: verify names them
    let widened: Vec<u8> = (0..2 * common::TEXT_WIDTH)
        .flat_map(|i| half::bf16::from_f32(0.01 * i as f32 - 0.3).to_f32().to_le_bytes())
        .collect();
    let mut cols = basic_columns(vec![&good; 2]);
    cols[5] = ("text_emb", Arc::new(BinaryArray::from(vec![text.as_slice(), widened.as_slice()])));
    replace_shard0(dir.path(), &mut m, cols);
    let r = infinity_data::inspect::verify(dir.path());
    let want = "row 1 (id 1), column `text_emb`: expected \"bf16\" values, found f32 ones";
    assert_eq!(r.problems.iter().filter(|p| p.contains(want)).count(), 1, "{:?}", r.problems);
    assert!(!r.problems.iter().any(|p| p.contains("row 0 (id 0), column")), "{:?}", r.problems);
}

#[test]
fn row_whose_bits_do_not_fit_its_schedule_is_named_and_can_be_skipped() {
    let (dir, mut m) = dataset(30);
    let nb = 2; // ⌈12/8⌉
    let l = m.schedules[0].num_tokens();
    let good = vec![0u8; l * nb];
    let short = vec![0u8; l * nb - 2];
    let mut padded = vec![0u8; l * nb];
    padded[nb * 3 + 1] = 0x80; // bit 15 of token 3: beyond d = 12
    let bits: Vec<&[u8]> = vec![&good, &good, &short, &good, &padded, &good, &good, &good];
    replace_shard0(dir.path(), &mut m, basic_columns(bits));

    // opening checks files, not every row; reading the row names it
    let ds = Arc::new(Dataset::open(dir.path(), Checksums::Verify).unwrap());
    let e = ds.validate_row(2).unwrap_err().to_string();
    assert!(e.contains("shard-00000.arrow: row 2 (id 2), column `bits`"), "{e}");
    assert!(
        e.contains(&format!("expected {} bytes", l * nb)) && e.contains(&format!("found {} bytes", l * nb - 2)),
        "{e}"
    );
    let e = ds.validate_row(4).unwrap_err().to_string();
    assert!(e.contains("row 4") && e.contains("padding bits") && e.contains("token 3"), "{e}");

    // the loader stops with that error by default, from a prefetch thread too, without hanging
    let opts = LoaderOptions { global_batch: 8, workers: 2, ..Default::default() };
    let mut l = Loader::new(ds.clone(), opts.clone(), None).unwrap();
    let e = l.next_batch().unwrap_err().to_string();
    assert!(e.contains("column `bits`"), "{e}");

    // with BadRows::Skip the two rows are left out and listed
    let mut l = Loader::new(ds, LoaderOptions { bad_rows: BadRows::Skip, ..opts }, None).unwrap();
    let b = l.next_batch().unwrap();
    assert_eq!(b.len(), 6);
    let mut skipped = b.skipped.clone();
    skipped.sort();
    assert_eq!(skipped, vec![2, 4]);
}

#[test]
fn manifest_that_disagrees_with_the_files() {
    // row count
    let (dir, mut m) = dataset(30);
    m.shards[0].rows += 1;
    m.shards[0].bucket_rows[0] += 1;
    m.total_rows += 1;
    m.save(dir.path()).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("shards[0].rows") && e.contains("the file holds"), "{e}");

    // rows per bucket
    let (dir, mut m) = dataset(30);
    m.shards[0].bucket_rows.swap(0, 1);
    m.save(dir.path()).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("shards[0].bucket_rows"), "{e}");

    // missing shard file
    let (dir, m) = dataset(30);
    std::fs::remove_file(dir.path().join(&m.shards[1].file)).unwrap();
    let err = Dataset::open(dir.path(), Checksums::Verify).err().unwrap();
    let e = err.to_string();
    assert!(e.contains("shard-00001.arrow: missing: the manifest lists this shard"), "{e}");
    assert!(err.is_bad_data(), "an incomplete dataset is bad data (exit 65), not a retry's to mend");

    // total that does not add up
    let (dir, mut m) = dataset(30);
    m.total_rows = 31;
    let text = serde_json::to_string(&m).unwrap();
    std::fs::write(dir.path().join(MANIFEST_FILE), text).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("manifest key `total_rows`: expected the sum of shard rows (30), found 31"), "{e}");

    // a shard listed twice (its rows would be read twice)
    let (dir, mut m) = dataset(30);
    let again = m.shards[0].clone();
    m.total_rows += again.rows;
    m.shards.push(again);
    let text = serde_json::to_string(&m).unwrap();
    std::fs::write(dir.path().join(MANIFEST_FILE), text).unwrap();
    let e = open_err(dir.path());
    let last = m.shards.len() - 1;
    assert!(
        e.contains(&format!("`shards[{last}].file`: expected a file no other entry lists, found `shard-00000.arrow`, also shards[0].file")),
        "{e}"
    );
}

#[test]
fn manifest_unknown_key_wrong_type_and_version_are_named() {
    let (dir, m) = dataset(10);
    let path = dir.path().join(MANIFEST_FILE);
    let mut v = serde_json::to_value(&m).unwrap();
    v["conditions"]["class"]["num_clases"] = 3.into();
    std::fs::write(&path, v.to_string()).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("manifest.json") && e.contains("conditions.class") && e.contains("num_clases"), "{e}");

    let mut v = serde_json::to_value(&m).unwrap();
    v["d"] = "twelve".into();
    std::fs::write(&path, v.to_string()).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("at `d`"), "{e}");

    let mut v = serde_json::to_value(&m).unwrap();
    v["format_version"] = 9.into();
    std::fs::write(&path, v.to_string()).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("format_version") && e.contains("found 9"), "{e}");

    let mut text = serde_json::to_string(&m).unwrap();
    text.push_str("}}");
    std::fs::write(&path, text).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("manifest.json") && e.contains("after the manifest: trailing characters"), "{e}");

    std::fs::remove_file(&path).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains("not a dataset: it holds no manifest.json") && e.contains("an unfinished write or copy?"),
        "{e}"
    );
}

#[test]
fn verify_lists_every_problem() {
    let (dir, m) = dataset(60);
    assert!(m.shards.len() >= 3, "{:?}", m.shards);
    for i in [0, 2] {
        let p = dir.path().join(&m.shards[i].file);
        let mut b = std::fs::read(&p).unwrap();
        b[300] ^= 1;
        std::fs::write(&p, b).unwrap();
    }
    let r = infinity_data::inspect::verify(dir.path());
    assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
    assert!(r.problems[0].contains("shard-00000") && r.problems[1].contains("shard-00002"));
    assert_eq!(r.shards, m.shards.len() - 2);
    // a copy of a shard under a name the manifest does not list is never read: named
    std::fs::copy(dir.path().join(&m.shards[1].file), dir.path().join("shard-extra.arrow")).unwrap();
    let r = infinity_data::inspect::verify(dir.path());
    assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
    assert!(r.problems[2].contains("shard-extra.arrow") && r.problems[2].contains("does not list"));
    let _ = DataType::Null;
}

/// What the checksums and the loader's length checks cannot see, named by verify: a NaN in a latent,
/// bits that are not the BSQ of their row's latent (first where they go wrong; a zero residual's bit
/// sent the other way is no error), and ids used twice.
#[test]
fn non_finite_latents_stale_bits_and_repeated_ids_are_named() {
    let (dir, mut m) = dataset(12);
    let l = m.schedules[0].num_tokens();
    let (h, w) = m.schedules[0].latent_hw();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(4);
    let square = Manifest { schedules: m.schedules[..1].to_vec(), ..m.clone() }; // rows of bucket 0
    let mut rows: Vec<_> = (0..4).map(|i| common::random_row(&square, i, &mut rng)).collect();
    rows[1].latent.as_mut().unwrap()[2 * 5..2 * 6].copy_from_slice(&half::f16::NAN.to_le_bytes());
    rows[2].bits[0] ^= 1; // token 0, bit 0: the coarsest scale, far from rounding
                          // row 0: a tokenizer that sent a zero residual's bit (scale 0, channel 0) the other way, and encoded
                          // the later scales from there: as faithful as ours, so not named
    {
        let (d, scales) = (common::D, square.schedules[0].hw());
        let latent = rows[0].latent.as_mut().unwrap();
        for (i, v) in latent[..2 * h * w].chunks_mut(2).enumerate() {
            v.copy_from_slice(&half::f16::from_f32(if i % 2 == 0 { 0.5 } else { -0.5 }).to_le_bytes());
        }
        let values: Vec<f32> = latent.chunks(2).map(|v| half::f16::from_le_bytes([v[0], v[1]]).to_f32()).collect();
        let mut bits = infinity_kernels::bsq::encode_multiscale(&values, d, &scales).bits;
        bits[0] = 1;
        let mut start = 1;
        for &(sh, sw) in &scales[1..] {
            let r = infinity_kernels::bsq::residuals_given_bits(&values, d, &scales, &bits);
            let scale = start * d..(start + sh * sw) * d;
            bits[scale.clone()].iter_mut().zip(&r[scale]).for_each(|(b, r)| *b = (*r > 0.0) as u8);
            start += sh * sw;
        }
        rows[0].bits.clear();
        infinity_data::format::pack_bits(&bits, d, &mut rows[0].bits);
    }
    let mut cols = basic_columns(rows.iter().map(|r| r.bits.as_slice()).collect());
    cols[0] = ("id", Arc::new(UInt64Array::from(vec![7u64, 8, 9, 7])));
    cols[3] =
        ("latent", Arc::new(BinaryArray::from(rows.iter().map(|r| r.latent.as_deref().unwrap()).collect::<Vec<_>>())));
    // a short caption's embedding with an infinity (bf16) at its second value, row 3
    let mut short = vec![0u8; common::TEXT_WIDTH * 2];
    short[2..4].copy_from_slice(&half::bf16::INFINITY.to_le_bytes());
    cols[6] = ("text_emb_short", Arc::new(BinaryArray::from_opt_vec(vec![None, None, None, Some(short.as_slice())])));
    assert_eq!(rows[0].bits.len(), l * 2);
    assert_eq!(rows[0].latent.as_ref().unwrap().len(), common::D * h * w * 2);
    replace_shard0(dir.path(), &mut m, cols);

    let r = infinity_data::inspect::verify(dir.path());
    let all = r.problems.join("\n");
    assert_eq!(r.problems.len(), 4, "{all}");
    assert!(all.contains("id 7 appears twice: shard-00000.arrow row 0 and shard-00000.arrow row 3"), "{all}");
    assert!(all.contains("row 2 (id 9): "), "{all}");
    assert!(all.contains("bits differ from the multi-scale BSQ of the stored latent (first: token 0, bit 0"), "{all}");
    assert!(
        all.contains("row 1 (id 8), column `latent`: expected finite values, found a NaN or an infinity at value 5"),
        "{all}"
    );
    let short = "row 3 (id 7), column `text_emb_short`: expected finite values, found a NaN or an infinity at value 1";
    assert!(all.contains(short), "{all}");
}

/// Latents stored as `[H, W, d]` (a writer's convention, not damage): every row is named, and a note
/// lists the conventions to look at.
#[test]
fn rows_whose_bits_mostly_differ_from_their_latents_get_the_conventions_noted() {
    let (dir, mut m) = dataset(12);
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
    let square = Manifest { schedules: m.schedules[..1].to_vec(), ..m.clone() };
    let mut rows: Vec<_> = (0..4).map(|i| common::random_row(&square, i, &mut rng)).collect();
    let (d, (h, w)) = (common::D, square.schedules[0].latent_hw());
    for r in &mut rows {
        let chw = r.latent.take().unwrap();
        let mut hwc = Vec::with_capacity(chw.len());
        for p in 0..h * w {
            (0..d).for_each(|c| hwc.extend_from_slice(&chw[2 * (c * h * w + p)..][..2]));
        }
        r.latent = Some(hwc);
    }
    let mut cols = basic_columns(rows.iter().map(|r| r.bits.as_slice()).collect());
    cols[3] =
        ("latent", Arc::new(BinaryArray::from(rows.iter().map(|r| r.latent.as_deref().unwrap()).collect::<Vec<_>>())));
    replace_shard0(dir.path(), &mut m, cols);
    let r = infinity_data::inspect::verify(dir.path());
    assert_eq!(r.problems.len(), 4, "{:?}", r.problems);
    assert!(r.problems.iter().all(|p| p.contains("bits differ from the multi-scale BSQ")), "{:?}", r.problems);
    assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
    assert!(r.notes[0].contains("(least significant first)") && r.notes[0].contains("align_corners=False"));
}

/// Past 20 problems of a kind, verify lists 20, notes the rest and counts them all.
#[test]
fn verify_counts_the_problems_it_does_not_list() {
    let (dir, mut m) = dataset(12);
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
    let square = Manifest { schedules: m.schedules[..1].to_vec(), ..m.clone() };
    let rows: Vec<_> = (0..30).map(|i| common::random_row(&square, i, &mut rng)).collect();
    let mut cols = basic_columns(rows.iter().map(|r| r.bits.as_slice()).collect());
    cols[0] = ("id", Arc::new(UInt64Array::from(vec![7u64; 30]))); // 29 repeats of id 7
    cols[3] =
        ("latent", Arc::new(BinaryArray::from(rows.iter().map(|r| r.latent.as_deref().unwrap()).collect::<Vec<_>>())));
    replace_shard0(dir.path(), &mut m, cols);
    let r = infinity_data::inspect::verify(dir.path());
    assert_eq!((r.problems.len(), r.unlisted, r.count()), (20, 9, 29), "{:?}", r.problems);
    assert_eq!(r.notes, ["9 more repeated ids not listed"]);
}

/// What the manifest's fields allow (docs/data-format.md), refused when the manifest is read, each
/// naming its key and what was expected.
#[test]
fn manifest_values_the_format_does_not_allow_are_named() {
    let check = |m: &Manifest| m.check(Path::new("ds/manifest.json")).err().map(|e| e.to_string()).unwrap_or_default();
    let base = common::manifest();
    assert_eq!(check(&base), "");

    // another spelling of an upstream template would be taken for a custom one (another RoPE frame)
    for (b, spelling, upstream) in [(0, "1.0", "1.000"), (1, "0.6660", "0.666"), (0, "0.5", "0.500")] {
        let mut m = base.clone();
        m.schedules[b].h_div_w_template = spelling.into();
        let e = check(&m);
        let want = format!(
            "manifest key `schedules[{b}].h_div_w_template`: expected upstream's spelling `{upstream}` of that \
             aspect-ratio template, found `{spelling}`"
        );
        assert!(e.contains(&want), "{e}");
    }
    // a custom template that is no upstream one stays allowed
    let mut m = base.clone();
    m.schedules[1].h_div_w_template = "0.667".into();
    assert_eq!(check(&m), "");

    let mut m = base.clone();
    m.schedules[1].name = m.schedules[0].name.clone();
    let e = check(&m);
    assert!(
        e.contains(
            "`schedules[1].name`: expected a name no other schedule has, found `1.000/demo4`, also schedules[0].name"
        ),
        "{e}"
    );

    // (a number, which the tokenizer check would not read, switched the check off)
    let crcs = [(serde_json::json!(12345), false), ("0f3a9b2".into(), false), ("0F3A9B21".into(), false)];
    for (crc, ok) in crcs.into_iter().chain([("0f3a9b21".into(), true)]) {
        let mut m = base.clone();
        m.tokenizer.params = serde_json::json!({ "crc32c": crc });
        let e = check(&m);
        assert_eq!(e.is_empty(), ok, "{crc}: {e}");
        assert!(ok || e.contains("`tokenizer.params.crc32c`: expected 8 lowercase hex digits, as text"), "{e}");
    }

    let mut m = base.clone();
    m.bit_order = "bit i at byte i/8, MSB first".into();
    let e = check(&m);
    assert!(
        e.contains("`bit_order`: expected `token-major;") && e.contains("found `bit i at byte i/8, MSB first`"),
        "{e}"
    );

    let mut m = base.clone();
    m.conditions.class.as_mut().unwrap().names = vec!["cat".into(), "dog".into()];
    let e = check(&m);
    assert!(
        e.contains("`conditions.class.names`: expected no names, or one per class (num_classes = 10), found 2 names"),
        "{e}"
    );
    m.conditions.class.as_mut().unwrap().names = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(check(&m), "");
    m.conditions.class.as_mut().unwrap().num_classes = 0;
    assert!(check(&m).contains("`conditions.class.num_classes`: expected at least 1 class"));

    // stated in the manifest's words, not as a Rust struct
    let mut m = base.clone();
    m.conditions.text.as_mut().unwrap().width = 0;
    let e = check(&m);
    assert!(e.contains("`conditions.text`: expected width > 0 and max_tokens > 0, found width 0, max_tokens 5"), "{e}");

    let mut m = base.clone();
    m.shards.push(infinity_data::manifest::ShardEntry {
        file: String::new(),
        rows: 0,
        bytes: 0,
        crc32c: "00000000".into(),
        bucket_rows: vec![0, 0],
    });
    let e = check(&m);
    assert!(e.contains("`shards[0].file`: expected a plain file name in the folder, found an empty name"), "{e}");

    // the tokenizer's file too: one outside the folder would not travel with a copy of it
    let mut m = base.clone();
    m.tokenizer.file = Some("../../other/tokenizer.safetensors".into());
    let e = check(&m);
    assert!(e.contains("`tokenizer.file`: expected a plain file name in the folder, found `../../other/"), "{e}");
}

#[test]
fn a_manifest_saved_with_a_byte_order_mark_is_read() {
    let (dir, _) = dataset(10);
    let path = dir.path().join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("\u{feff}{text}")).unwrap();
    assert_eq!(Dataset::open(dir.path(), Checksums::Verify).unwrap().num_rows(), 10);
}

#[test]
fn an_ipc_stream_shard_is_named_with_the_fix() {
    let (dir, mut m) = dataset(30);
    let cols = basic_columns(vec![&[0u8; 4]; 3]);
    let fields: Vec<Field> = cols.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), cols.into_iter().map(|c| c.1).collect()).unwrap();
    let path = dir.path().join(&m.shards[0].file);
    let mut w = arrow_ipc::writer::StreamWriter::try_new(std::fs::File::create(&path).unwrap(), &schema).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    reseal(dir.path(), &mut m, 0);
    let e = open_err(dir.path());
    assert!(e.contains("shard-00000.arrow") && e.contains("Arrow IPC *stream*"), "{e}");
    assert!(e.contains("pyarrow writes shards with pa.ipc.new_file"), "{e}");
}

/// inspect shows the shard's own schema, so a writer's wrong type is visible there.
#[test]
fn inspect_prints_the_schema_the_shard_declares() {
    let (dir, mut m) = dataset(30);
    let mut cols = basic_columns(vec![&[0u8; 4]; 3]);
    cols[0] = ("id", Arc::new(arrow_array::Int64Array::from(vec![1i64, 2, 3])));
    cols.push(("source", Arc::new(arrow_array::StringArray::from(vec!["a"; 3]))));
    replace_shard0(dir.path(), &mut m, cols);
    let found = infinity_data::inspect::inspect(dir.path()).unwrap();
    let s = found.summary;
    assert!(s.contains("arrow schema of shard-00000.arrow"), "{s}");
    assert!(s.contains("id           Int64 (nullable)  (the format expects UInt64)"), "{s}");
    assert!(s.contains("source       Utf8 (nullable)  (not a format column: ignored)"), "{s}");
    assert!(s.contains("bits         Binary (nullable)\n"), "{s}");
    // (the extra column is no problem; the wrong type is, and a summary says so)
    let problem = found.schema_problem.unwrap();
    assert_eq!(problem, "shard-00000.arrow: `id` is Int64, the format expects UInt64");
}

/// Shard files the manifest does not list are never read; the trainer can ask for them to warn.
#[test]
fn unlisted_shard_files_are_found() {
    let (dir, m) = dataset(30);
    let ds = Dataset::open(dir.path(), Checksums::Verify).unwrap();
    assert_eq!(ds.unlisted_shards().unwrap(), Vec::<std::path::PathBuf>::new());
    std::fs::copy(dir.path().join(&m.shards[1].file), dir.path().join("shard-extra.arrow")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a shard").unwrap();
    assert_eq!(ds.unlisted_shards().unwrap(), [dir.path().join("shard-extra.arrow")]);
}

/// A dataset of no condition is well-formed, but no model trains on it: verify notes how to write an
/// unconditional one.
#[test]
fn verify_notes_a_dataset_without_a_condition() {
    let (dir, mut m) = dataset(12);
    m.conditions = Default::default();
    // (the bits of basic_columns' zero latents)
    let ((h, w), scales) = (m.schedules[0].latent_hw(), m.schedules[0].hw());
    let zeros = infinity_kernels::bsq::encode_multiscale(&vec![0.0; common::D * h * w], common::D, &scales).bits;
    let mut bits = Vec::new();
    infinity_data::format::pack_bits(&zeros, common::D, &mut bits);
    let cols = basic_columns(vec![&bits; 3]).into_iter().take(4).collect();
    replace_shard0(dir.path(), &mut m, cols);
    let r = infinity_data::inspect::verify(dir.path());
    assert_eq!(r.count(), 0, "{:?}", r.problems);
    assert!(
        r.notes.iter().any(|n| n.contains("has no condition") && n.contains("\"num_classes\": 1")),
        "{:?}",
        r.notes
    );
}

#[test]
fn verify_fails_a_dataset_without_rows() {
    let dir = tempfile::tempdir().unwrap();
    let w = infinity_data::writer::DatasetWriter::create(dir.path(), common::manifest(), Default::default()).unwrap();
    w.finish().unwrap();
    let r = infinity_data::inspect::verify(dir.path());
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0].contains("the dataset has no rows (manifest total_rows = 0)"), "{:?}", r.problems);
}

/// A custom schedule of more scales than a model embeds is a sound dataset, but one no Infinity model
/// trains on: verify says so without calling it a problem.
#[test]
fn verify_notes_a_schedule_longer_than_a_model_trains_on() {
    use infinity_data::writer::{DatasetWriter, WriterOptions};
    use rand::SeedableRng;
    let dir = tempfile::tempdir().unwrap();
    let mut m = common::manifest();
    let long = &mut m.schedules[1];
    (long.name, long.scales) = ("long".into(), (1..=16).map(|s| [1, s, s]).collect());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut w = DatasetWriter::create(dir.path(), m.clone(), WriterOptions::default()).unwrap();
    for id in 0..6 {
        w.push(common::random_row(&m, id, &mut rng)).unwrap();
    }
    w.finish().unwrap();
    let r = infinity_data::inspect::verify(dir.path());
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
    assert!(
        r.notes[0].starts_with("schedule `long` has 16 scales: Infinity models train on at most 15"),
        "{:?}",
        r.notes
    );
}

/// A dataset folder given as its manifest (or any file) is named as a file, with the folder to give.
#[test]
fn a_file_given_for_the_dataset_folder_is_named() {
    let (dir, m) = dataset(10);
    let manifest = dir.path().join(MANIFEST_FILE);
    let e = Manifest::load(&manifest).unwrap_err().to_string();
    let want = format!(
        "{}: must be a dataset folder (the one holding manifest.json), found a file: give {}",
        manifest.display(),
        dir.path().display()
    );
    assert_eq!(e, want);
    let shard = dir.path().join(&m.shards[0].file);
    let e = open_err(&shard);
    assert!(
        e.ends_with("shard-00000.arrow: must be a dataset folder (the one holding manifest.json), found a file"),
        "{e}"
    );
}

/// inspect counts shards in words: one shard is singular.
#[test]
fn inspect_says_1_shard() {
    let (dir, m) = dataset(1);
    assert_eq!(m.shards.len(), 1);
    let found = infinity_data::inspect::inspect(dir.path()).unwrap();
    assert!(found.summary.contains("rows         1 in 1 shard, "), "{}", found.summary);
    assert_eq!(found.schema_problem, None);
}

/// A shard file without record batches still has a schema, checked as any other shard's: a file that
/// lacks `bits` is named though it holds no row.
#[test]
fn a_shard_without_record_batches_has_its_schema_checked() {
    let (dir, mut m) = dataset(30);
    let mut cols = basic_columns(vec![&[0u8; 4]; 1]);
    cols.remove(2); // no bits
    let fields: Vec<Field> = cols.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect();
    let schema = Arc::new(Schema::new(fields));
    let path = dir.path().join(&m.shards[0].file);
    FileWriter::try_new(std::fs::File::create(&path).unwrap(), &schema).unwrap().finish().unwrap();
    m.total_rows -= m.shards[0].rows;
    (m.shards[0].rows, m.shards[0].bucket_rows) = (0, vec![0, 0]);
    reseal(dir.path(), &mut m, 0);
    let e = open_err(dir.path());
    assert!(e.contains(&m.shards[0].file) && e.contains("column `bits`") && e.contains("no such column"), "{e}");
    let r = infinity_data::inspect::verify(dir.path());
    assert!(r.problems.iter().any(|p| p.contains("column `bits`")), "{:?}", r.problems);
}

/// Row counts that wrap around 64 bits are refused, not summed into a plausible total (nor a panic).
#[test]
fn row_counts_past_64_bits_are_refused() {
    let (dir, mut m) = dataset(30);
    m.shards[0].bucket_rows = vec![u64::MAX, 1];
    m.save(dir.path()).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("shards[0].bucket_rows"), "{e}");
    // a count that, added to the others, wraps past 64 bits (back to a plausible total, with the right one)
    let (dir, mut m) = dataset(30);
    (m.shards[0].rows, m.shards[0].bucket_rows) = (u64::MAX, vec![u64::MAX, 0]);
    m.save(dir.path()).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("row counts whose sum fits in 64 bits"), "{e}");
}

/// `data stats` samples its class histogram from rows the per-bucket part may not have read: a label
/// past `num_classes` there is the row's error, not an index past the histogram.
#[test]
fn stats_names_a_class_label_out_of_range() {
    let (dir, mut m) = dataset(30);
    let ds = Dataset::open(dir.path(), Checksums::Verify).unwrap();
    // a row the class histogram reads and the per-bucket statistics do not (rows spread over each)
    let spread = |total: usize, n: usize| (0..n).map(move |i| i * total / n);
    let (n, g) = (2..8)
        .find_map(|n| {
            let by_bucket = ds.rows_by_bucket();
            let read: Vec<u64> =
                by_bucket.iter().flat_map(|rows| spread(rows.len(), n.min(rows.len())).map(|i| rows[i])).collect();
            spread(ds.num_rows() as usize, n).map(|g| g as u64).find(|g| !read.contains(g)).map(|g| (n, g))
        })
        .expect("a row only the histogram reads");
    let (s, row) = ds.locate(g);
    drop(ds);
    // that row's label set past num_classes, in place
    let path = dir.path().join(&m.shards[s].file);
    let reader = arrow_ipc::reader::FileReader::try_new(std::fs::File::open(&path).unwrap(), None).unwrap();
    let schema = reader.schema();
    let mut batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let (mut b, mut at) = (0, row);
    while at >= batches[b].num_rows() {
        (at, b) = (at - batches[b].num_rows(), b + 1);
    }
    let col = schema.index_of("class_label").unwrap();
    let labels = batches[b].column(col).as_any().downcast_ref::<Int32Array>().unwrap();
    let mut values: Vec<i32> = labels.values().to_vec();
    values[at] = 1_000_000;
    let mut columns = batches[b].columns().to_vec();
    columns[col] = Arc::new(Int32Array::from(values));
    batches[b] = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut w = FileWriter::try_new(std::fs::File::create(&path).unwrap(), &schema).unwrap();
    batches.iter().for_each(|b| w.write(b).unwrap());
    w.finish().unwrap();
    reseal(dir.path(), &mut m, s);
    let ds = Dataset::open(dir.path(), Checksums::Verify).unwrap();
    let e = infinity_data::inspect::stats(&ds, n as u64).unwrap_err().to_string();
    assert!(e.contains("column `class_label`") && e.contains(&m.shards[s].file), "{e}");
}

/// Rows made in parallel that fail name the first failing id in order, whichever thread failed first.
#[test]
fn parallel_rows_name_the_first_failure_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        let opts = infinity_data::writer::WriterOptions { overwrite: true, ..Default::default() };
        let mut w = infinity_data::writer::DatasetWriter::create(dir.path(), common::manifest(), opts).unwrap();
        let make = |id: u64| match id {
            3 => {
                std::thread::sleep(std::time::Duration::from_millis(50)); // fails last
                Err(infinity_data::DataError::Config(format!("row {id} failed")))
            }
            1500 => Err(infinity_data::DataError::Config(format!("row {id} failed"))),
            _ => Ok(None),
        };
        let e = infinity_data::build::write_parallel(&mut w, 2000, make, |_| {}).unwrap_err().to_string();
        assert_eq!(e, "row 3 failed");
    }
}

/// Files a killed writer staged are never read and the dataset is whole without them, but they take
/// disk space until the next write into the folder: verify notes them.
#[test]
fn verify_notes_files_a_writer_staged() {
    let (dir, _) = dataset(12);
    std::fs::write(dir.path().join(".shard-00003.arrow.pending"), b"half a shard").unwrap();
    std::fs::write(dir.path().join(".tokenizer.safetensors.pending"), b"half a file").unwrap();
    let r = infinity_data::inspect::verify(dir.path());
    assert_eq!(r.count(), 0, "{:?}", r.problems);
    let note = r.notes.iter().find(|n| n.contains("staged by a dataset writer")).expect("a note of the staged files");
    assert!(note.contains("2 files staged by a dataset writer (.shard-00003.arrow.pending, …)"), "{note}");
    assert!(note.contains("the next write here removes"), "{note}");
}
