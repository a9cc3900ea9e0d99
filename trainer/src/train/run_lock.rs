//! One training job per run folder: the leader holds an exclusive `flock` on `RUN/.lock` while it
//! trains, so a second job on the same folder (a sweep run resubmitted while it still trains, a SLURM
//! array task started twice) stops before it writes anything instead of interleaving checkpoints and
//! logs with the first. The kernel drops the lock when its holder exits, however it exits, so a
//! restarted group or a requeued job takes it again.

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

const LOCK_FILE: &str = ".lock";

/// Held for as long as it lives.
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Take `run`'s lock, or an error naming the process that holds it.
    pub fn acquire(run: &Path) -> Result<RunLock> {
        let path = run.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // a moment's patience: `in_use` (a sweep looking) holds the lock for as long as one call
        let mut locked = try_lock(&file);
        for _ in 0..20 {
            match locked {
                Ok(false) => std::thread::sleep(std::time::Duration::from_millis(50)),
                _ => break,
            }
            locked = try_lock(&file);
        }
        let locked = match locked {
            Err(e) if unsupported(&e) => {
                console_err!(
                    "warning: {} cannot be locked here ({e:#}: a file system without flock, such as Lustre \
                     mounted without it): nothing stops a second job on this run folder",
                    path.display()
                );
                return Ok(RunLock { _file: file });
            }
            other => other?,
        };
        if !locked {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "run.dir {} is in use by another training job ({}): one job trains a run folder at a time; wait \
                 for it, or stop it, before resuming here",
                run.display(),
                holder.trim()
            );
        }
        let host = hostname().unwrap_or_else(|| "this host".into());
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        file.set_len(0).and_then(|_| file.rewind())?;
        write!(file, "pid {} on {host}, since unix time {since}", std::process::id())?;
        Ok(RunLock { _file: file })
    }
}

/// Whether a training job holds `run`'s lock now (a sweep leaves such a run to it).
pub fn in_use(run: &Path) -> bool {
    // read-write: NFS emulates flock with fcntl locks, whose exclusive kind needs write access
    match std::fs::OpenOptions::new().read(true).write(true).open(run.join(LOCK_FILE)) {
        Ok(file) => !try_lock(&file).unwrap_or(true),
        Err(_) => false,
    }
}

/// This machine's name (`gethostname`: `$HOSTNAME` is a shell variable, often not exported).
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0)?;
    (rc == 0 && end > 0).then(|| String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// A file system that does not lock at all (as opposed to a lock held elsewhere).
fn unsupported(e: &anyhow::Error) -> bool {
    let code = e.downcast_ref::<std::io::Error>().and_then(|e| e.raw_os_error());
    matches!(code, Some(libc::ENOSYS | libc::ENOLCK | libc::EOPNOTSUPP))
}

/// An exclusive, non-blocking `flock`: false when another open file holds it. Released when `file`
/// closes.
fn try_lock(file: &std::fs::File) -> Result<bool> {
    // SAFETY: flock on a descriptor this File owns for the duration of the call.
    match unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } {
        0 => Ok(true),
        _ => match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
            e => Err(anyhow::Error::new(e).context("locking the run folder")),
        },
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
        drop(first);
        assert!(!in_use(tmp.path()));
        RunLock::acquire(tmp.path()).unwrap();
    }
}
