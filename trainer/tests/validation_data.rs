//! Bad rows, in the validation set or the training data, are found before the first step (and by
//! `train --check`), named by file, row, id and column, with the exit code the run would stop with: 65
//! for bad data, 2 for an empty validation set.

use std::path::{Path, PathBuf};
use std::process::Command;

use infinity_data::manifest::Manifest;
use infinity_data::synth::{synth, SynthOptions};
use infinity_data::tokenizer::TOKENIZER_FILE;
use infinity_data::writer::{DatasetWriter, RowData, WriterOptions};
use infinity_data::{Checksums, Dataset};
use infinity_trainer::train::check::check;
use infinity_trainer::train::config::TrainConfig;
use infinity_trainer::train::{train, TrainOptions};

/// 32 synthetic rows (ids 0..32) on the `demo4` schedules, 8 of them at most in the `0.666` bucket.
fn dataset(dir: &Path, templates: &[(&str, f64)]) {
    let opts = SynthOptions {
        rows: 32,
        fit_rows: 32,
        budget: "demo4".into(),
        templates: templates.iter().map(|(t, w)| (t.to_string(), *w)).collect(),
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    };
    synth(dir, &opts).unwrap();
}

/// `src` written again to `dst`, its manifest header edited by `header` and each row by `row` (`None`
/// drops it). The writer checks lengths and class ranges, not values.
fn rewrite(src: &Path, dst: &Path, header: impl Fn(&mut Manifest), row: impl Fn(u64, &mut RowData) -> bool) {
    let ds = Dataset::open(src, Checksums::Verify).unwrap();
    let mut h = Manifest { shards: vec![], total_rows: 0, ..ds.manifest.clone() };
    header(&mut h);
    let mut w = DatasetWriter::create(dst, h, WriterOptions { overwrite: true, ..Default::default() }).unwrap();
    for g in 0..ds.num_rows() {
        let mut data = RowData::from(ds.row(g));
        if row(g, &mut data) {
            w.push(data).unwrap();
        }
    }
    w.finish().unwrap();
    std::fs::copy(src.join(TOKENIZER_FILE), dst.join(TOKENIZER_FILE)).unwrap();
}

/// `dir`'s manifest edited by `f` (the shards stay as they are).
fn edit_manifest(dir: &Path, f: impl Fn(&mut Manifest)) {
    let mut m = Manifest::load(dir).unwrap();
    f(&mut m);
    m.save(dir).unwrap();
}

/// f16 NaN (little-endian) at the first value of a latent or text embedding.
fn nan_first(v: &mut Option<Vec<u8>>) {
    v.as_mut().unwrap()[..2].copy_from_slice(&[0x00, 0x7e]);
}

