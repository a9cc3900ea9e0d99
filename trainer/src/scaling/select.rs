//! Which runs the fits take, and why the others are left out (notes, and warnings where the left-out
//! runs are results the fits could have used): finished runs with a finite loss; of a learning-rate
//! sweep, each group's best rate; of runs whose losses were measured differently (another dataset,
//! validation set or loss setting: `settings::MEASUREMENT`), those of the kind with the most runs.

use super::lr::{self, LrGroup};
use super::roots::Root;
use super::runs::unsummarised;
use super::RunRecord;

/// The run folders of `roots` without a `summary.json`, by name, as the notes tell them apart.
pub(super) struct Unsummarised {
    /// Still training: their locks are held.
    pub busy: Vec<String>,
    /// Failed before their first checkpoint: a log, no lock.
    pub failed: Vec<String>,
    /// Never started: a `config.toml` alone.
    pub unstarted: Vec<String>,
    /// With checkpoints, yet no summary (the file removed, or lost in a copy).
    pub lost: Vec<String>,
}

impl Unsummarised {
    pub fn of(roots: &[Root]) -> Unsummarised {
        let (busy, silent): (Vec<_>, Vec<_>) =
            roots.iter().flat_map(unsummarised).partition(|(_, dir)| crate::train::run_lock::in_use(dir));
        // (a run started has a log: `train.log` from the sweep, `logs/` from `infinity launch`, its own
        // `metrics.jsonl` from its first step, killed before its first checkpoint; one only planned has
        // its config alone)
        let logged = |dir: &std::path::Path| {
            dir.join("train.log").is_file() || dir.join("logs").is_dir() || dir.join("metrics.jsonl").is_file()
        };
        // (a run writes its summary with its first complete checkpoint; one killed while writing it
        // leaves an incomplete one)
        let checkpointed = |dir: &std::path::Path| !crate::train::checkpoint::complete(dir).is_empty();
        let (lost, silent): (Vec<_>, Vec<_>) = silent.into_iter().partition(|(_, dir)| checkpointed(dir));
        let (failed, unstarted): (Vec<_>, Vec<_>) = silent.into_iter().partition(|(_, dir)| logged(dir));
        let names_of = |v: Vec<(String, std::path::PathBuf)>| v.into_iter().map(|b| b.0).collect::<Vec<String>>();
        Unsummarised {
            busy: names_of(busy),
            failed: names_of(failed),
            unstarted: names_of(unstarted),
            lost: names_of(lost),
        }
    }

    /// What an error about a folder with no summarised run adds: `\n  without a summary.json: …`, each
    /// kind named (empty without any).
    pub fn said(&self) -> String {
        let kinds = [
            (&self.busy, "still training (their locks are held)"),
            (&self.failed, "stopped before their first checkpoint (failed or killed: their logs say what they can)"),
            (&self.unstarted, "not started (a config.toml alone)"),
            (&self.lost, "with checkpoints but no summary (the file removed, or lost in a copy)"),
        ];
        let said: Vec<String> =
            kinds.iter().filter(|(v, _)| !v.is_empty()).map(|(v, what)| format!("{what}: {}", v.join(", "))).collect();
        match said.is_empty() {
            true => String::new(),
            false => format!("\n  without a summary.json: {}", said.join("; ")),
        }
    }
}

/// The runs the fits take, with what to say about the rest.
pub struct Selection<'a> {
    pub fitted: Vec<&'a RunRecord>,
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

