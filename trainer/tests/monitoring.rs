//! What a run reports about itself over a long job: TensorBoard curves that survive failed writes,
//! the step that stops a diverging run in every log, and a `summary.json` that says where the run
//! stands after a preemption, a SIGKILL and a resume.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use infinity_trainer::tensorboard::read_scalars;
use infinity_trainer::train::config::{MicroBatchSize, TrainConfig, ValSection};
use infinity_trainer::train::{latest_checkpoint, train, TrainOptions};
use serde_json::Value;

fn dataset(dir: &Path) {
    common::tiny_dataset(dir, 96);
}

/// A tiny class-conditioned run of 6 steps, checkpoints every 3, no sample grids.
fn config(data: &Path, run: PathBuf) -> TrainConfig {
    let mut c = common::tiny_config(data, run);
    (c.model.cond_drop_rate, c.loss.label_smoothing) = (0.1, 0.0);
    c
}

fn json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn summary(run: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

/// The steps of `tag` in each event file of `run/tb`, in the order TensorBoard reads the files; every
/// file must read to its end (no torn or corrupt record).
fn tensorboard_steps(run: &Path, tag: &str) -> Vec<Vec<i64>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(run.join("tb")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let scalars = read_scalars(f).unwrap_or_else(|e| panic!("{e}"));
            scalars.iter().filter(|s| s.tag == tag).map(|s| s.step).collect()
        })
        .collect()
}

/// `infinity train CONFIG ARGS` in `dir` with `env`.
fn infinity_train(dir: &Path, cfg: &TrainConfig, args: &[&str], env: &[(&str, &str)]) -> Output {
    let cfg_path = common::config_file(cfg, dir);
    Command::new(env!("CARGO_BIN_EXE_infinity"))
        .current_dir(dir)
        .arg("train")
        .arg(&cfg_path)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// TensorBoard writes that fail (the drill: a full disk part-way through a record, at steps 3 and 4)
/// lose those steps' events only: the later steps go on in a new event file, every file reads to its
/// end, a warning says so once (and once that the writes go on), and summary.json counts them.
#[test]
fn failed_tensorboard_writes_are_counted_and_the_curves_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(&data, tmp.path().join("run"));
    let out = infinity_train(tmp.path(), &cfg, &[], &[("INFINITY_FAULT_TB", "3:2")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("TensorBoard write failed").count(), 1, "{stderr}");
    assert!(stderr.contains("1 in a row, 1 this session"), "{stderr}");
    assert_eq!(stderr.matches("TensorBoard writes go on in").count(), 1, "{stderr}");
    assert!(stderr.contains("(2 failed so far)"), "{stderr}");
    assert_eq!(tensorboard_steps(&cfg.run.dir, "train/loss"), [vec![1, 2], vec![5, 6]]);
    assert_eq!(summary(&cfg.run.dir)["tensorboard_failed_writes"], 2);
    assert_eq!(json_lines(&cfg.run.dir.join("metrics.jsonl")).len(), 6, "metrics.jsonl keeps every step");
    assert!(String::from_utf8_lossy(&out.stdout).contains("; 2 TensorBoard writes failed this session"));

    // a second outage, after the writes went on, is warned of as it starts (the last line said all was well)
    let cfg = config(&data, tmp.path().join("run2"));
    let out = infinity_train(tmp.path(), &cfg, &[], &[("INFINITY_FAULT_TB", "2:1,4:2")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("TensorBoard write failed").count(), 2, "{stderr}");
    assert!(stderr.contains("1 in a row, 2 this session"), "{stderr}");
    assert_eq!(stderr.matches("TensorBoard writes go on in").count(), 2, "{stderr}");
    assert_eq!(tensorboard_steps(&cfg.run.dir, "train/loss").concat(), [1, 3, 6]);
}

/// The step whose non-finite loss makes `optim.max_nonfinite` in a row is in metrics.jsonl and
/// TensorBoard, as summary.json names it; no checkpoint is written within the streak, so the newest,
/// named, is from before it.
#[test]
fn the_step_that_stops_a_diverging_run_is_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"));
    (cfg.optim.lr, cfg.optim.warmup_steps, cfg.checkpoint.every) = (Some(1e30), 0, 1);
    let e = format!("{:#}", train(&cfg, &TrainOptions::default()).unwrap_err());
    assert!(e.contains("3 consecutive non-finite steps"), "{e}");
    let newest = latest_checkpoint(&cfg.run.dir).expect("the checkpoint of a step before the streak");
    let first_bad = summary(&cfg.run.dir)["step"].as_u64().unwrap() - 2;
    let at = newest.file_name().unwrap().to_string_lossy()["step-".len()..].parse::<u64>().unwrap();
    assert_eq!(at, first_bad - 1, "checkpoints within the streak: {}", newest.display());
    let said = format!("The newest checkpoint, of step {at}, is from before the first of them (step {first_bad})");
    assert!(e.contains(&said) && e.contains(&newest.display().to_string()), "{e}");
    let s = summary(&cfg.run.dir);
    assert_eq!((&s["diverged"], &s["finished"]), (&Value::Bool(true), &Value::Bool(false)), "{s}");
    let stopped = s["step"].as_i64().unwrap();
    let lines = json_lines(&cfg.run.dir.join("metrics.jsonl"));
    let last = lines.last().unwrap();
    assert_eq!(last["step"].as_i64(), Some(stopped), "metrics.jsonl ends before the step that stopped the run");
    assert_eq!(last["skipped_steps"], s["skipped_steps"]);
    assert!(last["loss"].is_null(), "a non-finite loss is null in JSON: {last}");
    let tb = tensorboard_steps(&cfg.run.dir, "train/loss").concat();
    assert_eq!(tb.last(), Some(&stopped), "{tb:?}");
}

/// A run whose last steps are non-finite, fewer in a row than `optim.max_nonfinite`, has diverged (it
/// was called finished, exit 0): no later step shows the streak over. Its last checkpoint is written,
/// as a run's end writes it, with the weights from before the streak (their updates were skipped).
#[test]
fn a_run_that_ends_within_a_non_finite_streak_has_diverged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"));
    (cfg.optim.lr, cfg.optim.warmup_steps, cfg.checkpoint.every) = (Some(1e30), 0, 1);
    (cfg.optim.max_nonfinite, cfg.run.steps, cfg.checkpoint.keep_last) = (50, 6, 100);
    let e = format!("{:#}", train(&cfg, &TrainOptions::default()).unwrap_err());
    let s = summary(&cfg.run.dir);
    assert_eq!(
        (&s["diverged"], &s["finished"], &s["step"]),
        (&Value::Bool(true), &Value::Bool(false), &6.into()),
        "{s}"
    );
    let streak = s["skipped_steps"].as_u64().unwrap();
    assert!((1..6).contains(&streak), "{s}");
    assert!(e.contains(&format!("{streak} consecutive non-finite steps; stopping (diverged at step 6)")), "{e}");
    assert!(e.contains("The run's last step was the last of them: fewer than optim.max_nonfinite = 50"), "{e}");
    assert!(e.contains("the last checkpoint holds the weights from before them"), "{e}");
    let newest = latest_checkpoint(&cfg.run.dir).expect("the run's last checkpoint");
    assert!(newest.ends_with("step-00000006"), "{}", newest.display());
    let weights =
        |step: u64| std::fs::read(cfg.run.dir.join(format!("checkpoints/step-{step:08}/model.safetensors"))).unwrap();
    assert!(weights(6) == weights(6 - streak), "the streak's updates were skipped");
}

