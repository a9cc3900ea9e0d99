//! The signals an agent forwards to its ranks, and how it stops when one arrives before they start.

use anyhow::Result;
use tokio::signal::unix::{signal, SignalKind};

use crate::{monotonic_ns, SAME_PRESS_NS};

/// Exit code of an agent (or rank) stopped by a signal before its group started: 128 + the signal, as a
/// shell reports a process the signal ended.
pub(super) fn stopped_before_start(sig: i32) -> i32 {
    128 + sig
}

/// `task`'s result, or `Err(exit code)` when a signal (or the time limit) arrives first: no rank runs,
/// and the agent stops there, saying so. Where its ranks trained in an earlier attempt (and
/// checkpointed: the restart would have resumed from there), the job ends as a preempted one does
/// (`--preempted-exit-code`, which a requeue reads); where none ever ran, as a signal before the start.
pub(super) async fn until_signal<T>(
    signals: &mut Signals,
    task: tokio::task::JoinHandle<T>,
    what: &str,
) -> Result<T, i32> {
    tokio::select! {
        r = task => Ok(r.expect("the blocking task does not panic")),
        sig = signals.next() => {
            // (the limit's own line said so)
            let why = match signals.timed_out() {
                true => "the time limit came".to_string(),
                false => format!("got {}", signal_name(sig)),
            };
            let (code, ranks) = match signals.ranks_ran {
                true => (signals.preempted_exit_code, "no rank running (they ran in an earlier attempt)"),
                false => (stopped_before_start(sig), "no rank started"),
            };
            signals.stopped_by = Some(if signals.timed_out() { "--time-limit" } else { signal_name(sig) });
            console_err!("[launch] {why} while {what}; {ranks}, exiting with {code}");
            Err(code)
        }
    }
}

/// The signals the agent forwards to its ranks. SIGHUP (a closed terminal or session) and SIGQUIT
/// (Ctrl-\\, or a scheduler's quit) are forwarded as SIGTERM ([`forwarded`]): the ranks checkpoint and
/// exit rather than die at their next line of output or dump core without a checkpoint, as torchrun
/// stops its workers for either.
/// `--time-limit` is a SIGTERM of the agent's own at its deadline, once.
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    /// (none for the terminal's signals the agent was started with ignored: [`crate::signal_ignored`])
    int: Option<tokio::signal::unix::Signal>,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    hup: Option<tokio::signal::unix::Signal>,
    quit: Option<tokio::signal::unix::Signal>,
    /// `--time-limit`: when, and the limit as given (none once it has fired).
    deadline: Option<(tokio::time::Instant, u64)>,
    /// The time limit fired (a stop of the whole group, never one node's leaving).
    timed_out: bool,
    /// The agent's exit code when a signal or the time limit comes between attempts
    /// (`--preempted-exit-code`).
    preempted_exit_code: i32,
    /// This agent has started ranks (an earlier attempt's may have checkpointed).
    ranks_ran: bool,
    /// What stopped the agent while no rank ran ([`until_signal`]): `SIGTERM`, `--time-limit`.
    stopped_by: Option<&'static str>,
    /// When SIGINTs arrived: the first and the latest (CLOCK_MONOTONIC ns, 0: none yet), set in the
    /// signal handler itself, as the stream above merges signals and says nothing of when.
    int_arrivals: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
}

