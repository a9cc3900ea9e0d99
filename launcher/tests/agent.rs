//! `infinity launch` agents as processes: signals, a frozen store, a node replaced, agents that
//! disagree. Each agent is this test binary run again with `agent_process` selected and its command
//! line in `LAUNCH_TEST_ARGS` (the `infinity` binary lives in another crate); the ranks are `sh`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use infinity_launcher::agent::{launch, LaunchArgs};
use infinity_launcher::store::StoreClient;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    launch: LaunchArgs,
}

/// Not a test of its own: the body of an agent process the tests below start.
#[test]
fn agent_process() {
    let Ok(args) = std::env::var("LAUNCH_TEST_ARGS") else { return };
    let args: Vec<String> = serde_json::from_str(&args).unwrap();
    let cli = Cli::parse_from(std::iter::once("launch".to_string()).chain(args));
    let code = match launch(cli.launch, std::env::current_exe().unwrap()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// One agent process; its stderr goes to `log`.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Agent {
        Agent::start_with(dir, name, args, &[])
    }

    /// [`Agent::start`] with the variables `vars` set (SLURM's among them).
    fn start_with(dir: &Path, name: &str, args: &[&str], vars: &[(&str, String)]) -> Agent {
        let log = dir.join(format!("{name}.log"));
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["agent_process", "--exact", "--nocapture", "--test-threads", "1"])
            .env("LAUNCH_TEST_ARGS", serde_json::to_string(&args).unwrap())
            .env("TEST_DIR", dir)
            .env_remove("SLURM_JOB_ID")
            .env_remove("SLURM_STEP_ID")
            .env_remove("RAYON_NUM_THREADS")
            // (the ranks are shell scripts: no GPU, on a machine with GPUs too)
            .env("CUDA_VISIBLE_DEVICES", "")
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to `within`) until the log holds `what`.
    fn wait_for(&self, what: &str, within: Duration) {
        let t0 = Instant::now();
        while !self.text().contains(what) {
            assert!(t0.elapsed() < within, "no {what:?} within {within:?}; the log:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child of ours that has not been waited for.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// The exit status, waiting up to `within`.
    fn exit(&mut self, within: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if t0.elapsed() >= within {
                let _ = self.child.kill();
                panic!("the agent did not exit within {within:?}; its log:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `n` files named `started.*` exist in `dir` (each rank touches one).
fn wait_started(dir: &Path, n: usize, within: Duration) {
    let t0 = Instant::now();
    let count = || {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("started."))
            .count()
    };
    while count() < n {
        assert!(t0.elapsed() < within, "{} of {n} ranks started within {within:?}", count());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A rank that marks its start, then waits; on SIGTERM it marks that and exits 0 (as a rank that
/// checkpointed).
const PATIENT_RANK: &str = r#"trap 'touch "$TEST_DIR/term.$RANK"; exit 0' TERM; touch "$TEST_DIR/started.$RANK"; while :; do sleep 0.05; done"#;

/// A rank that marks its start and dies of the first signal (a rank stopped before it could checkpoint).
const FRAGILE_RANK: &str = r#"touch "$TEST_DIR/started.$RANK"; exec sleep 60"#;

/// An agent's command line: logs under `dir`, `grace` seconds for its ranks to stop, 15 s for the
/// rendezvous, the `extra` options, then the ranks' command.
fn agent_args<'a>(dir: &'a str, grace: &'a str, extra: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--log-dir", dir, "--grace-s", grace, "--rdzv-timeout-s", "15"];
    v.extend_from_slice(extra);
    v.push("--");
    v.extend_from_slice(cmd);
    v
}

/// [`agent_args`] with a 5 s grace and a shell script for ranks.
fn args<'a>(dir: &'a str, extra: &[&'a str], rank: &'a str) -> Vec<&'a str> {
    agent_args(dir, "5", extra, &["sh", "-c", rank])
}

/// The options of node `n` in a group of two nodes meeting at `rdzv`, then `more`.
fn node_of_two<'a>(n: &'a str, rdzv: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--nnodes", "2", "--node-rank", n, "--rdzv", rdzv, "--token", "t"];
    v.extend_from_slice(more);
    v
}

/// This test binary run as a rank: the test `name`, marked to act by the environment `flag`.
fn test_rank<'a>(flag: &'a str, exe: &'a str, name: &'a str) -> [&'a str; 8] {
    ["env", flag, exe, name, "--exact", "--nocapture", "--test-threads", "1"]
}

#[test]
fn a_signal_is_forwarded_and_the_exit_code_says_which() {
    // ranks that die of the forwarded SIGTERM: 128 + 15, as a shell reports it (never a failure's 1)
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let mut agent = Agent::start(tmp.path(), "term", &args(d, &["--nproc-per-node", "2"], FRAGILE_RANK));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.exit(Duration::from_secs(15)).code(), Some(143), "{}", agent.text());
    assert!(agent.text().contains("got SIGTERM; forwarding SIGTERM"), "{}", agent.text());

    // SIGHUP and SIGQUIT are logged as such and forwarded as SIGTERM; ranks that checkpoint and exit 0
    // make it 0
    for (sig, name) in [(libc::SIGHUP, "SIGHUP"), (libc::SIGQUIT, "SIGQUIT")] {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_str().unwrap();
        let mut agent = Agent::start(tmp.path(), name, &args(d, &["--nproc-per-node", "2"], PATIENT_RANK));
        wait_started(tmp.path(), 2, Duration::from_secs(15));
        agent.signal(sig);
        assert_eq!(agent.exit(Duration::from_secs(15)).code(), Some(0), "{}", agent.text());
        assert!(agent.text().contains(&format!("got {name}; forwarding SIGTERM")), "{}", agent.text());
        assert!(tmp.path().join("term.0").exists() && tmp.path().join("term.1").exists());
    }

    // the same with --preempted-exit-code 143: what a scheduler that retries failed pods must see
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let extra = ["--nproc-per-node", "2", "--preempted-exit-code", "143"];
    let mut agent = Agent::start(tmp.path(), "term-143", &args(d, &extra, PATIENT_RANK));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.exit(Duration::from_secs(15)).code(), Some(143), "{}", agent.text());
    assert!(tmp.path().join("term.0").exists() && tmp.path().join("term.1").exists());

    // ranks still setting up stop at once with 143 (EXIT_STOPPED_BEFORE_START: nothing trained): as
    // clean a stop as a checkpointed one, so --preempted-exit-code's (here 0) for a scheduler to requeue
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let setting_up = r#"trap 'exit 143' TERM; touch "$TEST_DIR/started.$RANK"; while :; do sleep 0.05; done"#;
    let mut agent = Agent::start(tmp.path(), "setup", &args(d, &["--nproc-per-node", "2"], setting_up));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.exit(Duration::from_secs(15)).code(), Some(0), "{}", agent.text());

    // SIGHUP to ranks that die of the forwarded signal: 128 + 1, as before the ranks start
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let mut agent = Agent::start(tmp.path(), "hup-dies", &args(d, &["--nproc-per-node", "2"], FRAGILE_RANK));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    agent.signal(libc::SIGHUP);
    assert_eq!(agent.exit(Duration::from_secs(15)).code(), Some(129), "{}", agent.text());

    // a rank that fails on its own after the signal (exit 3): its code, not a preemption's (nor
    // --preempted-exit-code's)
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let failing = r#"trap 'exit 3' TERM; touch "$TEST_DIR/started.$RANK"; while :; do sleep 0.05; done"#;
    let extra = ["--nproc-per-node", "2", "--preempted-exit-code", "143"];
    let mut agent = Agent::start(tmp.path(), "fails", &args(d, &extra, failing));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.exit(Duration::from_secs(15)).code(), Some(3), "{}", agent.text());
}

/// `--time-limit`: at its deadline the agent stops the group as for SIGTERM (the ranks checkpoint and
/// exit), and exits with `--preempted-exit-code`; a limit it cannot read is a usage error.
#[test]
fn a_time_limit_stops_the_group_as_a_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let extra = ["--nproc-per-node", "2", "--preempted-exit-code", "75", "--time-limit", "0:05"];
    let mut agent = Agent::start(tmp.path(), "limit", &args(d, &extra, PATIENT_RANK));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    assert_eq!(agent.exit(Duration::from_secs(20)).code(), Some(75), "{}", agent.text());
    let said = [
        "--time-limit: the group stops 0:00:05 (h:mm:ss) after",
        "--time-limit of 5 s reached: stopping the group",
        "the time limit came; forwarding SIGTERM to the ranks",
    ];
    assert!(said.iter().all(|s| agent.text().contains(s)), "{}", agent.text());
    assert!(tmp.path().join("term.0").exists() && tmp.path().join("term.1").exists(), "{}", agent.text());

    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let mut agent = Agent::start(tmp.path(), "bad-limit", &args(d, &["--time-limit", "soon"], PATIENT_RANK));
    assert_eq!(agent.exit(Duration::from_secs(10)).code(), Some(2), "{}", agent.text());
    assert!(agent.text().contains("expected a time as sbatch --time takes it"), "{}", agent.text());
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let mut agent = Agent::start(tmp.path(), "zero-limit", &args(d, &["--time-limit", "0"], PATIENT_RANK));
    assert_eq!(agent.exit(Duration::from_secs(10)).code(), Some(2), "{}", agent.text());
    assert!(agent.text().contains("sbatch's 0 is no limit; leave --time-limit out for none"), "{}", agent.text());
}

/// `--time-limit` coming before any rank of the agent ran (here: waiting for a second node that never
/// comes): 128 + SIGTERM, as a signal then, not `--preempted-exit-code` (a scheduler would read that
/// as a job that ran and checkpointed).
#[test]
fn a_time_limit_before_any_rank_ran_exits_as_a_signal_then() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let extra = node_of_two("0", &rdzv, &["--preempted-exit-code", "75", "--time-limit", "0:02"]);
    let mut agent = Agent::start(tmp.path(), "limit-waiting", &args(d, &extra, PATIENT_RANK));
    assert_eq!(agent.exit(Duration::from_secs(12)).code(), Some(143), "{}", agent.text());
    let said = "the time limit came while waiting for the other agents; no rank started, exiting with 143";
    assert!(agent.text().contains(said), "{}", agent.text());
    assert!(!tmp.path().join("started.0").exists(), "{}", agent.text());
}

