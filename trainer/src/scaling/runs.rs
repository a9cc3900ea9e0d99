//! Reading a sweep's run folders for `infinity scaling`: one [`RunRecord`] per folder with a
//! `summary.json` (its size, tokens and compute from `derived.json`, its training and validation loss
//! curves from `metrics.jsonl` and `val.jsonl`, the smoothed final validation and training losses, its config's
//! identity and measurement settings), the folders in natural name order, and those not yet
//! summarised. A folder that cannot be read is left out with a note, not an end to the analysis.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::roots::Root;
use super::settings::{self, Settings};

/// The smoothed losses average the evaluations (validation) or steps (training) in this last fraction
/// of a run's steps.
const SMOOTH_FRACTION: (u64, u64) = (1, 10);

/// A run folder that reads, but whose validation losses end before the run did (an `infinity eval` of
/// an earlier checkpoint): left out, said as such rather than as unreadable.
#[derive(Debug)]
struct Unfinished(String);

impl std::fmt::Display for Unfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unfinished {}

/// What a finished (or stopped) run contributes.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub name: String,
    pub dir: PathBuf,
    /// Parameters, all of them (`derived.json`'s `parameters`).
    pub params: f64,
    /// Parameters less the embeddings (`derived.json`'s `parameters_non_embedding`, else counted from
    /// the model's shape; none for folders of builds that recorded neither).
    pub non_embedding_params: Option<f64>,
    /// N as the fits take it: `params`, or `non_embedding_params` with `--parameters non-embedding`
    /// ([`crate::scaling::Parameters`]).
    pub n: f64,
    /// Steps done.
    pub steps: u64,
    /// D: training tokens seen.
    pub tokens: f64,
    /// FLOPs per step at the run's (last) global batch size.
    pub flops_per_step: f64,
    /// `(from step, FLOPs per step)` of each global batch size the run had (one from step 0, but where a
    /// resume changed it).
    pub flops_by_size: Vec<(u64, f64)>,
    /// C: training FLOPs spent.
    pub compute: f64,
    /// The compute budget a sweep planned the run for (`sweep-point.json`'s `compute`, of a `compute`
    /// axis; none otherwise): whole steps overshoot it, by more than 10 % where the steps are few.
    pub planned_compute: Option<f64>,
    pub finished: bool,
    /// Stopped by `optim.max_nonfinite` (summary.json's `diverged`): a final result, not resumed.
    pub diverged: bool,
    pub final_train: f64,
    pub final_val: Option<f64>,
    /// Mean of the validation losses at steps in the last [`SMOOTH_FRACTION`] of the last evaluation's
    /// step (`s ≥ 0.9·last`; at least the last).
    pub smoothed_val: Option<f64>,
    /// Mean of the finite training losses (`metrics.jsonl`) at steps in the last [`SMOOTH_FRACTION`] of
    /// the last one logged up to `steps` (none: no such loss). One step's loss is one batch's, which
    /// varies with the bucket (aspect ratio) drawn: ~10 % from step to step.
    pub smoothed_train: Option<f64>,
    pub val_curve: Vec<(u64, f64)>,
    /// Whether `val_curve` is `infinity eval`'s ([`EVAL_FILE`]): `--val-set`'s set, which `val.jsonl`
    /// does not have.
    pub val_from_eval: bool,
    pub train_curve: Vec<(u64, f64)>,
    /// The median of the steps' own throughput and MFU in `metrics.jsonl` (robust to the first steps'
    /// compilation and warm-up; none: not logged, or MFU without a known peak).
    pub tokens_per_s: Option<f64>,
    pub mfu: Option<f64>,
    /// `optim.lr` and `data.global_batch` from `config.toml` (none: unreadable).
    pub lr: Option<f64>,
    pub global_batch: Option<f64>,
    /// The model's shape as `derived.json` records it (absent in folders of older builds).
    pub model: Option<crate::model::ModelConfig>,
    /// Which experiment it is (runs of one config are one point of the fits) and what its losses are
    /// measured with (losses measured differently are not comparable: the fits take one kind).
    pub settings: Settings,
    /// The fingerprint of its validation set as its newest checkpoint recorded it (none where it does not
    /// say, or the losses are `infinity eval`'s): [`told_apart_by_fingerprint`].
    pub val_fingerprint: Option<String>,
}

impl RunRecord {
    /// C after `step` steps (a loss curve's x), each step at its global batch size's FLOPs.
    pub fn compute_at(&self, step: u64) -> f64 {
        summed(&self.flops_by_size, step)
    }

