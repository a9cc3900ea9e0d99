//! The NCCL communicator's watchdog: the raw communicator shared with it ([`Handle`]), the collectives
//! in flight ([`Pending`]), and the thread that aborts the communicator when one stalls or NCCL
//! reports an asynchronous error (then, by default, exits with [`EXIT_COMM_TIMEOUT`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaEvent, CudaStream};
use cudarc::nccl::{result, sys};

use super::super::flight::{FlightRecorder, ASKED, REQUEST_POLL};
use super::super::EXIT_COMM_TIMEOUT;

/// How often the watchdog looks at the pending collectives.
const WATCH_PERIOD: Duration = Duration::from_millis(20);

/// Every how many looks it looks for the launcher's request for the flight record.
const REQUEST_TICKS: u64 = REQUEST_POLL.as_millis() as u64 / WATCH_PERIOD.as_millis() as u64;

/// The raw communicator, shared with the watchdog. Calls that use `comm` hold `use_lock` for reading
/// and check `aborted`; an abort takes it for writing, so no call runs on an aborted (freed)
/// communicator.
pub(super) struct Handle {
    pub(super) comm: sys::ncclComm_t,
    pub(super) aborted: AtomicBool,
    pub(super) use_lock: RwLock<()>,
}

// SAFETY: NCCL allows ncclCommAbort and ncclCommGetAsyncError from any thread; collectives are only
// enqueued by the owning `NcclComm` (one thread at a time through `&mut self`).
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl Handle {
    /// Abort the communicator (once). Returns false when a call is inside NCCL and does not return
    /// (an enqueue can block while connections are set up): the caller then exits without aborting.
    pub(super) fn abort(&self) -> bool {
        let Ok(_guard) = self.use_lock.try_write() else { return false };
        if !self.aborted.swap(true, Ordering::SeqCst) {
            // SAFETY: valid until aborted; no other call holds the handle (write lock).
            let _ = unsafe { result::comm_abort(self.comm) };
        }
        true
    }

    /// An asynchronous error NCCL recorded (a broken connection, a remote abort), if any.
    pub(super) fn async_error(&self) -> Option<String> {
        let _guard = self.use_lock.try_read().ok()?;
        if self.aborted.load(Ordering::SeqCst) {
            return None;
        }
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: valid handle, valid out pointer.
        let rc = unsafe { sys::ncclCommGetAsyncError(self.comm, &mut state) };
        match (rc, state) {
            (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclSuccess)
            | (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclInProgress) => None,
            (sys::ncclResult_t::ncclSuccess, e) => Some(format!("{e:?}")),
            (e, _) => Some(format!("ncclCommGetAsyncError failed: {e:?}")),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if !self.aborted.load(Ordering::SeqCst) {
            // SAFETY: last owner of a valid handle; errors at teardown are not actionable.
            let _ = unsafe { result::comm_destroy(self.comm) };
        }
    }
}

/// A collective in flight: its event completes when the collective does.
pub(super) struct Pending {
    pub(super) op: &'static str,
    /// Its number in the flight record.
    pub(super) seq: u64,
    pub(super) since: Instant,
    pub(super) done: CudaEvent,
}

/// State shared between the communicator and its watchdog thread.
pub(super) struct Watch {
    pub(super) pending: Mutex<VecDeque<Pending>>,
    /// A call inside NCCL right now (an enqueue can block, e.g. while connections are set up).
    pub(super) in_call: Mutex<Option<(&'static str, Instant)>>,
    pub(super) failure: Mutex<Option<String>>,
    pub(super) stop: AtomicBool,
    /// The rank's last collectives, written out when one stalls.
    pub(super) flight: FlightRecorder,
}

impl Watch {
    /// Drop the finished collectives from the front of the queue, marking them so in the flight record.
    pub(super) fn mark_done(&self) {
        let mut q = lock(&self.pending);
        while q.front().is_some_and(|p| p.done.try_is_complete().unwrap_or(false)) {
            if let Some(p) = q.pop_front() {
                self.flight.end(p.seq, true);
            }
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Watch the pending collectives until told to stop; on a stall or an asynchronous error, abort the
/// communicator, record why, and exit the process when `exit` is set.
pub(super) fn watchdog(
    handle: Arc<Handle>,
    watch: Arc<Watch>,
    stream: Arc<CudaStream>,
    rank: usize,
    timeout: Duration,
    exit: bool,
) {
    if let Err(e) = stream.context().bind_to_thread() {
        // without the context the watchdog cannot see the device: fail every later call loudly
        handle.abort();
        *lock(&watch.failure) = Some(format!("the watchdog cannot bind the CUDA context: {e:?}"));
        return;
    }
    let mut ticks = 0u64;
    while !watch.stop.load(Ordering::SeqCst) {
        std::thread::sleep(WATCH_PERIOD);
        ticks += 1;
        // the launcher asks for the record (another rank's collective timed out): what finished is
        // marked first, so the record shows where this GPU got to
        if ticks.is_multiple_of(REQUEST_TICKS) && watch.flight.requested() {
            watch.mark_done();
            watch.flight.dump(ASKED);
        }
        let mut why = handle.async_error().map(|e| format!("NCCL reported an asynchronous error: {e}"));
        let stuck_in_call = lock(&watch.in_call).filter(|(_, since)| since.elapsed() > timeout);
        if let (None, Some((op, since))) = (&why, stuck_in_call) {
            why = Some(format!(
                "NCCL call `{op}` has not returned for {:.0} s (a peer is gone or its link is cut)",
                since.elapsed().as_secs_f64()
            ));
        }
        watch.mark_done();
        {
            let q = lock(&watch.pending);
            if let Some(p) = q.front() {
                if why.is_none() && p.since.elapsed() > timeout {
                    why = Some(format!(
                        "collective `{}` made no progress for {:.0} s (a peer is gone or its link is cut)",
                        p.op,
                        p.since.elapsed().as_secs_f64()
                    ));
                }
            }
        }
        if let Some(why) = why {
            lock(&watch.failure).get_or_insert(why.clone());
            if let Some(path) = watch.flight.dump(&why) {
                console_err!("rank {rank}: its last collectives are in {}", path.display());
            }
            // the abort waits for a normal call to leave NCCL (a tick or two); a call stuck inside it
            // keeps the lock: then the process exits without the abort, or later ticks retry
            let mut aborted = false;
            for _ in 0..50 {
                aborted = handle.abort();
                if aborted {
                    break;
                }
                std::thread::sleep(WATCH_PERIOD / 4);
            }
            if exit {
                let what = if aborted { "NCCL communicator aborted" } else { "a call is stuck inside NCCL" };
                console_err!("rank {rank}: {why}; {what}, exiting with code {EXIT_COMM_TIMEOUT}");
                std::process::exit(EXIT_COMM_TIMEOUT);
            }
            if aborted {
                return;
            }
        }
    }
}

/// A call inside NCCL: holds the communicator (no abort meanwhile) and is timed by the watchdog.
pub(super) struct Held<'a> {
    pub(super) _guard: std::sync::RwLockReadGuard<'a, ()>,
    pub(super) watch: &'a Watch,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *lock(&self.watch.in_call) = None;
    }
}
