//! `infinity export` end to end on tiny runs: the folders and datasets it refuses (another model's
//! dataset, a folder holding another export, a folder inside a checkpoint), what config.json says of
//! the run (precision, the moving average's decay, no upstream loader for a class model),
//! tools/check_export.py's `--expect` on a model its listing lacks, and `sample` of an export.

use std::path::{Path, PathBuf};

use crate::{drawn, err, infinity, path_str, python, python_fails};

/// Synthetic data of `d` bits (demo4 schedules) in `dir`.
fn synth(dir: &Path, d: &str) {
    let args = ["data", "synth", "--out", path_str(dir), "--rows", "16", "--fit-rows", "16", "--budget", "demo4"];
    assert!(infinity(&[&args[..], &["--d", d]].concat()));
}

/// A tiny `conditioning` model ([`crate::cli_train::write_config`]) trained for 2 steps on 16-bit
/// synthetic data, with `sets` (`--set KEY=VALUE`): the temporary folder, the dataset and the run.
fn tiny_run(conditioning: &str, sets: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run, cfg) = (tmp.path().join("data"), tmp.path().join("run"), tmp.path().join("train.toml"));
    synth(&data, "16");
    crate::cli_train::write_config(&cfg, &data, &run, conditioning);
    let sets = sets.iter().flat_map(|s| ["--set", s]);
    assert!(infinity(&["train", path_str(&cfg)].into_iter().chain(sets).collect::<Vec<_>>()));
    (tmp, data, run)
}

fn config(folder: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(folder.join("config.json")).unwrap()).unwrap()
}

/// A dataset of another `d` is refused as `--data` (it exported: config.json said d 16 with the other
/// dataset's schedules and tokenizer); the run's own data.dir replaced by one is left out, with a
/// warning.
#[test]
fn another_datasets_bits_are_not_exported_as_the_models() {
    let (tmp, data, run) = tiny_run("text", &[]);
    let narrow = tmp.path().join("data-d8");
    synth(&narrow, "8");
    let out = tmp.path().join("export");
    let e = err(&["export", path_str(&run), "-o", path_str(&out), "--data", path_str(&narrow)]);
    let want = format!("--data {}: d = 8, the model's tokenizer has d = 16", narrow.display());
    assert!(e.contains(&want), "{e}");
    assert!(!out.exists(), "a refused export wrote {}", out.display());

    // the run's data.dir now holds the d = 8 dataset
    std::fs::rename(&data, tmp.path().join("data-d16")).unwrap();
    std::fs::rename(&narrow, &data).unwrap();
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&out)]));
    let c = config(&out);
    assert!(c["data"].is_null() && c["d"] == 16, "{c}");
    assert!(!out.join("tokenizer.safetensors").exists(), "the other dataset's tokenizer was copied");
}

