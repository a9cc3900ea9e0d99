//! Which checkpoint a session resumes from, agreed by every rank: `--resume auto`'s newest (or the step
//! of a rewind cut short), a step this run rewound to before and has trained past since (a requeued
//! command line continues that history), or the one given; and the checks that every rank sees the same
//! run folder (a shared file system), so that a restart finds rank 0's checkpoints on every node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use infinity_data::Dataset;

use super::dist::Dist;
use super::{checkpoint, rundir, TrainOptions};

/// The checkpoint this session resumes from (none: a fresh start), once rank 0 holds the run's lock:
/// under `--resume auto` run.dir's newest ([`agreed_newest`]); an explicit step this run rewound to
/// before, with the same config, continues its history ([`repeated_rewind`]); else the one given.
pub(crate) fn resume_point(
    opts: &TrainOptions,
    run: &Path,
    config_toml: &str,
    ds: &Dataset,
    dist: &mut Dist,
) -> Result<Option<PathBuf>> {
    match (opts.resume_auto, opts.resume.as_deref()) {
        (true, given) => agreed_newest(run, given, dist),
        (false, Some(given)) => {
            Ok(Some(repeated_rewind(run, given, config_toml, ds, dist)?.unwrap_or_else(|| given.to_path_buf())))
        }
        (false, None) => Ok(None),
    }
}

/// `--resume auto` (or a restarted group): run.dir's newest complete checkpoint as rank 0 finds it now
/// that it holds the run's lock (a lost attempt may have written its stop's checkpoint while it waited),
/// else `given`, the same on every rank ([`seen_by_every_rank`]).
pub(crate) fn agreed_newest(run: &Path, given: Option<&Path>, dist: &mut Dist) -> Result<Option<PathBuf>> {
    let newest = dist.is_leader().then(|| auto_choice(run)).flatten();
    dist.tag("the newest checkpoint, after the run folder's lock");
    // (checkpoints are of steps from 1: 0 says there is none)
    let step = dist.broadcast_step(newest.as_deref().and_then(checkpoint::step_of).unwrap_or(0))?;
    if step == 0 {
        return Ok(given.map(Path::to_path_buf));
    }
    seen_by_every_rank(run, step, dist).map(Some)
}

/// `--resume auto`'s checkpoint (rank 0): the newest complete one, or the step of a rewind cut short since
/// it was written, which resuming there finishes ([`checkpoint::interrupted_rewind`]).
fn auto_choice(run: &Path) -> Option<PathBuf> {
    let newest = super::latest_checkpoint(run)?;
    let Some((step, folder)) = checkpoint::interrupted_rewind(run) else { return Some(newest) };
    tracing::warn!(
        "{} holds {}: a rewind to step {step} was cut short before it had set the later history aside; \
         --resume auto finishes it, resuming at step {step} (not at the newest checkpoint, {}, of the history it \
         sets aside)",
        folder.display(),
        checkpoint::UNFINISHED,
        newest.display()
    );
    Some(checkpoint::step_dir(run, step))
}

/// How long a rank waits for its view of the shared run folder to show what rank 0 wrote there (NFS
/// caches a folder's listing for a while): 30 s, or `INFINITY_SHARED_FOLDER_LAG_S` seconds (a mount
/// whose attribute cache holds longer), at most nine tenths of the group's collective timeout
/// (`dist.timeout_s`): rank 0 waits for the look in a collective, whose timeout would be a failure to
/// retry rather than this check's verdict.
fn shared_folder_lag(dist: &Dist) -> Duration {
    let set = std::env::var(LAG_VAR).ok();
    let (lag, unread) = lag_of(set.as_deref(), dist.timeout);
    // (once a process: a resume asks twice)
    static SAID: std::sync::Once = std::sync::Once::new();
    if let Some(v) = unread {
        SAID.call_once(|| {
            let lag = lag.as_secs_f64();
            tracing::warn!("{LAG_VAR}={v:?}: expected seconds (a number of at least 0); waiting {lag:.0} s instead");
        });
    }
    lag
}

const LAG_VAR: &str = "INFINITY_SHARED_FOLDER_LAG_S";

/// [`shared_folder_lag`] of the variable's value `set` and the collective timeout `timeout`, and the
/// value where it is no duration (then the default).
fn lag_of(set: Option<&str>, timeout: Duration) -> (Duration, Option<&str>) {
    let read = set.and_then(|s| s.trim().parse::<f64>().ok()).and_then(|s| Duration::try_from_secs_f64(s).ok());
    // (alone, no collective waits: no bound)
    let lag = read.unwrap_or(Duration::from_secs(30)).min(timeout.checked_mul(9).map_or(timeout, |t| t / 10));
    (lag, set.filter(|_| read.is_none()))
}

