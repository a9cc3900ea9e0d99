//! What the launcher sees of a rank that wrote no flight record when asked: the state of its
//! processes as the kernel reports it (`/proc/PID/task/*/stat` and `wchan`), over the whole process
//! group the agent started it in (a wrapper such as `sh -c "infinity train …"` included), looked at
//! three times 0.1 s apart. A rank whose recorder answers requests cannot answer only for a few
//! reasons, and the state names which: stopped (SIGSTOP, Ctrl-Z, a debugger), stuck in the kernel
//! (uninterruptible sleep on a device or a network file system), exited, or busy. Node N's agent
//! writes what it saw as `flight-unanswered-nodeN.json` beside the records.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::files::{newest_attempt, read_all, write_json};

/// The looks at a process group, and the pause between them.
const LOOKS: usize = 3;
const PAUSE: Duration = Duration::from_millis(100);

/// What the kernel says of a rank's processes, the most telling first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcState {
    /// `T`/`t` in a thread: stopped by a signal or held by a debugger.
    Stopped,
    /// A thread in `D` at every look: waiting in the kernel where no signal reaches it.
    Uninterruptible,
    /// The rank's process exited (`Z`), not yet reaped.
    Exited,
    /// Its CPU time grew while the launcher looked.
    Running,
    /// Asleep at every look, using no CPU.
    Sleeping,
    /// No such process.
    Gone,
    /// This system has no `/proc` to look in.
    Unknown,
}

/// A process: its pid and command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: i32,
    pub command: String,
}

/// A rank that wrote no flight record when the launcher asked, and what its processes were doing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unanswered {
    pub rank: usize,
    pub pid: i32,
    pub host: String,
    pub state: ProcState,
    /// The process of its group that shows the state, where that is not the rank's own (the trainer
    /// under a wrapper shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub culprit: Option<Process>,
    /// Where its thread in uninterruptible sleep waits in the kernel (its `wchan`), where readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_wait: Option<String>,
    /// The launch's run id and attempt, as the flight records carry them.
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub attempt: Option<u32>,
    #[serde(default)]
    pub unix_time: u64,
}

/// What the agents saw of the ranks that wrote no record when asked, a line each (the first word on a
/// rank kept): a rank whose record came later is left out, but for one found stopped or in the kernel,
/// which wrote only once let go on, so its state is the finding, not its record.
pub fn unanswered_lines(unanswered: &[Unanswered], dumps: &[super::Dump]) -> Vec<String> {
    let frozen = |u: &Unanswered| matches!(u.state, ProcState::Stopped | ProcState::Uninterruptible);
    let mut lines: Vec<String> = Vec::new();
    let mut told: Vec<usize> = Vec::new();
    for u in unanswered {
        if told.contains(&u.rank) {
            continue;
        }
        told.push(u.rank);
        match dumps.iter().any(|d| d.rank == u.rank) {
            false => lines.push(u.line()),
            true if frozen(u) => lines.push(format!(
                "{} (its record came later, written once it was let go on to stop: it tells where the rank got \
                 to, not why it answered nothing)",
                u.line()
            )),
            true => {}
        }
    }
    lines
}

impl Unanswered {
    /// Rank `rank`, process `pid` of this host (the leader of its process group) in attempt `attempt`
    /// of run `run_id`, as its kernel says over [`LOOKS`] looks (blocks for 0.2 s).
    pub fn look(rank: usize, pid: i32, (run_id, attempt): (&str, u32)) -> Unanswered {
        let seen = look_at_group(pid);
        let host = crate::env::hostname().unwrap_or_else(|| "this host".into());
        let unix_time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (run_id, attempt) = (Some(run_id.to_string()), Some(attempt));
        let (state, culprit, kernel_wait) = (seen.state, seen.culprit, seen.kernel_wait);
        Unanswered { rank, pid, host, state, culprit, kernel_wait, run_id, attempt, unix_time }
    }