/// Two exports into one folder: the second would rewrite config.json and the shard index for its own
/// file (the first, bf16, then described as float32 and mapped nowhere), so it is refused; the same
/// file again is fine, and so is a folder whose other weights are gone. A config.json that is no
/// export's is not overwritten.
#[test]
fn one_export_per_folder() {
    let (tmp, _data, run) = tiny_run("text", &[]);
    let run_s = path_str(&run);
    let multi = tmp.path().join("multi");
    let bf16 = multi.join("model-bf16.safetensors");
    assert!(infinity(&["export", run_s, "-o", path_str(&bf16), "--dtype", "bf16"]));
    let e = err(&["export", run_s, "-o", path_str(&multi.join("model.safetensors"))]);
    assert!(e.contains("holds the export model-bf16.safetensors") && e.contains("a folder of its own"), "{e}");
    assert!(!multi.join("model.safetensors").exists());
    let c = config(&multi);
    assert_eq!((c["dtype"].as_str(), c["weights"].as_str()), (Some("bfloat16"), Some("model-bf16.safetensors")));
    python(&[&"tools/check_export.py", &bf16]);

    // the same file again (another dtype): its own config.json
    assert!(infinity(&["export", run_s, "-o", path_str(&bf16)]));
    assert_eq!(config(&multi)["dtype"], "float32");
    python(&[&"tools/check_export.py", &bf16]);
    // the other weights deleted: the folder is free
    std::fs::remove_file(&bf16).unwrap();
    assert!(infinity(&["export", run_s, "-o", path_str(&multi)]));
    assert_eq!(config(&multi)["weights"], "model.safetensors");
    // the checker reads config.json for the file it names only
    let copy = multi.join("copy.safetensors");
    std::fs::copy(multi.join("model.safetensors"), &copy).unwrap();
    let report = python_fails(&[&"tools/check_export.py", &copy]);
    assert!(report.contains("describes model.safetensors, not copy.safetensors"), "{report}");
    // an export writing into the folder meanwhile (its lock held here): refused, the folder as it was
    {
        use infinity_data::file_lock::{try_lock, Lock};
        let held = std::fs::File::open(&multi).unwrap();
        assert!(try_lock(&held, Lock::Exclusive).unwrap());
        let e = err(&["export", run_s, "-o", path_str(&multi), "--dtype", "bf16"]);
        assert!(e.contains("another `infinity export` is writing into it"), "{e}");
        assert_eq!(config(&multi)["dtype"], "float32");
    }
    // a folder missing its config.json or shard index, or with a damaged one, is a failure naming the
    // file, not a Python traceback
    let bare = tmp.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    let weights = bare.join("model.safetensors");
    std::fs::copy(multi.join("model.safetensors"), &weights).unwrap();
    let fails_with = |what: &str| {
        let report = python_fails(&[&"tools/check_export.py", &weights]);
        assert!(report.contains("FAIL: ") && report.contains(what) && !report.contains("Traceback"), "{report}");
    };
    fails_with("config.json: no such file");
    std::fs::write(bare.join("config.json"), "{\n").unwrap();
    fails_with("config.json: not readable JSON");
    std::fs::copy(multi.join("config.json"), bare.join("config.json")).unwrap();
    fails_with("model.safetensors.index.json: missing");

    // the same name again replaces the export, said where it held other weights (another model's)
    let (_tmp2, _data2, class_run) = tiny_run("class", &[]);
    let export_of = |run: &Path| {
        use infinity_trainer::export::{export, ExportOptions};
        use infinity_trainer::model::io::SaveDtype;
        let ck = infinity_trainer::train::checkpoint::load_model(run, false).unwrap();
        let opts = ExportOptions {
            dtype: SaveDtype::F32,
            block_chunks: 1,
            data: None,
            ema: false,
            from_export: None,
            init: None,
        };
        export(&ck, &multi.join("model.safetensors"), &opts).unwrap().warnings
    };
    let again = export_of(&run);
    assert!(!again.iter().any(|w| w.contains("replaces the export")), "{again:?}");
    let rechunked = infinity_trainer::train::checkpoint::load_model(&run, false).unwrap();
    let opts = infinity_trainer::export::ExportOptions {
        dtype: infinity_trainer::model::io::SaveDtype::F32,
        block_chunks: 2,
        data: None,
        ema: false,
        from_export: None,
        init: None,
    };
    let w = infinity_trainer::export::export(&rechunked, &multi.join("model.safetensors"), &opts).unwrap().warnings;
    assert!(!w.iter().any(|w| w.contains("another model")), "another chunking is the same model: {w:?}");
    let other = export_of(&class_run);
    assert!(other.iter().any(|w| w.contains("replaces the export of ") && w.contains(", another model")), "{other:?}");

    // weights named as the tokenizer's copy beside them: refused before anything is written
    let named = tmp.path().join("named");
    let e = err(&["export", run_s, "-o", path_str(&named.join("tokenizer.safetensors"))]);
    assert!(e.contains("writes its copy of the tokenizer under that name"), "{e}");
    assert!(!named.exists(), "a refused export wrote {}", named.display());

    // a file at -o that is no export's is not overwritten
    let stray = named.join("model.safetensors");
    std::fs::create_dir_all(&named).unwrap();
    std::fs::write(&stray, b"someone's weights").unwrap();
    let e = err(&["export", run_s, "-o", path_str(&stray)]);
    assert!(e.contains("exists, and neither this folder's config.json nor its"), "{e}");
    assert_eq!(std::fs::read(&stray).unwrap(), b"someone's weights");
    // an export cut short before its config.json (its shard index written) is written again
    std::fs::remove_file(&stray).unwrap();
    assert!(infinity(&["export", run_s, "-o", path_str(&stray)]));
    std::fs::remove_file(named.join("config.json")).unwrap();
    assert!(infinity(&["export", run_s, "-o", path_str(&stray)]));

    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let e = err(&["export", run_s, "-o", path_str(&foreign)]);
    assert!(e.contains("not the config.json of an `infinity export`"), "{e}");
    assert_eq!(std::fs::read_to_string(foreign.join("config.json")).unwrap(), r#"{"model_type": "bert"}"#);
}

/// `--init` exports the weights a run of the config starts from: the same for the same seed, others
/// for another, recorded as such in config.json, and sampled as any export.
#[test]
fn an_initialisation_exports_without_training() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, cfg) = (tmp.path().join("data"), tmp.path().join("train.toml"));
    synth(&data, "16");
    crate::cli_train::write_config(&cfg, &data, &tmp.path().join("run"), "class");
    let export = |name: &str, sets: &[&str]| {
        let out = tmp.path().join(name);
        let sets = sets.iter().flat_map(|s| ["--set", s]);
        let args = ["export", "--init", "--config", path_str(&cfg), "-o", path_str(&out)];
        assert!(infinity(&args.into_iter().chain(sets).collect::<Vec<_>>()));
        (std::fs::read(out.join("model.safetensors")).unwrap(), config(&out))
    };
    let (a, config_a) = export("a", &[]);
    assert_eq!((config_a["source"]["weights"].as_str(), config_a["source"]["step"].as_u64()), (Some("init"), Some(0)));
    assert!(a == export("b", &[]).0, "one seed, other weights");
    assert!(a != export("c", &["run.seed=99"]).0, "another seed, the same weights");
    let png = tmp.path().join("init.png");
    assert!(infinity(&["sample", path_str(&tmp.path().join("a")), "--class", "0", "-o", path_str(&png)]));
    let e = err(&["export", "--init", "-o", path_str(&tmp.path().join("d"))]);
    assert!(e.contains("--config"), "{e}");
}

