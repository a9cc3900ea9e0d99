//! `infinity launch` agents as processes: signals, a frozen store, a node replaced, agents that
//! disagree. Each agent is this test binary run again with `agent_process` selected and its command
//! line in `LAUNCH_TEST_ARGS` (the `infinity` binary lives in another crate); the ranks are `sh`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use infinity_launcher::agent::{launch, LaunchArgs};

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
        let log = dir.join(format!("{name}.log"));
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["agent_process", "--exact", "--nocapture", "--test-threads", "1"])
            .env("LAUNCH_TEST_ARGS", serde_json::to_string(&args).unwrap())
            .env("TEST_DIR", dir)
            .env_remove("SLURM_JOB_ID")
            .env_remove("SLURM_STEP_ID")
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

fn args<'a>(dir: &'a str, extra: &[&'a str], rank: &'a str) -> Vec<&'a str> {
    let mut v = vec!["--log-dir", dir, "--grace-s", "5", "--rdzv-timeout-s", "15"];
    v.extend_from_slice(extra);
    v.extend_from_slice(&["--", "sh", "-c", rank]);
    v
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

    // SIGHUP is logged as such and forwarded as SIGTERM; ranks that checkpoint and exit 0 make it 0
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let mut agent = Agent::start(tmp.path(), "hup", &args(d, &["--nproc-per-node", "2"], PATIENT_RANK));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    agent.signal(libc::SIGHUP);
    assert_eq!(agent.exit(Duration::from_secs(15)).code(), Some(0), "{}", agent.text());
    assert!(agent.text().contains("got SIGHUP; forwarding SIGTERM"), "{}", agent.text());
    assert!(tmp.path().join("term.0").exists() && tmp.path().join("term.1").exists());

    // SIGHUP to ranks that die of the forwarded signal: 128 + 1, as before the ranks start
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let mut agent = Agent::start(tmp.path(), "hup-dies", &args(d, &["--nproc-per-node", "2"], FRAGILE_RANK));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    agent.signal(libc::SIGHUP);
    assert_eq!(agent.exit(Duration::from_secs(15)).code(), Some(129), "{}", agent.text());

    // a rank that fails on its own after the signal (exit 3): its code, not a preemption's
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let failing = r#"trap 'exit 3' TERM; touch "$TEST_DIR/started.$RANK"; while :; do sleep 0.05; done"#;
    let mut agent = Agent::start(tmp.path(), "fails", &args(d, &["--nproc-per-node", "2"], failing));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.exit(Duration::from_secs(15)).code(), Some(3), "{}", agent.text());
}

/// Node 0's agent (the store's host) frozen, node 1's agent watching its ranks: `case` "signal" sends
/// node 1's agent SIGTERM, which reaches its ranks at once; "loss" waits for it to find the store lost,
/// after about 10 s.
fn frozen_store(case: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let rdzv = format!("127.0.0.1:{}", free_port());
    let node = |n: &'static str| {
        let extra = ["--nnodes", "2", "--node-rank", n, "--rdzv", &rdzv, "--token", "t", "--run-id", "frozen"];
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
            assert!(t1.elapsed() < Duration::from_secs(3), "the signal was not forwarded:\n{}", node1.text());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(node1.exit(Duration::from_secs(15)).code(), Some(0), "{}", node1.text());
    } else {
        node1.wait_for("stopped answering for 10 s", Duration::from_secs(16));
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
        let extra = ["--nnodes", "2", "--node-rank", n, "--rdzv", &rdzv, "--token", "t", "--max-restarts", "2"];
        Agent::start(tmp.path(), name, &args(d, &extra, rank))
    };
    let (mut node0, mut node1) = (node("0", "node0"), node("1", "node1"));
    wait_started(tmp.path(), 2, Duration::from_secs(15));
    let _ = node1.child.kill();
    let _ = node1.child.wait();
    let mut again = node("1", "node1-again");
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(tmp.path().join("node1-killed"), "").unwrap();
    node0.wait_for("restarting the group from its newest checkpoint (1 of 2)", Duration::from_secs(15));
    assert_eq!(again.exit(Duration::from_secs(15)).code(), Some(0), "{}", again.text());
    assert_eq!(node0.exit(Duration::from_secs(15)).code(), Some(0), "{}", node0.text());
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
            text.contains("the agents disagree") && text.contains("has --nnodes 2") && text.contains("has --nnodes 3"),
            "{text}"
        );
        assert!(!text.contains("missing numbers"), "{text}");
    }
}