    /// One line: the rank, its process and what its state means.
    pub fn line(&self) -> String {
        let (rank, pid, host) = (self.rank, self.pid, &self.host);
        let (who, culprit_pid) = match &self.culprit {
            Some(c) => (format!("pid {} (`{}`) in its process group", c.pid, c.command), c.pid),
            None => ("its process".to_string(), pid),
        };
        let what = match self.state {
            ProcState::Stopped => format!(
                "{who} is stopped (SIGSTOP, Ctrl-Z or a debugger holds it; `kill -CONT {culprit_pid}` lets it go on)"
            ),
            ProcState::Uninterruptible => format!(
                "a thread of {who} stayed in uninterruptible sleep in the kernel{}: a device or file system that \
                 does not answer (a hung network mount, a GPU driver; `cat /proc/{culprit_pid}/task/*/stack` as \
                 root shows where)",
                self.kernel_wait.as_ref().map_or(String::new(), |w| format!(" (waiting in `{w}`)"))
            ),
            ProcState::Exited => "its process had exited (not yet reaped)".to_string(),
            ProcState::Running => format!(
                "{who} is busy on the CPU and did not answer: its recorder's thread did not get to run, or (NCCL) \
                 the watchdog that answers is held in the driver"
            ),
            ProcState::Sleeping => format!(
                "{who} is asleep and did not answer: a rank that had not opened its communicator yet, or a command \
                 that keeps no flight record (not `infinity train`)"
            ),
            ProcState::Gone => "its process is gone".to_string(),
            ProcState::Unknown => "this system has no /proc to say what its process was doing".to_string(),
        };
        format!("rank {rank} (pid {pid} on {host}) wrote no flight record when asked: {what}")
    }
}

/// What the looks at a process group came to.
#[derive(Debug, PartialEq)]
pub struct Seen {
    pub state: ProcState,
    /// The process showing it, where not the group's leader.
    pub culprit: Option<Process>,
    pub kernel_wait: Option<String>,
}

/// One process of the group at one look: its pid, command, threads `(tid, state)` and CPU ticks.
struct Proc {
    pid: i32,
    comm: String,
    threads: Vec<(i32, char)>,
    ticks: u64,
}

/// Look at process group `pgid` (its leader's pid) [`LOOKS`] times, [`PAUSE`] apart.
pub fn look_at_group(pgid: i32) -> Seen {
    let seen = |state, culprit, kernel_wait| Seen { state, culprit, kernel_wait };
    if !Path::new("/proc/self/stat").exists() {
        return seen(ProcState::Unknown, None, None);
    }
    let mut looks: Vec<Vec<Proc>> = Vec::new();
    for i in 0..LOOKS {
        if i > 0 {
            std::thread::sleep(PAUSE);
        }
        looks.push(group(pgid));
    }
    let last = looks.last().expect("looks");
    let Some(leader) = last.iter().find(|p| p.pid == pgid) else { return seen(ProcState::Gone, None, None) };
    let name = |p: &Proc| (p.pid != pgid).then(|| Process { pid: p.pid, command: p.comm.clone() });
    if let Some(p) = last.iter().find(|p| p.threads.iter().any(|(_, s)| matches!(s, 'T' | 't'))) {
        return seen(ProcState::Stopped, name(p), None);
    }
    if leader.threads.iter().all(|(_, s)| matches!(s, 'Z' | 'X')) {
        return seen(ProcState::Exited, None, None);
    }
    // a thread in D at every look (one look in D is common: a page fault on a mapped shard)
    let in_d = |look: &[Proc], pid: i32, tid: i32| {
        look.iter().any(|p| p.pid == pid && p.threads.iter().any(|&(t, s)| t == tid && s == 'D'))
    };
    for p in last {
        for &(tid, _) in p.threads.iter().filter(|(_, s)| *s == 'D') {
            if looks.iter().all(|look| in_d(look, p.pid, tid)) {
                let wchan = std::fs::read_to_string(format!("/proc/{}/task/{tid}/wchan", p.pid)).ok();
                let wchan = wchan.map(|w| w.trim().to_string()).filter(|w| !w.is_empty() && w != "0");
                return seen(ProcState::Uninterruptible, name(p), wchan);
            }
        }
    }
    // busy: CPU time grew between the first look and the last, in the process that spent it
    let first = &looks[0];
    let spent = |p: &Proc| p.ticks.saturating_sub(first.iter().find(|q| q.pid == p.pid).map_or(p.ticks, |q| q.ticks));
    match last.iter().max_by_key(|p| spent(p)).filter(|p| spent(p) > 0) {
        Some(p) => seen(ProcState::Running, name(p), None),
        None => seen(ProcState::Sleeping, None, None),
    }
}