/// A folder inside a checkpoint folder is refused (pruning deletes the checkpoint with all it holds),
/// as the checkpoint folder itself is.
#[test]
fn no_export_inside_a_checkpoint() {
    let (_tmp, _data, run) = tiny_run("text", &[]);
    let step = run.join("checkpoints/step-00000002");
    let nested = step.join("exports/sub");
    let e = err(&["export", path_str(&run), "-o", path_str(&nested)]);
    let want = format!("inside the checkpoint folder {}", step.canonicalize().unwrap().display());
    assert!(e.contains(&want) && e.contains("pruning"), "{e}");
    assert!(!step.join("exports").exists(), "a refused export made its folder");
    let e = err(&["export", path_str(&run), "-o", path_str(&step)]);
    assert!(e.contains("a checkpoint folder; export beside it"), "{e}");
}

/// A run folder is refused (`infinity sample RUN` would read the export, not the newest checkpoint, as
/// the run trains on), as are its checkpoints folder and a dataset; a folder inside the run is fine.
#[test]
fn no_export_into_a_run_or_a_dataset() {
    let (_tmp, data, run) = tiny_run("class", &[]);
    for (folder, what) in [
        (run.clone(), "a run folder"),
        (run.join("checkpoints"), "a run's checkpoints folder"),
        (data.clone(), "a dataset folder"),
    ] {
        let e = err(&["export", path_str(&run), "-o", path_str(&folder)]);
        assert!(e.contains(&format!("{}: {what}", folder.display())), "{e}");
        assert!(!folder.join("config.json").exists(), "{}: a refused export wrote", folder.display());
    }
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&run.join("export"))]));
    // a folder merely named `checkpoints`, and the one above it, are not a run's
    let own = data.parent().unwrap().join("project/checkpoints");
    std::fs::create_dir_all(&own).unwrap();
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&own)]));
    assert!(infinity(&["export", path_str(&run), "-o", path_str(own.parent().unwrap())]));
    // a pickle's name, and a likely typo of the weights' (which would have made a folder)
    for (name, want) in
        [("model.pth", "the export is safetensors"), ("model.safetensor", "did you mean `.safetensors`?")]
    {
        let out = data.parent().unwrap().join(name);
        let e = err(&["export", path_str(&run), "-o", path_str(&out)]);
        assert!(e.contains(want) && !out.exists(), "{name}: {e}");
    }
}

