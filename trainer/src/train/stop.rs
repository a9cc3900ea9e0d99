//! Stopping the training loop: the signals that end a run cleanly (a checkpoint first), a stop while
//! the group still forms, and the fault drills the tests use to kill or slow a rank.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use infinity_launcher::{monotonic_ns, SAME_PRESS_NS};

/// A flag set by SIGTERM, SIGINT, SIGUSR1 or SIGUSR2 (preemption: SLURM's `--signal`, submitit's USR2),
/// SIGHUP (a closed terminal or ssh session, which reaches the whole process group, the ranks with their
/// agent) or SIGQUIT (Ctrl-\\, which would otherwise dump core without a checkpoint): the loop
/// checkpoints and exits cleanly. With `second_sigint_quits`, a second SIGINT (Ctrl-C again, not the
/// first one after a SIGTERM or the time limit) exits at once, with 130, without waiting for the stop
/// checkpoint (one being written stays incomplete and is never loaded; one written already is said to
/// be).
///
/// The terminal's signals (SIGINT, SIGHUP, SIGQUIT) that the process was started with ignored stay
/// ignored (`nohup infinity train …` survives a closed session; a script's background job, its Ctrl-C).
pub fn preemption_flag(second_sigint_quits: bool) -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    let flag = Arc::new(AtomicBool::new(false));
    let ignored: Vec<i32> =
        [SIGINT, SIGHUP, SIGQUIT].into_iter().filter(|&s| infinity_launcher::signal_ignored(s)).collect();
    if second_sigint_quits && !ignored.contains(&SIGINT) {
        // when the first SIGINT came (monotonic ns; 0: none yet)
        let first = Arc::new(AtomicU64::new(0));
        let again = move || {
            let now = monotonic_ns();
            match first.load(Ordering::SeqCst) {
                0 => first.store(now.max(1), Ordering::SeqCst),
                // (one Ctrl-C delivered twice, by the process group and a wrapper forwarding it, is
                // one: a second press comes later than this)
                t if now.saturating_sub(t) < SAME_PRESS_NS => {}
                _ => {
                    let message = second_sigint_message(LAST_CHECKPOINT_WRITTEN.load(Ordering::SeqCst));
                    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is static.
                    unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
                    signal_hook::low_level::exit(128 + SIGINT);
                }
            }
        };
        // SAFETY: the action reads and writes atomics and calls async-signal-safe functions alone.
        unsafe { signal_hook::low_level::register(SIGINT, again) }.context("installing signal handlers")?;
    }
    for sig in [SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP, SIGQUIT].into_iter().filter(|s| !ignored.contains(s)) {
        signal_hook::flag::register(sig, flag.clone()).context("installing signal handlers")?;
    }
    Ok(flag)
}

/// Set once a line has said that the run stops: `--time-limit`'s, the stop's own, or the loop's
/// `stopped after step N` (a notice polled after that would come after the fact).
static STOP_ANNOUNCED: AtomicBool = AtomicBool::new(false);

/// Whether no line has said yet that the run stops (and from now on one has).
pub fn first_to_announce_the_stop() -> bool {
    !STOP_ANNOUNCED.swap(true, Ordering::SeqCst)
}

/// Set once the session's last checkpoint (a stop's) is on disk: a second SIGINT after it says so.
static LAST_CHECKPOINT_WRITTEN: AtomicBool = AtomicBool::new(false);

/// The session's last checkpoint is on disk (the loop has waited for its write).
pub(super) fn last_checkpoint_written() {
    LAST_CHECKPOINT_WRITTEN.store(true, Ordering::SeqCst);
}

/// What a second SIGINT says as it exits, `written` the last checkpoint or not (static: a signal handler
/// allocates nothing).
fn second_sigint_message(written: bool) -> &'static [u8] {
    match written {
        true => b"\nSIGINT again: exiting now; the stop checkpoint is written (exit code 130)\n",
        false => b"\nSIGINT again: exiting now, without the stop checkpoint (exit code 130)\n",
    }
}

/// Under `infinity launch`, `flag` is set (the run stops as on SIGTERM: a checkpoint, then exit) once
/// the agent that started this rank is gone. The kernel's parent-death signal reaches the process the
/// agent started, not a rank that a wrapper (`sh -c '… ; echo done'`, a script) started in turn, which
/// would otherwise train on unsupervised, holding the run folder's lock a requeued job waits for.
pub fn stop_when_agent_gone(flag: &Arc<AtomicBool>) -> Result<()> {
    let Some(pid) = std::env::var(infinity_launcher::env::vars::AGENT_PID).ok().and_then(|p| p.trim().parse().ok())
    else {
        return Ok(());
    };
    // (the variable passed on into another PID namespace, a container, or to another host names no
    // process of ours: only an ancestor is watched; pidfds and /proc are Linux's)
    #[cfg(target_os = "linux")]
    if is_ancestor(pid) {
        return stop_when_gone(pid, flag.clone(), "the launch agent");
    }
    let _ = (pid, flag);
    Ok(())
}

