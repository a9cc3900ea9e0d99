//! A run's checkpoint history: its step folders (complete or not) and sample grids, those after a
//! resumed step set aside (with a copy of the run's logs), and old checkpoints pruned.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{sync_dir, DONE, TMP_PREFIX};

/// A run's `checkpoints/step-N` folders, complete or not, oldest first.
fn step_folders(run: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(run.join("checkpoints"))
        .map(|rd| {
            // (a file named like one is no checkpoint: a save at its step names it)
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| Some((e.file_name().to_string_lossy().strip_prefix("step-")?.parse().ok()?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Complete checkpoints of a run, oldest first.
pub fn complete(run: &Path) -> Vec<(u64, PathBuf)> {
    step_folders(run).into_iter().filter(|(_, dir)| dir.join(DONE).is_file()).collect()
}

/// Files of a run folder by step.
pub type StepFiles = Vec<(u64, PathBuf)>;

/// What of a run folder's history comes after `step`: its checkpoints (complete or not) and sample
/// grids (`samples/step-N.png`), each with its step.
pub fn later_than(run: &Path, step: u64) -> (StepFiles, StepFiles) {
    let checkpoints = step_folders(run).into_iter().filter(|(s, _)| *s > step).collect();
    let mut grids: Vec<(u64, PathBuf)> = std::fs::read_dir(run.join("samples"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    Some((name.strip_prefix("step-")?.strip_suffix(".png")?.parse().ok()?, e.path()))
                })
                .filter(|(s, _)| *s > step)
                .collect()
        })
        .unwrap_or_default();
    grids.sort();
    (checkpoints, grids)
}

/// "checkpoints after step N (steps [..]) and K sample grids": what [`later_than`] found, in words.
pub fn describe_later(step: u64, checkpoints: &[u64], grids: usize) -> String {
    let ckpts = (!checkpoints.is_empty()).then(|| format!("checkpoints after step {step} (steps {checkpoints:?})"));
    let grids = match grids {
        0 => None,
        1 => Some("1 sample grid".to_string()),
        n => Some(format!("{n} sample grids")),
    };
    match (ckpts, grids) {
        (Some(c), Some(g)) => format!("{c} and {g}"),
        (Some(c), None) => c,
        (None, Some(g)) => format!("{g} after step {step}"),
        (None, None) => format!("nothing after step {step}"),
    }
}

/// The folder a new history from `step` sets the later steps aside into: `RUN/abandoned/after-step-N`,
/// or the first of `after-step-N.1`, `.2`, … not taken (none free among 1000).
pub fn set_aside_folder(run: &Path, step: u64) -> Option<PathBuf> {
    let base = run.join("abandoned").join(format!("after-step-{step:08}"));
    let names = (0..).map(|k| if k == 0 { base.clone() } else { base.with_extension(k.to_string()) });
    names.take(1000).find(|d| !d.exists())
}

/// Resuming at `step` starts a new history from there: the run's checkpoints after it (complete or
/// not) belong to the abandoned one, and `--resume auto`, `sample`, `export`, the launcher's restarts
/// and pruning all go by the highest step. They are moved, not deleted, into
/// `RUN/abandoned/after-step-N/` (`after-step-N.1/`, … when that is taken), with the sample grids
/// drawn after `step` (in `samples/` there). The run's logs, which the resumed session cuts back to
/// `step` (`Logger::open`), are first copied there whole ([`copy_logs`]): `metrics.jsonl`, `val.jsonl`,
/// `eval.jsonl` (`infinity eval --out RUN/eval.jsonl`'s)
/// and the event files of `tb/` (in `tb/` there), so the abandoned history reads on its own
/// (`tensorboard --logdir RUN/abandoned/after-step-N/tb`). Returns that folder and what moved, in
/// words (nothing: `None`, and nothing is copied).
///
/// Sample grids after `step` with no checkpoint after it are a stopped session's (a crash, a kill
/// before its next checkpoint), whose steps this session trains again: they are removed, as its logs
/// past `step` are cut, and no history is set aside; but a diverged run's (its summary.json says so,
/// and it writes no checkpoint while its steps are not finite) is set aside whole, the record of the
/// blow-up kept.
///
/// The folder holds [`UNFINISHED`] until everything has moved: a session stopped midway (a kill, a
/// full disk) leaves it there, and the next resume at `step` moves the rest into that same folder (its
/// copy of the logs is whole: they are cut only after this returns) rather than splitting the history
/// over two folders, or taking what was left for a crashed session's and removing it.
pub fn set_aside_later(run: &Path, step: u64) -> Result<Option<(PathBuf, String)>> {
    set_aside_with(run, step, &|from, to| std::fs::rename(from, to))
}

/// [`set_aside_later`], moving with `mv` (a test's stands for a session stopped midway).
fn set_aside_with(
    run: &Path,
    step: u64,
    mv: &dyn Fn(&Path, &Path) -> std::io::Result<()>,
) -> Result<Option<(PathBuf, String)>> {
    let (later, grids) = later_than(run, step);
    let unfinished = unfinished_set_aside(run, step);
    // (a step folder without its DONE, with no complete one after `step`, is a save a crash cut short:
    // the crashed session's, like its grids, not a history)
    let complete_later = later.iter().any(|(_, dir)| dir.join(DONE).is_file());
    if unfinished.is_none() && !complete_later && !crate::train::rundir::summary_says(run, "diverged") {
        for (_, dir) in &later {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
            tracing::info!("removed {}, a checkpoint a crash left incomplete (no {DONE})", dir.display());
        }
        for (_, grid) in &grids {
            std::fs::remove_file(grid).with_context(|| format!("removing {}", grid.display()))?;
        }
        if let Some(((first, _), (last, _))) = grids.first().zip(grids.last()) {
            tracing::info!(
                "removed {} of steps {first} to {last}, past the checkpoint of step {step} this session resumes \
                 from and of no checkpoint (a session stopped before its next one): drawn again as the steps are",
                crate::cli::plural(grids.len(), "sample grid")
            );
        }
        return Ok(None);
    }
    let (dest, logs) = match unfinished {
        Some(dest) => (dest, None),
        None => {
            let dest = set_aside_folder(run, step).context("run/abandoned: no free folder name")?;
            // the logs first, synced, gathered under a temporary name and renamed into place (marked
            // UNFINISHED): the resumed session cuts the run's own back only after this, and a failure
            // (a full disk) leaves neither a partial copy nor anything moved, for the next attempt to do
            // again
            let logs = copy_logs(run, &dest)?;
            (dest, Some(logs))
        }
    };
    let moves =
        later.iter().map(|(_, dir)| (dir, dest.clone())).chain(grids.iter().map(|(_, f)| (f, dest.join("samples"))));
    for (from, to_dir) in moves {
        std::fs::create_dir_all(&to_dir).with_context(|| format!("creating {}", to_dir.display()))?;
        let to = to_dir.join(from.file_name().expect("a step folder or grid has a name"));
        mv(from, &to).with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
    }
    for dir in [run.join("checkpoints"), run.join("samples"), dest.clone(), dest.join("samples")] {
        sync_dir(&dir);
    }
    let marker = dest.join(UNFINISHED);
    std::fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
    sync_dir(&dest);
    let steps: Vec<u64> = later.iter().map(|(s, _)| *s).collect();
    let mut what = match steps.is_empty() && grids.is_empty() {
        true if logs.is_none() => format!("nothing more after step {step}"),
        true => format!("the diverged steps after step {step}"),
        false => describe_later(step, &steps, grids.len()),
    };
    match logs {
        Some(logs) if !logs.is_empty() => what += &format!(" (copied with them, whole: {})", logs.join(", ")),
        Some(_) => {}
        None => what += " (the rest of a setting aside a stopped session began, with the logs it copied)",
    }
    Ok(Some((dest, what)))
}

/// A rewind cut short since the newest checkpoint was written: the step it went back to and its folder
/// of `RUN/abandoned/` (holding [`UNFINISHED`], newer than the newest checkpoint's `DONE`), where that
/// step's checkpoint is complete. `--resume auto` (a restarted group's too) finishes it from that step:
/// the newest checkpoint is of the history the rewind was setting aside, part of which has moved. One
/// older than the newest checkpoint (a session trained on in the old history since) is left alone.
pub fn interrupted_rewind(run: &Path) -> Option<(u64, PathBuf)> {
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    let newest_done = modified(&crate::train::latest_checkpoint(run)?.join(DONE))?;
    let complete = complete(run);
    unfinished_set_asides(run)
        .into_iter()
        .filter(|(step, dir)| {
            modified(&dir.join(UNFINISHED)).is_some_and(|t| t >= newest_done) && complete.iter().any(|(s, _)| s == step)
        })
        .max()
}

/// Marks a folder of `RUN/abandoned/` whose history is still being moved in ([`set_aside_later`]).
pub const UNFINISHED: &str = "UNFINISHED";

/// The folder of `RUN/abandoned/` a setting aside after `step` began and did not finish (it holds
/// [`UNFINISHED`]), if any.
fn unfinished_set_aside(run: &Path, step: u64) -> Option<PathBuf> {
    unfinished_set_asides(run).into_iter().filter(|(s, _)| *s == step).map(|(_, dir)| dir).next_back()
}

/// The folders of `RUN/abandoned/` whose setting aside began and did not finish (they hold
/// [`UNFINISHED`]), each with the step it set aside after (`after-step-00000140`, or `….1` for a later
/// one of that step), in the order of their names.
fn unfinished_set_asides(run: &Path) -> Vec<(u64, PathBuf)> {
    let named = |name: &str| -> Option<u64> {
        let rest = name.strip_prefix("after-step-")?;
        let (digits, k) = rest.split_once('.').map_or((rest, None), |(d, k)| (d, Some(k)));
        let step: u64 = digits.parse().ok()?;
        (format!("{step:08}") == digits && k.is_none_or(|k| k.parse::<u32>().is_ok())).then_some(step)
    };
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(run.join("abandoned"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| Some((named(&e.file_name().to_string_lossy())?, e.path())))
                .filter(|(_, dir)| dir.join(UNFINISHED).is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

/// Copy the run's logs whole into `dest` (`metrics.jsonl`, `val.jsonl`, `eval.jsonl`, the event files of `tb/` into
/// `dest/tb/`), each synced, gathered in `abandoned/.tmp-after-step-N` and renamed to `dest`; returns
/// what was there to copy, in words. The event files are hard links where the file system has them
/// (no writer appends to an earlier session's file, and a resume's cut renames a new file over one):
/// a long run's sample grids are not stored twice.
fn copy_logs(run: &Path, dest: &Path) -> Result<Vec<String>> {
    let name = dest.file_name().expect("an abandoned folder has a name").to_string_lossy();
    let staging = dest.with_file_name(format!(".tmp-{name}"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    let what = stage_logs(run, &staging).inspect_err(|_| _ = std::fs::remove_dir_all(&staging))?;
    std::fs::rename(&staging, dest).with_context(|| format!("moving {} to {}", staging.display(), dest.display()))?;
    for dir in [dest.parent().expect("abandoned/"), run] {
        sync_dir(dir);
    }
    Ok(what)
}

/// [`copy_logs`]'s copies into `staging`.
fn stage_logs(run: &Path, staging: &Path) -> Result<Vec<String>> {
    let jsonl: Vec<(PathBuf, PathBuf)> = ["metrics.jsonl", "val.jsonl", "eval.jsonl"]
        .into_iter()
        .map(|name| (run.join(name), staging.join(name)))
        .filter(|(from, _)| from.is_file())
        .collect();
    let mut what: Vec<String> =
        jsonl.iter().map(|(from, _)| from.file_name().unwrap().to_string_lossy().into()).collect();
    let tb: Vec<(PathBuf, PathBuf)> = crate::tensorboard::event_files(&run.join("tb"))
        .unwrap_or_default()
        .into_iter()
        .map(|from| {
            let to = staging.join("tb").join(from.file_name().expect("an event file has a name"));
            (from, to)
        })
        .collect();
    match tb.len() {
        0 => {}
        1 => what.push("1 TensorBoard event file".into()),
        n => what.push(format!("{n} TensorBoard event files")),
    }
    for dir in [staging.to_path_buf(), staging.join("tb")] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let files = jsonl.iter().map(|(f, t)| (f, t, false)).chain(tb.iter().map(|(f, t)| (f, t, true)));
    for (from, to, link) in files {
        if link && std::fs::hard_link(from, to).is_ok() {
            continue;
        }
        std::fs::copy(from, to)
            .and_then(|_| File::open(to)?.sync_all())
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    // (removed once everything has moved: [`set_aside_later`])
    let marker = staging.join(UNFINISHED);
    File::create(&marker).and_then(|f| f.sync_all()).with_context(|| format!("creating {}", marker.display()))?;
    for dir in [staging.to_path_buf(), staging.join("tb")] {
        sync_dir(&dir);
    }
    Ok(what)
}

/// Delete complete checkpoints beyond the newest `keep_last`, except multiples of `keep_every`, and the
/// `.tmp-step-N` folders an interrupted save or prune left (the saver prunes after its save, with no
/// other write in flight).
pub fn prune(run: &Path, keep_last: usize, keep_every: u64) -> Result<()> {
    prune_with(run, keep_last, keep_every, &|dir| std::fs::remove_dir_all(dir))
}

/// [`prune`], deleting folders with `delete` (a test's stands for a process killed midway).
fn prune_with(
    run: &Path,
    keep_last: usize,
    keep_every: u64,
    delete: &dyn Fn(&Path) -> std::io::Result<()>,
) -> Result<()> {
    let root = run.join("checkpoints");
    let leftovers: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| {
            rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(TMP_PREFIX)).map(|e| e.path()).collect()
        })
        .unwrap_or_default();
    // (one that cannot be removed does not keep the others: each failure is named at the end)
    let mut failed: Vec<String> = Vec::new();
    for dir in leftovers {
        if let Err(e) = delete(&dir) {
            failed.push(format!("removing {}: {e}", dir.display()));
        }
    }
    let all = complete(run);
    let n = all.len();
    for (i, (step, dir)) in all.into_iter().enumerate() {
        let recent = i.saturating_add(keep_last) >= n;
        let milestone = keep_every > 0 && step % keep_every == 0;
        if !recent && !milestone {
            // out of sight first (a rename is atomic): deleted in place, a kill midway left a folder
            // marked DONE with files missing, which `--resume auto`, sample and export then took
            let doomed = root.join(format!("{TMP_PREFIX}{step:08}"));
            if let Err(e) = std::fs::rename(&dir, &doomed) {
                failed.push(format!("pruning {}: {e}", dir.display()));
                continue;
            }
            sync_dir(&root);
            if let Err(e) = delete(&doomed) {
                failed.push(format!("pruning {} (renamed {}): {e}", dir.display(), doomed.display()));
            }
        }
    }
    match failed.is_empty() {
        true => Ok(()),
        false => bail!("{} (kept; pruning tries again after the next checkpoint)", failed.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::checkpoint::{step_dir, MODEL_FILE, OPTIM_FILE, STATE_FILE};

    /// Complete checkpoint folders of `steps` (their files stand in for a real checkpoint's).
    fn fake_run(steps: &[u64]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for &step in steps {
            let dir = step_dir(tmp.path(), step);
            std::fs::create_dir_all(&dir).unwrap();
            for f in [MODEL_FILE, OPTIM_FILE, STATE_FILE, DONE] {
                std::fs::write(dir.join(f), b"x").unwrap();
            }
        }
        tmp
    }

    #[test]
    fn pruning_killed_midway_leaves_no_folder_marked_complete_with_files_missing() {
        let run = fake_run(&[1, 2, 3]);
        // a kill after the first file: what the deletion leaves is what a SIGKILL there left
        let killed = |dir: &Path| -> std::io::Result<()> {
            std::fs::remove_file(dir.join(MODEL_FILE))?;
            Err(std::io::Error::other("killed"))
        };
        assert!(prune_with(run.path(), 1, 0, &killed).is_err());
        for (step, dir) in complete(run.path()) {
            assert!(dir.join(MODEL_FILE).is_file(), "step {step}: marked complete, its weights gone");
        }
        assert_eq!(complete(run.path()).iter().map(|c| c.0).collect::<Vec<_>>(), [3]);
        // the next prune removes the half-deleted folder with the others
        prune(run.path(), 1, 0).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(run.path().join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["step-00000003"]);
    }

    /// A checkpoint that cannot be removed is named and kept; the others are pruned all the same.
    #[test]
    fn a_checkpoint_that_cannot_be_pruned_keeps_no_other() {
        let run = fake_run(&[1, 2, 3, 4]);
        let held = |dir: &Path| -> std::io::Result<()> {
            match dir.to_string_lossy().ends_with("00000002") {
                true => Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
                false => std::fs::remove_dir_all(dir),
            }
        };
        let e = format!("{:#}", prune_with(run.path(), 1, 0, &held).unwrap_err());
        assert!(
            e.contains("pruning") && e.contains("step-00000002") && e.contains("(kept; pruning tries again"),
            "{e}"
        );
        assert_eq!(complete(run.path()).iter().map(|c| c.0).collect::<Vec<_>>(), [4]);
        assert!(!step_dir(run.path(), 1).exists() && !step_dir(run.path(), 3).exists());
    }

    /// A file named like a step folder is no checkpoint; a rewind cut short since the newest checkpoint
    /// is found (to be finished), one older than it is not.
    #[test]
    fn stray_files_and_interrupted_rewinds() {
        let run = fake_run(&[1, 2, 3]);
        std::fs::write(step_dir(run.path(), 4), "notes").unwrap();
        assert_eq!(complete(run.path()).iter().map(|c| c.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(later_than(run.path(), 3).0.is_empty());
        assert_eq!(interrupted_rewind(run.path()), None);
        let folder = run.path().join("abandoned/after-step-00000001");
        std::fs::create_dir_all(&folder).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(folder.join(UNFINISHED), b"").unwrap();
        assert_eq!(interrupted_rewind(run.path()), Some((1, folder.clone())));
        // (a session trained on since, in the old history: left alone)
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(step_dir(run.path(), 3).join(DONE), b"x").unwrap();
        assert_eq!(interrupted_rewind(run.path()), None);
    }

    /// A resume of the newest checkpoint after a crash sets no history aside: the crashed session's
    /// grids past the checkpoint are removed (its steps are trained again); with a checkpoint past it,
    /// they go with the abandoned history.
    #[test]
    fn grids_past_the_newest_checkpoint_are_a_crash_not_a_rewind() {
        let run = fake_run(&[3]);
        let samples = run.path().join("samples");
        std::fs::create_dir_all(&samples).unwrap();
        for step in [2, 4, 5] {
            std::fs::write(samples.join(format!("step-{step:08}.png")), b"png").unwrap();
        }
        assert!(set_aside_later(run.path(), 3).unwrap().is_none());
        assert!(!run.path().join("abandoned").exists());
        let left: Vec<_> = std::fs::read_dir(&samples).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["step-00000002.png"]);
        let run = fake_run(&[3, 6]);
        std::fs::create_dir_all(run.path().join("samples")).unwrap();
        std::fs::write(run.path().join("samples/step-00000005.png"), b"png").unwrap();
        let (dest, what) = set_aside_later(run.path(), 3).unwrap().unwrap();
        assert!(dest.join("samples/step-00000005.png").is_file() && dest.join("step-00000006").is_dir(), "{what}");
    }

    /// A setting aside stopped midway (here: after its first move) is finished by the next resume of the
    /// same step, into the same folder, whose copy of the logs is kept; grids that were left behind go
    /// with the history, not taken for a crashed session's and removed.
    #[test]
    fn a_setting_aside_stopped_midway_is_finished_into_the_same_folder() {
        let run = fake_run(&[3, 6, 9]);
        let samples = run.path().join("samples");
        std::fs::create_dir_all(&samples).unwrap();
        std::fs::write(samples.join("step-00000007.png"), b"png").unwrap();
        std::fs::write(run.path().join("metrics.jsonl"), "{\"step\":9}\n").unwrap();
        let moved = std::cell::Cell::new(0);
        let once = |from: &Path, to: &Path| match moved.get() {
            0 => {
                moved.set(1);
                std::fs::rename(from, to)
            }
            _ => Err(std::io::Error::other("killed")),
        };
        assert!(set_aside_with(run.path(), 3, &once).is_err());
        let dest = run.path().join("abandoned/after-step-00000003");
        assert!(dest.join(UNFINISHED).is_file() && dest.join("step-00000006").is_dir());
        // (what a later session would have cut: the copy already made is the one kept)
        std::fs::write(run.path().join("metrics.jsonl"), "{\"step\":3}\n").unwrap();
        let (again, what) = set_aside_later(run.path(), 3).unwrap().unwrap();
        assert_eq!(again, dest, "{what}");
        assert!(dest.join("step-00000009").is_dir() && dest.join("samples/step-00000007.png").is_file(), "{what}");
        assert!(!dest.join(UNFINISHED).exists() && !run.path().join("abandoned/after-step-00000003.1").exists());
        assert_eq!(std::fs::read_to_string(dest.join("metrics.jsonl")).unwrap(), "{\"step\":9}\n");
        assert_eq!(complete(run.path()).iter().map(|c| c.0).collect::<Vec<_>>(), [3]);
        // a finished one is not resumed: a second rewind to 3 takes a folder of its own
        let extra = step_dir(run.path(), 12);
        std::fs::create_dir_all(&extra).unwrap();
        std::fs::write(extra.join(DONE), b"").unwrap();
        let (third, _) = set_aside_later(run.path(), 3).unwrap().unwrap();
        assert_eq!(third, run.path().join("abandoned/after-step-00000003.1"));
    }

    /// A step folder a crash left without its DONE, past the checkpoint resumed from and with no complete
    /// one after it, is the crashed save, not a history: removed, nothing set aside; beside a complete
    /// later checkpoint it goes with the abandoned history.
    #[test]
    fn an_incomplete_checkpoint_past_the_newest_is_a_crash_not_a_rewind() {
        let run = fake_run(&[3]);
        let cut_short = step_dir(run.path(), 6);
        std::fs::create_dir_all(&cut_short).unwrap();
        std::fs::write(cut_short.join(MODEL_FILE), b"x").unwrap();
        assert!(set_aside_later(run.path(), 3).unwrap().is_none());
        assert!(!run.path().join("abandoned").exists() && !cut_short.exists());
        let left: Vec<_> =
            std::fs::read_dir(run.path().join("checkpoints")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["step-00000003"]);
        let run = fake_run(&[3, 6]);
        std::fs::create_dir_all(step_dir(run.path(), 9)).unwrap();
        let (dest, _) = set_aside_later(run.path(), 3).unwrap().unwrap();
        assert!(dest.join("step-00000006").is_dir() && dest.join("step-00000009").is_dir());
    }
}