    /// The loss the fits use: the smoothed validation loss, else the smoothed training loss, else (no
    /// training losses in `metrics.jsonl`) the final training loss (`summary.json`'s: the last batch's).
    /// A run without validation that diverged, or stopped unfinished on a non-finite loss, keeps its final
    /// one (NaN); a finished run whose very last step was skipped as non-finite keeps its smoothed loss.
    pub fn loss(&self) -> f64 {
        let ended_broken = self.diverged || (!self.finished && !self.final_train.is_finite());
        match (self.smoothed_val, self.smoothed_train) {
            (Some(v), _) => v,
            (None, Some(t)) if !ended_broken => t,
            _ => self.final_train,
        }
    }

    /// Whether the run ended diverged, as the fits treat it: stopped by `optim.max_nonfinite`, a final
    /// loss that is not finite, or a last validation loss that is NaN (null in `val.jsonl`).
    pub fn ended_diverged(&self) -> bool {
        self.diverged || !self.loss().is_finite() || self.final_val.is_some_and(f64::is_nan)
    }
}

pub(super) fn read_json(p: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))
}

/// `(step, value)` pairs of a log.
type Curve = Vec<(u64, f64)>;

/// The `(step, key)` curve of each of `keys` in a JSON-lines log (none: no file), and a note when its
/// last line was cut short (no newline after it: a run killed mid-write), which is skipped. A malformed
/// line before the last (one without a `step`, or with bytes that are not UTF-8, too) is an error naming
/// the file and line. A `null` value is kept as NaN (a non-finite loss is written so: a run that ends on
/// one diverged); a missing key leaves the step out.
fn jsonl_curves<const K: usize>(p: &Path, keys: [&str; K]) -> Result<([Curve; K], Option<String>)> {
    let mut out: [Curve; K] = std::array::from_fn(|_| Vec::new());
    let bytes = match std::fs::read(p) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((out, None)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    // (line by line: a disk's garbage in one line is named there, as a line that is not JSON)
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<(usize, &str)> = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).collect();
    let mut note = None;
    for (k, &(i, line)) in lines.iter().enumerate() {
        let cut_short = k + 1 == lines.len() && !text.ends_with('\n');
        let skipped = || format!("{} line {}: cut short (a run killed mid-write), skipped", p.display(), i + 1);
        // (a U+FFFD the file holds as such is text; one that stands for bytes that are not UTF-8 is damage,
        // or a character a kill cut in two)
        let raw = || bytes.split(|&b| b == b'\n').nth(i).unwrap_or_default();
        if line.contains(char::REPLACEMENT_CHARACTER) && std::str::from_utf8(raw()).is_err() {
            if cut_short {
                note = Some(skipped());
                break;
            }
            bail!("{} line {}: bytes that are not UTF-8 (a damaged file)", p.display(), i + 1);
        }
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if cut_short => {
                note = Some(skipped());
                break;
            }
            Err(e) => bail!("{} line {}: not JSON ({e})", p.display(), i + 1),
        };
        let Some(s) = v["step"].as_u64() else {
            bail!("{} line {}: no `step` (every line of a run's log has one)", p.display(), i + 1)
        };
        for (curve, key) in out.iter_mut().zip(keys) {
            // (a key of a table within the line as `sets/NAME/loss`)
            let value = match v.pointer(&format!("/{key}")) {
                Some(Value::Null) => Some(f64::NAN),
                other => other.and_then(Value::as_f64),
            };
            // a resumed run appends again from its checkpoint: keep the last value of each step (a curve
            // rises strictly, so the values it replaces are at its end)
            while curve.last().is_some_and(|&(st, _)| st >= s) {
                curve.pop();
            }
            if let Some(value) = value {
                curve.push((s, value));
            }
        }
    }
    Ok((out, note))
}

/// The values at steps in the last tenth of the last one's (`s ≥ 0.9·last`, which includes the last).
fn tail(curve: &[(u64, f64)]) -> Vec<f64> {
    let Some(&(last, _)) = curve.last() else { return vec![] };
    let (num, den) = SMOOTH_FRACTION;
    curve.iter().filter(|p| p.0 * den >= last * (den - num)).map(|p| p.1).collect()
}

/// The median of a curve's finite values.
fn median(curve: &[(u64, f64)]) -> Option<f64> {
    let mut v: Vec<f64> = curve.iter().map(|p| p.1).filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    median_of_sorted(&v)
}