/// `--time-limit`, or a signal, coming between attempts of an agent whose ranks ran in an earlier one
/// (here: node 0 waiting for node 1's agent, lost after attempt 0, to join the restart):
/// `--preempted-exit-code`, as for a job that ran and checkpointed, since its ranks did run (their
/// checkpoint is the restart's).
fn stopped_between_attempts(signal: Option<i32>) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    // attempt 0: node 1's rank waits; node 0's fails once node 1's agent is gone
    let rank = r#"touch "$TEST_DIR/started.$RANK.$INFINITY_RESTART_COUNT"
        [ "$RANK" = 1 ] && exec sleep 60
        while [ ! -e "$TEST_DIR/node1-killed" ]; do sleep 0.05; done; exit 3"#;
    // (node 0 finds attempt 0 failed after about 8 s, then waits up to the rendezvous's 15 s for node 1:
    // the limit, or the signal, comes in that wait)
    let mut limited = vec!["--max-restarts", "2", "--preempted-exit-code", "75"];
    if signal.is_none() {
        limited.extend(["--time-limit", "0:16"]);
    }
    let mut node0 = Agent::start(tmp.path(), "node0", &args(d, &node_of_two("0", &rdzv, &limited), rank));
    let node1_args = ["--max-restarts", "2", "--preempted-exit-code", "75"];
    let mut node1 = Agent::start(tmp.path(), "node1", &args(d, &node_of_two("1", &rdzv, &node1_args), rank));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    let _ = node1.child.kill();
    let _ = node1.child.wait();
    std::fs::write(tmp.path().join("node1-killed"), "").unwrap();
    node0.wait_for("restarting the group (restart 1 of 2)", Duration::from_secs(30));
    let why = match signal {
        Some(sig) => {
            std::thread::sleep(Duration::from_millis(500));
            node0.signal(sig);
            "got SIGUSR1"
        }
        None => "the time limit came",
    };
    assert_eq!(node0.exit(Duration::from_secs(30)).code(), Some(75), "{}", node0.text());
    let said = format!(
        "{why} while waiting for the other agents; no rank running (they ran in an earlier attempt), exiting with 75"
    );
    assert!(node0.text().contains(&said), "{}", node0.text());
    assert!(!tmp.path().join("started.0.1").exists(), "attempt 1 ran:\n{}", node0.text());
}

#[test]
fn a_time_limit_between_attempts_after_ranks_ran_exits_as_preempted() {
    stopped_between_attempts(None);
}

#[test]
fn a_signal_between_attempts_after_ranks_ran_exits_as_preempted() {
    stopped_between_attempts(Some(libc::SIGUSR1));
}

/// The options of node `n` in a group of `nnodes` nodes meeting at `rdzv`, then `more`.
fn node_of<'a>(n: &'a str, nnodes: &'a str, rdzv: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--nnodes", nnodes, "--node-rank", n, "--rdzv", rdzv, "--token", "t"];
    v.extend_from_slice(more);
    v
}

/// A signal to the store's host while the agents of a fixed group wait for a third node at their first
/// meeting: the host leaves, exiting as a signal before the start does, and the other agent stops
/// within seconds, naming it, with the same code (not a lost store's error, nor a wait for the node
/// that has not come).
#[test]
fn a_node_signalled_at_the_first_meeting_stops_the_others_waiting() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let often = [("INFINITY_RDZV_PROGRESS_S", "0.3".to_string())];
    let start = |n: &str| {
        let args = args(d, &node_of(n, "3", &rdzv, &[]), PATIENT_RANK);
        Agent::start_with(tmp.path(), &format!("node{n}"), &args, &often)
    };
    let (mut node0, mut node1) = (start("0"), start("1"));
    for node in [&node0, &node1] {
        node.wait_for("waiting for node ranks [2] of 3", Duration::from_secs(15));
    }
    node0.signal(libc::SIGTERM);
    assert_eq!(node0.exit(Duration::from_secs(10)).code(), Some(143), "{}", node0.text());
    let t0 = Instant::now();
    assert_eq!(node1.exit(Duration::from_secs(10)).code(), Some(143), "{}", node1.text());
    assert!(t0.elapsed() < Duration::from_secs(5), "node 1 waited {:?}", t0.elapsed());
    let said = "node 0 (SIGTERM) was signalled while the group met: the group stops, no rank running; exiting with 143";
    assert!(node1.text().contains(said), "{}", node1.text());
}

/// A signal to one agent while the others of a fixed group meet for a restart (waiting for a lost
/// fourth node): it leaves as a preempted job, and so do the others, at once and naming it, rather than
/// waiting out the rendezvous timeout (or, were the lost node replaced, starting a group without it);
/// the store's host stays until the other agents have read it too.
#[test]
fn a_node_signalled_at_a_restarts_meeting_stops_the_others_waiting() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    // attempt 0: node 3's rank waits; the others' fail once node 3's agent is gone
    let rank = r#"touch "$TEST_DIR/started.$RANK.$INFINITY_RESTART_COUNT"
        [ "$RANK" = 3 ] && exec sleep 60
        while [ ! -e "$TEST_DIR/node3-killed" ]; do sleep 0.05; done; exit 3"#;
    let more = ["--max-restarts", "2", "--preempted-exit-code", "75"];
    let start = |n: &str| Agent::start(tmp.path(), &format!("node{n}"), &args(d, &node_of(n, "4", &rdzv, &more), rank));
    let mut nodes: Vec<Agent> = ["0", "1", "2", "3"].into_iter().map(start).collect();
    wait_started(tmp.path(), 4, Duration::from_secs(15));
    let _ = nodes[3].child.kill();
    let _ = nodes[3].child.wait();
    std::fs::write(tmp.path().join("node3-killed"), "").unwrap();
    for node in &nodes[..3] {
        node.wait_for("restarting the group (restart 1 of 2)", Duration::from_secs(30));
    }
    std::thread::sleep(Duration::from_millis(500));
    nodes[1].signal(libc::SIGTERM);
    assert_eq!(nodes[1].exit(Duration::from_secs(10)).code(), Some(75), "{}", nodes[1].text());
    let t0 = Instant::now();
    let said = "node 1 (SIGTERM) was signalled while the group met: the group stops, no rank running; exiting with 75";
    for n in [0, 2] {
        assert_eq!(nodes[n].exit(Duration::from_secs(10)).code(), Some(75), "node {n}: {}", nodes[n].text());
        assert!(nodes[n].text().contains(said), "node {n}: {}", nodes[n].text());
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "the others waited {:?}", t0.elapsed());
    assert!(!tmp.path().join("started.0.1").exists(), "attempt 1 ran:\n{}", nodes[0].text());
    // attempt 0's records say `restart`; attempt 1's, of the meeting the signal ended, that the group stopped
    let record = |n: usize| -> serde_json::Value {
        let path = tmp.path().join(format!("run/attempt_1/failure-node{n}.json"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .unwrap()
    };
    for n in [0, 1, 2] {
        let rec = record(n);
        assert_eq!(rec["next"], "stop: a node was signalled", "node {n}: {rec}");
        let cause = rec["root_cause"].as_str().unwrap();
        match n {
            1 => assert_eq!(cause, "the restart's rendezvous: this node was stopped by SIGTERM", "{rec}"),
            _ => assert!(cause.starts_with("the restart's rendezvous: node 1 (SIGTERM) was signalled"), "{rec}"),
        }
    }
}

/// Node 0's agent (the store's host) frozen, node 1's agent watching its ranks: `case` "signal" sends
/// node 1's agent SIGTERM, which reaches its ranks at once; "loss" waits for it to find the store lost,
/// after about 10 s.
fn frozen_store(case: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let node = |n: &'static str| {
        let extra = node_of_two(n, &rdzv, &["--run-id", "frozen"]);
        Agent::start(tmp.path(), &format!("node{n}"), &args(d, &extra, PATIENT_RANK))
    };
    let (node0, mut node1) = (node("0"), node("1"));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    node0.signal(libc::SIGSTOP);
    let t0 = Instant::now();
    if case == "signal" {
        // let a poll of the store hang first
        std::thread::sleep(Duration::from_secs(1));
        node1.signal(libc::SIGTERM);
        let t1 = Instant::now();
        while !tmp.path().join("term.1").exists() {
            assert!(t1.elapsed() < Duration::from_secs(8), "the signal was not forwarded:\n{}", node1.text());
            std::thread::sleep(Duration::from_millis(20));
        }
        // (its farewell to the frozen store waits out the reply timeouts: about 10 s; the bound is a hang's)
        assert_eq!(node1.exit(Duration::from_secs(30)).code(), Some(0), "{}", node1.text());
    } else {
        // (10 s of silence, then four probes of up to 3 s each: the bound is a hang's)
        node1.wait_for("stopped answering for 10 s", Duration::from_secs(60));
        assert!(t0.elapsed() >= Duration::from_secs(9), "lost after {:?}", t0.elapsed());
        assert!(tmp.path().join("term.1").exists(), "the ranks were not stopped");
        assert_eq!(node1.exit(Duration::from_secs(15)).code(), Some(1), "{}", node1.text());
    }
}

#[test]
fn a_frozen_store_holds_up_no_signal() {
    frozen_store("signal");
}

#[test]
fn a_frozen_store_is_found_lost_after_10_s() {
    frozen_store("loss");
}

/// A node's agent killed and started again: the new agent joins the group's restart.
#[test]
fn a_replacement_agent_joins_the_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    // attempt 0: node 1's rank waits; node 0's fails once node 1 is gone (as a broken ring would make
    // it); attempt 1: both succeed
    let rank = r#"touch "$TEST_DIR/started.$RANK.$INFINITY_RESTART_COUNT"
        [ "$INFINITY_RESTART_COUNT" != 0 ] && exit 0
        [ "$RANK" = 1 ] && exec sleep 60
        while [ ! -e "$TEST_DIR/node1-killed" ]; do sleep 0.05; done; exit 3"#;
    let node = |n: &'static str, name: &str| {
        let extra = node_of_two(n, &rdzv, &["--max-restarts", "2"]);
        Agent::start(tmp.path(), name, &args(d, &extra, rank))
    };
    let (mut node0, mut node1) = (node("0", "node0"), node("1", "node1"));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    let _ = node1.child.kill();
    let _ = node1.child.wait();
    let mut again = node("1", "node1-again");
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(tmp.path().join("node1-killed"), "").unwrap();
    // (the bounds are a hang's: node 0 waits out SETTLE for the killed agent's mark)
    node0.wait_for("restarting the group (restart 1 of 2)", Duration::from_secs(30));
    assert_eq!(again.exit(Duration::from_secs(15)).code(), Some(0), "{}", again.text());
    assert_eq!(node0.exit(Duration::from_secs(15)).code(), Some(0), "{}", node0.text());
    assert!(tmp.path().join("started.1.1").exists(), "node 1's rank did not run attempt 1");
}

