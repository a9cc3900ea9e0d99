//! `infinity scaling RUNS_DIR`: gather every run folder under `RUNS_DIR` (a sweep's output), take its
//! final and smoothed validation loss, fit scaling laws (`fit`), and write a table (CSV, Markdown), the
//! fits (Markdown, JSON) and the figures (`plot`: PNG and SVG) into `RUNS_DIR/scaling/`.

pub mod budget;
pub mod fit;
pub mod lr;
pub mod plot;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use infinity_data::manifest::write_atomic;
use serde_json::Value;

use self::fit::{pearson, Fit};

/// The smoothed loss averages the evaluations in this last fraction of a run's steps.
const SMOOTH_FRACTION: f64 = 0.1;

/// What a finished (or stopped) run contributes.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub name: String,
    pub dir: PathBuf,
    /// N: parameters.
    pub params: f64,
    /// Steps done.
    pub steps: u64,
    /// D: training tokens seen.
    pub tokens: f64,
    pub flops_per_step: f64,
    /// C: training FLOPs spent.
    pub compute: f64,
    pub finished: bool,
    pub final_train: f64,
    pub final_val: Option<f64>,
    /// Mean of the validation losses in the last [`SMOOTH_FRACTION`] of the steps (at least the last).
    pub smoothed_val: Option<f64>,
    pub val_curve: Vec<(u64, f64)>,
    pub train_curve: Vec<(u64, f64)>,
    /// The model's shape as `derived.json` records it (absent in folders of older builds).
    pub model: Option<crate::model::ModelConfig>,
}

impl RunRecord {
    /// The loss the fits use: smoothed validation loss, else the final training loss.
    pub fn loss(&self) -> f64 {
        self.smoothed_val.unwrap_or(self.final_train)
    }
}

fn read_json(p: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))
}

fn jsonl_curve(p: &Path, key: &str) -> Result<Vec<(u64, f64)>> {
    let Ok(text) = std::fs::read_to_string(p) else { return Ok(vec![]) };
    let mut out: Vec<(u64, f64)> = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", p.display(), i + 1))?;
        if let (Some(s), Some(l)) = (v["step"].as_u64(), v[key].as_f64()) {
            // a resumed run appends again from its checkpoint: keep the last value of each step
            out.retain(|(st, _)| *st < s);
            out.push((s, l));
        }
    }
    Ok(out)
}

/// Read one run folder (it has `derived.json` and `summary.json`).
pub fn read_run(dir: &Path) -> Result<RunRecord> {
    let derived = read_json(&dir.join("derived.json"))?;
    let summary = read_json(&dir.join("summary.json"))?;
    let num = |v: &Value, k: &str, file: &str| {
        v[k].as_f64().with_context(|| format!("{}: `{k}` missing in {file}", dir.display()))
    };
    let steps =
        summary["step"].as_u64().with_context(|| format!("{}: `step` missing in summary.json", dir.display()))?;
    let flops_per_step = num(&derived, "train_flops_per_step_mean", "derived.json")?;
    let val_curve = jsonl_curve(&dir.join("val.jsonl"), "loss")?;
    let train_curve = jsonl_curve(&dir.join("metrics.jsonl"), "loss")?;
    let last_step = val_curve.last().map_or(0, |p| p.0);
    let from = (last_step as f64 * (1.0 - SMOOTH_FRACTION)).floor() as u64;
    let tail: Vec<f64> = val_curve.iter().filter(|p| p.0 >= from).map(|p| p.1).collect();
    Ok(RunRecord {
        name: dir.file_name().map_or("run".into(), |n| n.to_string_lossy().to_string()),
        dir: dir.to_path_buf(),
        params: num(&derived, "parameters", "derived.json")?,
        steps,
        tokens: num(&derived, "tokens_per_step_mean", "derived.json")? * steps as f64,
        flops_per_step,
        compute: flops_per_step * steps as f64,
        finished: summary["finished"].as_bool().unwrap_or(false),
        // a run that diverged ends with a NaN loss, which JSON writes as null: it stays in the table
        final_train: match &summary["loss"] {
            Value::Null if summary.get("loss").is_some() => f64::NAN,
            _ => num(&summary, "loss", "summary.json")?,
        },
        final_val: val_curve.last().map(|p| p.1),
        smoothed_val: (!tail.is_empty()).then(|| tail.iter().sum::<f64>() / tail.len() as f64),
        val_curve,
        train_curve,
        model: serde_json::from_value(derived["model"].clone()).ok(),
    })
}

