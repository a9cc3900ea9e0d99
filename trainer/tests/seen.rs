//! What a run has seen: `metrics.jsonl`'s `samples_seen`, `tokens_seen` and `flops_seen` add up each
//! step's own rows, tokens and FLOPs, `val.jsonl` has them at each evaluation, and a resumed run counts
//! on exactly as an uninterrupted one, from a checkpoint of an earlier build too (recounted from the log).

mod common;

use std::path::{Path, PathBuf};

use infinity_trainer::train::config::{TrainConfig, ValSection};
use infinity_trainer::train::{train, TrainOptions};
use serde_json::Value;

/// The tiny run, validated every 3 steps on 16 rows of its own data.
fn config(data: &Path, run: PathBuf) -> TrainConfig {
    let mut c = common::tiny_config(data, run);
    c.val = ValSection { dir: Some(data.to_path_buf()), every: 3, max_rows: 16, seed: 0, ..Default::default() };
    c
}

fn lines(run: &Path, log: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join(log)).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Each line's step and counts (`null` where absent).
fn counts(run: &Path, log: &str) -> Vec<[Value; 4]> {
    let of = |v: &Value| ["step", "samples_seen", "tokens_seen", "flops_seen"].map(|k| v[k].clone());
    lines(run, log).iter().map(of).collect()
}

/// Stops `cfg`'s run after step 4 (its newest checkpoint is step 3's), lets `edit` change the run
/// folder, and resumes it to the end.
fn interrupted(cfg: &TrainConfig, edit: impl FnOnce(&Path)) {
    train(cfg, &TrainOptions { stop_after: Some(4), ..Default::default() }).unwrap();
    edit(&cfg.run.dir);
    let ckpt = cfg.run.dir.join("checkpoints/step-00000003");
    train(cfg, &TrainOptions { resume: Some(ckpt), ..Default::default() }).unwrap();
}

/// Rewrites the checkpoint of step 3 as an earlier build wrote it: a `state.json` without `seen`, and
/// a `DONE` marker with that file's checksum.
fn as_an_earlier_build_saved_it(run: &Path) {
    common::reseal_state(&run.join("checkpoints/step-00000003"), |state| {
        assert!(state.as_object_mut().unwrap().remove("seen").is_some(), "no counts in {state}");
    });
}

#[test]
fn a_run_counts_what_it_has_seen_and_a_resume_counts_on() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::tiny_dataset(&data, 96);
    let whole = config(&data, tmp.path().join("whole"));
    train(&whole, &TrainOptions::default()).unwrap();

    // each step adds its own rows, tokens and FLOPs (what its throughput figures count)
    let steps = lines(&whole.run.dir, "metrics.jsonl");
    assert_eq!(steps.len(), 6);
    let (mut samples, mut tokens, mut flops) = (0u64, 0.0, 0.0);
    let mut buckets = std::collections::BTreeSet::new();
    for m in &steps {
        let f = |k: &str| m[k].as_f64().unwrap();
        samples += m["global_batch"].as_u64().unwrap();
        tokens += f("tokens_per_s") * f("step_time_s");
        flops += f("tflops_per_device") * 1e12 * f("step_time_s");
        buckets.insert(m["bucket"].as_u64().unwrap());
        assert_eq!(m["samples_seen"].as_u64(), Some(samples), "{m}");
        let near = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b;
        assert!(near(m["tokens_seen"].as_u64().unwrap() as f64, tokens), "{tokens} tokens: {m}");
        assert!(near(f("flops_seen"), flops), "{flops} FLOPs: {m}");
    }
    assert!(buckets.len() > 1, "the steps drew one bucket ({buckets:?}): the counts were not tested per bucket");
    // the validations at steps 3 and 6 carry the counts of their step
    let at = |step: u64| steps.iter().find(|m| m["step"] == step).unwrap();
    let vals = lines(&whole.run.dir, "val.jsonl");
    assert_eq!(vals.len(), 2);
    for v in &vals {
        for k in ["samples_seen", "tokens_seen", "flops_seen"] {
            assert_eq!(v[k], at(v["step"].as_u64().unwrap())[k], "{k}: {v}");
        }
    }

    // a resume counts on from its checkpoint: every line as the uninterrupted run's, bit for bit
    let split = config(&data, tmp.path().join("split"));
    interrupted(&split, |_| {});
    assert_eq!(counts(&split.run.dir, "metrics.jsonl"), counts(&whole.run.dir, "metrics.jsonl"));
    assert_eq!(counts(&split.run.dir, "val.jsonl"), counts(&whole.run.dir, "val.jsonl"));

    // a checkpoint of an earlier build has no counts: they are recounted from metrics.jsonl
    let earlier = config(&data, tmp.path().join("earlier"));
    interrupted(&earlier, as_an_earlier_build_saved_it);
    assert_eq!(counts(&earlier.run.dir, "metrics.jsonl"), counts(&whole.run.dir, "metrics.jsonl"));
    assert_eq!(counts(&earlier.run.dir, "val.jsonl"), counts(&whole.run.dir, "val.jsonl"));
    // (into a new folder, from the checkpoint's own run folder's log)
    let moved = config(&data, tmp.path().join("moved"));
    let ckpt = earlier.run.dir.join("checkpoints/step-00000003");
    train(&moved, &TrainOptions { resume: Some(ckpt), ..Default::default() }).unwrap();
    assert_eq!(counts(&moved.run.dir, "metrics.jsonl"), counts(&whole.run.dir, "metrics.jsonl")[3..]);
    // (and eval's lines of that checkpoint alike)
    let out = tmp.path().join("eval.jsonl");
    let run = earlier.run.dir.to_str().unwrap();
    infinity_trainer::cli::run(["infinity", "eval", run, "--all", "--out", out.to_str().unwrap()]).unwrap();
    let evals: Vec<[Value; 4]> = counts(tmp.path(), "eval.jsonl");
    assert_eq!(evals, counts(&whole.run.dir, "val.jsonl"));

    // ... and where the log misses a step, the rest of the run has none rather than a guess
    let gap = config(&data, tmp.path().join("gap"));
    interrupted(&gap, |run| {
        as_an_earlier_build_saved_it(run);
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("{\"step\":2,")).collect();
        assert_eq!(kept.len(), 3, "step 2's line was not removed");
        std::fs::write(run.join("metrics.jsonl"), kept.join("\n") + "\n").unwrap();
    });
    let after: Vec<[Value; 4]> = counts(&gap.run.dir, "metrics.jsonl").into_iter().skip(2).collect();
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|c| c[1..].iter().all(Value::is_null)), "{after:?}");
    assert!(counts(&gap.run.dir, "val.jsonl")[1][1..].iter().all(Value::is_null));
    let state = std::fs::read_to_string(gap.run.dir.join("checkpoints/step-00000006/state.json")).unwrap();
    assert!(!state.contains("\"seen\""), "{state}");
}
