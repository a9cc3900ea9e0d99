//! Shards written by the writer read back bit-exactly, zero-copy, across many shards and batches.

mod common;

use infinity_data::{Checksums, Dataset};

#[test]
fn every_row_reads_back_bit_exact_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (rows, m) = common::write_random(dir.path(), 300, 1);
    assert!(m.shards.len() > 3, "small shard size must roll over into several shards, got {}", m.shards.len());
    let ds = Dataset::open(dir.path(), Checksums::Verify).unwrap();
    assert_eq!(ds.num_rows(), 300);
    for (g, want) in rows.iter().enumerate() {
        let got = ds.row(g as u64);
        ds.validate_row(g as u64).unwrap();
        assert_eq!(got.id, want.id);
        assert_eq!(got.bucket, want.bucket);
        assert_eq!(got.bits, want.bits.as_slice());
        assert_eq!(got.latent, want.latent.as_deref());
        assert_eq!(got.class_label, want.class_label);
        assert_eq!(got.text_emb, want.text_emb.as_deref());
        assert_eq!(got.text_emb_short, want.text_emb_short.as_deref());
        assert_eq!(got.caption, want.caption.as_deref());
    }
    let per_bucket: Vec<usize> = ds.rows_by_bucket().iter().map(Vec::len).collect();
    let want: Vec<usize> = (0..2).map(|b| rows.iter().filter(|r| r.bucket == b).count()).collect();
    assert_eq!(per_bucket, want);
}

#[test]
fn reads_are_zero_copy_from_the_mapping() {
    let dir = tempfile::tempdir().unwrap();
    common::write_random(dir.path(), 40, 2);
    let ds = Dataset::open(dir.path(), Checksums::Verify).unwrap();
    for g in 0..ds.num_rows() {
        let (s, _) = ds.locate(g);
        let row = ds.row(g);
        for bytes in [row.bits, row.latent.unwrap(), row.text_emb.unwrap()] {
            assert!(ds.shards()[s].is_mapped(bytes.as_ptr()), "row {g}: column data was copied out of the mapping");
        }
    }
}

#[test]
fn writer_refuses_to_overwrite_without_the_flag_and_rejects_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    common::write_random(dir.path(), 5, 3);
    let e =
        infinity_data::writer::DatasetWriter::create(dir.path(), common::manifest(), Default::default()).err().unwrap();
    assert!(e.to_string().contains("already holds a dataset"), "{e}");

    let opts = infinity_data::writer::WriterOptions { overwrite: true, ..Default::default() };
    let mut w = infinity_data::writer::DatasetWriter::create(dir.path(), common::manifest(), opts.clone()).unwrap();
    let mut rng: rand_chacha::ChaCha8Rng = rand::SeedableRng::seed_from_u64(0);
    let mut row = common::random_row(&common::manifest(), 9, &mut rng);
    row.bits.pop();
    let e = w.push(row).unwrap_err().to_string();
    assert!(e.contains("row id 9") && e.contains("`bits`"), "{e}");

    // a short caption's embedding is checked like the long one's, and needs the manifest to declare it
    let mut row = common::random_row(&common::manifest(), 10, &mut rng);
    row.text_emb_short.as_mut().unwrap().push(0);
    let e = w.push(row.clone()).unwrap_err().to_string();
    assert!(e.contains("row id 10") && e.contains("`text_emb_short`") && e.contains("tokens × width 6"), "{e}");
    // (one writer in a folder at a time)
    let e = infinity_data::writer::DatasetWriter::create(dir.path(), common::manifest(), opts.clone()).err().unwrap();
    assert!(e.to_string().contains("another writer (`infinity data pack` or `synth`) is writing"), "{e}");
    drop(w);
    let mut m = common::manifest();
    m.conditions.text.as_mut().unwrap().short_caption = false;
    let mut w = infinity_data::writer::DatasetWriter::create(dir.path(), m, opts).unwrap();
    row.text_emb_short.as_mut().unwrap().pop();
    let e = w.push(row).unwrap_err().to_string();
    assert!(e.contains("row id 10") && e.contains("conditions.text.short_caption"), "{e}");
}