/// A config file training on `data` (validating on `val`) into `dir/run`.
fn config_file(dir: &Path, data: &Path, val: Option<&Path>, conditioning: &str) -> PathBuf {
    let val = val.map_or(String::new(), |v| format!("[val]\ndir = \"{}\"\nevery = 2\n", v.display()));
    let text = format!(
        r#"[run]
dir = "{}"
seed = 0
steps = 4
log_every = 100
device = "cpu"
[model]
preset = "tiny"
depth = 1
conditioning = "{conditioning}"
[data]
dir = "{}"
global_batch = 8
micro_batch = 4
workers = 0
[optim]
lr = 1e-3
warmup_steps = 1
[checkpoint]
every = 2
[sample]
every = 0
{val}"#,
        dir.join("run").display(),
        data.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn load(path: &Path, sets: &[&str]) -> TrainConfig {
    TrainConfig::load(path, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

/// `infinity train CONFIG --check`'s exit code and stderr.
fn check_exit(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_infinity")).args(["train"]).arg(config).arg("--check").output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_bad_validation_set_stops_the_run_before_its_first_step() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    dataset(&data, &[("1.000", 1.0)]);
    let num_classes = Manifest::load(&data).unwrap().conditions.class.unwrap().num_classes as i32;

    let empty = t.join("val-empty");
    rewrite(&data, &empty, |_| {}, |_, _| false);
    let nan = t.join("val-nan");
    rewrite(
        &data,
        &nan,
        |_| {},
        |g, r| {
            if g == 3 {
                nan_first(&mut r.latent);
            }
            true
        },
    );
    // a class the training data has not: written under a wider header, then the header set back
    let class = t.join("val-class");
    let classes = Manifest::load(&data).unwrap().conditions.class;
    rewrite(
        &data,
        &class,
        |h| h.conditions.class = Some(infinity_data::manifest::ClassInfo { num_classes: 99, names: vec![] }),
        |g, r| {
            if g == 2 {
                r.class_label = Some(num_classes + 5);
            }
            true
        },
    );
    edit_manifest(&class, |m| m.conditions.class = classes.clone());

    let shard = |dir: &Path| dir.join(&Manifest::load(dir).unwrap().shards[0].file).display().to_string();
    for (val, want, code) in [
        (&empty, vec![format!("val.dir {}: no rows to validate on", empty.display())], 2),
        (
            &nan,
            vec![
                format!("val.dir {}: 1 bad row", nan.display()),
                format!("{}: row 3 (id 3), column `latent`: expected finite values", shard(&nan)),
            ],
            65,
        ),
        (
            &class,
            vec![format!(
                "{}: row 2 (id 2), column `class_label`: expected a class in [0, {num_classes}), found {}",
                shard(&class),
                num_classes + 5
            )],
            65,
        ),
    ] {
        let name = val.file_name().unwrap().to_string_lossy().into_owned();
        let file = config_file(t, &data, Some(val), "class");
        // `--check` names the file, row and column, and exits as the run would
        let e = format!("{:#}", check(&load(&file, &[]), 1, None, None).unwrap_err());
        for w in &want {
            assert!(e.contains(w.as_str()), "{name}: {e}\nwants: {w}");
        }
        let (rc, stderr) = check_exit(&file);
        assert_eq!(rc, Some(code), "{name}: {stderr}");
        assert!(stderr.contains(want[0].as_str()), "{name}: {stderr}");
        // the run stops before its first step, not at its first evaluation (after step 2's training
        // and before its checkpoint)
        let run = t.join(format!("run-{name}"));
        let cfg = load(&file, &[&format!("run.dir={}", run.display())]);
        let e = format!("{:#}", train(&cfg, &TrainOptions::default()).unwrap_err());
        assert!(e.contains(want[0].as_str()), "{name}: {e}");
        assert!(!run.join("metrics.jsonl").exists() && !run.join("checkpoints").exists(), "{name}: steps ran");
    }
    // only the fixed set (the first `val.max_rows` rows) is read, so only it is checked
    let file = config_file(t, &data, Some(&nan), "class");
    check(&load(&file, &["val.max_rows=3"]), 1, None, None).unwrap();
}

#[test]
fn check_refuses_training_rows_the_run_would_stop_at() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    dataset(&data, &[("1.000", 1.0)]);
    let shard = |dir: &Path| dir.join(&Manifest::load(dir).unwrap().shards[0].file).display().to_string();
    let copy = |name: &str, row: &dyn Fn(u64, &mut RowData)| {
        let dir = t.join(name);
        rewrite(
            &data,
            &dir,
            |_| {},
            |g, r| {
                row(g, r);
                true
            },
        );
        dir
    };

    // tokens of 16 bits under a manifest that says 17 (3 bytes a token): every row
    let d17 = copy("d17", &|_, _| {});
    edit_manifest(&d17, |m| m.d = 17);
    let lat = copy("nan-latent", &|g, r| {
        if g == 5 || g == 9 {
            nan_first(&mut r.latent)
        }
    });
    let text = copy("nan-text", &|g, r| {
        if g == 7 {
            nan_first(&mut r.text_emb)
        }
    });
    for (dir, conditioning, want) in [
        (&d17, "class", format!("data.dir {}: 32 bad rows", d17.display())),
        (&d17, "class", format!("{}: row 0 (id 0), column `bits`: expected", shard(&d17))),
        (&lat, "class", format!("data.dir {}: 2 bad rows", lat.display())),
        (&lat, "class", format!("{}: row 5 (id 5), column `latent`: expected finite values", shard(&lat))),
        (&text, "text", format!("{}: row 7 (id 7), column `text_emb`: expected finite values", shard(&text))),
    ] {
        let file = config_file(t, dir, None, conditioning);
        let e = format!("{:#}", check(&load(&file, &[]), 1, None, None).unwrap_err());
        assert!(e.contains(want.as_str()), "{e}\nwants: {want}");
        let (rc, stderr) = check_exit(&file);
        assert_eq!(rc, Some(65), "{stderr}");
        assert!(stderr.contains(want.as_str()), "{stderr}");
    }
    // `--rows-of-step` lists the rows of the step the run stops at, the bad ones marked as the run
    // reads them (it refused that step, naming only the first bad row)
    let rows_of = |dir: &Path, step: u64| {
        infinity_trainer::train::step_rows::rows_of_step(&load(&config_file(t, dir, None, "class"), &[]), step, 1)
            .unwrap()
    };
    let listed = rows_of(&d17, 1);
    let marked = listed.iter().filter(|l| l.contains("  BAD: ") && l.contains("column `bits`")).count();
    assert!(marked > 0 && listed.last().unwrap().starts_with(&format!("{marked} rows marked BAD")), "{listed:?}");
    let lines: Vec<String> = (1..=4).flat_map(|step| rows_of(&lat, step)).collect();
    let bad: Vec<&String> = lines.iter().filter(|l| l.contains("  BAD: ")).collect();
    assert!(!bad.is_empty() && bad.iter().all(|l| l.contains("column `latent`: expected finite values")), "{lines:?}");
    // a class model never reads the text embedding: the run would not stop at it, nor does the check
    check(&load(&config_file(t, &text, None, "class"), &[]), 1, None, None).unwrap();
    // a short caption's embedding is read (and checked) where data.short_cap_prob > 0 only
    let short = copy("nan-short", &|g, r| {
        if g == 3 {
            nan_first(&mut r.text_emb_short)
        }
    });
    let file = config_file(t, &short, None, "text");
    check(&load(&file, &[]), 1, None, None).unwrap();
    let e = format!("{:#}", check(&load(&file, &["data.short_cap_prob=0.5"]), 1, None, None).unwrap_err());
    let want = format!("{}: row 3 (id 3), column `text_emb_short`: expected finite values", shard(&short));
    assert!(e.contains(&want), "{e}\nwants: {want}");
}

/// Rows of a bucket smaller than a global batch are never drawn: a bad one there stops no run.
#[test]
fn check_passes_bad_rows_the_run_never_draws() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    dataset(&data, &[("1.000", 0.8), ("0.666", 0.2)]);
    let ds = Dataset::open(&data, Checksums::Verify).unwrap();
    let small: Vec<u64> = (0..ds.num_rows()).filter(|&g| ds.row(g).bucket == 1).collect();
    assert!(!small.is_empty() && small.len() < 8, "{} rows in the 0.666 bucket", small.len());
    let bad = t.join("bad");
    rewrite(
        &data,
        &bad,
        |_| {},
        |g, r| {
            if g == small[0] {
                nan_first(&mut r.latent);
            }
            true
        },
    );
    let lines = check(&load(&config_file(t, &bad, None, "class"), &[]), 1, None, None).unwrap();
    assert!(lines.iter().any(|l| l.contains("never trained on")), "{lines:?}");
}

#[test]
fn the_batch_line_counts_in_singular_and_plural() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data, &[("1.000", 1.0)]);
    let file = config_file(tmp.path(), &data, None, "class");
    for (world, micro, want) in [
        (1, "4", "= 1 rank × 2 micro-steps × 4;"),
        (2, "4", "= 2 ranks × 1 micro-step × 4;"),
        (1, "8", "= 1 rank × 1 micro-step × 8;"),
    ] {
        let lines = check(&load(&file, &[&format!("data.micro_batch={micro}")]), world, None, None).unwrap();
        assert!(lines.iter().any(|l| l.starts_with("batch: 8 samples per step ") && l.contains(want)), "{lines:?}");
    }
}

