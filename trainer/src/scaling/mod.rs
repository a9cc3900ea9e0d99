//! `infinity scaling RUNS_DIR`: gather every run folder under `RUNS_DIR` (a sweep's output), take its
//! final and smoothed validation loss, fit scaling laws (`fit`), and write a table (CSV, Markdown), the
//! fits (Markdown, JSON) and the figures (`plot`: PNG and SVG) into `RUNS_DIR/scaling/`. This module
//! holds the orchestration ([`analyse`]: which runs the fits take, and why others are left out) and its
//! [`Report`]; reading the run folders is in `runs`, the tables' text in `report`.

pub mod budget;
pub mod fit;
pub mod lr;
pub mod plot;
mod report;
mod runs;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use infinity_data::manifest::write_atomic;

use self::fit::{pearson, Fit};
pub use self::report::budgets_markdown;
use self::report::{fits_markdown, runs_csv, runs_markdown};
pub use self::runs::{compute_frontier, gather, read_run, RunRecord};
use self::runs::{read_json, unsummarised};

/// The fits and where the files went.
pub struct Report {
    pub runs: Vec<RunRecord>,
    pub power: Option<Fit>,
    pub power_floor: Option<Fit>,
    pub chinchilla: Option<Fit>,
    pub pearson_r: f64,
    /// The fits' predictions at the budgets asked for.
    pub budgets: Vec<budget::BudgetPlan>,
    pub notes: Vec<String>,
    /// What makes a fit or a prediction doubtful (an exponent at 0, a degenerate L(N, D), N* far from
    /// the runs).
    pub warnings: Vec<String>,
    pub files: Vec<PathBuf>,
}