/// A writer interrupted before its manifest leaves shards behind; a new dataset in that folder must not
/// keep the ones it does not list (verify would name them, training would never read them).
#[test]
fn a_new_dataset_clears_the_shards_of_an_unfinished_or_replaced_one() {
    use infinity_data::manifest::MANIFEST_FILE;
    use infinity_data::writer::{DatasetWriter, WriterOptions};
    let write = |dir: &std::path::Path, n: u64, overwrite: bool| {
        let mut rng: rand_chacha::ChaCha8Rng = rand::SeedableRng::seed_from_u64(n);
        let m = common::manifest();
        let opts = WriterOptions { batch_rows: 7, shard_bytes: 16 << 10, overwrite };
        let mut w = DatasetWriter::create(dir, m.clone(), opts)?;
        for id in 0..n {
            w.push(common::random_row(&m, id, &mut rng))?;
        }
        w.finish()
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, m) = common::write_random(dir.path(), 300, 1);
    assert!(m.shards.len() > 3);
    std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap(); // as if interrupted
    let small = write(dir.path(), 5, false).unwrap();
    assert_eq!(small.shards.len(), 1);
    let r = infinity_data::inspect::verify(dir.path());
    assert!(r.problems.is_empty(), "{:?}", r.problems);

    // a shard file of another name may be someone's data: named, and removed only with overwrite
    std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
    std::fs::write(dir.path().join("mine.arrow"), b"data").unwrap();
    let e = write(dir.path(), 5, false).unwrap_err().to_string();
    assert!(e.contains("mine.arrow") && e.contains("no manifest.json") && e.contains("--overwrite"), "{e}");
    write(dir.path(), 5, true).unwrap();
    assert!(!dir.path().join("mine.arrow").exists());

    // replacing a dataset removes the shards its manifest listed, whatever their names
    let mut m = infinity_data::Manifest::load(dir.path()).unwrap();
    std::fs::rename(dir.path().join(&m.shards[0].file), dir.path().join("part-0.ipc")).unwrap();
    m.shards[0].file = "part-0.ipc".into();
    m.save(dir.path()).unwrap();
    write(dir.path(), 5, true).unwrap();
    assert!(!dir.path().join("part-0.ipc").exists());
    assert!(infinity_data::inspect::verify(dir.path()).problems.is_empty());
}

/// A dataset replaced (`overwrite`) stays whole until the new one is complete: a replacement that
/// fails partway (a bad image, a full disk) leaves it as it was, its companion files too; one that
/// finishes takes every old file away; what a killed replacement staged is removed by the next writer.
#[test]
fn a_replaced_dataset_stays_whole_until_its_replacement_is() {
    use infinity_data::writer::{DatasetWriter, WriterOptions};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, old) = common::write_random(d, 300, 1);
    std::fs::write(d.join("images.jsonl"), "{\"id\": 0, \"image\": \"a.png\"}\n").unwrap();
    std::fs::write(d.join("tokenizer.safetensors"), b"old tokenizer").unwrap();
    let files = |d: &std::path::Path| {
        let mut v: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    let before = files(d);
    let m = common::manifest();
    let opts = WriterOptions { batch_rows: 7, shard_bytes: 16 << 10, overwrite: true };
    let mut rng: rand_chacha::ChaCha8Rng = rand::SeedableRng::seed_from_u64(5);

    // fails partway: shards and a tokenizer written, then dropped without its manifest
    let mut w = DatasetWriter::create(d, m.clone(), opts.clone()).unwrap();
    std::fs::write(w.file("tokenizer.safetensors"), b"new tokenizer").unwrap();
    for id in 0..200 {
        w.push(common::random_row(&m, id, &mut rng)).unwrap();
    }
    let staged: Vec<String> = files(d).into_iter().filter(|f| f.ends_with(".pending")).collect();
    assert!(!staged.is_empty(), "nothing staged: {:?}", files(d));
    // a second writer meanwhile is refused by the folder's lock, with --overwrite or without (before
    // its own check of the manifest), and leaves the first one's files alone
    for opts in [opts.clone(), WriterOptions::default()] {
        let e = DatasetWriter::create(d, m.clone(), opts).err().unwrap().to_string();
        assert!(e.contains("another writer"), "{e}");
    }
    assert!(staged.iter().all(|f| d.join(f).exists()));
    drop(w);
    assert_eq!(files(d), before, "a failed replacement changed the folder");
    assert_eq!(infinity_data::Manifest::load(d).unwrap(), old);
    assert!(infinity_data::inspect::verify(d).problems.is_empty());
    assert_eq!(std::fs::read(d.join("tokenizer.safetensors")).unwrap(), b"old tokenizer");

    // killed partway: its staged files are removed by the next writer, which replaces the dataset
    std::fs::write(d.join(".shard-00007.arrow.pending"), b"half a shard").unwrap();
    let mut w = DatasetWriter::create(d, m.clone(), opts).unwrap();
    std::fs::write(w.file("tokenizer.safetensors"), b"new tokenizer").unwrap();
    for id in 0..5 {
        w.push(common::random_row(&m, id, &mut rng)).unwrap();
    }
    let new = w.finish().unwrap();
    assert_eq!((new.total_rows, new.shards.len()), (5, 1));
    assert_eq!(files(d), [".writer.lock", "manifest.json", "shard-00000.arrow", "tokenizer.safetensors"]);
    assert_eq!(std::fs::read(d.join("tokenizer.safetensors")).unwrap(), b"new tokenizer");
    assert!(infinity_data::inspect::verify(d).problems.is_empty());
}