/// A diverged run exits 87, which `infinity launch` does not restart (the restarted group would diverge
/// at the same step); resuming it with the settings it diverged with is refused (by `--check` too), and
/// with a setting or the dataset changed it goes on.
#[test]
fn a_diverged_run_is_not_restarted_into_the_same_divergence() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"));
    (cfg.optim.lr, cfg.optim.warmup_steps, cfg.checkpoint.every) = (Some(1e30), 0, 1);
    let cfg_path = common::config_file(&cfg, tmp.path());
    let launch = Command::new(env!("CARGO_BIN_EXE_infinity"))
        .current_dir(tmp.path())
        .args(["launch", "--nproc-per-node", "1", "--max-restarts", "2", "--log-dir", "launch-logs", "--", "train"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&launch.stderr);
    assert_eq!(launch.status.code(), Some(87), "{stderr}");
    assert!(stderr.contains("(the run diverged)") && stderr.contains("not restarting"), "{stderr}");
    assert!(!stderr.contains("restarting the group"), "{stderr}");
    let stopped = summary(&cfg.run.dir)["step"].as_u64().unwrap();

    // (a setting that is only logged changes no step)
    for args in
        [&["--resume", "auto"][..], &["--resume", "auto", "--check"], &["--resume", "auto", "--set", "run.log_every=5"]]
    {
        let out = infinity_train(tmp.path(), &cfg, args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(87), "{args:?}: {stderr}");
        assert!(stderr.contains(&format!("diverged at step {stopped}")) && stderr.contains("optim.lr"), "{stderr}");
    }
    // (not refused; its last checkpoint holds the weights the first step blew up, so it diverges again)
    let resumed = |args: &[&str]| {
        let out = infinity_train(tmp.path(), &cfg, args, &[]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let want = format!("resumed from {}", latest_checkpoint(&cfg.run.dir).unwrap().display());
        assert!(stdout.contains(&want), "{args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    };
    // a setting changed in the environment counts as changed, and is said
    let out = infinity_train(tmp.path(), &cfg, &["--resume", "auto", "--check"], &[("INF__OPTIM__LR", "1e-3")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("from the environment: optim.lr = 1e-3"), "{stdout}");
    resumed(&["--resume", "auto", "--set", "optim.lr=1e-3"]);
    // nor with the same settings on a dataset mended since (here its shard renamed)
    let manifest = std::fs::read_to_string(data.join("manifest.json")).unwrap();
    std::fs::rename(data.join("shard-00000.arrow"), data.join("shard-00000-mended.arrow")).unwrap();
    std::fs::write(data.join("manifest.json"), manifest.replace("shard-00000.arrow", "shard-00000-mended.arrow"))
        .unwrap();
    resumed(&["--resume", "auto", "--accept-data-change"]);
}

/// The `INF__…` variables' values are read as `--set` reads its values (TOML: `0x10`, a number beyond
/// 64 bits refused, spaces around trimmed, an array's element by its number), the console names those
/// the run takes (not one a `--set` replaced), and a variable meant for the config but misspelled
/// (`INF_OPTIM_LR`) is warned of.
#[test]
fn environment_variables_are_read_as_set_reads_values() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(&data, tmp.path().join("run"));
    let check = |env: &[(&str, &str)], args: &[&str]| {
        let out = infinity_train(tmp.path(), &cfg, &[&["--check"][..], args].concat(), env);
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), said)
    };
    let (code, said) = check(&[("INF__OPTIM__WARMUP_STEPS", "0x10"), ("INF__RUN__LOG_EVERY", " 5 ")], &[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("from the environment: optim.warmup_steps = 0x10, run.log_every = 5\n"), "{said}");
    let (code, said) = check(&[("INF__RUN__SEED", "12345678901234567891")], &[]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("INF__RUN__SEED (in the environment): 12345678901234567891 is out of range"), "{said}");
    let (code, said) = check(&[("INF__OPTIM__LR", "1e-3"), ("INF__RUN__SEED", "3")], &["--set", "optim.lr=2e-3"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("from the environment: run.seed = 3\n"), "{said}");
    // (a table is given key by key, and one variable inside another's is refused: which applies is not fixed)
    let (code, said) = check(&[("INF__OPTIM__DECAY", "{ kind = \"cosine\", min_ratio = 0 }")], &[]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("INF__OPTIM__DECAY (in the environment): a variable sets one value"), "{said}");
    let (code, said) = check(&[("INF__OPTIM__ADAMW", "0"), ("INF__OPTIM__ADAMW__BETA1", "0.8")], &[]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("one inside the other: which applies is not fixed"), "{said}");
    let (code, said) = check(&[("INF_OPTIM_LR", "1"), ("INF_OPTIM__LR", "1")], &[]);
    assert_eq!(code, Some(0), "{said}");
    for var in ["INF_OPTIM_LR", "INF_OPTIM__LR"] {
        assert!(said.contains(&format!("warning: {var} in the environment is not read")), "{said}");
    }
    // (an element of an array: the second dataset of a mix reweighted)
    let other = tmp.path().join("other");
    dataset(&other);
    let mut cfg = cfg.clone();
    cfg.data.weight = Some(1.0);
    cfg.data.mix = vec![infinity_trainer::train::config::MixSource { dir: other, weight: Some(1.0) }];
    let out = infinity_train(tmp.path(), &cfg, &["--check"], &[("INF__DATA__MIX__0__WEIGHT", "3")]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("from the environment: data.mix[0].weight = 3\n"), "{said}");
    assert!(said.contains("25.0 % of the batches") && said.contains("75.0 % of the batches"), "{said}");
}

/// A run that diverged before its first checkpoint is not started again from step 0 with the settings it
/// diverged with (`--resume auto` finds no checkpoint): refused as a resume would be, by `--check` too;
/// with a setting changed (the initialisation's included) it starts.
#[test]
fn a_run_diverged_before_its_first_checkpoint_is_not_started_into_the_same_divergence() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"));
    (cfg.optim.lr, cfg.optim.warmup_steps, cfg.checkpoint.every) = (Some(1e30), 0, 100);
    assert_eq!(infinity_train(tmp.path(), &cfg, &[], &[]).status.code(), Some(87));
    assert!(latest_checkpoint(&cfg.run.dir).is_none());
    let stopped = summary(&cfg.run.dir)["step"].as_u64().unwrap();
    for args in [&["--resume", "auto"][..], &["--resume", "auto", "--check"]] {
        let out = infinity_train(tmp.path(), &cfg, args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(87), "{args:?}: {stderr}");
        let said =
            format!("diverged at step {stopped} (its summary.json), and starting it again (it wrote no checkpoint");
        assert!(stderr.contains(&said), "{stderr}");
    }
    // (the initialisation is a fresh start's to take: another one trains other steps)
    let out = infinity_train(tmp.path(), &cfg, &["--resume", "auto", "--check", "--set", "model.init.tini=0.01"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // other settings, killed before their first checkpoint: a plain restart of them is no repeat of
    // the divergence (the diverged session's summary went with its logs)
    let lower = ["--resume", "auto", "--set", "optim.lr=1e-3"];
    let out = infinity_train(tmp.path(), &cfg, &lower, &[("INFINITY_FAULT_KILL", "0:2")]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = infinity_train(tmp.path(), &cfg, &lower, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(summary(&cfg.run.dir)["diverged"], false);
    // the record of the blow-up is kept beside the run: its logs and summary
    let kept = cfg.run.dir.join("abandoned/after-step-00000000");
    let metrics = std::fs::read_to_string(kept.join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().any(|l| l.contains("\"loss\":null")), "{metrics}");
    assert_eq!(summary(&kept)["diverged"], true);
}

/// A divergence that came with a setting changed on a resume (a finished run extended with a learning
/// rate far too high) is refused when resumed again with that setting, and trained with the checkpoint's
/// own: the settings compared are the diverged session's, not the checkpoint's.
#[test]
fn a_divergence_from_a_setting_changed_on_resume_is_judged_by_that_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"));
    // (a checkpoint every 3 steps: the session that diverges writes none, its newest being step 3's)
    (cfg.run.steps, cfg.optim.warmup_steps, cfg.checkpoint.every) = (3, 0, 3);
    train(&cfg, &TrainOptions::default()).unwrap();
    let (steps, lr) = (["--set", "run.steps=8"], ["--set", "optim.lr=1e30"]);
    let args = [&["--resume", "auto"][..], &steps[..], &lr[..]].concat();
    let out = infinity_train(tmp.path(), &cfg, &args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(87), "{stderr}");
    assert!(!stderr.contains("its summary.json"), "the first divergence is trained, not refused: {stderr}");
    // the same settings again: refused, as a resume that repeats the divergence step for step
    let out = infinity_train(tmp.path(), &cfg, &args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(87), "{stderr}");
    assert!(stderr.contains("(its summary.json)") && stderr.contains("repeats it step for step"), "{stderr}");
    assert!(latest_checkpoint(&cfg.run.dir).unwrap().ends_with("step-00000003"));
    // the checkpoint's own learning rate, not the one that diverged: trained, to the end
    let out = infinity_train(tmp.path(), &cfg, &[&["--resume", "auto"][..], &steps[..]].concat(), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(summary(&cfg.run.dir)["step"], 8);
    // the diverged steps' logs, cut from the run's, are kept whole beside it
    let kept = std::fs::read_to_string(cfg.run.dir.join("abandoned/after-step-00000003/metrics.jsonl")).unwrap();
    assert!(kept.lines().any(|l| l.contains("\"loss\":null")), "{kept}");
}

/// A run trained 2 steps with a checkpoint after each (all kept, no warm-up), in a temporary folder
/// beside its dataset: where the divergence tests branch off.
fn two_checkpoints() -> (tempfile::TempDir, TrainConfig) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"));
    (cfg.run.steps, cfg.optim.warmup_steps, cfg.checkpoint.every, cfg.checkpoint.keep_last) = (2, 0, 1, 100);
    train(&cfg, &TrainOptions::default()).unwrap();
    (tmp, cfg)
}

/// The checkpoint folder of `step` in `cfg`'s run.
fn step_folder(cfg: &TrainConfig, step: u64) -> PathBuf {
    cfg.run.dir.join(format!("checkpoints/step-{step:08}"))
}

/// A diverged session is judged from its own start on: the settings it diverged with, resumed from a
/// checkpoint it passed through, are refused; from an earlier checkpoint, before the steps that led it
/// there (here another session's, with a learning rate far too high), they train.
#[test]
fn a_divergence_is_repeated_only_from_the_steps_its_session_passed_through() {
    let (tmp, cfg) = two_checkpoints();
    let steps = ["--set", "run.steps=12"];
    let ckpt = |step: u64| step_folder(&cfg, step).display().to_string();
    let run = |args: &[&str]| {
        let out = infinity_train(tmp.path(), &cfg, &[args, &steps[..]].concat(), &[]);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // session A blows the weights up at step 3 (its checkpoint holds them), session B resumes there with
    // the run's own settings and diverges from those weights
    let (code, stderr) = run(&["--resume", &ckpt(2), "--set", "optim.lr=1e30"]);
    assert_eq!(code, Some(87), "{stderr}");
    let (code, stderr) = run(&["--resume", &ckpt(3)]);
    assert_eq!(code, Some(87), "{stderr}");
    assert!(!stderr.contains("(its summary.json)"), "B is trained, not refused: {stderr}");
    assert_eq!(summary(&cfg.run.dir)["started_at"], 3);
    // B's settings from B's start: refused; from step 2, before A's step: trained, to the end
    let (code, stderr) = run(&["--resume", &ckpt(3)]);
    assert_eq!(code, Some(87), "{stderr}");
    assert!(stderr.contains("repeats it step for step"), "{stderr}");
    let (code, stderr) = run(&["--resume", &ckpt(2)]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!((&summary(&cfg.run.dir)["step"], &summary(&cfg.run.dir)["diverged"]), (&12.into(), &false.into()));
}

/// A plain restart (a preemption) keeps the step since which the run trained with its settings: a
/// divergence in the restarted session is refused from every checkpoint those settings wrote, the
/// first session's included.
#[test]
fn a_divergence_after_a_restart_is_refused_from_before_the_restart() {
    let (_tmp, cfg) = two_checkpoints();
    let ckpt = |step: u64| step_folder(&cfg, step);
    // session A: a rate far too high from step 2, preempted after step 3; B, a plain restart, diverges
    let mut wild = cfg.clone();
    (wild.run.steps, wild.optim.lr) = (12, Some(1e30));
    let a = TrainOptions { resume: Some(ckpt(2)), stop_after: Some(3), ..Default::default() };
    train(&wild, &a).unwrap();
    let b = TrainOptions { resume: Some(ckpt(3)), ..Default::default() };
    let e = format!("{:#}", train(&wild, &b).unwrap_err());
    assert!(e.contains("consecutive non-finite steps"), "{e}");
    let s = summary(&wild.run.dir);
    assert_eq!((&s["started_at"], &s["same_settings_since"]), (&3.into(), &2.into()), "{s}");
    // from step 2, A's start with these settings: refused (B's start alone would let it through)
    let e = format!("{:#}", train(&wild, &TrainOptions { resume: Some(ckpt(2)), ..Default::default() }).unwrap_err());
    assert!(e.contains("repeats it step for step"), "{e}");
}

/// TensorBoard's HParams row is written once per run folder: at step 0, and by a branch (a run folder
/// started from another's checkpoint), not by a session resuming the folder's own.
#[test]
fn a_branch_into_a_new_folder_has_its_hparams_row() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"));
    (cfg.run.steps, cfg.checkpoint.every) = (3, 3);
    train(&cfg, &TrainOptions::default()).unwrap();
    // (the tag's bytes in the event files: one per session_start_info written)
    let rows = |run: &Path| -> usize {
        let tag = b"_hparams_/session_start_info";
        std::fs::read_dir(run.join("tb"))
            .unwrap()
            .map(|f| std::fs::read(f.unwrap().path()).unwrap())
            .map(|bytes| bytes.windows(tag.len()).filter(|w| w == tag).count())
            .sum()
    };
    let ckpt = latest_checkpoint(&cfg.run.dir).unwrap();
    let mut branch = cfg.clone();
    (branch.run.dir, branch.run.steps) = (tmp.path().join("branch"), 5);
    train(&branch, &TrainOptions { resume: Some(ckpt.clone()), ..Default::default() }).unwrap();
    assert_eq!(rows(&branch.run.dir), 1, "the branch has its row");
    let mut longer = cfg.clone();
    longer.run.steps = 5;
    train(&longer, &TrainOptions { resume: Some(ckpt), ..Default::default() }).unwrap();
    assert_eq!(rows(&cfg.run.dir), 1, "a resume of the folder's own adds none");
}

/// metrics.jsonl names the gradient norm's z-score as TensorBoard and the docs do.
#[test]
fn metrics_name_the_gradient_norm_z_score_as_tensorboard_does() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"));
    (cfg.run.steps, cfg.optim.spike_window) = (4, 2);
    train(&cfg, &TrainOptions::default()).unwrap();
    for v in json_lines(&cfg.run.dir.join("metrics.jsonl")) {
        let scored = v["step"].as_u64().unwrap() > 2;
        assert_eq!(v.get("grad_norm_z").is_some(), scored, "{v}");
        assert_eq!(v.get("loss_z").is_some(), scored, "{v}");
        assert!(v.get("grad_z").is_none(), "{v}");
    }
    assert_eq!(tensorboard_steps(&cfg.run.dir, "train/grad_norm_z").concat(), [3, 4]);
}

/// summary.json tells where the run stands at every moment: a session resumed after a preemption stops
/// saying "preempted" at once, a SIGKILL leaves the summary of the last complete checkpoint (and its
/// validation step), and its checkpoint path is absolute as config.toml's paths are, though `run.dir`
/// is relative. (A fresh start killed before its first checkpoint, started again, leaves TensorBoard
/// one start, not the killed session's too.)
#[test]
fn summary_json_says_where_the_run_stands() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let run = tmp.path().join("run");
    let mut cfg = config(&data, run.clone());
    cfg.val = ValSection { dir: Some(data.clone()), every: 3, max_rows: 16, seed: 0, ..Default::default() };
    let checkpoint = |step: u64| Value::from(run.join(format!("checkpoints/step-{step:08}")).to_str().unwrap());

    // a fresh start killed (SIGKILL) after step 1, before any checkpoint
    let out = infinity_train(tmp.path(), &cfg, &[], &[("INFINITY_FAULT_KILL", "0:1")]);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(9), "{out:?}");
    assert!(!run.join("summary.json").exists() && latest_checkpoint(&run).is_none());
    // started again (no checkpoint: afresh): one start in TensorBoard, not the killed session's too
    let out = infinity_train(tmp.path(), &cfg, &["--resume", "auto", "--set", "run.steps=1"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = infinity_trainer::tensorboard::event_files(&run.join("tb")).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::remove_dir_all(&run).unwrap();

    // preempted after step 1 (a signal before it ended)
    let stop = Some(Arc::new(AtomicBool::new(true)));
    train(&cfg, &TrainOptions { stop, ..Default::default() }).unwrap();
    let s = summary(&run);
    assert_eq!((&s["step"], &s["preempted"]), (&Value::from(1), &Value::Bool(true)), "{s}");

    // resumed from run.dir's parent with a relative run.dir, and killed (SIGKILL) after step 2, before
    // any checkpoint: not preempted now, at step 1's checkpoint
    cfg.run.dir = PathBuf::from("run");
    let killed = |after: &str, args: &[&str]| {
        let resume = [&["--resume", "auto"][..], args].concat();
        let out = infinity_train(tmp.path(), &cfg, &resume, &[("INFINITY_FAULT_KILL", after)]);
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(9), "{out:?}");
        summary(&run)
    };
    let s = killed("0:2", &[]);
    assert_eq!((&s["step"], &s["preempted"], &s["finished"]), (&Value::from(1), &false.into(), &false.into()), "{s}");
    assert_eq!(s["last_checkpoint"], checkpoint(1), "{s}");

    // killed after step 5: the summary of step 3's checkpoint, with that step's validation
    let s = killed("0:5", &["--set", "checkpoint.background=false"]);
    assert_eq!(
        (&s["step"], &s["last_checkpoint"], &s["val_step"]),
        (&Value::from(3), &checkpoint(3), &3.into()),
        "{s}"
    );
    assert!(s["val_loss"].as_f64().is_some_and(f64::is_finite), "{s}");
    let metrics = json_lines(&run.join("metrics.jsonl"));
    assert_eq!(s["loss"], metrics[2]["loss"], "step 3's loss");

    // to the end
    let out = infinity_train(tmp.path(), &cfg, &["--resume", "auto"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&run);
    assert_eq!((&s["step"], &s["finished"], &s["preempted"]), (&Value::from(6), &true.into(), &false.into()), "{s}");
    assert_eq!((&s["last_checkpoint"], &s["val_step"]), (&checkpoint(6), &6.into()), "{s}");
}

/// summary.json never names a checkpoint that is gone: with every step checkpointed in the background
/// and only the newest kept, the writer puts down each checkpoint's summary before pruning the one the
/// previous summary named (it was left to a later step's end, by which time pruning had removed it).
#[test]
fn summary_json_never_names_a_pruned_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let run = tmp.path().join("run");
    let mut cfg = config(&data, run.clone());
    (cfg.run.steps, cfg.run.log_every) = (40, 40);
    (cfg.checkpoint.every, cfg.checkpoint.keep_last, cfg.checkpoint.background) = (1, 1, true);
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (run, done) = (run.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut reads, mut named) = (0, std::collections::BTreeSet::new());
            let read = || std::fs::read_to_string(run.join("summary.json")).ok();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                // (leaves the training most of a core; a step of this model takes a few ms)
                std::thread::sleep(std::time::Duration::from_micros(500));
                // (a summary replaced between the two reads may name a checkpoint pruned since)
                let Some(before) = read() else { continue };
                let s: Value = serde_json::from_str(&before).unwrap();
                let Some(ckpt) = s["last_checkpoint"].as_str().map(PathBuf::from) else { continue };
                let there = ckpt.join("DONE").is_file();
                if read().as_deref() == Some(&before) {
                    assert!(there, "summary.json (step {}) names {}, which is not there", s["step"], ckpt.display());
                    reads += 1;
                    named.insert(s["step"].as_u64().unwrap());
                }
            }
            (reads, named.len())
        })
    };
    let result = train(&cfg, &TrainOptions::default());
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, steps) = watcher.join().unwrap();
    result.unwrap();
    assert!(reads > 0 && steps > 1, "{reads} reads of summary.json, naming {steps} steps");
    assert_eq!(summary(&run)["last_checkpoint"], Value::from(run.join("checkpoints/step-00000040").to_str().unwrap()));
}