/// Gather, fit (and predict at each of `budgets`, in FLOPs), and write tables and figures into `out`.
/// A sweep still under way (no finished run yet) gets its tables and notes, and no fits or figures of
/// them.
pub fn analyse(root: &Path, out: &Path, budgets: &[f64]) -> Result<Report> {
    let runs = gather(root)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (lr_runs, unreadable) = lr::read_runs(root, &runs)?;
    let lr_groups = lr::groups(&lr_runs);
    let (mut notes, mut warnings) = (Vec::new(), Vec::new());
    let training = |r: &RunRecord| crate::train::run_lock::in_use(&r.dir);
    let (busy, silent): (Vec<String>, Vec<String>) =
        unsummarised(root).into_iter().partition(|n| crate::train::run_lock::in_use(&root.join(n)));
    if !busy.is_empty() {
        notes.push(format!("still training (their folders' locks are held; no summary.json yet): {}", busy.join(", ")));
    }
    if !silent.is_empty() {
        notes.push(format!(
            "left out (no summary.json: failed before their first step, or not started; their logs say why): {}",
            silent.join(", ")
        ));
    }
    // a run whose last validation loss is NaN (null in val.jsonl) ended diverged, whatever came before
    let nan_val: Vec<&str> =
        runs.iter().filter(|r| r.final_val.is_some_and(f64::is_nan)).map(|r| r.name.as_str()).collect();
    if !nan_val.is_empty() {
        notes.push(format!(
            "left out of the fits (final validation loss NaN, null in val.jsonl: treated as diverged): {}",
            nan_val.join(", ")
        ));
    }
    let diverged: Vec<&str> = runs
        .iter()
        .filter(|r| (r.diverged || !r.loss().is_finite()) && !r.final_val.is_some_and(f64::is_nan))
        .map(|r| r.name.as_str())
        .collect();
    if !diverged.is_empty() {
        notes.push(format!(
            "left out of the fits (diverged: a final result, which `infinity sweep` does not train again): {}",
            diverged.join(", ")
        ));
    }
    // a stopped run's loss is of a schedule it did not finish, at less compute than planned
    let unfinished = |busy: bool| -> Vec<&str> {
        let open = runs.iter().filter(|r| !r.finished && !r.diverged && r.loss().is_finite() && training(r) == busy);
        open.map(|r| r.name.as_str()).collect()
    };
    if !unfinished(true).is_empty() {
        notes.push(format!(
            "left out of the fits (still training: their folders' locks are held): {}",
            unfinished(true).join(", ")
        ));
    }
    if !unfinished(false).is_empty() {
        notes.push(format!(
            "left out of the fits (not finished: stopped by a signal or a failure; the same `infinity sweep` resumes \
             them): {}",
            unfinished(false).join(", ")
        ));
    }
    // the fits take the finished runs with a finite loss, of a learning-rate sweep the best rate of each
    // group, and of runs on several datasets those of the dataset with the most runs; the tables list
    // every run
    let not_best = lr::not_best(&lr_groups);
    let (candidates, other_rates): (Vec<&RunRecord>, Vec<&RunRecord>) =
        runs.iter().filter(|r| r.finished && r.loss().is_finite()).partition(|r| !not_best.contains(&r.dir));
    if !other_rates.is_empty() {
        let names: Vec<&str> = other_rates.iter().map(|r| r.name.as_str()).collect();
        notes.push(format!(
            "the fits take the best learning rate of each of the {} learning-rate groups (lr_sweep.md); left out at \
             other rates: {}",
            lr_groups.len(),
            names.join(", ")
        ));
    }
    let mut datasets: Vec<(&str, Vec<&RunRecord>)> = Vec::new();
    for r in candidates {
        match datasets.iter_mut().find(|(d, _)| *d == r.data) {
            Some((_, v)) => v.push(r),
            None => datasets.push((&r.data, vec![r])),
        }
    }
    // the most runs; of equals, the first in name order (max_by_key keeps the last maximum)
    let largest = datasets.iter().enumerate().max_by_key(|(i, (_, v))| (v.len(), usize::MAX - i)).map(|(i, _)| i);
    let fitted: Vec<&RunRecord> = largest.map_or(Vec::new(), |i| datasets[i].1.clone());
    if datasets.len() > 1 {
        let others: Vec<String> = datasets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != largest)
            .map(|(_, (d, v))| format!("{d}: {}", v.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")))
            .collect();
        warnings.push(format!(
            "the runs were trained or validated on {} different datasets, whose losses are not comparable: the fits \
             take the {} runs on {}; left out: {} (fit them on their own: `infinity scaling` on a folder of those \
             runs)",
            datasets.len(),
            fitted.len(),
            datasets[largest.unwrap_or(0)].0,
            others.join("; ")
        ));
    }
    // L(C) on the compute frontier; L(N, D) on every fitted run (it models the whole grid)
    let on_frontier = compute_frontier(&fitted);
    let frontier: Vec<&RunRecord> = fitted.iter().zip(&on_frontier).filter(|(_, f)| **f).map(|(r, _)| *r).collect();
    let above: Vec<&str> =
        fitted.iter().zip(&on_frontier).filter(|(_, f)| !**f).map(|(r, _)| r.name.as_str()).collect();
    if !above.is_empty() {
        notes.push(format!(
            "L(C) is fitted to the {} runs on the compute frontier (no other run reached a lower loss with no more \
             compute); above it, in the tables and figures but not in L(C): {}",
            frontier.len(),
            above.join(", ")
        ));
    }
    let (c, l): (Vec<f64>, Vec<f64>) = frontier.iter().map(|r| (r.compute, r.loss())).unzip();
    let no_val: Vec<&str> = fitted.iter().filter(|r| r.smoothed_val.is_none()).map(|r| r.name.as_str()).collect();
    if !no_val.is_empty() {
        notes.push(format!("runs without validation are fitted on their final training loss: {}", no_val.join(", ")));
    }
    let mut attempt = |what: &str, f: Result<Fit>| match f {
        Ok(f) => Some(f),
        Err(e) => {
            notes.push(format!("{what}: not fitted ({e:#})"));
            None
        }
    };
    let power = attempt("L(C) = a·C^(−b)", fit::power_law(&c, &l));
    let power_floor = attempt("L(C) = E + a·C^(−b)", fit::power_law_with_floor(&c, &l));
    let (n, d): (Vec<f64>, Vec<f64>) = fitted.iter().map(|r| (r.params, r.tokens)).unzip();
    let all_l: Vec<f64> = fitted.iter().map(|r| r.loss()).collect();
    let chinchilla = attempt("L(N, D)", fit::chinchilla(&n, &d, &all_l));
    for f in [&power, &power_floor, &chinchilla].into_iter().flatten() {
        warnings.extend(fit::not_a_scaling_law(f));
    }
    let logs: (Vec<f64>, Vec<f64>) = (c.iter().map(|v| v.ln()).collect(), l.iter().map(|v| v.ln()).collect());
    let pearson_r = if frontier.len() >= 2 { pearson(&logs.0, &logs.1) } else { f64::NAN };
    // the frontier falls with compute by construction: whether the runs do is asked of all of them
    let all_logs: (Vec<f64>, Vec<f64>) = fitted.iter().map(|r| (r.compute.ln(), r.loss().ln())).unzip();
    let all_r = if fitted.len() >= 2 { pearson(&all_logs.0, &all_logs.1) } else { f64::NAN };
    if all_r >= 0.0 {
        warnings.push(format!(
            "the loss does not fall with compute over the {} fitted runs (Pearson r of log L on log C = {all_r:+.2}): \
             no scaling law describes them, and predictions at other budgets are not meaningful",
            fitted.len()
        ));
    } else if fitted.len() >= 2 && frontier.len() < 2 {
        warnings.push("one run on the compute frontier: L(C) cannot be fitted".to_string());
    }
    let fitted_runs: Vec<RunRecord> = fitted.iter().map(|r| (*r).clone()).collect();
    let like = fitted.iter().find_map(|r| r.model.as_ref());
    let laws = (power.as_ref(), power_floor.as_ref(), chinchilla.as_ref());
    let (budgets, budget_notes, budget_warnings) = budget::plans(budgets, &fitted_runs, laws, like);
    notes.extend(budget_notes);
    warnings.extend(budget_warnings);
    if budgets.iter().any(|b| b.optimal.is_none()) && chinchilla.is_none() {
        notes.push("no compute-optimal N and D at the budgets: L(N, D) was not fitted".to_string());
    }

    let mut files = vec![out.join("runs.csv"), out.join("runs.md"), out.join("fits.md"), out.join("fits.json")];
    let frontier_dirs: Vec<&Path> = frontier.iter().map(|r| r.dir.as_path()).collect();
    let fitted_dirs: Vec<&Path> = fitted.iter().map(|r| r.dir.as_path()).collect();
    let marks = |r: &RunRecord| (fitted_dirs.contains(&r.dir.as_path()), frontier_dirs.contains(&r.dir.as_path()));
    write_atomic(&files[0], runs_csv(&runs, &marks).as_bytes())?;
    write_atomic(&files[1], runs_markdown(&runs, &marks).as_bytes())?;
    let fits: Vec<&Fit> = [&power, &power_floor, &chinchilla].into_iter().flatten().collect();

    let mut curves: Vec<plot::Curve> = Vec::new();
    if let Some(f) = &power {
        let (a, b) = (f.get("a"), f.get("b"));
        curves.push((f, Box::new(move |x: f64| a * x.powf(-b))));
    }
    if let Some(f) = &power_floor {
        let (e, a, b) = (f.get("E"), f.get("a"), f.get("b"));
        curves.push((f, Box::new(move |x: f64| e + a * x.powf(-b))));
    }
    let points: Vec<(f64, f64, bool)> =
        fitted.iter().zip(&on_frontier).map(|(r, f)| (r.compute, r.loss(), *f)).collect();
    let mut stems = Vec::new();
    // (an earlier analysis's figures go when this one has none of them)
    for f in
        ["loss_vs_compute", "loss_curves", "loss_vs_lr"].iter().flat_map(|s| [format!("{s}.png"), format!("{s}.svg")])
    {
        let _ = std::fs::remove_file(out.join(f));
    }
    let _ = std::fs::remove_file(out.join("lr_sweep.md"));
    if points.is_empty() {
        notes.push("loss_vs_compute: not drawn (no finished run with a finite loss yet)".to_string());
    } else {
        plot::loss_vs_compute(out, &points, &curves, pearson_r)?;
        stems.push("loss_vs_compute");
    }
    match plot::curves(out, &runs)? {
        true => stems.push("loss_curves"),
        false => notes.push("loss_curves: not drawn (no run has logged a finite loss yet)".to_string()),
    }
    write_atomic(
        &files[2],
        (fits_markdown(&fits, pearson_r, &notes, &warnings) + &budgets_markdown(&budgets)).as_bytes(),
    )?;
    let json = serde_json::json!({
        "pearson_r_log_loss_log_compute": pearson_r, "fits": fits, "budgets": budgets, "notes": notes,
        "warnings": warnings, "k": budget::k_spread(&fitted_runs),
    });
    write_atomic(&files[3], serde_json::to_string_pretty(&json)?.as_bytes())?;
    if !lr_groups.is_empty() {
        files.push(out.join("lr_sweep.md"));
        write_atomic(&files[files.len() - 1], lr::markdown(&lr_groups, &unreadable).as_bytes())?;
        if plot::loss_vs_lr(out, &lr_groups)? {
            stems.push("loss_vs_lr");
        }
    }
    for stem in stems {
        files.push(out.join(format!("{stem}.png")));
        files.push(out.join(format!("{stem}.svg")));
    }
    drop(curves);
    Ok(Report { runs, power, power_floor, chinchilla, pearson_r, budgets, notes, warnings, files })
}

#[cfg(test)]
mod tests {

    /// A run folder as `infinity train` leaves it: `derived.json`, `summary.json`, `val.jsonl` (its losses,
    /// `None` written as null) and `config.toml`.
    fn run(root: &std::path::Path, name: &str, (n, d, c): (f64, f64, f64), val: &[Option<f64>], data: &str) {
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
        std::fs::write(dir.join("config.toml"), "[val]\ndir = \"/data/val\"\n").unwrap();
    }

    fn set_finished(dir: &std::path::Path, finished: bool) {
        let p = dir.join("summary.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["finished"] = finished.into();
        std::fs::write(p, v.to_string()).unwrap();
    }

    /// Power-law runs: loss 10·C^(−0.05), N·D·6 = C.
    fn law_run(root: &std::path::Path, name: &str, c: f64, data: &str) {
        let l = 10.0 * c.powf(-0.05);
        run(root, name, (c.sqrt() / 10.0, c.sqrt() * 10.0 / 6.0, c), &[Some(l * 1.1), Some(l)], data);
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
        let r = super::analyse(root, &root.join("scaling"), &[]).unwrap();
        let notes = r.notes.join("\n");
        assert!(notes.contains("still training (their folders' locks are held; no summary.json yet): r2"), "{notes}");
        assert!(!notes.contains("failed before their first step"), "{notes}");
        assert!(notes.contains("loss_vs_compute: not drawn"), "{notes}");
        assert!(r.power.is_none() && root.join("scaling/runs.csv").is_file() && root.join("scaling/fits.md").is_file());
        assert!(!root.join("scaling/loss_vs_compute.png").exists());
        assert!(r.files.iter().all(|f| f.exists()), "{:?}", r.files);
        drop(lock);
        let r = super::analyse(root, &root.join("scaling"), &[]).unwrap();
        assert!(r.notes.join("\n").contains("failed before their first step, or not started; their logs say why): r2"));
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
        let r = super::analyse(root, &root.join("scaling"), &[]).unwrap();
        let power = r.power.as_ref().unwrap();
        assert_eq!(power.n, 4, "the frontier of dataset a: r0..r3");
        assert!((power.get("b") - 0.05).abs() < 1e-9, "{power:?}");
        let notes = r.notes.join("\n");
        assert!(notes.contains("compute frontier") && notes.contains("not in L(C): r1-big"), "{notes}");
        assert!(
            notes.contains("final validation loss NaN, null in val.jsonl: treated as diverged): r9-nan"),
            "{notes}"
        );
        assert!(!notes.contains("runs without validation"), "every run has validation:\n{notes}");
        let warnings = r.warnings.join("\n");
        assert!(warnings.contains("2 different datasets") && warnings.contains("dataset b (d = "), "{warnings}");
        assert!(
            warnings.contains("x0, x1") && warnings.contains("the fits take the 5 runs on dataset a"),
            "{warnings}"
        );
        let csv = std::fs::read_to_string(root.join("scaling/runs.csv")).unwrap();
        assert!(csv.lines().next().unwrap().ends_with(",finished,fitted,on_frontier"), "{csv}");
        assert!(csv.lines().any(|l| l.starts_with("r1-big,") && l.ends_with(",true,true,false")), "{csv}");
        assert!(csv.lines().any(|l| l.starts_with("x0,") && l.ends_with(",true,false,false")), "{csv}");
        assert!(csv.lines().any(|l| l.starts_with("r9-nan,") && l.contains(",NaN,")), "{csv}");
        // a loss that rises with compute is flagged
        let tmp = tempfile::tempdir().unwrap();
        for (i, c) in [1e15, 1e16, 1e17].into_iter().enumerate() {
            run(tmp.path(), &format!("u{i}"), (1e6, 1e6, c), &[Some(1.0 + 0.1 * i as f64)], "a");
        }
        let r = super::analyse(tmp.path(), &tmp.path().join("s"), &[]).unwrap();
        // (a rising loss leaves one run on the frontier: nothing to fit L(C) to, and a warning)
        assert!(r.power.is_none() && r.notes.join("\n").contains("not in L(C): u1, u2"), "{:?}", r.notes);
        assert!(
            r.warnings.join("\n").contains("does not fall with compute over the 3 fitted runs"),
            "{:?}",
            r.warnings
        );
    }
}