pub fn select<'a>(roots: &[Root], runs: &'a [RunRecord], lr_groups: &[LrGroup]) -> Selection<'a> {
    let (mut notes, mut warnings) = (Vec::new(), Vec::new());
    let training = |r: &RunRecord| crate::train::run_lock::in_use(&r.dir);
    let Unsummarised { busy, failed, unstarted, lost } = Unsummarised::of(roots);
    if !busy.is_empty() {
        notes.push(format!("still training (their folders' locks are held; no summary.json yet): {}", busy.join(", ")));
    }
    if !failed.is_empty() {
        notes.push(format!(
            "left out (no summary.json: stopped before their first checkpoint, failed or killed; their logs say what \
             they can): {}",
            failed.join(", ")
        ));
    }
    if !unstarted.is_empty() {
        notes.push(format!("left out (not started: a config.toml alone, no log): {}", unstarted.join(", ")));
    }
    if !lost.is_empty() {
        notes.push(format!(
            "left out (no summary.json, though they have checkpoints: the file removed, or lost in a copy): {}",
            lost.join(", ")
        ));
    }
    let names = |v: &[&RunRecord]| v.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ");
    // a run whose last validation loss is NaN (null in val.jsonl) ended diverged, whatever came before
    let nan_val: Vec<&RunRecord> = runs.iter().filter(|r| r.final_val.is_some_and(f64::is_nan)).collect();
    if !nan_val.is_empty() {
        notes.push(format!(
            "left out of the fits (final validation loss NaN, null in val.jsonl: treated as diverged): {}",
            names(&nan_val)
        ));
    }
    let diverged: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| (r.diverged || !r.loss().is_finite()) && !r.final_val.is_some_and(f64::is_nan))
        .collect();
    if !diverged.is_empty() {
        notes.push(format!(
            "left out of the fits (diverged: a final result, which `infinity sweep` does not train again): {}",
            names(&diverged)
        ));
    }
    // a stopped run's loss is of a schedule it did not finish, at less compute than planned
    let unfinished = |busy: bool| -> Vec<&RunRecord> {
        let open = runs.iter().filter(|r| !r.finished && !r.diverged && r.loss().is_finite() && training(r) == busy);
        open.collect()
    };
    if !unfinished(true).is_empty() {
        notes.push(format!(
            "left out of the fits (still training: their folders' locks are held): {}",
            names(&unfinished(true))
        ));
    }
    if !unfinished(false).is_empty() {
        notes.push(format!(
            "left out of the fits (not finished: stopped by a signal or a failure; the same `infinity sweep` resumes \
             them): {}",
            names(&unfinished(false))
        ));
    }
    // the fits take the finished runs with a finite loss, of a learning-rate sweep the best rate of each
    // group, and of runs measured differently those of the kind with the most runs; the tables list
    // every run
    let not_best = lr::not_best(lr_groups);
    let (candidates, other_rates): (Vec<&RunRecord>, Vec<&RunRecord>) =
        runs.iter().filter(|r| r.finished && r.loss().is_finite()).partition(|r| !not_best.contains(&r.dir));
    if !other_rates.is_empty() {
        notes.push(format!(
            "the fits take the best learning rate of each of the {} learning-rate groups (lr_sweep.md); left out at \
             other rates: {}",
            lr_groups.len(),
            names(&other_rates)
        ));
    }
    let mut kinds: Vec<Vec<&RunRecord>> = Vec::new();
    for r in candidates {
        match kinds.iter_mut().find(|v| v[0].settings.measured == r.settings.measured) {
            Some(v) => v.push(r),
            None => kinds.push(vec![r]),
        }
    }
    // the most experiments (repeats of one config are one point of the fits), then the most runs; of
    // equals, the first in name order (max_by_key keeps the last maximum)
    let experiments = |v: &[&RunRecord]| super::points::by_experiment(v).len();
    let largest =
        kinds.iter().enumerate().max_by_key(|(i, v)| (experiments(v), v.len(), usize::MAX - i)).map(|(i, _)| i);
    let fitted: Vec<&RunRecord> = largest.map_or(Vec::new(), |i| kinds[i].clone());
    if kinds.len() > 1 {
        let ours = &fitted[0].settings;
        let others: Vec<String> = kinds
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != largest)
            .map(|(_, v)| format!("{} ({})", names(v), v[0].settings.differences(ours).join(", ")))
            .collect();
        warnings.push(format!(
            "the runs' losses were measured in {} different ways (dataset, validation set or loss settings), and \
             losses measured differently are not comparable: the fits take the {} on {}; left out: {} (fit them \
             on their own: `infinity scaling` on a folder of those runs)",
            kinds.len(),
            infinity_launcher::plural(fitted.len(), "run"),
            ours.describe(),
            others.join("; ")
        ));
    }
    let (smoothed, last): (Vec<&RunRecord>, Vec<&RunRecord>) =
        fitted.iter().copied().filter(|r| r.smoothed_val.is_none()).partition(|r| r.smoothed_train.is_some());
    if !smoothed.is_empty() {
        notes.push(format!(
            "runs without validation are fitted on their smoothed training loss (the mean over the last 10 % of their \
             steps in metrics.jsonl): {}",
            names(&smoothed)
        ));
    }
    if !last.is_empty() {
        notes.push(format!(
            "runs without validation or training losses in metrics.jsonl are fitted on their final training loss \
             (summary.json's: one batch's): {}",
            names(&last)
        ));
    }
    // (a loss above chance at the end: a run that blew up and stayed finite, or learned nothing; fitted
    // as it is, as a diverged run is not, so said)
    let above_chance: Vec<String> = fitted
        .iter()
        .filter(|r| r.loss() > std::f64::consts::LN_2)
        .map(|r| format!("{} ({:.4})", r.name, r.loss()))
        .collect();
    if !above_chance.is_empty() {
        warnings.push(format!(
            "fitted runs whose loss ends above chance (ln 2 = 0.693 nats per bit: they learned nothing, or blew up \
             and stayed finite; check their learning rates and leave them out of the folder if so): {}",
            above_chance.join(", ")
        ));
    }
    Selection { fitted, notes, warnings }
}
