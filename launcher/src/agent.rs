//! `infinity launch`: one agent per node. It hosts the store (node 0), meets the other agents, spawns
//! the local ranks with torchrun-style variables, tees their output (prefixed on the console, one file
//! per rank per attempt), and watches them. Any rank failing, here or on another node, stops the whole
//! group, which restarts from its newest complete checkpoint up to `--max-restarts` times. SIGTERM,
//! SIGINT and SIGUSR1 are forwarded to the ranks (they checkpoint and exit); SIGKILL follows after the
//! grace period.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use std::io::Write;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::comm::EXIT_COMM_TIMEOUT;
use crate::env::{parse_nodelist, vars};
use crate::store::{StoreClient, StoreServer};

/// Subcommands of `infinity` that `launch -- SUBCOMMAND …` runs with this binary.
const OWN_SUBCOMMANDS: [&str; 6] = ["train", "data", "sample", "export", "golden", "model"];
/// Lines of each rank's output kept for the failure report.
const TAIL_LINES: usize = 20;

#[derive(clap::Args, Clone, Debug)]
pub struct LaunchArgs {
    /// Ranks on this node.
    #[arg(long, default_value_t = 1)]
    pub nproc_per_node: usize,
    /// Nodes in the job (default 1, or SLURM_NNODES inside srun).
    #[arg(long)]
    pub nnodes: Option<usize>,
    /// This node's index (default 0, or SLURM_NODEID).
    #[arg(long)]
    pub node_rank: Option<usize>,
    /// HOST:PORT of node 0's store (default: a free local port on one node; SLURM's first node:29400).
    #[arg(long)]
    pub rdzv: Option<String>,
    /// Names the run in store keys and log folders (default SLURM_JOB_ID or `run`).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Shared secret to join the store (default INFINITY_RDZV_TOKEN; random on one node).
    #[arg(long)]
    pub token: Option<String>,
    /// Restarts of the whole group after a failure.
    #[arg(long, default_value_t = 0)]
    pub max_restarts: u32,
    /// Per-rank logs: LOG_DIR/RUN_ID/attempt_K/rank_R.log.
    #[arg(long, default_value = "runs/launch-logs")]
    pub log_dir: PathBuf,
    /// Seconds between forwarding a signal (or stopping a failed group) and SIGKILL.
    #[arg(long, default_value_t = 30.0)]
    pub grace_s: f64,
    /// Seconds to wait for all agents (and ranks) to arrive.
    #[arg(long, default_value_t = 300.0)]
    pub rdzv_timeout_s: f64,
    /// What each rank runs: an `infinity` subcommand (`train CONFIG …`) or any program.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

/// How an attempt ended.
enum Outcome {
    Succeeded,
    /// A signal was forwarded and the ranks stopped; the exit code to return.
    Stopped(i32),
    Failed(String),
}

/// Run the agent; returns the process exit code.
pub fn launch(a: LaunchArgs, exe: PathBuf) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(a, exe))
}

struct Plan {
    nnodes: usize,
    node_rank: usize,
    host: String,
    port: u16,
    run_id: String,
    token: String,
}

fn plan(a: &LaunchArgs) -> Result<Plan> {
    let env = |k: &str| std::env::var(k).ok();
    let slurm_num = |k: &str| env(k).and_then(|v| v.parse::<usize>().ok());
    let nnodes = a.nnodes.or(slurm_num("SLURM_NNODES")).unwrap_or(1);
    let node_rank = a.node_rank.or(slurm_num("SLURM_NODEID")).unwrap_or(0);
    if a.nproc_per_node == 0 || nnodes == 0 || node_rank >= nnodes {
        bail!(
            "--nproc-per-node and --nnodes must be positive and --node-rank below --nnodes ({node_rank} of {nnodes})"
        );
    }
    let (host, port) = match &a.rdzv {
        Some(r) => {
            let (h, p) = r.rsplit_once(':').with_context(|| format!("--rdzv {r}: expected HOST:PORT"))?;
            (h.to_string(), p.parse().with_context(|| format!("--rdzv {r}: bad port"))?)
        }
        None if nnodes == 1 => ("127.0.0.1".to_string(), 0),
        None => {
            let list = env("SLURM_JOB_NODELIST").context("--rdzv HOST:PORT is needed with several nodes")?;
            let first = parse_nodelist(&list)?.into_iter().next().context("empty SLURM_JOB_NODELIST")?;
            (first, 29400)
        }
    };
    let token = match a.token.clone().or(env(vars::TOKEN)) {
        Some(t) => t,
        None if nnodes == 1 => format!("{:032x}", rand::random::<u128>()),
        None => bail!("several nodes need a shared token: --token or {} on every node", vars::TOKEN),
    };
    let run_id = a.run_id.clone().or(env("SLURM_JOB_ID")).unwrap_or_else(|| "run".into());
    Ok(Plan { nnodes, node_rank, host, port, run_id, token })
}

