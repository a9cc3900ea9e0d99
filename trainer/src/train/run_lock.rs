//! One training job per run folder: the leader holds an exclusive `flock` on `RUN/.lock` while it
//! trains, so a second job on the same folder (a sweep run resubmitted while it still trains, a SLURM
//! array task started twice) stops before it writes anything instead of interleaving checkpoints and
//! logs with the first. The kernel drops the lock when its holder exits, however it exits, so a
//! restarted group or a requeued job takes it again.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use infinity_data::file_lock::{remove_made_folders, try_lock, unsupported, Lock};

pub(crate) const LOCK_FILE: &str = ".lock";

/// Held for as long as it lives.
pub struct RunLock {
    file: std::fs::File,
    /// The lock file's (device, inode): where the file system has no `flock`, not held.
    id: (u64, u64),
    held: bool,
    /// The run folder and the folders above it that this job made
    /// ([`infinity_data::file_lock::missing_folders`]): removed again, while the lock is still held, when
    /// the lock goes before [`RunLock::keep`] (the run was refused at its start).
    made: Vec<PathBuf>,
}

impl Drop for RunLock {
    /// The lock file names no holder once let go (the kernel drops the lock as the file closes): a
    /// `cat RUN/.lock` after the job does not show it as if it still trained. (A process killed keeps
    /// its line there, which the lock, free, makes harmless.)
    fn drop(&mut self) {
        if self.held {
            let _ = self.file.set_len(0);
        }
        remove_made_folders(&self.made, LOCK_FILE);
    }
}

impl RunLock {
    /// Take `run`'s lock, or an error naming the process that holds it.
    pub fn acquire(run: &Path) -> Result<RunLock> {
        // a moment's patience: `in_use` (a sweep looking) holds the lock for as long as one call
        Self::acquire_within(run, std::time::Duration::from_secs(1))
    }

    /// [`RunLock::acquire`], waiting up to `patience` for a holder to let go. A holder that removed the
    /// folder as it let go (its run refused at its start) leaves its lock file unlinked: the folder is
    /// made again and its new lock file taken.
    pub fn acquire_within(run: &Path, patience: std::time::Duration) -> Result<RunLock> {
        let start = std::time::Instant::now();
        loop {
            let lock = Self::lock_file(run, (patience, start))?;
            // (a file that cannot be looked at otherwise is taken as in place: no retry could tell)
            let unlinked = match lock.in_place(run) {
                Ok(here) => !here,
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            };
            if !lock.held || !unlinked {
                return Ok(lock);
            }
            drop(lock);
            std::fs::create_dir_all(run)
                .with_context(|| format!("run.dir {} cannot be created (not writable?)", run.display()))?;
        }
    }