/// A port nobody listens on now (for rank 0's store).
/// Both ranks of [`common::rank_process`] to their end: their exit codes and output (stdout then stderr).
fn both_ranks(
    dir: &Path,
    cfg: &Path,
    (bins, args): ([&Path; 2], [&[&str]; 2]),
    env: &[(&str, &str)],
) -> [(Option<i32>, String); 2] {
    let port = common::free_port();
    let ranks = [0, 1].map(|r| common::rank_process(bins[r], dir, cfg, (r, port), args[r], env));
    ranks.map(|c| {
        let out = c.wait_with_output().unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    })
}

/// Wait until `path` has more than `n` lines (a run's metrics.jsonl: training under way).
fn wait_for_lines(path: &Path, n: usize) {
    let t0 = Instant::now();
    while std::fs::read_to_string(path).map_or(0, |t| t.lines().count()) <= n {
        assert!(t0.elapsed() < Duration::from_secs(60), "{} stays at {n} lines", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A stop whose checkpoint is cut short (a slow disk, then SIGKILL as `infinity launch` sends after its
/// grace): summary.json says at once that the run was stopped, still at the last complete checkpoint;
/// rank 0 says "checkpoint saved" only once it is; the other rank, which does not wait for rank 0's
/// background write, names the newest checkpoint it sees complete and the step rank 0 was writing.
#[test]
fn a_stop_cut_short_mid_checkpoint_leaves_a_preempted_summary_and_no_false_claims() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let run = tmp.path().join("run");
    let mut cfg = config(&data, run.clone());
    (cfg.run.steps, cfg.data.micro_batch) = (100_000, MicroBatchSize::Samples(4));
    train(&cfg, &TrainOptions { stop_after: Some(3), ..Default::default() }).unwrap(); // step 3's checkpoint
    cfg.checkpoint.every = 1000;
    let file = common::config_file(&cfg, tmp.path());
    let (bin, port) = (Path::new(env!("CARGO_BIN_EXE_infinity")), common::free_port());
    let slow = [("INFINITY_FAULT_SLOW_SAVE", "30")];
    let [rank0, rank1] =
        [0, 1].map(|r| common::rank_process(bin, tmp.path(), &file, (r, port), &["--resume", "auto"], &slow));
    wait_for_lines(&run.join("metrics.jsonl"), 5);
    // SAFETY: signalling a child we spawned (rank 0 learns of it in the step's all-reduce).
    unsafe { libc::kill(rank1.id() as i32, libc::SIGTERM) };
    let out = rank1.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let step: u64 =
        text.split("stopped by a signal at step ").nth(1).and_then(|t| t.split(' ').next()).unwrap().parse().unwrap();
    let step3 = run.join("checkpoints/step-00000003");
    let want = format!(
        "rank 0 was writing the checkpoint of step {step} as this rank stopped (rank 0 says when it is complete; \
         the newest complete one this host saw before it: {})",
        step3.display()
    );
    assert!(text.contains(&want), "{text}");

    let t0 = Instant::now();
    while summary(&run)["preempted"] != true {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "summary.json does not say the run was stopped: {}",
            summary(&run)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut rank0 = rank0;
    rank0.kill().unwrap(); // mid-write: step 3 stays the last complete checkpoint
    let out = rank0.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("checkpoint saved"), "{text}");
    assert_eq!(latest_checkpoint(&run), Some(step3.clone()));
    let s = summary(&run);
    assert_eq!(
        (&s["step"], &s["last_checkpoint"], &s["finished"]),
        (&3.into(), &Value::from(step3.to_str().unwrap()), &false.into()),
        "{s}"
    );
}

/// `cmd` (its setup held by the `INFINITY_FAULT_SLOW_SETUP` drill) sent SIGTERM once `drills` processes
/// say they sleep there: how it exited, its stderr, and the time it took after the signal.
fn signalled_in_setup(mut cmd: Command, drills: usize) -> (std::process::ExitStatus, String, Duration) {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while said.matches("fault drill: setup sleeps").count() < drills {
        assert_ne!(std::io::BufRead::read_line(&mut stderr, &mut said).unwrap(), 0, "{said}");
    }
    let t = Instant::now();
    // SAFETY: signalling a child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    std::io::Read::read_to_string(&mut stderr, &mut said).unwrap();
    (status, said, t.elapsed())
}

/// A stop signal during setup (here a drill's sleep, as hashing a large dataset takes) ends the
/// process at once with 143: nothing trained, no checkpoint, no run files.
#[test]
fn a_signal_during_setup_stops_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(&data, tmp.path().join("run"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infinity"));
    cmd.arg("train").arg(common::config_file(&cfg, tmp.path())).env("INFINITY_FAULT_SLOW_SETUP", "120");
    let (status, said, took) = signalled_in_setup(cmd, 1);
    assert_eq!(status.code(), Some(143), "{said}");
    assert!(took < Duration::from_secs(60), "it slept on");
    assert!(said.contains("stopped by a signal during setup, before the first step: nothing trained"), "{said}");
    assert!(latest_checkpoint(&cfg.run.dir).is_none() && !cfg.run.dir.join("config.toml").exists());
}

/// The same in a group of two under `infinity launch`: both ranks stop together at the end of setup
/// (none goes on into a step whose collectives the other left), and the agent reports a clean stop.
/// The run folder they made goes again.
#[test]
fn a_group_signalled_during_setup_stops_together() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"));
    cfg.data.micro_batch = MicroBatchSize::Samples(4);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infinity"));
    cmd.args(["launch", "--nproc-per-node", "2", "--log-dir"]).arg(tmp.path().join("logs")).arg("--");
    cmd.arg("train").arg(common::config_file(&cfg, tmp.path())).env("INFINITY_FAULT_SLOW_SETUP", "5");
    let (status, said, _) = signalled_in_setup(cmd, 2);
    assert_eq!(status.code(), Some(0), "{said}");
    for rank in 0..2 {
        let line = format!("[rank {rank}] stopped by a signal during setup, before the first step: nothing trained");
        assert!(said.contains(&line), "{said}");
    }
    // (nor the run folder, which rank 0 made once the group had formed)
    assert!(!cfg.run.dir.exists(), "the stopped group left its run folder");
}

/// `infinity train` of a long run into `tmp/name` whose every step sleeps `step_s` seconds, once its setup
/// is over (the run folder has its config: a signal before it stops the run at once): its config and the
/// process, stderr piped.
fn slow_run_past_setup(tmp: &Path, data: &Path, name: &str, step_s: u64) -> (TrainConfig, std::process::Child) {
    let mut cfg = config(data, tmp.join(name));
    cfg.run.steps = 100_000;
    let child = Command::new(env!("CARGO_BIN_EXE_infinity"))
        .arg("train")
        .arg(common::config_file(&cfg, tmp))
        .env("INFINITY_FAULT_SLOW", format!("0:{step_s}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !cfg.run.dir.join("config.toml").exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "setup did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    (cfg, child)
}

/// A run folder removed while the run trains stops the run at its next step with exit 2 (no restart
/// mends it), naming the folder, and the folder is not made again: it went on into files no one could
/// read, and a sweep took the run, with a summary alone, for finished.
#[test]
fn a_run_folder_removed_while_training_stops_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let (cfg, mut child) = slow_run_past_setup(tmp.path(), &data, "run", 1);
    // (once its first step is logged: its setup has written all it writes)
    let metrics = cfg.run.dir.join("metrics.jsonl");
    let t = Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|m| m.ends_with('\n')) {
        assert!(t.elapsed() < Duration::from_secs(60), "no step logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir_all(&cfg.run.dir).unwrap();
    let mut said = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut said).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(2), "{said}");
    let want = format!(
        "run.dir {}: its lock file .lock is gone (the folder removed or moved, or the lock file deleted) while this \
         run trained: stopping",
        cfg.run.dir.display()
    );
    assert!(said.contains(&want), "{said}");
    assert!(!cfg.run.dir.exists(), "the run folder was made again");
}

/// A second SIGINT (Ctrl-C) while the run finishes its step for the first exits at once with 130,
/// without the stop checkpoint, saying so.
#[test]
fn a_second_sigint_exits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    // (each step sleeps 30 s: the second signal comes within the step the first one lets finish)
    let (cfg, mut child) = slow_run_past_setup(tmp.path(), &data, "run", 30);
    // SAFETY (both): signalling a child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    let t = Instant::now();
    while !said.contains("stop requested") {
        assert_ne!(std::io::BufRead::read_line(&mut stderr, &mut said).unwrap(), 0, "{said}");
    }
    // (a second press, not the first delivered twice: those come within 0.1 s)
    std::thread::sleep(Duration::from_millis(200));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    std::io::Read::read_to_string(&mut stderr, &mut said).unwrap();
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(t.elapsed() < Duration::from_secs(25), "it finished the step");
    assert!(said.contains("SIGINT again: exiting now, without the stop checkpoint"), "{said}");
    assert!(latest_checkpoint(&cfg.run.dir).is_none());
}

/// A SIGINT after a SIGTERM (a scheduler's stop, then one Ctrl-C) is no second Ctrl-C: the run still
/// finishes its step and checkpoints; nor is one Ctrl-C delivered twice at once.
#[test]
fn one_sigint_after_a_sigterm_or_twice_at_once_still_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    for (name, first) in [("term", libc::SIGTERM), ("int", libc::SIGINT)] {
        let (cfg, mut child) = slow_run_past_setup(tmp.path(), &data, name, 2);
        // SAFETY (both): signalling a child we spawned.
        unsafe { libc::kill(child.id() as i32, first) };
        if first == libc::SIGTERM {
            std::thread::sleep(Duration::from_millis(300));
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let mut said = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut said).unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(0), "{name}: {said}");
        assert!(latest_checkpoint(&cfg.run.dir).is_some() && !said.contains("SIGINT again"), "{name}: {said}");
    }
}

