//! Fine-tuning through the command line (`model.init_from`): where the weights came from is kept by the
//! run and its exports, a resume does not need the source any more, and a source trained on another
//! tokenizer's bits or on other class names is warned of.

use std::path::Path;

use infinity_trainer::train::checkpoint::{read_state, resolve};
use infinity_trainer::train::config::TrainConfig;
use serde_json::Value;

use crate::cli_train::class_run;
use crate::{err, infinity, path_str};

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `infinity train CFG --set …` must succeed.
fn train(cfg: &Path, sets: &[String]) {
    let mut args = vec!["train", path_str(cfg)];
    args.extend(sets.iter().flat_map(|s| ["--set", s.as_str()]));
    assert!(infinity(&args), "train {sets:?}");
}

/// `train --check`'s lines for `cfg` with `sets`.
fn check(cfg: &Path, sets: &[String]) -> String {
    let c = TrainConfig::load(cfg, sets).unwrap();
    infinity_trainer::train::check::check(&c, 1, None, None).unwrap().join("\n")
}

/// A fine-tune records its source (the checkpoint resolved, its step and checksum) in derived.json, its
/// checkpoints and its exports; resumes once the source is gone; and `--set model.init_from=""` takes
/// a source out of a config.
#[test]
fn a_fine_tune_keeps_its_source_and_resumes_without_it() {
    let (tmp, data, _run, cfg) = class_run();
    let src = tmp.path().join("src");
    train(&cfg, &[format!("run.dir={}", path_str(&src)), "run.steps=3".into(), "optim.ema_decay=0.9".into()]);
    let src_ckpt = resolve(&src).unwrap();
    let src_state = read_state(&src_ckpt).unwrap();
    let ft = tmp.path().join("ft");
    let ft_sets = [format!("run.dir={}", path_str(&ft)), format!("model.init_from={}", path_str(&src))];
    train(&cfg, &ft_sets);

    let derived = json(&ft.join("derived.json"));
    let record = &derived["init_from"];
    assert_eq!(record["step"], 3, "{derived}");
    assert_eq!(record["crc32c"], src_state.model_crc32c.as_str(), "{derived}");
    assert_eq!(record["file"], path_str(&src_ckpt.join("model.safetensors")), "{derived}");
    assert_eq!(record["weights"], "trained");
    assert_eq!(record["tokenizer"].as_str(), src_state.loader.tokenizer.as_deref());
    let ft_state = read_state(&resolve(&ft).unwrap()).unwrap();
    assert_eq!(serde_json::to_value(&ft_state.init_from).unwrap(), *record, "the checkpoint keeps it");
    let export = tmp.path().join("ft-export");
    assert!(infinity(&["export", path_str(&ft), "-o", path_str(&export)]));
    assert_eq!(json(&export.join("config.json"))["source"]["init_from"], *record, "the export carries it");

    // a checkpoint's ema.safetensors named as a file is recorded as the average, with its own crc32c
    let from_ema = tmp.path().join("from-ema");
    let ema_file = src_ckpt.join("ema.safetensors");
    train(&cfg, &[format!("run.dir={}", path_str(&from_ema)), format!("model.init_from={}", path_str(&ema_file))]);
    let ema_record = &json(&from_ema.join("derived.json"))["init_from"];
    assert_eq!(ema_record["weights"], "ema", "{ema_record}");
    assert_eq!(ema_record["crc32c"].as_str(), src_state.ema_crc32c.as_deref(), "{ema_record}");
    // `eval` of an export of the average records it as the average (without --ema too), at its step
    let (ema_export, ema_loss) = (tmp.path().join("src-ema"), tmp.path().join("ema.jsonl"));
    assert!(infinity(&["export", path_str(&src), "--ema", "-o", path_str(&ema_export)]));
    let eval = ["eval", path_str(&ema_export), "--config", path_str(&cfg), "--val", path_str(&data), "--out"];
    assert!(infinity(&[&eval[..], &[path_str(&ema_loss)]].concat()));
    let line = json(&ema_loss);
    assert!(line["ema"] == true && line["step"] == 3, "{line}");
    // the export's index (which upstream's loader reads) given for the export: recorded as the folder is
    let (from_index, index) = (tmp.path().join("from-index"), ema_export.join("model.safetensors.index.json"));
    assert!(index.is_file());
    train(&cfg, &[format!("run.dir={}", path_str(&from_index)), format!("model.init_from={}", path_str(&index))]);
    let index_record = &json(&from_index.join("derived.json"))["init_from"];
    assert!(index_record["weights"] == "ema" && index_record["export_of"].is_string(), "{index_record}");
    // an export whose config.json does not read is refused, not taken as a folder of unchecked files
    let damaged = tmp.path().join("damaged-export");
    std::fs::create_dir(&damaged).unwrap();
    for f in std::fs::read_dir(&ema_export).unwrap().flatten() {
        std::fs::copy(f.path(), damaged.join(f.file_name())).unwrap();
    }
    std::fs::write(damaged.join("config.json"), "{bad").unwrap();
    let e = err(&["train", path_str(&cfg), "--check", "--set", &format!("model.init_from={}", path_str(&damaged))]);
    assert!(e.contains("no `infinity export` config.json that reads"), "{e}");

    // `export --init` of the fine-tune's config: the weights its run starts from, the source's
    let init = tmp.path().join("init-export");
    let args = ["export", "--init", "--config", path_str(&cfg), "--set", &ft_sets[1], "-o", path_str(&init)];
    assert!(infinity(&args));
    let source = &json(&init.join("config.json"))["source"];
    assert!(source["weights"] == "init" && source["init_from"] == *record, "{source}");
    let exported = infinity_trainer::export::load_export(&init, false).unwrap().model.params.data;
    assert!(exported == infinity_trainer::train::checkpoint::load_model(&src_ckpt, false).unwrap().params.data);

    // the source pruned or moved: a resume takes its weights from its own checkpoint
    std::fs::remove_dir_all(&src).unwrap();
    let mut resumed = ft_sets.to_vec();
    resumed.push("run.steps=3".into());
    let mut args = vec!["train", path_str(&cfg), "--resume", "auto"];
    args.extend(resumed.iter().flat_map(|s| ["--set", s.as_str()]));
    assert!(infinity(&args), "a resume needs no source");
    assert_eq!(read_state(&resolve(&ft).unwrap()).unwrap().step, 3);
    assert_eq!(json(&ft.join("derived.json"))["init_from"], *record, "a resume keeps the record");
    // nor does a branch of the fine-tune into another folder (its weights are the checkpoint's)
    let branch = format!("run.dir={}", path_str(&tmp.path().join("ft-branch")));
    let args = ["train", path_str(&cfg), "--resume", path_str(&ft), "--set", &branch, "--set", &ft_sets[1]];
    assert!(infinity(&[&args[..], &["--set", "run.steps=4"]].concat()), "a branch needs no source");
    // a fresh start still needs it, and says so
    let fresh = format!("run.dir={}", path_str(&tmp.path().join("fresh")));
    let e = err(&["train", path_str(&cfg), "--set", &fresh, "--set", &ft_sets[1]]);
    assert!(e.contains("model.init_from") && e.contains(&format!("{} does not exist", path_str(&src))), "{e}");
    // an empty value takes the source out
    let lines = check(&cfg, &[fresh, "model.init_from=".into()]);
    assert!(lines.contains("start: a fresh initialisation"), "{lines}");
}

