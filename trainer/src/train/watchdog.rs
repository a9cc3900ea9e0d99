//! The stall watchdog (`run.stall_timeout_s`): a thread that ends the process when the training loop
//! has made no progress for that long, so that a run hung outside a collective (a data read on a
//! frozen file system, a deadlock, a device that stopped answering) does not sit until the scheduler's
//! time limit. Collectives have their own limit (`dist.timeout_s`), which names the rank a group waits
//! for: with more than one rank the stall limit must be the longer, so that a rank waiting in a
//! collective for a stalled peer is reported by it, and this watchdog catches what no collective sees
//! (one rank alone, or every rank stuck outside one).
//!
//! The loop marks each phase it enters ([`Watchdog::beat`]); the watchdog exits with
//! [`EXIT_STALLED`] when one lasts longer than the limit, naming the phase and the step. `infinity
//! launch` restarts the group from its last checkpoint, as for a crash.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
pub use infinity_launcher::env::EXIT_STALLED;

/// Fault drill: `INFINITY_FAULT_STALL=RANK:STEP:SECONDS` makes that rank sleep so long as it reads the
/// batch of that step (numbered from 1, as the logs do), on the first attempt only, as a read from a
/// frozen file system would.
pub fn stall_drill(rank: usize, step: u64, attempt: u32) {
    let Ok(spec) = std::env::var("INFINITY_FAULT_STALL") else { return };
    let parts: Vec<&str> = spec.split(':').collect();
    let [r, s, secs] = parts[..] else { return };
    if attempt == 0 && r.parse() == Ok(rank) && s.parse() == Ok(step) {
        if let Ok(secs) = secs.parse::<f64>() {
            std::thread::sleep(Duration::from_secs_f64(secs.max(0.0)));
        }
    }
}

/// A stall limit of `timeout_s` seconds (0: none) for `world` ranks: with more than one rank it must exceed
/// `collective_timeout_s` (`dist.timeout_s`). What `train --check` checks too.
pub fn check_limit(timeout_s: f64, world: usize, collective_timeout_s: f64) -> Result<()> {
    if timeout_s != 0.0 && world > 1 && timeout_s <= collective_timeout_s {
        bail!(
            "run.stall_timeout_s ({timeout_s}) must be longer than dist.timeout_s ({collective_timeout_s}) with \
             {world} ranks: a rank that waits in a collective for a stalled one is for the collective's timeout to \
             report, which names the rank it waited for"
        );
    }
    Ok(())
}

/// The phase the loop is in, and since when.
struct Progress {
    since: Instant,
    phase: String,
}

pub struct Watchdog {
    progress: Arc<Mutex<Progress>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// A watchdog of `timeout_s` seconds over rank `rank` of `world` (none: 0). With more than one rank
    /// the limit must exceed `collective_timeout_s` (`dist.timeout_s`).
    pub fn start(timeout_s: f64, (rank, world): (usize, usize), collective_timeout_s: f64) -> Result<Option<Watchdog>> {
        if timeout_s == 0.0 {
            return Ok(None);
        }
        check_limit(timeout_s, world, collective_timeout_s)?;
        let Ok(limit) = Duration::try_from_secs_f64(timeout_s) else {
            tracing::warn!("run.stall_timeout_s = {timeout_s} is longer than any run: nothing is watched");
            return Ok(None);
        };
        let progress = Arc::new(Mutex::new(Progress { since: Instant::now(), phase: "starting the loop".into() }));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, halt) = (progress.clone(), stop.clone());
        // (checked a few times a limit, at least every 5 s: a stall is ended within a quarter of it)
        let every = (limit / 4).min(Duration::from_secs(5));
        let spawned = std::thread::Builder::new().name("stall watchdog".into()).spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                std::thread::park_timeout(every);
                // (decided under the lock: a beat in between is either seen or waits for the exit)
                let progress = p.lock().unwrap_or_else(|e| e.into_inner());
                let since = progress.since.elapsed();
                if since > limit && !halt.load(Ordering::Relaxed) {
                    stalled(rank, since, &progress.phase, timeout_s);
                }
            }
        });
        match spawned {
            Ok(thread) => Ok(Some(Watchdog { progress, stop, thread: Some(thread) })),
            Err(e) => {
                tracing::warn!("run.stall_timeout_s: the watchdog thread could not start ({e}): nothing is watched");
                Ok(None)
            }
        }
    }

    /// The loop enters `phase` (`reading the batch of step 12`): the limit counts from now.
    pub fn beat(&self, phase: String) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Progress { since: Instant::now(), phase };
    }
}

/// [`Watchdog::beat`] where a watchdog runs (`run.stall_timeout_s`); `phase` is formed only then.
pub fn beat(watchdog: Option<&Watchdog>, phase: impl FnOnce() -> String) {
    if let Some(w) = watchdog {
        w.beat(phase());
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// End the process: the loop has been in `phase` for `since`. Written straight to stderr and ended with
/// `_exit`: the main thread may hold stderr's lock, and a hung device may hold its driver's, which the
/// exit handlers would wait for.
fn stalled(rank: usize, since: Duration, phase: &str, timeout_s: f64) -> ! {
    let message = format!(
        "error: rank {rank} made no progress for {:.0} s (run.stall_timeout_s = {timeout_s}) in {phase}; exiting \
         with code {EXIT_STALLED} (infinity launch restarts its group from the last checkpoint)\n",
        since.as_secs_f64()
    );
    // SAFETY: writing a buffer we own to fd 2, then ending the process.
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(EXIT_STALLED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_checked_against_the_collectives_with_several_ranks() {
        assert!(Watchdog::start(0.0, (0, 4), 300.0).unwrap().is_none(), "0 watches nothing");
        let e = Watchdog::start(60.0, (1, 4), 300.0).err().unwrap().to_string();
        assert!(e.contains("run.stall_timeout_s (60) must be longer than dist.timeout_s (300) with 4 ranks"), "{e}");
        // alone there is no collective to leave it to; dropping the watchdog stops its thread at once
        let t0 = Instant::now();
        let w = Watchdog::start(60.0, (0, 1), 300.0).unwrap().unwrap();
        w.beat("a phase".into());
        drop(w);
        assert!(Watchdog::start(400.0, (0, 4), 300.0).unwrap().is_some());
        assert!(t0.elapsed() < Duration::from_secs(4), "a drop waited out the check period");
    }
}
