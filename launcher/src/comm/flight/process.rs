//! What the launcher sees of a rank that wrote no flight record when asked: its process's state as
//! the kernel reports it (`/proc/PID/task/*/stat` and `wchan`). A rank whose recorder answers
//! requests cannot answer only for a few reasons, and the state names which: stopped (SIGSTOP, Ctrl-Z,
//! a debugger), stuck in the kernel (uninterruptible sleep on a device or a network file system),
//! exited, or busy. Node N's agent writes what it saw as `flight-unanswered-nodeN.json` beside the
//! records.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What the kernel says of a process, the most telling of its threads' states first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcState {
    /// `T`/`t`: stopped by a signal or held by a debugger.
    Stopped,
    /// `D` in one of its threads: waiting in the kernel where no signal reaches it.
    Uninterruptible,
    /// `Z`/`X`: exited, not yet reaped.
    Exited,
    /// `R` in one of its threads.
    Running,
    /// Every thread asleep (`S`, `I`).
    Sleeping,
    /// No such process.
    Gone,
}

/// A rank that wrote no flight record when the launcher asked, and what its process was doing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unanswered {
    pub rank: usize,
    pub pid: i32,
    pub host: String,
    pub state: ProcState,
    /// Where its thread in uninterruptible sleep waits in the kernel (its `wchan`), where readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_wait: Option<String>,
}

impl Unanswered {
    /// Rank `rank`, process `pid` of this host, as its kernel says now.
    pub fn look(rank: usize, pid: i32) -> Unanswered {
        let (state, kernel_wait) = state_of(pid);
        let host = crate::env::hostname().unwrap_or_else(|| "this host".into());
        Unanswered { rank, pid, host, state, kernel_wait }
    }

    /// One line: the rank, its process and what its state means.
    pub fn line(&self) -> String {
        let (rank, pid, host) = (self.rank, self.pid, &self.host);
        let what = match self.state {
            ProcState::Stopped => format!(
                "its process is stopped (SIGSTOP, Ctrl-Z or a debugger holds it; `kill -CONT {pid}` lets it go on)"
            ),
            ProcState::Uninterruptible => format!(
                "a thread of its process is in uninterruptible sleep in the kernel{}: a device or file system that \
                 does not answer (a hung network mount, a GPU driver; `cat /proc/{pid}/task/*/stack` as root shows \
                 where)",
                self.kernel_wait.as_ref().map_or(String::new(), |w| format!(" (waiting in `{w}`)"))
            ),
            ProcState::Exited => "its process had exited (not yet reaped)".to_string(),
            ProcState::Running => {
                "its process is running: busy in a computation that does not reach the collectives, or too busy \
                 for its recorder's thread"
                    .to_string()
            }
            ProcState::Sleeping => {
                "its process is asleep, waiting for something, and did not answer: a rank that had not opened its \
                 communicator yet, or a command that keeps no flight record (not `infinity train`)"
                    .to_string()
            }
            ProcState::Gone => "its process is gone".to_string(),
        };
        format!("rank {rank} (pid {pid} on {host}) wrote no flight record when asked: {what}")
    }
}

/// The state of process `pid` and, where a thread of it is in uninterruptible sleep, that thread's
/// kernel wait channel.
pub fn state_of(pid: i32) -> (ProcState, Option<String>) {
    let task = format!("/proc/{pid}/task");
    let Ok(rd) = std::fs::read_dir(&task) else { return (ProcState::Gone, None) };
    // (the main thread's own state first: a stopped process's threads are all stopped)
    let main = stat_state(&format!("/proc/{pid}/stat"));
    let mut threads: Vec<(char, std::path::PathBuf)> = Vec::new();
    for t in rd.flatten() {
        if let Some(s) = stat_state(&t.path().join("stat").to_string_lossy()) {
            threads.push((s, t.path()));
        }
    }
    let any = |c: &[char]| threads.iter().find(|(s, _)| c.contains(s));
    let state = match main {
        None => return (ProcState::Gone, None),
        Some('T' | 't') => ProcState::Stopped,
        Some('Z' | 'X') => ProcState::Exited,
        _ if any(&['D']).is_some() => {
            let wait = any(&['D']).and_then(|(_, p)| std::fs::read_to_string(p.join("wchan")).ok());
            let wait = wait.map(|w| w.trim().to_string()).filter(|w| !w.is_empty() && w != "0");
            return (ProcState::Uninterruptible, wait);
        }
        _ if any(&['R']).is_some() || main == Some('R') => ProcState::Running,
        _ => ProcState::Sleeping,
    };
    (state, None)
}

/// The state letter of a `stat` file: the field after the command name, which is in parentheses and
/// may itself hold spaces and parentheses.
fn stat_state(path: &str) -> Option<char> {
    let text = std::fs::read_to_string(path).ok()?;
    text[text.rfind(')')? + 1..].split_whitespace().next()?.chars().next()
}

