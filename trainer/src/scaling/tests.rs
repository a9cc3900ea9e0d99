//! `analyse` on run folders written as `infinity train` leaves them: which runs the fits take, the
//! points they make, and what the report says about the rest.

use std::path::Path;

/// A run folder as `infinity train` leaves it: `derived.json`, `summary.json`, `val.jsonl` (its losses,
/// `None` written as null) and a `config.toml` that differs where the run does (N, D, C).
fn run(root: &Path, name: &str, (n, d, c): (f64, f64, f64), val: &[Option<f64>], data: &str) {
    let config = format!("[val]\ndir = \"/data/val\"\n[x]\nn = {n:e}\nd = {d:e}\nc = {c:e}\n");
    run_with(root, name, (n, d, c), val, data, &config);
}

/// [`run`] with a `config.toml` of its own.
fn run_with(root: &Path, name: &str, (n, d, c): (f64, f64, f64), val: &[Option<f64>], data: &str, config: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let steps = 10 * val.len().max(1) as u64;
    let model = crate::model::ModelConfig::preset("tiny").unwrap();
    let derived = serde_json::json!({
        "parameters": n, "tokens_per_step_mean": d / steps as f64,
        "train_flops_per_step_mean": c / steps as f64, "model": model, "dataset": { "fingerprint": data },
    });
    let last = val.last().copied().flatten().unwrap_or(f64::NAN);
    let summary = serde_json::json!({ "step": steps, "loss": last, "finished": true });
    std::fs::write(dir.join("derived.json"), derived.to_string()).unwrap();
    std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
    let lines: String = val
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{}\n", serde_json::json!({"step": 10 * (i + 1), "loss": l})))
        .collect();
    std::fs::write(dir.join("val.jsonl"), lines).unwrap();
    std::fs::write(dir.join("config.toml"), config).unwrap();
}

/// A complete checkpoint of step 20 in run `dir` whose state records `fingerprint` for `val.dir`.
fn validated_on(dir: &Path, fingerprint: &str) {
    use crate::train::checkpoint::TrainState;
    let loader = infinity_data::loader::LoaderState {
        seed: 0,
        global_batch: 4,
        batches_done: 20,
        dataset: "d".into(),
        buckets: None,
        mix: None,
        earlier_sizes: Vec::new(),
        tokenizer: None,
        rows_changed_at: None,
    };
    let sets = [("val.dir".to_string(), fingerprint.to_string())].into();
    let state = TrainState { version: 1, step: 20, val_sets: Some(sets), ..TrainState::fresh(loader) };
    let ckpt = crate::train::checkpoint::step_dir(dir, 20);
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::write(ckpt.join("state.json"), serde_json::to_string(&state).unwrap()).unwrap();
    std::fs::write(ckpt.join(crate::train::checkpoint::DONE), "").unwrap();
}

/// A fitted run whose loss ends above chance (ln 2) is warned of by name; runs below it are not.
#[test]
fn a_fitted_loss_above_chance_is_warned_of() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    run(root, "r0", (1e7, 1e7, 1e15), &[Some(0.45)], "a");
    run(root, "r1", (1e8, 1e8, 1e16), &[Some(40000.0)], "a");
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    let warnings = r.warnings.join("\n");
    assert!(warnings.contains("loss ends above chance") && warnings.contains("r1 (40000.0000)"), "{warnings}");
    assert!(!warnings.contains("r0 ("), "{warnings}");
}

/// One validation folder rebuilt in place between runs (its rows changed, its path not): the runs'
/// checkpoints recorded other fingerprints of it, so their losses are measured differently.
#[test]
fn a_validation_set_rebuilt_in_place_measures_differently() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for (i, c) in [1e15, 1e16, 1e17].into_iter().enumerate() {
        law_run(root, &format!("r{i}"), c, "a");
        validated_on(&root.join(format!("r{i}")), if i < 2 { "old" } else { "rebuilt" });
    }
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    let warnings = r.warnings.join("\n");
    assert!(warnings.contains("measured in 2 different ways") && warnings.contains("left out: r2"), "{warnings}");
    assert!(warnings.contains("/data/val (fingerprint rebuilt)"), "{warnings}");
    // one fingerprint among them, and a run that recorded none (no checkpoint): one group
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for (i, c) in [1e15, 1e16, 1e17].into_iter().enumerate() {
        law_run(root, &format!("r{i}"), c, "a");
        if i < 2 {
            validated_on(&root.join(format!("r{i}")), "same");
        }
    }
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    let warnings = r.warnings.join("\n");
    assert!(!warnings.contains("different ways") && !warnings.contains("fingerprint"), "{warnings}");
    // one folder written three ways (`..`, a trailing slash, as it is) is one way of measuring
    let tmp = tempfile::tempdir().unwrap();
    let (root, val) = (tmp.path().join("runs"), tmp.path().join("val"));
    std::fs::create_dir_all(&val).unwrap();
    let spellings = [format!("{}/../val", root.display()), format!("{}/", val.display()), val.display().to_string()];
    for (i, (c, dir)) in [1e15f64, 1e16, 1e17].into_iter().zip(spellings).enumerate() {
        let l = 10.0 * c.powf(-0.05);
        let config = format!("[val]\ndir = \"{dir}\"\n[x]\nc = {c:e}\n");
        run_with(&root, &format!("r{i}"), (c.sqrt() / 10.0, c.sqrt() * 10.0 / 6.0, c), &[Some(l)], "a", &config);
    }
    let r = super::analyse(&[&root], &root.join("scaling"), &[]).unwrap();
    let warnings = r.warnings.join("\n");
    assert!(!warnings.contains("different ways") && r.power.as_ref().is_some_and(|p| p.n == 3), "{warnings}");
}

fn set_finished(dir: &Path, finished: bool) {
    let p = dir.join("summary.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["finished"] = finished.into();
    std::fs::write(p, v.to_string()).unwrap();
}

/// Power-law runs: loss 10·C^(−0.05), N·D·6 = C.
fn law_run(root: &Path, name: &str, c: f64, data: &str) {
    let l = 10.0 * c.powf(-0.05);
    run(root, name, (c.sqrt() / 10.0, c.sqrt() * 10.0 / 6.0, c), &[Some(l * 1.1), Some(l)], data);
}

/// A `runs.csv` line's first 14 columns, those of its first version (later columns are appended).
fn first_columns(line: &str) -> String {
    line.split(',').take(14).collect::<Vec<_>>().join(",")
}

#[test]
fn a_sweep_under_way_gets_its_tables_and_no_fits() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for (i, c) in [1e15, 1e16].into_iter().enumerate() {
        law_run(root, &format!("r{i}"), c, "a");
        set_finished(&root.join(format!("r{i}")), false);
    }
    // one still training, before its first summary
    std::fs::create_dir_all(root.join("r2")).unwrap();
    std::fs::write(root.join("r2/config.toml"), "").unwrap();
    let lock = crate::train::run_lock::RunLock::acquire(&root.join("r2")).unwrap();
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    let notes = r.notes.join("\n");
    assert!(notes.contains("still training (their folders' locks are held; no summary.json yet): r2"), "{notes}");
    assert!(!notes.contains("stopped before their first checkpoint"), "{notes}");
    assert!(notes.contains("loss_vs_compute: not drawn"), "{notes}");
    assert!(r.power.is_none() && root.join("scaling/runs.csv").is_file() && root.join("scaling/fits.md").is_file());
    assert!(!root.join("scaling/loss_vs_compute.png").exists());
    assert!(r.files.iter().all(|f| f.exists()), "{:?}", r.files);
    drop(lock);
    // (the lock let go: never started, with its config alone; with a log, failed before its first checkpoint)
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    assert!(r.notes.join("\n").contains("left out (not started: a config.toml alone, no log): r2"), "{:?}", r.notes);
    // (a log of its own steps, killed before its first checkpoint, is a log too)
    for log in ["metrics.jsonl", "train.log"] {
        let _ = std::fs::remove_file(root.join("r2/metrics.jsonl"));
        std::fs::write(root.join("r2").join(log), "{\"step\": 1}\n").unwrap();
        let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
        let notes = r.notes.join("\n");
        assert!(notes.contains("no summary.json: stopped before their first checkpoint, failed or killed"), "{notes}");
    }
    // (with a checkpoint, its summary was lost: it did not stop before its first checkpoint)
    std::fs::create_dir_all(root.join("r2/checkpoints/step-00000002")).unwrap();
    std::fs::write(root.join("r2/checkpoints/step-00000002/model.safetensors"), b"").unwrap();
    let notes = super::analyse(&[root], &root.join("scaling"), &[]).unwrap().notes.join("\n");
    assert!(notes.contains("stopped before their first checkpoint"), "an incomplete one is none: {notes}");
    std::fs::write(root.join("r2/checkpoints/step-00000002/DONE"), b"").unwrap();
    let notes = super::analyse(&[root], &root.join("scaling"), &[]).unwrap().notes.join("\n");
    assert!(notes.contains("no summary.json, though they have checkpoints: the file removed, or lost in a copy): r2"));
    assert!(!notes.contains("stopped before their first checkpoint"), "{notes}");
}

