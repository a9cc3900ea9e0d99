//! Non-blocking `flock`s, for one writer per folder: a dataset being written (`writer.rs`) and a run
//! being trained (the trainer's `run_lock`). The kernel drops a lock when its holder exits, however it
//! exits. NFS emulates `flock` with `fcntl` locks, whose exclusive kind needs the file open for writing
//! (a lock file, not the folder); a file system without locks says so with an error of its own.

use std::os::fd::AsRawFd;

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