/// A node's replacement started while its agent lives (a pod replaced, its old one not yet gone): it
/// waits for the attempt to end, and at the restart the two agents of node rank 1 meet for one place.
/// Here the old one comes second (its rank takes its grace to stop): it exits 1, naming the other, as a
/// failed pod (not 2, a bad command line, which a Job's failure policy takes to end the job); the group
/// runs its restart with the replacement. (The grace, 3 s, is shorter than the 5 s node 0 waits for
/// every node to settle before its restart: node 0 meets only once the old agent has settled, so the
/// old one reaches the meeting while the store lives. With a grace as long as that wait, the two
/// ended together and the restart could end, and its host exit, before the old agent came.)
#[test]
fn a_replacement_started_while_its_node_lives_leaves_one_agent_at_the_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let rank = r#"touch "$TEST_DIR/started.$RANK.$INFINITY_RESTART_COUNT"
        [ "$INFINITY_RESTART_COUNT" != 0 ] && exit 0
        if [ "$RANK" = 1 ]; then trap '' TERM; while :; do sleep 0.05; done; fi
        while [ ! -e "$TEST_DIR/go" ]; do sleep 0.05; done; exit 3"#;
    let node = |n: &'static str, name: &str| {
        let extra = node_of_two(n, &rdzv, &["--max-restarts", "2", "--run-id", "twice"]);
        Agent::start(tmp.path(), name, &agent_args(d, "3", &extra, &["sh", "-c", rank]))
    };
    let (mut node0, mut node1) = (node("0", "node0"), node("1", "node1"));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    let mut again = node("1", "node1-again");
    again.wait_for("already joined attempt 0", Duration::from_secs(10));
    std::fs::write(tmp.path().join("go"), "").unwrap();
    assert_eq!(node0.exit(Duration::from_secs(40)).code(), Some(0), "{}", node0.text());
    assert_eq!(again.exit(Duration::from_secs(20)).code(), Some(0), "{}", again.text());
    assert_eq!(node1.exit(Duration::from_secs(20)).code(), Some(1), "{}", node1.text());
    let text = node1.text();
    assert!(text.contains("another agent of node rank 1 came first to attempt 1's meeting"), "{text}");
    assert!(tmp.path().join("started.1.1").exists(), "node 1's rank did not run attempt 1");
}

/// Agents started with different --nnodes: every one names it, and exits 2 (a bad command line).
#[test]
fn agents_that_disagree_on_nnodes_exit_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let node = |n: &'static str, nnodes: &'static str| {
        let extra = ["--nnodes", nnodes, "--node-rank", n, "--rdzv", &rdzv, "--token", "t"];
        Agent::start(tmp.path(), &format!("node{n}"), &args(d, &extra, "exit 0"))
    };
    let mut agents = [node("0", "2"), node("1", "3")];
    for a in &mut agents {
        assert_eq!(a.exit(Duration::from_secs(15)).code(), Some(2), "{}", a.text());
        let text = a.text();
        assert!(
            text.contains("the agents disagree")
                && text.contains("has --nnodes 2")
                && text.contains("has --nnodes 3")
                && text.contains("start every node with the same --nnodes"),
            "{text}"
        );
        assert!(!text.contains("missing numbers"), "{text}");
    }
    // one of a node rank past node 0's --nnodes: node 0 cannot see its settings (its node 1 may still
    // come and form the group), and names them when its wait for node 1 ends
    let rdzv = format!("127.0.0.1:{}", free_port());
    let node = |n: &'static str, nnodes: &'static str| {
        let extra = ["--nnodes", nnodes, "--node-rank", n, "--rdzv", &rdzv, "--token", "t"];
        Agent::start(tmp.path(), &format!("beyond-node{n}"), &args(d, &extra, "exit 0"))
    };
    let [mut node0, mut node2] = [node("0", "2"), node("2", "3")];
    assert_eq!(node2.exit(Duration::from_secs(15)).code(), Some(2), "{}", node2.text());
    assert_eq!(node0.exit(Duration::from_secs(30)).code(), Some(1), "{}", node0.text());
    let text = node0.text();
    let said = "meanwhile an agent with other settings came and left: the agents disagree: node 2 has --nnodes 3";
    assert!(text.contains("node ranks [1] of 2 never arrived") && text.contains(said), "{text}");
}

/// Each rank is told its agent's process id (a rank behind a wrapper watches it: the parent-death
/// signal reaches the wrapper alone).
#[test]
fn ranks_are_told_their_agents_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rank = r#"echo "$INFINITY_AGENT_PID" > "$TEST_DIR/agent.$RANK""#;
    let mut agent = Agent::start(tmp.path(), "agent", &args(d, &["--nproc-per-node", "2"], rank));
    assert_eq!(agent.exit(Duration::from_secs(30)).code(), Some(0), "{}", agent.text());
    for r in 0..2 {
        let told = std::fs::read_to_string(tmp.path().join(format!("agent.{r}"))).unwrap();
        assert_eq!(told.trim(), agent.child.id().to_string(), "rank {r}");
    }
}

/// Node 0's agent whose `--rdzv` host does not resolve where it runs (a SLURM node list this machine's
/// resolver does not know) says so at once, and its wait ends at the rendezvous timeout naming the host.
#[test]
fn a_store_host_name_that_does_not_resolve_on_node_0_is_said_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("no-such-host.invalid:{}", free_port());
    let mut line = vec!["--log-dir", d, "--rdzv-timeout-s", "2"];
    line.extend(node_of_two("0", &rdzv, &["--", "sh", "-c", "exit 0"]));
    let mut agent = Agent::start(tmp.path(), "node0", &line);
    agent.wait_for("--rdzv's host no-such-host.invalid does not resolve here (yet?)", Duration::from_secs(10));
    assert_eq!(agent.exit(Duration::from_secs(30)).code(), Some(1), "{}", agent.text());
    assert!(agent.text().contains("store no-such-host.invalid:"), "{}", agent.text());
}

/// A node lost with its agent (killed with its ranks, or the machine gone) reports nothing: the rank
/// that lost its connection to that node's rank names that node as the root cause, not its own.
#[test]
fn a_node_lost_with_its_agent_is_the_root_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    // node 0's rank fails as a ring rank does when node 1's rank vanishes; node 1's just waits
    let lost = r#"touch "$TEST_DIR/started.$RANK"; if [ "$RANK" = 0 ]; then while [ ! -f "$TEST_DIR/go" ]; do sleep 0.05; done; echo 'error: collective `all_reduce`: rank 1: closed the connection (exited?)'; exit 1; fi; echo $$ > "$TEST_DIR/pid.$RANK"; exec sleep 60"#;
    let mut node0 = Agent::start(tmp.path(), "node0", &args(d, &node_of_two("0", &rdzv, &[]), lost));
    let mut node1 = Agent::start(tmp.path(), "node1", &args(d, &node_of_two("1", &rdzv, &[]), lost));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    node1.signal(libc::SIGKILL);
    node1.exit(Duration::from_secs(5));
    std::fs::write(tmp.path().join("go"), "").unwrap();
    // (the store's host waits up to 30 s for node 1 to read how the run ended)
    assert_eq!(node0.exit(Duration::from_secs(60)).code(), Some(1), "{}", node0.text());
    let text = node0.text();
    assert!(
        text.contains("Root cause: rank 1 (node 1) closed its connections and node 1 reported no failure"),
        "{text}"
    );
    let record = std::fs::read_to_string(tmp.path().join("run/attempt_0/failure-node0.json")).unwrap();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!((record["root_cause_node"].as_u64(), record["root_cause_here"].as_bool()), (Some(1), Some(false)));
    // (node 1's rank, orphaned by its agent's SIGKILL)
    let pid = std::fs::read_to_string(tmp.path().join("pid.1")).ok().and_then(|p| p.trim().parse::<i32>().ok());
    if let Some(pid) = pid.filter(|&p| p > 1) {
        // SAFETY: signalling the rank this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A `--node-rank` given twice while another is given to none: the agents that wait for the missing
/// node say, at their timeout, that a node rank was started a second time.
#[test]
fn a_node_rank_given_twice_is_named_when_another_never_arrives() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let node = |name: &str, n: &'static str| {
        let extra = ["--nnodes", "3", "--node-rank", n, "--rdzv", &rdzv, "--token", "t"];
        Agent::start(tmp.path(), name, &args(d, &extra, "exit 0"))
    };
    let mut first = node("node0", "0");
    std::thread::sleep(Duration::from_millis(300));
    let mut agents = [node("node1", "1"), node("node1-again", "1")];
    assert_eq!(first.exit(Duration::from_secs(30)).code(), Some(1), "{}", first.text());
    let text = first.text();
    assert!(text.contains("node ranks [2] of 3 never arrived"), "{text}");
    assert!(text.contains("node rank 1 (again on ") && text.contains("was started a second time"), "{text}");
    for a in &mut agents {
        a.signal(libc::SIGTERM);
        a.exit(Duration::from_secs(30));
    }
}

/// An agent started with a node rank the running group has (a duplicated srun task) waits for that
/// attempt to end; where the group then ends (its store with it) or fails for good, the agent says its
/// node rank was taken, not only that the store went away or the group failed.
#[test]
fn a_node_rank_given_twice_is_named_when_the_group_ends_first() {
    // the group succeeds (rank exit 0), or fails with no restarts left (rank 0 exits 1)
    for (rank, code, said) in [
        (r#"touch "$TEST_DIR/started.$RANK"; sleep 2"#, 0, "closed the connection"),
        (r#"touch "$TEST_DIR/started.$RANK"; sleep 2; [ "$RANK" = 1 ]"#, 1, "failed with no restarts left"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_str().unwrap();
        let rdzv = format!("127.0.0.1:{}", free_port());
        let node = |name: &str, n: &'static str| {
            Agent::start(tmp.path(), name, &args(d, &node_of_two(n, &rdzv, &["--run-id", "g"]), rank))
        };
        let (mut node0, mut node1) = (node("node0", "0"), node("node1", "1"));
        wait_started(tmp.path(), 2, Duration::from_secs(15));
        let mut again = node("node1-again", "1");
        again.wait_for("already joined attempt 0", Duration::from_secs(10));
        assert_eq!(node0.exit(Duration::from_secs(60)).code(), Some(code), "{}", node0.text());
        assert_eq!(node1.exit(Duration::from_secs(60)).code(), Some(code), "{}", node1.text());
        assert_eq!(again.exit(Duration::from_secs(30)).code(), Some(1), "{}", again.text());
        let text = again.text();
        assert!(text.contains("node rank 1 was taken in attempt 0 while this agent waited"), "{text}");
        assert!(text.contains(said) && !text.contains("failed to fill whole buffer"), "{text}");
    }
}

/// A malformed `INFINITY_RING_PORTS`, or one of too few ports, which every rank of every attempt would
/// refuse alike, is refused before any rank starts: exit 2, not restarts.
#[test]
fn a_malformed_ring_port_range_exits_2_before_the_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let vars = [("INFINITY_RING_PORTS", "45010-45000".to_string())];
    let extra = ["--nproc-per-node", "2", "--max-restarts", "2"];
    let mut agent = Agent::start_with(tmp.path(), "ports", &args(d, &extra, FRAGILE_RANK), &vars);
    assert_eq!(agent.exit(Duration::from_secs(15)).code(), Some(2), "{}", agent.text());
    let text = agent.text();
    assert!(
        text.contains("INFINITY_RING_PORTS=\"45010-45000\": expected a port range") && !text.contains("restart"),
        "{text}"
    );
    // and one of fewer ports than the node's ranks
    let vars = [("INFINITY_RING_PORTS", "45010".to_string())];
    let mut agent = Agent::start_with(tmp.path(), "few-ports", &args(d, &extra, FRAGILE_RANK), &vars);
    assert_eq!(agent.exit(Duration::from_secs(15)).code(), Some(2), "{}", agent.text());
    let text = agent.text();
    assert!(text.contains("INFINITY_RING_PORTS=45010: 1 port for 2 ranks on this node"), "{text}");
}

