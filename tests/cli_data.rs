//! `infinity data …` end to end: synth → inspect → verify → stats (PNG) → corrupt → verify and inspect fail.

use crate::{infinity, path_str};

#[test]
fn synth_inspect_verify_stats_and_a_failing_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("demo");
    let png = dir.path().join("grids").join("grid.png"); // (its folder made, as sample's -o)
    let ds_s = path_str(&ds);
    assert!(infinity(&["data", "synth", "--out", ds_s, "--rows", "300", "--fit-rows", "64", "--seed", "5"]));
    assert!(infinity(&["data", "inspect", ds_s]));
    assert!(infinity(&["data", "verify", ds_s]));
    assert!(infinity(&["data", "stats", ds_s, "--png", path_str(&png), "--n", "8"]));
    let img = image::open(&png).unwrap();
    assert!(img.width() > 200 && img.height() > 90, "grid is {}×{}", img.width(), img.height());

    // synth refuses to overwrite unless asked
    let e = infinity_trainer::cli::run(["infinity", "data", "synth", "--out", ds_s, "--rows", "10"]).unwrap_err();
    assert!(format!("{e:#}").contains("--overwrite"), "{e:#}");

    let shard = ds.join("shard-00000.arrow");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
    assert!(!infinity(&["data", "verify", ds_s]), "verify must fail on a corrupt shard");
    // inspect reads the first shard's schema: a shard that is no Arrow file fails it too
    std::fs::write(&shard, b"not an arrow file").unwrap();
    assert!(!infinity(&["data", "inspect", ds_s]), "inspect must fail on an unreadable shard");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let e =
        infinity_trainer::cli::run(["infinity", "data", "synth", "--out", "x", "--templates", "1.000"]).unwrap_err();
    assert!(format!("{e:#}").contains("TEMPLATE:WEIGHT"), "{e:#}");
    // a template's two spellings are one template
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("twice");
    let args = ["infinity", "data", "synth", "--out", path_str(&out), "--templates", "0.5:1,0.500:1"];
    let e = infinity_trainer::cli::run(args).unwrap_err();
    assert!(format!("{e:#}").contains("the template \"0.500\" is given twice (as 0.500"), "{e:#}");
    let e = infinity_trainer::cli::run(["infinity", "data", "frobnicate"]).unwrap_err();
    assert!(e.downcast_ref::<clap::Error>().is_some());
    // pack takes one source of two, and says which two
    let e = infinity_trainer::cli::run(["infinity", "data", "pack", "--out", "x"]).unwrap_err();
    assert!(format!("{e:#}").contains("<--images <IMAGES>|--meta <META>>"), "{e:#}");
    // a grace of 0 s would SIGKILL the ranks before their stop's checkpoint
    let e = infinity_trainer::cli::run(["infinity", "launch", "--grace-s", "0", "--", "train", "x.toml"]).unwrap_err();
    assert!(
        format!("{e:#}").contains("expected a number of seconds > 0 and at most 604800 (a week), found `0`"),
        "{e:#}"
    );
    // (and one whose deadline would not fit the clock)
    for flag in ["--grace-s", "--rdzv-timeout-s", "--rdzv-last-call-s"] {
        let e = infinity_trainer::cli::run(["infinity", "launch", flag, "1e19", "--", "train", "x.toml"]).unwrap_err();
        assert!(format!("{e:#}").contains("at most 604800 (a week), found `1e19`"), "{flag}: {e:#}");
    }
}

/// `data bench --scratch DIR` generates its datasets in a folder of its own inside DIR and removes only
/// that: DIR and what it held stay.
#[test]
fn data_bench_leaves_its_scratch_folder_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep.txt"), "important").unwrap();
    let args = ["data", "bench", "--rows", "64", "--samples", "256", "--global-batch", "8", "--workers", "1"];
    assert!(infinity(&[&args[..], &["--scratch", path_str(dir.path())]].concat()));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["keep.txt"], "the scratch folder after the bench");
}

