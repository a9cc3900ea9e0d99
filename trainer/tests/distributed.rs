//! Data parallelism through `infinity launch` on this machine's CPU: 2 and 4 ranks match 1 rank with
//! the same global batch; a rank killed with SIGKILL is restarted and the run ends bit-identical to an
//! uninterrupted one; SIGTERM checkpoints, exits 0, and the relaunch resumes exactly; the agent reports
//! a rank's last lines, agents that disagree, and a signal before its group starts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use infinity_data::synth::{synth, SynthOptions};
use rand::{Rng, SeedableRng};
use safetensors::SafeTensors;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_infinity");

/// Training data in `dir` and a validation split (same tokenizer) in `dir-val`.
fn dataset(dir: &Path) {
    common::small_dataset(dir);
    let val = SynthOptions {
        rows: 40,
        seed: 9,
        tokenizer: Some(dir.join("tokenizer.safetensors")),
        ..common::small_options()
    };
    synth(&dir.with_file_name("data-val"), &val).unwrap();
}

fn config(tmp: &Path, data: &Path, steps: u64) -> PathBuf {
    let text = format!(
        r#"
[run]
dir = "unused"
seed = 11
steps = {steps}
log_every = 1000
# MFU in metrics.jsonl, per rank (a CPU of 1 GFLOP/s)
peak_tflops = 0.001
[model]
preset = "tiny"
conditioning = "text"
# drawn per sample id, so alike on any number of ranks
drop_path_rate = 0.2
[data]
dir = "{}"
global_batch = 16
micro_batch = 4
# the short captions too, drawn per sample id as the drop path
short_cap_prob = 0.5
[optim]
lr = 2e-3
decay = {{ kind = "cosine", min_ratio = 0.1 }}
clip = 1.0
ema_decay = 0.75
[checkpoint]
every = 2
keep_last = 20
[dist]
timeout_s = 60
rdzv_timeout_s = 60
[val]
dir = "{}"
every = 2
max_rows = 40
"#,
        data.display(),
        data.with_file_name("data-val").display()
    );
    let p = tmp.join("train.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A temporary folder with the datasets and a config of `steps` steps.
fn setup(steps: u64) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(tmp.path(), &data, steps);
    (tmp, cfg)
}

/// The log folder of the one launch under `log_dir` (a single node's run id is its own:
/// `run-DATE-TIME-PID`).
fn launch_logs(log_dir: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(log_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(dirs.len() == 1 && dirs[0].file_name().unwrap().to_string_lossy().starts_with("run-"), "{dirs:?}");
    dirs[0].clone()
}

fn launch(nproc: usize, cfg: &Path, run: &Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["launch", "--nproc-per-node", &nproc.to_string(), "--grace-s", "20"])
        .arg("--log-dir")
        .arg(run.join("logs"))
        .args(extra)
        .args(["--", "train"])
        .arg(cfg)
        .arg("--set")
        .arg(format!("run.dir={}", run.display()));
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// `infinity ARGS…` as rank `r` of two that meet at `port` on this machine (the variables a torchrun-style
/// scheduler sets, no agent), its stderr piped; a rank waits 2 s for a run folder that is not shared to
/// show what rank 0 wrote there (not 30 s: one folder on one machine shows it at once).
fn rank_of_two(r: usize, port: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Child {
    let mut c = Command::new(BIN);
    c.args(args).envs([
        ("WORLD_SIZE", "2"),
        ("RANK", &r.to_string()),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", port),
        ("INFINITY_SHARED_FOLDER_LAG_S", "2"),
    ]);
    c.stderr(Stdio::piped()).spawn().unwrap()
}

fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "launch failed ({:?}):\n{text}", out.status);
    text
}

/// The weights of a run's checkpoint and, named `ema/…`, their moving average (each rank keeps a shard
/// of it on the host, so comparing it checks the shards are gathered right).
fn weights(run: &Path, step: u64) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for (file, prefix) in [("model.safetensors", ""), ("ema.safetensors", "ema/")] {
        let p = run.join(format!("checkpoints/step-{step:08}/{file}"));
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let st = SafeTensors::deserialize(&bytes).unwrap();
        out.extend(st.tensors().into_iter().map(|(n, t)| {
            (
                format!("{prefix}{n}"),
                t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            )
        }));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The largest difference between two runs' tensors and the tensor holding it (a NaN on one side only
/// is infinitely far, as everywhere in docs/numerics.md).
fn max_abs_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f32, String) {
    assert_eq!(a.len(), b.len(), "the two runs hold different tensors");
    let mut worst = (0.0f32, String::new());
    for ((n, x), (m, y)) in a.iter().zip(b) {
        assert_eq!((n, x.len()), (m, y.len()));
        let d = infinity_kernels::compare::max_abs_diff(x, y) as f32;
        if d > worst.0 {
            worst = (d, n.clone());
        }
    }
    worst
}

#[test]
fn two_and_four_ranks_match_one_rank() {
    let (tmp, cfg) = setup(4);
    let runs: Vec<PathBuf> = [1, 2, 4].iter().map(|n| tmp.path().join(format!("ranks-{n}"))).collect();
    for (n, run) in [1, 2, 4].iter().zip(&runs) {
        ok(launch(*n, &cfg, run, &[], &[]).output().unwrap());
    }
    let one = weights(&runs[0], 4);
    // the moving average (compared with the weights below) is not the weights
    let (ema, model): (Vec<_>, Vec<_>) = one.iter().cloned().partition(|(n, _)| n.starts_with("ema/"));
    let ema: Vec<_> = ema.into_iter().map(|(n, v)| (n["ema/".len()..].to_string(), v)).collect();
    let (lag, _) = max_abs_diff(&ema, &model);
    assert!(lag > 1e-4, "the moving average is the weights (max |Δ| {lag:e})");
    for (n, run) in [2, 4].iter().zip(&runs[1..]) {
        let (diff, name) = max_abs_diff(&one, &weights(run, 4));
        println!("{n} ranks vs 1 rank after 4 steps: max |Δw| = {diff:.3e} ({name})");
        // docs/numerics.md: summation order differs, AdamW amplifies it on near-zero moments
        assert!(diff <= 1e-5, "{n} ranks: max |Δw| {diff:e} at {name}");
    }
    // every step's metrics carry the ranks' timings when there is more than one
    let metrics = |run: &Path| std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(!metrics(&runs[0]).contains("\"ranks\""));
    assert_eq!(metrics(&runs[2]).lines().filter(|l| l.contains("\"work_s_max\"")).count(), 4);
    // MFU is per device: the group's FLOP/s over the ranks, against one rank's peak
    for (n, run) in [1, 2, 4].iter().zip(&runs) {
        let derived: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("derived.json")).unwrap()).unwrap();
        let flops_per_token = derived["train_flops_per_token"][0].as_f64().unwrap();
        let steps: Vec<serde_json::Value> = metrics(run).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let bucket0: Vec<_> = steps.iter().filter(|m| m["bucket"] == 0).collect();
        assert!(!bucket0.is_empty(), "{n} ranks: no step of bucket 0");
        for m in bucket0 {
            let (mfu, tps) = (m["mfu"].as_f64().unwrap(), m["tokens_per_s"].as_f64().unwrap());
            let want = tps * flops_per_token / *n as f64 / 1e9;
            assert!((mfu - want).abs() <= 1e-9 * want, "{n} ranks: MFU {mfu} where {want} is per rank");
            let tflops = m["tflops_per_device"].as_f64().unwrap();
            assert!((tflops - want / 1e3).abs() <= 1e-9 * want, "{n} ranks: {tflops} TFLOP/s per device");
        }
    }
    // validation (rows split over ranks) agrees too
    let val = |run: &Path| -> Vec<f64> {
        let text = std::fs::read_to_string(run.join("val.jsonl")).unwrap();
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect()
    };
    let v1 = val(&runs[0]);
    assert_eq!(v1.len(), 2);
    for run in &runs[1..] {
        for (a, b) in v1.iter().zip(val(run)) {
            assert!((a - b).abs() <= 1e-5 * a, "validation loss {a} vs {b}");
        }
    }
    // the same world size twice gives the same bytes
    let again = tmp.path().join("ranks-2-again");
    ok(launch(2, &cfg, &again, &[], &[]).output().unwrap());
    assert!(weights(&again, 4) == weights(&runs[1], 4), "2-rank runs are not bitwise reproducible");
}

