//! Recovery from what goes wrong in long runs: `train --check` finds the run folder's refusals (a folder
//! it cannot write, one another job trains), a failed checkpoint write frees its space, a damaged newest
//! checkpoint names the way on, a damaged `model.json` is refused on resume, `--resume auto` says
//! when it starts fresh, a resume says its run's lost metrics log, and `--accept-data-change` resumes on a mended dataset.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use infinity_trainer::train::check::{check, check_with};
use infinity_trainer::train::config::TrainConfig;
use infinity_trainer::train::run_lock::RunLock;
use infinity_trainer::train::{latest_checkpoint, train, TrainOptions, Unrecoverable};

fn dataset(dir: &Path) {
    common::tiny_dataset(dir, 64);
}

/// A tiny class model, 6 steps with checkpoints at 3 and 6, no sample grids.
fn config(data: &Path, run: PathBuf) -> TrainConfig {
    let mut c = common::tiny_config(data, run);
    c.run.log_every = 1;
    c
}

fn infinity(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infinity")).args(args).output().unwrap()
}

/// The text of an error, and whether the run would exit with 2 for it (found before the first step).
fn refusal(e: anyhow::Error) -> (String, bool) {
    (format!("{e:#}"), e.chain().any(|c| c.downcast_ref::<Unrecoverable>().is_some()))
}

#[test]
fn check_names_a_run_folder_that_cannot_be_created_or_is_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);

    // a folder that cannot be made (a file where its parent should be)
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let cfg = config(&data, blocker.join("run"));
    let (e, exit_2) = refusal(check(&cfg, 1, None, None).expect_err("an uncreatable run.dir passed the check"));
    assert!(e.contains("cannot be created (not writable?)") && e.contains("is not a folder"), "{e}");
    assert!(exit_2, "{e}");

    // a folder still to be made: the check passes and makes nothing
    let cfg = config(&data, tmp.path().join("run"));
    let lines = check(&cfg, 1, None, None).unwrap();
    assert!(lines.iter().any(|l| l.contains("to be created in")), "{lines:?}");
    assert!(!cfg.run.dir.exists(), "the check created the run folder");

    // a folder another job trains: refused as the run would be, the lock left to its holder
    std::fs::create_dir_all(&cfg.run.dir).unwrap();
    let held = RunLock::acquire(&cfg.run.dir).unwrap();
    let (e, exit_2) = refusal(check(&cfg, 1, None, None).expect_err("a locked run.dir passed the check"));
    assert!(e.contains("is in use by another training job (pid ") && e.contains(" UTC ("), "{e}");
    assert!(exit_2, "{e}");
    assert!(infinity_trainer::train::run_lock::in_use(&cfg.run.dir), "the check took the lock");
    drop(held);
    let lines = check(&cfg, 1, None, None).unwrap();
    assert!(lines.iter().any(|l| l.contains("writable, no training job holds it")), "{lines:?}");
}

