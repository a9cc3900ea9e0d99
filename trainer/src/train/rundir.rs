//! The run folder across sessions: a fresh start refuses a folder that holds a run, a resume says
//! which settings differ from the checkpoint's, drops the logs a crash left past the checkpoint, and a
//! run resumed after its last step keeps the summary it finished with.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::checkpoint;

/// Files that only a run that trained leaves behind (config.toml and derived.json are written before
/// the first step, so a group restarted before its first checkpoint may leave them too).
pub(crate) const RUN_FILES: [&str; 2] = ["metrics.jsonl", "summary.json"];

/// For a fresh start (no `--resume`): an error when `run` already holds a run, naming what it holds.
pub fn check_fresh(run: &Path) -> Result<()> {
    let newest = checkpoint::complete(run).pop();
    let files: Vec<&str> = RUN_FILES.into_iter().filter(|f| run.join(f).is_file()).collect();
    if newest.is_none() && files.is_empty() {
        return Ok(());
    }
    let held = match newest {
        Some((step, _)) => format!("checkpoints up to step {step}"),
        None => files.join(", "),
    };
    bail!(
        "run.dir {} already holds a run ({held}): `--resume auto` continues it; to start afresh, remove the \
         folder or set another run.dir",
        run.display()
    )
}

/// `a.b.c = value` for every leaf of a TOML document.
pub(crate) fn leaves(text: &str) -> Result<BTreeMap<String, String>> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    walk(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
                }
            }
            // (an array of tables, `[[data.mix]]`, key by key: `data.mix[1].dir`)
            toml::Value::Array(a) if !a.is_empty() && a.iter().all(toml::Value::is_table) => {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v, out);
                }
            }
            v => {
                out.insert(prefix.to_string(), v.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", &toml::Value::Table(toml::from_str::<toml::Table>(text)?), &mut out);
    Ok(out)
}

/// `optim.lr_per_256` (upstream's `tblr`) in `leaves` as the `optim.lr` it gives at `data.global_batch`.
fn as_peak_rate(leaves: &mut BTreeMap<String, String>) {
    let num = |k: &str| leaves.get(k).and_then(|v| v.parse::<f64>().ok());
    if let (Some(per_256), Some(batch)) = (num("optim.lr_per_256"), num("data.global_batch")) {
        leaves.remove("optim.lr_per_256");
        let peak = super::config::lr_of_per_256(per_256, batch);
        leaves.insert("optim.lr".into(), toml::Value::Float(peak).to_string());
    }
}

/// The settings (other than `run.dir`) that differ between the checkpoint's config and this session's,
/// as `key: old → new` lines.
pub fn config_changes(checkpoint_toml: &str, config_toml: &str) -> Result<Vec<String>> {
    // each with every key, those at their default too, where both read as configs of this build: a
    // table written whole for one key changed (`[model.init]`) is that one change, not its other keys
    // "(unset)"
    let whole = |text: &str| {
        let cfg: super::config::TrainConfig = toml::from_str(text).ok()?;
        super::config::every_key(|| toml::to_string(&cfg)).ok()
    };
    let (checkpoint_toml, config_toml) = match (whole(checkpoint_toml), whole(config_toml)) {
        (Some(a), Some(b)) => (a, b),
        _ => (checkpoint_toml.to_string(), config_toml.to_string()),
    };
    let (mut old, mut new) = (leaves(&checkpoint_toml)?, leaves(&config_toml)?);
    // a rate given one way in one config and the other way in the other is compared as the peak
    if old.contains_key("optim.lr") != new.contains_key("optim.lr") {
        for side in [&mut old, &mut new] {
            as_peak_rate(side);
        }
    }
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let missing = "(unset)".to_string();
    Ok(keys
        .into_iter()
        .filter(|k| k.as_str() != "run.dir" && old.get(*k) != new.get(*k))
        .map(|k| format!("{k}: {} → {}", old.get(k).unwrap_or(&missing), new.get(k).unwrap_or(&missing)))
        .collect())
}

/// The changed settings of a resume from `ckpt`, for the console and train.log (a line saying they
/// were not compared when the checkpoint's config.toml is missing or unreadable), and a drop-path rate
/// other than the checkpoint's model trained with: `model.drop_path_rate` unset takes the preset's,
/// which a checkpoint of an earlier build (without drop path) does not share.
pub fn resume_changes(ckpt: &Path, config_toml: &str, mc: &crate::model::ModelConfig) -> Result<Vec<String>> {
    let p = ckpt.join("config.toml");
    let old = std::fs::read_to_string(&p);
    let mut changes = match &old {
        // (emptied: a damaged copy, not a config of every key unset)
        Ok(old) if old.trim().is_empty() => vec![format!("(not compared: {}: the file is empty)", p.display())],
        Ok(old) => config_changes(old, config_toml).with_context(|| format!("reading {}", p.display()))?,
        Err(e) => vec![format!("(not compared: {}: {e})", p.display())],
    };
    let model: Option<serde_json::Value> =
        std::fs::read_to_string(ckpt.join("model.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    // the schedules span run.steps: each moves at once to where the new length puts the step (a
    // longer run jumps back up the cosine)
    let schedules = step_schedules(config_toml);
    let jump = old.as_deref().ok().and_then(|old| lr_jump(ckpt, old, config_toml)).unwrap_or_default();
    for c in changes.iter_mut().filter(|c| c.starts_with("run.steps:")) {
        c.push_str(&format!(" (the {schedules} recomputed for the new length from this step{jump})"));
    }
    // (the loader's `sizes`); the peak learning rate as the two configs give it, whichever key each uses
    let peak =
        |text: &str| crate::scaling::settings::normalised(text).and_then(|t| crate::scaling::settings::peak_lr(&t));
    let peaks = (old.as_deref().ok().and_then(peak), peak(config_toml));
    // (a rate set anew changes the rate by itself: not the size's doing)
    let rate_set = changes.iter().any(|c| c.starts_with("optim.lr:") || c.starts_with("optim.lr_per_256:"));
    for c in changes.iter_mut().filter(|c| c.starts_with("data.global_batch:")) {
        let rate = match (peaks, rate_set) {
            ((Some(a), Some(b)), false) if a != b => {
                format!("the peak learning rate goes from {a:.4e} to {b:.4e} with it")
            }
            ((Some(a), Some(b)), true) if a != b => format!(
                "the peak learning rate goes from {a:.4e} to {b:.4e}, with the learning-rate setting changed too"
            ),
            ((_, Some(b)), false) => {
                format!("the peak learning rate stays {b:.4e} (optim.lr_per_256 would follow the size)")
            }
            ((_, Some(b)), true) => format!("the peak learning rate stays {b:.4e}"),
            _ => "the learning rate follows it where given as optim.lr_per_256".to_string(),
        };
        c.push_str(&format!(
            " (from this step the rest of the epoch's rows are drawn in batches of the new size, each once; {rate})"
        ));
    }
    // a schedule changed otherwise than by its length: the rate it gives at once
    let length_changed = changes.iter().any(|c| c.starts_with("run.steps:"));
    let schedule = ["optim.warmup_steps:", "optim.decay"];
    let first = changes.iter_mut().find(|c| schedule.iter().any(|s| c.starts_with(s)));
    if let Some(c) = first.filter(|_| !length_changed && !jump.is_empty()) {
        c.push_str(&format!(" ({})", jump.trim_start_matches("; ")));
    }
    // (a ZeRO-1 shard's share of the gradient norm is summed shard by shard: another order)
    for c in changes.iter_mut().filter(|c| c.starts_with("dist.zero1:")) {
        c.push_str(" (on more than one rank the gradient norm is summed in another order: not bit for bit)");
    }
    // (the loader's order is global: its threads only read ahead)
    for c in changes.iter_mut().filter(|c| c.starts_with("data.workers:")) {
        c.push_str(" (reader threads only: the batches are the same)");
    }
    // what a fresh start alone reads: a resume's weights and average are the checkpoint's
    for c in changes.iter_mut().filter(|c| c.starts_with("model.init_from") || c.starts_with("model.init.")) {
        c.push_str(" (no effect on a resume: the weights are the checkpoint's)");
    }
    if let Some(m) = model {
        let before = m.get("drop_path_rate").and_then(|v| v.as_f64()).unwrap_or(0.0);
        if before != mc.drop_path_rate && !changes.iter().any(|c| c.starts_with("model.drop_path_rate:")) {
            changes.push(format!("model.drop_path_rate (resolved): {before} → {}", mc.drop_path_rate));
        }
        // what the dataset gives the model (its bits, classes, text width and caption bound): a dataset
        // of another layout under the same config
        if let Ok(saved) = serde_json::from_value::<crate::model::ModelConfig>(m) {
            changes.extend(dataset_changes(&saved, mc));
        }
    }
    Ok(changes)
}

/// The settings of the model the dataset gives (`model.X (from the dataset): old → new` lines) that
/// differ between a checkpoint's model and the one the run's dataset implies now.
fn dataset_changes(saved: &crate::model::ModelConfig, now: &crate::model::ModelConfig) -> Vec<String> {
    use crate::model::Conditioning;
    let classes = |m: &crate::model::ModelConfig| match m.conditioning {
        Conditioning::Class { num_classes } => Some(num_classes),
        Conditioning::Text => None,
    };
    let text = |m: &crate::model::ModelConfig| m.has_cross_attention().then_some((m.text_channels, m.text_maxlen));
    let mut out = Vec::new();
    let mut differs = |key: &str, what: &str, a: usize, b: usize| {
        if a != b {
            out.push(format!("model.{key} (from the dataset: its {what}): {a} → {b}"));
        }
    };
    // (of the tokenizer's channels: patchify's change of the token's bits is the config's, said as such)
    if saved.d_vae() != now.d_vae() {
        differs("d", "bits per token", saved.d, now.d);
    }
    if let (Some(a), Some(b)) = (classes(saved), classes(now)) {
        differs("num_classes", "classes", a, b);
    }
    if let (Some((wa, la)), Some((wb, lb))) = (text(saved), text(now)) {
        differs("text_channels", "text features' width", wa, wb);
        differs("text_maxlen", "captions' token bound", la, lb);
    }
    out
}

/// How the learning rate moves where a resume from `ckpt` changes `run.steps` (a finished cosine run
/// extended goes back up the curve): `: the learning rate goes from A (the checkpoint's step) to B (the
/// next)`, that there is no next step where the checkpoint is at or past the new `run.steps`, or `None`
/// where a config does not read as this build's or the rate stays.
fn lr_jump(ckpt: &Path, old_toml: &str, config_toml: &str) -> Option<String> {
    let step = super::checkpoint::step_of(ckpt)?;
    let (old, new): (super::config::TrainConfig, super::config::TrainConfig) =
        (toml::from_str(old_toml).ok()?, toml::from_str(config_toml).ok()?);
    if step >= new.run.steps {
        return Some(format!(
            "; the checkpoint's step {step} is at or past run.steps = {}: nothing to train (the run exits at once, \
             its folder as it is)",
            new.run.steps
        ));
    }
    let before = old.schedule().lr(step.saturating_sub(1), old.run.steps);
    let after = new.schedule().lr(step, new.run.steps);
    (format!("{before:.3e}") != format!("{after:.3e}"))
        .then(|| format!("; the learning rate goes from {before:.3e} at step {step} to {after:.3e} at the next"))
}

/// The schedules over `run.steps` that a config has, as the resume message names them: the learning
/// rate's always, the weight decay's (`optim.adamw.weight_decay_end`) and the clip's
/// (`optim.clip_decay`) where set.
fn step_schedules(config_toml: &str) -> String {
    let table: Option<toml::Table> = toml::from_str(config_toml).ok();
    let optim = table.as_ref().and_then(|t| t.get("optim"));
    let wd_end = optim.and_then(|o| o.get("adamw")?.get("weight_decay_end")).is_some();
    let clip_decay = optim.and_then(|o| o.get("clip_decay")?.as_bool()) == Some(true);
    let mut moving = vec!["learning-rate"];
    moving.extend(wd_end.then_some("weight decay"));
    moving.extend(clip_decay.then_some("clip"));
    match moving.len() {
        1 => "learning-rate schedule is".to_string(),
        n => format!("{} and {} schedules are", moving[..n - 1].join(", "), moving[n - 1]),
    }
}

/// Whether `run` holds the history of another run than the one resumed from `ckpt` (at `step`, a
/// checkpoint of another run folder): a checkpoint of its own at or before `step`, or a log from before
/// it. The resumed run would append to that history (its logs, its checkpoints kept beside the new
/// ones). A run that was itself resumed from `ckpt` logs from `step + 1` on, and is continued; a copy of
/// `run`'s own checkpoint kept elsewhere is `run`'s. The message saying so, or `None`.
pub fn foreign_history(run: &Path, ckpt: &Path, step: u64) -> Option<String> {
    let (run_full, ckpt_full) = (run.canonicalize().ok()?, ckpt.canonicalize().ok()?);
    // (a copy of this run's own checkpoint kept elsewhere names this run.dir in its config)
    let own_copy = || {
        let text = std::fs::read_to_string(ckpt.join("config.toml")).ok()?;
        let dir = text.parse::<toml::Table>().ok()?.get("run")?.get("dir")?.as_str()?.to_string();
        Path::new(&dir).canonicalize().ok()
    };
    if ckpt_full.starts_with(&run_full) || own_copy().is_some_and(|d| d == run_full) {
        return rewound_since(run, ckpt, step);
    }
    let held = match checkpoint::complete(run).into_iter().find(|(s, _)| *s <= step) {
        Some((s, _)) => format!("its own checkpoint of step {s}"),
        None => {
            let text = std::fs::read_to_string(run.join("metrics.jsonl")).ok()?;
            let first = text.lines().find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64());
            format!("metrics.jsonl from step {}", first.filter(|&s| s <= step)?)
        }
    };
    Some(format!(
        "run.dir {} holds another run ({held}), and resuming it from {} (step {step}) would mix the two histories \
         in one folder: resume into a new run.dir, or `--resume auto` to continue the run it holds",
        run.display(),
        ckpt.display()
    ))
}

/// Whether `run`'s history ends before `step`, the step of its own checkpoint `ckpt` (one kept
/// elsewhere, or under `abandoned/`): its logs end earlier, and so does its newest checkpoint. The
/// folder was then rewound since `ckpt` was written, and another history follows the steps they share;
/// resuming `ckpt` into it would join the two (the logs jumping from that history's last step, its
/// checkpoints kept beside this one's). The message saying so, or `None`. (Logs that are gone tell
/// nothing.)
fn rewound_since(run: &Path, ckpt: &Path, step: u64) -> Option<String> {
    let logged = last_line_up_to(&run.join("metrics.jsonl"), u64::MAX)?["step"].as_u64()?;
    let newest = checkpoint::complete(run).last().map(|(s, _)| *s);
    // a history set aside under abandoned/after-step-F/ forked from the folder's at step F: the
    // checkpoint is one of its own, or a copy of one kept elsewhere (the same weights)
    let fork_of = |folder: &Path| {
        let name = folder.file_name()?.to_str()?.strip_prefix("after-step-")?;
        name.split('.').next()?.parse::<u64>().ok()
    };
    let weights = |dir: &Path| checkpoint::read_state(dir).ok().map(|s| s.model_crc32c);
    let copied_from = || {
        let mine = weights(ckpt)?;
        let folders = std::fs::read_dir(run.join("abandoned")).ok()?;
        folders.flatten().map(|f| f.path()).find(|f| weights(&checkpoint::step_folder(f, step)) == Some(mine.clone()))
    };
    // (the folder's own checkpoint is of its history, even where a rewind recomputed an abandoned one's
    // weights bit for bit: the same settings give the same steps)
    let own = ckpt.parent().and_then(|p| p.canonicalize().ok()) == run.join("checkpoints").canonicalize().ok();
    let abandoned_at = match ckpt.parent().filter(|p| p.parent().is_some_and(|a| a.ends_with("abandoned"))) {
        Some(folder) => fork_of(folder),
        None if own => None,
        None => copied_from().and_then(|f| fork_of(&f)),
    };
    if let Some(fork) = abandoned_at.filter(|&f| logged > f || newest.is_some_and(|n| n > f)) {
        return Some(format!(
            "{}: of a history this run folder abandoned at step {fork}, since when it trained another (its logs reach \
             step {logged}); resuming it here would join the two: resume it into a new run.dir, or move the \
             folder's checkpoints after step {fork} aside first",
            ckpt.display()
        ));
    }
    (logged < step && newest.is_none_or(|n| n < step)).then(|| {
        let newest = newest.map_or(String::new(), |n| format!(" and its newest checkpoint is of step {n}"));
        format!(
            "run.dir {}: its metrics.jsonl ends at step {logged}{newest}, before the step of {} ({step}): the \
             folder was rewound since that checkpoint was written and holds another history, which resuming it \
             here would join; resume into a new run.dir, or move the folder's checkpoints and logs aside first",
            run.display(),
            ckpt.display()
        )
    })
}

/// Keeps the lines of a JSON-lines log (`metrics.jsonl`, `val.jsonl`) whose `step` is at most `step`:
/// what a crash wrote after the checkpoint a run resumes from would otherwise appear twice. A line that
/// is not a record with a step (a write cut short, an edit) is kept where records the run keeps follow
/// it and dropped after them, and either way a warning names it: the log is never shortened unsaid.
pub fn truncate_log(path: &Path, step: u64) -> Result<()> {
    // (no log yet: nothing to cut; one that does not read is an error, not a log appended to uncut)
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {} to cut it back to step {step}", path.display())),
    };
    // (bytes that are not UTF-8, a disk's garbage, read as replacement characters: those lines are no
    // records, and are said)
    let text = String::from_utf8_lossy(&bytes);
    let steps: Vec<Option<u64>> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v["step"].as_u64()))
        .collect();
    let last_kept = steps.iter().rposition(|s| s.is_some_and(|s| s <= step));
    let mut body = String::new();
    for (i, (line, s)) in text.lines().zip(&steps).enumerate() {
        let within = last_kept.is_some_and(|k| i < k);
        match s {
            Some(s) if *s <= step => body.push_str(&format!("{line}\n")),
            Some(_) => {}
            None if within => {
                tracing::warn!("{} line {}: not a record with a step; kept as it is", path.display(), i + 1);
                body.push_str(&format!("{line}\n"));
            }
            None => tracing::warn!(
                "{} line {}: not a record with a step (a write cut short?), after the records up to step {step} this \
                 session continues from; dropped",
                path.display(),
                i + 1
            ),
        }
    }
    if body == text || (body.is_empty() && text.trim().is_empty()) {
        return Ok(());
    }
    infinity_data::manifest::write_atomic(path, body.as_bytes())
        .with_context(|| format!("rewriting {}", path.display()))
}