#[test]
fn fits_take_one_dataset_the_compute_frontier_and_finite_final_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for (i, c) in [1e15, 1e16, 1e17, 1e18].into_iter().enumerate() {
        law_run(root, &format!("r{i}"), c, "a");
    }
    // above the frontier: more compute than r1, a higher loss than r1
    run(root, "r1-big", (1e8, 1e8, 2e16), &[Some(9.0)], "a");
    // on another dataset
    law_run(root, "x0", 1e15, "b");
    law_run(root, "x1", 1e16, "b");
    // the last validation loss NaN (null): diverged, whatever came before
    run(root, "r9-nan", (1e8, 1e8, 1e19), &[Some(0.5), None], "a");
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    let power = r.power.as_ref().unwrap();
    assert_eq!(power.n, 4, "the frontier of dataset a: r0..r3");
    assert!((power.get("b") - 0.05).abs() < 1e-9, "{power:?}");
    let notes = r.notes.join("\n");
    assert!(notes.contains("compute frontier") && notes.contains("not in L(C): r1-big"), "{notes}");
    assert!(notes.contains("final validation loss NaN, null in val.jsonl: treated as diverged): r9-nan"), "{notes}");
    assert!(!notes.contains("runs without validation"), "every run has validation:\n{notes}");
    let warnings = r.warnings.join("\n");
    assert!(warnings.contains("measured in 2 different ways"), "{warnings}");
    assert!(
        warnings.contains("left out: x0, x1 (dataset = b (fitted: a))")
            && warnings.contains("the fits take the 5 runs on dataset a (d = "),
        "{warnings}"
    );
    let csv = std::fs::read_to_string(root.join("scaling/runs.csv")).unwrap();
    assert!(
        first_columns(csv.lines().next().unwrap())
            .ends_with(",finished,diverged,fitted,on_frontier,point,smoothed_train_loss"),
        "{csv}"
    );
    assert!(
        csv.lines().any(|l| l.starts_with("r1-big,") && first_columns(l).ends_with(",true,false,true,false,3,")),
        "{csv}"
    );
    assert!(
        csv.lines().any(|l| l.starts_with("x0,") && first_columns(l).ends_with(",true,false,false,false,,")),
        "{csv}"
    );
    // (diverged in the table as in the notes: it read false)
    assert!(
        csv.lines()
            .any(|l| l.starts_with("r9-nan,") && l.contains(",NaN,") && first_columns(l).contains(",true,true,")),
        "{csv}"
    );
    // a loss that rises with compute is flagged
    let tmp = tempfile::tempdir().unwrap();
    for (i, c) in [1e15, 1e16, 1e17].into_iter().enumerate() {
        run(tmp.path(), &format!("u{i}"), (1e6, 1e6, c), &[Some(1.0 + 0.1 * i as f64)], "a");
    }
    let r = super::analyse(&[tmp.path()], &tmp.path().join("s"), &[]).unwrap();
    // (a rising loss leaves one run on the frontier: nothing to fit L(C) to, and a warning)
    assert!(r.power.is_none() && r.notes.join("\n").contains("not in L(C): u1, u2"), "{:?}", r.notes);
    assert!(r.warnings.join("\n").contains("does not fall with compute over the 3 fitted points"), "{:?}", r.warnings);
}

/// Runs of one config with other seeds (or in another folder) are one point of the fits, at their mean
/// loss: counted as independent points, they shrank the intervals, and a law of as many coefficients as
/// configs fitted them exactly without a word.
#[test]
fn repeats_of_a_config_are_one_point() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let seeded = |name: &str, c: f64, seed: u64, wobble: f64| {
        let l = 10.0 * c.powf(-0.05) * wobble;
        let config = format!("[run]\ndir = \"/x/{name}\"\nseed = {seed}\n[val]\ndir = \"/v\"\n[x]\nc = {c:e}\n");
        run_with(root, name, (c.sqrt() / 10.0, c.sqrt() * 10.0 / 6.0, c), &[Some(l)], "a", &config);
    };
    for (i, c) in [1e15, 1e16, 1e17].into_iter().enumerate() {
        seeded(&format!("c{i}-s1"), c, 1, 1.01);
        seeded(&format!("c{i}-s2"), c, 2, 0.99);
    }
    // the same config (seed 1) again in another folder
    seeded("c2-s1-copy", 1e17, 1, 1.01);
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    assert_eq!(r.points.len(), 3, "{:?}", r.points);
    assert_eq!(r.points.iter().map(|p| p.n()).collect::<Vec<_>>(), [2, 2, 3]);
    let p0 = &r.points[0];
    assert!((p0.loss / (10.0 * 1e15f64.powf(-0.05)) - 1.0).abs() < 1e-12, "the mean of ±1 %");
    assert!(p0.std.is_some_and(|sd| (sd / (p0.loss * 0.02f64 / 2f64.sqrt()) - 1.0).abs() < 1e-6), "{p0:?}");
    let power = r.power.as_ref().unwrap();
    assert_eq!((power.n, power.runs), (3, 7));
    let notes = r.notes.join("\n");
    assert!(
        notes.contains("7 runs are repeats of 3 configs") && notes.contains("c2-s1 + c2-s1-copy + c2-s2"),
        "{notes}"
    );
    assert!(
        notes.contains(
            "E + a·C^(−b): not fitted (a power law with an irreducible term needs at least 4 points, found 3)"
        ),
        "{notes}"
    );
    let md = std::fs::read_to_string(root.join("scaling/fits.md")).unwrap();
    assert!(md.contains("3 points (from 7 runs)") && md.contains("## Fitted points"), "{md}");
    assert!(md.contains("| 3 | c2-s1, c2-s1-copy, c2-s2 |"), "{md}");
    assert_eq!(r.pearson.all.1, 3);
    // (the copy has c2-s1's seed: one run twice, which is said)
    let warnings = r.warnings.join("\n");
    assert!(warnings.contains("runs of one config with one seed: c2-s1-copy = c2-s1 (run.seed 1) ("), "{warnings}");
    let csv = std::fs::read_to_string(root.join("scaling/runs.csv")).unwrap();
    assert!(csv.lines().any(|l| l.starts_with("c2-s1-copy,") && first_columns(l).ends_with(",true,true,3,")), "{csv}");

    // two configs, each run twice: 2 points for 2 coefficients is an exact fit, and says so
    for name in ["c2-s1", "c2-s2", "c2-s1-copy"] {
        std::fs::remove_dir_all(root.join(name)).unwrap();
    }
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    let power = r.power.as_ref().unwrap();
    assert_eq!((power.n, power.runs), (2, 4));
    assert!(power.coefs.iter().all(|c| c.ci95.is_none()));
    let warnings = r.warnings.join("\n");
    assert!(warnings.contains("L = a·C^(−b): 2 distinct points for 2 coefficients: the fit is exact"), "{warnings}");
    assert!(!warnings.contains("with one seed"), "other seeds are repeats: {warnings}");
}

