//! The local ranks of one attempt: spawned with torchrun-style variables, their output teed to the
//! console (unless `--local-ranks-filter` leaves it out), a log file and a tail for the failure report;
//! stopped with a signal, then SIGKILL.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::signals::signal_name;
use super::{Group, LaunchArgs, Plan};
use crate::comm::EXIT_COMM_TIMEOUT;
use crate::env::{vars, EXIT_BAD_DATA, EXIT_BAD_INVOCATION, EXIT_DIVERGED, EXIT_STALLED, EXIT_STOPPED_BEFORE_START};
use crate::time_prefix;

/// Subcommands of `infinity` that `launch -- SUBCOMMAND …` runs with this binary: all but `launch`
/// (the trainer's CLI tests that none is missing).
pub const OWN_SUBCOMMANDS: [&str; 10] =
    ["train", "data", "sample", "export", "eval", "golden", "model", "comm", "sweep", "scaling"];

/// Lines of each rank's output kept for the failure report.
const TAIL_LINES: usize = 20;

/// One local rank: the process, its pid (also its process group's id: each rank leads its own group,
/// so a stop signal reaches whatever a wrapper script started too), the tail of its output and the
/// tasks that copy that output (joined before a report or exit, so no last line is lost).
pub(super) struct Rank {
    pub(super) global: usize,
    pub(super) child: Child,
    pub(super) pid: i32,
    pub(super) tail: Arc<Mutex<VecDeque<String>>>,
    pub(super) readers: Vec<tokio::task::JoinHandle<()>>,
    pub(super) started: Instant,
    /// Its process group was found empty (kill(2) said ESRCH) once the rank had been reaped: the id is
    /// free for another group leader, which no signal of the agent's may reach any more.
    pub(super) group_gone: bool,
}

/// How long the agent waits, all ranks' pipes together, for output still to be read once the processes
/// are gone or stopped (a process that escaped its group may hold a pipe open for ever).
const DRAIN: Duration = Duration::from_secs(3);

impl Rank {
    /// Sends `sig` to the rank's process group; whether any process was left in it to take it. A group
    /// recorded gone is not signalled: its id may be another's by now.
    pub(super) fn signal_group(&mut self, sig: i32) -> bool {
        if self.pid <= 0 || self.group_gone {
            return false;
        }
        // SAFETY: kill(2) on a process group we created (the rank is its leader; the id stays reserved
        // while any member lives, the unreaped rank included); an empty group makes it fail with ESRCH,
        // which records it gone before its id can be reused.
        if unsafe { libc::kill(-self.pid, sig) } == 0 {
            return true;
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            self.group_gone = true;
        }
        false
    }

    /// Whether a process of the rank's group is still alive (the rank itself until it is reaped); the
    /// first time none is, the group is recorded gone (call it as soon as the rank is reaped, and on each
    /// tick, so that an empty group is seen before its id can be reused).
    pub(super) fn group_alive(&mut self) -> bool {
        self.signal_group(0)
    }
}

impl Drop for Rank {
    fn drop(&mut self) {
        // an agent leaving early (an error) takes the rank's whole group with it, not only the rank
        // (`kill_on_drop` reaches the rank alone)
        if self.child.id().is_some() {
            self.signal_group(libc::SIGKILL);
        }
    }
}

/// Waits until the output of the given ranks has been copied to the console, their logs and tails, all
/// pipes together under one deadline ([`DRAIN`] or `within`); readers still blocked then (a pipe held
/// open by a process outside the group) are given up.
pub(super) async fn drain(ranks: &mut [Rank], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    for r in ranks.iter_mut() {
        for mut h in r.readers.drain(..) {
            if tokio::time::timeout_at(deadline, &mut h).await.is_err() {
                h.abort();
            }
        }
    }
}

