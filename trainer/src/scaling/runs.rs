//! Reading a sweep's run folders for `infinity scaling`: one [`RunRecord`] per folder with a
//! `summary.json` (its size, tokens and compute from `derived.json`, its training and validation loss
//! curves from `metrics.jsonl` and `val.jsonl`, the smoothed final validation loss, what data its
//! losses are measured on), the folders in natural name order, those not yet summarised, and the runs
//! on the compute frontier.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

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
    /// Stopped by `optim.max_nonfinite` (summary.json's `diverged`): a final result, not resumed.
    pub diverged: bool,
    pub final_train: f64,
    pub final_val: Option<f64>,
    /// Mean of the validation losses in the last [`SMOOTH_FRACTION`] of the steps (at least the last).
    pub smoothed_val: Option<f64>,
    pub val_curve: Vec<(u64, f64)>,
    pub train_curve: Vec<(u64, f64)>,
    /// The model's shape as `derived.json` records it (absent in folders of older builds).
    pub model: Option<crate::model::ModelConfig>,
    /// What its losses are measured on: the training dataset's fingerprint, d, and the validation set
    /// (`derived.json`, `config.toml`). Losses on different data are not comparable: the fits take one.
    pub data: String,
}

impl RunRecord {
    /// The loss the fits use: smoothed validation loss, else the final training loss.
    pub fn loss(&self) -> f64 {
        self.smoothed_val.unwrap_or(self.final_train)
    }
}

pub(super) fn read_json(p: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))
}

fn jsonl_curve(p: &Path, key: &str) -> Result<Vec<(u64, f64)>> {
    let Ok(text) = std::fs::read_to_string(p) else { return Ok(vec![]) };
    let mut out: Vec<(u64, f64)> = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", p.display(), i + 1))?;
        // a non-finite loss is written as null: kept, as NaN (a run that ends on one diverged)
        let loss = match v.get(key) {
            Some(Value::Null) => Some(f64::NAN),
            other => other.and_then(Value::as_f64),
        };
        if let (Some(s), Some(l)) = (v["step"].as_u64(), loss) {
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
    let val_dir = std::fs::read_to_string(dir.join("config.toml"))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("val")?.get("dir")?.as_str().map(str::to_string));
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "?".to_string(),
        v => v.to_string(),
    };
    let data = format!(
        "dataset {} (d = {}), validation on {}",
        text(&derived["dataset"]["fingerprint"]),
        text(&derived["model"]["d"]),
        val_dir.as_deref().unwrap_or("none")
    );
    Ok(RunRecord {
        name: dir.file_name().map_or("run".into(), |n| n.to_string_lossy().to_string()),
        dir: dir.to_path_buf(),
        params: num(&derived, "parameters", "derived.json")?,
        steps,
        tokens: num(&derived, "tokens_per_step_mean", "derived.json")? * steps as f64,
        flops_per_step,
        compute: flops_per_step * steps as f64,
        finished: summary["finished"].as_bool().unwrap_or(false),
        diverged: summary["diverged"].as_bool().unwrap_or(false),
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
        data,
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
pub(super) fn unsummarised(root: &Path) -> Vec<String> {
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

/// The runs not dominated in (compute, loss): none of the others reached a lower loss with no more
/// compute, or the same loss with less. `L(C)` describes the best loss a compute budget buys, so it
/// is fitted to these.
pub fn compute_frontier(runs: &[&RunRecord]) -> Vec<bool> {
    let dominates = |o: &RunRecord, r: &RunRecord| {
        (o.compute <= r.compute && o.loss() < r.loss()) || (o.compute < r.compute && o.loss() <= r.loss())
    };
    runs.iter().map(|r| !runs.iter().any(|o| dominates(o, r))).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_names_sort_by_their_numbers() {
        let mut names = ["lr-3e-3", "lr-1e-4", "drop-0.1", "drop-0.05", "dim-128", "dim-64", "lr-0.001"];
        names.sort_by_cached_key(|n| super::natural_key(n));
        assert_eq!(names, ["dim-64", "dim-128", "drop-0.05", "drop-0.1", "lr-1e-4", "lr-0.001", "lr-3e-3"]);
    }
}
