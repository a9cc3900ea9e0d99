//! Two nodes × two ranks on this machine, each node in its own network namespace joined by a veth pair.
//! Cutting node 1's link must make the collectives time out (the watchdog) and node 0's launcher report
//! it and exit, instead of hanging. Needs root and `ip netns`; prints that it was skipped otherwise.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_infinity");

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Two namespaces `a`, `b` with 10.231.0.1 and 10.231.0.2 on a veth pair; removed on drop.
struct Net {
    a: String,
    b: String,
    /// Names this test's interfaces (tests run in parallel in one process).
    tag: String,
}

impl Net {
    fn create(test: char) -> Option<Net> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let tag = format!("{}{test}", std::process::id() % 100_000);
        let net = Net { a: format!("inf{tag}a"), b: format!("inf{tag}b"), tag: tag.clone() };
        let (va, vb) = (format!("v{tag}a"), format!("v{tag}b"));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &net.a],
            vec!["netns", "add", &net.b],
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &va, "netns", &net.a],
            vec!["link", "set", &vb, "netns", &net.b],
            vec!["-n", &net.a, "addr", "add", "10.231.0.1/24", "dev", &va],
            vec!["-n", &net.b, "addr", "add", "10.231.0.2/24", "dev", &vb],
            vec!["-n", &net.a, "link", "set", &va, "up"],
            vec!["-n", &net.b, "link", "set", &vb, "up"],
            vec!["-n", &net.a, "link", "set", "lo", "up"],
            vec!["-n", &net.b, "link", "set", "lo", "up"],
        ];
        for s in steps {
            if !ip(&s) {
                return None; // drop cleans up what exists
            }
        }
        Some(net)
    }

    fn cut_b(&self) {
        assert!(ip(&["-n", &self.b, "link", "set", &format!("v{}b", self.tag), "down"]), "cutting the link failed");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.a]);
        ip(&["netns", "del", &self.b]);
    }
}

fn node(net_ns: &str, node_rank: usize, rdzv: &str, cfg: &Path, run: &Path) -> Child {
    Command::new("ip")
        .args(["netns", "exec", net_ns, BIN, "launch", "--nnodes", "2", "--nproc-per-node", "2"])
        .args(["--node-rank", &node_rank.to_string(), "--rdzv", rdzv, "--token", "netns-test"])
        .args(["--run-id", "netns", "--grace-s", "5", "--rdzv-timeout-s", "30", "--log-dir"])
        .arg(run.join(format!("logs-node{node_rank}")))
        .args(["--", "train"])
        .arg(cfg)
        .arg("--set")
        .arg(format!("run.dir={}", run.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A small dataset and a tiny class model's config in `dir`, training `steps` steps.
fn config(dir: &Path, steps: u64) -> std::path::PathBuf {
    let data = dir.join("data");
    common::small_dataset(&data);
    let cfg = dir.join("train.toml");
    let text = format!(
        "[run]\ndir = \"x\"\nseed = 1\nsteps = {steps}\nlog_every = 100000\n[model]\npreset = \"tiny\"\n\
         conditioning = \"class\"\n[data]\ndir = \"{}\"\nglobal_batch = 16\nmicro_batch = 4\n[optim]\nlr = 1e-3\n\
         [checkpoint]\nevery = 2\nkeep_last = 2\n[dist]\ntimeout_s = 6\nrdzv_timeout_s = 30\n",
        data.display()
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Node 0 reaches its own store at localhost (as a Kubeflow master pod's MASTER_ADDR says): its ranks
/// know only a loopback address for themselves, yet node 1's last rank must connect to rank 0 for the
/// ring. Rank 0 listens on every interface and rank 3 reaches it at the store's address.
#[test]
fn a_master_node_that_reaches_its_store_at_localhost_still_forms_the_ring() {
    let Some(net) = Net::create('l') else {
        println!("skipped: needs root and `ip netns` (network namespaces)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 4);
    let run = tmp.path().join("run");
    let n0 = node(&net.a, 0, "localhost:29556", &cfg, &run);
    let n1 = node(&net.b, 1, "10.231.0.1:29556", &cfg, &run);
    for (i, n) in [n0, n1].into_iter().enumerate() {
        let out = n.wait_with_output().unwrap();
        assert!(out.status.success(), "node {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(run.join("checkpoints/step-00000004/DONE").exists());
}

#[test]
fn cutting_a_nodes_link_makes_the_watchdog_abort_and_the_launcher_report_it() {
    let Some(net) = Net::create('c') else {
        println!("skipped: needs root and `ip netns` (network namespaces)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 100_000);
    let run = tmp.path().join("run");
    let mut n0 = node(&net.a, 0, "10.231.0.1:29555", &cfg, &run);
    let mut n1 = node(&net.b, 1, "10.231.0.1:29555", &cfg, &run);

    let t0 = Instant::now();
    while !run.join("checkpoints/step-00000004/DONE").exists() {
        if t0.elapsed() > Duration::from_secs(90) || n0.try_wait().unwrap().is_some() {
            let _ = (n0.kill(), n1.kill());
            let out = n0.wait_with_output().unwrap();
            panic!("two-node training did not start:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // node 0's lines, each with when it came (its agent reports at once, then waits for node 1)
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    let reader = {
        let (lines, stderr) = (lines.clone(), n0.stderr.take().unwrap());
        std::thread::spawn(move || {
            for l in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                lines.lock().unwrap().push((Instant::now(), l));
            }
        })
    };
    net.cut_b();
    let cut = Instant::now();
    let status = loop {
        if let Some(s) = n0.try_wait().unwrap() {
            break s;
        }
        // (its expected course, ≤ 6 + 5 + 30 s, with room for a loaded machine: a hang never ends)
        if cut.elapsed() > Duration::from_secs(120) {
            let _ = (n0.kill(), n1.kill());
            let said: Vec<String> =
                lines.lock().unwrap().iter().map(|(t, l)| format!("{:.1?} {l}", t.duration_since(cut))).collect();
            panic!(
                "node 0's launcher still running 120 s after the cut: a hang; it said (time after the cut):\n{}",
                said.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let exited = cut.elapsed();
    let _ = n1.kill();
    let _ = n1.wait();
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    let stderr: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    let stderr = stderr.join("\n");
    let reported = lines.iter().find(|(_, l)| l.contains("Root cause")).map(|(t, _)| t.duration_since(cut));
    println!("node 0's launcher reported after {reported:.1?} and exited {exited:.1?} after the cut ({status:?})");
    let report: Vec<&str> = stderr.lines().skip_while(|l| !l.contains("Root cause")).take(8).collect();
    println!("{}", report.join("\n"));
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("a collective timed out"), "{stderr}");
    // the watchdog fires within its 6 s timeout, and the agent reports after waiting up to 5 s for a
    // permanent mark node 1 cannot post (SETTLE), well before a hang; it then waits (≤ 30 s) for node
    // 1's agent, which cannot reach the store, to count itself out
    let reported = reported.unwrap_or_else(|| panic!("no root cause reported:\n{stderr}"));
    assert!(reported < Duration::from_secs(30), "reported {reported:?} after the cut");
}