/// Start this node's ranks of attempt `g.round` (global ranks node_rank · nproc_per_node + local).
pub(super) async fn spawn_group(a: &LaunchArgs, p: &Plan, g: Group, exe: &Path, port: u16) -> Result<Vec<Rank>> {
    let (attempt, world) = (g.round, g.nnodes * a.nproc_per_node);
    let dir = p.attempt_dir(&a.log_dir, attempt);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // (an earlier session of the same run id may have left flight records here, or asked for them)
    crate::comm::flight::clear(&dir);
    // (absolute: a rank's command may change directory before its communicator looks)
    let flight_dir = std::path::absolute(&dir).unwrap_or_else(|_| dir.clone());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) / a.nproc_per_node;
    let inherited = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let devices = local_devices(inherited.as_deref(), a.nproc_per_node);
    let given = devices.iter().filter(|d| !d.is_empty()).count();
    if let Some(list) = inherited.as_deref().filter(|_| given > 0 && given < a.nproc_per_node) {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            let last = a.nproc_per_node - 1;
            let blind = match given == last {
                true => format!("local rank {last} sees"),
                false => format!("local ranks {given} to {last} see"),
            };
            console_err!(
                "[launch] warning: CUDA_VISIBLE_DEVICES={list} lists {} for {} local ranks: {blind} no GPU",
                crate::plural(given, "GPU"),
                a.nproc_per_node
            );
        });
    }
    let mut ranks = Vec::new();
    for (local, device) in devices.iter().enumerate() {
        // --numa-binding: the rank's CPUs, set in the child before it runs anything
        let bound = p.cpus.as_ref().map(|c| &c[local]);
        let affinity = bound.map(|b| super::numa::mask(&b.cpus));
        let global = g.node_rank * a.nproc_per_node + local;
        let (prog, args) = if OWN_SUBCOMMANDS.contains(&a.cmd[0].as_str()) {
            (exe.to_path_buf(), &a.cmd[..])
        } else {
            (PathBuf::from(&a.cmd[0]), &a.cmd[1..])
        };
        let mut cmd = Command::new(&prog);
        cmd.args(args)
            .env("RANK", global.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", a.nproc_per_node.to_string())
            .env("NODE_RANK", g.node_rank.to_string())
            .env("GROUP_RANK", g.node_rank.to_string())
            .env("MASTER_ADDR", &p.host)
            .env("MASTER_PORT", port.to_string())
            .env(vars::TOKEN, &p.token)
            .env(vars::RUN_ID, &p.run_id)
            .env(vars::RESTART_COUNT, attempt.to_string())
            .env(vars::AGENT_STORE, "1")
            .env(vars::UNDER_AGENT, "1")
            .env(vars::AGENT_PID, std::process::id().to_string())
            // a rank whose collective fails writes its last collectives there (comm/flight.rs)
            .env(crate::comm::flight::FLIGHT_DIR, &flight_dir)
            .env("CUDA_VISIBLE_DEVICES", device)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // its own process group: a stop signal and the final SIGKILL reach the processes a wrapper
            // (`sh -c`, a script) started too, and none outlives the attempt holding its pipes. A
            // terminal's signals (Ctrl-C, a closed session's SIGHUP) then reach the agent only, which
            // forwards them (signals.rs)
            .process_group(0);
        if attempt > 0 {
            cmd.env(vars::RESUME, "auto");
        }
        if let Some((min, max)) = p.elastic {
            cmd.env(vars::ELASTIC, format!("{min}:{max}:{}", a.nproc_per_node));
        }
        let open_files = OPEN_FILES.get().copied();
        // a rank outlives no agent: if the agent dies (SIGKILL, a lost node), the kernel sends the rank
        // SIGTERM (it checkpoints and exits) instead of leaving it writing to the run folder unsupervised
        #[cfg(target_os = "linux")]
        // SAFETY: prctl(2) in the child between fork and exec, async-signal-safe, no allocation.
        // SAFETY: setrlimit(2) likewise, on a struct copied before the fork.
        // SAFETY: sched_setaffinity(2) likewise, on a mask made before the fork (`words` 8-byte words:
        // the kernel reads that many bytes, a cpu_set_t's layout).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // (the limit the agent was started with: its own raise is for the store's connections)
                if let Some(limit) = &open_files {
                    libc::setrlimit(libc::RLIMIT_NOFILE, limit);
                }
                if let Some(words) = &affinity {
                    let set = words.as_ptr() as *const libc::cpu_set_t;
                    if libc::sched_setaffinity(0, words.len() * 8, set) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            // bound, a rank's share of the CPUs it is bound to
            let threads = bound.map_or(threads, |b| b.threads());
            cmd.env("RAYON_NUM_THREADS", threads.max(1).to_string());
        }
        // (the agent puts the time on the ranks' lines as it forwards and logs them: not twice)
        cmd.env_remove(crate::LOG_TIME_VAR);
        if bound.is_some() && std::env::var_os("CUDA_DEVICE_ORDER").is_none() {
            // the order the binding counted GPU indices in (CUDA's default leaves ties unspecified)
            cmd.env("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
        }
        let mut child = cmd.spawn().with_context(|| format!("starting rank {global}: {}", prog.display()))?;
        let pid = child.id().map_or(0, |p| p as i32);
        let log_path = dir.join(format!("rank_{global}.log"));
        // appended: a relaunch with the same run id (a requeued job) keeps the earlier sessions' logs
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let _ = writeln!(
            log,
            "{}==== rank {global}, attempt {attempt}, pid {pid}, started at unix time {}",
            time_prefix().unwrap_or_default(),
            since_epoch.as_secs()
        );
        let log = Arc::new(Mutex::new(log));
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let out: Box<dyn tokio::io::AsyncRead + Unpin + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn tokio::io::AsyncRead + Unpin + Send> = Box::new(child.stderr.take().unwrap());
        let mut readers = Vec::new();
        let shown = a.local_ranks_filter.as_ref().is_none_or(|f| f.contains(local));
        // (each stream to the agent's own, as torchrun's: a job that splits its output and error files
        // finds the ranks' progress in one and their errors in the other)
        for (stream, to_stdout) in [(out, true), (err, false)] {
            let (log, tail) = (log.clone(), tail.clone());
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match (shown, to_stdout) {
                        (true, true) => console!("[rank {global}] {line}"),
                        (true, false) => console_err!("[rank {global}] {line}"),
                        (false, _) => {}
                    }
                    let _ = writeln!(log.lock().unwrap(), "{}{line}", time_prefix().unwrap_or_default());
                    let mut t = tail.lock().unwrap();
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }));
        }
        ranks.push(Rank { global, child, pid, tail, readers, started: Instant::now(), group_gone: false });
    }
    Ok(ranks)
}

