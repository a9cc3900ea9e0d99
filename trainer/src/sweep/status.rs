//! `infinity sweep FILE --status`: where each run of the sweep file's plan stands, read from its folder
//! (its lock, `summary.json`, the last lines of `metrics.jsonl` and `val.jsonl`, its newest
//! checkpoint), so it can be asked while the sweep trains, from any machine that sees the folders (a
//! lock is tested with a shared lock, which a read-only file can take).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::run::{preempted, settings_changed, state, RunState};
use super::{aligned, PlannedRun};
use crate::train::checkpoint::saved_step;

/// The mark of a run the sweep refuses: it trained with other settings or data than the sweep file
/// gives it now.
const STALE: &str = " [stale]";

/// What the status table says of one run.
struct Row {
    name: String,
    state: String,
    step: Option<u64>,
    steps: u64,
    loss: Option<f64>,
    val_loss: Option<f64>,
    checkpoint: Option<u64>,
    /// The settings it trained with that the sweep file now changes, and its dataset where that changed
    /// since (unreadable: none said).
    changed: Option<Vec<String>>,
}

/// The table of `runs`' states and a count of each.
pub fn status_table(runs: &[PlannedRun]) -> String {
    let rows: Vec<Row> = runs.iter().map(row).collect();
    let num = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
    let int = |v: Option<u64>| v.map_or("-".to_string(), |x| x.to_string());
    let cells: Vec<[String; 7]> =
        std::iter::once(["run", "state", "step", "of", "loss", "val loss", "checkpoint"].map(String::from))
            .chain(rows.iter().map(|r| {
                let (step, steps, ckpt) = (int(r.step), r.steps.to_string(), int(r.checkpoint));
                [r.name.clone(), r.state.to_string(), step, steps, num(r.loss), num(r.val_loss), ckpt]
            }))
            .collect();
    let mut s = aligned(&cells, 2);
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in &rows {
        // (`interrupted (resumes)` counts as interrupted; a stale one as `interrupted [stale]`)
        let kind = r.state.split(" (").next().unwrap_or_default().to_string();
        match counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind, 1)),
        }
    }
    let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    s.push_str(&format!("{}: {}\n", infinity_launcher::plural(rows.len(), "run"), counts.join(", ")));
    let stale: Vec<String> =
        rows.iter().filter_map(|r| Some(format!("  {}: {}", r.name, r.changed.as_ref()?.join(", ")))).collect();
    if !stale.is_empty() {
        let runs = infinity_launcher::plural(stale.len(), "run");
        s.push_str(&format!(
            "[stale]: {runs} trained with other settings or data than the sweep file gives now (the sweep refuses \
             them, and resumes none of them: set another `out`, or remove their folders to train them afresh):\n{}\n",
            stale.join("\n")
        ));
    }
    s
}

fn row(r: &PlannedRun) -> Row {
    let last = last_metrics(&r.dir.join("metrics.jsonl"));
    let checkpoint = crate::train::latest_checkpoint(&r.dir).and_then(|c| saved_step(&c));
    let changed = toml::to_string(&r.config).ok().and_then(|text| settings_changed(r, &text).ok().flatten());
    // (a failed attempt leaves an earlier session's summary in place: its record is the newer news)
    let failure = super::failed::last_failure(&r.dir).map(|status| format!("failed ({status}; see train.log)"));
    let state = match state(&r.dir) {
        RunState::Finished => "finished",
        RunState::Diverged => "diverged",
        RunState::Training => "training",
        RunState::ToDo if failure.is_some() => failure.as_deref().unwrap_or_default(),
        RunState::ToDo if preempted(&r.dir) => "stopped (by a signal)",
        RunState::ToDo if checkpoint.is_some() => "interrupted (resumes)",
        RunState::ToDo if last.is_some() => "interrupted (restarts: no checkpoint)",
        RunState::ToDo => "not started",
    };
    // what it is, and that the sweep file now gives it other settings or data: a stale run is refused,
    // so it neither resumes nor restarts (said without the parenthesis)
    let state = match changed {
        Some(_) => format!("{}{STALE}", state.split(" (").next().unwrap_or(state)),
        None => state.to_string(),
    };
    let step = last.as_ref().and_then(|m| m["step"].as_u64());
    let val_loss = crate::train::rundir::last_val(&r.dir, u64::MAX).map(|(_, loss)| loss);
    Row {
        name: r.name.clone(),
        state,
        step,
        steps: r.config.run.steps,
        loss: last.as_ref().and_then(|m| m["loss"].as_f64()),
        val_loss,
        checkpoint,
        changed,
    }
}

/// The last complete line of a `metrics.jsonl`, read from its end (a long run's file is large).
fn last_metrics(path: &Path) -> Option<serde_json::Value> {
    const TAIL: u64 = 64 << 10;
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut bytes = Vec::new();
    f.take(TAIL).read_to_end(&mut bytes).ok()?;
    // (the tail may start inside a character: only its first line, never read, would suffer)
    let text = String::from_utf8_lossy(&bytes);
    // (a line being written has no newline yet: the one before it is the last complete one)
    let complete = &text[..text.rfind('\n')?];
    complete.lines().rev().find_map(|l| serde_json::from_str(l).ok())
}

#[cfg(test)]
mod tests {
    use super::last_metrics;

    #[test]
    fn the_last_complete_metrics_line_is_read_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let mut text: String =
            (1..=3000).map(|s| format!("{{\"step\":{s},\"loss\":0.5,\"pad\":\"{}\"}}\n", "x".repeat(40))).collect();
        text.push_str("{\"step\":3001,\"lo"); // being written
        std::fs::write(&p, text).unwrap();
        assert_eq!(last_metrics(&p).unwrap()["step"], 3000);
        assert!(last_metrics(&dir.path().join("none.jsonl")).is_none());
    }
}