/// The processes of group `pgid` now.
fn group(pgid: i32) -> Vec<Proc> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut procs = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Some((comm, fields)) = stat(&format!("/proc/{pid}/stat")) else { continue };
        // fields after the command: state, ppid, pgrp, …, utime (12th), stime (13th)
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) != Some(pgid) {
            continue;
        }
        let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let mut threads = Vec::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
                if let Some(s) = stat(&t.path().join("stat").to_string_lossy()).and_then(|(_, f)| state_letter(&f)) {
                    threads.push((tid, s));
                }
            }
        }
        if threads.is_empty() {
            // (a zombie's task list may be empty: its own state stands for it)
            threads.extend(state_letter(&fields).map(|s| (pid, s)));
        }
        procs.push(Proc { pid, comm, threads, ticks: tick(11) + tick(12) });
    }
    procs
}

/// A `stat` file's command (in parentheses, which may hold spaces and parentheses itself) and the
/// fields after it.
fn stat(path: &str) -> Option<(String, Vec<String>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (open, close) = (text.find('(')?, text.rfind(')')?);
    let comm = text.get(open + 1..close)?.to_string();
    Some((comm, text[close + 1..].split_whitespace().map(str::to_string).collect()))
}

fn state_letter(fields: &[String]) -> Option<char> {
    fields.first()?.chars().next()
}

/// `flight-unanswered-nodeN.json`.
pub fn unanswered_name(node: usize) -> String {
    format!("flight-unanswered-node{node}.json")
}

/// Write node `node`'s unanswered ranks into `dir` (atomically); a failure is logged.
pub fn write_unanswered(dir: &Path, node: usize, ranks: &[Unanswered]) {
    if let Err(e) = write_json(dir, &unanswered_name(node), &ranks) {
        tracing::warn!("writing {}: {e}", dir.join(unanswered_name(node)).display());
    }
}