    /// Opens `run`'s lock file and locks it, waiting for a holder to let go until `patience` has passed
    /// since `start`.
    fn lock_file(run: &Path, (patience, start): (std::time::Duration, std::time::Instant)) -> Result<RunLock> {
        use std::os::unix::fs::MetadataExt;
        let path = run.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("run.dir {} is not writable: opening {}", run.display(), path.display()))?;
        let meta = file.metadata().with_context(|| format!("reading {}", path.display()))?;
        let id = (meta.dev(), meta.ino());
        let mut locked = try_lock(&file, Lock::Exclusive);
        let mut said = false;
        while matches!(locked, Ok(false)) && start.elapsed() < patience {
            if !said && start.elapsed() >= std::time::Duration::from_secs(1) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder).and_then(|_| file.rewind());
                console_err!(
                    "run.dir {} is locked by {}: waiting up to {} s for it to let go (a stopped job may still be \
                     writing its last checkpoint)",
                    run.display(),
                    describe_holder(&holder, unix_now()),
                    patience.as_secs()
                );
                said = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            locked = try_lock(&file, Lock::Exclusive);
        }
        let locked = match locked {
            Err(e) if unsupported(&e) => {
                console_err!(
                    "warning: {} cannot be locked here ({e:#}: a file system without flock, such as Lustre \
                     mounted without it): nothing stops a second job on this run folder",
                    path.display()
                );
                return Ok(RunLock { file, id, held: false, made: Vec::new() });
            }
            other => other.context("locking the run folder")?,
        };
        if !locked {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(held_error(run, &holder));
        }
        let host = infinity_launcher::env::hostname().unwrap_or_else(|| "this host".into());
        let since = unix_now();
        // the unix time is what `describe_holder` reads (builds before this one wrote only that); the
        // holder is for others' messages, the lock is held without it (a full disk fails the run later,
        // at a write that names its file)
        let holder = format!("pid {} on {host}, since {} (unix time {since})", std::process::id(), utc(since));
        if let Err(e) = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(holder.as_bytes())) {
            console_err!(
                "warning: {}: this job's pid not written ({e}): a job refused at the lock cannot name it",
                path.display()
            );
        }
        Ok(RunLock { file, id, held: true, made: Vec::new() })
    }

    /// This job made `made` (the run folder first, then those above it): removed again if the lock
    /// goes before [`RunLock::keep`].
    pub(super) fn made_here(&mut self, made: Vec<PathBuf>) {
        self.made = made;
    }

    /// The run has begun (it writes into its folder): the folder stays however the session ends.
    pub(super) fn keep(&mut self) {
        self.made.clear();
    }

    /// Whether `run/.lock` is the file this lock holds.
    fn in_place(&self, run: &Path) -> std::io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let now = std::fs::metadata(run.join(LOCK_FILE))?;
        Ok((now.dev(), now.ino()) == self.id)
    }

    /// An error when `run`'s lock file is gone or another file: the run folder was removed (or moved,
    /// or replaced), or the lock file deleted, while the run trains. Its logs and checkpoints would go
    /// on into files no one can read (or a folder no longer locked), and a sweep would take the run
    /// for finished; the run stops instead. An error reading it otherwise (a network file system's
    /// moment) is no such news: a warning, and the next step looks again.
    pub fn check_in_place(&self, run: &Path) -> Result<()> {
        let what = match self.in_place(run) {
            Ok(true) => return Ok(()),
            Ok(false) => "another file now (the folder replaced, or the lock file made again)",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                "gone (the folder removed or moved, or the lock file deleted)"
            }
            Err(e) => {
                tracing::warn!("reading {}: {e} (looked at again next step)", run.join(LOCK_FILE).display());
                return Ok(());
            }
        };
        anyhow::bail!(
            "run.dir {}: its lock file {LOCK_FILE} is {what} while this run trained: stopping without writing \
             more (start the run again, or resume from its newest checkpoint wherever the folder is now)",
            run.display()
        )
    }
}

/// For `train --check`: the error the run would stop with because a live training job holds `run`'s
/// lock, found as [`in_use`] finds it (without keeping the lock).
pub fn check_free(run: &Path) -> Result<()> {
    if !in_use(run) {
        return Ok(());
    }
    Err(held_error(run, &std::fs::read_to_string(run.join(LOCK_FILE)).unwrap_or_default()))
}

fn held_error(run: &Path, holder: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "run.dir {} is in use by another training job ({}): one job trains a run folder at a time; wait for it, \
         or stop it, before training here",
        run.display(),
        describe_holder(holder, unix_now())
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A lock file's "pid N on HOST, since … (unix time T)" (or a build's before it: "…, since unix time
/// T") as "pid N on HOST, since 2026-12-02 12:26:27 UTC (3 min ago)"; other text as it is.
fn describe_holder(text: &str, now: u64) -> String {
    let text = text.trim();
    if text.is_empty() {
        return "its lock file names no process".into();
    }
    let since = text.rsplit_once("unix time ").and_then(|(_, t)| t.trim_end_matches(')').trim().parse::<u64>().ok());
    match (text.split_once(", since"), since) {
        (Some((who, _)), Some(since)) => format!("{who}, since {} ({})", utc(since), ago(now.saturating_sub(since))),
        _ => text.to_string(),
    }
}

/// `secs` after the unix epoch as "2026-12-02 12:26:27 UTC" (a time chrono cannot represent, past the
/// year 262,000 or so, as "unix time SECS").
fn utc(secs: u64) -> String {
    match i64::try_from(secs).ok().and_then(|s| chrono::DateTime::from_timestamp(s, 0)) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => format!("unix time {secs}"),
    }
}