/// `check_export.py --expect` on an export whose constructor arguments its listing lacks: the listing
/// does not apply (skipped, said so), the file's own checks still run and pass.
#[test]
fn check_export_expect_lists_only_its_reference_models() {
    let (tmp, _data, run) = tiny_run("text", &[]);
    let out = tmp.path().join("export");
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&out)]));
    // the golden listing's models, none of them this one (another width)
    let golden = crate::repo().join("tests/golden/export-state-dict.json");
    let mut listing: serde_json::Value = serde_json::from_slice(&std::fs::read(golden).unwrap()).unwrap();
    for m in listing["models"].as_array_mut().unwrap() {
        m["constructor_kwargs"]["embed_dim"] = 96.into();
    }
    let expect = tmp.path().join("expect.json");
    std::fs::write(&expect, listing.to_string()).unwrap();
    let report = python(&[&"tools/check_export.py", &out.join("model.safetensors"), &"--expect", &expect]);
    assert!(
        report.contains("skipped: --expect") && report.contains("none with this export's constructor_kwargs"),
        "{report}"
    );
    assert!(report.contains("ok: block keys"), "{report}");
    // what upstream's own Infinity cannot build or sample is said, not failed (the folder reads as its
    // weights), and config.json's note says it too
    let report = python(&[&"tools/check_export.py", &out]);
    for want in
        ["upstream: text_channels 32: its text pool has text_channels // 128 = 0 heads", "upstream: block_chunks 1"]
    {
        assert!(report.contains(want), "{want}\n{report}");
    }
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    let note = config["upstream_loader"]["note"].as_str().unwrap();
    assert!(note.contains("upstream's text pool") && note.contains("strict=True"), "{note}");
    let chunked = tmp.path().join("chunked");
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&chunked), "--block-chunks", "2"]));
    let report = python(&[&"tools/check_export.py", &chunked]);
    assert!(report.contains("upstream: text_channels") && !report.contains("upstream: block_chunks"), "{report}");
}

/// config.json's `source` names the run's precision and, for `--ema`, the average's decay; a class
/// model's `upstream_loader` says it has none (not the text model's constructor route).
#[test]
fn config_json_names_the_precision_the_decay_and_no_loader_for_a_class_model() {
    let (tmp, data, run) = tiny_run("class", &["optim.ema_decay=0.75"]);
    let (ema, trained) = (tmp.path().join("ema"), tmp.path().join("trained"));
    assert!(infinity(&["export", path_str(&run), "--ema", "-o", path_str(&ema)]));
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&trained)]));
    // the rows of each schedule, which sampling's default schedule is chosen by; an export exported
    // again carries them
    let rows = infinity_trainer::infer::rows_by_schedule(&infinity_data::Manifest::load(&data).unwrap());
    assert!(rows.iter().sum::<u64>() > 0);
    assert_eq!(config(&trained)["data"]["schedule_rows"], serde_json::json!(rows));
    let again = tmp.path().join("again");
    assert!(infinity(&["export", path_str(&trained), "-o", path_str(&again), "--dtype", "bf16"]));
    assert_eq!(config(&again)["data"]["schedule_rows"], serde_json::json!(rows));
    let source = &config(&ema)["source"];
    assert_eq!((source["weights"].as_str(), source["ema_decay"].as_f64()), (Some("ema"), Some(0.75)), "{source}");
    assert_eq!(source["precision"], "f32");
    let c = config(&trained);
    assert!(c["source"].get("ema_decay").is_none() && c["source"]["precision"] == "f32", "{c}");
    let loader = &c["upstream_loader"];
    let note = loader["note"].as_str().unwrap();
    assert!(loader["model_type"].is_null() && note.contains("no upstream loader"), "{loader}");
    assert!(note.contains("model.init_from") && !note.contains("load_state_dict"), "{note}");
}