/// A validation set with rows on schedules the training data has none of (here an aspect ratio it
/// lacks; another pixel budget alike) is warned of, with how many rows: the model never predicted
/// those scales.
#[test]
fn validation_rows_on_schedules_the_run_never_trained_on_are_warned_of() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (data, val) = (t.join("data"), t.join("val"));
    dataset(&data, &[("1.000", 1.0)]);
    let opts = SynthOptions {
        rows: 32,
        seed: 3,
        budget: "demo4".into(),
        templates: vec![("1.000".into(), 0.5), ("0.666".into(), 0.5)],
        tokenizer: Some(data.join(TOKENIZER_FILE)),
        ..Default::default()
    };
    synth(&val, &opts).unwrap();
    let wide = infinity_data::Dataset::open(&val, Checksums::Verify).unwrap();
    let of_0666 =
        (0..32).filter(|&g| wide.manifest.schedules[wide.row(g).bucket as usize].name.starts_with("0.666")).count();
    assert!(of_0666 > 0);
    let lines = check(&load(&config_file(t, &data, Some(&val), "class"), &[]), 1, None, None).unwrap();
    let want = format!(
        "warning: val.dir {}: of its 32 rows validated, {of_0666} on 0.666/demo4 are on schedules the training data \
         holds no rows of",
        val.display()
    );
    assert!(lines.iter().any(|l| l.starts_with(&want)), "{want}\n{lines:#?}");
    // (the training data's own rows: none, but they are the training data's, which is said)
    let lines = check(&load(&config_file(t, &data, Some(&data), "class"), &[]), 1, None, None).unwrap();
    assert!(!lines.iter().any(|l| l.contains("holds no rows of")), "{lines:#?}");
    let want = format!("warning: val.dir {}: the same rows as the training data {}", data.display(), data.display());
    assert!(lines.iter().any(|l| l.starts_with(&want) && l.contains("not held-out error")), "{want}\n{lines:#?}");
}