/// A `--rdzv` host a one-node group's store cannot bind to is named as `--rdzv`'s (the resolver's
/// words alone named neither).
#[test]
fn an_rdzv_host_that_does_not_resolve_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let extra = ["--rdzv", "256.0.0.1:29400"];
    let mut agent = Agent::start(tmp.path(), "rdzv", &args(d, &extra, FRAGILE_RANK));
    // (a resolver that does not answer takes its timeouts to say so)
    assert_ne!(agent.exit(Duration::from_secs(120)).code(), Some(0), "{}", agent.text());
    let text = agent.text();
    assert!(text.contains("--rdzv host 256.0.0.1: the store's address does not resolve"), "{text}");
}

/// Node rank 0 started on another machine than `--rdzv`'s host (swapped `--node-rank` values) is
/// warned of at once: it hosts the store here, where no other agent looks for it.
#[test]
fn node_rank_0_away_from_the_rdzv_host_is_warned_of() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    // (TEST-NET-1: an address of no machine here)
    let rdzv = format!("192.0.2.1:{}", free_port());
    let mut agent = Agent::start(tmp.path(), "away", &args(d, &node_of_two("0", &rdzv, &[]), "exit 0"));
    let warning = "this agent (--node-rank 0) hosts the store, on this machine, but --rdzv's host 192.0.2.1 is not \
                   one of its addresses";
    let t0 = Instant::now();
    while !agent.text().contains(warning) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.signal(libc::SIGTERM);
    agent.exit(Duration::from_secs(15));
    assert!(agent.text().contains(warning), "{}", agent.text());
}

/// An agent of a fixed group (`--nnodes 2`) pointed at a running elastic group's store is refused at
/// once (exit 2, naming both settings) instead of waiting out its rendezvous timeout; the elastic group
/// goes on without regrouping.
#[test]
fn a_fixed_groups_agent_at_an_elastic_groups_store_exits_2_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let elastic = ["--nnodes", "1:2", "--rdzv", &rdzv, "--token", "t", "--rdzv-last-call-s", "1"];
    let mut group = Agent::start(tmp.path(), "elastic", &args(d, &elastic, PATIENT_RANK));
    wait_started(tmp.path(), 1, Duration::from_secs(15));
    let t0 = Instant::now();
    let mut fixed = Agent::start(tmp.path(), "fixed", &args(d, &node_of_two("1", &rdzv, &[]), "exit 0"));
    assert_eq!(fixed.exit(Duration::from_secs(14)).code(), Some(2), "{}", fixed.text());
    assert!(t0.elapsed() < Duration::from_secs(10), "refused after {:?}, not at once", t0.elapsed());
    let text = fixed.text();
    assert!(text.contains("the store serves an elastic group (--nnodes 1:2 --nproc-per-node 1"), "{text}");
    assert!(text.contains("this agent has --nnodes 2 --nproc-per-node 1"), "{text}");
    group.signal(libc::SIGTERM);
    group.exit(Duration::from_secs(15));
    assert!(!group.text().contains("round 1"), "the elastic group regrouped:\n{}", group.text());
}

/// Whether `pid` is a living process (a zombie is not: PID 1 in a container may never reap one).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// The pids that each of `n` ranks wrote to `child.RANK` (the child its wrapper started); waits (up to
/// 10 s) until none is alive any more, and says which one is.
fn assert_children_gone(dir: &Path, n: usize) {
    let pids: Vec<i32> = (0..n)
        .map(|r| std::fs::read_to_string(dir.join(format!("child.{r}"))).unwrap().trim().parse().unwrap())
        .collect();
    let t0 = Instant::now();
    while let Some(p) = pids.iter().find(|&&p| alive(p)) {
        if t0.elapsed() > Duration::from_secs(10) {
            // SAFETY: killing the orphan this test made, so it does not outlive the test.
            for &p in &pids {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            panic!("process {p}, a rank's child, outlived the agent");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ranks behind a wrapper (`sh -c`) that ignores SIGTERM, its child too: the SIGKILL after the grace
/// goes to each rank's process group, so no child outlives the agent holding the ranks' pipes, and
/// the agent exits soon after the grace (it took 20 s more, waiting on pipes one by one; the bound
/// leaves a loaded machine room).
#[test]
fn a_wrappers_children_go_with_their_rank_and_the_agent_exits_after_the_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rank = r#"trap "" TERM; sleep 100 & echo $! > "$TEST_DIR/child.$RANK"; touch "$TEST_DIR/started.$RANK"; wait"#;
    let args = ["--log-dir", d, "--grace-s", "1", "--nproc-per-node", "2", "--", "sh", "-c", rank];
    let mut agent = Agent::start(tmp.path(), "wrapper", &args);
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    let t0 = Instant::now();
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.exit(Duration::from_secs(30)).code(), Some(143), "{}", agent.text());
    assert!(t0.elapsed() < Duration::from_secs(15), "exited {:?} after the signal:\n{}", t0.elapsed(), agent.text());
    assert!(agent.text().contains("SIGKILL to its process group"), "{}", agent.text());
    // (the rank itself did not exit: what it was writing is lost, said)
    assert!(agent.text().contains("a checkpoint it may have been writing is lost"), "{}", agent.text());
    assert_children_gone(tmp.path(), 2);
}

/// A rank that exits 3 at once, leaving a child that holds its pipes: the report comes at once, with
/// the rank's own run time (not the agent's wait for its output), says it printed nothing, and no
/// child of any rank outlives the agent (it waited 60 s for the child; the bounds leave a loaded
/// machine room).
#[test]
fn a_failed_ranks_report_comes_at_once_with_its_own_run_time() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rank = r#"sleep 60 & echo $! > "$TEST_DIR/child.$RANK"; touch "$TEST_DIR/started.$RANK"; [ "$RANK" = 1 ] && exit 3; wait"#;
    let args =
        ["--log-dir", d, "--grace-s", "5", "--run-id", "orphans", "--nproc-per-node", "2", "--", "sh", "-c", rank];
    let t0 = Instant::now();
    let mut agent = Agent::start(tmp.path(), "orphans", &args);
    assert_eq!(agent.exit(Duration::from_secs(40)).code(), Some(1), "{}", agent.text());
    assert!(t0.elapsed() < Duration::from_secs(15), "exited after {:?}:\n{}", t0.elapsed(), agent.text());
    let text = agent.text();
    assert!(text.contains("exited with exit code 3 after ") && text.contains("(it printed nothing)"), "{text}");
    let rec = std::fs::read_to_string(tmp.path().join("orphans/attempt_0/failure-node0.json")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(&rec).unwrap();
    assert!(rec["rank"]["seconds"].as_f64().unwrap() < 2.0, "{rec}");
    assert_eq!(rec["host"].as_str(), infinity_launcher::env::hostname().as_deref(), "the machine to look at: {rec}");
    assert_children_gone(tmp.path(), 2);
}

/// With INFINITY_LOG_TIME=1 every line of the agent's console starts with the UTC time: its own, and its
/// ranks' as it forwards them and writes them into their logs; the ranks themselves print none (no
/// second time on a line).
#[test]
fn log_time_puts_the_time_on_every_console_and_rank_log_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rank = r#"echo "rank says ${INFINITY_LOG_TIME:-nothing}" >&2; exit 3"#;
    let args = ["--log-dir", d, "--run-id", "timed", "--", "sh", "-c", rank];
    let mut agent = Agent::start_with(tmp.path(), "timed", &args, &[("INFINITY_LOG_TIME", "1".into())]);
    assert_eq!(agent.exit(Duration::from_secs(40)).code(), Some(1), "{}", agent.text());
    let text = agent.text();
    // `2026-12-07T02:10:03.123Z ` then the line
    let timed = |l: &str| {
        let t = l.as_bytes();
        let shape = "dddd-dd-ddTdd:dd:dd.dddZ ".bytes().enumerate();
        t.len() >= 25 && shape.into_iter().all(|(i, c)| if c == b'd' { t[i].is_ascii_digit() } else { t[i] == c })
    };
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.ends_with("[rank 0] rank says nothing")), "{text}");
    assert!(lines.iter().any(|l| l.contains(" [launch] attempt 0 failed. Root cause: rank 0 ")), "{text}");
    assert!(lines.len() > 2 && lines.iter().all(|l| timed(l)), "{text}");
    let log = std::fs::read_to_string(tmp.path().join("timed/attempt_0/rank_0.log")).unwrap();
    assert!(log.lines().any(|l| l.ends_with("rank says nothing")) && log.lines().all(timed), "{log}");
}

/// A rank killed from outside (SIGKILL: the out-of-memory killer's signal), signalled by something
/// else on its host (SIGTERM) or crashed (SIGSEGV) is reported so: the agent sent no signal.
#[test]
fn a_rank_signalled_from_outside_is_said_to_be() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    for (sig, said) in [
        ("KILL", "signal 9 (SIGKILL) after "),
        ("TERM", "signal 15 (SIGTERM) after "),
        ("SEGV", "signal 11 (SIGSEGV) after "),
        ("PIPE", "signal 13 (SIGPIPE) after "),
    ] {
        let rank = format!("kill -{sig} $$");
        let run_id = format!("sig-{sig}");
        let args = ["--log-dir", d, "--run-id", &run_id, "--", "sh", "-c", &rank];
        let mut agent = Agent::start(tmp.path(), &run_id, &args);
        assert_eq!(agent.exit(Duration::from_secs(40)).code(), Some(1), "{}", agent.text());
        let text = agent.text();
        let report = &text[text.find(said).unwrap_or_else(|| panic!("{sig}: {text}"))..];
        let origin = match sig {
            "KILL" => " s (not sent by this agent: the kernel's out-of-memory killer? `dmesg` on its host says",
            "TERM" => " s (not sent by this agent: something else on its host signalled the rank)",
            "PIPE" => " s (it wrote to a pipe closed at the other end)",
            _ => " s (it crashed)",
        };
        assert!(report.lines().next().unwrap().contains(origin), "{sig}: {text}");
    }
}