/// Validation losses over other rows, another noise seed or another loss setting are not comparable:
/// those runs are left out, naming what differs.
#[test]
fn losses_measured_differently_are_not_fitted_together() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let with = |name: &str, c: f64, rows: usize, extra: &str| {
        let l = 10.0 * c.powf(-0.05);
        let config = format!("[val]\ndir = \"/v\"\nmax_rows = {rows}\n{extra}[x]\nc = {c:e}\n");
        run_with(root, name, (c.sqrt() / 10.0, c.sqrt() * 10.0 / 6.0, c), &[Some(l)], "a", &config);
    };
    for (i, c) in [1e15, 1e16, 1e17, 1e18].into_iter().enumerate() {
        with(&format!("r{i}"), c, 48, "");
    }
    with("rows", 1e19, 64, "");
    with("smooth", 2e19, 48, "[loss]\nlabel_smoothing = 0.1\n[bsc]\np_max = 0.2\n");
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    assert_eq!(r.power.as_ref().unwrap().n, 4);
    let warnings = r.warnings.join("\n");
    assert!(warnings.contains("measured in 3 different ways"), "{warnings}");
    assert!(warnings.contains("rows (val.max_rows = 64 (fitted: 48))"), "{warnings}");
    assert!(
        warnings.contains("smooth (loss.label_smoothing = 0.1 (fitted: 0), bsc.p_max = 0.2 (fitted: 0.3))"),
        "{warnings}"
    );
}

/// A degenerate L(N, D) (no floor in the losses: E runs to 0) is a warning whether or not budgets were
/// asked for.
#[test]
fn a_degenerate_chinchilla_fit_is_warned_about_without_budgets() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, n) in [2.0e5f64, 1.0e6, 5.0e6].into_iter().enumerate() {
        for (j, d) in [1.0e7f64, 5.0e7, 2.0e8].into_iter().enumerate() {
            let l = 40.0 * n.powf(-0.45) + 600.0 * d.powf(-0.35);
            run(tmp.path(), &format!("g{i}-{j}"), (n, d, 6.0 * n * d), &[Some(l)], "a");
        }
    }
    let r = super::analyse(&[tmp.path()], &tmp.path().join("scaling"), &[]).unwrap();
    assert!(r.chinchilla.is_some(), "{:?}", r.notes);
    let warnings = r.warnings.join("\n");
    assert!(warnings.contains("the L(N, D) fit is degenerate: E ran to"), "{warnings}");
}

/// A log's last line cut short (a run killed mid-write) is skipped with a note; a malformed line
/// before it leaves that run out, naming the file and line, and the analysis goes on.
#[test]
fn malformed_log_lines_leave_one_run_out_not_the_analysis() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for (i, c) in [1e15, 1e16, 1e17, 1e18].into_iter().enumerate() {
        law_run(root, &format!("r{i}"), c, "a");
    }
    // (a summary without `finished` is no stopped run's: it is named, not taken for one to resume)
    let summary = root.join("r3/summary.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("finished");
    std::fs::write(&summary, v.to_string()).unwrap();
    let val = root.join("r0/val.jsonl");
    std::fs::write(&val, std::fs::read_to_string(&val).unwrap() + "{\"step\":30,\"lo").unwrap();
    std::fs::write(root.join("r1/metrics.jsonl"), "{\"step\":1,\"loss\":0.7}\nnot json\n{\"step\":2,\"loss\":0.6}\n")
        .unwrap();
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    let names: Vec<&str> = r.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["r0", "r2"]);
    assert_eq!(r.power.as_ref().unwrap().n, 2, "r0's complete lines count");
    let notes = r.notes.join("\n");
    assert!(notes.contains("r0/val.jsonl line 3: cut short (a run killed mid-write), skipped"), "{notes}");
    assert!(
        notes.contains("left out (unreadable): ") && notes.contains("r1/metrics.jsonl line 2: not JSON"),
        "{notes}"
    );
    assert!(notes.contains("r3: `finished` missing in summary.json") && !notes.contains("not finished"), "{notes}");
}

/// A diverged run's loss (up to 1e17 here) does not set the curves' y range, and a compute range
/// within one decade still gets labelled ticks.
#[test]
fn figures_keep_a_diverged_run_off_the_scale_and_label_narrow_ranges() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for (i, c) in [2e15, 4e15, 8e15].into_iter().enumerate() {
        law_run(root, &format!("r{i}"), c, "a");
    }
    run(root, "wild", (1e7, 1e8, 6e15), &[], "a");
    let summary = serde_json::json!({ "step": 10, "loss": null, "finished": false, "diverged": true });
    std::fs::write(root.join("wild/summary.json"), summary.to_string()).unwrap();
    std::fs::write(root.join("wild/metrics.jsonl"), "{\"step\":5,\"loss\":0.69}\n{\"step\":10,\"loss\":5e17}\n")
        .unwrap();
    super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    let svg = std::fs::read_to_string(root.join("scaling/loss_curves.svg")).unwrap();
    assert!(svg.contains("diverged runs leave it") && !svg.contains("00000000"), "the y range is the other runs'");
    // (its points all outside the frame, it has no legend entry: the caption names it)
    assert!(svg.contains("; diverged, not drawn: wild"), "{svg}");
    let svg = std::fs::read_to_string(root.join("scaling/loss_vs_compute.svg")).unwrap();
    assert!(svg.contains("\n2e15\n") && svg.contains("\n5e15\n"), "ticks within the decade");
    let csv = std::fs::read_to_string(root.join("scaling/runs.csv")).unwrap();
    assert!(csv.lines().any(|l| l.starts_with("wild,") && l.contains(",false,true,false,false,")), "{csv}");
}

/// Runs validated once, at their end (`val.every = 0`), are a dot each in the loss curves: a line
/// through one point would draw nothing.
#[test]
fn a_curve_of_one_point_is_drawn_as_a_dot() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for (i, c) in [2e15_f64, 4e15, 8e15].into_iter().enumerate() {
        run(root, &format!("r{i}"), (c.sqrt() / 10.0, c.sqrt() * 10.0 / 6.0, c), &[Some(10.0 * c.powf(-0.05))], "a");
    }
    super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    let svg = std::fs::read_to_string(root.join("scaling/loss_curves.svg")).unwrap();
    assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
}