/// A first write into a folder that fails partway (a full disk) leaves none of its files, so the disk
/// is not left full of an unfinished dataset, and a file it would replace as it was; a folder that holds a dataset, or a file given as the
/// folder, is refused when claimed, before any work for it.
#[test]
fn a_failed_first_write_leaves_no_files_and_a_claim_comes_first() {
    use infinity_data::writer::{DatasetWriter, WriterOptions};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("new");
    let m = common::manifest();
    let opts = WriterOptions { batch_rows: 7, shard_bytes: 16 << 10, overwrite: false };
    let mut rng: rand_chacha::ChaCha8Rng = rand::SeedableRng::seed_from_u64(5);
    // (a tokenizer kept in the folder stays as it was: the writer's own goes in only at `finish`)
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("tokenizer.safetensors"), b"kept").unwrap();
    let mut w = DatasetWriter::claim(&d, opts.clone()).unwrap().start(m.clone()).unwrap();
    std::fs::write(w.file("tokenizer.safetensors"), b"tokenizer").unwrap();
    for id in 0..200 {
        w.push(common::random_row(&m, id, &mut rng)).unwrap();
    }
    let names = |d: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    assert!(names(&d).iter().filter(|f| f.ends_with(".arrow.pending")).count() > 1, "{:?}", names(&d));
    drop(w);
    assert_eq!(names(&d), [".writer.lock", "tokenizer.safetensors"], "a failed first write left files");
    assert_eq!(std::fs::read(d.join("tokenizer.safetensors")).unwrap(), b"kept");
    std::fs::remove_file(d.join("tokenizer.safetensors")).unwrap();

    common::write_random(&d, 5, 1);
    let e = DatasetWriter::claim(&d, opts.clone()).err().unwrap().to_string();
    assert!(e.contains("already holds a dataset"), "{e}");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = DatasetWriter::claim(&file, opts).err().unwrap().to_string();
    assert!(e.contains("a-file: a file, not a folder"), "{e}");
}

/// A manifest written before short captions (no `short_caption` key) reads as one without them, and
/// one without them is written as before.
#[test]
fn manifests_without_short_captions_read_and_write_as_before() {
    let mut m = common::manifest();
    m.conditions.text.as_mut().unwrap().short_caption = false;
    let json = serde_json::to_string(&m).unwrap();
    assert!(!json.contains("short_caption"), "{json}");
    let back: infinity_data::Manifest = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m);
    assert!(!back.columns().text_emb_short);
    m.conditions.text.as_mut().unwrap().short_caption = true;
    assert!(serde_json::to_string(&m).unwrap().contains("\"short_caption\":true"));
}

/// An atomic write's temporary file is its own: a user's `NAME.tmp` beside the target stays.
#[test]
fn an_atomic_write_leaves_a_neighbouring_tmp_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (target, neighbour) = (dir.path().join("grid.png"), dir.path().join("grid.tmp"));
    std::fs::write(&neighbour, b"notes").unwrap();
    infinity_data::manifest::write_atomic(&target, b"png").unwrap();
    assert_eq!(std::fs::read(&neighbour).unwrap(), b"notes");
    assert_eq!(std::fs::read(&target).unwrap(), b"png");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

/// A grid too wide for JPEG is refused with why, not with its encoder's empty message.
#[test]
fn a_grid_too_wide_for_jpeg_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let tile = infinity_data::tokenizer::Image::from_rgb8(4, 4, &[128u8; 48]);
    let images = vec![tile; 700];
    let e = infinity_data::inspect::save_grid(&images, 700, &dir.path().join("g.jpg")).unwrap_err().to_string();
    assert!(e.contains("over JPEG's 65535 px a side: write a .png"), "{e}");
    infinity_data::inspect::save_grid(&images, 700, &dir.path().join("g.png")).unwrap();
}