/// A dataset folder whose path is not UTF-8 (a Latin-1 name) is written and read: the manifest's
/// `created_by` shows the command line lossily, where reading it as text panicked.
#[test]
fn data_commands_take_paths_that_are_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    let status = Command::new(env!("CARGO_BIN_EXE_infinity"))
        .args(["data", "synth", "--rows", "8", "--fit-rows", "8", "--budget", "demo4", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let m = Manifest::load(&out).unwrap();
    assert!(m.created_by.contains("caf\u{fffd}"), "{}", m.created_by);
}

/// A run of 2 steps into `t/run` on 32 rows of one schedule (`t/data`), validating on a copy of them
/// (`t/val`): the two datasets and its config file.
fn trained_with_val(t: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (data, val) = (t.join("data"), t.join("val"));
    dataset(&data, &[("1.000", 1.0)]);
    rewrite(&data, &val, |_| {}, |_, _| true);
    let config = config_file(t, &data, Some(&val), "class");
    train(&load(&config, &[]), &TrainOptions { stop_after: Some(2), ..Default::default() }).unwrap();
    (data, val, config)
}

/// A validation set rebuilt in place since the checkpoint (here with rows fewer) is warned of on resume,
/// naming it: its losses from there on are not comparable with those before. The same set is not.
#[test]
fn a_validation_set_rebuilt_since_the_checkpoint_is_warned_of_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (data, val, config) = trained_with_val(t);
    let ckpt = t.join("run/checkpoints/step-00000002");
    let resume = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_infinity"));
        let out = cmd.arg("train").arg(&config).arg("--resume").arg(&ckpt).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = resume();
    assert!(!said.contains("differs from the set the checkpoint"), "{said}");
    rewrite(&data, &val, |_| {}, |g, _| g < 24);
    let said = resume();
    let want = format!(
        "val.dir {} differs from the set the checkpoint of step 2 validated on (the row count changed: 32 → 24): \
         its losses in val.jsonl from here on are not comparable with those before",
        val.display()
    );
    assert!(said.contains(&want), "{said}");
}

/// `infinity eval RUN` of a run whose validation set was rebuilt in place since its checkpoint says so
/// (its losses are not val.jsonl's), once; each --out line names the set's fingerprint, the one the
/// checkpoint recorded while the set is as it was. `--val DIR` is another set by choice: no warning.
#[test]
fn eval_names_a_validation_set_rebuilt_since_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (data, val, _) = trained_with_val(t);
    let out = t.join("eval.jsonl");
    let eval = |more: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_infinity"));
        cmd.args(["eval", "--device", "cpu", "--all", "--out"]).arg(&out).args(more).arg(t.join("run"));
        let said = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&said.stderr).into_owned();
        assert!(said.status.success(), "{stderr}");
        let text = std::fs::read_to_string(&out).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        (stderr, last["fingerprint"].as_str().unwrap().to_string())
    };
    let state = std::fs::read_to_string(t.join("run/checkpoints/step-00000002/state.json")).unwrap();
    let recorded = serde_json::from_str::<serde_json::Value>(&state).unwrap()["val_sets"]["val.dir"].clone();
    let (said, fingerprint) = eval(&[]);
    assert!(!said.contains("not the set"), "{said}");
    assert_eq!(recorded.as_str(), Some(fingerprint.as_str()));
    rewrite(&data, &val, |_| {}, |g, _| g < 24);
    let (said, rebuilt) = eval(&[]);
    let want = format!(
        "warning: val.dir {}: not the set the checkpoint of step 2 validated on (the row count changed: 32 → 24): \
         these losses are not comparable with those of the run's val.jsonl",
        val.display()
    );
    assert_eq!(said.matches(&want).count(), 1, "{said}");
    assert_ne!(rebuilt, fingerprint);
    let (said, _) = eval(&["--val", val.to_str().unwrap()]);
    assert!(!said.contains("not the set"), "{said}");
}