/// `--preempted-exit-code 143`: a run a signal stops before its last step exits 143 (a Kubernetes Job's
/// podFailurePolicy retries it), but a rank of `infinity launch` exits 0 (its agent reports the stop);
/// a code outside 0-255 is a usage error.
#[test]
fn preempted_exit_code_applies_outside_the_launcher() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let bin = env!("CARGO_BIN_EXE_infinity");
    let stopped = |name: &str, launch: bool| {
        let mut cfg = config(&data, tmp.path().join(name));
        cfg.run.steps = 100_000;
        let file = common::config_file(&cfg, tmp.path());
        let mut c = Command::new(bin);
        if launch {
            c.args(["launch", "--nproc-per-node", "1", "--log-dir"]).arg(tmp.path().join("logs")).arg("--");
        }
        c.arg("train").arg(&file).args(["--preempted-exit-code", "143"]).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = c.spawn().unwrap();
        wait_for_lines(&cfg.run.dir.join("metrics.jsonl"), 2);
        // SAFETY: signalling a child we spawned.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = child.wait_with_output().unwrap();
        assert_eq!(summary(&cfg.run.dir)["preempted"], true);
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (code, text) = stopped("alone", false);
    assert_eq!(code, Some(143), "{text}");
    assert!(text.contains("exit code 143 (--preempted-exit-code)"), "{text}");
    let (code, text) = stopped("launched", true);
    assert_eq!(code, Some(0), "{text}");
    // said as the run starts (where it can still be mended) and again as it stops
    let said = "--preempted-exit-code 143 of `infinity train` is ignored under infinity launch";
    assert_eq!(text.matches(said).count(), 2, "{text}");
    assert!(text.contains("give it to `infinity launch` (before `--`)"), "{text}");

    let out = Command::new(bin).args(["train", "x.toml", "--preempted-exit-code", "256"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));

    // --time-limit: the run stops on its own clock as for a signal, checkpointed, with the same code
    let mut cfg = config(&data, tmp.path().join("limited"));
    cfg.run.steps = 100_000;
    let file = common::config_file(&cfg, tmp.path());
    let args = ["--preempted-exit-code", "143", "--time-limit", "0:02"];
    let out = Command::new(bin).arg("train").arg(&file).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(143), "{text}");
    assert!(text.contains("--time-limit of 2 s reached: the run stops after this step"), "{text}");
    assert!(text.contains("stopped by --time-limit at step"), "{text}");
    assert!(!text.contains("stop requested"), "the limit's own line says it: {text}");
    let s = summary(&cfg.run.dir);
    assert!(s["preempted"] == true && s["last_checkpoint"].is_string(), "{s}");
    // a rank of infinity launch refuses one of its own (the agent's clock stops every rank)
    let mut c = Command::new(bin);
    c.args(["launch", "--nproc-per-node", "1", "--log-dir"]).arg(tmp.path().join("logs")).arg("--");
    let out = c.arg("train").arg(&file).args(["--time-limit", "5"]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("give it to `infinity launch` (before `--`)"), "{text}");
}