/// The open-files limit the agent was started with, where [`raise_open_files`] raised it.
static OPEN_FILES: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// The agent's soft limit of open files raised towards the hard one (up to 65536): the store it may host
/// holds a connection per agent and rank, besides its ranks' pipes, under a soft limit that is often
/// 1024. Its ranks are started with the limit it was started with.
pub(super) fn raise_open_files() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) and setrlimit(2) on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let raised = libc::rlimit { rlim_cur: limit.rlim_max.min(65_536).max(limit.rlim_cur), ..limit };
        if raised.rlim_cur > limit.rlim_cur && libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            let _ = OPEN_FILES.set(limit);
        }
    }
}

/// Each local rank's `CUDA_VISIBLE_DEVICES`: its entry of the inherited list (a scheduler's allocation),
/// or GPU `LOCAL_RANK` without one. Ranks beyond a shorter list see no GPU ("") rather than one the job
/// was not given; an empty list (GPUs hidden on purpose) hides them from every rank.
pub(super) fn local_devices(inherited: Option<&str>, nproc: usize) -> Vec<String> {
    let Some(list) = inherited else { return (0..nproc).map(|i| i.to_string()).collect() };
    let mut devices: Vec<String> = list.split(',').map(str::trim).filter(|d| !d.is_empty()).map(String::from).collect();
    devices.resize(nproc, String::new());
    devices
}

pub(super) fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) if c == EXIT_COMM_TIMEOUT => format!("exit code {c} (a collective timed out)"),
        (Some(c), _) if c == EXIT_BAD_DATA => format!("exit code {c} (bad data)"),
        (Some(c), _) if c == EXIT_BAD_INVOCATION => format!("exit code {c} (bad command line or config)"),
        (Some(c), _) if c == EXIT_DIVERGED => format!("exit code {c} (the run diverged)"),
        (Some(c), _) if c == EXIT_STALLED => format!("exit code {c} (no progress for run.stall_timeout_s)"),
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s} ({})", signal_name(s)),
        _ => "an unknown status".into(),
    }
}