/// "42 s ago", "3 min ago", "5 h ago", "2 days ago".
fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..172_800 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// Whether a training job holds `run`'s lock now (a sweep leaves such a run to it).
pub fn in_use(run: &Path) -> bool {
    // a shared lock: refused while a job holds its exclusive one, taken by a read-only file (a
    // read-only mount of the results; NFS emulates flock with fcntl locks, whose shared kind needs read
    // access alone), and never refused to another look
    match std::fs::File::open(run.join(LOCK_FILE)) {
        Ok(file) => !try_lock(&file, Lock::Shared).unwrap_or(true),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_job_is_refused_until_the_first_ends() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!in_use(tmp.path()));
        let first = RunLock::acquire(tmp.path()).unwrap();
        assert!(in_use(tmp.path()));
        let e = format!("{:#}", RunLock::acquire(tmp.path()).err().expect("refused"));
        assert!(
            e.contains("in use by another training job (pid ") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        // the holder's start as a date, not as unix seconds
        assert!(e.contains(" UTC (") && e.contains(" s ago)") && !e.contains("unix time"), "{e}");
        assert!(check_free(tmp.path()).is_err());
        drop(first);
        assert!(!in_use(tmp.path()));
        assert_eq!(std::fs::read_to_string(tmp.path().join(LOCK_FILE)).unwrap(), "", "a holder let go stays named");
        check_free(tmp.path()).unwrap();
        RunLock::acquire(tmp.path()).unwrap();
    }

    /// `in_use` opens the lock file read-only (a read-only mount) and asks for a shared lock: refused
    /// while a job holds the run, granted once it has let go, and two looks at once do not see each
    /// other as a job.
    #[test]
    fn a_read_only_look_sees_a_held_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let held = RunLock::acquire(tmp.path()).unwrap();
        let read_only = || std::fs::File::open(tmp.path().join(LOCK_FILE)).unwrap();
        assert!(!try_lock(&read_only(), Lock::Shared).unwrap());
        drop(held);
        let looking = read_only();
        assert!(try_lock(&looking, Lock::Shared).unwrap());
        assert!(!in_use(tmp.path()), "a look held a shared lock and another took it for a job");
    }

    /// A restarted group's rank 0 waits for the lost attempt's rank 0 to finish its stop's checkpoint.
    #[test]
    fn a_lock_let_go_within_the_patience_is_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(tmp.path()).unwrap();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            drop(first);
        });
        RunLock::acquire_within(tmp.path(), std::time::Duration::from_secs(20)).unwrap();
        holder.join().unwrap();
    }

    /// A holder that made the folder and removes it as it lets go (its run refused at its start) takes
    /// the lock file with it: a job waiting for the lock meanwhile makes the folder again and locks its
    /// new lock file, not the unlinked one. A job refused at the lock removes nothing.
    #[test]
    fn a_folder_removed_by_its_holder_is_made_again_by_the_next() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("new/run");
        let made = infinity_data::file_lock::missing_folders(&run);
        std::fs::create_dir_all(&run).unwrap();
        let mut first = RunLock::acquire(&run).unwrap();
        first.made_here(made);
        assert!(RunLock::acquire(&run).is_err() && run.is_dir(), "a job refused at the lock removed the folder");
        let waiter = {
            let run = run.clone();
            std::thread::spawn(move || RunLock::acquire_within(&run, std::time::Duration::from_secs(20)))
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
        let second = waiter.join().unwrap().unwrap();
        assert!(second.in_place(&run).unwrap(), "the waiter holds an unlinked lock file");
        second.check_in_place(&run).unwrap();
        std::fs::remove_file(run.join(LOCK_FILE)).unwrap();
        let e = format!("{:#}", second.check_in_place(&run).unwrap_err());
        assert!(
            e.contains("its lock file .lock is gone (the folder removed or moved, or the lock file deleted)"),
            "{e}"
        );
    }

    #[test]
    fn a_holders_start_reads_as_a_utc_date() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_215_044), "2026-12-02 12:37:24 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
        // the lock files of this build and of the ones before it
        let now = 1_796_215_044 + 200;
        let want = "pid 7 on node3, since 2026-12-02 12:37:24 UTC (3 min ago)";
        assert_eq!(describe_holder("pid 7 on node3, since unix time 1796215044", now), want);
        let written = format!("pid 7 on node3, since {} (unix time 1796215044)\n", utc(1_796_215_044));
        assert_eq!(describe_holder(&written, now), want);
        assert_eq!(describe_holder("", now), "its lock file names no process");
        assert_eq!(describe_holder("garbled", now), "garbled");
        assert_eq!(ago(59), "59 s ago");
        assert_eq!(ago(7200), "2 h ago");
        assert_eq!(ago(3 * 86_400), "3 days ago");
    }
}