/// A rank slowed down in every step (the straggler drill) is named in the log and in metrics.jsonl.
#[test]
fn a_slow_rank_is_named_as_the_straggler() {
    let (tmp, cfg) = setup(3);
    let run = tmp.path().join("slow");
    // (1.5 s: far above what a loaded 2-core machine adds to either rank's own work)
    let mut c = launch(2, &cfg, &run, &[], &[("INFINITY_FAULT_SLOW", "1:1.5")]);
    let out = ok(c.args(["--set", "run.log_every=1", "--set", "val.every=0"]).output().unwrap());
    assert!(out.contains("straggler at step 1: rank 1's own work took"), "{out}");
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for line in text.lines() {
        let ranks = &serde_json::from_str::<serde_json::Value>(line).unwrap()["ranks"];
        assert_eq!(ranks["slowest_rank"], 1, "{line}");
        let (max, median) = (ranks["work_s_max"].as_f64().unwrap(), ranks["work_s_median"].as_f64().unwrap());
        // rank 1 waits 1.5 s more; rank 0's own work varies with the machine's load (2 cores, 2 ranks)
        assert!(max >= 1.5 && max - median >= 0.75, "{line}");
    }
}

/// A checkpoint write slower than the collective timeout (the slow-disk drill): written in the
/// background, the other rank never waits on it in a collective, also where the next checkpoint comes
/// due before it is written (the group waits for it together, in short collectives), and the run ends
/// with every checkpoint complete; written in the step loop, the other rank's barrier times out.
#[test]
fn a_slow_checkpoint_write_does_not_stall_the_other_ranks() {
    let (tmp, cfg) = setup(4);
    // (a 3 s timeout leaves a loaded machine room in the background case; the write takes twice that)
    let slow = [("INFINITY_FAULT_SLOW_SAVE", "6")];
    let quick = ["--set", "dist.timeout_s=3", "--set", "val.every=0"];
    let run = tmp.path().join("background");
    let text = ok(launch(2, &cfg, &run, &[], &slow).args(quick).args(["--set", "run.steps=6"]).output().unwrap());
    for step in [2, 4, 6] {
        assert!(run.join(format!("checkpoints/step-{step:08}/DONE")).is_file(), "step {step}");
    }
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
    assert!(summary.contains("\"finished\": true") && summary.contains("step-00000006"), "{summary}");
    assert!(text.contains("step 4: the checkpoint before is still being written: the group waits for it"), "{text}");

    let run = tmp.path().join("in-the-loop");
    let out = launch(2, &cfg, &run, &[], &slow).args(quick).args(["--set", "checkpoint.background=false"]).output();
    let out = out.unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("a collective timed out"), "{text}");
    // the flight records: rank 1 waited in a collective rank 0 never entered (it was writing), and rank
    // 0, asked by the agent, wrote where it had got to
    let line =
        text.lines().find(|l| l.contains("[launch] flight records: collective #")).unwrap_or_else(|| panic!("{text}"));
    let stalled = "(checkpoint barrier: all_reduce of 1 value, step 2): waited in by rank 1 (failed";
    assert!(line.contains(stalled) && line.contains("never entered by rank 0 (its last: #"), "{text}");
    eprintln!("{line}");
    let logs = launch_logs(&run.join("logs")).join("attempt_0");
    for rank in [0, 1] {
        assert!(logs.join(format!("flight-rank{rank}.json")).is_file(), "rank {rank}: {text}");
    }
    // the same, read afterwards (as from a torchrun job's INFINITY_FLIGHT_DIR), with each rank's line
    let read = ok(Command::new(BIN).args(["comm", "flight"]).arg(&logs).output().unwrap());
    eprintln!("{read}");
    let ranks: Vec<&str> = read.lines().filter(|l| l.starts_with("rank ")).collect();
    assert!(ranks[0].contains("written because: asked for by the launcher"), "{read}");
    assert!(
        ranks[1].contains(") failed after ") && ranks[1].contains("because: collective `all_reduce` timed out"),
        "{read}"
    );
    assert!(read.contains(line.trim_start_matches("[launch] flight records: ")), "{read}");
}

/// `checkpoint.every_minutes` on 2 ranks under ZeRO-1 (a checkpoint gathers the moments: ranks that
/// disagreed on whether to save would desynchronise): rank 0's clock, due at every step, decides for
/// both (at step 1 at least: no write in flight yet), and the run ends as one rank's does.
#[test]
fn checkpoints_by_the_clock_are_saved_by_every_rank_at_the_same_step() {
    let (tmp, cfg) = setup(4);
    let one = tmp.path().join("one");
    ok(launch(1, &cfg, &one, &[], &[]).output().unwrap());
    let run = tmp.path().join("clock");
    let clock = ["dist.zero1=true", "checkpoint.every=0", "checkpoint.every_minutes=1e-9"];
    let mut c = launch(2, &cfg, &run, &[], &[]);
    ok(c.args(clock.iter().flat_map(|s| ["--set", s])).output().unwrap());
    let (diff, name) = max_abs_diff(&weights(&one, 4), &weights(&run, 4));
    assert!(diff <= 1e-5, "max |Δw| {diff:e} at {name}");
    // (how many more: as many as the background writes let, which depends on the machine's speed)
    let mut saved: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    saved.sort();
    assert!(saved.first().is_some_and(|s| s == "step-00000001") && saved.len() >= 2, "{saved:?}");
}

