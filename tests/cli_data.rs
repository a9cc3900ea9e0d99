//! `infinity data …` end to end: synth → inspect → verify → stats (PNG) → corrupt → verify fails.

use crate::{infinity, path_str};

#[test]
fn synth_inspect_verify_stats_and_a_failing_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("demo");
    let png = dir.path().join("grid.png");
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
}

#[test]
fn bad_arguments_are_usage_errors() {
    let e =
        infinity_trainer::cli::run(["infinity", "data", "synth", "--out", "x", "--templates", "1.000"]).unwrap_err();
    assert!(format!("{e:#}").contains("TEMPLATE:WEIGHT"), "{e:#}");
    let e = infinity_trainer::cli::run(["infinity", "data", "frobnicate"]).unwrap_err();
    assert!(e.downcast_ref::<clap::Error>().is_some());
    // a grace of 0 s would SIGKILL the ranks before their stop's checkpoint
    let e = infinity_trainer::cli::run(["infinity", "launch", "--grace-s", "0", "--", "train", "x.toml"]).unwrap_err();
    assert!(format!("{e:#}").contains("expected a number of seconds > 0, found `0`"), "{e:#}");
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