/// Whether process `pid` is an ancestor of this one (by `/proc`'s parent links).
#[cfg(target_os = "linux")]
fn is_ancestor(pid: libc::pid_t) -> bool {
    let parent_of = |p: libc::pid_t| -> Option<libc::pid_t> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        // (`pid (comm) state ppid …`: the name may hold spaces and parentheses, so after the last `)`)
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    // SAFETY: getppid(2) takes nothing and cannot fail.
    let mut p = unsafe { libc::getppid() };
    for _ in 0..64 {
        if p == pid {
            return true;
        }
        match parent_of(p) {
            Some(q) if q > 0 && q != p => p = q,
            _ => return false,
        }
    }
    false
}

/// Sets `flag` once process `pid` has ended (at once if it is gone already), saying so.
#[cfg(target_os = "linux")]
fn stop_when_gone(pid: libc::pid_t, flag: Arc<AtomicBool>, what: &'static str) -> Result<()> {
    let gone = move || {
        if !flag.swap(true, Ordering::SeqCst) {
            console_err!("{what} (pid {pid}) is gone: the run stops as on SIGTERM (a checkpoint after this step)");
        }
    };
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        gone();
        return Ok(());
    }
    std::thread::Builder::new()
        .name("agent watch".into())
        .spawn(move || {
            if fd >= 0 {
                // readable once the process has ended (a pid reused meanwhile is another process's)
                let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: poll(2) on one pollfd we own; -1 waits without a timeout.
                while unsafe { libc::poll(&mut p, 1, -1) } < 0 {
                    if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                        return; // (no telling: the watch ends, the run goes on)
                    }
                }
            } else {
                // (a kernel before 5.3 has no pidfd: asked every second)
                // SAFETY: kill(2) with signal 0 sends nothing; it tells whether the pid exists (EPERM: it
                // does, another user's)
                let alive = || {
                    (unsafe { libc::kill(pid, 0) }) == 0
                        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
                };
                while alive() {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
            gone();
        })
        .context("starting the agent watch")?;
    Ok(())
}

/// The run diverged: `optim.max_nonfinite` non-finite steps in a row (the message says where), or a
/// resume that would repeat such a divergence. `infinity train` exits with `EXIT_DIVERGED` for it,
/// which `infinity launch` does not restart: from the last good checkpoint, with the same settings,
/// the run diverges at the same step.
#[derive(Debug)]
pub struct Diverged(pub String);

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Diverged {}

/// The run diverged at `state`'s step (`state.nonfinite_run` non-finite steps in a row): the checkpoint
/// in flight settled, the logs closed and `summary.json` saying so; the error names the newest complete
/// checkpoint, and whether it is from before the streak.
pub(super) fn diverged(
    state: &super::TrainState,
    run: &Path,
    saver: Option<&mut super::saver::Saver>,
    logger: Option<&mut super::Logger>,
    summary: &mut super::summary::SummaryFile,
) -> anyhow::Error {
    if let Some(saver) = saver {
        saver.settle(); // the checkpoint in flight is on disk (or failed) before it is named
        summary.checkpoint_writes_failed(saver.failed_writes());
    }
    let newest = super::latest_checkpoint(run);
    // (no periodic checkpoint is written within a streak: the newest is from before it, unless a stop
    // signal's fell in it)
    let first_bad = state.step + 1 - state.nonfinite_run;
    let last = match newest.as_ref().map(|p| (p, super::checkpoint::step_of(p))) {
        Some((p, Some(at))) if at < first_bad => format!(
            "The newest checkpoint, of step {at}, is from before the first of them (step {first_bad}): {}; if the \
             losses were already climbing, resume from an earlier one",
            p.display()
        ),
        Some((p, _)) => format!("The newest checkpoint is {} (within the non-finite steps)", p.display()),
        None => "No checkpoint was written.".into(),
    };
    let tensorboard_failures = logger.map_or(0, |l| {
        l.finish();
        l.tensorboard_failures()
    });
    if let Err(e) = summary.diverged(state, newest, tensorboard_failures) {
        return e;
    }
    Diverged(format!(
        "{} consecutive non-finite steps; stopping (diverged at step {}). {last}",
        state.nonfinite_run, state.step
    ))
    .into()
}

pub use infinity_launcher::env::EXIT_STOPPED_BEFORE_START;