/// `sample` takes an export folder as it is: the same samples as from the checkpoint it came from (f32:
/// byte for byte; bf16 weights in another block chunking: sampled), with the schedules and tokenizer its
/// config.json and folder hold, so it needs no dataset; `--ema` of an export without the average and an
/// export of no dataset are refused, saying what to do.
#[test]
fn an_export_samples_without_its_dataset() {
    let (tmp, data, run) = tiny_run("class", &["optim.ema_decay=0.75"]);
    let (f32_dir, bf16_dir, ema_dir) = (tmp.path().join("f32"), tmp.path().join("bf16"), tmp.path().join("ema"));
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&f32_dir)]));
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&bf16_dir), "--dtype", "bf16", "--block-chunks", "2"]));
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&ema_dir), "--ema"]));
    let sample = |from: &Path, name: &str, extra: &[&str]| {
        let (png, bits) = (tmp.path().join(format!("{name}.png")), tmp.path().join(format!("{name}.bits")));
        let args = ["sample", path_str(from), "--class", "0,2", "--n", "2", "-o", path_str(&png)];
        assert!(infinity(&[&args[..], &["--bits", path_str(&bits), "--seed", "7"], extra].concat()), "{name}");
        drawn(&png, &bits)
    };
    let from_run = sample(&run, "run", &[]);
    let ema_from_run = sample(&run, "run-ema", &["--ema"]);
    // the dataset gone: the run cannot sample, its exports can
    std::fs::rename(&data, tmp.path().join("data-moved")).unwrap();
    let e = err(&["sample", path_str(&run), "--class", "0", "-o", path_str(&tmp.path().join("x.png"))]);
    assert!(e.contains("pass --data"), "{e}");
    assert!(from_run == sample(&f32_dir, "f32", &[]), "the f32 export sampled other images or bits than its run");
    assert!(ema_from_run == sample(&ema_dir, "ema", &[]), "the --ema export is not the run's moving average");
    assert!(ema_from_run == sample(&ema_dir, "ema-flag", &["--ema"]));
    let (png, bits, _) = sample(&bf16_dir, "bf16", &[]);
    assert!(
        png.len() == from_run.0.len() && bits.len() == from_run.1.len(),
        "bf16 export: {} bytes of bits",
        bits.len()
    );
    // its tokenizer gone: refused before sampling without --bits; with them, the bits alone
    let tokenizer = config(&bf16_dir)["data"]["tokenizer_file_beside"].as_str().unwrap().to_string();
    // another dataset's tokenizer in its place (d 32 for bits of d 16): refused before sampling
    let other = tmp.path().join("d32");
    synth(&other, "32");
    std::fs::copy(other.join("tokenizer.safetensors"), bf16_dir.join(&tokenizer)).unwrap();
    let e = err(&["sample", path_str(&bf16_dir), "--class", "0", "-o", path_str(&tmp.path().join("d32.png"))]);
    assert!(e.contains("a tokenizer of d = 32") && e.contains("the dataset's bits have d = 16"), "{e}");
    std::fs::remove_file(bf16_dir.join(tokenizer)).unwrap();
    let (no_png, no_bits) = (tmp.path().join("no-tokenizer.png"), tmp.path().join("no-tokenizer.bits"));
    let e = err(&["sample", path_str(&bf16_dir), "--class", "0", "-o", path_str(&no_png)]);
    assert!(e.contains("pass --bits FILE to write the sampled bits alone"), "{e}");
    let args = ["sample", path_str(&bf16_dir), "--class", "0", "-o", path_str(&no_png), "--bits", path_str(&no_bits)];
    assert!(infinity(&args));
    assert!(no_bits.is_file() && !no_png.exists());

    let e = err(&["sample", path_str(&f32_dir), "--ema", "-o", path_str(&tmp.path().join("y.png"))]);
    assert!(e.contains("holds the trained weights") && e.contains("--ema"), "{e}");
    // a data section edited by hand is checked as a manifest is (no schedules panicked at sampling)
    let config = f32_dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    c["data"]["schedules"] = serde_json::json!([]);
    std::fs::write(&config, c.to_string()).unwrap();
    let e = err(&["sample", path_str(&f32_dir), "-o", path_str(&tmp.path().join("z.png"))]);
    assert!(e.contains("config.json") && e.contains("`schedules`") && e.contains("`data` section"), "{e}");
    // exported without its dataset: no schedules to sample on
    let (bare, bare_png) = (tmp.path().join("bare"), tmp.path().join("bare.png"));
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&bare)]));
    let e = err(&["sample", path_str(&bare), "-o", path_str(&bare_png)]);
    assert!(e.contains("no data section") && e.contains("--data"), "{e}");
    let moved = tmp.path().join("data-moved");
    assert!(infinity(&[
        "sample",
        path_str(&bare),
        "--class",
        "1",
        "-o",
        path_str(&bare_png),
        "--data",
        path_str(&moved)
    ]));
}

/// config.json records the weights file's crc32c, and every reader of the export checks it: a byte
/// flipped since the export (a damaged copy) is named, not sampled or exported again as the model
/// (nor passed by tools/check_export.py).
#[test]
fn a_damaged_export_is_named() {
    let (tmp, _data, run) = tiny_run("class", &[]);
    let out = tmp.path().join("export");
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&out)]));
    let weights = out.join("model.safetensors");
    assert_eq!(config(&out)["weights_crc32c"].as_str().map(str::len), Some(8));
    let mut bytes = std::fs::read(&weights).unwrap();
    let at = bytes.len() - 5; // inside the last tensor's values: the file still parses
    bytes[at] ^= 0x10;
    std::fs::write(&weights, &bytes).unwrap();
    let png = tmp.path().join("x.png");
    for args in [
        &["sample", path_str(&out), "--class", "0", "-o", path_str(&png)][..],
        &["export", path_str(&out), "-o", path_str(&tmp.path().join("again"))],
    ] {
        let e = err(args);
        assert!(e.contains("its config.json records") && e.contains("changed since it was exported"), "{args:?}: {e}");
    }
    assert!(!png.exists());
    let report = python_fails(&[&"tools/check_export.py", &weights]);
    assert!(report.contains("changed since the export"), "{report}");
}