/// Who sent the signal a failed rank died of, for its report (empty for an exit code). The agent signals
/// ranks only once their group stops, after the failure, so the signal came from elsewhere: a crash of
/// the rank's own, or something else on its host (the kernel's out-of-memory killer sends SIGKILL).
pub(super) fn signal_origin(status: &ExitStatus) -> &'static str {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        None => "",
        Some(libc::SIGKILL) => {
            " (not sent by this agent: the kernel's out-of-memory killer? `dmesg` on its host says; or a kill)"
        }
        Some(
            libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGABRT | libc::SIGTRAP | libc::SIGSYS,
        ) => " (it crashed)",
        Some(libc::SIGPIPE) => " (it wrote to a pipe closed at the other end)",
        Some(libc::SIGXFSZ | libc::SIGXCPU) => " (it passed a resource limit: `ulimit -a` on its host)",
        Some(_) => " (not sent by this agent: something else on its host signalled the rank)",
    }
}

/// Send `sig` to every rank's process group (running ranks, and whatever an exited one left behind),
/// wait up to `grace_s`, then SIGKILL the groups still alive; read the ranks' last output. Returns the
/// exit code of an agent that stopped them for signal `sig`: 0 when every rank exited successfully
/// (they checkpointed) or stopped still setting up (`EXIT_STOPPED_BEFORE_START`), the code of a rank that failed on its own (1, 65, …), else 128 + `sig` (a rank
/// died of it, before it could checkpoint: the agent reports the signal as a shell would, so a
/// scheduler sees a preemption). With `hurry`, a SIGINT during the grace period (a second Ctrl-C: the
/// first was the stop) ends it at once: the groups are killed without waiting for their checkpoint.
pub(super) async fn stop_group(
    ranks: &mut [Rank],
    exited: &mut [Option<ExitStatus>],
    grace_s: f64,
    sig: i32,
    mut hurry: Option<&mut super::signals::Signals>,
) -> i32 {
    let running: Vec<usize> = (0..ranks.len()).filter(|&i| exited[i].is_none()).collect();
    // (only groups that still hold a process: one recorded gone, or empty now, may be another's by now)
    let signalled: Vec<usize> = (0..ranks.len()).filter(|&i| ranks[i].group_alive()).collect();
    for &i in &signalled {
        ranks[i].signal_group(sig);
        // a stopped process (SIGSTOP, Ctrl-Z) acts on the signal only once continued: without this, a
        // stopped rank holds the group's stop (and its restart) for the whole grace period
        ranks[i].signal_group(libc::SIGCONT);
    }
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs_f64(grace_s);
    // (the grace period's waits, each cut short by a second Ctrl-C where `hurry`)
    let mut hurried = false;
    for &i in &running {
        let wait = tokio::time::timeout_at(deadline, ranks[i].child.wait());
        let waited = match hurry.as_deref_mut().filter(|_| !hurried) {
            Some(signals) => tokio::select! {
                w = wait => Some(w),
                () = signals.interrupted() => None,
            },
            None => Some(wait.await),
        };
        match waited {
            Some(Ok(Ok(s))) => {
                exited[i] = Some(s);
                // (reaped: its group's id is free once the group is empty)
                ranks[i].group_alive();
            }
            Some(_) => {}
            None => (hurried, deadline) = (true, tokio::time::Instant::now()),
        }
    }
    // what the ranks started goes too (a wrapper's child that ignores the signal holds the pipes)
    while signalled.iter().any(|&i| ranks[i].group_alive()) && tokio::time::Instant::now() < deadline {
        let pause = tokio::time::sleep(Duration::from_millis(20));
        match hurry.as_deref_mut() {
            Some(signals) => tokio::select! {
                () = pause => {}
                () = signals.interrupted() => (hurried, deadline) = (true, tokio::time::Instant::now()),
            },
            None => pause.await,
        }
    }
    if hurried {
        console_err!("[launch] SIGINT again: SIGKILL to the ranks now, without waiting for their stop checkpoint");
    }
    for &i in &signalled {
        if !ranks[i].group_alive() {
            continue;
        }
        if hurried {
            ranks[i].signal_group(libc::SIGKILL);
            continue;
        }
        // (a training rank still in its stop checkpoint loses it: said, with what keeps it)
        let what = match exited[i] {
            None => "did not exit",
            Some(_) => "left processes that did not exit",
        };
        let lost = match exited[i] {
            None => {
                "; a checkpoint it may have been writing is lost, and a resume starts from the newest complete \
                 one (a --grace-s longer than a checkpoint write keeps it)"
            }
            Some(_) => "",
        };
        console_err!("[launch] rank {} {what} within {grace_s} s; SIGKILL to its process group{lost}", ranks[i].global);
        ranks[i].signal_group(libc::SIGKILL);
    }
    for &i in &running {
        if exited[i].is_some() {
            continue;
        }
        // a rank that left its group (setpgid) took no signal of the group's: it is killed itself (its
        // pid is still ours: it is not reaped)
        let r = &mut ranks[i];
        let s = match tokio::time::timeout(Duration::from_secs(1), r.child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                console_err!(
                    "[launch] rank {} did not exit within {grace_s} s (outside its process group); SIGKILL to it",
                    r.global
                );
                let _ = r.child.start_kill();
                r.child.wait().await
            }
        };
        exited[i] = s.ok();
        r.group_alive();
    }
    drain(ranks, DRAIN).await;
    // (a rank still setting up stops at once, nothing trained: as clean a stop as a checkpointed one)
    let stopped = |s: &std::process::ExitStatus| s.success() || s.code() == Some(EXIT_STOPPED_BEFORE_START);
    if exited.iter().all(|s| s.is_some_and(|s| stopped(&s))) {
        return 0;
    }
    // a rank that failed otherwise after the signal (a checkpoint it could not write, bad data) gives its
    // own code: it is not a preemption to requeue
    exited.iter().flatten().filter_map(|s| s.code()).find(|&c| c != 0 && c < 128).unwrap_or(128 + sig)
}