impl Signals {
    /// The signal handlers, and a time limit of `limit_s` seconds from now; a signal or the limit stops
    /// an agent whose ranks ran in an earlier attempt but not now with `preempted_exit_code`.
    pub(super) fn new(limit_s: Option<u64>, preempted_exit_code: i32) -> Result<Signals> {
        let now = tokio::time::Instant::now();
        use std::sync::atomic::{AtomicU64, Ordering};
        let int_arrivals = std::sync::Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let arrivals = int_arrivals.clone();
        let note = move || {
            let at = monotonic_ns().max(1);
            let _ = arrivals[0].compare_exchange(0, at, Ordering::SeqCst, Ordering::SeqCst);
            arrivals[1].store(at, Ordering::SeqCst);
        };
        // (the terminal's signals this agent was started with ignored stay so: `nohup infinity launch`)
        let heeded = |sig: i32, kind: SignalKind| -> Result<Option<tokio::signal::unix::Signal>> {
            Ok(match crate::signal_ignored(sig) {
                true => None,
                false => Some(signal(kind)?),
            })
        };
        // (the arrival is noted before the stream below hears of it: its action runs first, so the task
        // the stream wakes, on another thread, reads this SIGINT's time, not the last one's)
        // (asked once: once the action is registered, SIGINT no longer reads as ignored)
        let int = match crate::signal_ignored(libc::SIGINT) {
            true => None,
            false => {
                // SAFETY: the action reads the clock and stores atomics alone (async-signal-safe).
                unsafe { signal_hook::low_level::register(libc::SIGINT, note) }?;
                Some(signal(SignalKind::interrupt())?)
            }
        };
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
            hup: heeded(libc::SIGHUP, SignalKind::hangup())?,
            quit: heeded(libc::SIGQUIT, SignalKind::quit())?,
            deadline: limit_s.map(|s| (now + std::time::Duration::from_secs(s), s)),
            timed_out: false,
            preempted_exit_code,
            ranks_ran: false,
            stopped_by: None,
            int_arrivals,
        })
    }

    /// This agent's ranks have started (a time limit between attempts then exits as a preempted job).
    pub(super) fn ranks_started(&mut self) {
        self.ranks_ran = true;
    }

    /// What stopped the agent while no rank ran (`SIGTERM`, `--time-limit`), once [`until_signal`] did.
    pub(super) fn stopped_by(&self) -> Option<&'static str> {
        self.stopped_by
    }

    /// The exit code of an agent whose group stopped before its ranks started because another node's
    /// agent was signalled: a preempted job's where its ranks ran in an earlier attempt (as the signalled
    /// agent's, [`until_signal`]), else 143, a SIGTERM's before the start (a scheduler's stop).
    pub(super) fn another_stopped_code(&self) -> i32 {
        match self.ranks_ran {
            true => self.preempted_exit_code,
            false => stopped_before_start(libc::SIGTERM),
        }
    }

    /// Whether the stop [`Signals::next`] gave was `--time-limit`'s.
    pub(super) fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// The next SIGINT (a second Ctrl-C while the ranks stop: [`super::ranks::stop_group`]): one that
    /// arrived within [`SAME_PRESS_NS`] of the first is that one again.
    pub(super) async fn interrupted(&mut self) {
        use std::sync::atomic::Ordering;
        loop {
            received(&mut self.int).await;
            let [first, latest] = [0, 1].map(|i| self.int_arrivals[i].load(Ordering::SeqCst));
            if latest.saturating_sub(first) >= SAME_PRESS_NS {
                return;
            }
        }
    }

    /// The next signal received (as received: the log names it; [`forwarded`] says what the ranks get).
    pub(super) async fn next(&mut self) -> i32 {
        // (a deadline far away when there is none: its branch is disabled then)
        let (at, limit) =
            self.deadline.unwrap_or((tokio::time::Instant::now() + std::time::Duration::from_secs(1 << 40), 0));
        tokio::select! {
            _ = tokio::time::sleep_until(at), if self.deadline.is_some() => {
                (self.deadline, self.timed_out) = (None, true);
                console_err!("[launch] --time-limit of {limit} s reached: stopping the group as for SIGTERM");
                libc::SIGTERM
            }
            _ = self.term.recv() => libc::SIGTERM,
            _ = received(&mut self.int) => libc::SIGINT,
            _ = self.usr1.recv() => libc::SIGUSR1,
            _ = self.usr2.recv() => libc::SIGUSR2,
            _ = received(&mut self.hup) => libc::SIGHUP,
            _ = received(&mut self.quit) => libc::SIGQUIT,
        }
    }
}

/// The next delivery of a signal heeded; never, for one ignored.
async fn received(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => _ = s.recv().await,
        None => std::future::pending::<()>().await,
    }
}

/// The signal the ranks get for one the agent received.
pub(super) fn forwarded(received: i32) -> i32 {
    match received {
        libc::SIGHUP | libc::SIGQUIT => libc::SIGTERM,
        s => s,
    }
}

pub(super) fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGALRM => "SIGALRM",
        _ => "signal",
    }
}