/// The CPUs this process may use and the physical cores they make (a core as its threads' list), from
/// /proc/self/status and sysfs.
fn allowed_cpus_and_cores() -> (Vec<usize>, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap();
    let cpus = cpu_list(list);
    let topo = |c: usize, f: &str| std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{c}/topology/{f}")).ok();
    let core =
        |c: usize| topo(c, "core_cpus_list").or_else(|| topo(c, "thread_siblings_list")).unwrap_or(c.to_string());
    let cores: std::collections::BTreeSet<String> = cpus.iter().map(|&c| core(c).trim().to_string()).collect();
    (cpus, cores.len())
}

fn cpu_list(text: &str) -> Vec<usize> {
    let range = |p: &str| -> Vec<usize> {
        let (a, b) = p.split_once('-').unwrap_or((p, p));
        (a.parse().unwrap()..=b.parse().unwrap()).collect()
    };
    text.trim().split(',').filter(|p| !p.is_empty()).flat_map(range).collect()
}

/// `--numa-binding exclusive`: the two ranks (no GPU: spread over the NUMA nodes) get disjoint shares
/// of the agent's CPUs, set before their command runs (as /proc says), and as many rayon threads; a
/// machine with one core refuses it, naming the node.
#[test]
fn numa_binding_gives_each_rank_cpus_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rank = r#"grep Cpus_allowed_list /proc/self/status > "$TEST_DIR/cpus.$RANK"; echo "$RAYON_NUM_THREADS" > "$TEST_DIR/threads.$RANK""#;
    let mut agent =
        Agent::start(tmp.path(), "numa", &args(d, &["--nproc-per-node", "2", "--numa-binding", "exclusive"], rank));
    let status = agent.exit(Duration::from_secs(30));
    let (allowed, cores) = allowed_cpus_and_cores();
    if cores < 2 {
        assert_eq!(status.code(), Some(1), "{}", agent.text());
        assert!(agent.text().contains("--numa-binding exclusive: NUMA node"), "{}", agent.text());
        eprintln!("one physical core here: checked the refusal only");
        return;
    }
    assert_eq!(status.code(), Some(0), "{}", agent.text());
    let read = |f: &str| std::fs::read_to_string(tmp.path().join(f)).unwrap();
    let cpus: Vec<Vec<usize>> =
        (0..2).map(|r| cpu_list(read(&format!("cpus.{r}")).split_once(':').unwrap().1)).collect();
    for (r, c) in cpus.iter().enumerate() {
        assert!(!c.is_empty() && c.iter().all(|x| allowed.contains(x)), "rank {r}: {c:?} of {allowed:?}");
        assert_eq!(read(&format!("threads.{r}")).trim(), c.len().to_string(), "rank {r}'s rayon threads");
        let line = format!("[launch] local rank {r}: CPUs ");
        assert!(agent.text().contains(&line), "{}", agent.text());
    }
    assert!(cpus[0].iter().all(|x| !cpus[1].contains(x)), "shared CPUs: {cpus:?}");
}

/// Each rank leads its own process group, so a terminal's Ctrl-C no longer reaches it directly: the
/// agent forwards SIGINT, SIGUSR1 and SIGUSR2 (submitit's preemption signal; as SIGTERM and SIGHUP
/// above) to the group, the wrapper's trap included.
#[test]
fn sigint_and_sigusr_reach_ranks_in_their_own_process_groups() {
    for (sig, name) in [(libc::SIGINT, "INT"), (libc::SIGUSR1, "USR1"), (libc::SIGUSR2, "USR2")] {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_str().unwrap();
        let rank = format!(
            r#"trap 'touch "$TEST_DIR/got.$RANK"; exit 0' {name}; touch "$TEST_DIR/started.$RANK"; while :; do sleep 0.05; done"#
        );
        let mut agent = Agent::start(tmp.path(), name, &args(d, &["--nproc-per-node", "2"], &rank));
        wait_started(tmp.path(), 2, Duration::from_secs(15));
        agent.signal(sig);
        assert_eq!(agent.exit(Duration::from_secs(15)).code(), Some(0), "{}", agent.text());
        assert!(tmp.path().join("got.0").exists() && tmp.path().join("got.1").exists(), "{}", agent.text());
    }
}

/// A signal to one node's agent stops the group; the other node says which node was signalled and
/// with what, not only that its ranks stopped.
#[test]
fn the_other_nodes_say_which_node_was_signalled() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let mut node0 = Agent::start(tmp.path(), "node0", &args(d, &node_of_two("0", &rdzv, &[]), PATIENT_RANK));
    let mut node1 = Agent::start(tmp.path(), "node1", &args(d, &node_of_two("1", &rdzv, &[]), PATIENT_RANK));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    node1.signal(libc::SIGTERM);
    assert_eq!(node1.exit(Duration::from_secs(15)).code(), Some(0), "{}", node1.text());
    assert_eq!(node0.exit(Duration::from_secs(15)).code(), Some(0), "{}", node0.text());
    assert!(node0.text().contains("[launch] node 1 (SIGTERM) was signalled"), "{}", node0.text());
}

/// A signal to one node fails the other node's ranks (their peer went): the group stops, as the
/// signalled node does, with the same exit code (whether the failure or the signal reached node 0's
/// agent first), rather than restarting into a meeting that node never joins (it would wait out the
/// rendezvous timeout and spend a restart).
#[test]
fn a_failure_a_signal_caused_stops_the_group() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    // rank 1 marks its stop; rank 0 fails as soon as it sees that mark (its connection to rank 1 broke),
    // and on a SIGTERM after it (a checkpoint without its peer fails too)
    let rank = r#"trap 'touch "$TEST_DIR/gone.$RANK"; [ -e "$TEST_DIR/gone.1" ] && [ "$RANK" = 0 ] && exit 1; exit 0' TERM; touch "$TEST_DIR/started.$RANK"; while :; do if [ "$RANK" = 0 ] && [ -e "$TEST_DIR/gone.1" ]; then exit 1; fi; sleep 0.05; done"#;
    let restarts = ["--max-restarts", "1"];
    let mut node0 = Agent::start(tmp.path(), "node0", &args(d, &node_of_two("0", &rdzv, &restarts), rank));
    let mut node1 = Agent::start(tmp.path(), "node1", &args(d, &node_of_two("1", &rdzv, &restarts), rank));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    node1.signal(libc::SIGTERM);
    assert_eq!(node1.exit(Duration::from_secs(15)).code(), Some(0), "{}", node1.text());
    let t0 = Instant::now();
    assert_eq!(node0.exit(Duration::from_secs(15)).code(), Some(0), "{}", node0.text());
    assert!(t0.elapsed() < Duration::from_secs(10), "node 0 waited {:?}", t0.elapsed());
    assert!(node0.text().contains("node 1 (SIGTERM) was signalled"), "{}", node0.text());
    assert!(!node0.text().contains("restarting"), "{}", node0.text());
}

/// As above, but the signalled node's rank cannot checkpoint within its grace and is killed (node 1
/// exits 143): node 0's rank fails of it, and node 0 exits as node 1 does, not 0 (`--preempted-exit-code`'s
/// clean stop, which a Kubernetes Job reads as succeeded, though nothing was saved).
#[test]
fn a_failure_after_the_signalled_nodes_ranks_were_killed_exits_as_that_node() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    // rank 1 ignores SIGTERM (a checkpoint that takes too long); rank 0 too, and fails once rank 1 is gone
    let rank = r#"trap '' TERM; echo $$ > "$TEST_DIR/pid.$RANK"; touch "$TEST_DIR/started.$RANK"
        if [ "$RANK" = 0 ]; then
            while [ ! -e "$TEST_DIR/pid.1" ]; do sleep 0.05; done; peer=$(cat "$TEST_DIR/pid.1")
            while kill -0 "$peer" 2>/dev/null; do sleep 0.05; done
            echo "error: collective all_reduce: rank 1: closed the connection"; exit 1
        fi
        while :; do sleep 0.05; done"#;
    let cmd = ["sh", "-c", rank];
    let restarts = ["--max-restarts", "1"];
    let (n0, n1) = (node_of_two("0", &rdzv, &restarts), node_of_two("1", &rdzv, &restarts));
    let mut node0 = Agent::start(tmp.path(), "node0", &agent_args(d, "10", &n0, &cmd));
    let mut node1 = Agent::start(tmp.path(), "node1", &agent_args(d, "1", &n1, &cmd));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    node1.signal(libc::SIGTERM);
    assert_eq!(node1.exit(Duration::from_secs(15)).code(), Some(143), "{}", node1.text());
    assert_eq!(node0.exit(Duration::from_secs(20)).code(), Some(143), "{}", node0.text());
    assert!(node0.text().contains("node 1 (SIGTERM) was signalled"), "{}", node0.text());
    assert!(!node0.text().contains("restarting"), "{}", node0.text());
}

/// A second Ctrl-C (SIGINT while the ranks stop for the first) ends the grace period at once: the
/// ranks, still busy with what the first asked (a checkpoint), are killed, and the agent exits 130.
#[test]
fn a_second_sigint_kills_the_stopping_ranks_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rank =
        r#"trap 'touch "$TEST_DIR/got.$RANK"' INT; touch "$TEST_DIR/started.$RANK"; while :; do sleep 0.05; done"#;
    let mut agent =
        Agent::start(tmp.path(), "twice", &agent_args(d, "60", &["--nproc-per-node", "2"], &["sh", "-c", rank]));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    agent.signal(libc::SIGINT);
    agent.wait_for("forwarding SIGINT", Duration::from_secs(10));
    let t0 = Instant::now();
    while !(tmp.path().join("got.0").exists() && tmp.path().join("got.1").exists()) {
        assert!(t0.elapsed() < Duration::from_secs(10), "the first SIGINT did not reach the ranks");
        std::thread::sleep(Duration::from_millis(20));
    }
    // (a second press: later than one delivered twice, which comes within 0.1 s)
    std::thread::sleep(Duration::from_millis(200));
    agent.signal(libc::SIGINT);
    assert_eq!(agent.exit(Duration::from_secs(20)).code(), Some(128 + libc::SIGINT), "{}", agent.text());
    assert!(agent.text().contains("SIGINT again: SIGKILL to the ranks now"), "{}", agent.text());
    assert!(agent.text().contains("not all of them checkpointed (killed); exiting with 130"), "{}", agent.text());

    // one Ctrl-C delivered twice within 0.1 s (the terminal's and a wrapper's, as `timeout` forwards it)
    // is one: the ranks finish their stop
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rank = r#"trap 'sleep 1; touch "$TEST_DIR/got.$RANK"; exit 0' INT; touch "$TEST_DIR/started.$RANK"; while :; do sleep 0.05; done"#;
    let mut agent = Agent::start(tmp.path(), "once", &agent_args(d, "60", &[], &["sh", "-c", rank]));
    wait_started(tmp.path(), 1, Duration::from_secs(15));
    agent.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(30));
    agent.signal(libc::SIGINT);
    assert_ne!(agent.exit(Duration::from_secs(20)).code(), Some(128 + libc::SIGINT), "{}", agent.text());
    assert!(!agent.text().contains("SIGINT again") && tmp.path().join("got.0").exists(), "{}", agent.text());

    // a SIGINT after a SIGTERM (a scheduler's stop) is no second Ctrl-C: the grace runs out
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rank = r#"trap '' TERM INT; touch "$TEST_DIR/started.$RANK"; while :; do sleep 0.05; done"#;
    let mut agent = Agent::start(tmp.path(), "term", &agent_args(d, "2", &[], &["sh", "-c", rank]));
    wait_started(tmp.path(), 1, Duration::from_secs(15));
    agent.signal(libc::SIGTERM);
    agent.wait_for("forwarding SIGTERM", Duration::from_secs(10));
    agent.signal(libc::SIGINT);
    assert_eq!(agent.exit(Duration::from_secs(20)).code(), Some(143), "{}", agent.text());
    assert!(
        !agent.text().contains("SIGINT again") && agent.text().contains("did not exit within 2 s"),
        "{}",
        agent.text()
    );
}