/// Drops the lines of `RUN/eval.jsonl` (`infinity eval --out`'s) of this run's checkpoints past `step`:
/// a crash lost them or a rewind set them aside. Lines of other models (an export's, a source's) stay,
/// whatever their step, and what is dropped is said.
pub fn truncate_eval_log(run: &Path, step: u64) -> Result<()> {
    let path = run.join("eval.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let run = run.canonicalize().unwrap_or_else(|_| run.to_path_buf());
    let past = |line: &str| {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { return false };
        let ours = v["checkpoint"].as_str().is_some_and(|c| Path::new(c).starts_with(&run));
        ours && v["step"].as_u64().is_some_and(|s| s > step)
    };
    let kept: Vec<&str> = text.lines().filter(|l| !past(l)).collect();
    let dropped = text.lines().count() - kept.len();
    if dropped == 0 {
        return Ok(());
    }
    tracing::info!(
        "{}: {} of this run's checkpoints past step {step} dropped (of the history this session replaces)",
        path.display(),
        crate::cli::plural(dropped, "line")
    );
    let body: String = kept.iter().map(|l| format!("{l}\n")).collect();
    infinity_data::manifest::write_atomic(&path, body.as_bytes())
        .with_context(|| format!("rewriting {}", path.display()))
}

/// `summary.json`, if it can be read.
pub(super) fn read_summary(run: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).ok()?).ok()
}

