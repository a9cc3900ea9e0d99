//! The stall watchdog (`run.stall_timeout_s`): a thread that ends the process when the training loop
//! has made no progress for that long, so that a run hung outside a collective (a data read on a
//! frozen file system, a deadlock, a device that stopped answering) does not sit until the scheduler's
//! time limit. Collectives have their own limit (`dist.timeout_s`); this one covers everything else,
//! and a single rank, which has no collective to time out.
//!
//! The loop marks each phase it enters ([`Watchdog::beat`]); the watchdog exits with
//! [`EXIT_STALLED`] when one lasts longer than the limit, naming the phase and the step. `infinity
//! launch` restarts the group from its last checkpoint, as for a crash.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use infinity_launcher::env::EXIT_STALLED;

/// Fault drill: `INFINITY_FAULT_STALL=STEP:SECONDS` makes the loop sleep so long as it reads the batch
/// of that step (numbered from 1, as the logs do), as a read from a frozen file system would.
pub fn stall_drill(step: u64) {
    let Ok(spec) = std::env::var("INFINITY_FAULT_STALL") else { return };
    let Some((s, secs)) = spec.split_once(':') else { return };
    if let (Ok(true), Ok(secs)) = (s.parse().map(|s: u64| s == step), secs.parse::<f64>()) {
        std::thread::sleep(Duration::from_secs_f64(secs.max(0.0)));
    }
}

/// What the loop is doing, and since when.
struct Progress {
    /// Milliseconds from `start` at the last beat.
    at_ms: AtomicU64,
    phase: Mutex<String>,
}

pub struct Watchdog {
    progress: Arc<Progress>,
    start: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// A watchdog of `timeout_s` seconds (none: 0) over rank `rank`'s loop.
    pub fn start(timeout_s: f64, rank: usize) -> Option<Watchdog> {
        let limit = Duration::try_from_secs_f64(timeout_s).ok().filter(|d| !d.is_zero())?;
        let progress = Arc::new(Progress { at_ms: AtomicU64::new(0), phase: Mutex::new("starting".into()) });
        let (start, stop) = (Instant::now(), Arc::new(AtomicBool::new(false)));
        let (p, halt) = (progress.clone(), stop.clone());
        // (checked a few times a limit, at least every 5 s: a stall is ended within a quarter of it)
        let every = (limit / 4).min(Duration::from_secs(5));
        let thread = std::thread::Builder::new()
            .name("stall watchdog".into())
            .spawn(move || {
                while !halt.load(Ordering::Relaxed) {
                    std::thread::sleep(every);
                    let since = start.elapsed().saturating_sub(Duration::from_millis(p.at_ms.load(Ordering::Relaxed)));
                    if since > limit && !halt.load(Ordering::Relaxed) {
                        let phase = p.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        stalled(rank, since, &phase, timeout_s);
                    }
                }
            })
            .ok()?;
        Some(Watchdog { progress, start, stop, thread: Some(thread) })
    }

    /// The loop enters `phase` (`reading the batch of step 12`): the limit counts from now.
    pub fn beat(&self, phase: impl Into<String>) {
        *self.progress.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase.into();
        self.progress.at_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// End the process: the loop has been in `phase` for `since`.
fn stalled(rank: usize, since: Duration, phase: &str, timeout_s: f64) -> ! {
    let message = format!(
        "error: rank {rank} made no progress for {:.0} s (run.stall_timeout_s = {timeout_s}) while {phase}; exiting \
         with code {EXIT_STALLED} (infinity launch restarts the group from the last checkpoint)",
        since.as_secs_f64()
    );
    console_err!("{message}");
    std::process::exit(EXIT_STALLED)
}