/// `infinity train CONFIG --resume auto` started while `held` holds its run's lock, well past the 1 s
/// a fresh start waits; then `meanwhile` (what the lost attempt still does), the lock let go, and the
/// job's output once it ends.
fn requeued_while_held(config: &Path, held: RunLock, meanwhile: impl FnOnce()) -> Output {
    let requeued = Command::new(env!("CARGO_BIN_EXE_infinity"))
        .args(["train", config.to_str().unwrap(), "--resume", "auto"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    meanwhile();
    drop(held);
    requeued.wait_with_output().unwrap()
}

/// A job requeued before its run's first checkpoint (`--resume auto` finds none, so it starts fresh)
/// meets the lost attempt's lock as any resume does: it waits for it to let go (the lost job may be
/// writing its stop's checkpoint), then trains; without `--resume` the lock is another job's: refused.
#[test]
fn a_requeued_job_before_the_first_checkpoint_waits_for_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(&data, tmp.path().join("run"));
    let file = common::config_file(&cfg, tmp.path());
    std::fs::create_dir_all(&cfg.run.dir).unwrap();
    let held = RunLock::acquire(&cfg.run.dir).unwrap();
    let out = infinity(&["train", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("in use by another training job") && stderr.contains("before training here"), "{stderr}");
    // (a folder whose run is training now: the job that holds it is said first, `--resume auto` after)
    std::fs::write(cfg.run.dir.join("metrics.jsonl"), "").unwrap();
    let out = infinity(&["train", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("in use by another training job (pid "), "{stderr}");
    assert!(
        stderr.contains("before training here; and run.dir ") && stderr.contains("already holds a run"),
        "{stderr}"
    );
    std::fs::remove_file(cfg.run.dir.join("metrics.jsonl")).unwrap();

    let out = requeued_while_held(&file, held, || {});
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("waiting up to 120 s for it to let go"), "{stderr}");
    assert!(latest_checkpoint(&cfg.run.dir).is_some_and(|c| c.ends_with("step-00000006")), "{stderr}");

    // the checkpoint the lost attempt writes while the requeued job waits is the one it resumes from
    let lost = config(&data, tmp.path().join("lost"));
    let file = common::config_file(&lost, tmp.path());
    train(&lost, &TrainOptions { stop_after: Some(4), ..Default::default() }).unwrap();
    let (step3, aside) = (lost.run.dir.join("checkpoints/step-00000003"), tmp.path().join("being-written"));
    std::fs::rename(&step3, &aside).unwrap();
    let held = RunLock::acquire(&lost.run.dir).unwrap();
    let out = requeued_while_held(&file, held, || std::fs::rename(&aside, &step3).unwrap());
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("resumed from") && said.contains("step-00000003 at step 3"), "{said}");
    assert!(!said.contains("starting fresh"), "{said}");
}

/// A read-only file system (a bind mount in a mount namespace of its own: `unshare -rm`; skipped where
/// this machine allows none): `--check` fails as the run does, with exit 2, for a run folder to be
/// made there and for one already there, and the run names the folder as not writable.
#[test]
fn a_read_only_run_folder_fails_check_and_run_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let ro = tmp.path().join("ro");
    std::fs::create_dir_all(ro.join("existing")).unwrap();
    // mounts `ro` read-only for this command alone
    let read_only = |program: &str, args: &[&str]| -> std::io::Result<Output> {
        let script = "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && shift && exec \"$@\"";
        Command::new("unshare")
            .args(["-rm", "sh", "-c", script, "sh", ro.to_str().unwrap(), program])
            .args(args)
            .output()
    };
    if !read_only("true", &[]).is_ok_and(|o| o.status.success()) {
        println!("skipped: no read-only mount in a namespace of its own here (unshare -rm)");
        return;
    }
    let read_only = |args: &[&str]| read_only(env!("CARGO_BIN_EXE_infinity"), args).unwrap();
    for (name, want) in [("new", "cannot be created (not writable?)"), ("existing", "is not writable")] {
        let cfg = config(&data, ro.join(name));
        let file = common::config_file(&cfg, tmp.path());
        let out = read_only(&["train", file.to_str().unwrap(), "--check", "--resume", "auto"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want) && stderr.contains("Read-only file system"), "{name}: {stderr}");
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
    }
    for (name, want) in
        [("new", "new cannot be created (not writable?)"), ("existing", "existing is not writable: opening")]
    {
        let file = common::config_file(&config(&data, ro.join(name)), tmp.path());
        let out = read_only(&["train", file.to_str().unwrap(), "--resume", "auto"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{name}: {stderr}");
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
    }
}

/// A full disk, simulated with a file-size limit (`ulimit -f`, SIGXFSZ ignored so writes fail with
/// EFBIG): the failed checkpoint's partial folder is removed, and the error still names the file.
#[test]
fn a_checkpoint_that_fails_to_write_leaves_no_partial_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(&data, tmp.path().join("run"));
    let file = common::config_file(&cfg, tmp.path());
    // 64 KiB per file: logs fit, a model checkpoint (≈ 150 KB f32) does not
    let out = Command::new("bash")
        .args(["-c", "trap '' XFSZ; ulimit -f 64; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_infinity"))
        .args(["train", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "training must fail when the disk is full");
    assert!(stderr.contains("model.safetensors") || stderr.contains("optim.safetensors"), "{stderr}");
    let left: Vec<String> = std::fs::read_dir(cfg.run.dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "a failed checkpoint write left {left:?}");
}

/// Failed checkpoint writes (the `INFINITY_FAULT_SAVE` drill): within `checkpoint.failed_writes_tolerated`
/// in a row training goes on, warned and counted in `summary.json`, in the background and in the step
/// loop alike; one more stops the run, and so does a failed last checkpoint.
#[test]
fn failed_checkpoint_writes_are_tolerated_up_to_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let run = |name: &str, fail: &str, sets: &[&str]| {
        let mut cfg = config(&data, tmp.path().join(name));
        cfg.checkpoint.every = 2;
        let file = common::config_file(&cfg, tmp.path());
        let mut args = vec!["train", file.to_str().unwrap()];
        sets.iter().for_each(|s| args.extend(["--set", s]));
        let out = Command::new(env!("CARGO_BIN_EXE_infinity")).args(&args).env("INFINITY_FAULT_SAVE", fail).output();
        let out = out.unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let steps: Vec<u64> = infinity_trainer::train::checkpoint::complete(&cfg.run.dir).iter().map(|c| c.0).collect();
        (out.status.success(), text, steps, cfg.run.dir)
    };
    for background in ["true", "false"] {
        let set = format!("checkpoint.background={background}");
        let (ok, text, steps, dir) = run(&format!("one-{background}"), "2", &[&set]);
        assert!(ok, "{text}");
        assert!(
            text.contains("failed by the INFINITY_FAULT_SAVE drill")
                && text.contains("training goes on (1 failed in a row"),
            "{text}"
        );
        assert_eq!(steps, [4, 6], "{background}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["checkpoint_failed_writes"], 1, "{summary}");
        assert!(summary["last_checkpoint"].as_str().unwrap().ends_with("step-00000006"), "{summary}");
    }
    for background in ["true", "false"] {
        let set = format!("checkpoint.background={background}");
        // one more in a row than tolerated stops the run at its step (at the limit, step 4's is
        // written in the step loop), naming the setting
        let sets = [set.as_str(), "checkpoint.failed_writes_tolerated=1"];
        let (ok, text, steps, dir) = run(&format!("two-{background}"), "2,4", &sets);
        assert!(!ok && steps.is_empty(), "{steps:?} {text}");
        let want = "2 checkpoint writes failed in a row, more than checkpoint.failed_writes_tolerated = 1";
        assert!(text.contains(want), "{text}");
        let logged = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        assert_eq!(logged.lines().count(), 4, "stopped at step 4");
        // a success in between starts the count again
        let sets = [set.as_str(), "checkpoint.failed_writes_tolerated=1", "run.steps=8"];
        let (ok, text, steps, _) = run(&format!("apart-{background}"), "2,6", &sets);
        assert!(ok && steps == [4, 8], "{steps:?} {text}");
        // the last checkpoint is never let fail, whatever is tolerated
        let sets = [set.as_str(), "checkpoint.failed_writes_tolerated=5"];
        let (ok, text, steps, dir) = run(&format!("last-{background}"), "6", &sets);
        assert!(!ok && steps == [2, 4], "{steps:?} {text}");
        assert!(text.contains("writing the checkpoint of step 6") && !text.contains("training goes on"), "{text}");
        // (naming the checkpoint a resume goes back to, and counted in summary.json, at that checkpoint)
        let want = "the session's last checkpoint was not written: the steps after the last complete checkpoint (";
        assert!(text.contains(want) && text.contains("step-00000004) are not kept"), "{text}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
        assert_eq!((&summary["checkpoint_failed_writes"], &summary["step"]), (&1.into(), &4.into()), "{summary}");
    }
    // none tolerated: a background write's failure stops the run at the next checkpoint, which is
    // tried first
    let (ok, text, steps, dir) = run("none", "2", &["checkpoint.failed_writes_tolerated=0"]);
    assert!(!ok && steps == [4], "{steps:?} {text}");
    let want = "1 checkpoint write failed in a row, more than checkpoint.failed_writes_tolerated = 0 (the last \
                complete checkpoint: ";
    assert!(text.contains(want) && text.contains("step-00000004)"), "{text}");
    // summary.json, at that checkpoint, counts the failure that stopped the run
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!((&summary["checkpoint_failed_writes"], &summary["step"]), (&1.into(), &4.into()), "{summary}");
}

/// A requeued rewind whose step `checkpoint.keep_last` has pruned since: the same command line continues
/// the history that rewind began (a missing step folder would otherwise fail the job for good, exit 2).
#[test]
fn a_requeued_rewind_to_a_pruned_step_continues_its_history() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"));
    cfg.checkpoint.every = 2;
    train(&cfg, &TrainOptions::default()).unwrap();
    let file = common::config_file(&cfg, tmp.path());
    let step2 = cfg.run.dir.join("checkpoints/step-00000002");
    let args = ["train", file.to_str().unwrap(), "--resume", step2.to_str().unwrap()];
    let rewind = [&args[..], &["--set", "run.steps=8", "--set", "checkpoint.keep_last=1"]].concat();
    let out = infinity(&rewind);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!step2.exists(), "pruned by keep_last = 1");
    let out = infinity(&rewind);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("continuing from step 8 rather than computing the same steps again"), "{stderr}");
    let abandoned: Vec<_> = std::fs::read_dir(cfg.run.dir.join("abandoned")).unwrap().collect();
    assert_eq!(abandoned.len(), 1, "rewound once");
}