/// A run without validation, as `infinity train` leaves it: 99 steps whose training losses alternate
/// between two buckets, `l`·(1 ± 0.05) (`phase` picks which the last step drew), `summary.json`'s loss
/// the last step's. Returns `l` (10·C^(−0.05)) and that last loss.
fn train_run(root: &Path, name: &str, c: f64, phase: u64) -> (f64, f64) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (l, steps) = (10.0 * c.powf(-0.05), 99u64);
    let at = |s: u64| l * if (s + phase).is_multiple_of(2) { 1.05 } else { 0.95 };
    let derived = serde_json::json!({
        "parameters": c.sqrt() / 10.0, "tokens_per_step_mean": c.sqrt() * 10.0 / 6.0 / steps as f64,
        "train_flops_per_step_mean": c / steps as f64, "dataset": { "fingerprint": "a" },
    });
    let summary = serde_json::json!({ "step": steps, "loss": at(steps), "finished": true });
    std::fs::write(dir.join("derived.json"), derived.to_string()).unwrap();
    std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
    let lines: String = (1..=steps)
        .map(|s| format!("{}\n", serde_json::json!({ "step": s, "loss": at(s), "bucket": s % 2 })))
        .collect();
    std::fs::write(dir.join("metrics.jsonl"), lines).unwrap();
    std::fs::write(dir.join("config.toml"), format!("[x]\nc = {c:e}\n")).unwrap();
    (l, at(steps))
}

/// Without validation the fits take the mean training loss over the last 10 % of the steps (of 99:
/// 90–99, five batches of each bucket), not `summary.json`'s loss, the last batch's, which is ±5 % here
/// by the bucket drawn; without `metrics.jsonl` (or with no loss in it), that last loss.
#[test]
fn runs_without_validation_are_fitted_on_their_smoothed_training_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut expected = Vec::new();
    for (i, c) in [1e15, 1e16, 1e17, 1e18].into_iter().enumerate() {
        expected.push(train_run(root, &format!("t{i}"), c, i as u64 % 2));
    }
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    for (run, (l, last)) in r.runs.iter().zip(&expected) {
        assert!(run.smoothed_val.is_none() && (run.final_train - last).abs() < 1e-12, "{run:?}");
        assert!((run.loss() / l - 1.0).abs() < 1e-12, "{}: {} is not the tail mean {l}", run.name, run.loss());
    }
    let power = r.power.as_ref().unwrap();
    assert_eq!(power.n, 4);
    assert!((power.get("b") - 0.05).abs() < 1e-9, "the last batches' ±5 % is not fitted: {power:?}");
    let notes = r.notes.join("\n");
    assert!(notes.contains("fitted on their smoothed training loss") && notes.contains(": t0, t1, t2, t3"), "{notes}");
    assert!(!notes.contains("fitted on their final training loss"), "{notes}");
    let csv = std::fs::read_to_string(root.join("scaling/runs.csv")).unwrap();
    assert!(first_columns(csv.lines().next().unwrap()).ends_with(",point,smoothed_train_loss"), "{csv}");
    let t0 = csv.lines().find(|l| l.starts_with("t0,")).unwrap();
    assert!(t0.contains(&format!(",{:.6},", expected[0].1)), "the final train loss column stays: {t0}");
    assert!(first_columns(t0).ends_with(&format!(",{:.6}", expected[0].0)), "{t0}");

    // no metrics.jsonl, or one without losses: summary.json's loss
    std::fs::remove_file(root.join("t0/metrics.jsonl")).unwrap();
    std::fs::write(root.join("t1/metrics.jsonl"), "").unwrap();
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    for (run, (l, last)) in r.runs.iter().zip(&expected).take(2) {
        assert!(run.smoothed_train.is_none() && run.loss() == *last && (last / l - 1.0).abs() > 0.04, "{run:?}");
    }
    let notes = r.notes.join("\n");
    assert!(notes.contains("(summary.json's: one batch's): t0, t1") && notes.contains("loss (the mean"), "{notes}");
    let csv = std::fs::read_to_string(root.join("scaling/runs.csv")).unwrap();
    assert!(csv.lines().any(|l| l.starts_with("t0,") && first_columns(l).ends_with(',')), "{csv}");
}

/// A skipped non-finite step in the last tenth (null in metrics.jsonl) does not make a finished run's
/// loss NaN; a run without validation that diverged keeps its NaN loss, whatever its last steps logged.
#[test]
fn non_finite_training_losses_and_diverged_runs_without_validation() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (l, _) = train_run(root, "skip", 1e15, 0);
    let p = root.join("skip/metrics.jsonl");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        &format!("{}\n", serde_json::json!({ "step": 95, "loss": l * 0.95, "bucket": 1 })),
        "{\"step\":95,\"loss\":null,\"bucket\":1}\n",
    );
    std::fs::write(&p, text).unwrap();
    let (run, _) = super::runs::read_run(&root.join("skip"), None).unwrap();
    assert!((run.loss() / (l * (5.0 * 1.05 + 4.0 * 0.95) / 9.0) - 1.0).abs() < 1e-12, "{run:?}");

    train_run(root, "wild", 1e16, 0);
    let summary = serde_json::json!({ "step": 99, "loss": null, "finished": false, "diverged": true });
    std::fs::write(root.join("wild/summary.json"), summary.to_string()).unwrap();
    let (run, _) = super::runs::read_run(&root.join("wild"), None).unwrap();
    assert!(run.smoothed_train.is_some() && run.loss().is_nan(), "{run:?}");
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    assert!(r
        .notes
        .join("\n")
        .contains("(diverged: a final result, which `infinity sweep` does not train again): wild"));
}

/// Chinchilla's fitted law (Hoffmann et al. 2022, approach 3): the loss an IsoFLOP design samples.
fn chinchilla_loss(n: f64, d: f64) -> f64 {
    1.69 + 406.4 / n.powf(0.34) + 410.7 / d.powf(0.28)
}

/// The law's compute-optimal N under C = 6·N·D: `G·(C/6)^(β/(α+β))`, `G = (αA/(βB))^(1/(α+β))`.
fn chinchilla_n_opt(c: f64) -> f64 {
    let g = (0.34f64 * 406.4 / (0.28 * 410.7)).powf(1.0 / 0.62);
    g * (c / 6.0).powf(0.28 / 0.62)
}

/// An IsoFLOP design on the law: at each budget, 5 sizes a factor 2 apart around `off`·N_opt.
fn isoflop_runs(root: &Path, budgets: &[(f64, f64)]) {
    for (b, &(c, off)) in budgets.iter().enumerate() {
        for k in -2..=2 {
            let n = chinchilla_n_opt(c) * off * 2f64.powi(k);
            let d = c / (6.0 * n);
            run(root, &format!("c{b}-n{}", k + 2), (n, d, c), &[Some(chinchilla_loss(n, d))], "a");
        }
    }
}