#[test]
fn zero1_matches_one_rank_and_its_checkpoints_restore_on_another_world_size() {
    let (tmp, cfg) = setup(4);
    let one = tmp.path().join("one");
    ok(launch(1, &cfg, &one, &[], &[]).output().unwrap());
    let z2 = tmp.path().join("zero1-2");
    let zero = ["--set", "dist.zero1=true"];
    let mut c = launch(2, &cfg, &z2, &[], &[]);
    ok(c.args(zero).output().unwrap());
    let (diff, name) = max_abs_diff(&weights(&one, 4), &weights(&z2, 4));
    println!("ZeRO-1 on 2 ranks vs 1 rank after 4 steps: max |Δw| = {diff:.3e} ({name})");
    assert!(diff <= 1e-5, "ZeRO-1: max |Δw| {diff:e} at {name}");
    // its step-2 checkpoint (whole moments) continues on 4 ranks with ZeRO-1 and on 1 rank without
    let mut check = Command::new(BIN);
    check.arg("train").arg(&cfg).args(["--check", "--world", "4", "--set"]);
    check.arg(format!("run.dir={}", tmp.path().join("check-4").display())).arg("--resume");
    let out = ok(check.arg(z2.join("checkpoints/step-00000002")).args(zero).output().unwrap());
    assert!(out.contains("resume: written on 2 ranks, would resume on 4:"), "{out}");
    for (n, extra) in [(4usize, &zero[..]), (1, &[][..])] {
        let run = tmp.path().join(format!("resumed-{n}"));
        std::fs::create_dir_all(run.join("checkpoints")).unwrap();
        let src = z2.join("checkpoints/step-00000002");
        let dst = run.join("checkpoints/step-00000002");
        std::fs::create_dir_all(&dst).unwrap();
        for f in std::fs::read_dir(&src).unwrap().flatten() {
            std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
        }
        let mut c = launch(n, &cfg, &run, &[], &[]);
        let out = ok(c.args(extra).args(["--resume", "auto"]).output().unwrap());
        // (the checkpoint records the ranks that wrote it; the resume says it runs on others)
        let said = format!("at step 2 (written on 2 ranks, resumed on {n}: the same samples in the same order");
        assert!(out.contains(&said), "{out}");
        let (diff, name) = max_abs_diff(&weights(&one, 4), &weights(&run, 4));
        println!("ZeRO-1 checkpoint resumed on {n} ranks vs 1 rank: max |Δw| = {diff:.3e} ({name})");
        assert!(diff <= 1e-5, "resumed on {n}: max |Δw| {diff:e} at {name}");
    }
}

#[test]
fn a_killed_rank_restarts_the_group_and_the_run_ends_identical() {
    let (tmp, cfg) = setup(8);
    let clean = tmp.path().join("clean");
    ok(launch(2, &cfg, &clean, &[], &[]).output().unwrap());

    // a rank on another node lost as the group forms (its link dropped): rank 0's failed config
    // agreement is a lost peer, which its node's agent restarts, not a config error (exit 2)
    let forming = tmp.path().join("forming");
    let rdzv = format!("127.0.0.1:{}", common::free_port());
    let node = |n: &str| {
        let group = ["--nnodes", "2", "--node-rank", n, "--rdzv", &rdzv, "--run-id", "forming", "--token", "t"];
        launch(1, &cfg, &forming, &[&group[..], &["--max-restarts", "1"]].concat(), &[("INFINITY_FAULT_KILL", "1:0")])
            .output()
            .unwrap()
    };
    let (node0, node1) = std::thread::scope(|s| {
        let node0 = s.spawn(|| node("0"));
        std::thread::sleep(Duration::from_millis(300));
        let node1 = node("1");
        (node0.join().unwrap(), node1)
    });
    for (n, out) in [node0, node1].into_iter().enumerate() {
        let out = ok(out);
        assert!(out.contains("restarting the group") && !out.contains("not restarting"), "{out}");
        // (rank 0 failed in the config agreement, its flight record says)
        assert!(n == 1 || out.contains("(config agreement: "), "{out}");
    }
    assert!(weights(&forming, 8) == weights(&clean, 8), "restarted as the group formed: final weights differ");

    // a random rank at a random step (fixed seed so a failure reproduces)
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    let (rank, step) = (rng.random_range(0..2usize), rng.random_range(1..8u64));
    let faulty = tmp.path().join("faulty");
    let spec = format!("{rank}:{step}");
    let out =
        ok(launch(2, &cfg, &faulty, &["--max-restarts", "1"], &[("INFINITY_FAULT_KILL", &spec)]).output().unwrap());
    assert!(out.contains(&format!("rank {rank}")) && out.contains("signal 9 (SIGKILL)"), "{out}");
    assert!(out.contains("restarting the group"), "{out}");
    assert!(weights(&faulty, 8) == weights(&clean, 8), "killed at {spec}: final weights differ");
    let opt = |r: &Path| std::fs::read(r.join("checkpoints/step-00000008/optim.safetensors")).unwrap();
    assert!(opt(&faulty) == opt(&clean));
    // per-rank logs per attempt, in the launch's own folder
    let logs = launch_logs(&faulty.join("logs"));
    assert!(logs.join("attempt_0/rank_0.log").is_file() && logs.join("attempt_1/rank_1.log").is_file());

    // a group of one rank is on a later attempt too once restarted: the drill kills its first alone
    let solo = tmp.path().join("solo-killed");
    let out = launch(1, &cfg, &solo, &["--max-restarts", "1"], &[("INFINITY_FAULT_KILL", "0:3")]).output().unwrap();
    let out = ok(out);
    assert!(out.contains("restarting the group") && solo.join("checkpoints/step-00000008").is_dir(), "{out}");

    // a run started from another run's checkpoint (`--resume PATH`) restarts from its own newest one,
    // not from PATH again: killed after step 5, it resumes at step 4 and still ends identical
    let from = tmp.path().join("from-clean");
    let start = clean.join("checkpoints/step-00000002");
    let mut c = launch(2, &cfg, &from, &["--max-restarts", "1"], &[("INFINITY_FAULT_KILL", "0:5")]);
    // (step 4's checkpoint written before step 5 starts: in the background it may still be in flight
    // when rank 0 kills itself on a loaded machine, and the restart would rightly take step 2 again)
    c.args(["--set", "checkpoint.background=false"]);
    let out = ok(c.arg("--resume").arg(&start).output().unwrap());
    assert!(
        out.contains(&format!("resumed from {} at step 4", from.join("checkpoints/step-00000004").display())),
        "{out}"
    );
    assert!(!out.contains("written on"), "same world size, nothing to say: {out}");
    assert!(weights(&from, 8) == weights(&clean, 8), "restarted from its own checkpoint: final weights differ");

    // ranks whose run.dirs are not one folder (each a copy) stop together as they start, saying so, with
    // exit 2 (a restart would find the same folders); ranks of one folder that see different
    // checkpoints in it are `start_state`'s unit test
    let port = common::free_port().to_string();
    let ranks: Vec<_> = (0..2)
        .map(|r| {
            let dir = tmp.path().join(format!("unshared-{r}"));
            let copy = Command::new("cp").arg("-r").arg(&clean).arg(&dir).status().unwrap();
            assert!(copy.success());
            if r == 1 {
                std::fs::remove_dir_all(dir.join("checkpoints/step-00000008")).unwrap();
            }
            let run_dir = format!("run.dir={}", dir.display());
            rank_of_two(r, &port, &[&"train", &cfg, &"--set", &run_dir, &"--resume", &"auto"])
        })
        .collect();
    for (r, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "rank {r}: {text}");
        assert!(text.contains("run.dir must be one folder every rank sees"), "rank {r}: {text}");
        assert!(text.contains("the file rank 0 wrote"), "rank {r}: {text}");
    }

    // without restarts the failure is reported with the root cause and a non-zero exit
    let out = launch(2, &cfg, &tmp.path().join("no-restart"), &[], &[("INFINITY_FAULT_KILL", &spec)]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("Root cause") && text.contains("no restarts left"), "{text}");
}