/// A rewind's session killed before its first checkpoint (it had set the later history aside) leaves no
/// mark of the rewind in a checkpoint; the requeue of the same command line resumes the step as asked
/// and records it, so the next requeue continues that history instead of rewinding once more.
#[test]
fn a_rewind_killed_before_its_first_checkpoint_is_continued_by_its_requeues() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(&data, tmp.path().join("run"));
    train(&cfg, &TrainOptions::default()).unwrap(); // checkpoints at 3 and 6
    let file = common::config_file(&cfg, tmp.path());
    let step3 = cfg.run.dir.join("checkpoints/step-00000003");
    let args = ["train", file.to_str().unwrap(), "--resume", step3.to_str().unwrap(), "--set", "run.steps=9"];
    let requeue = |kill_after: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_infinity"));
        cmd.args(args);
        if let Some(step) = kill_after {
            cmd.env("INFINITY_FAULT_KILL", format!("0:{step}"));
        }
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // the rewind sets step 6 aside and is killed after step 4; its requeue, after step 7 (step 6 written)
    assert!(!requeue(Some("4")).0);
    assert!(!requeue(Some("7")).0);
    assert!(cfg.run.dir.join("checkpoints/step-00000006").is_dir());
    let (ok, stderr) = requeue(None);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("continuing from step 6 rather than computing the same steps again"), "{stderr}");
    let abandoned: Vec<_> = std::fs::read_dir(cfg.run.dir.join("abandoned")).unwrap().collect();
    assert_eq!(abandoned.len(), 1, "rewound once");
}