/// A validation set needs the condition its model takes alone: a class model's may lack the text
/// features, a text model's the classes (both were refused), and each measures as the whole set does.
#[test]
fn a_validation_set_needs_only_the_condition_its_model_takes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    dataset(&data, &[("1.000", 1.0)]);
    let no_text = t.join("no-text");
    rewrite(
        &data,
        &no_text,
        |m| m.conditions.text = None,
        |_, r| {
            (r.text_emb, r.text_emb_short) = (None, None);
            true
        },
    );
    let no_class = t.join("no-class");
    rewrite(
        &data,
        &no_class,
        |m| m.conditions.class = None,
        |_, r| {
            r.class_label = None;
            true
        },
    );
    for (conditioning, without, other) in [("class", &no_text, &no_class), ("text", &no_class, &no_text)] {
        let dir = t.join(conditioning);
        std::fs::create_dir(&dir).unwrap();
        train(&load(&config_file(&dir, &data, None, conditioning), &[]), &TrainOptions::default()).unwrap();
        let eval = |val: &Path| {
            Command::new(env!("CARGO_BIN_EXE_infinity"))
                .args(["eval", "--max-rows", "16", "--device", "cpu", "--val"])
                .arg(val)
                .arg(dir.join("run"))
                .output()
                .unwrap()
        };
        let loss = |val: &Path| {
            let out = eval(val);
            assert!(out.status.success(), "{conditioning}: {}", String::from_utf8_lossy(&out.stderr));
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            said[said.find("val loss").unwrap_or_else(|| panic!("{said}"))..].to_string()
        };
        assert_eq!(loss(without), loss(&data), "{conditioning}");
        // (the condition it takes missing is refused, named)
        let out = eval(other);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && said.contains("its conditions (no "), "{conditioning}: {said}");
    }
}

/// `infinity eval RUN` measures the run with its config as it trained: the environment's `INF__…`
/// variables (a validation setting, a broken value) do not apply, and it says so; `--micro-batch` sets
/// the rows per pass.
#[test]
fn eval_of_a_run_reads_its_config_without_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    trained_with_val(t);
    let eval = |env: &[(&str, &str)], more: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_infinity"))
            .args(["eval", "--max-rows", "8", "--device", "cpu"])
            .args(more)
            .arg(t.join("run"))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{env:?}: {stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let (plain, said) = eval(&[], &[]);
    assert!(!said.contains("do(es) not apply"), "{said}");
    let (with_env, said) = eval(&[("INF__BSC__P_MAX", "0.9"), ("INF__RUN__STEPS", "abc")], &[]);
    assert_eq!(plain, with_env);
    // (eval's own flags set what it measures with: fewer rows per pass, the same mean to 5 digits)
    let (smaller, _) = eval(&[], &["--micro-batch", "3"]);
    assert_eq!(plain, smaller);
    assert!(said.contains("INF__BSC__P_MAX, INF__RUN__STEPS in the environment do(es) not apply"), "{said}");
}

/// A dataset whose tokenizer file is gone trains (training does not need it), but not with sample grids,
/// which decode with it: refused before the first step with exit 2, as a restart would find it again.
#[test]
fn sample_grids_without_the_tokenizer_file_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    dataset(&data, &[("1.000", 1.0)]);
    std::fs::remove_file(data.join(TOKENIZER_FILE)).unwrap();
    let config = config_file(t, &data, None, "class");
    let (code, _) = check_exit(&config);
    assert_eq!(code, Some(0));
    let text = std::fs::read_to_string(&config).unwrap().replace("[sample]\nevery = 0", "[sample]\nevery = 2");
    std::fs::write(&config, text).unwrap();
    let (code, said) = check_exit(&config);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("sample.every = 2: the sample grids decode with the dataset's tokenizer"), "{said}");
    assert!(said.contains(TOKENIZER_FILE), "{said}");
    let out = Command::new(env!("CARGO_BIN_EXE_infinity")).arg("train").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