/// A stop signal during setup (reading and hashing the dataset, waiting for the group: the rendezvous
/// may take `dist.rdzv_timeout_s`, loading a checkpoint) ends the process at once: nothing has trained,
/// so there is nothing to checkpoint. Setup clears the guard before it first changes the run folder;
/// a signal after that stops the run after its first step, checkpointed. (A flag already set when
/// setup starts, as a caller in the same process may pass, arms nothing: the run stops after its
/// first step.)
pub struct SetupGuard {
    /// The flag was clear when setup started: a stop during setup is a signal's.
    armed: bool,
    /// [`SETTING_UP`], then [`EXITING`] (the guard's thread exits the process) or [`SET_UP`], whichever
    /// comes first: a signal's exit never cuts into setup's changes to the run folder.
    phase: Arc<AtomicU8>,
    /// The rank has joined a group of several: a signal is for the group to act on together
    /// ([`SetupGuard::stop_together`]), not for one rank to exit alone.
    grouped: Arc<AtomicBool>,
    /// Say when a stop signal comes after setup (rank 0's console).
    notice: Arc<AtomicBool>,
    /// What the process waits for now, for the message (`None`: setting up).
    waiting: Arc<std::sync::Mutex<Option<&'static str>>>,
    /// The run folder and those above it that setup made (rank 0, once it holds the folder's lock):
    /// removed again while empty when a signal ends setup (an error does it as the lock goes:
    /// [`super::run_lock::RunLock::made_here`]).
    made: Arc<std::sync::Mutex<Vec<PathBuf>>>,
}

