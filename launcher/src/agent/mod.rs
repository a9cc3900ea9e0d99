//! `infinity launch`: one agent per node. It hosts the store (node 0), meets the other agents, spawns
//! the local ranks with torchrun-style variables, tees their output (prefixed on the console, one file
//! per rank per attempt), and watches them. Any rank failing, here or on another node, stops the whole
//! group, which restarts from its newest complete checkpoint up to `--max-restarts` times. SIGTERM,
//! SIGINT and SIGUSR1 are forwarded to the ranks (they checkpoint and exit); SIGKILL follows after the
//! grace period.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::env::{is_permanent_failure, job_port, parse_nodelist, vars, EXIT_BAD_DATA};
use crate::store::{StoreClient, StoreServer};

mod failure;
mod ranks;
mod signals;

use ranks::{describe, futures_select_all, spawn_group, stop_group, Rank};
use signals::{signal_name, until_signal, Signals};

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
    /// HOST:PORT of node 0's store (default: a free local port on one node; in SLURM, the step's first
    /// node at 30000 + SLURM_JOB_ID mod 10000).
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
    /// Seconds to wait for all agents to arrive (the ranks wait their config's `dist.rdzv_timeout_s`).
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
    /// The root cause; `permanent` holds the exit code of a rank whose failure a restart would repeat
    /// (`EXIT_BAD_INVOCATION`: its command line or config is wrong; `EXIT_BAD_DATA`: its dataset is).
    Failed {
        report: String,
        permanent: Option<i32>,
        /// This node's failed rank, when one failed.
        local: Option<failure::RankFailure>,
    },
}