/// A node whose ranks all succeeded while the group then fails (rank 0 on node 0 exits 1 after 2 s)
/// joins the group's restart and exits with the group's code: it exited 0 at once, and node 0 waited
/// for it in vain ("node ranks [1] never arrived").
#[test]
fn a_node_whose_ranks_finished_joins_the_groups_restart_and_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let rank =
        r#"touch "$TEST_DIR/started.$RANK.$INFINITY_RESTART_COUNT"; if [ "$RANK" = 0 ]; then sleep 2; exit 1; fi"#;
    let node = |n: &'static str| {
        let extra = node_of_two(n, &rdzv, &["--run-id", "g", "--max-restarts", "1"]);
        Agent::start(tmp.path(), &format!("node{n}"), &args(d, &extra, rank))
    };
    let (mut node0, mut node1) = (node("0"), node("1"));
    assert_eq!(node1.exit(Duration::from_secs(30)).code(), Some(1), "{}", node1.text());
    assert_eq!(node0.exit(Duration::from_secs(30)).code(), Some(1), "{}", node0.text());
    let (t0, t1) = (node0.text(), node1.text());
    assert!(t1.contains("restarting the group (restart 1 of 1)"), "{t1}");
    // (the failing node's host, for the console of a node elsewhere)
    let host = infinity_launcher::env::hostname().unwrap();
    assert!(t1.contains(&format!("another node: rank 0 (node 0 on {host}, pid ")), "{t1}");
    assert!(!t0.contains("never arrived"), "{t0}");
    assert!(tmp.path().join("started.1.1").exists(), "node 1's rank did not run attempt 1");
    let rec = std::fs::read_to_string(tmp.path().join("g/attempt_1/failure-node1.json")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(&rec).unwrap();
    assert_eq!((rec["root_cause_node"].as_u64(), rec["root_cause_here"].as_bool()), (Some(0), Some(false)), "{rec}");
    assert_eq!(rec["next"], "stop: no restarts left");
}

/// Not a test of its own: a rank that a test below starts, standing in for a trainer: it waits; on
/// SIGTERM (its agent's death, `PR_SET_PDEATHSIG`), or once another rank marked the attempt
/// `stopped-early` (the trainers' all-reduce of the flag), it marks that, as after a checkpoint, and
/// exits 0.
#[test]
fn rank_process() {
    use std::sync::atomic::{AtomicBool, Ordering};
    if std::env::var_os("LAUNCH_TEST_RANK").is_none() {
        return;
    }
    static TERM: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_term(_: libc::c_int) {
        TERM.store(true, Ordering::SeqCst);
    }
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
    let env = |k: &str| std::env::var(k).unwrap();
    let addr = format!("{}:{}", env("MASTER_ADDR"), env("MASTER_PORT"));
    let mut c = StoreClient::connect(&addr, &env("INFINITY_RDZV_TOKEN"), "rank", Duration::from_secs(5)).unwrap();
    let key = format!("{}/attempt-{}/stopped-early", env("INFINITY_RUN_ID"), env("INFINITY_RESTART_COUNT"));
    std::fs::write(Path::new(&env("TEST_DIR")).join(format!("started.{}", env("RANK"))), "").unwrap();
    loop {
        if TERM.load(Ordering::SeqCst) || c.check(std::slice::from_ref(&key)).unwrap()[0] {
            c.set(&key, b"7").unwrap();
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Node 1's agent killed: its rank checkpoints and stops, and so (told by it) does node 0's. Node 0's
/// report names node 1 as the node lost (it said "an agent or its node was lost"), and its record does
/// not claim the root cause (it had `root_cause_here: true` with `rank: null`).
#[test]
fn a_lost_agent_is_named_in_the_other_nodes_report() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let node = |n: &'static str| {
        let extra = node_of_two(n, &rdzv, &["--run-id", "lost"]);
        let args = agent_args(d, "5", &extra, &test_rank("LAUNCH_TEST_RANK=1", exe, "rank_process"));
        Agent::start(tmp.path(), &format!("node{n}"), &args)
    };
    let (node0, mut node1) = (node("0"), node("1"));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    let pid = node1.child.id();
    let _ = node1.child.kill();
    let _ = node1.child.wait();
    // (about LOST_WAIT and SETTLE, 8 s; the bound is a hang's)
    node0.wait_for("attempt 0 failed", Duration::from_secs(30));
    let text = node0.text();
    // (named with its machine and pid, as an elastic group's numbering by joining order cannot)
    let host = infinity_launcher::env::hostname().unwrap_or_else(|| "host".into());
    let want = format!("the agent of node 1 ({host}, agent pid {pid}) or the node was lost");
    assert!(text.contains(&want), "{want}\n{text}");
    // (the record is written after that line, with the flight records: waited for, whole)
    let record = tmp.path().join("lost/attempt_0/failure-node0.json");
    let t0 = Instant::now();
    let rec: serde_json::Value = loop {
        let read = std::fs::read_to_string(&record).ok().and_then(|t| serde_json::from_str(&t).ok());
        if let Some(rec) = read {
            break rec;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "no {} after the failure line:\n{text}", record.display());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((rec["root_cause_node"].as_u64(), rec["root_cause_here"].as_bool()), (Some(1), Some(false)), "{rec}");
    assert!(rec["rank"].is_null(), "{rec}");
}

/// Node 1's rank exits 0 but leaves a child that ignores SIGTERM, so node 1's agent spends the whole
/// grace (14 s) stopping it after its ranks ended; node 0, whose ranks finished at once, waits for it
/// meanwhile. Node 1's watch counter keeps moving through the grace, so node 0 does not take it for
/// lost after 10 s (which failed a run whose ranks all exited 0): both exit 0.
#[test]
fn a_node_stopping_what_its_ranks_left_is_not_taken_for_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let rank = r#"touch "$TEST_DIR/started.$RANK"
        if [ "$RANK" = 1 ]; then trap "" TERM; sleep 100 >/dev/null 2>&1 & echo $! > "$TEST_DIR/child.1"; fi
        exit 0"#;
    let node = |n: &'static str| {
        let extra = node_of_two(n, &rdzv, &["--run-id", "slow", "--max-restarts", "0"]);
        let args = agent_args(d, "14", &extra, &["sh", "-c", rank]);
        Agent::start(tmp.path(), &format!("node{n}"), &args)
    };
    let (mut node0, mut node1) = (node("0"), node("1"));
    assert_eq!(node1.exit(Duration::from_secs(60)).code(), Some(0), "{}", node1.text());
    assert_eq!(node0.exit(Duration::from_secs(30)).code(), Some(0), "{}", node0.text());
    assert!(node1.text().contains("SIGKILL to its process group"), "{}", node1.text());
    assert!(!node0.text().contains("were lost"), "{}", node0.text());
    let pid: i32 = std::fs::read_to_string(tmp.path().join("child.1")).unwrap().trim().parse().unwrap();
    assert!(!alive(pid), "rank 1's child outlived its agent");
}

/// Not a test of its own: a rank that a test below starts: it ignores SIGTERM, moves itself out of
/// its own process group (into its agent's), marks its start and waits.
#[test]
fn escaping_rank_process() {
    if std::env::var_os("LAUNCH_TEST_ESCAPE").is_none() {
        return;
    }
    // SAFETY: plain syscalls on this process (ignoring a signal, changing its own process group).
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        assert_eq!(libc::setpgid(0, libc::getpgid(libc::getppid())), 0, "setpgid");
    }
    let dir = std::env::var("TEST_DIR").unwrap();
    std::fs::write(Path::new(&dir).join(format!("started.{}", std::env::var("RANK").unwrap())), "").unwrap();
    std::thread::sleep(Duration::from_secs(100));
}

/// A rank that left its process group (its own group empty, recorded gone) and ignores SIGTERM: after
/// the grace the agent kills the rank itself, rather than waiting for it for ever.
#[test]
fn a_rank_outside_its_process_group_is_killed_after_the_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let mut args = vec!["--log-dir", d, "--grace-s", "1", "--"];
    args.extend(test_rank("LAUNCH_TEST_ESCAPE=1", exe, "escaping_rank_process"));
    let mut agent = Agent::start(tmp.path(), "escape", &args);
    wait_started(tmp.path(), 1, Duration::from_secs(15));
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.exit(Duration::from_secs(40)).code(), Some(143), "{}", agent.text());
    assert!(agent.text().contains("outside its process group"), "{}", agent.text());
}

/// The failure record `name` (`failure-node1.json`) of attempt 0 of run `run` under `dir`.
fn failure_record(dir: &Path, run: &str, name: &str) -> serde_json::Value {
    let path = dir.join(run).join("attempt_0").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Node 0's rank exits 2 (a bad config), and node 1's dies of it (exit 1, its connection closed).
/// `slow` names the node whose report comes 1 s late (its rank leaves a child holding its pipes): node
/// 1's, so node 0's report is the root cause, or node 0's, so node 1's exit 1 is, posted before node
/// 0's mark. Either way both nodes stop with exit code 2 and `stop: permanent`, neither restarting.
fn permanent_failure_on_node_0(slow: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let rank = format!(
        r#"touch "$TEST_DIR/started.$RANK.$INFINITY_RESTART_COUNT"
        [ "$NODE_RANK" = {slow} ] && (trap "" TERM; exec sleep 3) &
        if [ "$RANK" = 0 ]; then sleep 1; touch "$TEST_DIR/gone.0"; echo "error: a bad config"; exit 2; fi
        while [ ! -e "$TEST_DIR/gone.0" ]; do sleep 0.02; done
        echo "error: collective broadcast: rank 0: closed the connection"; exit 1"#
    );
    let node = |n: &'static str| {
        let extra = node_of_two(n, &rdzv, &["--run-id", "perm", "--max-restarts", "3"]);
        Agent::start(tmp.path(), &format!("node{n}"), &args(d, &extra, &rank))
    };
    let (mut node0, mut node1) = (node("0"), node("1"));
    for (n, agent) in [&mut node0, &mut node1].into_iter().enumerate() {
        assert_eq!(agent.exit(Duration::from_secs(40)).code(), Some(2), "node {n}:\n{}", agent.text());
        assert!(!agent.text().contains("restarting the group"), "node {n}:\n{}", agent.text());
        let rec = failure_record(tmp.path(), "perm", &format!("failure-node{n}.json"));
        assert_eq!(rec["next"], "stop: permanent", "node {n}: {rec}");
    }
    assert!(!tmp.path().join("started.1.1").exists(), "node 1 restarted its rank");
}