/// Config for the two-rank runs below: 2 steps, a micro-batch of 4 per rank.
fn two_rank_config(tmp: &Path, name: &str, steps: u64) -> PathBuf {
    let data = tmp.join("data");
    if !data.exists() {
        dataset(&data);
    }
    let mut cfg = config(&data, tmp.join(name));
    (cfg.run.steps, cfg.run.log_every, cfg.data.micro_batch) = (steps, 1, MicroBatchSize::Samples(4));
    (cfg.dist.timeout_s, cfg.dist.rdzv_timeout_s) = (60.0, 60.0);
    common::config_file(&cfg, tmp)
}

/// A rank running another executable (here the same one with a byte appended) trains on, and rank 0
/// warns naming it, its host and both builds.
#[test]
fn a_rank_running_another_build_is_named_by_rank_0() {
    let tmp = tempfile::tempdir().unwrap();
    let file = two_rank_config(tmp.path(), "run", 2);
    let bin = Path::new(env!("CARGO_BIN_EXE_infinity"));
    let other = tmp.path().join("infinity-other");
    std::fs::copy(bin, &other).unwrap();
    std::fs::OpenOptions::new().append(true).open(&other).unwrap().write_all(b"\0").unwrap();
    let [(c0, r0), (c1, r1)] = both_ranks(tmp.path(), &file, ([bin, &other], [&[], &[]]), &[]);
    assert_eq!((c0, c1), (Some(0), Some(0)), "{r0}\n{r1}");
    let me = infinity_trainer::train::rank_identity::this_rank();
    let (version, host) = (&me.build.version, &me.host);
    let want = format!("ranks run different builds: rank 0 ({host}) runs infinity {version} (executable crc32c ");
    assert!(
        r0.contains(&want) && r0.contains(&format!("; rank 1 ({host}) runs infinity {version} (executable crc32c ")),
        "{r0}"
    );
    assert!(!r1.contains("different builds"), "{r1}");
}