/// Every run folder directly under `root` (sorted by name, numbers by value: `embed-dim-64` before
/// `embed-dim-128`); folders without a summary are skipped.
pub fn gather(root: &Path) -> Result<Vec<RunRecord>> {
    let mut runs = Vec::new();
    let rd = std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))?;
    let mut dirs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.join("summary.json").is_file()).collect();
    dirs.sort_by_cached_key(|d| natural_key(&d.file_name().unwrap_or_default().to_string_lossy()));
    for d in dirs {
        runs.push(read_run(&d)?);
    }
    if runs.is_empty() {
        bail!("{}: no run folders with a summary.json (has the sweep run?)", root.display());
    }
    Ok(runs)
}

/// `name` in runs of numbers (`64`, `0.05`, `3e-4`, compared by value) and of other characters
/// (compared as text). Sweep names hold no negative numbers (`-` separates), so the bits of the
/// non-negative f64 order like their values.
fn natural_key(name: &str) -> Vec<(String, u64)> {
    let bytes = name.as_bytes();
    let digits = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut key = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        if bytes[i].is_ascii_digit() {
            i = digits(i);
            if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
                i = digits(i + 1);
            }
            // an exponent (`3e-4`), when digits follow it
            if i + 1 < bytes.len() && matches!(bytes[i], b'e' | b'E') {
                let sign = usize::from(matches!(bytes[i + 1], b'-' | b'+'));
                if bytes.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
                    i = digits(i + 1 + sign);
                }
            }
            let value: f64 = name[start..i].parse().unwrap_or(f64::MAX);
            key.push((String::new(), value.to_bits()));
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_digit() {
                i += 1;
            }
            key.push((name[start..i].to_string(), 0));
        }
    }
    key
}

/// Run folders under `root` (a `config.toml`, as `infinity sweep` writes) that have no `summary.json`.
fn unsummarised(root: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(root) else { return Vec::new() };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.toml").is_file() && !p.join("summary.json").is_file())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    names.sort_by_cached_key(|n| natural_key(n));
    names
}

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
    pub files: Vec<PathBuf>,
}