/// The median of values in ascending order: the middle one, or the mean of the middle two.
pub(super) fn median_of_sorted(v: &[f64]) -> Option<f64> {
    let n = v.len();
    (n > 0).then(|| if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The mean of the evaluations at steps in the last tenth of the last one's (`s ≥ 0.9·last`, which
/// includes the last).
fn smoothed(curve: &[(u64, f64)]) -> Option<f64> {
    mean(&tail(curve))
}

/// The mean of the finite training losses in the last tenth of the steps logged up to `steps` (the
/// summary's: a session killed after its last summary logged steps it does not count). A non-finite
/// step's update was skipped; a run that ended on one has a NaN final loss, which [`RunRecord::loss`]
/// keeps.
fn smoothed_train(curve: &[(u64, f64)], steps: u64) -> Option<f64> {
    let upto = curve.partition_point(|p| p.0 <= steps);
    mean(&tail(&curve[..upto]).into_iter().filter(|l| l.is_finite()).collect::<Vec<_>>())
}

/// `derived.json`'s per-step mean `key` at each global batch size the run had, where a resume changed
/// it (`global_batch_sizes`), as `(from step, value)`; else from step 0 at its one size. `None` where a
/// figure is missing.
fn by_size(derived: &Value, key: &str) -> Option<Vec<(u64, f64)>> {
    match derived["global_batch_sizes"].as_array() {
        Some(sizes) => sizes.iter().map(|size| Some((size["from_step"].as_u64()?, size[key].as_f64()?))).collect(),
        None => Some(vec![(0, derived[key].as_f64()?)]),
    }
}

/// A per-step figure summed over the first `steps` steps, each at the value from its size's first step
/// on (`by_size`: by increasing step).
fn summed(by_size: &[(u64, f64)], steps: u64) -> f64 {
    let until = |k: usize| by_size.get(k + 1).map_or(steps, |next| next.0.min(steps));
    by_size.iter().enumerate().map(|(k, &(from, v))| until(k).saturating_sub(from) as f64 * v).sum()
}

/// [`by_size`] of `key` summed over the first `steps` steps.
fn over_steps(derived: &Value, key: &str, steps: u64) -> Option<f64> {
    Some(summed(&by_size(derived, key)?, steps))
}

/// Read one run folder (it has `derived.json` and `summary.json`), with notes on what was skipped (a
/// log's last line cut short). `val_set`: the validation set (`val.sets`) whose loss is the run's
/// validation loss, instead of `val.dir`'s.
pub fn read_run(dir: &Path, val_set: Option<&str>) -> Result<(RunRecord, Vec<String>)> {
    let derived = read_json(&dir.join("derived.json"))?;
    let summary = read_json(&dir.join("summary.json"))?;
    let num = |v: &Value, k: &str, file: &str| {
        v[k].as_f64().with_context(|| format!("{}: `{k}` missing in {file}", dir.display()))
    };
    let steps =
        summary["step"].as_u64().with_context(|| format!("{}: `step` missing in summary.json", dir.display()))?;
    let flops_per_step = num(&derived, "train_flops_per_step_mean", "derived.json")?;
    let flops_by_size = by_size(&derived, "train_flops_per_step_mean")
        .with_context(|| format!("{}: `train_flops_per_step_mean` missing in derived.json", dir.display()))?;
    let (val_key, rows_key) = match val_set {
        None => ("loss".to_string(), "rows".to_string()),
        Some(name) => (format!("sets/{name}/loss"), format!("sets/{name}/rows")),
    };
    let ([val_curve, val_rows], val_note) = jsonl_curves(&dir.join("val.jsonl"), [&val_key, &rows_key])?;
    let finished = summary["finished"]
        .as_bool()
        .with_context(|| format!("{}: `finished` missing in summary.json", dir.display()))?;
    // (lines past the summary's step: a session killed after its last summary, whose steps it does not count)
    let upto = |mut c: Curve| {
        c.truncate(c.partition_point(|p| p.0 <= steps));
        c
    };
    // a finished run's validation loss is its end's: one measured part-way (an `infinity eval` of an
    // earlier checkpoint, a set dropped from val.sets on a resume) would be fitted at the whole run's compute
    let short = |c: &Curve| finished && c.last().is_some_and(|p| p.0 < steps);
    let (mut val_curve, val_rows) = (upto(val_curve), upto(val_rows));
    let (mut eval_measured, mut val_from_eval, mut eval_note) = (None, false, None);
    if let Some(name) = val_set.filter(|_| val_curve.is_empty() || short(&val_curve)) {
        let (curve, measured, note) = eval_curve(&dir.join(EVAL_FILE), name, dir);
        let curve = upto(curve);
        if !curve.is_empty() {
            (val_curve, val_from_eval, eval_note) = (curve, true, note);
            // (lines of an earlier build may not name the folder: measured as the run's config says then)
            eval_measured = measured;
        }
    }
    if let Some(&(last, _)) = val_curve.last().filter(|_| short(&val_curve)) {
        let (what, how) = match val_set {
            Some(name) => (
                format!("set `{name}` of {}", if val_from_eval { EVAL_FILE } else { "val.jsonl" }),
                format!(
                    "infinity eval {} --val {} --name {name} --out {}",
                    dir.display(),
                    // (the folder its lines measured, where they say)
                    eval_measured.as_ref().map_or("DIR", |m| m.dir.as_str()),
                    dir.join(EVAL_FILE).display()
                ),
            ),
            // (eval.jsonl's lines are read for a named set alone)
            None => (
                "val.jsonl".to_string(),
                format!(
                    "infinity eval {} --val VAL_DIR --name NAME --out {} for every run, then infinity scaling \
                     --val-set NAME",
                    dir.display(),
                    dir.join(EVAL_FILE).display()
                ),
            ),
        };
        return Err(Unfinished(format!(
            "{}: its validation loss ({what}) ends at step {last}, but the run finished at step {steps}: evaluate its \
             last checkpoint ({how})",
            dir.display()
        ))
        .into());
    }
    let ([train_curve, tokens_per_s, mfu], train_note) =
        jsonl_curves(&dir.join("metrics.jsonl"), ["loss", "tokens_per_s", "mfu"])?;
    let config = std::fs::read_to_string(dir.join("config.toml")).ok().and_then(|t| settings::normalised(&t));
    // (`infinity eval`'s losses are measured on its `--val` folder and rows, with the run's other
    // validation settings: read as a run validating there would be)
    // (and a run validating in training on the rows it measured, as val.jsonl records them: a set smaller
    // than val.max_rows is measured whole, whatever the setting)
    let measured_config = match (&eval_measured, &config, val_rows.last()) {
        (Some(m), Some(t), _) => Some(settings::validating_on(t, &m.dir, m.rows)),
        (None, Some(t), Some(&(_, rows))) if !val_from_eval && rows.is_finite() => {
            Some(settings::measuring_rows(t, rows as u64))
        }
        _ => config.clone(),
    };
    let config_num = |section: &str, key: &str| {
        let v = config.as_ref()?.get(section)?.get(key)?;
        v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
    };
    let mut notes = Vec::new();
    let model: Option<crate::model::ModelConfig> = match serde_json::from_value(derived["model"].clone()) {
        Ok(model) => Some(model),
        Err(_) if derived.get("model").is_none() => None,
        Err(e) => {
            notes.push(format!(
                "{}: `model` does not read ({e}): the run's depth, width and heads are left blank",
                dir.join("derived.json").display()
            ));
            None
        }
    };
    let log = dir.join("metrics.jsonl");
    if train_curve.is_empty() && steps > 0 && log.is_file() {
        notes.push(format!(
            "{}: no step's loss (emptied?): the run's smoothed training loss and throughput are left blank",
            log.display()
        ));
    }
    let params = num(&derived, "parameters", "derived.json")?;
    let non_embedding_params = derived["parameters_non_embedding"]
        .as_f64()
        .or_else(|| model.as_ref().map(|m| crate::model::Layout::new(m).non_embedding_numel() as f64));
    let run = RunRecord {
        name: dir.file_name().map_or("run".into(), |n| n.to_string_lossy().to_string()),
        dir: dir.to_path_buf(),
        params,
        non_embedding_params,
        n: params,
        steps,
        tokens: over_steps(&derived, "tokens_per_step_mean", steps)
            .with_context(|| format!("{}: `tokens_per_step_mean` missing in derived.json", dir.display()))?,
        flops_per_step,
        compute: summed(&flops_by_size, steps),
        flops_by_size,
        planned_compute: read_json(&dir.join(crate::train::log::SWEEP_POINT_FILE))
            .ok()
            .and_then(|point| point["compute"].as_f64())
            .filter(|c| c.is_finite() && *c > 0.0),
        finished,
        diverged: summary["diverged"].as_bool().unwrap_or(false),
        // a run that diverged ends with a NaN loss, which JSON writes as null: it stays in the table
        final_train: match &summary["loss"] {
            Value::Null if summary.get("loss").is_some() => f64::NAN,
            _ => num(&summary, "loss", "summary.json")?,
        },
        final_val: val_curve.last().map(|p| p.1),
        smoothed_val: smoothed(&val_curve),
        smoothed_train: smoothed_train(&train_curve, steps),
        val_curve,
        val_from_eval,
        train_curve,
        tokens_per_s: median(&tokens_per_s),
        mfu: median(&mfu),
        lr: config.as_ref().and_then(settings::peak_lr),
        global_batch: config_num("data", "global_batch"),
        model,
        settings: settings::read(measured_config.as_ref(), &derived, val_set.filter(|_| eval_measured.is_none())),
        val_fingerprint: match eval_measured {
            Some(m) => m.fingerprint,
            None => val_fingerprint(dir, val_set),
        },
    };
    notes.extend([val_note, eval_note, train_note].into_iter().flatten());
    Ok((run, notes))
}

/// Runs validated on one folder whose checkpoints recorded different fingerprints of it (a set rebuilt
/// in place between them) are measured differently: the folder's name in their settings gets the
/// fingerprint. Where every run that recorded one agrees (or none did), the folder alone says it, so
/// runs that recorded none (an earlier build's, a folder without its checkpoints, `infinity eval`'s
/// losses) stay in the same group.
fn told_apart_by_fingerprint(runs: &mut [RunRecord]) {
    let mut seen: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for r in runs.iter() {
        if let Some(f) = &r.val_fingerprint {
            seen.entry(r.settings.get("val.dir").to_string()).or_default().insert(f.clone());
        }
    }
    for r in runs.iter_mut() {
        if seen.get(r.settings.get("val.dir")).is_some_and(|fs| fs.len() > 1) {
            r.settings = std::mem::take(&mut r.settings).with_val_fingerprint(r.val_fingerprint.clone());
        }
    }
}

/// The fingerprint of the validation set (`val.dir`, or the `val.sets` entry `name`) as the run's newest
/// checkpoint recorded it when it validated there; none where it does not say (no checkpoint, or one of
/// a build before 2026-11).
fn val_fingerprint(dir: &Path, name: Option<&str>) -> Option<String> {
    let (_, newest) = crate::train::checkpoint::complete(dir).pop()?;
    let sets = crate::train::checkpoint::read_state(&newest).ok()?.val_sets?;
    sets.get(&crate::train::val::set_key(name)).cloned()
}

/// The file in a run folder where `infinity eval RUN --val DIR --name NAME --out RUN/eval.jsonl`
/// appends its measurements, which `--val-set NAME` reads for a run whose `val.jsonl` has no such set.
pub const EVAL_FILE: &str = "eval.jsonl";

/// What the last `eval.jsonl` line of a set measured: its folder, rows and (lines since 2026-12) the
/// set's fingerprint.
struct Measured {
    dir: String,
    rows: u64,
    fingerprint: Option<String>,
}

/// The losses of the set `name` in a run's `eval.jsonl`, by checkpoint step (the weights', not the
/// moving average's; a step measured again keeps its last line; a null loss, a diverged model's, as
/// NaN), what the last measurement measured, and a note of the lines left out for measuring another
/// version of the set (its folder rebuilt in place since: their fingerprint differs from the last
/// line's). Lines that do not read, and lines of another run's weights (`run` is this run's folder),
/// are skipped.
fn eval_curve(path: &Path, name: &str, run: &Path) -> (Curve, Option<Measured>, Option<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut lines, mut measured) = (Vec::new(), None::<Measured>);
    // (a line of another run's weights, which `run` records where it is there to compare: a folder
    // moved since, or a line of an earlier build, without one, counts as the run's own)
    let own = |v: &Value| {
        let theirs = v["run"].as_str().and_then(|r| Path::new(r).canonicalize().ok());
        theirs.is_none_or(|t| run.canonicalize().is_ok_and(|r| r == t))
    };
    for v in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(own) {
        let (set, ema) = (v["set"].as_str(), v["ema"].as_bool().unwrap_or(false));
        let loss = match &v["loss"] {
            Value::Null => Some(f64::NAN),
            l => l.as_f64(),
        };
        if let (Some(step), Some(loss), Some(_), false) = (v["step"].as_u64(), loss, set.filter(|s| *s == name), ema) {
            let fingerprint = v["fingerprint"].as_str().map(String::from);
            lines.push((step, loss, fingerprint.clone(), v["val_dir"].as_str().map(String::from)));
            measured = v["val_dir"].as_str().map(|d| Measured {
                dir: d.into(),
                rows: v["rows"].as_u64().unwrap_or(0),
                fingerprint,
            });
        }
    }
    // (lines of an earlier build say no fingerprint: counted as the last line's set; lines of another
    // folder are another set by choice, which `--val` and the settings tell apart)
    let now = measured.as_ref().and_then(|m| m.fingerprint.clone());
    let last_dir = measured.as_ref().map(|m| m.dir.clone());
    let other = |f: &Option<String>, dir: &Option<String>| {
        *dir == last_dir && now.as_ref().zip(f.as_ref()).is_some_and(|(now, f)| now != f)
    };
    let (mut by_step, mut left_out) = (std::collections::BTreeMap::new(), std::collections::BTreeSet::new());
    for (step, loss, f, dir) in lines {
        if other(&f, &dir) {
            left_out.insert(step);
        } else {
            by_step.insert(step, loss);
            left_out.remove(&step);
        }
    }
    let note = (!left_out.is_empty()).then(|| {
        let steps: Vec<String> = left_out.iter().map(u64::to_string).collect();
        format!(
            "{}: set `{name}`'s lines of step(s) {} measured another version of {} than its last line (fingerprint {}): \
             left out (measure those checkpoints again)",
            path.display(),
            steps.join(", "),
            measured.as_ref().map_or("its folder", |m| m.dir.as_str()),
            now.as_deref().unwrap_or("?")
        )
    });
    (by_step.into_iter().collect(), measured, note)
}

/// Every readable run folder directly under each of `roots` (each root's sorted by name, numbers by
/// value: `embed-dim-64` before `embed-dim-128`), and notes: the folders left out (unreadable: a
/// malformed log line, a missing field) and the lines skipped. Folders without a summary are skipped
/// (`unsummarised`). A root without any is an error when it is the only one, and a note otherwise.
/// With `val_set` the runs' validation losses are that set's (`val.jsonl`'s `sets.NAME`); a run with
/// none is left out, with a note.
pub fn gather(roots: &[Root], val_set: Option<&str>) -> Result<(Vec<RunRecord>, Vec<String>)> {
    let (mut runs, mut notes) = (Vec::new(), Vec::new());
    // (the runs whose `val_set` losses are `infinity eval`'s, for one note)
    let mut from_eval: Vec<String> = Vec::new();
    // the validation sets the runs without `val_set` have, for the error when none has it
    let mut other_sets = std::collections::BTreeSet::new();
    for root in roots {
        let before = (runs.len(), notes.len());
        let rd = std::fs::read_dir(&root.dir).with_context(|| format!("reading {}", root.dir.display()))?;
        let mut dirs: Vec<PathBuf> =
            rd.flatten().map(|e| e.path()).filter(|p| p.join("summary.json").is_file()).collect();
        sort_by_name(&mut dirs);
        // (the runs without `val_set`'s losses, for one note)
        let mut without_set = Vec::new();
        for d in dirs {
            match read_run(&d, val_set) {
                Ok((run, _)) if val_set.is_some() && run.val_curve.is_empty() => {
                    other_sets.extend(val_set_names(&d.join("val.jsonl")));
                    without_set.push(root.name(&d));
                }
                Ok((mut run, skipped)) => {
                    run.name = root.name(&d);
                    if run.val_from_eval {
                        from_eval.push(run.name.clone());
                    }
                    runs.push(run);
                    notes.extend(skipped);
                }
                Err(e) if e.downcast_ref::<Unfinished>().is_some() => {
                    notes.push(format!("left out (validation losses short of the run's end): {e:#}"))
                }
                Err(e) => notes.push(format!("left out (unreadable): {e:#}")),
            }
        }
        if !without_set.is_empty() {
            notes.push(format!(
                "left out (no loss of the validation set {} in their val.jsonl: not one of their val.sets, or not \
                 evaluated yet; nor in their {EVAL_FILE}): {}",
                val_set.unwrap_or_default(),
                without_set.join(", ")
            ));
        }
        let dir = root.dir.display();
        // (for an error about this folder: the runs it holds that have no summary yet, and why)
        let waiting = super::select::Unsummarised::of(std::slice::from_ref(root)).said();
        let empty = match (runs.len() == before.0, notes.len() == before.1) {
            (false, _) => continue,
            // (`infinity scaling runs/tiny`: one run's folder, not the sweep's that holds it)
            (true, true) if root.dir.join("summary.json").is_file() => {
                bail!(
                    "{dir}: a run folder itself (it has a summary.json): give the folder that holds the run folders \
                     (a sweep's `out`)"
                )
            }
            (true, true) => format!("{dir}: no run folders with a summary.json (has the sweep run?){waiting}"),
            (true, false) if roots.len() == 1 && notes.iter().all(|n| n.contains("no loss of the validation set")) => {
                let name = val_set.unwrap_or_default();
                let have: Vec<&str> = other_sets.iter().map(String::as_str).collect();
                match have.is_empty() {
                    true => {
                        bail!("{dir}: no run has a validation set {name} (none has val.sets, or none evaluated yet)")
                    }
                    false => bail!("{dir}: no run has a validation set {name}; their val.sets: {}", have.join(", ")),
                }
            }
            (true, false) if roots.len() == 1 => {
                bail!("{dir}: no readable run folder:\n  {}{waiting}", notes.join("\n  "))
            }
            (true, false) => format!("{dir}: no readable run folder (the notes before say why)"),
        };
        match roots.len() {
            1 => bail!(empty),
            _ => notes.push(empty),
        }
    }
    if runs.is_empty() {
        bail!("no readable run folder in any of the {} folders given:\n  {}", roots.len(), notes.join("\n  "));
    }
    told_apart_by_fingerprint(&mut runs);
    if !from_eval.is_empty() {
        notes.push(format!(
            "the validation set {}'s losses of {} are infinity eval's (their {EVAL_FILE}: no such set in val.jsonl): {}",
            val_set.unwrap_or_default(),
            crate::cli::plural(from_eval.len(), "run"),
            from_eval.join(", ")
        ));
    }
    Ok((runs, notes))
}

/// The validation sets `val.jsonl` records (its lines' `sets` keys); none where it cannot be read.
fn val_set_names(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|v| v["sets"].as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Run folders in natural name order: numbers by value (`embed-dim-64` before `embed-dim-128`,
/// `tokens-5e4` before `tokens-1e5`).
pub(super) fn sort_by_name(dirs: &mut [PathBuf]) {
    // (the name itself breaks ties: `lr-0.001` and `lr-1e-3` are equal numbers, and listing order is not fixed)
    dirs.sort_by_cached_key(|d| {
        let name = d.file_name().unwrap_or_default().to_string_lossy().into_owned();
        (natural_key(&name), name)
    });
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

/// Run folders under `root` (a `config.toml`, as `infinity sweep` writes) that have no `summary.json`,
/// by name, with their folders.
pub(super) fn unsummarised(root: &Root) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(&root.dir) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.toml").is_file() && !p.join("summary.json").is_file())
        .collect();
    sort_by_name(&mut dirs);
    dirs.into_iter().map(|d| (root.name(&d), d)).collect()
}

#[cfg(test)]
mod tests {
    use crate::scaling::roots::roots;

    /// The smoothed loss averages the evaluations at steps in the last tenth: of 45 steps, 41 to 45 (the
    /// evaluation at 40 is before it); of 50, 45 to 50.
    #[test]
    fn the_smoothing_window_is_the_last_tenth() {
        let every5 = |last: u64| (1..=last / 5).map(|i| (5 * i, i as f64)).collect::<Vec<_>>();
        assert_eq!(super::smoothed(&every5(45)), Some(9.0));
        assert_eq!(super::smoothed(&every5(50)), Some(9.5));
        assert_eq!(super::smoothed(&[]), None);
    }

    /// A run resumed from an earlier checkpoint logs its steps again: the later value of each step
    /// stands, and the steps after the resume's point that the first history logged are dropped.
    #[test]
    fn a_resumed_log_keeps_the_last_value_of_each_step() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let lines = [(1, 5.0), (2, 4.0), (3, 3.0), (4, 2.5), (2, 4.5), (3, 3.5), (5, 2.0)];
        let text: String = lines.iter().map(|(s, l)| format!("{{\"step\": {s}, \"loss\": {l}}}\n")).collect();
        std::fs::write(&p, text).unwrap();
        let ([curve, missing], note) = super::jsonl_curves(&p, ["loss", "mfu"]).unwrap();
        assert_eq!(curve, [(1, 5.0), (2, 4.5), (3, 3.5), (5, 2.0)]);
        assert_eq!((missing, note), (vec![], None));
        assert_eq!(super::median(&curve), Some(4.0));
        assert_eq!(super::median(&[(1, 2.0), (2, f64::NAN), (3, 1.0), (4, 7.0)]), Some(2.0));
    }

    /// A line of bytes that are not UTF-8 (a damaged disk), or one without a step, is an error naming the
    /// file and line (the run is then left out, said), not a whole log dropped unsaid; a U+FFFD the file
    /// holds as text is text.
    #[test]
    fn a_damaged_or_stepless_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("val.jsonl");
        let mut bytes = b"{\"step\": 1, \"loss\": 0.5}\n{\"step\": 2, \"loss\": 0.4}\n".to_vec();
        bytes[23] = 0x80;
        std::fs::write(&p, &bytes).unwrap();
        let e = format!("{:#}", super::jsonl_curves(&p, ["loss"]).unwrap_err());
        assert!(e.ends_with("val.jsonl line 1: bytes that are not UTF-8 (a damaged file)"), "{e}");
        std::fs::write(&p, "{\"step\": 1, \"loss\": 0.5}\n{\"loss\": 0.4}\n{\"step\": 3, \"loss\": 0.3}\n").unwrap();
        let e = format!("{:#}", super::jsonl_curves(&p, ["loss"]).unwrap_err());
        assert!(e.ends_with("val.jsonl line 2: no `step` (every line of a run's log has one)"), "{e}");
        std::fs::write(&p, "{\"step\": 1, \"loss\": 0.5, \"note\": \"\u{FFFD}\"}\n").unwrap();
        assert_eq!(super::jsonl_curves(&p, ["loss"]).unwrap().0, [vec![(1, 0.5)]]);
        // a last line a kill cut inside a character is cut short, not damage
        let mut bytes = "{\"step\": 1, \"loss\": 0.5}\n{\"step\": 2, \"sets\": {\"é".as_bytes().to_vec();
        bytes.pop();
        std::fs::write(&p, &bytes).unwrap();
        let ([curve], note) = super::jsonl_curves(&p, ["loss"]).unwrap();
        assert_eq!(
            (curve, note.unwrap().ends_with("line 2: cut short (a run killed mid-write), skipped")),
            (vec![(1, 0.5)], true)
        );
    }

    /// A root without run folders is named as such (and the runs in it without a summary yet); one that
    /// is a run folder itself says to give its parent.
    #[test]
    fn a_root_without_run_folders_says_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let gather = || super::gather(&roots(&[dir.path()]).unwrap(), None).unwrap_err().to_string();
        let e = gather();
        assert!(e.ends_with(": no run folders with a summary.json (has the sweep run?)"), "{e}");
        // a sweep's runs not started yet (their config alone) are named
        std::fs::create_dir(dir.path().join("lr-0.01")).unwrap();
        std::fs::write(dir.path().join("lr-0.01/config.toml"), "").unwrap();
        let e = gather();
        assert!(
            e.ends_with("(has the sweep run?)\n  without a summary.json: not started (a config.toml alone): lr-0.01"),
            "{e}"
        );
        // one with a log failed before its first checkpoint (the sweep's kill -9 of it, say)
        std::fs::create_dir(dir.path().join("lr-0.02")).unwrap();
        std::fs::write(dir.path().join("lr-0.02/config.toml"), "").unwrap();
        std::fs::write(dir.path().join("lr-0.02/train.log"), "step 36\n").unwrap();
        let e = gather();
        let want =
            "\n  without a summary.json: stopped before their first checkpoint (failed or killed: their logs say what \
             they can): lr-0.02; not \
                    started (a config.toml alone): lr-0.01";
        assert!(e.ends_with(want), "{e}");
        std::fs::write(dir.path().join("summary.json"), "{}").unwrap();
        let e = gather();
        let want = ": a run folder itself (it has a summary.json): give the folder that holds the run folders (a \
                    sweep's `out`)";
        assert!(e.ends_with(want), "{e}");
    }

    /// A run whose global batch a resume changed counts each size's tokens for its own steps.
    #[test]
    fn tokens_and_compute_sum_over_the_global_batch_sizes() {
        let one = serde_json::json!({ "tokens_per_step_mean": 10.0 });
        assert_eq!(super::over_steps(&one, "tokens_per_step_mean", 7), Some(70.0));
        let sizes = serde_json::json!({
            "tokens_per_step_mean": 40.0,
            "global_batch_sizes": [
                { "from_step": 0, "tokens_per_step_mean": 10.0 },
                { "from_step": 5, "tokens_per_step_mean": 20.0 },
                { "from_step": 8, "tokens_per_step_mean": 40.0 },
            ],
        });
        assert_eq!(super::over_steps(&sizes, "tokens_per_step_mean", 10), Some(50.0 + 60.0 + 80.0));
        // (a summary of step 6, written before the last change: the sizes up to it)
        assert_eq!(super::over_steps(&sizes, "tokens_per_step_mean", 6), Some(50.0 + 20.0));
        assert_eq!(super::over_steps(&sizes, "train_flops_per_step_mean", 10), None);
    }

    #[test]
    fn run_names_sort_by_their_numbers() {
        let mut names = ["lr-3e-3", "lr-1e-4", "drop-0.1", "drop-0.05", "dim-128", "dim-64", "lr-0.001"];
        names.sort_by_cached_key(|n| super::natural_key(n));
        assert_eq!(names, ["dim-64", "dim-128", "drop-0.05", "drop-0.1", "lr-1e-4", "lr-0.001", "lr-3e-3"]);
    }
}