#[test]
fn isoflop_profiles_recover_a_known_laws_compute_optimal_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // the designs are centred off the optimum, as a sweep planned before knowing it is
    isoflop_runs(root, &[(1e18, 1.4), (1e19, 0.8), (1e20, 1.2)]);
    let r = super::analyse(&[root], &root.join("scaling"), &[1e21]).unwrap();
    let iso = &r.isoflop;
    assert_eq!(iso.profiles.len(), 3, "{:?}", r.notes);
    for p in &iso.profiles {
        let o = p.optimum.as_ref().unwrap();
        let truth = chinchilla_n_opt(p.compute);
        assert!(o.inside && (o.params / truth - 1.0).abs() < 0.05, "N_opt {:.4e} vs {truth:.4e}", o.params);
        assert!((o.params * o.tokens * 6.0 / p.compute - 1.0).abs() < 1e-9, "D_opt spends the budget: {o:?}");
        let (lo, hi) = o.params_ci95.unwrap();
        assert!(lo < o.params && o.params < hi, "{o:?}");
    }
    let (a, b) = (iso.params.as_ref().unwrap(), iso.tokens.as_ref().unwrap());
    let errors: Vec<String> = iso
        .profiles
        .iter()
        .map(|p| format!("{:+.2} %", (p.optimum.as_ref().unwrap().params / chinchilla_n_opt(p.compute) - 1.0) * 100.0))
        .collect();
    println!(
        "IsoFLOP on L(N, D), no noise: a = {:.4} ({:.4}), N_opt off by {}",
        a.exponent,
        0.28 / 0.62,
        errors.join(", ")
    );
    assert!((a.exponent - 0.28 / 0.62).abs() < 0.01, "a = {} vs {}", a.exponent, 0.28 / 0.62);
    assert!((a.exponent + b.exponent - 1.0).abs() < 1e-9 && a.n == 3 && a.ci95.is_some(), "{a:?} {b:?}");
    let (c, n, d) = iso.budgets[0];
    assert!(c == 1e21 && (n / chinchilla_n_opt(1e21) - 1.0).abs() < 0.1 && (6.0 * n * d / c - 1.0).abs() < 1e-6);
    assert!(r.warnings.iter().all(|w| !w.contains("IsoFLOP")), "{:?}", r.warnings);
    let md = std::fs::read_to_string(root.join("scaling/fits.md")).unwrap();
    assert!(md.contains("## IsoFLOP profiles") && md.contains("N_opt = k·C^a: a = 0.45"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("scaling/fits.json")).unwrap()).unwrap();
    assert_eq!(json["isoflop"]["profiles"].as_array().unwrap().len(), 3);
    assert!(root.join("scaling/isoflop.png").is_file() && root.join("scaling/isoflop.svg").is_file());
}

#[test]
fn an_isoflop_profile_that_misses_its_optimum_is_warned_about_and_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // the largest budget's sizes all lie far below its optimum: the loss still falls at the largest
    isoflop_runs(root, &[(1e18, 1.0), (1e19, 1.0), (1e20, 1.0 / 64.0)]);
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    let warnings = r.warnings.join("\n");
    assert!(warnings.contains("the IsoFLOP profile at C = 1.000e20"), "{warnings}");
    assert!(warnings.contains("larger models at this budget"), "{warnings}");
    assert!(warnings.contains("pass through the optima of 2 budgets: exact"), "{warnings}");
    assert_eq!(r.isoflop.params.as_ref().unwrap().n, 2);
    // a grid of sizes × tokens has no budget of three sizes: a note, no figure
    let grid = tempfile::tempdir().unwrap();
    for (i, n) in [2.0e5f64, 1.0e6, 4.0e6].into_iter().enumerate() {
        for (j, d) in [1.0e7f64, 5.0e7, 3.0e8].into_iter().enumerate() {
            run(grid.path(), &format!("g{i}-{j}"), (n, d, 6.0 * n * d), &[Some(chinchilla_loss(n, d))], "a");
        }
    }
    let r = super::analyse(&[grid.path()], &grid.path().join("scaling"), &[]).unwrap();
    // (its one budget of two sizes is named instead: not twice)
    let iso: Vec<&String> = r.notes.iter().filter(|n| n.contains("IsoFLOP")).collect();
    assert!(iso.len() == 1 && iso[0].contains("these budgets have fewer: 6.000e13 (2 sizes)"), "{:?}", r.notes);
    assert!(!grid.path().join("scaling/isoflop.png").exists());
    // budgets of one size each: no profile, said once
    let apart = tempfile::tempdir().unwrap();
    for (i, (n, c)) in [(1.0e6f64, 1e18), (4.0e6, 1e19)].into_iter().enumerate() {
        let d = c / (6.0 * n);
        run(apart.path(), &format!("t{i}"), (n, d, c), &[Some(chinchilla_loss(n, d))], "a");
    }
    let r = super::analyse(&[apart.path()], &apart.path().join("scaling"), &[]).unwrap();
    let iso: Vec<&String> = r.notes.iter().filter(|n| n.contains("IsoFLOP")).collect();
    assert!(iso.len() == 1 && iso[0].starts_with("no IsoFLOP profiles"), "{:?}", r.notes);
}

/// An IsoFLOP profile whose sizes all lay above its optimum, completed by a second sweep of smaller
/// models in another folder: read together, the profile brackets its minimum, and the runs of the same
/// name in the two folders stay apart.
#[test]
fn two_sweeps_read_together_make_one_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let (main, smaller, out) = (tmp.path().join("main"), tmp.path().join("smaller"), tmp.path().join("both"));
    isoflop_runs(&main, &[(1e19, 8.0)]);
    let alone = super::analyse(&[&main], &main.join("scaling"), &[]).unwrap();
    assert!(alone.warnings.iter().any(|w| w.contains("add smaller models at this budget")), "{:?}", alone.warnings);
    let c = 1e19;
    for (k, f) in [0.25, 0.5, 1.0, 2.0].into_iter().enumerate() {
        let n = chinchilla_n_opt(c) * f;
        let d = c / (6.0 * n);
        run(&smaller, &format!("c0-n{k}"), (n, d, c), &[Some(chinchilla_loss(n, d))], "a");
    }
    let r = super::analyse(&[&main, &smaller], &out, &[]).unwrap();
    assert_eq!(r.runs.len(), 9);
    assert!(r.runs.iter().any(|r| r.name == "main/c0-n0") && r.runs.iter().any(|r| r.name == "smaller/c0-n0"));
    let [p] = r.isoflop.profiles.as_slice() else { panic!("{:?}", r.isoflop.profiles) };
    // 2·N_opt is in both sweeps, with one config: one point of two runs, as repeats within a sweep are
    assert_eq!(p.measured.len(), 8);
    assert!(r.points.iter().any(|p| p.runs == ["main/c0-n0", "smaller/c0-n3"]), "{:?}", r.points);
    let o = p.optimum.as_ref().unwrap();
    assert!(o.inside && (o.params / chinchilla_n_opt(c) - 1.0).abs() < 0.1, "{o:?}");
    // (one budget: L(C) is not asked to fall with C, which is said)
    let (one_budget, others): (Vec<&String>, Vec<&String>) =
        r.warnings.iter().partition(|w| w.contains("the 8 fitted points share one compute budget"));
    assert!(one_budget.len() == 1 && others.iter().all(|w| !w.contains("IsoFLOP")), "{:?}", r.warnings);
    // nor is L(C), fitted through points 0.2 % apart in compute, predicted at other budgets (the table's "–")
    let near = tmp.path().join("near");
    for (i, c) in [1e15, 1.002e15, 1.004e15].into_iter().enumerate() {
        run(&near, &format!("w{i}"), (1e6 * (i + 1) as f64, 1e6, c), &[Some(1.0 - 0.1 * i as f64)], "a");
    }
    let r = super::analyse(&[&near], &near.join("scaling"), &[1e20]).unwrap();
    let [b] = r.budgets.as_slice() else { panic!("{:?}", r.budgets) };
    assert!(r.power.is_some() && b.loss_power.is_none() && b.loss_power_floor.is_none(), "{b:?}");
    let said = "L(C) at the budgets: withheld (–), the points share one compute budget";
    assert!(r.notes.iter().any(|n| n == said), "{:?}", r.notes);
    // (as are points 13 % apart that a sweep planned for one budget: whole steps overshot it)
    let planned = tmp.path().join("planned");
    for (i, c) in [1e15, 1.06e15, 1.13e15].into_iter().enumerate() {
        run(&planned, &format!("p{i}"), (1e6 * (i + 1) as f64, 1e6, c), &[Some(1.0 - 0.1 * i as f64)], "a");
        std::fs::write(planned.join(format!("p{i}/sweep-point.json")), r#"{"compute": 1e15}"#).unwrap();
    }
    let r = super::analyse(&[&planned], &planned.join("scaling"), &[1e20]).unwrap();
    assert!(r.notes.iter().any(|n| n == said), "{:?}", r.notes);
    let csv = std::fs::read_to_string(out.join("runs.csv")).unwrap();
    assert!(csv.contains("\nsmaller/c0-n0,") && csv.contains("\nmain/c0-n4,"), "{csv}");
    // a folder with nothing to read among others is a note; alone, an error
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let r = super::analyse(&[&main, &empty], &out, &[]).unwrap();
    assert!(r.notes.iter().any(|n| n.ends_with("empty: no run folders with a summary.json (has the sweep run?)")));
    assert!(super::analyse(&[&empty], &out, &[]).is_err());
}