#[test]
fn a_permanent_failure_reported_first_stops_every_node() {
    permanent_failure_on_node_0("1");
}

#[test]
fn a_permanent_failure_reported_second_stops_every_node() {
    permanent_failure_on_node_0("0");
}

/// Node 0's agent (the store's host) SIGKILLed: its rank stops (the kernel's SIGTERM), node 1's dies
/// of the broken connection. Node 1 cannot restart without the store: it says so, exits 1 and records
/// `stop: store host lost`, announcing no restart.
#[test]
fn a_lost_store_host_stops_the_other_nodes_without_a_restart() {
    lost_store_host(false);
}

/// As above, with node 0's pod started again at once: a store answers at the address again, but an
/// empty one, not the group's; node 1 says so and stops as for a lost host (it blamed its own rank and
/// restarted into a dead connection).
#[test]
fn a_store_host_started_again_at_once_is_a_lost_one() {
    lost_store_host(true);
}

fn lost_store_host(started_again: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let rank = r#"trap 'touch "$TEST_DIR/term.$RANK"; exit 0' TERM; touch "$TEST_DIR/started.$RANK"
        if [ "$RANK" = 0 ]; then while :; do sleep 0.05; done; fi
        while [ ! -e "$TEST_DIR/term.0" ]; do sleep 0.02; done
        echo "error: ring: rank 0 closed the connection"; exit 1"#;
    let node = |n: &'static str| {
        let extra = node_of_two(n, &rdzv, &["--run-id", "hostlost", "--max-restarts", "2"]);
        Agent::start(tmp.path(), &format!("node{n}"), &args(d, &extra, rank))
    };
    let (mut node0, mut node1) = (node("0"), node("1"));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    let _ = node0.child.kill();
    let _ = node0.child.wait();
    let again = started_again.then(|| {
        let extra = node_of_two("0", &rdzv, &["--run-id", "hostlost", "--max-restarts", "2"]);
        Agent::start(tmp.path(), "node0-again", &args(d, &extra, rank))
    });
    assert_eq!(node1.exit(Duration::from_secs(30)).code(), Some(1), "{}", node1.text());
    let text = node1.text();
    assert!(!text.contains("restarting the group"), "{text}");
    assert!(text.contains("restart the job on every node"), "{text}");
    if let Some(mut again) = again {
        assert!(text.contains("another store answers at") && text.contains("started again"), "{text}");
        let _ = again.child.kill();
        let _ = again.child.wait();
    }
    let rec = failure_record(tmp.path(), "hostlost", "failure-node1.json");
    assert_eq!(
        (rec["next"].as_str(), rec["root_cause_node"].as_u64()),
        (Some("stop: store host lost"), Some(0)),
        "{rec}"
    );
}

/// Rank 1 hangs (SIGSTOP); rank 0's collective times out waiting for it (exit 86, the error the
/// trainer prints). The root cause is rank 1 on node 1, which stopped answering, on both nodes: it
/// was rank 0 on node 0, the healthy one. Node 1's agent says what rank 1's process was doing, and
/// stops it at once (a stopped process takes its SIGTERM once continued).
#[test]
fn a_hung_rank_is_the_root_cause_not_the_rank_that_timed_out_waiting_for_it() {
    use infinity_launcher::comm::CommError;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let timeout = CommError::Timeout { op: "all_reduce", peer: 1, secs: 1.0 };
    // rank 0 writes its flight record where the agent says, as the communicator does
    let record = r#"{"rank": 0, "world": 2, "reason": "timed out", "unix_time": 0, "entries": [
        {"seq": 7, "op": "all_reduce", "values": 16, "state": "failed", "started_s": 3.0, "seconds": 1.0}]}"#;
    let rank = format!(
        r#"touch "$TEST_DIR/started.$RANK"
        [ "$RANK" = 1 ] && kill -STOP $$
        while [ ! -e "$TEST_DIR/started.1" ]; do sleep 0.02; done; sleep 1
        echo '{record}' > "$INFINITY_FLIGHT_DIR/flight-rank0.json"
        echo 'error: {timeout}; aborting (exit code 86)'; exit 86"#
    );
    let node = |n: &'static str| {
        let extra = node_of_two(n, &rdzv, &["--run-id", "hung"]);
        Agent::start(tmp.path(), &format!("node{n}"), &agent_args(d, "1", &extra, &["sh", "-c", &rank]))
    };
    let (mut node0, mut node1) = (node("0"), node("1"));
    for (n, agent) in [&mut node0, &mut node1].into_iter().enumerate() {
        assert_eq!(agent.exit(Duration::from_secs(30)).code(), Some(1), "node {n}:\n{}", agent.text());
        let text = agent.text();
        assert!(text.contains("rank 1 (node 1) stopped answering (rank 0 timed out waiting for it)"), "{text}");
        let rec = failure_record(tmp.path(), "hung", &format!("failure-node{n}.json"));
        assert_eq!(rec["root_cause_node"].as_u64(), Some(1), "node {n}: {rec}");
        assert_eq!(rec["root_cause_here"].as_bool(), Some(n == 1), "node {n}: {rec}");
        // the log folder is shared here: both nodes read rank 0's record
        let want = "collective #7 (all_reduce of 16 values): waited in by rank 0 (failed, 1 s)";
        assert!(text.contains(&format!("[launch] flight records: {want}")), "node {n}:\n{text}");
        assert!(rec["collectives"][0].as_str().is_some_and(|c| c.starts_with(want)), "node {n}: {rec}");
        assert!(rec["collectives"][1].as_str().is_some_and(|c| c.starts_with("no flight record from rank 1: ")));
    }
    // node 1's agent, asked by the other node's failure, looked at rank 1's process: stopped
    let (text, rec) = (node1.text(), failure_record(tmp.path(), "hung", "failure-node1.json"));
    let want = "wrote no flight record when asked: its process is stopped (SIGSTOP, Ctrl-Z or a debugger holds it";
    assert!(text.contains("[launch] flight records: rank 1 (pid ") && text.contains(want), "{text}");
    assert!(rec["collectives"][2].as_str().is_some_and(|c| c.contains(want)), "{rec}");
    // the stopped rank is continued with its SIGTERM: it does not hold the stop for the grace period
    assert!(!text.contains("rank 1 did not exit within"), "{text}");
}

/// Node 1 frozen (its ranks 2 and 3 stopped): rank 0 times out waiting for rank 3 and rank 1, after it
/// in the ring, waiting for rank 0, its report first. The root cause is the frozen node's rank that rank
/// 0 named, not rank 0, which the first report names and which only waited.
#[test]
fn a_frozen_node_is_blamed_rather_than_the_rank_here_that_waited_for_it() {
    use infinity_launcher::comm::CommError;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let [on_0, on_3] = [0, 3].map(|peer| CommError::Timeout { op: "all_reduce", peer, secs: 1.0 });
    let rank = format!(
        r#"touch "$TEST_DIR/started.$RANK"
        [ "$RANK" -ge 2 ] && kill -STOP $$
        while [ ! -e "$TEST_DIR/started.2" ] || [ ! -e "$TEST_DIR/started.3" ]; do sleep 0.02; done; sleep 1
        [ "$RANK" = 1 ] && {{ echo 'error: {on_0}; aborting (exit code 86)'; exit 86; }}
        sleep 0.5; echo 'error: {on_3}; aborting (exit code 86)'; exit 86"#
    );
    let node = |n: &'static str| {
        let extra = node_of_two(n, &rdzv, &["--run-id", "frozen", "--nproc-per-node", "2"]);
        Agent::start(tmp.path(), &format!("node{n}"), &agent_args(d, "1", &extra, &["sh", "-c", &rank]))
    };
    let (mut node0, mut node1) = (node("0"), node("1"));
    assert_eq!(node0.exit(Duration::from_secs(40)).code(), Some(1), "{}", node0.text());
    let text = node0.text();
    let want = "rank 3 (node 1), or one it waits for, stopped answering (rank 1 timed out waiting for rank 0, \
                which waited for it)";
    assert!(text.contains(want), "{text}");
    let rec = failure_record(tmp.path(), "frozen", "failure-node0.json");
    assert_eq!((rec["root_cause_node"].as_u64(), rec["root_cause_here"].as_bool()), (Some(1), Some(false)), "{rec}");
    node1.exit(Duration::from_secs(40));
}

/// The same run id launched again (a requeued job) fails the same attempt: the first session's
/// failure record stays, the second is written beside it.
#[test]
fn a_relaunch_with_the_same_run_id_keeps_the_earlier_failure_record() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let mut first_record = String::new();
    for session in ["first", "second"] {
        let rank = format!("echo 'the {session} session'; exit 3");
        let mut agent = Agent::start(tmp.path(), session, &args(d, &["--run-id", "again"], &rank));
        assert_eq!(agent.exit(Duration::from_secs(30)).code(), Some(1), "{}", agent.text());
        if session == "first" {
            first_record = std::fs::read_to_string(tmp.path().join("again/attempt_0/failure-node0.json")).unwrap();
        }
    }
    let first = failure_record(tmp.path(), "again", "failure-node0.json");
    assert!(first["rank"]["last_lines"][0].as_str().unwrap().contains("the first session"), "{first}");
    assert_eq!(std::fs::read_to_string(tmp.path().join("again/attempt_0/failure-node0.json")).unwrap(), first_record);
    let second = failure_record(tmp.path(), "again", "failure-node0.2.json");
    assert!(second["rank"]["last_lines"][0].as_str().unwrap().contains("the second session"), "{second}");
}

/// [`Agent::start`] with rendezvous waits reporting every second (`INFINITY_RDZV_PROGRESS_S`, 30 s
/// otherwise).
fn reporting_agent(dir: &Path, name: &str, args: &[&str]) -> Agent {
    let log = dir.join(format!("{name}.log"));
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["agent_process", "--exact", "--nocapture", "--test-threads", "1"])
        .env("LAUNCH_TEST_ARGS", serde_json::to_string(&args).unwrap())
        .env("TEST_DIR", dir)
        .env("INFINITY_RDZV_PROGRESS_S", "1")
        .env_remove("SLURM_JOB_ID")
        .env_remove("SLURM_STEP_ID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Agent { child, log }
}