/// `run.stall_timeout_s`: a step whose data read hangs (the `INFINITY_FAULT_STALL` drill) ends the
/// process with exit code 75 within the limit, naming the rank, the phase and the step; a run that
/// makes progress is left alone.
#[test]
fn a_stalled_loop_is_ended_by_the_watchdog() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let run = |name: &str, stall: Option<&str>| {
        let file = common::config_file(&config(&data, tmp.path().join(name)), tmp.path());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_infinity"));
        cmd.args(["train", file.to_str().unwrap(), "--set", "run.stall_timeout_s=10"]);
        if let Some(spec) = stall {
            cmd.env("INFINITY_FAULT_STALL", spec);
        }
        let t0 = std::time::Instant::now();
        let out = cmd.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text, t0.elapsed().as_secs_f64())
    };
    let (code, text, secs) = run("stalled", Some("0:3:120"));
    assert_eq!(code, Some(infinity_trainer::train::watchdog::EXIT_STALLED), "{text}");
    assert!(
        text.contains("rank 0 made no progress for ")
            && text.contains("(run.stall_timeout_s = 10) in reading the batch of step 3"),
        "{text}"
    );
    assert!(secs < 60.0, "ended after {secs} s, not within the limit");
    let logged = std::fs::read_to_string(tmp.path().join("stalled/metrics.jsonl")).unwrap();
    assert_eq!(logged.lines().count(), 2, "steps 1 and 2 were trained before the stall");
    let (code, text, _) = run("steady", None);
    assert_eq!(code, Some(0), "{text}");
}