/// A source trained on another tokenizer's bits, or on classes of other names at the same indices, is
/// warned of (its weights load: nothing in them says so); a checkpoint's weights file named directly is
/// checked against its checkpoint's checksum.
#[test]
fn a_fine_tune_on_other_data_is_warned_of() {
    let (tmp, data, run, cfg) = class_run();
    train(&cfg, &[]);
    let fresh = format!("run.dir={}", path_str(&tmp.path().join("fresh")));
    let from_run = format!("model.init_from={}", path_str(&run));
    assert!(!check(&cfg, &[fresh.clone(), from_run.clone()]).contains("warning"));

    // another tokenizer (fitted on other images): from the checkpoint and from its export
    let other = tmp.path().join("other");
    let synth = ["data", "synth", "--out", path_str(&other), "--rows", "48", "--fit-rows", "32", "--budget", "demo4"];
    assert!(infinity(&[&synth[..], &["--seed", "7"]].concat()));
    let export = tmp.path().join("export");
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&export)]));
    for source in [&run, &export] {
        let sets =
            [fresh.clone(), format!("model.init_from={}", path_str(source)), format!("data.dir={}", path_str(&other))];
        let lines = check(&cfg, &sets);
        assert!(lines.contains("trained on bits of another tokenizer") && lines.contains("patch-pca-bsq"), "{lines}");
    }

    // `eval` scores the export with a training config's settings: as the checkpoint it came from
    let (run_loss, export_loss) = (tmp.path().join("run.jsonl"), tmp.path().join("export.jsonl"));
    assert!(infinity(&["eval", path_str(&run), "--val", path_str(&data), "--out", path_str(&run_loss)]));
    let e = err(&["eval", path_str(&export), "--val", path_str(&data)]);
    assert!(e.contains("an export folder or weights file") && e.contains("--config TOML"), "{e}");
    let args = ["eval", path_str(&export), "--config", path_str(&cfg), "--val", path_str(&data), "--out"];
    assert!(infinity(&[&args[..], &[path_str(&export_loss)]].concat()));
    let loss = |p: &Path| json(p)["loss"].as_f64().unwrap();
    assert_eq!(loss(&run_loss), loss(&export_loss), "the export's loss is its checkpoint's");
    assert_eq!(json(&export_loss)["step"], json(&run_loss)["step"], "the export's step is its checkpoint's");
    assert_eq!(json(&export_loss)["ema"], false);
    // (and names its run, the export's source: the run's own line, which `infinity scaling` takes)
    assert_eq!(json(&export_loss)["run"], json(&run_loss)["run"]);
    assert!(json(&run_loss)["run"].is_string());
    // its weights file, given as the file: measured as the folder is (its config.json shapes the model)
    let (file_of, file_of_loss) = (export.join("model.safetensors"), tmp.path().join("export-file.jsonl"));
    let args = ["eval", path_str(&file_of), "--config", path_str(&cfg), "--val", path_str(&data), "--out"];
    assert!(infinity(&[&args[..], &[path_str(&file_of_loss)]].concat()));
    assert_eq!(loss(&file_of_loss), loss(&run_loss));
    // --ema of an export whose run kept no average: said so, not "export the checkpoint with --ema"
    let e = err(&["eval", path_str(&export), "--config", path_str(&cfg), "--val", path_str(&data), "--ema"]);
    assert!(e.contains("whose run kept no moving average (optim.ema_decay = 0)"), "{e}");
    // a bare weights file records no step: its line says none (not step 0, a point of the run's curve)
    let (weights, file_loss) = (tmp.path().join("bare.safetensors"), tmp.path().join("file.jsonl"));
    std::fs::copy(resolve(&run).unwrap().join("model.safetensors"), &weights).unwrap();
    let args = ["eval", path_str(&weights), "--config", path_str(&cfg), "--val", path_str(&data), "--out"];
    assert!(infinity(&[&args[..], &[path_str(&file_loss)]].concat()));
    assert!(json(&file_loss)["step"].is_null() && loss(&file_loss) == loss(&run_loss), "{}", json(&file_loss));
    let e = err(&["eval", path_str(&run), "--config", path_str(&cfg)]);
    assert!(e.contains("is a checkpoint or run folder, measured with its own run's config"), "{e}");
    // its --out is never a file its lines would damage: a run's log, a checkpoint's weights, a PNG
    let weights = resolve(&run).unwrap().join("model.safetensors");
    for bad in [run.join("metrics.jsonl"), weights] {
        let e = err(&["eval", path_str(&run), "--val", path_str(&data), "--out", path_str(&bad)]);
        assert!(e.contains("own file") && e.contains("RUN/eval.jsonl"), "{e}");
    }
    let png = tmp.path().join("grid.png");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\n").unwrap();
    let e = err(&["eval", path_str(&run), "--val", path_str(&data), "--out", path_str(&png)]);
    assert!(e.contains("not JSON lines"), "{e}");

    // the same classes under other names: class_emb rows are taken by index
    let renamed = tmp.path().join("renamed");
    std::fs::create_dir(&renamed).unwrap();
    for f in std::fs::read_dir(&data).unwrap().flatten() {
        std::fs::copy(f.path(), renamed.join(f.file_name())).unwrap();
    }
    let manifest = renamed.join("manifest.json");
    let mut m = json(&manifest);
    m["conditions"]["class"]["names"][1] = "zebra".into();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let lines = check(&cfg, &[fresh.clone(), from_run.clone(), format!("data.dir={}", path_str(&renamed))]);
    assert!(lines.contains("classes of other names at the same indices (1: ") && lines.contains("→ zebra)"), "{lines}");

    // a number of samples beyond what one batch holds is refused before anything is loaded
    let e = err(&["sample", path_str(&run), "--n", "18446744073709551615"]);
    assert!(e.contains("at most 4096 a condition"), "{e}");

    // a training dataset moved since: said, and --data finds it
    let moved = tmp.path().join("moved");
    std::fs::rename(&data, &moved).unwrap();
    let e = err(&["eval", path_str(&run), "--val", path_str(&moved)]);
    assert!(e.contains("moved? pass --data DIR"), "{e}");
    assert!(infinity(&["eval", path_str(&run), "--val", path_str(&moved), "--data", path_str(&moved)]));
    std::fs::rename(&moved, &data).unwrap();

    // a checkpoint's own weights file is checked as its folder is
    let weights = resolve(&run).unwrap().join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let e = err(&[
        "train",
        path_str(&cfg),
        "--check",
        "--set",
        &fresh,
        "--set",
        &format!("model.init_from={}", path_str(&weights)),
    ]);
    assert!(e.contains("crc32c") && e.contains("corrupt checkpoint"), "{e}");
    // and a save cut short (no DONE) is refused by its file as by its folder
    std::fs::remove_file(weights.parent().unwrap().join("DONE")).unwrap();
    let from_file = format!("model.init_from={}", path_str(&weights));
    let e = err(&["train", path_str(&cfg), "--check", "--set", &fresh, "--set", &from_file]);
    assert!(e.contains("incomplete checkpoint (no DONE marker"), "{e}");
}