/// Ranks given checkpoints of one step from different runs (each node its own `--resume`, or node-local
/// run folders) stop together with exit 2, not restarted: each would keep its own optimiser moments
/// and the weights would drift apart.
#[test]
fn ranks_resuming_from_different_checkpoints_of_one_step_stop() {
    let (tmp, cfg) = setup(2);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (run, lr) in [(&a, "2e-3"), (&b, "1e-3")] {
        let mut c = Command::new(BIN);
        c.arg("train").arg(&cfg).args(["--set", &format!("run.dir={}", run.display()), "--set"]);
        assert!(c.arg(format!("optim.lr={lr}")).status().unwrap().success());
    }
    let port = common::free_port().to_string();
    let ranks: Vec<_> = [&a, &b]
        .into_iter()
        .enumerate()
        .map(|(r, from)| {
            let (run_dir, ckpt) =
                (format!("run.dir={}", tmp.path().join("ab").display()), from.join("checkpoints/step-00000002"));
            rank_of_two(r, &port, &[&"train", &cfg, &"--set", &run_dir, &"--set", &"run.steps=3", &"--resume", &ckpt])
        })
        .collect();
    let said = [
        format!(
            "rank 0 starts from {} (step 2), another rank from another",
            a.join("checkpoints/step-00000002").display()
        ),
        format!(
            "rank 1 resumes from {}, a checkpoint of step 2 with other weights",
            b.join("checkpoints/step-00000002").display()
        ),
    ];
    for (r, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "rank {r}: {text}");
        assert!(text.contains(&said[r]) && text.contains("the same --resume on every node"), "rank {r}: {text}");
    }
}

/// Ranks whose run.dir is not one folder (each node its own disk) stop as they start, exit 2, rather
/// than train on until a restart finds rank 0's checkpoints on no other node; one folder under two
/// paths (a shared file system mounted elsewhere on each node) is one folder, and trains.
#[test]
fn ranks_whose_run_folders_differ_stop_as_they_start() {
    let (tmp, cfg) = setup(2);
    let start = |r: usize, port: &str, run: &Path| {
        rank_of_two(r, port, &[&"train", &cfg, &"--set", &format!("run.dir={}", run.display())])
    };
    let port = common::free_port().to_string();
    let (a, b) = (tmp.path().join("node0-disk"), tmp.path().join("node1-disk"));
    let ranks = [start(0, &port, &a), start(1, &port, &b)];
    for (r, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "rank {r}: {text}");
        assert!(text.contains("run.dir must be one folder every rank sees"), "rank {r}: {text}");
        if r == 1 {
            assert!(text.contains(&format!("rank 1 does not see in run.dir {}", b.display())), "{text}");
        }
    }
    // (the folder rank 0 made for the run is gone with it, its mark too; rank 1's holds nothing)
    let left = |d: &Path| std::fs::read_dir(d).map_or(0, |r| r.count());
    assert_eq!((a.exists(), left(&b)), (false, 0), "a refused start leaves nothing behind");
    // one folder, reached by two paths
    #[cfg(unix)]
    {
        let shared = tmp.path().join("shared");
        let mount = tmp.path().join("mounted-elsewhere");
        std::fs::create_dir_all(&shared).unwrap();
        std::os::unix::fs::symlink(&shared, &mount).unwrap();
        let port = common::free_port().to_string();
        let ranks = [start(0, &port, &shared), start(1, &port, &mount)];
        for (r, child) in ranks.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "rank {r}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// `infinity comm bench` under the agent measures the group's own ring (rank 0 prints one line for
/// it), not each rank's loopback threads.
#[test]
fn comm_bench_under_launch_measures_the_groups_ring() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["launch", "--nproc-per-node", "3", "--log-dir"])
        .arg(tmp.path())
        .args(["--", "comm", "bench", "--mib", "1", "--iters", "2"])
        .output()
        .unwrap();
    let text = ok(out);
    let rows: Vec<&str> = text.lines().filter(|l| l.contains("| 3 | 1 | 1 |")).collect();
    assert_eq!(rows.len(), 1, "{text}");
    assert!(rows[0].starts_with("[rank 0] "), "{text}");
    assert!(!text.contains("raw loopback"), "{text}");
}

#[test]
fn sigterm_checkpoints_exits_zero_and_the_relaunch_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let steps = 400;
    let cfg = config(tmp.path(), &data, steps);
    let clean = tmp.path().join("clean");
    ok(launch(2, &cfg, &clean, &[], &[]).output().unwrap());

    let run = tmp.path().join("preempted");
    let mut child = launch(2, &cfg, &run, &[], &[]).spawn().unwrap();
    // wait until training is under way, then preempt the agent
    let t0 = Instant::now();
    while !run.join("checkpoints/step-00000004/DONE").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "training did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "preempted launch exited with {status:?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["preempted"], true, "{summary}");
    let stopped = summary["step"].as_u64().unwrap();
    assert!(stopped < steps, "the run finished before the signal arrived");
    assert!(run.join(format!("checkpoints/step-{stopped:08}/DONE")).exists(), "no checkpoint at the stop step");

    ok(launch(2, &cfg, &run, &[], &[]).arg("--resume").arg("auto").output().unwrap());
    assert!(weights(&run, steps) == weights(&clean, steps), "resumed after SIGTERM at {stopped}: weights differ");
}

/// SIGHUP to the whole process group (a closed terminal or ssh session: the ranks get it as well as
/// their agent), and SIGQUIT alike (a terminal's Ctrl-\\), stop the run as SIGTERM does: a
/// checkpoint, `preempted`, exit 0.
#[test]
fn sighup_and_sigquit_to_the_process_group_checkpoint_and_exit_zero() {
    use std::os::unix::process::CommandExt;
    let (tmp, cfg) = setup(400);
    for (sig, name) in [(libc::SIGHUP, "hup"), (libc::SIGQUIT, "quit")] {
        let run = tmp.path().join(name);
        let mut child = launch(2, &cfg, &run, &[], &[]).process_group(0).stdout(Stdio::null()).spawn().unwrap();
        let t0 = Instant::now();
        while !run.join("checkpoints/step-00000002/DONE").exists() {
            assert!(t0.elapsed() < Duration::from_secs(60), "training did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: signalling the process group of the child we spawned (its own group).
        unsafe { libc::kill(-(child.id() as i32), sig) };
        let status = child.wait().unwrap();
        assert!(status.success(), "launch after SIG{} exited with {status:?}", name.to_uppercase());
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["preempted"], true, "{summary}");
        let stopped = summary["step"].as_u64().unwrap();
        assert!(run.join(format!("checkpoints/step-{stopped:08}/DONE")).exists(), "no checkpoint at the stop step");
    }
}

/// Started with SIGHUP ignored (`nohup infinity launch …`), the group trains on through a closed
/// session's SIGHUP (the agent keeps it ignored, and its ranks inherit it ignored), and still stops on
/// SIGTERM.
#[test]
fn a_group_started_under_nohup_trains_on_through_sighup() {
    use std::os::unix::process::CommandExt;
    let (tmp, cfg) = setup(400);
    let run = tmp.path().join("nohup");
    let mut cmd = launch(2, &cfg, &run, &[], &[]);
    // SAFETY: signal(2) in the child between fork and exec, as nohup does before it execs.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        })
    };
    let mut child = cmd.process_group(0).stdout(Stdio::null()).spawn().unwrap();
    let newest = || {
        std::fs::read_dir(run.join("checkpoints")).map_or(0, |d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse::<u64>().ok())
                .max()
                .unwrap_or(0)
        })
    };
    let wait_past = |step: u64| {
        let t0 = Instant::now();
        while newest() <= step {
            assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint past step {step}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_past(1);
    // SAFETY: signalling the process group of the child we spawned (its own group).
    unsafe { libc::kill(-(child.id() as i32), libc::SIGHUP) };
    let at_hup = newest();
    wait_past(at_hup + 3);
    assert!(child.try_wait().unwrap().is_none(), "the group stopped on a SIGHUP it was started ignoring");
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["preempted"], true, "{summary}");
}

