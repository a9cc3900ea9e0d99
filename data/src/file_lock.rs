//! Non-blocking `flock`s, for one writer per folder: a dataset being written (`writer.rs`) and a run
//! being trained (the trainer's `run_lock`). The kernel drops a lock when its holder exits, however it
//! exits. NFS emulates `flock` with `fcntl` locks, whose exclusive kind needs the file open for writing
//! (a lock file, not the folder); a file system without locks says so with an error of its own.
//!
//! A job that made its folder (and those above it) to lock it removes them again when it ends without
//! writing anything there: [`missing_folders`] before making them, [`remove_made_folders`] after.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// What [`try_lock`] asks for.
#[derive(Clone, Copy, Debug)]
pub enum Lock {
    Exclusive,
    /// Enough to learn whether another holds the exclusive lock.
    Shared,
}

/// A non-blocking `flock`: false when another open file holds the lock (exclusively, for a shared
/// one). Released when `file` closes.
pub fn try_lock(file: &std::fs::File, lock: Lock) -> std::io::Result<bool> {
    let how = match lock {
        Lock::Exclusive => libc::LOCK_EX,
        Lock::Shared => libc::LOCK_SH,
    };
    // SAFETY: flock on a descriptor this File owns for the duration of the call.
    match unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } {
        0 => Ok(true),
        _ => match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
            e => Err(e),
        },
    }
}

/// A file system that does not lock at all (as opposed to a lock held elsewhere).
pub fn unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::ENOLCK | libc::EOPNOTSUPP))
}

/// `dir` and the folders above it that do not exist, `dir` first: what a job that makes them to lock
/// `dir` removes again ([`remove_made_folders`]) when it ends without writing anything there.
pub fn missing_folders(dir: &Path) -> Vec<PathBuf> {
    // (a folder that cannot be looked at counts as there: it is not this job's to remove)
    let missing = |d: &Path| !d.as_os_str().is_empty() && matches!(d.try_exists(), Ok(false));
    dir.ancestors().take_while(|d| missing(d)).map(Path::to_path_buf).collect()
}

/// Removes the folders `made` ([`missing_folders`], the locked one first) while they hold nothing (the
/// locked one nothing but its lock file `lock_file`): a job refused or failed before it wrote anything
/// leaves no empty folder that a retry, a sweep or a user would take for its work. Call it while the
/// lock is still held, so that no other job has taken the folder meanwhile.
pub fn remove_made_folders(made: &[PathBuf], lock_file: &str) {
    for (i, dir) in made.iter().enumerate() {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut names = entries.filter_map(|e| e.ok().map(|e| e.file_name()));
        if names.any(|n| i > 0 || n != lock_file) {
            return;
        }
        let _ = std::fs::remove_file(dir.join(lock_file));
        if std::fs::remove_dir(dir).is_err() {
            return;
        }
    }
}