/// `--val-set NAME`: the fits take that validation set's losses (`val.jsonl`'s `sets.NAME`), a run
/// without them is left out, and the set's folder is what the losses are measured on.
#[test]
fn a_validation_set_is_fitted_in_place_of_val_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = "[val]\ndir = \"/data/val\"\n[[val.sets]]\ndir = \"/data/web-val\"\nname = \"web\"\n";
    for (i, c) in [1e15f64, 1e16, 1e17].into_iter().enumerate() {
        let name = format!("r{i}");
        let config = format!("{config}[x]\nc = {c:e}\n");
        run_with(root, &name, (c.sqrt() / 10.0, c.sqrt() * 10.0 / 6.0, c), &[Some(9.0)], "a", &config);
        // the set's loss: 20·C^(−0.1), val.dir's a constant 9
        let web = 20.0 * c.powf(-0.1);
        let line = serde_json::json!({ "step": 10, "loss": 9.0, "sets": { "web": { "loss": web, "bit_acc": 0.6 } } });
        std::fs::write(root.join(&name).join("val.jsonl"), format!("{line}\n")).unwrap();
    }
    run_with(root, "plain", (1e6, 1e7, 6e13), &[Some(9.0)], "a", config);
    let measure = super::Measure { val_set: Some("web"), ..Default::default() };
    let r = super::analyse_with(&[root], &root.join("scaling"), &measure).unwrap();
    let notes = r.notes.join("\n");
    assert!(
        notes.contains("the validation losses are the set web's (val.jsonl's sets.web, else the run's eval.jsonl)"),
        "{notes}"
    );
    assert!(
        notes.contains("left out (no loss of the validation set web in their val.jsonl") && notes.contains(": plain")
    );
    let losses: Vec<f64> = r.points.iter().map(|p| p.loss).collect();
    assert_eq!(losses.len(), 3, "{losses:?}");
    let want: Vec<f64> = [1e15, 1e16, 1e17].iter().map(|c: &f64| 20.0 * c.powf(-0.1)).collect();
    assert!(losses.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12), "{losses:?}");
    let b = r.power.as_ref().unwrap().coefs[1].value;
    assert!((b - 0.1).abs() < 1e-6, "the set's exponent: {b}");
    assert_eq!(r.runs[0].settings.get("val.dir"), "/data/web-val");
    // without the option: val.dir's constant loss
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    assert!(r.points.iter().all(|p| p.loss == 9.0));
    // a set no run has: named with the sets they have
    let measure = super::Measure { val_set: Some("news"), ..Default::default() };
    let e = super::analyse_with(&[root], &root.join("scaling-news"), &measure).err().unwrap().to_string();
    assert!(e.ends_with("no run has a validation set news; their val.sets: web"), "{e}");
}

/// `--val-set NAME` of a set measured after training (`infinity eval RUN --val DIR --name NAME --out
/// RUN/eval.jsonl`): the runs' `eval.jsonl` losses of that set, the weights' (not the moving
/// average's), the last measurement of a step.
#[test]
fn a_validation_set_measured_by_eval_is_fitted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for (i, c) in [1e15f64, 1e16, 1e17].into_iter().enumerate() {
        let name = format!("r{i}");
        run(root, &name, (c.sqrt() / 10.0, c.sqrt() * 10.0 / 6.0, c), &[Some(9.0)], "a");
        let news = 20.0 * c.powf(-0.1);
        let at = |loss: f64, set: Option<&str>, ema: bool| serde_json::json!({ "step": 10, "set": set, "ema": ema, "loss": loss, "val_dir": "/data/news", "rows": 48 });
        let lines = [at(1.0, Some("news"), false), at(news, Some("news"), false), at(2.0, Some("news"), true)];
        // (and, last, a line of another run's weights, which its `run` names: not this run's loss)
        let mut foreign = at(99.0, Some("news"), false);
        foreign["run"] = root.join(format!("r{}", (i + 1) % 3)).display().to_string().into();
        let lines = [&lines[..], &[at(3.0, None, false), foreign]].concat();
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(root.join(&name).join(super::runs::EVAL_FILE), text + "{cut short").unwrap();
    }
    let measure = super::Measure { val_set: Some("news"), ..Default::default() };
    let r = super::analyse_with(&[root], &root.join("scaling"), &measure).unwrap();
    let notes = r.notes.join("\n");
    assert!(
        notes.contains("the validation set news's losses of 3 runs are infinity eval's (their eval.jsonl"),
        "{notes}"
    );
    let losses: Vec<f64> = r.points.iter().map(|p| p.loss).collect();
    let want: Vec<f64> = [1e15, 1e16, 1e17].iter().map(|c: &f64| 20.0 * c.powf(-0.1)).collect();
    assert!(losses.len() == 3 && losses.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12), "{losses:?}");
    // measured on eval's folder and rows, with the run's other validation settings
    assert_eq!((r.runs[0].settings.get("val.dir"), r.runs[0].settings.get("val.max_rows")), ("/data/news", "48"));
}