/// Whether the run's `summary.json` says `flag` (`finished`, `diverged`, `preempted`) is true; false
/// where it has none, or one that cannot be read.
pub fn summary_says(run: &Path, flag: &str) -> bool {
    read_summary(run).is_some_and(|s| s[flag] == true)
}

/// The step the session that wrote `summary.json` started from (`started_at`), if it records one.
pub fn summary_started_at(run: &Path) -> Option<u64> {
    read_summary(run)?["started_at"].as_u64()
}

/// The step `summary.json` records, if it can be read.
pub fn summary_step(run: &Path) -> Option<u64> {
    read_summary(run)?["step"].as_u64()
}

/// What a run resumed at its last step reports: its `summary.json` when that records this step, else
/// the last `metrics.jsonl` line up to it (`(loss, bit_acc)`; `None` without either).
pub fn finished_metrics(run: &Path, step: u64) -> Option<(f64, f64)> {
    let pair = |v: &serde_json::Value| Some((v["loss"].as_f64()?, v["bit_acc"].as_f64()?));
    if let Some(s) = read_summary(run).filter(|s| s["step"].as_u64() == Some(step)) {
        return pair(&s);
    }
    last_line_up_to(&run.join("metrics.jsonl"), step).and_then(|v| pair(&v))
}

/// The last validation up to `step` in `val.jsonl`: its step and loss.
pub fn last_val(run: &Path, step: u64) -> Option<(u64, f64)> {
    let v = last_line_up_to(&run.join("val.jsonl"), step)?;
    Some((v["step"].as_u64()?, v["loss"].as_f64()?))
}

