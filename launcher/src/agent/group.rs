//! How the agents of one attempt form and leave their group: who hosts the store, the settings every
//! node must share, the restarts the group has used, and the exit that waits for the other agents.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::task::JoinHandle;

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

/// Store key (under the run id) of a fixed group's current attempt, which every agent sets as it meets
/// the others for it.
pub(super) const CURRENT_ATTEMPT: &str = "current-attempt";

/// The attempt a fixed group's agent meets the others for first: the group's current one (0 for a new
/// group). An agent that replaces a lost node's (a restarted pod or node) finds the lost agent's claim
/// on that attempt: it waits (up to `timeout`) for the attempt to fail and joins the restart. A group
/// that stops instead (a permanent failure, no restarts left, a signal) is an error.
pub(super) fn first_attempt(
    c: &mut StoreClient,
    run_id: &str,
    node: usize,
    max_restarts: u32,
    timeout: Duration,
) -> Result<u32> {
    let current = format!("{run_id}/{CURRENT_ATTEMPT}");
    let (t0, mut said) = (Instant::now(), false);
    loop {
        let k: u32 = match c.check(std::slice::from_ref(&current))?[0] {
            false => 0,
            true => {
                let v = String::from_utf8_lossy(&c.get(&current, timeout)?).into_owned();
                v.parse().with_context(|| format!("store key {current} holds {v:?}: expected an attempt number"))?
            }
        };
        let pre = format!("{run_id}/attempt-{k}");
        // (this node's claim on the attempt's meeting, and how the attempt ended)
        let keys = [format!("{pre}/agents/claims/{node}"), format!("{pre}/failed")]
            .into_iter()
            .chain(["failed-permanently", "signal"].map(|k| format!("{pre}/{k}")))
            .collect::<Vec<_>>();
        match c.check(&keys)?[..] {
            // (a stopped group is not joined, whether or not this node's claim is there)
            [_, _, _, true] => bail!("{run_id}: the group was stopped by a signal (attempt {k}): not joining"),
            [false, false, ..] => return Ok(k),
            [_, true, true, _] => bail!("{run_id}: attempt {k} failed for good (a permanent failure): not joining"),
            [_, true, false, _] if k >= max_restarts => {
                bail!("{run_id}: attempt {k} failed with no restarts left (--max-restarts {max_restarts}): not joining")
            }
            [_, true, false, _] => return Ok(k + 1),
            _ => {}
        }
        if !said {
            console_err!(
                "[launch] node {node} already joined attempt {k} (this node's previous agent, lost, or another \
                 agent with --node-rank {node}): waiting for that attempt to end to join the restart"
            );
            said = true;
        }
        if t0.elapsed() >= timeout {
            bail!(
                "{run_id}: node rank {node} is taken in attempt {k}, which has not ended within {:.0} s: another \
                 agent runs with --node-rank {node}, or the lost one's attempt has not failed yet (its ranks \
                 may wait up to dist.rdzv_timeout_s for their group)",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Before a fixed group's first meeting (and after each elastic round's), every agent checks that all
/// nodes launch the same group: the same number of nodes, ranks per node and restarts (a node that
/// differs would otherwise surface later as a rendezvous that waits for a node that never comes, ranks
/// joining twice or a restart that one node never joins). Each agent posts its settings and reads the
/// others' as they come: the first that differs stops it with [`Misconfigured`] naming the nodes and
/// values, on every node. `Err(nodes)` inside: those nodes never posted their settings within `timeout`.
pub(super) fn agree_on_settings(
    mut client: StoreClient,
    a: &LaunchArgs,
    prefix: &str,
    g: Group,
    hosting: bool,
    timeout: Duration,
) -> JoinHandle<Result<(StoreClient, Agreed)>> {
    let nodes = match a.nnodes {
        Some(Nodes::Elastic { min, max }) => format!("{min}:{max}"),
        _ => g.nnodes.to_string(),
    };
    let mine = format!("--nnodes {nodes} --nproc-per-node {} --max-restarts {}", a.nproc_per_node, a.max_restarts);
    let (prefix, node, nnodes) = (prefix.to_string(), g.node_rank, g.nnodes);
    tokio::task::spawn_blocking(move || {
        client.set(&format!("{prefix}/{node}"), mine.as_bytes())?;
        let keys: Vec<String> = (0..nnodes).map(|n| format!("{prefix}/{n}")).collect();
        let mut theirs: Vec<Option<String>> = vec![None; nnodes];
        let t0 = Instant::now();
        loop {
            let present = client.check(&keys)?;
            for (n, k) in keys.iter().enumerate() {
                if present[n] && theirs[n].is_none() {
                    theirs[n] = Some(String::from_utf8_lossy(&client.get(k, timeout)?).into_owned());
                }
            }
            let differ: Vec<String> = (theirs.iter().enumerate())
                .filter_map(|(n, t)| t.as_ref().filter(|t| **t != mine).map(|t| format!("node {n} has {t}")))
                .collect();
            if !differ.is_empty() {
                // the agent hosting the store stays until every node has read the settings (or 5 s), so
                // each reports the disagreement rather than a vanished store
                client.add(&format!("{prefix}/read"), 1)?;
                let t1 = Instant::now();
                while hosting && client.add(&format!("{prefix}/read"), 0)? < nnodes as i64 && t1.elapsed().as_secs() < 5
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let msg = format!(
                    "the agents disagree: node {node} has {mine}, {}; start every node with the same",
                    differ.join(", ")
                );
                return Err(Misconfigured(msg).into());
            }
            if theirs.iter().all(Option::is_some) {
                return Ok((client, Ok(())));
            }
            if t0.elapsed() >= timeout {
                let missing = (0..nnodes).filter(|&n| theirs[n].is_none()).collect();
                return Ok((client, Err(missing)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// What [`agree_on_settings`] came to: `Err(nodes)`, the nodes that never posted their settings.
pub(super) type Agreed = Result<(), Vec<usize>>;

/// The agents' command lines do not fit together (nodes that disagree on the group, two agents with
/// one node rank): like a bad command line, the agent exits 2, which no retry mends.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Misconfigured(pub String);