/// Run the agent; returns the process exit code.
pub fn launch(a: LaunchArgs, exe: PathBuf) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let code = rt.block_on(run(a, exe));
    // a store wait a signal cut short may still be blocking a thread: leave it behind
    rt.shutdown_background();
    code
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
    for (flag, v) in [("--grace-s", a.grace_s), ("--rdzv-timeout-s", a.rdzv_timeout_s)] {
        if !(v.is_finite() && v >= 0.0) {
            bail!("{flag} {v}: expected a number of seconds ≥ 0");
        }
    }
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
            // the job step's nodes (an srun over part of the allocation), else the job's
            let list = env("SLURM_STEP_NODELIST")
                .or(env("SLURM_JOB_NODELIST"))
                .context("--rdzv HOST:PORT is needed with several nodes")?;
            let first = parse_nodelist(&list)?.into_iter().next().context("empty SLURM node list")?;
            (first, job_port(30000, env("SLURM_JOB_ID").as_deref()).unwrap_or(29400))
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
        // every interface of the host's address family (an IPv6 --rdzv is written [addr]:port)
        let inner = p.host.trim_start_matches('[').trim_end_matches(']');
        let bind_host = match (p.nnodes, inner.contains(':')) {
            (1, _) => inner.to_string(),
            (_, true) => "::".into(),
            (_, false) => "0.0.0.0".into(),
        };
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
    let mut signals = Signals::new()?;
    let (addr2, token2, who2) = (store_addr.clone(), p.token.clone(), who.clone());
    let connect = tokio::task::spawn_blocking(move || StoreClient::connect(&addr2, &token2, &who2, timeout));
    let mut client = match until_signal(&mut signals, connect, "connecting to the store").await {
        Ok(c) => c?,
        Err(code) => return Ok(code),
    };
    let world = p.nnodes * a.nproc_per_node;
    eprintln!(
        "[launch] node {}/{}: {} local ranks of {world}, store {store_addr}, run {}",
        p.node_rank, p.nnodes, a.nproc_per_node, p.run_id
    );

    for attempt in 0..=a.max_restarts {
        let prefix = format!("{}/attempt-{attempt}", p.run_id);
        // all agents meet before spawning, so a restart starts every node together
        let (pre, node, nnodes) = (format!("{prefix}/agents"), p.node_rank, p.nnodes);
        let meet = tokio::task::spawn_blocking(move || -> Result<StoreClient> {
            client.rendezvous(&pre, node, nnodes, timeout).map_err(|e| {
                anyhow::anyhow!("{e:#} (the missing numbers are node ranks: start `infinity launch` there)")
            })?;
            Ok(client)
        });
        client = match until_signal(&mut signals, meet, "waiting for the other agents").await {
            Ok(c) => c?,
            Err(code) => return Ok(code),
        };
        if attempt == 0 {
            client = agree_on_settings(client, &a, &p, timeout).await?;
        }
        let ranks = spawn_group(&a, &p, &exe, port, attempt, world).await?;
        let outcome = watch(ranks, &a, &p, &store_addr, &prefix, &mut signals).await?;
        match outcome {
            Outcome::Succeeded => {
                eprintln!("[launch] all {} local ranks finished", a.nproc_per_node);
                return Ok(0);
            }
            Outcome::Stopped(code) => {
                eprintln!("[launch] the ranks stopped after the signal; exiting with {code}");
                return Ok(code);
            }
            Outcome::Failed { report, permanent, local } => {
                eprintln!("[launch] attempt {attempt} failed. Root cause: {report}");
                let next = match (permanent, attempt == a.max_restarts) {
                    (Some(_), _) => "stop: permanent",
                    (None, true) => "stop: no restarts left",
                    (None, false) => "restart",
                };
                let dir = a.log_dir.join(&p.run_id).join(format!("attempt_{attempt}"));
                failure::write(&dir, attempt, p.node_rank, &report, local.as_ref(), next);
                if let Some(code) = permanent {
                    let what = if code == EXIT_BAD_DATA { "the dataset" } else { "the command or its config" };
                    eprintln!(
                        "[launch] not restarting: exit code {code} means {what} is wrong, and a restart would fail \
                         the same way"
                    );
                    return Ok(code);
                }
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

/// After the first meeting, every agent checks that all nodes launch the same group: the same ranks per
/// node and restarts (a node that differs would otherwise surface later as ranks joining twice or a
/// restart that one node never joins). An error on every node names the nodes and values that differ.
async fn agree_on_settings(
    mut client: StoreClient,
    a: &LaunchArgs,
    p: &Plan,
    timeout: Duration,
) -> Result<StoreClient> {
    let mine = format!("--nproc-per-node {} --max-restarts {}", a.nproc_per_node, a.max_restarts);
    let prefix = format!("{}/settings", p.run_id);
    let (node, nnodes) = (p.node_rank, p.nnodes);
    tokio::task::spawn_blocking(move || -> Result<StoreClient> {
        client.set(&format!("{prefix}/{node}"), mine.as_bytes())?;
        let mut differ = Vec::new();
        for n in 0..nnodes {
            let theirs = String::from_utf8_lossy(&client.get(&format!("{prefix}/{n}"), timeout)?).to_string();
            if theirs != mine {
                differ.push(format!("node {n} has {theirs}"));
            }
        }
        if !differ.is_empty() {
            // node 0 hosts the store: it stays until every node has read the settings (or 5 s), so each
            // reports the disagreement rather than a vanished store
            client.add(&format!("{prefix}/read"), 1)?;
            let t0 = std::time::Instant::now();
            while node == 0 && client.add(&format!("{prefix}/read"), 0)? < nnodes as i64 && t0.elapsed().as_secs() < 5 {
                std::thread::sleep(Duration::from_millis(50));
            }
            bail!("the agents disagree: node {node} has {mine}, {}; start every node with the same", differ.join(", "));
        }
        Ok(client)
    })
    .await?
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
    let keys = [format!("{prefix}/failed"), format!("{prefix}/signal"), format!("{prefix}/failed-permanently")];
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut store_lost: Option<Instant> = None;
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
                ranks[i].drain().await;
                if !status.success() {
                    let r = &ranks[i];
                    let lines: Vec<String> = r.tail.lock().unwrap().iter().cloned().collect();
                    let seconds = r.started.elapsed().as_secs_f64();
                    let report = format!(
                        "rank {} (node {}, pid {}) exited with {} after {seconds:.1} s; its last lines:\n    {}",
                        r.global, p.node_rank, r.pid, describe(&status), lines.join("\n    ")
                    );
                    let local = Some(failure::RankFailure::new(r.global, r.pid, &status, seconds, lines));
                    // the group's first failure is its root cause (a rank on another node may fail
                    // later, of the broken connection): the first report posted stays
                    // (a permanent failure is marked first: an agent that sees the report sees the mark)
                    let permanent = status.code().filter(|&c| is_permanent_failure(Some(c)));
                    if let Some(code) = permanent {
                        post(&mut poller, &keys[2], &code.to_string()).await;
                    }
                    let report = post_first(&mut poller, &keys[0], report).await;
                    stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM).await;
                    return Ok(Outcome::Failed { report, permanent, local });
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
                // node 0's agent hosts the store: losing it for good means that node is gone
                let present = match present {
                    Ok(p) => {
                        store_lost = None;
                        p
                    }
                    Err(e) => {
                        let since = *store_lost.get_or_insert_with(Instant::now);
                        if since.elapsed() < STORE_LOSS {
                            continue;
                        }
                        let report = format!(
                            "the store at {store_addr} (node 0's agent) stopped answering for {} s: {e:#}",
                            STORE_LOSS.as_secs()
                        );
                        stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM).await;
                        return Ok(Outcome::Failed { report, permanent: None, local: None });
                    }
                };
                if present.first() == Some(&true) {
                    let report = match poller.get(&keys[0], Duration::from_secs(1)) {
                        Ok(v) => String::from_utf8_lossy(&v).to_string(),
                        Err(e) => format!("(unreadable: {e})"),
                    };
                    stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM).await;
                    let permanent = match poller.check(&keys[2..]) {
                        Ok(p) if p == [true] => poller
                            .get(&keys[2], Duration::from_secs(1))
                            .ok()
                            .and_then(|v| String::from_utf8_lossy(&v).parse().ok())
                            .filter(|&c| is_permanent_failure(Some(c))),
                        _ => None,
                    };
                    let report = format!("another node: {report}");
                    return Ok(Outcome::Failed { report, permanent, local: None });
                }
                if present.get(1) == Some(&true) {
                    eprintln!("[launch] another node was signalled; forwarding SIGTERM");
                    return Ok(Outcome::Stopped(stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM).await));
                }
            }
        }
    }
}

/// How long the store may not answer before an agent gives its group up.
const STORE_LOSS: Duration = Duration::from_secs(10);

/// Posts `report` as the group's failure unless another agent posted one first; returns the report
/// that stands (`another node: …` when it is not ours).
async fn post_first(client: &mut StoreClient, key: &str, report: String) -> String {
    match client.add(&format!("{key}/claims"), 1) {
        Ok(1) => {
            post(client, key, &report).await;
            report
        }
        Ok(_) => match client.get(key, Duration::from_secs(5)) {
            Ok(first) => format!("another node: {}\n  (then here: {report})", String::from_utf8_lossy(&first)),
            Err(_) => report,
        },
        Err(e) => {
            tracing::warn!("store: posting {key}: {e:#}");
            report
        }
    }
}

async fn post(client: &mut StoreClient, key: &str, value: &str) {
    if let Err(e) = client.set(key, value.as_bytes()) {
        tracing::warn!("store: posting {key}: {e:#}");
    }
}