/// The first of several futures to finish, with its index among them.
pub(super) async fn futures_select_all<F, T>(futs: Vec<std::pin::Pin<Box<F>>>) -> T
where
    F: std::future::Future<Output = T>,
{
    let mut futs = futs;
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(cx) {
                return std::task::Poll::Ready(v);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reaped rank's empty group is recorded gone at the first look, and a group recorded gone is
    /// never signalled again, even once a live group holds its id (as a new group leader that reused
    /// it would): the agent SIGTERMed or SIGKILLed such unrelated groups.
    #[test]
    fn a_group_found_empty_is_recorded_gone_and_never_signalled_again() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut child = Command::new("true").process_group(0).spawn().unwrap();
            let pid = child.id().unwrap() as i32;
            assert!(child.wait().await.unwrap().success());
            let tail = Arc::new(Mutex::new(VecDeque::new()));
            let readers = Vec::new();
            let mut rank = Rank { global: 0, child, pid, tail, readers, started: Instant::now(), group_gone: false };
            assert!(!rank.group_alive());
            assert!(rank.group_gone, "ESRCH was not recorded");
            // a live group under the id recorded gone (a reused one) takes no signal
            use std::os::unix::process::CommandExt;
            let mut other = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
            rank.pid = other.id() as i32;
            assert!(!rank.signal_group(libc::SIGKILL) && !rank.group_alive());
            std::thread::sleep(Duration::from_millis(100));
            assert!(other.try_wait().unwrap().is_none(), "the group recorded gone was signalled");
            other.kill().unwrap();
            other.wait().unwrap();
        });
    }

    #[test]
    fn each_local_rank_takes_its_entry_of_the_allocation_and_no_other_gpu() {
        assert_eq!(local_devices(None, 2), ["0", "1"]);
        assert_eq!(local_devices(Some("3,5"), 2), ["3", "5"]);
        assert_eq!(local_devices(Some("GPU-aa, GPU-bb,"), 2), ["GPU-aa", "GPU-bb"]);
        assert_eq!(local_devices(Some("3"), 2), ["3", ""], "GPU 1 was not allocated");
        assert_eq!(local_devices(Some(""), 2), ["", ""], "hidden GPUs stay hidden");
    }
}