/// `data pack --meta`: upstream's metadata files (`<template>_<count>.jsonl`) are packed at each file's
/// template with `long_caption` as the caption, and tools/write_shards.py (`upstream --meta`, the T5
/// path) reads the folder row for row as Rust does, refusing what Rust refuses with the same words.
#[test]
fn pack_upstream_metadata_and_python_reads_it_alike() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("meta");
    std::fs::create_dir_all(meta.join("images")).unwrap();
    // square images listed under the 0.500 template: the file's template, not the image's, decides
    for i in 0..6u8 {
        let img = image::RgbImage::from_fn(24, 24, |x, y| image::Rgb([x as u8 * 10, y as u8 * 10, i * 40]));
        img.save(meta.join("images").join(format!("{i}.png"))).unwrap();
    }
    // (a raw U+2028 inside a JSON string: a line separator to Python's str.splitlines, not to JSON)
    let line = |i: u8, short: &str| {
        format!(
            r#"{{"image_path": "images/{i}.png", "h_div_w": 1.0, "long_caption": "image {i}", "long_caption_type": "x{}y"{short}}}"#,
            '\u{2028}'
        )
    };
    let lines = |ids: &[u8]| {
        ids.iter().map(|&i| line(i, if i == 1 { r#", "text": "one""# } else { "" }) + "\n").collect::<String>()
    };
    std::fs::write(meta.join("0.5_000000004.jsonl"), lines(&[0, 1, 2, 3])).unwrap();
    std::fs::write(meta.join("1.000_000000002.jsonl"), lines(&[4, 5])).unwrap();
    std::fs::write(meta.join("notes.md"), "not metadata").unwrap();
    let out = dir.path().join("ds");
    let args = ["data", "pack", "--meta", path_str(&meta), "--out", path_str(&out), "--budget", "demo4"];
    assert!(infinity(&[&args[..], &["--d", "8", "--fit-images", "6"]].concat()));
    let ds = infinity_data::Dataset::open(&out, infinity_data::Checksums::Verify).unwrap();
    assert_eq!(ds.manifest.conditions.class.as_ref().unwrap().names, ["meta"]);
    for g in 0..6 {
        let row = ds.row(g);
        let template = &ds.manifest.schedules[row.bucket as usize].h_div_w_template;
        assert_eq!(template, if g < 4 { "0.500" } else { "1.000" }, "row {g}");
        assert_eq!(row.caption, Some(format!("image {g}").as_str()));
    }
    // packed again with its tokenizer: d and the patch are the tokenizer's unless given
    let again = dir.path().join("again");
    let tokenizer = out.join("tokenizer.safetensors");
    let reuse = ["--tokenizer", path_str(&tokenizer), "--out", path_str(&again)];
    assert!(infinity(&[&args[..4], &["--budget", "demo4"], &reuse[..]].concat()));
    assert_eq!(infinity_data::Manifest::load(&again).unwrap().d, 8);

    // the Python reader: the same rows, the same refusals
    let read_py = |folder: &std::path::Path| {
        let code = "import json, sys; sys.path.insert(0, 'tools'); import write_shards as w; \
                    t = [x['h_div_w'] for x in json.load(open(w.UPSTREAM_SCHEDULES))['templates']]; \
                    print(json.dumps(w.upstream_meta(sys.argv[1], t)))";
        crate::python(&[&"-c", &code, &folder])
    };
    let py: Vec<(String, String, String, Option<String>)> = serde_json::from_str(read_py(&meta).trim()).unwrap();
    let rust = infinity_data::meta::read_meta(&meta).unwrap().rows;
    let rust: Vec<_> =
        rust.into_iter().map(|r| (r.image.display().to_string(), r.template, r.caption, r.short_caption)).collect();
    assert_eq!(py, rust);
    assert_eq!(rust[1].3.as_deref(), Some("one"));
    // an image a line lists but the folder lacks: named with the file and line that list it
    std::fs::remove_file(meta.join("images").join("5.png")).unwrap();
    let over = [&args[..], &["--d", "8", "--fit-images", "6", "--overwrite"]].concat();
    let (e, _) = crate::fails(&over);
    let listed = meta.join("1.000_000000002.jsonl");
    assert!(e.contains("5.png") && e.contains(&format!("(listed at {} line 2)", listed.display())), "{e}");
    // (the dataset it was to replace is as it was, its tokenizer and images list too)
    let again = infinity_data::Dataset::open(&out, infinity_data::Checksums::Verify).unwrap();
    assert_eq!(again.manifest, ds.manifest);
    assert!(infinity_data::inspect::verify(&out).problems.is_empty());
    assert!(out.join("images.jsonl").is_file() && out.join("tokenizer.safetensors").is_file());
    std::fs::write(meta.join("1.000_000000002.jsonl"), lines(&[4, 5, 5])).unwrap();
    let e = infinity_data::meta::read_meta(&meta).unwrap_err().to_string();
    assert!(e.contains("the name says 2 lines, the file has 3"), "{e}");
    let code = "import sys; sys.path.insert(0, 'tools'); import write_shards as w; \
                w.upstream_meta(sys.argv[1], ['0.500', '1.000'])";
    let py = crate::python_fails(&[&"-c", &code, &meta]);
    assert!(py.contains("the name says 2 lines, the file has 3"), "{py}");
}