/// The last line of a JSON-lines log whose `step` is at most `step`.
fn last_line_up_to(path: &Path, step: u64) -> Option<serde_json::Value> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|v| v["step"].as_u64().is_some_and(|s| s <= step))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_changes_name_each_key_but_the_run_folder() {
        let old = "[run]\ndir = \"a\"\nsteps = 20\n[optim]\nlr = 0.003\n";
        let new = "[run]\ndir = \"b\"\nsteps = 40\n[optim]\nlr = 0.003\nclip = 1.0\n";
        assert_eq!(config_changes(old, new).unwrap(), ["optim.clip: (unset) → 1.0", "run.steps: 20 → 40"]);
        assert!(config_changes(old, old).unwrap().is_empty());
        // a rate given per 256 samples against one given as itself: compared as the peak
        let per_256 = |rate: f64| {
            format!("[run]\ndir = \"a\"\nsteps = 20\n[data]\nglobal_batch = 128\n[optim]\nlr_per_256 = {rate}\n")
        };
        let lr = "[run]\ndir = \"a\"\nsteps = 20\n[data]\nglobal_batch = 128\n[optim]\nlr = 0.003\n";
        assert!(config_changes(lr, &per_256(0.006)).unwrap().is_empty());
        assert_eq!(config_changes(lr, &per_256(0.004)).unwrap(), ["optim.lr: 0.003 → 0.002"]);
        // given the same way, as it is given
        assert_eq!(config_changes(&per_256(0.006), &per_256(0.004)).unwrap(), ["optim.lr_per_256: 0.006 → 0.004"]);
    }

    /// A longer run's resume says where the learning rate goes: a finished cosine run extended climbs
    /// back up the curve.
    #[test]
    fn a_longer_run_says_where_the_learning_rate_goes() {
        let text = |steps: u64| {
            format!(
                "[run]\ndir = \"a\"\nseed = 0\nsteps = {steps}\n[model]\npreset = \"tiny\"\nconditioning = \"class\"\n[data]\ndir = \"d\"\nglobal_batch = 4\nmicro_batch = 4\n[optim]\nlr = 1e-3\n\
                 decay = {{ kind = \"cosine\", min_ratio = 0.1 }}\n"
            )
        };
        let ckpt = Path::new("/x/run/checkpoints/step-00000200");
        let jump = lr_jump(ckpt, &text(200), &text(400)).unwrap();
        assert_eq!(jump, "; the learning rate goes from 1.000e-4 at step 200 to 5.482e-4 at the next");
        let constant = |steps: u64| text(steps).replace("decay = { kind = \"cosine\", min_ratio = 0.1 }\n", "");
        assert_eq!(lr_jump(ckpt, &constant(200), &constant(400)), None, "a constant rate stays");
        let shorter = lr_jump(ckpt, &text(400), &text(150)).unwrap();
        assert!(shorter.starts_with("; the checkpoint's step 200 is at or past run.steps = 150: nothing"), "{shorter}");
    }

    /// Of two whole configs, one key of a table written whole where one key differs from its default
    /// (`[model.init]`) is one change (its other keys were "(unset) → default"); a schedule changed at a
    /// resume says where the rate goes, ZeRO-1 turned on that its sums are in another order, and the reader
    /// threads changed that the batches are the same.
    #[test]
    fn a_resume_names_the_keys_that_changed_and_what_they_do() {
        let tmp = tempfile::tempdir().unwrap();
        let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/demo-cpu.toml")).unwrap();
        let ckpt = tmp.path().join("checkpoints/step-00000100");
        std::fs::create_dir_all(&ckpt).unwrap();
        std::fs::write(ckpt.join("config.toml"), &demo).unwrap();
        let mc = crate::model::ModelConfig::named_preset("tiny").unwrap();
        let changed = |new: String| resume_changes(&ckpt, &new, &mc).unwrap();
        assert_eq!(
            changed(demo.replace("[model]\n", "[model]\ninit = { hd0 = 0.5 }\n")),
            ["model.init.hd0: 0.02 → 0.5 (no effect on a resume: the weights are the checkpoint's)"]
        );
        let warmup = changed(demo.replace("warmup_steps = 20", "warmup_steps = 500"));
        assert!(warmup.len() == 1 && warmup[0].contains("(the learning rate goes from "), "{warmup:?}");
        let zero1 = changed(demo.replace("[model]\n", "[dist]\nzero1 = true\n[model]\n"));
        assert!(zero1.len() == 1 && zero1[0].ends_with("in another order: not bit for bit)"), "{zero1:?}");
        assert_eq!(
            changed(demo.replace("workers = 1", "workers = 4")),
            ["data.workers: 1 → 4 (reader threads only: the batches are the same)"]
        );
    }

    /// A resume names `model.init_from` changed as having no effect (a user reading the run's config
    /// would take the new source for the weights' origin).
    #[test]
    fn a_resume_says_a_new_init_from_does_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let old = "[run]\ndir = \"a\"\n[model]\ninit_from = \"/x/runT\"\n";
        std::fs::write(tmp.path().join("config.toml"), old).unwrap();
        let new = "[run]\ndir = \"a\"\n[model]\ninit_from = \"/x/exp\"\n";
        let mc = crate::model::ModelConfig::preset("tiny").unwrap();
        let changes = resume_changes(tmp.path(), new, &mc).unwrap();
        let want =
            "model.init_from: \"/x/runT\" → \"/x/exp\" (no effect on a resume: the weights are the checkpoint's)";
        assert_eq!(changes, [want]);
        // an emptied config.toml is said, not a change of every key
        std::fs::write(tmp.path().join("config.toml"), "\n").unwrap();
        let changes = resume_changes(tmp.path(), new, &mc).unwrap();
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(
            changes[0].starts_with("(not compared: ") && changes[0].ends_with(": the file is empty)"),
            "{changes:?}"
        );
    }

    /// A new global batch says what it does to the peak rate: with `optim.lr_per_256` it follows the
    /// size; a rate set anew in the same resume is not put down to the size.
    #[test]
    fn a_new_global_batch_says_what_moves_the_learning_rate() {
        let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/demo-cpu.toml")).unwrap();
        let with = |batch: &str, rate: &str| {
            demo.replace("global_batch = 32", &format!("global_batch = {batch}")).replace("lr = 3e-3", rate)
        };
        let dir = tempfile::tempdir().unwrap();
        let mc = crate::model::ModelConfig::named_preset("tiny").unwrap();
        let change = |old: &str, new: &str| {
            std::fs::write(dir.path().join("config.toml"), old).unwrap();
            let changes = resume_changes(dir.path(), new, &mc).unwrap();
            changes.into_iter().find(|c| c.starts_with("data.global_batch:")).unwrap()
        };
        let per_256 = change(&with("32", "lr_per_256 = 0.008"), &with("64", "lr_per_256 = 0.008"));
        assert!(per_256.ends_with("the peak learning rate goes from 1.0000e-3 to 2.0000e-3 with it)"), "{per_256}");
        let both = change(&with("32", "lr = 3e-3"), &with("64", "lr = 1e-3"));
        assert!(
            both.ends_with("goes from 3.0000e-3 to 1.0000e-3, with the learning-rate setting changed too)"),
            "{both}"
        );
        let fixed = change(&with("32", "lr = 3e-3"), &with("64", "lr = 3e-3"));
        assert!(fixed.ends_with("stays 3.0000e-3 (optim.lr_per_256 would follow the size))"), "{fixed}");
    }

    #[test]
    fn a_resume_names_the_schedules_a_new_length_moves() {
        assert_eq!(step_schedules("[optim]\nlr = 0.003\n"), "learning-rate schedule is");
        assert_eq!(step_schedules("[optim]\nclip_decay = true\n"), "learning-rate and clip schedules are");
        assert_eq!(
            step_schedules("[optim]\nclip_decay = true\n[optim.adamw]\nweight_decay_end = 0.0\n"),
            "learning-rate, weight decay and clip schedules are"
        );
    }

    #[test]
    fn logs_keep_the_steps_up_to_the_checkpoint() {
        let dir = std::env::temp_dir().join(format!("rundir-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("metrics.jsonl");
        let lines: String = (1..=6).map(|s| format!("{{\"step\":{s},\"loss\":{}.5,\"bit_acc\":0.5}}\n", s)).collect();
        std::fs::write(&p, &lines).unwrap();
        truncate_log(&p, 4).unwrap();
        let kept = std::fs::read_to_string(&p).unwrap();
        assert_eq!(kept.lines().count(), 4);
        assert_eq!(finished_metrics(&dir, 4), Some((4.5, 0.5)));
        assert_eq!(finished_metrics(&dir, 9), Some((4.5, 0.5)));

        assert!(check_fresh(&dir).unwrap_err().to_string().contains("metrics.jsonl"), "a run's log is a run");

        // an unreadable line among the kept records stays; one after them (a torn write) goes
        std::fs::write(&p, "{\"step\":1}\nnot json\n{\"step\":2}\n{\"step\":3}\n{\"st").unwrap();
        truncate_log(&p, 2).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"step\":1}\nnot json\n{\"step\":2}\n");
        std::fs::write(&p, "{\"step\":1}\n{\"st").unwrap();
        truncate_log(&p, 5).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"step\":1}\n", "a torn last line is dropped");
        // bytes that are not UTF-8 (a disk's garbage) do not stop the cut: the steps past it still go
        std::fs::write(&p, b"{\"step\":1}\n\xff\xfe\n{\"step\":2}\n{\"step\":3}\n").unwrap();
        truncate_log(&p, 2).unwrap();
        let kept = String::from_utf8(std::fs::read(&p).unwrap()).unwrap();
        assert!(kept.ends_with("{\"step\":2}\n") && !kept.contains("\"step\":3"), "{kept}");
        // a log that cannot be read is an error, not a log left uncut
        let folder = dir.join("val.jsonl");
        std::fs::create_dir_all(&folder).unwrap();
        assert!(truncate_log(&folder, 2).is_err());
        std::fs::remove_dir(&folder).unwrap();
        std::fs::remove_file(&p).unwrap();
        check_fresh(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