/// A corrupt newest checkpoint stops `--resume auto` (and the check) with the previous complete one as
/// the way on; no silent fallback.
#[test]
fn a_corrupt_newest_checkpoint_names_the_previous_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(&data, tmp.path().join("run"));
    train(&cfg, &TrainOptions::default()).unwrap(); // checkpoints at steps 3 and 6
    let newest = latest_checkpoint(&cfg.run.dir).unwrap();
    let model = newest.join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    std::fs::write(&model, &bytes).unwrap();

    let step3 = cfg.run.dir.join("checkpoints/step-00000003");
    let way_on = format!(
        "resume from the previous checkpoint with --resume {}; this one is then moved to {}/",
        step3.display(),
        cfg.run.dir.join("abandoned").display()
    );
    let opts = TrainOptions { resume: Some(newest.clone()), ..Default::default() };
    let (e, exit_2) = refusal(train(&cfg, &opts).expect_err("a corrupt checkpoint was resumed"));
    assert!(e.contains("(corrupt checkpoint); ") && e.contains(&way_on), "{e}");
    assert!(exit_2, "{e}");
    let (e, _) = refusal(check(&cfg, 1, Some(&newest), None).expect_err("the check passed a corrupt checkpoint"));
    assert!(e.contains(&way_on), "{e}");

    // the way on works: step 6 goes to abandoned/
    let s = train(&cfg, &TrainOptions { resume: Some(step3), ..Default::default() }).unwrap();
    assert_eq!(s.steps, 6);
    assert!(cfg.run.dir.join("abandoned/after-step-00000003/step-00000006/model.safetensors").is_file());
}