/// `flight-unanswered-nodeN.json`.
pub fn unanswered_name(node: usize) -> String {
    format!("flight-unanswered-node{node}.json")
}

/// Write node `node`'s unanswered ranks into `dir` (atomically); a failure is logged.
pub fn write_unanswered(dir: &Path, node: usize, ranks: &[Unanswered]) {
    let path = dir.join(unanswered_name(node));
    let tmp = dir.join(format!(".{}.tmp", unanswered_name(node)));
    let text = serde_json::to_string_pretty(ranks).expect("strings and numbers");
    if let Err(e) = std::fs::write(&tmp, text + "\n").and_then(|()| std::fs::rename(&tmp, &path)) {
        tracing::warn!("writing {}: {e}", path.display());
    }
}

/// The unanswered ranks every node's agent wrote into `dir`, by rank, and notes on the files that do
/// not read.
pub fn read_unanswered(dir: &Path) -> (Vec<Unanswered>, Vec<String>) {
    let (mut found, mut notes) = (Vec::<Unanswered>::new(), Vec::new());
    let Ok(rd) = std::fs::read_dir(dir) else { return (found, notes) };
    let mut paths: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !(name.starts_with("flight-unanswered-node") && name.ends_with(".json")) {
            continue;
        }
        let read = std::fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Vec<Unanswered>>(&t).map_err(|e| format!("not a list of ranks: {e}")));
        match read {
            Ok(ranks) => {
                for u in ranks {
                    if !found.iter().any(|k| k.rank == u.rank) {
                        found.push(u);
                    }
                }
            }
            Err(e) => notes.push(format!("{}: {e}", p.display())),
        }
    }
    found.sort_by_key(|u| u.rank);
    (found, notes)
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    use super::*;

    /// Poll `pid`'s state until it is `want` (a signal takes effect asynchronously).
    fn becomes(pid: i32, want: ProcState) -> ProcState {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (s, _) = state_of(pid);
            if s == want || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn(script: &str) -> (Child, i32) {
        let child = Command::new("sh").args(["-c", script]).spawn().unwrap();
        let pid = child.id() as i32;
        (child, pid)
    }

    #[test]
    fn the_kernel_state_of_a_process_is_read() {
        let (mut sleeper, pid) = spawn("sleep 30");
        assert_eq!(becomes(pid, ProcState::Sleeping), ProcState::Sleeping);
        // SAFETY: signals to a child this test owns
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        assert_eq!(becomes(pid, ProcState::Stopped), ProcState::Stopped);
        let u = Unanswered::look(1, pid);
        assert!(u.line().starts_with(&format!("rank 1 (pid {pid} on ")), "{}", u.line());
        assert!(u.line().contains("wrote no flight record when asked: its process is stopped"), "{}", u.line());
        assert!(u.line().contains(&format!("kill -CONT {pid}")), "{}", u.line());
        unsafe { libc::kill(pid, libc::SIGCONT) };
        assert_eq!(becomes(pid, ProcState::Sleeping), ProcState::Sleeping);
        sleeper.kill().unwrap();
        assert_eq!(becomes(pid, ProcState::Exited), ProcState::Exited, "killed, not yet reaped");
        sleeper.wait().unwrap();
        assert_eq!(state_of(pid).0, ProcState::Gone);

        let (mut spinner, pid) = spawn("while :; do :; done");
        assert_eq!(becomes(pid, ProcState::Running), ProcState::Running);
        spinner.kill().unwrap();
        spinner.wait().unwrap();
    }

    #[test]
    fn the_state_letter_follows_the_command_name_whatever_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stat");
        std::fs::write(&p, "42 (a) b (c)) D 1 42 42 0 -1").unwrap();
        assert_eq!(stat_state(&p.to_string_lossy()), Some('D'));
    }

    #[test]
    fn unanswered_ranks_are_written_and_read_back_by_rank() {
        let dir = tempfile::tempdir().unwrap();
        let u = |rank, state, kernel_wait: Option<&str>| {
            let kernel_wait = kernel_wait.map(str::to_string);
            Unanswered { rank, pid: 100 + rank as i32, host: "n".into(), state, kernel_wait }
        };
        write_unanswered(dir.path(), 1, &[u(3, ProcState::Uninterruptible, Some("nfs_wait_bit_killable"))]);
        write_unanswered(dir.path(), 0, &[u(1, ProcState::Stopped, None)]);
        std::fs::write(dir.path().join(unanswered_name(2)), "{").unwrap();
        let (found, notes) = read_unanswered(dir.path());
        assert_eq!(found.iter().map(|u| u.rank).collect::<Vec<_>>(), [1, 3]);
        assert!(found[1].line().contains("uninterruptible sleep in the kernel (waiting in `nfs_wait_bit_killable`)"));
        assert!(notes.len() == 1 && notes[0].contains("flight-unanswered-node2.json: not a list"), "{notes:?}");
    }
}