impl SetupGuard {
    pub fn start(flag: &Option<Arc<AtomicBool>>) -> SetupGuard {
        let (phase, notice) = (Arc::new(AtomicU8::new(SETTING_UP)), Arc::new(AtomicBool::new(false)));
        let grouped = Arc::new(AtomicBool::new(false));
        let waiting = Arc::new(std::sync::Mutex::new(None));
        let made = Arc::new(std::sync::Mutex::new(Vec::new()));
        let armed = flag.as_ref().is_some_and(|f| !f.load(Ordering::Acquire));
        if let Some(stop) = flag.clone().filter(|_| armed) {
            let (phase, notice, grouped, waiting) = (phase.clone(), notice.clone(), grouped.clone(), waiting.clone());
            let made = made.clone();
            std::thread::spawn(move || {
                while phase.load(Ordering::Acquire) == SETTING_UP {
                    let exiting = || phase.compare_exchange(SETTING_UP, EXITING, Ordering::AcqRel, Ordering::Acquire);
                    if stop.load(Ordering::Relaxed) && !grouped.load(Ordering::Acquire) && exiting().is_ok() {
                        let during =
                            waiting.lock().map_or(None, |w| *w).unwrap_or("during setup, before the first step");
                        console_err!(
                            "stopped by a signal {during}: nothing trained (exit code {EXIT_STOPPED_BEFORE_START})"
                        );
                        remove_made(&made);
                        std::process::exit(EXIT_STOPPED_BEFORE_START);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                // then, once, that the signal is heard (a step, and its checkpoint, may take a while)
                if !notice.load(Ordering::Acquire) {
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                if first_to_announce_the_stop() {
                    console_err!("stop requested: the run stops after the step in progress, with a checkpoint");
                }
            });
        }
        SetupGuard { armed, phase, grouped, notice, waiting, made }
    }

    /// This rank has joined a group of several ranks: from now on a signal during setup stops the group
    /// together, at [`SetupGuard::stop_together`].
    pub fn grouped(&self) {
        self.grouped.store(true, Ordering::Release);
    }

    /// At the end of setup, in a group: whether any rank was signalled during it, learnt in one
    /// collective, so every rank exits (143, nothing trained) or none does.
    pub fn stop_together(&self, dist: &mut super::dist::Dist, flag: &Option<Arc<AtomicBool>>) -> anyhow::Result<()> {
        if !self.grouped.load(Ordering::Acquire) {
            return Ok(());
        }
        dist.tag("setup's stop-signal check");
        let [stop] = dist.any_each([self.armed && is_set(flag)])?;
        if stop {
            console_err!(
                "stopped by a signal during setup, before the first step: nothing trained (exit code \
                 {EXIT_STOPPED_BEFORE_START})"
            );
            remove_made(&self.made);
            std::process::exit(EXIT_STOPPED_BEFORE_START);
        }
        Ok(())
    }

    /// What setup waits for from now on (`while waiting for the other ranks`), or `None` again.
    pub fn waiting(&self, what: Option<&'static str>) {
        if let Ok(mut w) = self.waiting.lock() {
            *w = what;
        }
    }

    /// The run folder, and the folders above it, that setup made
    /// ([`infinity_data::file_lock::missing_folders`]): rank 0.
    pub fn made_run_dir(&self, made: Vec<PathBuf>) {
        if let Ok(mut m) = self.made.lock() {
            *m = made;
        }
    }

    /// Setup is about to change the run folder: a signal from now on stops the run after a step, which
    /// is said at once where `notice` (rank 0).
    pub fn done(&self, notice: bool) {
        self.made_run_dir(Vec::new()); // (the run's now: before a signal can find setup over)
        self.notice.store(notice, Ordering::Release);
        self.set_up();
    }

    /// Setup is over, unless the guard's thread is exiting the process already: then this waits for
    /// that, so that nothing more happens to the run folder.
    fn set_up(&self) {
        if self.phase.compare_exchange(SETTING_UP, SET_UP, Ordering::AcqRel, Ordering::Acquire) == Err(EXITING) {
            loop {
                std::thread::park();
            }
        }
    }
}

impl Drop for SetupGuard {
    fn drop(&mut self) {
        self.set_up();
    }
}

/// [`SetupGuard`]'s phases.
const SETTING_UP: u8 = 0;
const EXITING: u8 = 1;
const SET_UP: u8 = 2;

fn remove_made(made: &std::sync::Mutex<Vec<PathBuf>>) {
    if let Ok(m) = made.lock() {
        infinity_data::file_lock::remove_made_folders(&m, super::run_lock::LOCK_FILE);
    }
}

pub fn is_set(flag: &Option<Arc<AtomicBool>>) -> bool {
    flag.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// Test drill: `INFINITY_FAULT_KILL=RANK:STEP` makes that rank SIGKILL itself after that step (0: as
/// the group forms, before the ranks agree on the config: [`fault_due`]), on the first attempt only (so
/// the restarted group runs through).
pub fn fault_drill(rank: usize, step: u64, attempt: u32) {
    if fault_due(rank, step, attempt) {
        tracing::warn!("fault drill: rank {rank} kills itself after step {step}");
        // SAFETY: signalling our own pid.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// Whether `INFINITY_FAULT_KILL` names this rank and step on this attempt (the first).
pub fn fault_due(rank: usize, step: u64, attempt: u32) -> bool {
    let Ok(spec) = std::env::var("INFINITY_FAULT_KILL") else { return false };
    let Some((r, s)) = spec.split_once(':') else { return false };
    attempt == 0 && r.parse() == Ok(rank) && s.parse() == Ok(step)
}

/// Straggler drill: `INFINITY_FAULT_SLOW=RANK:SECONDS` makes that rank sleep so long in every step
/// of its first attempt, inside the work the straggler report measures.
pub fn slow_drill(rank: usize, attempt: u32) {
    let Ok(spec) = std::env::var("INFINITY_FAULT_SLOW") else { return };
    let Some((r, s)) = spec.split_once(':') else { return };
    if let (0, Ok(true), Ok(secs)) = (attempt, r.parse().map(|r: usize| r == rank), s.parse::<f64>()) {
        std::thread::sleep(std::time::Duration::from_secs_f64(secs.max(0.0)));
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// A second SIGINT says whether the stop checkpoint is on disk, as the loop marked it.
    #[test]
    fn a_second_sigint_says_whether_the_stop_checkpoint_is_written() {
        let said = |w| String::from_utf8_lossy(second_sigint_message(w)).into_owned();
        assert!(said(false).contains("exiting now, without the stop checkpoint (exit code 130)"));
        assert!(said(true).contains("exiting now; the stop checkpoint is written (exit code 130)"));
    }

    /// Only an ancestor is watched: this process's parent is one, its child is not.
    #[test]
    fn ancestors_by_parent_links() {
        // SAFETY: getppid(2) cannot fail.
        assert!(is_ancestor(unsafe { libc::getppid() }));
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(!is_ancestor(child.id() as libc::pid_t));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The flag is set once the watched process ends, and at once for one gone already.
    #[test]
    fn a_process_gone_sets_the_flag() {
        let mut child = std::process::Command::new("sleep").arg("0.3").spawn().unwrap();
        let flag = Arc::new(AtomicBool::new(false));
        stop_when_gone(child.id() as libc::pid_t, flag.clone(), "the test's child").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!flag.load(Ordering::SeqCst), "set while the process runs");
        child.wait().unwrap();
        let t0 = std::time::Instant::now();
        while !flag.load(Ordering::SeqCst) {
            assert!(t0.elapsed() < std::time::Duration::from_secs(5), "not set after the process ended");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let flag = Arc::new(AtomicBool::new(false));
        stop_when_gone(child.id() as libc::pid_t, flag.clone(), "the test's child").unwrap();
        assert!(flag.load(Ordering::SeqCst));
    }
}