/// Gather, fit (and predict at each of `budgets`, in FLOPs), and write tables and figures into `out`.
pub fn analyse(root: &Path, out: &Path, budgets: &[f64]) -> Result<Report> {
    let runs = gather(root)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (lr_runs, unreadable) = lr::read_runs(root, &runs)?;
    let lr_groups = lr::groups(&lr_runs);
    // the fits take the finished runs with a finite loss, of a learning-rate sweep the best rate of each
    // group; the tables list every run
    let not_best = lr::not_best(&lr_groups);
    let (fitted, other_rates): (Vec<&RunRecord>, Vec<&RunRecord>) =
        runs.iter().filter(|r| r.finished && r.loss().is_finite()).partition(|r| !not_best.contains(&r.dir));
    let (c, l): (Vec<f64>, Vec<f64>) = fitted.iter().map(|r| (r.compute, r.loss())).unzip();
    let mut notes = Vec::new();
    let silent = unsummarised(root);
    if !silent.is_empty() {
        notes.push(format!(
            "left out (no summary.json: failed before their first step, or not started; their logs say why): {}",
            silent.join(", ")
        ));
    }
    let diverged: Vec<&str> = runs.iter().filter(|r| !r.loss().is_finite()).map(|r| r.name.as_str()).collect();
    if !diverged.is_empty() {
        notes.push(format!("left out of the fits (no finite loss: diverged?): {}", diverged.join(", ")));
    }
    // a stopped run's loss is of a schedule it did not finish, at less compute than planned
    let unfinished: Vec<&str> =
        runs.iter().filter(|r| !r.finished && r.loss().is_finite()).map(|r| r.name.as_str()).collect();
    if !unfinished.is_empty() {
        notes.push(format!(
            "left out of the fits (not finished: stopped by a signal or still running; the same `infinity sweep` \
             resumes them): {}",
            unfinished.join(", ")
        ));
    }
    if !other_rates.is_empty() {
        let names: Vec<&str> = other_rates.iter().map(|r| r.name.as_str()).collect();
        notes.push(format!(
            "the fits take the best learning rate of each of the {} learning-rate groups (lr_sweep.md); left out at \
             other rates: {}",
            lr_groups.len(),
            names.join(", ")
        ));
    }
    if runs.iter().any(|r| r.smoothed_val.is_none()) {
        notes.push("runs without validation are fitted on their final training loss".to_string());
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
    let chinchilla = attempt("L(N, D)", fit::chinchilla(&n, &d, &l));
    let logs: (Vec<f64>, Vec<f64>) = (c.iter().map(|v| v.ln()).collect(), l.iter().map(|v| v.ln()).collect());
    let pearson_r = if fitted.len() >= 2 { pearson(&logs.0, &logs.1) } else { f64::NAN };
    let fitted_runs: Vec<RunRecord> = fitted.iter().map(|r| (*r).clone()).collect();
    let like = fitted.iter().find_map(|r| r.model.as_ref());
    let laws = (power.as_ref(), power_floor.as_ref(), chinchilla.as_ref());
    let budgets = budget::plans(budgets, &fitted_runs, laws, like);
    if budgets.iter().any(|b| b.optimal.is_none()) && chinchilla.is_none() {
        notes.push("no compute-optimal N and D at the budgets: L(N, D) was not fitted".to_string());
    }

    let mut files = vec![out.join("runs.csv"), out.join("runs.md"), out.join("fits.md"), out.join("fits.json")];
    write_atomic(&files[0], runs_csv(&runs).as_bytes())?;
    write_atomic(&files[1], runs_markdown(&runs).as_bytes())?;
    let fits: Vec<&Fit> = [&power, &power_floor, &chinchilla].into_iter().flatten().collect();
    write_atomic(&files[2], (fits_markdown(&fits, pearson_r, &notes) + &budgets_markdown(&budgets)).as_bytes())?;
    let json = serde_json::json!({
        "pearson_r_log_loss_log_compute": pearson_r, "fits": fits, "budgets": budgets, "notes": notes,
    });
    write_atomic(&files[3], serde_json::to_string_pretty(&json)?.as_bytes())?;

    let mut curves: Vec<plot::Curve> = Vec::new();
    if let Some(f) = &power {
        let (a, b) = (f.get("a"), f.get("b"));
        curves.push((f, Box::new(move |x: f64| a * x.powf(-b))));
    }
    if let Some(f) = &power_floor {
        let (e, a, b) = (f.get("E"), f.get("a"), f.get("b"));
        curves.push((f, Box::new(move |x: f64| e + a * x.powf(-b))));
    }
    let points: Vec<(f64, f64)> = c.iter().copied().zip(l.iter().copied()).collect();
    plot::loss_vs_compute(out, &points, &curves, pearson_r)?;
    plot::curves(out, &runs)?;
    let mut stems = vec!["loss_vs_compute", "loss_curves"];
    // (an earlier analysis's learning-rate files go when this one has none)
    for f in ["lr_sweep.md", "loss_vs_lr.png", "loss_vs_lr.svg"] {
        let _ = std::fs::remove_file(out.join(f));
    }
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
    Ok(Report { runs, power, power_floor, chinchilla, pearson_r, budgets, notes, files })
}

const COLUMNS: [&str; 9] = [
    "run",
    "parameters",
    "steps",
    "tokens",
    "compute_flops",
    "final_train_loss",
    "final_val_loss",
    "smoothed_val_loss",
    "finished",
];

/// One table row; missing values are empty.
fn row(r: &RunRecord) -> [String; 9] {
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    [
        r.name.clone(),
        r.params.to_string(),
        r.steps.to_string(),
        format!("{:.6e}", r.tokens),
        format!("{:.6e}", r.compute),
        format!("{:.6}", r.final_train),
        opt(r.final_val),
        opt(r.smoothed_val),
        r.finished.to_string(),
    ]
}

fn runs_csv(runs: &[RunRecord]) -> String {
    let mut s = COLUMNS.join(",") + "\n";
    for r in runs {
        s.push_str(&(row(r).join(",") + "\n"));
    }
    s
}

fn runs_markdown(runs: &[RunRecord]) -> String {
    let mut s = format!("| {} |\n|{}\n", COLUMNS.join(" | "), "---|".repeat(COLUMNS.len()));
    for r in runs {
        let cells: Vec<String> = row(r).into_iter().map(|c| if c.is_empty() { "–".into() } else { c }).collect();
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    s
}

fn fits_markdown(fits: &[&Fit], r: f64, notes: &[String]) -> String {
    let mut s = format!("# Scaling fits\n\nPearson r of ln(loss) against ln(compute): {r:.4}\n\n");
    for f in fits {
        let _ = writeln!(s, "## {}\n\n{} runs, RMS of the log residuals {:.4}\n", f.formula, f.n, f.rmse_log);
        s.push_str("| coefficient | value | 95 % interval |\n|---|---|---|\n");
        // no interval: too few runs for the coefficients, or a covariance the runs leave singular (a
        // coefficient at its bound, such as E at 0, or two that the runs do not separate)
        let why = match f.n <= f.coefs.len() {
            true => "– (no degrees of freedom)",
            false => "– (not determined: the fit's covariance is singular)",
        };
        for c in &f.coefs {
            let ci = c.ci95.map_or(why.into(), |(lo, hi)| format!("[{lo:.5}, {hi:.5}]"));
            let _ = writeln!(s, "| {} | {:.5} | {} |", c.name, c.value, ci);
        }
        s.push('\n');
    }
    for n in notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

/// The budgets' table (empty without budgets).
pub fn budgets_markdown(plans: &[budget::BudgetPlan]) -> String {
    if plans.is_empty() {
        return String::new();
    }
    let mut s = "\n## Budgets\n\nk = training FLOPs per parameter and token, the runs' median; N* and D* minimise \
                 L(N, D) under C = k·N·D.\n\n| C (FLOPs) | × largest run | L(C) power | L(C) with floor | N* | D* (tokens) | \
                 L(N*, D*) | nearest preset |\n|---|---|---|---|---|---|---|---|\n"
        .to_string();
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("–".to_string(), f);
    for b in plans {
        let o = b.optimal.as_ref();
        let _ = writeln!(
            s,
            "| {:.3e} | {:.1} | {} | {} | {} | {} | {} | {} |",
            b.compute,
            b.times_largest_run,
            opt(b.loss_power, &|v| format!("{v:.4}")),
            opt(b.loss_power_floor, &|v| format!("{v:.4}")),
            opt(o.map(|o| o.params), &|v| format!("{v:.3e}")),
            opt(o.map(|o| o.tokens), &|v| format!("{v:.3e}")),
            opt(o.map(|o| o.loss), &|v| format!("{v:.4}")),
            o.and_then(|o| o.nearest_preset.as_ref()).map_or("–".into(), |(p, n)| format!("{p} ({:.3e})", *n as f64)),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_interval_gives_its_reason() {
        use super::fit::{Coef, Fit};
        let coefs = |k: usize| (0..k).map(|_| Coef { name: "E", value: 0.0, ci95: None }).collect::<Vec<_>>();
        let fit = |n: usize| Fit { formula: "L = E + A/N^α + B/D^β", coefs: coefs(5), n, rmse_log: 0.0 };
        let (nine, five) = (fit(9), fit(5));
        assert!(super::fits_markdown(&[&nine], 0.9, &[]).contains("covariance is singular"));
        assert!(super::fits_markdown(&[&five], 0.9, &[]).contains("no degrees of freedom"));
    }

    #[test]
    fn run_names_sort_by_their_numbers() {
        let mut names = ["lr-3e-3", "lr-1e-4", "drop-0.1", "drop-0.05", "dim-128", "dim-64", "lr-0.001"];
        names.sort_by_cached_key(|n| super::natural_key(n));
        assert_eq!(names, ["dim-64", "dim-128", "drop-0.05", "drop-0.1", "lr-1e-4", "lr-0.001", "lr-3e-3"]);
    }
}