/// An elastic group (`--nnodes 2:3`, one rank per agent): three agents start together; one is killed
/// (its rank checkpoints on the way out, which the other agents must not take for the run's end) and
/// the other two go on from that checkpoint, spending the one restart; a fourth agent arriving later
/// makes the group regroup to three, and leaves again on SIGTERM, neither spending a restart. The run
/// ends like one rank with the same global batch.
#[test]
fn an_elastic_group_loses_nodes_gains_one_and_ends_like_one_rank() {
    let steps = 300;
    let (tmp, cfg) = setup(steps);
    // a batch that splits over 1, 2 and 3 ranks; validation now and then
    let sets = ["--set", "data.global_batch=24", "--set", "val.every=100", "--set", "checkpoint.every=10"];
    let one = tmp.path().join("one");
    ok(launch(1, &cfg, &one, &[], &[]).args(sets).output().unwrap());

    let run = tmp.path().join("elastic");
    std::fs::create_dir_all(&run).unwrap();
    let rdzv = format!("127.0.0.1:{}", common::free_port());
    let agent = |name: &str| {
        let flags =
            ["--nnodes", "2:3", "--rdzv", &rdzv, "--run-id", "el", "--rdzv-last-call-s", "2", "--max-restarts", "1"];
        let mut c = launch(1, &cfg, &run, &flags, &[("INFINITY_RDZV_TOKEN", "t")]);
        let log = std::fs::File::create(run.join(format!("agent-{name}.log"))).unwrap();
        c.args(sets).stdout(Stdio::null()).stderr(log).spawn().unwrap()
    };
    let read = |name: &str| std::fs::read_to_string(run.join(format!("agent-{name}.log"))).unwrap();
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !done() {
            assert!(t0.elapsed() < Duration::from_secs(120), "waited 120 s for {what}\n{}", read("a"));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let checkpoints = || std::fs::read_dir(run.join("checkpoints")).map_or(0, |d| d.count());
    // a hosts the store (it binds the port first); b and c connect to it
    let mut a = agent("a");
    common::wait_until_listening(&rdzv, &|| format!("agent a never opened its store\n{}", read("a")));
    let (mut b, mut c) = (agent("b"), agent("c"));
    wait_for("the first checkpoint", &|| run.join("checkpoints/step-00000010/DONE").exists());
    // SAFETY: signalling a child we spawned.
    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
    c.wait().unwrap();
    wait_for("round 1", &|| run.join("logs/el/attempt_1/rank_1.log").exists());
    let before = checkpoints();
    wait_for("round 1 to train", &|| checkpoints() > before + 1);
    let mut d = agent("d");
    wait_for("round 2", &|| run.join("logs/el/attempt_2/rank_2.log").exists());
    let before = checkpoints();
    wait_for("round 2 to train", &|| checkpoints() > before + 1);
    // SAFETY: signalling a child we spawned.
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    for (name, child) in [("a", &mut a), ("b", &mut b), ("d", &mut d)] {
        let status = child.wait().unwrap();
        assert!(status.success(), "agent {name} exited with {status:?}:\n{}", read(name));
    }
    assert!(read("d").contains("the ranks stopped after the signal"), "{}", read("d"));
    let log = read("a");
    // (node ranks follow the order in which the agents joined each round)
    for said in [
        "round 0: node 0 of 3, rank 0 of 3",
        "no agent was signalled",
        "restarting the group (restart 1 of 1)",
        "round 1: node ? of 2",
        "an agent waits to join the group",
        "regrouping (not a restart)",
        "round 2: node ? of 3",
        "a node leaves the group",
        "round 3: node ? of 2",
    ] {
        let (head, tail) = said.split_once('?').unwrap_or((said, ""));
        assert!(log.lines().any(|l| l.contains(head) && l.contains(tail)), "agent a did not say {said:?}:\n{log}");
    }
    assert!(!log.contains("no restarts left"), "a regroup spent a restart:\n{log}");
    let (diff, name) = max_abs_diff(&weights(&one, steps), &weights(&run, steps));
    println!("elastic 3 → 2 → 3 → 2 ranks vs 1 rank after {steps} steps: max |Δw| = {diff:.3e} ({name})");
    assert!(diff <= 1e-5, "elastic: max |Δw| {diff:e} at {name}");
}

/// An elastic group's ranks check that the global batch splits over every world its range allows
/// before the first step: 16 does not over 3 ranks, which `--nnodes 1:3` would regroup to when two
/// more nodes join (the group then stopped, exit 2, hours into a healthy run).
#[test]
fn an_elastic_range_the_batch_does_not_split_over_stops_at_the_start() {
    let (tmp, cfg) = setup(4);
    let run = tmp.path().join("elastic");
    std::fs::create_dir_all(&run).unwrap();
    let rdzv = format!("127.0.0.1:{}", common::free_port());
    let flags = ["--nnodes", "1:3", "--rdzv", &rdzv, "--run-id", "el3", "--rdzv-last-call-s", "1"];
    let out = launch(1, &cfg, &run, &flags, &[("INFINITY_RDZV_TOKEN", "t")]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    let want = "data.global_batch 16 must split into 3 ranks × whole micro-batches of 4: a world of 3 ranks is one \
                the elastic group (--nnodes 1:3) may regroup to";
    assert!(said.contains(want), "{said}");
    assert!(!run.join("checkpoints").exists(), "it trained");
    // (with `data.micro_batch = "auto"` each world chooses its own: the ranks alone must split it)
    let rdzv = format!("127.0.0.1:{}", common::free_port());
    let flags = ["--nnodes", "1:3", "--rdzv", &rdzv, "--run-id", "el3-auto", "--rdzv-last-call-s", "1"];
    let auto = launch(1, &cfg, &run, &flags, &[("INFINITY_RDZV_TOKEN", "t")])
        .args(["--set", "data.micro_batch=auto"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&auto.stderr);
    assert!(said.contains("data.global_batch 16 must split into 3 ranks: a world of 3 ranks"), "{said}");
    // (a range every world of which it splits over starts)
    let flags = ["--nnodes", "1:2", "--rdzv", &rdzv, "--run-id", "el2", "--rdzv-last-call-s", "1"];
    ok(launch(1, &cfg, &run, &flags, &[("INFINITY_RDZV_TOKEN", "t")]).output().unwrap());
}

/// With the `cuda` feature and at least 2 GPUs (or the emulated device's two): training on the GPU
/// over NCCL (`run.device = "cuda"`, `dist.backend = "nccl"` or `"auto"`, one GPU per rank through the agent's
/// CUDA_VISIBLE_DEVICES) gives the weights of one GPU with the same global batch, whether the gradients
/// are summed bucket by bucket during the backward (a bucket per block, or the default size) or after
/// it; a rank killed mid-run restarts the group from the last checkpoint (a fresh NCCL communicator per
/// attempt) and the run ends with the uninterrupted run's bytes.
#[cfg(feature = "cuda")]
#[test]
fn nccl_data_parallel_matches_one_rank_and_restarts_exactly() {
    let gpus = if infinity_launcher::comm::nccl_available() {
        cudarc::driver::CudaContext::device_count().unwrap_or(0) as usize
    } else {
        0
    };
    if gpus < 2 {
        eprintln!("skipped: NCCL data parallelism needs 2 GPUs (found {gpus}; NCCL wants one device per rank)");
        return;
    }
    let (tmp, cfg) = setup(4);
    let on_gpus = ["--set", "run.device=cuda", "--set", "dist.backend=nccl"];
    // the emulated device then leaves kernels queued until something needs them, so a collective that
    // does not wait for the backward's kernels reads stale gradients (a GPU ignores the variable)
    let lazy = ("INFINITY_EMULATED_LAZY", "1");
    let (one, two) = (tmp.path().join("one"), tmp.path().join("nccl-2"));
    ok(launch(1, &cfg, &one, &[], &[]).args(["--set", "run.device=cuda"]).output().unwrap());
    // dist.backend left at "auto": every rank on a GPU, so NCCL (the buckets during the backward are its)
    let mut c = launch(2, &cfg, &two, &[], &[lazy]);
    let out = ok(c.args(["--set", "run.device=cuda", "--set", "dist.bucket_mib=0"]).output().unwrap());
    // a bucket per block (2), then the parameters before and after the blocks
    assert!(out.contains("during the backward: 4 buckets a step"), "{out}");
    let (diff, name) = max_abs_diff(&weights(&one, 4), &weights(&two, 4));
    println!("NCCL on 2 GPUs (a bucket per block during the backward) vs 1 GPU after 4 steps: max |Δw| = {diff:.3e} ({name})");
    assert!(diff <= 1e-5, "NCCL: max |Δw| {diff:e} at {name}");
    let after = tmp.path().join("nccl-after-backward");
    let out = launch(2, &cfg, &after, &[], &[lazy]).args(on_gpus).args(["--set", "dist.overlap_grads=false"]).output();
    assert!(!ok(out.unwrap()).contains("during the backward"));
    let (diff, name) = max_abs_diff(&weights(&one, 4), &weights(&after, 4));
    println!("NCCL on 2 GPUs (summed after the backward) vs 1 GPU after 4 steps: max |Δw| = {diff:.3e} ({name})");
    assert!(diff <= 1e-5, "NCCL after the backward: max |Δw| {diff:e} at {name}");

    // rank 1 killed after step 3 (checkpoints every 2 steps): the group restarts from step 2
    let faulty = tmp.path().join("nccl-killed");
    let kill = [("INFINITY_FAULT_KILL", "1:3"), lazy];
    let mut c = launch(2, &cfg, &faulty, &["--max-restarts", "1"], &kill);
    let out = ok(c.args(on_gpus).args(["--set", "dist.bucket_mib=0"]).output().unwrap());
    assert!(out.contains("restarting the group"), "{out}");
    assert!(weights(&faulty, 4) == weights(&two, 4), "NCCL, rank 1 killed at step 3: final weights differ");
    println!("NCCL on 2 GPUs, rank 1 killed at step 3 and the group restarted: the same bytes at step 4");

    // data.micro_batch = "auto" on GPUs of two sizes: rank 0's holds 4 of a rank's 8 samples a step,
    // rank 1's all 8; both ranks take 4, the runs' micro-batch above, and train their bytes
    let memory = {
        use infinity_trainer::train::{config::TrainConfig, gpu_fit, Setup};
        let c = TrainConfig::load(&cfg, &[]).unwrap();
        let s = Setup::open(&c).unwrap();
        let step = |b| gpu_fit::gpu_step(&c, &s.mc, &s.ds.manifest, 2, b).unwrap();
        let bytes = |b| infinity_trainer::model::memory::device_memory(&s.mc, s.lay.numel, &step(b)).total();
        format!("{},16G", (1u64 << 30) + (bytes(4) + bytes(5)) / 2)
    };
    let auto = tmp.path().join("nccl-auto");
    let mut c = launch(2, &cfg, &auto, &[], &[lazy, ("INFINITY_EMULATED_MEMORY", &memory)]);
    let out =
        ok(c.args(on_gpus).args(["--set", "dist.bucket_mib=0", "--set", "data.micro_batch=auto"]).output().unwrap());
    assert!(out.contains("the ranks' GPUs take [4, 8] (by rank); every rank takes 4"), "{out}");
    assert!(
        weights(&auto, 4) == weights(&two, 4),
        "micro_batch = auto on 2 GPUs: final weights differ from micro_batch = 4"
    );
    println!("micro_batch = auto on GPUs holding 4 and 8 samples: both take 4, the same bytes at step 4");
    // a GPU that holds no sample (1 GiB, all of it the runtime's margin) stops both ranks, not restarted
    let none = tmp.path().join("nccl-auto-none");
    let mut c = launch(2, &cfg, &none, &["--max-restarts", "1"], &[lazy, ("INFINITY_EMULATED_MEMORY", "1G,16G")]);
    let out = c.args(on_gpus).args(["--set", "data.micro_batch=auto"]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && !text.contains("restarting the group"), "{text}");
    assert!(text.contains("the GPU of rank(s) [0] holds no sample"), "{text}");

    // ZeRO-1 on the devices: each GPU keeps the moments and moving average of its shard, the
    // backward's buckets reduce each shard's piece to its owner (the bucket of the two blocks spans
    // both shards), and the parameters are all-gathered in place;
    // its checkpoint (the shards gathered) continues on one GPU without ZeRO-1
    let z = tmp.path().join("nccl-zero1");
    let out = ok(launch(2, &cfg, &z, &[], &[lazy]).args(on_gpus).args(["--set", "dist.zero1=true"]).output().unwrap());
    assert!(out.contains("ZeRO-1: this GPU updates parameters"), "{out}");
    assert!(out.contains("during the backward: 3 buckets a step"), "{out}");
    let (diff, name) = max_abs_diff(&weights(&one, 4), &weights(&z, 4));
    println!("ZeRO-1 over NCCL on 2 GPUs vs 1 GPU after 4 steps: max |Δw| = {diff:.3e} ({name})");
    assert!(diff <= 1e-5, "ZeRO-1 over NCCL: max |Δw| {diff:e} at {name}");
    let resumed = tmp.path().join("nccl-zero1-resumed");
    let (src, dst) = (z.join("checkpoints/step-00000002"), resumed.join("checkpoints/step-00000002"));
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(&src).unwrap().flatten() {
        std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
    }
    let mut c = launch(1, &cfg, &resumed, &[], &[]);
    ok(c.args(["--set", "run.device=cuda", "--resume", "auto"]).output().unwrap());
    let (diff, name) = max_abs_diff(&weights(&one, 4), &weights(&resumed, 4));
    println!("its step-2 checkpoint resumed on 1 GPU: max |Δw| = {diff:.3e} ({name})");
    assert!(diff <= 1e-5, "ZeRO-1 checkpoint resumed on 1 GPU: max |Δw| {diff:e} at {name}");

    // ZeRO-1 with bf16 matmuls: each GPU keeps the f32 weights of its shard alone (and those the
    // kernels read in f32), the bf16 weights come from the shards' owners after each update, and the
    // checkpoints gather the shards on the host: the same bytes as the same 2 GPUs with whole f32
    // weights (bf16 products on 1 GPU, whose gradients sum in another order, end 7e-5 away: an f32
    // ulp of a gradient can round a weight's bf16 copy the other way)
    let bf16 = ["--set", "run.precision=bf16"];
    let two16 = tmp.path().join("nccl-bf16");
    ok(launch(2, &cfg, &two16, &[], &[lazy]).args(on_gpus).args(bf16).output().unwrap());
    let z16 = tmp.path().join("nccl-zero1-bf16");
    let mut c = launch(2, &cfg, &z16, &[], &[lazy]);
    let out = ok(c.args(on_gpus).args(["--set", "dist.zero1=true"]).args(bf16).output().unwrap());
    assert!(out.contains("this GPU keeps the f32 weights of its shard"), "{out}");
    for step in [2, 4] {
        // (`weights` reads the moving average too)
        assert!(weights(&two16, step) == weights(&z16, step), "ZeRO-1 with bf16 matmuls: step {step} differs");
    }
    println!(
        "ZeRO-1 with bf16 matmuls (f32 weights sharded) on 2 GPUs: the same bytes at steps 2 and 4 as without ZeRO-1"
    );
    // and each GPU holds what `model::memory` says it saves: the step's peak (the allocator's high-water
    // mark) down by the f32 masters' other half, the moments' and the average's, less the f32 reads
    let estimate = |zero1: bool| {
        use infinity_trainer::train::{config::TrainConfig, gpu_fit, Setup};
        let c = TrainConfig::load(&cfg, &["run.precision=bf16".into(), format!("dist.zero1={zero1}")]).unwrap();
        let s = Setup::open(&c).unwrap();
        let step = gpu_fit::gpu_step(&c, &s.mc, &s.ds.manifest, 2, 4).unwrap();
        infinity_trainer::model::memory::device_memory(&s.mc, s.lay.numel, &step).total() as f64
    };
    let (saved, counted) = (first_step_peak(&two16) - first_step_peak(&z16), estimate(false) - estimate(true));
    println!("  each GPU's step peak {saved} bytes lower (model::memory counts {counted})");
    assert!((saved / counted - 1.0).abs() < 0.01, "peak {saved} bytes lower, counted {counted}");
}

/// The device memory high-water mark of a run's first step (rank 0's, bytes).
#[cfg(feature = "cuda")]
fn first_step_peak(run: &Path) -> f64 {
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let step: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    step["gpu_mem_peak_gib"].as_f64().unwrap() * (1u64 << 30) as f64
}

/// The agent's own failure paths, with plain programs as ranks: a rank's last line reaches the root
/// cause; a rank with a bad config is not restarted; agents started with different settings both say
/// so; an agent signalled while it waits for another node stops at once with 128 + the signal.
#[test]
fn agents_report_last_lines_disagreements_and_signals_before_start() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = |args: &[&str], program: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("launch").args(args).arg("--log-dir").arg(tmp.path()).arg("--").args(program);
        c.env("INFINITY_RDZV_TOKEN", "test-token");
        c
    };
    for i in 0..4 {
        let run_id = format!("last-{i}");
        let out = agent(&["--run-id", &run_id], &["bash", "-c", "sleep 0.2; echo 'the last words' >&2; exit 3"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        let report = text.split("Root cause").nth(1).unwrap_or_default();
        assert!(report.contains("exit code 3") && report.contains("the last words"), "{text}");
    }
    // the same as a record beside the ranks' logs
    let record = |run_id: &str| -> serde_json::Value {
        let p = tmp.path().join(run_id).join("attempt_0/failure-node0.json");
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
    };
    let r = record("last-0");
    assert_eq!((r["rank"]["exit_code"].as_i64(), r["rank"]["rank"].as_i64()), (Some(3), Some(0)), "{r}");
    assert_eq!((r["next"].as_str(), r["root_cause_here"].as_bool()), (Some("stop: no restarts left"), Some(true)));
    assert!(r["rank"]["last_lines"].as_array().unwrap().iter().any(|l| l == "the last words"), "{r}");

    // a rank whose command or config is wrong (exit code 2) is not restarted: it would fail the same way
    let out = agent(&["--run-id", "bad-config", "--max-restarts", "2"], &[BIN, "train", "/nonexistent.toml"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("not restarting") && !text.contains("attempt 1"), "{text}");
    // nor is one that found its dataset broken (exit code 65): a restart reads the same rows
    let out = agent(&["--run-id", "bad-data", "--max-restarts", "2"], &["bash", "-c", "exit 65"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{text}");
    assert!(
        text.contains("(bad data)") && text.contains("the dataset is wrong") && !text.contains("attempt 1"),
        "{text}"
    );
    assert_eq!(record("bad-data")["next"], "stop: permanent");

    // --local-ranks-filter: the console shows the ranks it lists; every rank's log has its lines, and a
    // rank left out of the console still gets its last lines into the failure report
    let script = "echo \"rank $LOCAL_RANK says hello\"; if [ $LOCAL_RANK = 1 ]; then sleep 0.2; exit 4; fi";
    let quiet = &["bash", "-c", script];
    let out =
        agent(&["--run-id", "filter", "--nproc-per-node", "3", "--local-ranks-filter", "0,2"], quiet).output().unwrap();
    // (a rank's stdout to the agent's stdout, its stderr to the agent's stderr)
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("[rank 0] rank 0 says hello") && said.contains("[rank 2] rank 2 says hello"), "{said}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains("[rank 1]") && !said.contains("[rank 1]") && !text.contains("[rank 0] rank 0 says"),
        "{text}"
    );
    assert!(text.contains("Root cause: rank 1") && text.contains("    rank 1 says hello"), "{text}");
    let log = std::fs::read_to_string(tmp.path().join("filter/attempt_0/rank_1.log")).unwrap();
    assert!(log.contains("rank 1 says hello"), "{log}");

    let rdzv = format!("127.0.0.1:{}", common::free_port());
    let two = |node: &str, nproc: &str| {
        agent(
            &["--nnodes", "2", "--node-rank", node, "--rdzv", &rdzv, "--nproc-per-node", nproc, "--run-id", "dis"],
            &["true"],
        )
    };
    let node0 = two("0", "2").stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let node1 = two("1", "1").output().unwrap();
    let node0 = node0.wait_with_output().unwrap();
    for (n, out) in [node0, node1].iter().enumerate() {
        let text = String::from_utf8_lossy(&out.stderr);
        // (a bad command line, which no restart mends: 2)
        assert!(out.status.code() == Some(2) && text.contains("the agents disagree"), "node {n}: {text}");
    }

    let mut waiting = agent(&["--nnodes", "2", "--node-rank", "0", "--rdzv", &rdzv, "--run-id", "alone"], &["true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // signalled once it says it waits (its handlers are in place by then)
    let stderr = std::io::BufReader::new(waiting.stderr.take().unwrap());
    let mut lines = std::io::BufRead::lines(stderr).map_while(Result::ok);
    let said = lines.by_ref().find(|l| l.starts_with("[launch] node 0/2"));
    assert!(said.is_some(), "the agent ended before it waited");
    let t0 = Instant::now();
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(waiting.id() as i32, libc::SIGTERM) };
    let rest: Vec<String> = lines.collect(); // (its last words, read to the end so that it can write them)
    let status = waiting.wait().unwrap();
    let rest = rest.join("\n");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}\n{rest}");
    assert!(t0.elapsed() < Duration::from_secs(5), "the signal took {:?}\n{rest}", t0.elapsed());
}

/// The agent's own command-line errors exit 2 (a bad invocation, which a scheduler should not retry)
/// and name the option, before anything starts.
#[test]
fn a_bad_launch_command_line_exits_2_naming_the_option() {
    for (args, want) in [
        (&["--run-id", "../escape"][..], "--run-id \"../escape\": expected letters"),
        (&["--rdzv", ":29500"], "--rdzv :29500: expected HOST:PORT (no host given)"),
        (&["--node-rank", "3"], "--node-rank below --nnodes (3 of 1)"),
        (&["--local-ranks-filter", "0,4"], "--local-ranks-filter 0,4: this node runs local ranks 0 to 0"),
        (&["--local-ranks-filter", "1-"], "expected local ranks as `0`, `0,3` or `0-3,6`, found `1-`"),
    ] {
        let out = Command::new(BIN).arg("launch").args(args).args(["--", "train", "none.toml"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// Ranks started with different settings stop before their first step (exit 2, not restarted), the
/// rank that differs naming each setting (rank 0's value → its own); a setting a node may choose for
/// itself (`data.workers`) is not one of them.
#[test]
fn ranks_whose_configs_differ_stop_naming_the_settings() {
    let (tmp, cfg) = setup(2);
    let run = tmp.path().join("run");
    let script = format!(
        "extra=; if [ \"$RANK\" = 1 ]; then extra='--set optim.lr=1e-3 --set data.workers=3'; fi; \
         exec {BIN} train {} --set run.dir={} $extra",
        cfg.display(),
        run.display()
    );
    let out = Command::new(BIN)
        .args(["launch", "--nproc-per-node", "2", "--grace-s", "20", "--max-restarts", "2"])
        .arg("--log-dir")
        .arg(run.join("logs"))
        .args(["--", "bash", "-c", &script])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("config differs from rank 0's") && !text.contains("attempt 1"), "{text}");
    let rank1 = std::fs::read_to_string(launch_logs(&run.join("logs")).join("attempt_0/rank_1.log")).unwrap();
    assert!(
        rank1.contains("rank 1's config differs from rank 0's: optim.lr: 0.002 → 0.001")
            && !rank1.contains("data.workers"),
        "{rank1}"
    );
    assert!(!run.join("metrics.jsonl").exists(), "a step was trained");
    // the root cause is the rank whose config differs, not rank 0
    assert!(text.contains("Root cause: rank 1"), "{text}");
}

/// Each rank hashes its share of the shards (shard i: rank i mod world): a damaged shard stops its
/// rank with exit code 65, naming it, and so the group, which is not restarted (it would read the same
/// bytes); the other rank does not hash it.
#[test]
fn a_damaged_shard_stops_the_rank_that_hashes_it_and_the_group() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    // the same rows in shards of 16 (a shard closes at its first record batch)
    let writer = infinity_data::writer::WriterOptions { batch_rows: 16, shard_bytes: 1, overwrite: true };
    let opts =
        SynthOptions { writer, tokenizer: Some(tmp.path().join("tokenizer.safetensors")), ..common::small_options() };
    std::fs::copy(data.join("tokenizer.safetensors"), tmp.path().join("tokenizer.safetensors")).unwrap();
    synth(&data, &opts).unwrap();
    let cfg = config(tmp.path(), &data, 2);
    let shard = data.join("shard-00001.arrow");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();

    let run = tmp.path().join("run");
    let out = launch(2, &cfg, &run, &["--max-restarts", "2"], &[]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(65), "{text}");
    assert!(!text.contains("attempt 1"), "{text}");
    let log = |rank: usize| {
        std::fs::read_to_string(launch_logs(&run.join("logs")).join(format!("attempt_0/rank_{rank}.log"))).unwrap()
    };
    let rank1 = log(1);
    assert!(rank1.contains("shard-00001.arrow") && rank1.contains("crc32c"), "{rank1}");
    assert!(!log(0).contains("crc32c"), "{}", log(0));
    assert!(!run.join("metrics.jsonl").exists(), "a step was trained");
}

/// Ranks torchrun starts (`torchrun --no-python … infinity train`): its agent holds MASTER_PORT with a
/// store of its own (here a listener standing in for it), so rank 0 hosts ours at the next port; the
/// run trains, under torchrun's run id.
#[test]
fn ranks_torchrun_starts_leave_its_store_port_to_it() {
    let (tmp, cfg) = setup(2);
    let run = tmp.path().join("run");
    // (torchrun's store, bound on every interface as its TCPStore is, at a port whose next is free)
    let bind = |port: u16| std::net::TcpListener::bind(("0.0.0.0", port));
    let torchrun_store = std::iter::repeat_with(|| bind(0).unwrap())
        .take(50)
        .find(|l| l.local_addr().unwrap().port().checked_add(1).is_some_and(|next| bind(next).is_ok()))
        .expect("a free port whose next is free");
    let port = torchrun_store.local_addr().unwrap().port().to_string();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(BIN)
                .args(["train"])
                .arg(&cfg)
                .arg("--set")
                .arg(format!("run.dir={}", run.display()))
                .envs([("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1")])
                .envs([("MASTER_PORT", port.as_str()), ("TORCHELASTIC_USE_AGENT_STORE", "True")])
                .envs([("TORCHELASTIC_RUN_ID", "tr-1"), ("TORCHELASTIC_RESTART_COUNT", "0")])
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "rank {rank}: {text}");
    }
    drop(torchrun_store);
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
    assert!(summary.contains("\"finished\": true"), "{summary}");
}