/// `--parameters non-embedding`: runs whose loss follows the law in the parameters outside the
/// embeddings (a fixed 5e7 of embeddings beside them) have their IsoFLOP optima found in those units;
/// a folder recording neither the count nor the model's shape is left out, named.
#[test]
fn non_embedding_parameters_are_fitted_where_asked() {
    use super::{Measure, Parameters};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let embeddings = 5e7;
    for (b, &(c, off)) in [(1e18, 1.4), (1e19, 0.8), (1e20, 1.2)].iter().enumerate() {
        for k in -2..=2 {
            let n = chinchilla_n_opt(c) * off * 2f64.powi(k);
            let d = c / (6.0 * n);
            let name = format!("c{b}-n{}", k + 2);
            run(root, &name, (n + embeddings, d, c), &[Some(chinchilla_loss(n, d))], "a");
            let path = root.join(&name).join("derived.json");
            let mut derived: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            derived["parameters_non_embedding"] = n.into();
            std::fs::write(&path, derived.to_string()).unwrap();
        }
    }
    // an older build's folder: no count and no shape
    run(root, "old", (1e6, 1e9, 6e15), &[Some(3.0)], "a");
    let path = root.join("old/derived.json");
    let mut derived: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    derived.as_object_mut().unwrap().remove("model");
    std::fs::write(&path, derived.to_string()).unwrap();

    let analysed = |parameters: Parameters, out: &str| {
        let measure = Measure { at_computes: &[1e21], parameters, ..Default::default() };
        super::analyse_with(&[root], &root.join(out), &measure).unwrap()
    };
    let n_opt_error = |r: &super::Report| -> f64 {
        let errors = r
            .isoflop
            .profiles
            .iter()
            .map(|p| (p.optimum.as_ref().unwrap().params / chinchilla_n_opt(p.compute) - 1.0).abs());
        errors.fold(0.0, f64::max)
    };
    let bare = analysed(Parameters::NonEmbedding, "bare");
    assert_eq!(bare.isoflop.profiles.len(), 3, "{:?}", bare.notes);
    assert!(n_opt_error(&bare) < 0.05, "N_opt off by {:.3}", n_opt_error(&bare));
    let notes = bare.notes.join("\n");
    assert!(notes.contains("N counts the parameters outside the embeddings"), "{notes}");
    assert!(notes.contains("left out (derived.json records neither parameters_non_embedding nor the model's shape"));
    assert!(notes.contains("): old"), "{notes}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("bare/fits.json")).unwrap()).unwrap();
    assert_eq!(json["parameters"], "non-embedding");
    // the table keeps both counts; the budget's nearest preset is counted without embeddings too
    let csv = std::fs::read_to_string(root.join("bare/runs.csv")).unwrap();
    let n = chinchilla_n_opt(1e18) * 1.4 / 4.0;
    assert!(csv.lines().any(|l| l.starts_with(&format!("c0-n0,{},", n + embeddings)) && l.ends_with(&format!(",{n}"))));
    // counted whole, the optima sit elsewhere: the embeddings are a larger share of the small models
    let total = analysed(Parameters::Total, "total");
    assert!(n_opt_error(&total) > 0.1, "N_opt off by only {:.3} counting the embeddings", n_opt_error(&total));
    assert!(total.runs.iter().any(|r| r.name == "old"));
}

/// A finished run's validation loss must be of its end: an `infinity eval` of an earlier checkpoint (or a
/// set val.jsonl stopped measuring) is not fitted at the whole run's compute; the run is named with how
/// to measure its end, and fitted once eval.jsonl has it.
#[test]
fn a_validation_loss_measured_part_way_is_not_the_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    run(root, "r", (1e6, 1e8, 6e14), &[Some(3.0), Some(2.0)], "a"); // 20 steps
    let eval = |step: u64, loss: f64| {
        format!("{}\n", serde_json::json!({ "step": step, "set": "news", "loss": loss, "val_dir": "/n", "rows": 8 }))
    };
    std::fs::write(root.join("r").join(super::runs::EVAL_FILE), eval(10, 2.5)).unwrap();
    let e = format!("{:#}", super::runs::read_run(&root.join("r"), Some("news")).unwrap_err());
    assert!(e.contains("(set `news` of eval.jsonl) ends at step 10, but the run finished at step 20"), "{e}");
    assert!(e.contains("--name news --out"), "{e}");
    // (in the notes: left out as short, not as unreadable)
    // (the folder to evaluate on, as its lines say; the only run here: the error lists the notes)
    let e = format!("{:#}", super::runs::gather(&super::roots::roots(&[root]).unwrap(), Some("news")).unwrap_err());
    assert!(e.contains("left out (validation losses short of the run's end)") && e.contains(" --val /n "), "{e}");
    // val.jsonl's set stopped part-way (dropped from val.sets on a resume): eval.jsonl's end is taken
    let val = [r#"{"step":10,"loss":3.0,"sets":{"news":{"loss":2.6}}}"#, r#"{"step":20,"loss":2.0}"#];
    std::fs::write(root.join("r/val.jsonl"), val.join("\n") + "\n").unwrap();
    let e = format!("{:#}", super::runs::read_run(&root.join("r"), Some("news")).unwrap_err());
    assert!(e.contains("ends at step 10"), "{e}");
    std::fs::write(root.join("r").join(super::runs::EVAL_FILE), eval(10, 2.5) + &eval(20, 1.5)).unwrap();
    let (r, _) = super::runs::read_run(&root.join("r"), Some("news")).unwrap();
    assert_eq!((r.final_val, r.val_from_eval), (Some(1.5), true));
    // a run stopped before its end is read as it stands (its table row says so)
    set_finished(&root.join("r"), false);
    std::fs::write(root.join("r").join(super::runs::EVAL_FILE), eval(10, 2.5)).unwrap();
    assert_eq!(super::runs::read_run(&root.join("r"), Some("news")).unwrap().0.final_val, Some(2.6));
}

/// `infinity eval`'s lines name the set's fingerprint: a run's lines of a version of its folder other
/// than its last line's (rebuilt in place between evals) are left out, named; runs measured on two
/// versions of one folder are told apart, as runs validating in training are.
#[test]
fn eval_lines_of_a_set_rebuilt_in_place_are_told_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let eval = |step: u64, loss: f64, fingerprint: Option<&str>| {
        let line = serde_json::json!({ "step": step, "set": "news", "loss": loss, "val_dir": "/n", "rows": 8,
            "fingerprint": fingerprint });
        format!("{line}\n")
    };
    for name in ["r", "s"] {
        run(root, name, (1e6, 1e8, 6e14), &[Some(3.0), Some(2.0)], "a"); // 20 steps
    }
    // r: step 10 measured on the set as it was, step 20 on it rebuilt; an earlier build's line (no
    // fingerprint) counts as the last line's set
    let lines = eval(10, 2.5, Some("aaaa-8")) + &eval(5, 2.7, None) + &eval(20, 1.5, Some("bbbb-8"));
    std::fs::write(root.join("r").join(super::runs::EVAL_FILE), lines).unwrap();
    let (r, notes) = super::runs::read_run(&root.join("r"), Some("news")).unwrap();
    assert_eq!((r.val_curve.clone(), r.val_fingerprint.as_deref()), (vec![(5, 2.7), (20, 1.5)], Some("bbbb-8")));
    let notes = notes.join("\n");
    assert!(
        notes.contains("set `news`'s lines of step(s) 10 measured another version of /n than its last line (fingerprint bbbb-8): left out"),
        "{notes}"
    );
    // a step measured again on the new version is not left out
    let again = eval(10, 2.5, Some("aaaa-8")) + &eval(10, 2.4, Some("bbbb-8")) + &eval(20, 1.5, Some("bbbb-8"));
    std::fs::write(root.join("r").join(super::runs::EVAL_FILE), again).unwrap();
    let (r, notes) = super::runs::read_run(&root.join("r"), Some("news")).unwrap();
    assert_eq!(r.val_curve, vec![(10, 2.4), (20, 1.5)]);
    assert!(notes.is_empty(), "{notes:?}");
    // s: measured on the first version
    std::fs::write(root.join("s").join(super::runs::EVAL_FILE), eval(20, 1.6, Some("aaaa-8"))).unwrap();
    let (runs, _) = super::runs::gather(&super::roots::roots(&[root]).unwrap(), Some("news")).unwrap();
    let dirs: Vec<&str> = runs.iter().map(|r| r.settings.get("val.dir")).collect();
    assert_eq!(dirs, ["/n (fingerprint bbbb-8)", "/n (fingerprint aaaa-8)"]);
}