/// `model.json` (which sample and export read) is read on resume: empty, describing another model, or
/// changed in a setting that shapes no tensor (found by the checksum state.json records), it is refused,
/// naming the file (and a run folder the resume made is removed again); sample refuses it too.
#[test]
fn a_damaged_model_json_is_refused_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(&data, tmp.path().join("run"));
    train(&cfg, &TrainOptions { stop_after: Some(3), ..Default::default() }).unwrap();
    let ckpt = latest_checkpoint(&cfg.run.dir).unwrap();
    let model_json = ckpt.join("model.json");
    let good = std::fs::read_to_string(&model_json).unwrap();
    let deeper = good.replace("\"depth\": 2", "\"depth\": 3");
    assert_ne!(deeper, good, "{good}");
    // (a setting that shapes no tensor, which sample, eval and export would build the model with: found
    // by the checksum state.json records)
    let eps = good.replace("\"norm_eps\": 1e-6", "\"norm_eps\": 0.5");
    assert_ne!(eps, good, "{good}");
    let changed = "model.json: crc32c ";
    let cases =
        [("", "EOF while parsing"), (eps.as_str(), changed), (deeper.as_str(), "depth 3 (the model trained: 2)")];
    for (damage, want) in cases {
        std::fs::write(&model_json, damage).unwrap();
        let opts = TrainOptions { resume: Some(ckpt.clone()), ..Default::default() };
        let (e, exit_2) = refusal(train(&cfg, &opts).expect_err("a damaged model.json was resumed"));
        assert!(e.contains(&model_json.display().to_string()) && e.contains(want), "{e}");
        assert!(exit_2, "{e}");
        let (e, _) = refusal(check(&cfg, 1, Some(&ckpt), None).expect_err("the check passed a damaged model.json"));
        assert!(e.contains("model.json") && e.contains(want), "{e}");
    }
    // resumed into a run folder of its own, the refusal leaves no folder it made (an empty one it did
    // not make stays)
    let (mut new, mut empty) = (cfg.clone(), cfg.clone());
    new.run.dir = tmp.path().join("new/deeper/run");
    empty.run.dir = tmp.path().join("empty");
    std::fs::create_dir(&empty.run.dir).unwrap();
    for c in [&new, &empty] {
        let opts = TrainOptions { resume: Some(ckpt.clone()), ..Default::default() };
        let (e, _) = refusal(train(c, &opts).expect_err("a damaged model.json was resumed"));
        assert!(e.contains("depth 3 (the model trained: 2)"), "{e}");
    }
    assert!(!tmp.path().join("new").exists() && empty.run.dir.is_dir());
    // sample (and eval, export: the same reader) refuse the changed one, and text after the object
    std::fs::write(&model_json, &eps).unwrap();
    let png = tmp.path().join("s.png");
    let out = infinity(&["sample", ckpt.to_str().unwrap(), "-o", png.to_str().unwrap(), "--n", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(changed) && stderr.contains("expects"), "{stderr}");
    std::fs::write(&model_json, format!("{good}junk\n")).unwrap();
    let out = infinity(&["sample", ckpt.to_str().unwrap(), "-o", png.to_str().unwrap(), "--n", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("after the model's object"), "{stderr}");
    assert!(!png.exists());
    std::fs::write(&model_json, good).unwrap();
    assert_eq!(train(&cfg, &TrainOptions { resume: Some(ckpt), ..Default::default() }).unwrap().steps, 6);
}

/// Values no run writes, in a checkpoint whose checksums a hand made to match: moments that are not
/// finite (`adamw.v` negative), which the first update would spread into every weight, are refused by
/// name, and so are counts that cannot be a run's; counts past any run's saturate rather than panic.
#[test]
fn impossible_moments_and_counts_are_refused_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(&data, tmp.path().join("run"));
    train(&cfg, &TrainOptions { stop_after: Some(4), ..Default::default() }).unwrap();
    let ckpt = cfg.run.dir.join("checkpoints/step-00000003");
    let (state, optim) =
        (std::fs::read(ckpt.join("state.json")).unwrap(), std::fs::read(ckpt.join("optim.safetensors")).unwrap());
    let resume =
        || train(&cfg, &TrainOptions { resume: Some(ckpt.clone()), stop_after: Some(4), ..Default::default() });
    let restore = || {
        std::fs::write(ckpt.join("state.json"), &state).unwrap();
        std::fs::write(ckpt.join("optim.safetensors"), &optim).unwrap();
        common::reseal_state(&ckpt, |_| {});
    };
    // (the first value of a moment tensor set to `x`, the file's checksum recorded anew)
    let moment = |name: &str, x: f32| {
        let header_len = u64::from_le_bytes(optim[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&optim[8..8 + header_len]).unwrap();
        let at = 8 + header_len + header[name]["data_offsets"][0].as_u64().unwrap() as usize;
        let mut bytes = optim.clone();
        bytes[at..at + 4].copy_from_slice(&x.to_le_bytes());
        std::fs::write(ckpt.join("optim.safetensors"), &bytes).unwrap();
        let crc = format!("{:08x}", crc32c::crc32c(&bytes));
        common::reseal_state(&ckpt, |s| s["optim_crc32c"] = crc.into());
    };
    for (name, x, want) in
        [("adamw.m", f32::NAN, "expected finite moments"), ("adamw.v", -1.0, "finite and not negative")]
    {
        moment(name, x);
        let e = format!("{:#}", resume().expect_err("impossible moments were resumed"));
        assert!(e.contains(&format!("optim.safetensors: `{name}` holds")) && e.contains(want), "{e}");
        assert!(e.contains("at value 0 (of `"), "{e}");
        restore();
    }
    for (key, value, want) in [
        ("flops", serde_json::json!(-1.0), "`seen.flops` is -1: expected a finite count of at least 0"),
        ("samples", serde_json::json!(u64::MAX), "expected at least as many tokens as samples (corrupt checkpoint)"),
    ] {
        common::reseal_state(&ckpt, |s| s["seen"][key] = value);
        let e = format!("{:#}", resume().expect_err("impossible counts were resumed"));
        assert!(e.contains("state.json: ") && e.contains(want), "{e}");
        restore();
    }
    common::reseal_state(&ckpt, |s| {
        (s["seen"]["tokens"], s["seen"]["samples"]) = (u64::MAX.into(), (u64::MAX - 1).into())
    });
    resume().unwrap();
    let last: serde_json::Value = {
        let text = std::fs::read_to_string(cfg.run.dir.join("metrics.jsonl")).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    };
    assert_eq!((&last["tokens_seen"], &last["samples_seen"]), (&u64::MAX.into(), &u64::MAX.into()), "{last}");
}

/// `--resume auto` in a run folder with logs but no complete checkpoint starts fresh, and says so.
#[test]
fn resume_auto_without_a_complete_checkpoint_says_it_starts_fresh() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"));
    train(&cfg, &TrainOptions { stop_after: Some(2), ..Default::default() }).unwrap();
    assert!(cfg.run.dir.join("metrics.jsonl").is_file() && latest_checkpoint(&cfg.run.dir).is_none());
    let note = format!("no complete checkpoint in {}: starting fresh", cfg.run.dir.display());
    let lines = check(&cfg, 1, None, None).unwrap();
    assert!(lines.contains(&note), "{lines:?}");

    cfg.run.steps = 1;
    let file = common::config_file(&cfg, tmp.path());
    let out = infinity(&["train", file.to_str().unwrap(), "--resume", "auto"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches(&note).count(), 1, "{stdout}");
}

/// A resume whose run folder lost its metrics.jsonl (deleted by hand, a cleanup script) says the log of
/// the steps before it is gone; a branch into a new folder, whose log is the source run's, says nothing.
#[test]
fn a_resume_says_its_metrics_log_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"));
    train(&cfg, &TrainOptions { stop_after: Some(4), ..Default::default() }).unwrap();
    std::fs::remove_file(cfg.run.dir.join("metrics.jsonl")).unwrap();
    cfg.run.steps = 5;
    let file = common::config_file(&cfg, tmp.path());
    let out = infinity(&["train", file.to_str().unwrap(), "--resume", "auto"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let gone = "metrics.jsonl is missing, though this run folder trained to step 3: the log of those steps is gone";
    assert!(stderr.contains(gone), "{stderr}");

    let step3 = cfg.run.dir.join("checkpoints/step-00000003");
    cfg.run.dir = tmp.path().join("branch");
    let file = common::config_file(&cfg, tmp.path());
    let out = infinity(&["train", file.to_str().unwrap(), "--resume", step3.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("is missing"), "{stderr}");
}

/// A dataset changed since the checkpoint (here its shard renamed, as a mended shard's checksum would
/// change it: the same rows) is refused on resume; `--accept-data-change` resumes from the saved
/// position, and with every bucket's rows as before the run ends where an uninterrupted one does, bit
/// for bit.
#[test]
fn accept_data_change_resumes_on_a_mended_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let whole = config(&data, tmp.path().join("whole"));
    train(&whole, &TrainOptions::default()).unwrap();
    let cfg = config(&data, tmp.path().join("split"));
    train(&cfg, &TrainOptions { stop_after: Some(3), ..Default::default() }).unwrap();
    // the mend: the shard under another name, the manifest saying so
    let manifest_path = data.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::rename(data.join("shard-00000.arrow"), data.join("shard-00000-mended.arrow")).unwrap();
    std::fs::write(&manifest_path, text.replace("shard-00000.arrow", "shard-00000-mended.arrow")).unwrap();

    let step3 = latest_checkpoint(&cfg.run.dir).unwrap();
    let (e, unrecoverable) =
        refusal(train(&cfg, &TrainOptions { resume: Some(step3.clone()), ..Default::default() }).unwrap_err());
    assert!(e.contains("the dataset is not the one the saved position was read from") && unrecoverable, "{e}");
    let lines = check_with(&cfg, 1, Some(&step3), None, true).unwrap();
    assert!(
        lines.iter().any(|l| l.starts_with("resume: --accept-data-change: ")
            && l.contains("3 batches drawn")
            && l.contains("every bucket holds the same rows as before")),
        "{lines:?}"
    );
    let opts = TrainOptions { resume: Some(step3.clone()), accept_data_change: true, ..Default::default() };
    assert_eq!(train(&cfg, &opts).unwrap().steps, 6);
    let weights = |run: &Path| std::fs::read(latest_checkpoint(run).unwrap().join("model.safetensors")).unwrap();
    assert!(weights(&cfg.run.dir) == weights(&whole.run.dir), "the same rows in the same order trained other weights");
    // the checkpoints after it carry the mended dataset: a plain resume continues
    let mut longer = cfg.clone();
    longer.run.steps = 8;
    let again = TrainOptions { resume: latest_checkpoint(&cfg.run.dir), ..Default::default() };
    assert_eq!(train(&longer, &again).unwrap().steps, 8);

    // rows added (with the dataset's own tokenizer): the saved position knows its buckets held others,
    // so the order is a new one
    let tokenizer = tmp.path().join("tokenizer.safetensors");
    std::fs::copy(data.join("tokenizer.safetensors"), &tokenizer).unwrap();
    let more = |tokenizer: Option<PathBuf>| infinity_data::synth::SynthOptions {
        rows: 80,
        fit_rows: 40,
        tokenizer,
        writer: infinity_data::writer::WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    };
    infinity_data::synth::synth(&data, &more(Some(tokenizer))).unwrap();
    let lines = check_with(&cfg, 1, Some(&step3), None, true).unwrap();
    let moved = lines.iter().find(|l| l.starts_with("resume: --accept-data-change: ")).expect("a warning");
    assert!(moved.contains("64 → 80") && moved.contains("the rows in its buckets changed"), "{moved}");
    // bits of another tokenizer (fitted anew) mean other images: refused, --accept-data-change or not
    infinity_data::synth::synth(&data, &more(None)).unwrap();
    let e = format!("{:#}", check_with(&cfg, 1, Some(&step3), None, true).unwrap_err());
    assert!(e.contains("its bits are of another tokenizer than the checkpoint's data"), "{e}");
    // (without the flag too: named first, rather than the changed dataset that the flag would take)
    let e = format!("{:#}", check_with(&cfg, 1, Some(&step3), None, false).unwrap_err());
    assert!(e.contains("its bits are of another tokenizer") && !e.contains("goes on from the saved position"), "{e}");
    // (its tokenizer file gone, which training does not need: told apart by the checksum its manifest
    // records)
    std::fs::remove_file(data.join("tokenizer.safetensors")).unwrap();
    let e = format!("{:#}", check_with(&cfg, 1, Some(&step3), None, true).unwrap_err());
    assert!(e.contains("its bits are of another tokenizer"), "{e}");
}

/// Two fresh starts into one run folder, the second's rank 0 past the command line's check before the
/// first trained (here held in its rendezvous, waiting for its rank 1): it acquires the run's lock only
/// once the first has finished, and must then refuse the folder (exit 2), not train over the run.
#[test]
fn a_fresh_start_into_a_run_trained_since_its_check_is_refused_under_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"));
    cfg.data.micro_batch = infinity_trainer::train::config::MicroBatchSize::Samples(4);
    let file = common::config_file(&cfg, tmp.path());
    let (bin, port) = (Path::new(env!("CARGO_BIN_EXE_infinity")), common::free_port());
    let rank = |r: usize, args: &[&str]| common::rank_process(bin, tmp.path(), &file, (r, port), args, &[]);
    let second = rank(0, &[]);
    // past its check, into the rendezvous: rank 0 hosts the store there
    common::wait_until_listening(&format!("127.0.0.1:{port}"), &|| "rank 0 never opened its store".into());
    let first = train(&cfg, &TrainOptions { fresh_start: true, ..Default::default() }).unwrap();
    assert_eq!(first.steps, 6);
    let metrics = std::fs::read_to_string(cfg.run.dir.join("metrics.jsonl")).unwrap();
    // (in a true race it passed its own check too; started now, it must not check: it would refuse)
    let mut rank1 = rank(1, &["--resume", "auto"]);
    let out = second.wait_with_output().unwrap();
    let _ = rank1.kill();
    rank1.wait().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already holds a run (checkpoints up to step 6)"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(cfg.run.dir.join("metrics.jsonl")).unwrap(),
        metrics,
        "the run was trained over"
    );
}