/// Node `n` of `nnodes` with `token` and `run_id`, an 8 s rendezvous timeout, reporting every second.
fn refusable_node(dir: &Path, rdzv: &str, nnodes: &str, n: &str, token: &str, run_id: &str) -> Agent {
    let d = dir.to_str().unwrap();
    let run = ["--log-dir", d, "--rdzv-timeout-s", "8", "--token", token, "--run-id", run_id];
    let group = ["--nnodes", nnodes, "--node-rank", n, "--rdzv", rdzv];
    let args: Vec<&str> = run.into_iter().chain(group).chain(["--", "sh", "-c", "exit 0"]).collect();
    reporting_agent(dir, &format!("node{n}"), &args)
}

/// Two SLURM jobs whose ids are equal mod 10000 derive the same store port: the second job's node 1
/// reaches the first job's store and is refused, which is not its command line's fault: it exits 1 (a
/// failure worth a retry), not 2, saying the port is another job's.
#[test]
fn a_derived_port_that_another_jobs_store_holds_is_worth_a_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let k = (0..10000u32)
        .map(|i| ((i * 7919 + std::process::id() % 10000) % 10000) as u16)
        .find(|k| std::net::TcpListener::bind(("0.0.0.0", 30000 + k)).is_ok())
        .unwrap();
    let slurm = |job: u32, node: &str| {
        [("SLURM_JOB_ID", job.to_string()), ("SLURM_STEP_ID", "0".into()), ("SLURM_NNODES", "2".into())]
            .into_iter()
            .chain([("SLURM_NODEID", node.to_string()), ("SLURM_STEP_NODELIST", "localhost".into())])
            .chain([("INFINITY_RDZV_TOKEN", "t".to_string())])
            .collect::<Vec<_>>()
    };
    let args = agent_args(d, "5", &[], &["sh", "-c", "exit 0"]);
    let first = Agent::start_with(tmp.path(), "job-a", &args, &slurm(10000 + k as u32, "0"));
    first.wait_for("[launch] node 0/2", Duration::from_secs(15));
    let mut second = Agent::start_with(tmp.path(), "job-b", &args, &slurm(20000 + k as u32, "1"));
    assert_eq!(second.exit(Duration::from_secs(15)).code(), Some(1), "{}", second.text());
    let text = second.text();
    assert!(text.contains(&format!("it serves run \"{}\", not \"{}\"", 10000 + k as u32, 20000 + k as u32)), "{text}");
    assert!(
        text.contains(&format!(
            "the port {} was derived from SLURM_JOB_ID: unless the nodes disagree on the token or run id, another \
             job's store holds it",
            30000 + k
        )),
        "{text}"
    );
    // a third job's node 0, whose store cannot bind the port the first job's holds: named as such
    let mut third = Agent::start_with(tmp.path(), "job-c", &args, &slurm(30000 + k as u32, "0"));
    assert_eq!(third.exit(Duration::from_secs(15)).code(), Some(1), "{}", third.text());
    let said = "was derived from SLURM_JOB_ID (30000 + (the job id + 6173 × the step id) mod 10000), and another \
                process on this node holds it";
    assert!(third.text().contains(said), "{}", third.text());
}

/// Node 1 with a wrong token, node 2 with another --run-id: each says plainly what differs (node 2
/// said "no reply: failed to fill whole buffer"), both exiting 2 as for a bad command line. Node 0
/// says while it waits, and in its timeout, whom the store refused and why, instead of "never arrived
/// (start `infinity launch` there)" alone.
#[test]
fn agents_refused_for_a_wrong_token_or_run_id_are_named_on_both_sides() {
    let tmp = tempfile::tempdir().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let mut node0 = refusable_node(tmp.path(), &rdzv, "3", "0", "t", "a");
    node0.wait_for("[launch] node 0/3", Duration::from_secs(15));
    let mut node1 = refusable_node(tmp.path(), &rdzv, "3", "1", "u", "a");
    let mut node2 = refusable_node(tmp.path(), &rdzv, "3", "2", "t", "b");
    assert_eq!(node1.exit(Duration::from_secs(15)).code(), Some(2), "{}", node1.text());
    assert!(
        node1.text().contains("refused agent 1: wrong token: INFINITY_RDZV_TOKEN (or --token) differs"),
        "{}",
        node1.text()
    );
    assert_eq!(node2.exit(Duration::from_secs(15)).code(), Some(2), "{}", node2.text());
    let text = node2.text();
    assert!(
        text.contains("refused agent 2: it serves run \"a\", not \"b\": start every node with the same --run-id"),
        "{text}"
    );
    assert!(!text.contains("failed to fill whole buffer"), "{text}");

    assert_eq!(node0.exit(Duration::from_secs(15)).code(), Some(1), "{}", node0.text());
    let text = node0.text();
    let wrong_token = "wrong token (its INFINITY_RDZV_TOKEN or --token differs)";
    let other_run = "it asked for run id \"b\", this group is \"a\" (its --run-id differs)";
    // (the store lists its refusals oldest first: nodes 1 and 2 start together, so either may lead)
    let report = text.lines().find(|l| {
        l.starts_with("[launch] waiting for node ranks [1, 2] of 3 (")
            && l.contains(other_run)
            && l.contains(wrong_token)
    });
    let report = report.unwrap_or_else(|| panic!("no report naming both refusals:\n{text}"));
    assert!(report.contains(" s until --rdzv-timeout-s); the store refused agent "), "{report}");
    let names = |agent: &str, why: &str| report.split("; ").any(|s| s.contains(agent) && s.contains(why));
    assert!(names("agent 1 from 127.0.0.1 (", wrong_token) && names("agent 2 from 127.0.0.1 (", other_run), "{report}");
    let error = text.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error:\n{text}"));
    assert!(error.contains("node ranks [1, 2] of 3 never arrived within 8 s; the store refused "), "{error}");
    assert!(error.contains("agent 1 from 127.0.0.1 (") && error.contains(wrong_token), "{error}");
    assert!(error.contains("agent 2 from 127.0.0.1 (") && error.contains(other_run), "{error}");
    assert!(!error.contains("start `infinity launch` there"), "{error}");
}

/// An agent waiting for a node that never comes says so about every 30 s (here every second), at the
/// first meeting and at a restart's (node 1's agent killed): it was silent for all of --rdzv-timeout-s.
#[test]
fn agents_waiting_for_a_node_say_so_as_they_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    // the first meeting: node 0 alone
    let mut alone = refusable_node(tmp.path(), &rdzv, "2", "0", "t", "alone");
    assert_eq!(alone.exit(Duration::from_secs(20)).code(), Some(1), "{}", alone.text());
    let text = alone.text();
    let report = text.lines().find(|l| l.starts_with("[launch] waiting for node ranks [1] of 2 ("));
    assert!(report.is_some_and(|l| l.contains(" s so far, ") && l.ends_with(" s until --rdzv-timeout-s)")), "{text}");
    assert!(text.contains("never arrived within 8 s (start `infinity launch` there)"), "{text}");

    // a restart's meeting: node 1's agent killed while its rank runs
    let rdzv = format!("127.0.0.1:{}", free_port());
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let node = |n: &'static str| {
        let mut args = vec!["--log-dir", d, "--grace-s", "5", "--rdzv-timeout-s", "8"];
        args.extend(node_of_two(n, &rdzv, &["--run-id", "again", "--max-restarts", "1"]));
        args.push("--");
        args.extend(test_rank("LAUNCH_TEST_RANK=1", exe, "rank_process"));
        reporting_agent(tmp.path(), &format!("node{n}"), &args)
    };
    let (mut node0, mut node1) = (node("0"), node("1"));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    let _ = node1.child.kill();
    let _ = node1.child.wait();
    node0.wait_for("restarting the group", Duration::from_secs(30));
    assert_eq!(node0.exit(Duration::from_secs(30)).code(), Some(1), "{}", node0.text());
    let text = node0.text();
    let restart = &text[text.find("restarting the group").unwrap()..];
    assert!(restart.contains("\n[launch] waiting for node ranks [1] of 2 ("), "{text}");
    assert!(
        restart.contains("rendezvous again/attempt-1/agents: node ranks [1] of 2 never arrived within 8 s"),
        "{text}"
    );
    // the failed attempt's record says `restart`; the restart's own, that it never met
    assert_eq!(failure_record(tmp.path(), "again", "failure-node0.json")["next"], "restart");
    let never = tmp.path().join("again/attempt_1/failure-node0.json");
    let never: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&never).unwrap()).unwrap();
    assert_eq!(never["next"], "stop: the restart's rendezvous failed", "{never}");
    let cause = never["root_cause"].as_str().unwrap();
    assert!(cause.starts_with("the restart's rendezvous failed: ") && cause.contains("never arrived"), "{never}");
    // (the node that never came is named as the record's cause)
    assert_eq!(never["root_cause_node"], 1, "{never}");

    // an agent waiting for the store's host (node 0) to start
    let mut node1 = refusable_node(tmp.path(), &format!("127.0.0.1:{}", free_port()), "2", "1", "t", "early");
    assert_eq!(node1.exit(Duration::from_secs(20)).code(), Some(1), "{}", node1.text());
    assert!(node1.text().contains("[store] agent 1: no store at 127.0.0.1:"), "{}", node1.text());
}

/// An agent in a PyTorchJob pod (`nprocPerNode` set) takes torchrun's PET_* variables as its flags, and
/// its first line says which.
#[test]
fn an_agent_names_the_torchrun_variables_it_takes() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let args = ["--log-dir", logs.to_str().unwrap(), "--", "true"];
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["agent_process", "--exact", "--nocapture", "--test-threads", "1"])
        .env("LAUNCH_TEST_ARGS", serde_json::to_string(&args).unwrap())
        .envs([("PET_NNODES", "1"), ("PET_NPROC_PER_NODE", "1"), ("PET_RDZV_ID", "pod-run")])
        .env_remove("SLURM_JOB_ID")
        .env_remove("SLURM_STEP_ID")
        .env_remove("WORLD_SIZE")
        .env_remove("RANK")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let mut lines = text.lines().filter(|l| l.starts_with("[launch]"));
    assert_eq!(
        lines.next(),
        Some(
            "[launch] from torchrun's variables: --nnodes 1 (PET_NNODES), --nproc-per-node 1 (PET_NPROC_PER_NODE), \
             --run-id pod-run (PET_RDZV_ID)"
        ),
        "{text}"
    );
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("[launch] node 0/1: 1 local rank of 1,") && l.contains("run pod-run")),
        "{text}"
    );
    // one rank in the singular
    assert!(lines.any(|l| l == "[launch] the local rank finished"), "{text}");
}
