//! How the agents of one attempt form and leave their group: who hosts the store, the settings every
//! node must share, the restarts the group has used, and the exit that waits for the other agents.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::elastic::{Group, Nodes, Rounds};
use super::watch::post;
use super::{LaunchArgs, Plan};
use crate::store::{StoreClient, StoreServer};

/// The store, when this agent hosts it: node 0 of a fixed group; in an elastic group, the first agent
/// on the machine `--rdzv` names (the others find the port taken and connect to it).
pub(super) async fn host_store(p: &Plan) -> Result<Option<StoreServer>> {
    if p.elastic.is_none() && p.node_rank != 0 {
        return Ok(None);
    }
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
    if p.elastic.is_none() {
        return Ok(Some(StoreServer::spawn(addr, p.token.clone())?));
    }
    // is --rdzv's host this machine? (one of its addresses binds here)
    let here = tokio::net::lookup_host((inner, p.port))
        .await
        .with_context(|| format!("--rdzv host {inner}"))?
        .any(|a| std::net::TcpListener::bind((a.ip(), 0)).is_ok());
    if !here {
        return Ok(None);
    }
    match StoreServer::spawn(addr, p.token.clone()) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if e.root_cause().downcast_ref::<std::io::Error>().map(|e| e.kind())
                == Some(std::io::ErrorKind::AddrInUse) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// How an agent leaves its last attempt.
pub(super) struct Ending<'a> {
    pub prefix: &'a str,
    pub g: Group,
    pub hosting: bool,
    pub rounds: Option<&'a Rounds>,
}

impl Ending<'_> {
    /// Returns `code` after telling the others: an elastic group that ended for good (`for_all`)
    /// posts its code for the agents still waiting to join; every agent counts itself out, and the
    /// agent hosting the store waits (up to 30 s) until every agent of the attempt has, so none finds
    /// the store gone as its ranks end.
    pub async fn finish(&self, client: &mut StoreClient, code: i32, for_all: bool) -> i32 {
        if let Some(r) = self.rounds.filter(|_| for_all) {
            post(client, &r.ended_key(), &code.to_string()).await;
        }
        let _ = client.add(&format!("{}/exited", self.prefix), 1);
        if self.hosting {
            wait_for_agents(client, self.prefix, self.g.nnodes).await;
            if self.rounds.is_some() {
                // agents waiting for a round read `ended` before the store goes
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        code
    }
}

/// Waits (up to [`EXIT_WAIT`]) until the `nnodes` agents of the attempt `prefix` have counted
/// themselves out (saying so when that takes a while: an agent cut off from the store never does).
pub(super) async fn wait_for_agents(client: &mut StoreClient, prefix: &str, nnodes: usize) {
    let (key, t0, mut said) = (format!("{prefix}/exited"), Instant::now(), false);
    while let Ok(n) = client.add(&key, 0) {
        if n as usize >= nnodes || t0.elapsed() >= EXIT_WAIT {
            break;
        }
        if !said && t0.elapsed() >= Duration::from_secs(2) {
            console_err!(
                "[launch] this agent hosts the store: waiting up to {} s for the other agents to read how the \
                 run ended ({n} of {nnodes} out)",
                EXIT_WAIT.as_secs()
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long the agent hosting the store waits for the others to finish.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// Attempts up to `round` of the run that failed (each posted its root cause in the store).
pub(super) fn failed_attempts(client: &mut StoreClient, run_id: &str, round: u32) -> Result<u32> {
    let keys: Vec<String> = (0..=round).map(|r| format!("{run_id}/attempt-{r}/failed")).collect();
    Ok(client.check(&keys)?.iter().filter(|&&p| p).count() as u32)
}

/// After the first meeting, every agent checks that all nodes launch the same group: the same ranks per
/// node and restarts (a node that differs would otherwise surface later as ranks joining twice or a
/// restart that one node never joins). An error on every node names the nodes and values that differ.
/// `Err(report)` inside: a node never posted its settings within `timeout`.
pub(super) async fn agree_on_settings(
    mut client: StoreClient,
    a: &LaunchArgs,
    prefix: &str,
    g: Group,
    hosting: bool,
    timeout: Duration,
) -> Result<(StoreClient, Result<(), String>)> {
    let mut mine = format!("--nproc-per-node {} --max-restarts {}", a.nproc_per_node, a.max_restarts);
    if let Some(Nodes::Elastic { min, max }) = a.nnodes {
        mine = format!("--nnodes {min}:{max} {mine}");
    }
    let (prefix, node, nnodes) = (prefix.to_string(), g.node_rank, g.nnodes);
    tokio::task::spawn_blocking(move || -> Result<(StoreClient, Result<(), String>)> {
        client.set(&format!("{prefix}/{node}"), mine.as_bytes())?;
        let keys: Vec<String> = (0..nnodes).map(|n| format!("{prefix}/{n}")).collect();
        if let Err(missing) = client.wait(&keys, timeout)? {
            let nodes: Vec<&str> = missing.iter().filter_map(|k| k.rsplit('/').next()).collect();
            let report = format!(
                "nodes [{}] of {nnodes} never started their ranks (no settings within {:.0} s: gone?)",
                nodes.join(", "),
                timeout.as_secs_f64()
            );
            return Ok((client, Err(report)));
        }
        let mut differ = Vec::new();
        for k in &keys {
            let theirs = String::from_utf8_lossy(&client.get(k, timeout)?).to_string();
            if theirs != mine {
                differ.push(format!("node {} has {theirs}", k.rsplit('/').next().unwrap_or("?")));
            }
        }
        if !differ.is_empty() {
            // the agent hosting the store stays until every node has read the settings (or 5 s), so
            // each reports the disagreement rather than a vanished store
            client.add(&format!("{prefix}/read"), 1)?;
            let t0 = Instant::now();
            while hosting && client.add(&format!("{prefix}/read"), 0)? < nnodes as i64 && t0.elapsed().as_secs() < 5 {
                std::thread::sleep(Duration::from_millis(50));
            }
            bail!("the agents disagree: node {node} has {mine}, {}; start every node with the same", differ.join(", "));
        }
        Ok((client, Ok(())))
    })
    .await?
}