/// The unanswered ranks the nodes' agents wrote into `dir` in the newest launch attempt there, by
/// rank, and notes on files that do not read and entries of other attempts.
pub fn read_unanswered(dir: &Path) -> (Vec<Unanswered>, Vec<String>) {
    let (lists, mut notes) = read_all(dir, "flight-unanswered-node", "a list of ranks", Ok::<Vec<Unanswered>, _>);
    let (this, other) = newest_attempt(lists.concat(), |u| (u.unix_time, u.run_id.clone(), u.attempt));
    if !other.is_empty() {
        let ranks: Vec<String> = other.iter().map(|u| u.rank.to_string()).collect();
        notes.push(format!(
            "left out: the launcher's notes on ranks {} are of another run or attempt",
            ranks.join(", ")
        ));
    }
    let mut found: Vec<Unanswered> = Vec::new();
    for u in this {
        if !found.iter().any(|k| k.rank == u.rank) {
            found.push(u);
        }
    }
    found.sort_by_key(|u| u.rank);
    (found, notes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};
    use std::time::Instant;

    use super::*;

    /// `sh -c script` as the leader of a process group of its own, as the agent starts a rank.
    fn spawn(script: &str) -> (Child, i32) {
        let child = Command::new("sh").args(["-c", script]).process_group(0).spawn().unwrap();
        let pid = child.id() as i32;
        (child, pid)
    }

    /// Look until the group's state is `want` (a signal takes effect asynchronously).
    fn becomes(pgid: i32, want: ProcState) -> Seen {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = look_at_group(pgid);
            if s.state == want || Instant::now() > deadline {
                return s;
            }
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_state_of_a_rank_and_its_process_group_is_read() {
        // a wrapper shell (asleep, waiting) whose child is stopped: the child is named
        let (mut wrapper, pid) = spawn("sleep 30; :");
        assert_eq!(becomes(pid, ProcState::Sleeping).state, ProcState::Sleeping);
        let sleeper = group(pid).into_iter().find(|p| p.pid != pid).expect("the wrapper's child").pid;
        // SAFETY: signals to processes this test started
        unsafe { libc::kill(sleeper, libc::SIGSTOP) };
        let seen = becomes(pid, ProcState::Stopped);
        let culprit = Process { pid: sleeper, command: "sleep".into() };
        assert_eq!((seen.state, seen.culprit.as_ref()), (ProcState::Stopped, Some(&culprit)));
        let u = Unanswered {
            rank: 1,
            pid,
            host: "h".into(),
            state: seen.state,
            culprit: seen.culprit,
            kernel_wait: None,
            run_id: None,
            attempt: None,
            unix_time: 0,
        };
        let want = format!(
            "rank 1 (pid {pid} on h) wrote no flight record when asked: pid {sleeper} (`sleep`) in its process group \
             is stopped (SIGSTOP, Ctrl-Z or a debugger holds it; `kill -CONT {sleeper}` lets it go on)"
        );
        assert_eq!(u.line(), want);
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        assert_eq!(becomes(pid, ProcState::Exited).state, ProcState::Exited, "killed, not yet reaped");
        wrapper.wait().unwrap();
        assert_eq!(look_at_group(pid).state, ProcState::Gone);

        // a busy loop: its CPU time grows while the launcher looks
        let (mut spinner, pid) = spawn("while :; do :; done");
        let seen = becomes(pid, ProcState::Running);
        assert_eq!((seen.state, seen.culprit), (ProcState::Running, None));
        spinner.kill().unwrap();
        spinner.wait().unwrap();
    }

    #[test]
    fn the_command_and_the_fields_after_it_are_read_whatever_the_command_holds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stat");
        std::fs::write(&p, "42 (a) b (c)) D 1 42 42 0 -1").unwrap();
        let (comm, fields) = stat(&p.to_string_lossy()).unwrap();
        assert_eq!((comm.as_str(), state_letter(&fields), fields[2].as_str()), ("a) b (c)", Some('D'), "42"));
    }

    #[test]
    fn the_newest_attempts_unanswered_ranks_are_read_back_by_rank() {
        let dir = tempfile::tempdir().unwrap();
        let u = |rank, state, attempt, kernel_wait: Option<&str>| Unanswered {
            rank,
            pid: 100 + rank as i32,
            host: "n".into(),
            state,
            culprit: None,
            kernel_wait: kernel_wait.map(str::to_string),
            run_id: Some("job".into()),
            attempt: Some(attempt),
            unix_time: 1000 + u64::from(attempt),
        };
        write_unanswered(dir.path(), 1, &[u(3, ProcState::Uninterruptible, 2, Some("nfs_wait_bit_killable"))]);
        write_unanswered(dir.path(), 0, &[u(1, ProcState::Stopped, 2, None), u(0, ProcState::Sleeping, 1, None)]);
        std::fs::write(dir.path().join(unanswered_name(2)), "{").unwrap();
        let (found, notes) = read_unanswered(dir.path());
        assert_eq!(found.iter().map(|u| u.rank).collect::<Vec<_>>(), [1, 3]);
        let line = found[1].line();
        assert!(line.contains("a thread of its process stayed in uninterruptible sleep in the kernel (waiting in `nfs_wait_bit_killable`)"), "{line}");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("flight-unanswered-node2.json: not a list"), "{notes:?}");
        assert!(notes[1].contains("notes on ranks 0 are of another run or attempt"), "{notes:?}");
    }
}