/// Every rank sees the run folder rank 0 holds, or every rank stops as the session starts (exit 2: a
/// restart would find the same). A run.dir on each node's own disk would train on unnoticed until the
/// first restart, which finds rank 0's checkpoint on no other node (its path may differ from node to
/// node: a shared file system mounted elsewhere, so the folders themselves are compared). Rank 0
/// writes a mark in it (`.ranks-see-N`), every rank looks for it (up to [`shared_folder_lag`]), and
/// rank 0 removes it once all have looked.
pub(crate) fn shared_by_every_rank(run: &Path, dist: &mut Dist) -> Result<()> {
    if dist.world == 1 {
        return Ok(());
    }
    let mark = |n: u64| run.join(format!(".ranks-see-{n:012x}"));
    // (40 bits, which a step's broadcast carries exactly: a mark of another session is never taken for it)
    let nonce = match dist.is_leader() {
        true => {
            let n = rand::random::<u64>() & ((1 << 40) - 1);
            std::fs::write(mark(n), b"").with_context(|| format!("writing {}", mark(n).display()))?;
            n
        }
        false => 0,
    };
    dist.tag("the run folder, seen by every rank");
    let path = mark(dist.broadcast_step(nonce)?);
    let (t0, lag) = (std::time::Instant::now(), shared_folder_lag(dist));
    while !path.exists() && t0.elapsed() < lag {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let missing = !path.exists();
    dist.tag("the run folder, seen by every rank");
    let any_missing = dist.any(missing)?;
    if dist.is_leader() {
        let _ = std::fs::remove_file(&path);
    }
    if !any_missing {
        return Ok(());
    }
    let who = match missing {
        true => format!(
            "rank {} does not see in run.dir {} the file rank 0 wrote there ({}) after {:.0} s",
            dist.rank,
            run.display(),
            path.file_name().unwrap_or_default().to_string_lossy(),
            lag.as_secs_f64()
        ),
        false => format!("another rank does not see the file rank 0 wrote in run.dir {}", run.display()),
    };
    Err(super::unrecoverable(anyhow::anyhow!(
        "{who}: run.dir must be one folder every rank sees (a shared file system; its path may differ from node \
         to node), or a restart finds rank 0's checkpoints on no other node ({LAG_VAR}: a longer \
         wait, for a file system that shows new files later)"
    )))
}

/// `run`'s checkpoint of `step`, rank 0's choice, once every rank sees it complete: each waits up to
/// [`shared_folder_lag`] for it; where one never does, every rank stops (exit 2: a restart would find
/// the same), saying run.dir is not one shared folder.
fn seen_by_every_rank(run: &Path, step: u64, dist: &mut Dist) -> Result<PathBuf> {
    let lag = shared_folder_lag(dist);
    seen_within(run, step, dist, lag)
}

/// [`seen_by_every_rank`], each rank waiting up to `lag`.
fn seen_within(run: &Path, step: u64, dist: &mut Dist, lag: Duration) -> Result<PathBuf> {
    let dir = checkpoint::step_dir(run, step);
    let shown = || checkpoint::complete(run).iter().any(|(s, _)| *s == step);
    let t0 = std::time::Instant::now();
    while !shown() && t0.elapsed() < lag {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let missing = !shown();
    dist.tag("the newest checkpoint, after the run folder's lock");
    if dist.any(missing)? {
        let who = match missing {
            true => format!(
                "rank {} does not see rank 0's newest checkpoint {} after {:.0} s",
                dist.rank,
                dir.display(),
                lag.as_secs_f64()
            ),
            false => format!("another rank does not see rank 0's newest checkpoint {}", dir.display()),
        };
        // (folders that differ, past a shared folder's cache lag: a restart would find the same; exit 2)
        return Err(super::unrecoverable(anyhow::anyhow!(
            "{who}: run.dir must be one folder every rank sees (a shared file system), with the same checkpoints"
        )));
    }
    Ok(dir)
}

/// A rewind repeated: `--resume RUN/checkpoints/step-N` (this run folder's) where the folder's newest
/// checkpoint, of a step M > N, belongs to a history that already resumed at step N with this same
/// config (its state's `forked_at`, its config.toml): a requeued job whose command line names the step
/// it once rewound to. Resuming at N again would set that history aside only to compute the same steps
/// again (runs are deterministic), so the run continues from step M, saying so; another config (or a
/// checkpoint of another step) rewinds as asked. Rank 0 decides, every rank takes its step.
pub(crate) fn repeated_rewind(
    run: &Path,
    given: &Path,
    config_toml: &str,
    ds: &Dataset,
    dist: &mut Dist,
) -> Result<Option<PathBuf>> {
    let found = dist.is_leader().then(|| rewound_before(run, given, config_toml, Some(&ds.manifest))).flatten();
    dist.tag("a repeated rewind's newest checkpoint");
    let step = dist.broadcast_step(found.map_or(0, |(_, m)| m))?;
    if step == 0 {
        return Ok(None);
    }
    if let Some(found) = found {
        tracing::warn!("{}", rewound_before_note(run, given, found));
    }
    seen_by_every_rank(run, step, dist).map(Some)
}

/// `(N, M)` where resuming at `given`, step N of the run folder `run`, repeats a rewind
/// ([`repeated_rewind`]): the folder's newest checkpoint, step M > N, intact, is of a history that
/// resumed at N and has trained with the config `config_toml` since (its `forked_at`, which a session
/// with other settings or data drops, and its config.toml), on the dataset `dataset` where given (a
/// dataset mended since the history read it is a reason to rewind).
pub(crate) fn rewound_before(
    run: &Path,
    given: &Path,
    config_toml: &str,
    dataset: Option<&infinity_data::Manifest>,
) -> Option<(u64, u64)> {
    let n = checkpoint::step_of(given)?;
    let ours = checkpoint::run_folder_of(given).is_some_and(|f| f.canonicalize().ok() == run.canonicalize().ok());
    let newest = super::latest_checkpoint(run)?;
    let m = checkpoint::step_of(&newest).filter(|&m| m > n)?;
    let state = checkpoint::read_state(&newest).ok()?;
    // (this folder's step N, or another folder's checkpoint this run branched from: by the path where
    // it is pruned since)
    let same_place = |f: &Path| match (f.canonicalize(), given.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => std::path::absolute(given).is_ok_and(|g| g == f),
    };
    let branched = state.forked_from.as_deref().is_some_and(same_place);
    if !(ours || branched) {
        return None;
    }
    let config = std::fs::read_to_string(newest.join(checkpoint::CONFIG_FILE)).ok()?;
    let same_data = dataset.is_none_or(|d| d.fingerprint_matches(&state.loader.dataset));
    let repeated = state.forked_at == Some(n) && config == config_toml && same_data;
    // (a damaged newest checkpoint, whose error names step N as the way on, is not gone back to)
    (repeated && checkpoint::tensors_intact(&newest, &state)).then_some((n, m))
}

/// What run folder `run` says where it continues a rewind's or a branch's history ([`rewound_before`]'s
/// `(N, M)`).
pub(crate) fn rewound_before_note(run: &Path, given: &Path, (n, m): (u64, u64)) -> String {
    format!(
        "--resume {}: this run resumed at step {n} with this same config and data before and trained on to step \
         {m} since (a requeued command line?): continuing from step {m} rather than computing the same steps \
         again; to rewind to step {n} anyway, change a setting, or move the checkpoints after it out of {} \
         (into {})",
        given.display(),
        run.join("checkpoints").display(),
        run.join("abandoned").display()
    )
}

/// For a fresh start in a run folder that holds a run but no complete checkpoint (`--resume auto`, or a
/// group restarted before its first checkpoint), a line saying so: its logs are then rewritten from
/// step 0, which should not happen unsaid.
pub(crate) fn fresh_start_note(run: &Path) -> Option<String> {
    let logs = rundir::RUN_FILES.iter().any(|f| run.join(f).is_file());
    let (incomplete, _) = checkpoint::later_than(run, 0);
    let fresh = checkpoint::complete(run).is_empty() && (logs || !incomplete.is_empty());
    fresh.then(|| format!("no complete checkpoint in {}: starting fresh", run.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rank that never sees rank 0's newest checkpoint in its run.dir stops every rank (exit 2),
    /// saying run.dir is not one shared folder; one that does goes on.
    #[test]
    fn a_checkpoint_a_rank_does_not_see_stops_the_run() {
        let run = tempfile::tempdir().unwrap();
        let e = seen_within(run.path(), 5, &mut Dist::solo(), Duration::ZERO).unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("rank 0 does not see rank 0's newest checkpoint"), "{text}");
        assert!(text.contains("run.dir must be one folder every rank sees"), "{text}");
        assert!(e.downcast_ref::<super::super::setup::Unrecoverable>().is_some(), "not restarted (exit 2): {text}");
        let dir = checkpoint::step_dir(run.path(), 5);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(checkpoint::DONE), "").unwrap();
        assert_eq!(seen_within(run.path(), 5, &mut Dist::solo(), Duration::ZERO).unwrap(), dir);
    }

    /// The wait: 30 s, or the variable's seconds, below the collective timeout the other ranks wait in.
    #[test]
    fn the_shared_folder_wait_stays_below_the_collective_timeout() {
        let five_min = Duration::from_secs(300);
        let secs = Duration::from_secs;
        assert_eq!(lag_of(None, five_min), (secs(30), None));
        assert_eq!(lag_of(Some(" 90 "), five_min), (secs(90), None));
        assert_eq!(lag_of(Some("1000"), five_min), (secs(270), None));
        assert_eq!(lag_of(Some("1e30"), five_min), (secs(30), Some("1e30")), "no duration: the default, said");
        assert_eq!(lag_of(Some("-1"), five_min), (secs(30), Some("-1")));
        assert_eq!(lag_of(Some("abc"), five_min), (secs(30), Some("abc")));
        assert_eq!(lag_of(Some("90"), Duration::MAX), (secs(90), None), "alone: no bound");
    }
}