/// Rank 0's error for a config that differs on another rank names that rank and its host.
#[test]
fn rank_0_names_the_rank_whose_config_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let file = two_rank_config(tmp.path(), "run", 2);
    let bin = Path::new(env!("CARGO_BIN_EXE_infinity"));
    let [(c0, r0), (c1, r1)] = both_ranks(tmp.path(), &file, ([bin, bin], [&[], &["--set", "optim.lr=1e-3"]]), &[]);
    assert_eq!((c0, c1), (Some(2), Some(2)), "{r0}\n{r1}");
    let host = &infinity_trainer::train::rank_identity::this_rank().host;
    let want = format!(
        "rank 1 ({host}): config differs from rank 0's: rank 1's: optim.lr: 0.003 → 0.001 (rank 0's → rank 1's)"
    );
    assert!(r0.contains(&want), "{r0}");
    assert!(r1.contains("rank 1's config differs from rank 0's: optim.lr: 0.003 → 0.001"), "{r1}");
}

/// A rank slow at every step is warned of once (naming its host), not at every logged step (the rate
/// limit itself: rank_times.rs's unit tests).
#[test]
fn a_straggler_is_warned_of_once_naming_its_host() {
    let tmp = tempfile::tempdir().unwrap();
    let file = two_rank_config(tmp.path(), "run", 4);
    let bin = Path::new(env!("CARGO_BIN_EXE_infinity"));
    // (1.5 s: far above what a loaded 2-core machine adds to either rank's own work)
    let slow = [("INFINITY_FAULT_SLOW", "1:1.5")];
    let [(c0, r0), (c1, r1)] = both_ranks(tmp.path(), &file, ([bin, bin], [&[], &[]]), &slow);
    assert_eq!((c0, c1), (Some(0), Some(0)), "{r0}\n{r1}");
    let host = &infinity_trainer::train::rank_identity::this_rank().host;
    // (once; a second time only if its lead doubled, which a noisy first step can make it seem to)
    let warnings = r0.matches("straggler at step").count();
    assert!((1..=2).contains(&warnings), "{warnings} warnings over 4 logged steps:\n{r0}");
    assert!(
        r0.contains("straggler at step 1: rank 1's own work took ")
            && r0.contains(&format!(" s on {host}, the other rank's")),
        "{r0}"
    );
}