/// Runs are compared on the validation rows they measured: a set smaller than `val.max_rows` is read
/// whole, so a run validating in training (val.jsonl's `rows`) and one measured by `infinity eval`
/// (eval.jsonl's) on the same 300 rows are measured alike, whatever each config's max_rows.
#[test]
fn validation_rows_are_the_rows_measured_not_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = "[val]\ndir = \"/data/val\"\nmax_rows = 1024\n";
    run_with(root, "trained", (1e6, 1e8, 6e14), &[Some(2.0)], "a", config);
    std::fs::write(root.join("trained/val.jsonl"), "{\"step\":10,\"loss\":2.0,\"rows\":300}\n").unwrap();
    let (r, _) = super::runs::read_run(&root.join("trained"), None).unwrap();
    assert_eq!((r.settings.get("val.max_rows"), r.settings.get("val.dir")), ("300", "/data/val"));
    // the same set as `infinity eval` measured it for a run of max_rows 512, and named so by both
    let sets = "[val]\nmax_rows = 512\n[[val.sets]]\nname = \"v\"\ndir = \"/data/val\"\n";
    run_with(root, "evaluated", (1e6, 1e8, 6e14), &[Some(2.0)], "a", sets);
    std::fs::write(root.join("evaluated/val.jsonl"), "").unwrap();
    let line = serde_json::json!({ "step": 10, "set": "v", "loss": 2.0, "val_dir": "/data/val", "rows": 300 });
    std::fs::write(root.join("evaluated").join(super::runs::EVAL_FILE), format!("{line}\n")).unwrap();
    let set = "[val]\nmax_rows = 1024\n[[val.sets]]\nname = \"v\"\ndir = \"/data/val\"\n";
    std::fs::write(root.join("trained/config.toml"), set).unwrap();
    std::fs::write(
        root.join("trained/val.jsonl"),
        "{\"step\":10,\"loss\":2.0,\"sets\":{\"v\":{\"loss\":2.0,\"rows\":300}}}\n",
    )
    .unwrap();
    let (trained, _) = super::runs::read_run(&root.join("trained"), Some("v")).unwrap();
    let (evaluated, _) = super::runs::read_run(&root.join("evaluated"), Some("v")).unwrap();
    assert!(evaluated.val_from_eval && !trained.val_from_eval);
    assert_eq!(trained.settings.measured, evaluated.settings.measured, "measured alike");
}

/// A finished run whose very last step was skipped as non-finite (summary.json's loss null, not
/// diverged) keeps its smoothed training loss: it is fitted, not called diverged.
#[test]
fn a_finished_run_ending_on_a_skipped_step_keeps_its_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (l, _) = train_run(root, "last", 1e15, 0);
    let summary = serde_json::json!({ "step": 99, "loss": null, "finished": true, "diverged": false });
    std::fs::write(root.join("last/summary.json"), summary.to_string()).unwrap();
    let (run, _) = super::runs::read_run(&root.join("last"), None).unwrap();
    assert!(run.final_train.is_nan() && (run.loss() / l - 1.0).abs() < 0.01, "{run:?}");
    // stopped unfinished on it: the NaN stays
    let summary = serde_json::json!({ "step": 99, "loss": null, "finished": false });
    std::fs::write(root.join("last/summary.json"), summary.to_string()).unwrap();
    assert!(super::runs::read_run(&root.join("last"), None).unwrap().0.loss().is_nan());
}

/// Budgets far below the runs are extrapolations too, and warned of as those far above are.
#[test]
fn a_budget_far_below_the_runs_is_warned_of() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for (i, c) in [1e15, 1e16, 1e17, 1e18].into_iter().enumerate() {
        law_run(root, &format!("r{i}"), c, "a");
    }
    let r = super::analyse(&[root], &root.join("scaling"), &[1e9]).unwrap();
    let warnings = r.warnings.join("\n");
    assert!(warnings.contains("at C = 1.000e9: 1.00e-6 of the smallest run's compute (1.000e15)"), "{warnings}");
}

/// The measurement fitted is the one of the most experiments, not of the most runs: four seeds of one
/// config (one point) measured on 100 rows do not push aside three sizes measured on 512.
#[test]
fn the_fitted_measurement_has_the_most_experiments() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for seed in 0..4 {
        let config = format!("[run]\nseed = {seed}\n[val]\ndir = \"/data/val\"\nmax_rows = 100\n");
        run_with(root, &format!("seed-{seed}"), (1e6, 1e8, 6e14), &[Some(2.0)], "a", &config);
    }
    for (i, c) in [1e15, 1e16, 1e17].into_iter().enumerate() {
        law_run(root, &format!("size-{i}"), c, "a");
    }
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    assert_eq!(r.points.len(), 3, "{:?}", r.warnings);
    assert!(r.warnings.join("\n").contains("seed-0, seed-1, seed-2, seed-3"), "{:?}", r.warnings);
}

/// The "exact parabola" warning counts an IsoFLOP profile's points, not its sizes: two configs of one
/// size (another shape of as many parameters) are a fourth point, which tests the shape.
#[test]
fn an_isoflop_profile_of_four_points_at_three_sizes_is_not_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let c = 1e19;
    for (k, shape) in [(-1, 0), (0, 0), (0, 1), (1, 0)] {
        let n = chinchilla_n_opt(c) * 2f64.powi(k);
        let d = c / (6.0 * n);
        let wobble = 1.0 + 0.001 * shape as f64;
        let config = format!("[val]\ndir = \"/data/val\"\n[x]\nn = {n:e}\nd = {d:e}\nc = {c:e}\nshape = {shape}\n");
        let loss = chinchilla_loss(n, d) * wobble;
        run_with(root, &format!("n{}-shape{shape}", k + 1), (n, d, c), &[Some(loss)], "a", &config);
    }
    let r = super::analyse(&[root], &root.join("scaling"), &[]).unwrap();
    assert_eq!(r.isoflop.profiles.len(), 1, "{:?}", r.notes);
    assert!(!r.warnings.join("\n").contains("passes exactly"), "{:?}", r.warnings);
}

/// `--out` may not be the folder of runs given, nor a run's folder or one inside it: the analysis writes
/// its tables there (and removes those an earlier analysis wrote that it does not).
#[test]
fn the_output_folder_is_not_among_the_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runs");
    for (i, c) in [1e15, 1e16].into_iter().enumerate() {
        law_run(&root, &format!("r{i}"), c, "a");
    }
    let refused = |out: &Path| super::analyse(&[&root], out, &[]).err().expect("refused").to_string();
    let e = refused(&root);
    assert!(e.contains("the folder of runs itself"), "{e}");
    for out in [root.join("r1"), root.join("r1/scaling"), root.join("r1/a/b"), root.join("new/../r1/scaling")] {
        let e = refused(&out);
        assert!(e.contains("in the folder of run r1"), "{e}");
    }
    assert!(!root.join("runs.csv").exists() && !root.join("r1/runs.csv").exists());
    // (a run with no summary yet is a run too: training, failed, or not started)
    std::fs::create_dir_all(root.join("r2")).unwrap();
    std::fs::write(root.join("r2/config.toml"), "").unwrap();
    assert!(refused(&root.join("r2/scaling")).contains("in the folder of run r2"));
    super::analyse(&[&root], &root.join("scaling"), &[]).unwrap();
}

/// What blanks a run's columns is said: a `metrics.jsonl` with no step's loss (emptied), a
/// `derived.json` whose `model` does not read (its depth, width and heads).
#[test]
fn an_emptied_log_and_an_unreadable_model_are_noted() {
    let tmp = tempfile::tempdir().unwrap();
    run(tmp.path(), "r", (1e6, 1e8, 6e14), &[Some(3.0), Some(2.0)], "a");
    let dir = tmp.path().join("r");
    let (_, notes) = super::runs::read_run(&dir, None).unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    std::fs::write(dir.join("metrics.jsonl"), "").unwrap();
    let mut derived: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("derived.json")).unwrap()).unwrap();
    derived["model"].as_object_mut().unwrap().remove("depth");
    std::fs::write(dir.join("derived.json"), derived.to_string()).unwrap();
    let (r, notes) = super::runs::read_run(&dir, None).unwrap();
    assert!(r.model.is_none() && notes.len() == 2, "{notes:?}");
    assert!(notes[0].contains("derived.json: `model` does not read (missing field `depth`)"), "{notes:?}");
    assert!(notes[1].contains("metrics.jsonl: no step's loss (emptied?)"), "{notes:?}");
}