async fn run(a: LaunchArgs, exe: PathBuf) -> Result<i32> {
    let p = plan(&a)?;
    let timeout = Duration::from_secs_f64(a.rdzv_timeout_s);
    // node 0 hosts the store; the others (and the ranks) connect to it
    let server = if p.node_rank == 0 {
        let bind_host = if p.nnodes == 1 { p.host.clone() } else { "0.0.0.0".into() };
        let addr = tokio::net::lookup_host((bind_host.as_str(), p.port))
            .await?
            .next()
            .with_context(|| format!("--rdzv host {bind_host} resolves to nothing"))?;
        Some(StoreServer::spawn(addr, p.token.clone())?)
    } else {
        None
    };
    let port = server.as_ref().map_or(p.port, |s| s.addr.port());
    let store_addr = format!("{}:{port}", p.host);
    let who = format!("agent {}", p.node_rank);
    let (addr2, token2, who2) = (store_addr.clone(), p.token.clone(), who.clone());
    let mut client =
        tokio::task::spawn_blocking(move || StoreClient::connect(&addr2, &token2, &who2, timeout)).await??;
    let world = p.nnodes * a.nproc_per_node;
    eprintln!(
        "[launch] node {}/{}: {} local ranks of {world}, store {store_addr}, run {}",
        p.node_rank, p.nnodes, a.nproc_per_node, p.run_id
    );

    let mut signals = Signals::new()?;
    for attempt in 0..=a.max_restarts {
        let prefix = format!("{}/attempt-{attempt}", p.run_id);
        // all agents meet before spawning, so a restart starts every node together
        let (pre, node, nnodes) = (format!("{prefix}/agents"), p.node_rank, p.nnodes);
        client = tokio::task::spawn_blocking(move || -> Result<StoreClient> {
            client.rendezvous(&pre, node, nnodes, timeout).map_err(|e| {
                anyhow::anyhow!("{e:#} (the missing numbers are node ranks: start `infinity launch` there)")
            })?;
            Ok(client)
        })
        .await??;
        let ranks = spawn_group(&a, &p, &exe, port, attempt, world).await?;
        let outcome = watch(ranks, &a, &p, &store_addr, &prefix, &mut signals).await?;
        match outcome {
            Outcome::Succeeded => {
                eprintln!("[launch] all {} local ranks finished", a.nproc_per_node);
                return Ok(0);
            }
            Outcome::Stopped(code) => return Ok(code),
            Outcome::Failed(report) => {
                eprintln!("[launch] attempt {attempt} failed. Root cause: {report}");
                if attempt == a.max_restarts {
                    eprintln!("[launch] no restarts left (--max-restarts {})", a.max_restarts);
                    return Ok(1);
                }
                eprintln!(
                    "[launch] restarting the group from its newest checkpoint ({} of {})",
                    attempt + 1,
                    a.max_restarts
                );
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// One local rank: the process, its pid, and the tail of its output.
struct Rank {
    global: usize,
    child: Child,
    pid: i32,
    tail: Arc<Mutex<VecDeque<String>>>,
    started: Instant,
}

async fn spawn_group(a: &LaunchArgs, p: &Plan, exe: &Path, port: u16, attempt: u32, world: usize) -> Result<Vec<Rank>> {
    let dir = a.log_dir.join(&p.run_id).join(format!("attempt_{attempt}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) / a.nproc_per_node;
    let devices: Vec<String> = std::env::var("CUDA_VISIBLE_DEVICES")
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_else(|_| (0..a.nproc_per_node).map(|i| i.to_string()).collect());
    let mut ranks = Vec::new();
    for local in 0..a.nproc_per_node {
        let global = p.node_rank * a.nproc_per_node + local;
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
            .env("NODE_RANK", p.node_rank.to_string())
            .env("GROUP_RANK", p.node_rank.to_string())
            .env("MASTER_ADDR", &p.host)
            .env("MASTER_PORT", port.to_string())
            .env(vars::TOKEN, &p.token)
            .env(vars::RUN_ID, &p.run_id)
            .env(vars::RESTART_COUNT, attempt.to_string())
            .env(vars::AGENT_STORE, "1")
            .env("CUDA_VISIBLE_DEVICES", devices.get(local).cloned().unwrap_or_else(|| local.to_string()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if attempt > 0 {
            cmd.env(vars::RESUME, "auto");
        }
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            cmd.env("RAYON_NUM_THREADS", threads.max(1).to_string());
        }
        let mut child = cmd.spawn().with_context(|| format!("starting rank {global}: {}", prog.display()))?;
        let pid = child.id().map_or(0, |p| p as i32);
        let log_path = dir.join(format!("rank_{global}.log"));
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let log = Arc::new(Mutex::new(log));
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let out: Box<dyn tokio::io::AsyncRead + Unpin + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn tokio::io::AsyncRead + Unpin + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let (log, tail) = (log.clone(), tail.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[rank {global}] {line}");
                    let _ = writeln!(log.lock().unwrap(), "{line}");
                    let mut t = tail.lock().unwrap();
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        ranks.push(Rank { global, child, pid, tail, started: Instant::now() });
    }
    Ok(ranks)
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }

    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.int.recv() => libc::SIGINT,
            _ = self.usr1.recv() => libc::SIGUSR1,
        }
    }
}

fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) if c == EXIT_COMM_TIMEOUT => format!("exit code {c} (a collective timed out)"),
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s} ({})", signal_name(s)),
        _ => "an unknown status".into(),
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGUSR1 => "SIGUSR1",
        _ => "signal",
    }
}

/// Watch the group until it succeeds, fails, or a signal stops it.
async fn watch(
    mut ranks: Vec<Rank>,
    a: &LaunchArgs,
    p: &Plan,
    store_addr: &str,
    prefix: &str,
    signals: &mut Signals,
) -> Result<Outcome> {
    let mut exited: Vec<Option<ExitStatus>> = vec![None; ranks.len()];
    // another node's failure or signal is posted in the store; a separate connection polls for it
    let (addr, token, who) = (store_addr.to_string(), p.token.clone(), format!("agent {} watch", p.node_rank));
    let mut poller =
        tokio::task::spawn_blocking(move || StoreClient::connect(&addr, &token, &who, Duration::from_secs(30)))
            .await??;
    let keys = [format!("{prefix}/failed"), format!("{prefix}/signal")];
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let running: Vec<usize> = (0..ranks.len()).filter(|&i| exited[i].is_none()).collect();
        if running.is_empty() {
            return Ok(Outcome::Succeeded);
        }
        let wait_any = async {
            let futs = ranks
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| exited[*i].is_none())
                .map(|(i, r)| Box::pin(async move { (i, r.child.wait().await) }));
            futures_select_all(futs.collect()).await
        };
        tokio::select! {
            (i, status) = wait_any => {
                let status = status?;
                exited[i] = Some(status);
                if !status.success() {
                    let r = &ranks[i];
                    let lines: Vec<String> = r.tail.lock().unwrap().iter().cloned().collect();
                    let report = format!(
                        "rank {} (node {}, pid {}) exited with {} after {:.1} s; its last lines:\n    {}",
                        r.global, p.node_rank, r.pid, describe(&status), r.started.elapsed().as_secs_f64(),
                        lines.join("\n    ")
                    );
                    post(&mut poller, &keys[0], &report).await;
                    stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM).await;
                    return Ok(Outcome::Failed(report));
                }
            }
            sig = signals.next() => {
                eprintln!("[launch] got {}; forwarding to the ranks (they checkpoint and exit)", signal_name(sig));
                post(&mut poller, &keys[1], &sig.to_string()).await;
                return Ok(Outcome::Stopped(stop_group(&mut ranks, &mut exited, a.grace_s, sig).await));
            }
            _ = tick.tick() => {
                let (k, mut pl) = (keys.clone(), poller);
                let (pl2, present) = tokio::task::spawn_blocking(move || {
                    let r = pl.check(&k);
                    (pl, r)
                })
                .await?;
                poller = pl2;
                let present = present.unwrap_or_default();
                if present.first() == Some(&true) {
                    let report = match poller.get(&keys[0], Duration::from_secs(1)) {
                        Ok(v) => String::from_utf8_lossy(&v).to_string(),
                        Err(e) => format!("(unreadable: {e})"),
                    };
                    stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM).await;
                    return Ok(Outcome::Failed(format!("another node: {report}")));
                }
                if present.get(1) == Some(&true) {
                    eprintln!("[launch] another node was signalled; forwarding SIGTERM");
                    return Ok(Outcome::Stopped(stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM).await));
                }
            }
        }
    }
}

async fn post(client: &mut StoreClient, key: &str, value: &str) {
    if let Err(e) = client.set(key, value.as_bytes()) {
        tracing::warn!("store: posting {key}: {e:#}");
    }
}

/// Send `sig` to the running ranks, wait up to `grace_s`, then SIGKILL the rest. Returns 0 when every
/// rank exited successfully, else 1.
async fn stop_group(ranks: &mut [Rank], exited: &mut [Option<ExitStatus>], grace_s: f64, sig: i32) -> i32 {
    let running: Vec<usize> = (0..ranks.len()).filter(|&i| exited[i].is_none()).collect();
    let targets: Vec<&Rank> = running.iter().map(|&i| &ranks[i]).collect();
    for r in &targets {
        if r.pid > 0 {
            // SAFETY: kill(2) on a pid we spawned; one that already exited makes it fail harmlessly.
            unsafe { libc::kill(r.pid, sig) };
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(grace_s);
    for i in running {
        match tokio::time::timeout_at(deadline, ranks[i].child.wait()).await {
            Ok(Ok(s)) => exited[i] = Some(s),
            _ => {
                eprintln!("[launch] rank {} did not exit within {grace_s} s; SIGKILL", ranks[i].global);
                let _ = ranks[i].child.kill().await;
                exited[i] = ranks[i].child.wait().await.ok();
            }
        }
    }
    if exited.iter().all(|s| s.is_some_and(|s| s.success())) {
        0
    } else {
        1
    }
}

/// The first of several futures to finish, with its index among them.
async fn futures_select_all<F, T>(futs: Vec<std::pin::Pin<Box<F>>>) -> T
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
