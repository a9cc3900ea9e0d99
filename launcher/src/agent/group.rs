//! How the agents of one attempt form and leave their group: who hosts the store, the settings every
//! node must share, the restarts the group has used, and the exit that waits for the other agents.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::task::JoinHandle;

use super::elastic::{Group, Nodes, Rounds};
use super::poller;
use super::signals::{signal_name, Signals};
use super::watch::{self, other_failure, post};
use super::{LaunchArgs, Outcome, Plan};
use crate::store::waiting::{never_arrived, refused_clause, Progress, START_THERE};
use crate::store::{StoreClient, StoreServer, STOP_READ};

/// Where the store listens for `--rdzv`'s host `inner` (resolved to `resolved`, where it resolves):
/// that host alone for one node; else every interface of its address family (an IPv6 --rdzv is written
/// [addr]:port; a name, the family it resolves to: one with IPv6 addresses alone is reached over IPv6,
/// which an IPv4 socket never answers; one that does not resolve yet, IPv4).
fn bind_host(nnodes: usize, inner: &str, resolved: Option<&[std::net::SocketAddr]>) -> String {
    let ipv6_only = resolved.is_some_and(|a| !a.is_empty() && a.iter().all(|a| a.is_ipv6()));
    match (nnodes, inner.contains(':') || ipv6_only) {
        (1, _) => inner.to_string(),
        (_, true) => "::".into(),
        (_, false) => "0.0.0.0".into(),
    }
}

/// The store, when this agent hosts it: node 0 of a fixed group; in an elastic group, the first agent
/// on the machine `--rdzv` names (the others find the port taken and connect to it).
pub(super) async fn host_store(p: &Plan) -> Result<Option<StoreServer>> {
    if p.elastic.is_none() && p.node_rank != 0 {
        return Ok(None);
    }
    let inner = p.host.trim_start_matches('[').trim_end_matches(']');
    let resolved: std::io::Result<Vec<std::net::SocketAddr>> =
        tokio::net::lookup_host((inner, p.port)).await.map(|a| a.collect());
    let bind_host = bind_host(p.nnodes, inner, resolved.as_deref().ok());
    let addr = tokio::net::lookup_host((bind_host.as_str(), p.port))
        .await
        .with_context(|| format!("--rdzv host {bind_host}: the store's address does not resolve"))?
        .next()
        .with_context(|| format!("--rdzv host {bind_host} resolves to nothing"))?;
    // (an agent of another run is refused, and named to the agents waiting for its node)
    let spawn = || StoreServer::spawn_for(addr, p.token.clone(), Some(p.run_id.clone()));
    // is --rdzv's host this machine? (one of its addresses binds here)
    let here = resolved.map(|a| a.iter().any(|a| crate::store::is_this_machine(a.ip())));
    if p.elastic.is_none() {
        // (a name that does not resolve yet, a Kubernetes Service coming up with its pod: no telling)
        if here.as_ref().is_ok_and(|here| !here) && p.nnodes > 1 {
            // (swapped --node-rank values: every agent would wait for a store at --rdzv that none hosts)
            console_err!(
                "[launch] warning: this agent (--node-rank 0) hosts the store, on this machine, but --rdzv's host \
                 {inner} is not one of its addresses: the other agents look for the store there (start --node-rank \
                 0 on {inner}, or give --rdzv this machine's address; behind NAT or in a container without the \
                 host's network, this may be fine)"
            );
        }
        if here.is_err() && p.nnodes > 1 {
            // (this agent and its ranks reach the store by that name too: they wait until it resolves)
            console_err!(
                "[launch] warning: this agent (--node-rank 0) hosts the store, but --rdzv's host {inner} does not \
                 resolve here (yet?): this agent and its ranks reach the store by that name, so they wait for it \
                 (up to --rdzv-timeout-s); give --rdzv a name or address that resolves on every node"
            );
        }
        return Ok(Some(spawn()?));
    }
    if !here.with_context(|| format!("--rdzv host {inner}"))? {
        return Ok(None);
    }
    match spawn() {
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
        // (which node left with which code: a rendezvous for a restart it never joins names it)
        post(client, &format!("{}/out/{}", self.prefix, self.g.node_rank), &code.to_string()).await;
        let _ = client.add(&format!("{}/exited", self.prefix), 1);
        if self.hosting {
            wait_for_agents(client, self.prefix, self.g.nnodes).await;
            // agents waiting for a round, or for this attempt to end (their node rank was taken: see
            // [`first_attempt`]), read how it ended before the store goes: they look every 200 ms
            if self.rounds.is_some() || waited_for(client, self.prefix, self.g.nnodes) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        code
    }
}

/// Whether an agent found its node rank taken in the attempt `prefix` and waits for its end (a
/// duplicated `--node-rank`, or a lost node's replacement), as [`first_attempt`] posts it.
fn waited_for(client: &mut StoreClient, prefix: &str, nnodes: usize) -> bool {
    let keys: Vec<String> = (0..nnodes).map(|n| waiting_key(prefix, n)).collect();
    client.check(&keys).is_ok_and(|present| present.contains(&true))
}

/// The key under which the agent of node rank `node` that found it taken in attempt `prefix` says so.
fn waiting_key(prefix: &str, node: usize) -> String {
    format!("{prefix}/agents/{}/{node}", crate::store::STARTED_AGAIN)
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

/// Tells the store this agent's run id: a store that serves another run refuses it (`Refused`: a bad
/// command line, or a port another job's store holds).
pub(super) fn check_run(c: &mut StoreClient, run_id: &str) -> Result<()> {
    c.for_run(run_id)
}

/// A fixed group's agents and an elastic group's meet under different store keys: an agent of the other
/// kind (`--nnodes 2` at a store where `--nnodes 1:2` agents run, or the reverse) would wait out
/// `--rdzv-timeout-s` for nodes that never come, unseen by the group. The agent hosting the store says
/// which kind its group is (`RUN_ID/kind`: the kind and its [`settings_line`], `mine`) as the store
/// starts; any other agent reads it (waiting up to [`KIND_WAIT`] for it to appear) and is refused
/// ([`Misconfigured`]: it exits 2) where it is of the other kind. The host is never refused: the store
/// is its group's.
pub(super) fn check_kind(c: &mut StoreClient, run_id: &str, elastic: bool, mine: &str, hosting: bool) -> Result<()> {
    check_run(c, run_id)?;
    let (key, kind) = (format!("{run_id}/kind"), if elastic { "elastic" } else { "fixed" });
    if hosting {
        return c.set(&key, format!("{kind} {mine}").as_bytes());
    }
    let t0 = Instant::now();
    while !c.check(std::slice::from_ref(&key))?[0] {
        if t0.elapsed() >= KIND_WAIT {
            return Ok(()); // (a host of an earlier build says nothing: its group's own checks apply)
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let posted = String::from_utf8_lossy(&c.get(&key, KIND_WAIT)?).into_owned();
    let (theirs, settings) = posted.split_once(' ').unwrap_or((posted.as_str(), ""));
    if theirs == kind {
        return Ok(());
    }
    let (group, hint) = match elastic {
        true => ("a fixed group", "--nnodes N with --node-rank"),
        false => ("an elastic group", "--nnodes MIN:MAX"),
    };
    let msg = format!(
        "{run_id}: the store serves {group} ({settings}); this agent has {mine}: not joining (start every agent \
         with the group's {hint})"
    );
    Err(Misconfigured(msg).into())
}

/// How long an agent waits for the store's host to say which kind of group it serves.
const KIND_WAIT: Duration = Duration::from_secs(10);

/// The attempt a fixed group's agent meets the others for first, once the store took its run id
/// ([`check_run`]): the group's current one (0 for a new group). An agent that replaces a lost node's
/// (a restarted pod or node) finds the lost agent's claim on that attempt: it waits (up to `timeout`)
/// for the attempt to fail and joins the restart. A group that stops instead (a permanent failure, no
/// restarts left, a signal) is an error.
pub(super) fn first_attempt(
    c: &mut StoreClient,
    run_id: &str,
    node: usize,
    max_restarts: u32,
    timeout: Duration,
) -> Result<u32> {
    check_run(c, run_id)?;
    let current = format!("{run_id}/{CURRENT_ATTEMPT}");
    // (the attempt this agent found its node rank taken in, once said)
    let (t0, mut waited) = (Instant::now(), None::<u32>);
    let mut progress = Progress::start(timeout, "--rdzv-timeout-s");
    // the store gone while this node rank was taken: most often the group that has it ended, and its
    // store with it
    let taken = |e: anyhow::Error, waited: Option<u32>| match waited {
        Some(k) => e.context(format!(
            "{run_id}: node rank {node} was taken in attempt {k} while this agent waited (another agent runs with \
             --node-rank {node}?)"
        )),
        None => e,
    };
    loop {
        let k: u32 = match c.check(std::slice::from_ref(&current)).map_err(|e| taken(e, waited))?[0] {
            false => 0,
            true => {
                let v = c.get(&current, timeout).map_err(|e| taken(e, waited))?;
                let v = String::from_utf8_lossy(&v).into_owned();
                v.parse().with_context(|| format!("store key {current} holds {v:?}: expected an attempt number"))?
            }
        };
        let pre = format!("{run_id}/attempt-{k}");
        // (this node's claim on the attempt's meeting, and how the attempt ended)
        let keys = [format!("{pre}/agents/claims/{node}"), format!("{pre}/failed")]
            .into_iter()
            .chain(["failed-permanently", "signal"].map(|k| format!("{pre}/{k}")))
            .collect::<Vec<_>>();
        // (the group's end, which this agent waited for: said with its node rank taken in it)
        let ended = |why: String| Err(taken(anyhow::anyhow!("{run_id}: {why}: not joining"), waited));
        match c.check(&keys).map_err(|e| taken(e, waited))?[..] {
            // (a stopped group is not joined, whether or not this node's claim is there)
            [_, _, _, true] => return ended(format!("the group was stopped by a signal (attempt {k})")),
            [false, false, ..] => return Ok(k),
            [_, true, true, _] => return ended(format!("attempt {k} failed for good (a permanent failure)")),
            [_, true, false, _] if k >= max_restarts => {
                return ended(format!("attempt {k} failed with no restarts left (--max-restarts {max_restarts})"));
            }
            [_, true, false, _] => return Ok(k + 1),
            _ => {}
        }
        if waited.is_none() {
            // (told to the agents waiting for a missing node: a duplicated --node-rank is why, often)
            let host = crate::env::hostname().unwrap_or_else(|| "?".into());
            c.set(&waiting_key(&pre, node), host.as_bytes())?;
            console_err!(
                "[launch] node {node} already joined attempt {k} (this node's previous agent, lost, or another \
                 agent with --node-rank {node}): waiting for that attempt to end to join the restart"
            );
        } else if progress.due() {
            console_err!("[launch] still waiting for attempt {k} to end ({})", progress.so_far());
        }
        waited = Some(k);
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
/// values, on every node. The wait says every 30 s which nodes are missing and what the store refused
/// (a wrong token, another run id); `Err(nodes)` inside: those nodes of an elastic round never posted
/// their settings within `timeout` (a fixed group's agent fails then, naming them and the refusals).
/// An agent that leaves meanwhile, signalled, posts who it is under one of `stops` ([`tell_leaving`]):
/// the wait ends with [`MeetingStopped`](crate::store::MeetingStopped) naming it.
pub(super) fn agree_on_settings(
    mut client: StoreClient,
    a: &LaunchArgs,
    prefix: &str,
    g: Group,
    hosting: bool,
    timeout: Duration,
    stops: Vec<String>,
) -> JoinHandle<Result<(StoreClient, Agreed)>> {
    let fixed = !matches!(a.nnodes, Some(Nodes::Elastic { .. }));
    let mine = settings_line(a, g.nnodes);
    let (prefix, node, nnodes) = (prefix.to_string(), g.node_rank, g.nnodes);
    tokio::task::spawn_blocking(move || {
        client.set(&format!("{prefix}/{node}"), mine.as_bytes())?;
        // (a second agent of one node rank, told to the others: a lost node's replacement, or a
        // --node-rank given twice, often while another is given to none)
        if fixed && client.add(&format!("{prefix}/posted/{node}"), 1)? > 1 {
            let host = crate::env::hostname().unwrap_or_else(|| "?".into());
            client.set(&format!("{prefix}/{}/{node}", crate::store::STARTED_AGAIN), host.as_bytes())?;
        }
        let mut keys: Vec<String> = (0..nnodes).map(|n| format!("{prefix}/{n}")).collect();
        keys.extend(stops.iter().cloned());
        let mut theirs: Vec<Option<String>> = vec![None; nnodes];
        let t0 = Instant::now();
        let mut progress = Progress::start(timeout, "--rdzv-timeout-s");
        let missing = |theirs: &[Option<String>]| -> Vec<String> {
            (0..nnodes).filter(|&n| theirs[n].is_none()).map(|n| n.to_string()).collect()
        };
        loop {
            let present = client.check(&keys)?;
            client.check_left(&stops, &present[nnodes..])?;
            for (n, k) in keys.iter().take(nnodes).enumerate() {
                if present[n] && theirs[n].is_none() {
                    theirs[n] = Some(String::from_utf8_lossy(&client.get(k, timeout)?).into_owned());
                }
            }
            let differ: Vec<String> = (theirs.iter().enumerate())
                .filter_map(|(n, t)| t.as_ref().filter(|t| **t != mine).map(|t| format!("node {n} has {t}")))
                .collect();
            if !differ.is_empty() {
                let flags = differing_flags(&mine, theirs.iter().flatten());
                let msg = format!(
                    "the agents disagree: node {node} has {mine}, {}; start every node with the same {flags}",
                    differ.join(", ")
                );
                post_disagreement(&mut client, &prefix, &msg)?;
                stay_until_read(&mut client, &prefix, hosting, nnodes)?;
                return Err(Misconfigured(msg).into());
            }
            if theirs.iter().all(Option::is_some) {
                return Ok((client, Ok(())));
            }
            if t0.elapsed() >= timeout {
                if fixed {
                    let refused = client.refusals().unwrap_or_default();
                    let missing = missing(&theirs);
                    let never = never_arrived(&prefix, "node rank", &missing, nnodes, timeout, START_THERE, &refused);
                    let posted = posted_clause(&mut client, &prefix, timeout)?;
                    bail!("{never}{}{posted}", client.started_again(&prefix, nnodes));
                }
                let missing = (0..nnodes).filter(|&n| theirs[n].is_none()).collect();
                return Ok((client, Err(missing)));
            }
            if progress.due() {
                let again = if fixed { client.started_again(&prefix, nnodes) } else { String::new() };
                let posted = posted_clause(&mut client, &prefix, timeout)?;
                console_err!(
                    "[launch] waiting for node ranks [{}] of {nnodes} ({}){}{again}{posted}",
                    missing(&theirs).join(", "),
                    progress.so_far(),
                    refused_clause(&client.refusals().unwrap_or_default()),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Tell the other agents of a fixed group that this one, signalled while they met (for their settings or
/// an attempt), leaves: `what` (`node 1 (SIGTERM)`) under `key`, the attempt's `signal`, on a
/// connection of its own (the agent's is held by the wait the signal cut short). Their meeting ends
/// within [`STOP_POLL`](crate::store::STOP_POLL) ([`MeetingStopped`](crate::store::MeetingStopped))
/// instead of waiting out the rendezvous timeout or forming a group without this node, and an agent
/// replacing a lost node does not join. Best effort, within 3 s; the store's host then stays
/// [`STOP_READ`], for the others to read it before the store goes.
pub(super) async fn tell_leaving(addr: &str, token: &str, who: &str, key: String, what: String, hosting: bool) {
    let (addr, token, who) = (addr.to_string(), token.to_string(), who.to_string());
    let post = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut c = StoreClient::connect(&addr, &token, &who, Duration::from_secs(2))?;
        c.set_reply_timeout(Duration::from_secs(1));
        c.set(&key, what.as_bytes())
    });
    match tokio::time::timeout(Duration::from_secs(3), post).await {
        Ok(Ok(Ok(()))) => {
            if hosting {
                tokio::time::sleep(STOP_READ).await;
            }
        }
        Ok(Ok(Err(e))) => {
            console_err!("[launch] could not tell the other agents (they find out at their timeout): {e:#}")
        }
        _ => console_err!("[launch] could not tell the other agents in 3 s (they find out at their timeout)"),
    }
}

/// The settings every agent of a group must share, as [`agree_on_settings`] compares them: a fixed
/// group's `nnodes`, or the elastic range; the ranks per node; the restarts; and the exit code a
/// scheduler reads for a preemption (nodes of one job that stopped alike must not report it as both
/// preempted and succeeded).
pub(super) fn settings_line(a: &LaunchArgs, nnodes: usize) -> String {
    let nodes = match a.nnodes {
        Some(Nodes::Elastic { min, max }) => format!("{min}:{max}"),
        _ => nnodes.to_string(),
    };
    format!(
        "--nnodes {nodes} --nproc-per-node {} --max-restarts {} --preempted-exit-code {}",
        a.nproc_per_node, a.max_restarts, a.preempted_exit_code
    )
}

/// The flags of [`settings_line`]s that differ between `mine` and any of `theirs`: `--max-restarts` (or
/// `--nnodes and --max-restarts`), the ones to look at in lines that are otherwise alike.
fn differing_flags<'a>(mine: &str, theirs: impl Iterator<Item = &'a String>) -> String {
    let pairs = |line: &str| -> Vec<(String, String)> {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.chunks(2).map(|p| (p[0].to_string(), p.get(1).copied().unwrap_or("").to_string())).collect()
    };
    let mine = pairs(mine);
    let mut flags: Vec<String> = Vec::new();
    for line in theirs {
        for (flag, value) in pairs(line) {
            let differs = mine.iter().find(|(f, _)| *f == flag).is_none_or(|(_, v)| *v != value);
            if differs && !flags.contains(&flag) {
                flags.push(flag);
            }
        }
    }
    match &flags[..] {
        [] => "settings".to_string(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// What [`agree_on_settings`] came to: `Err(nodes)`, the nodes that never posted their settings.
pub(super) type Agreed = Result<(), Vec<usize>>;

/// The agents' command lines do not fit together (nodes that disagree on the group, two agents with
/// one node rank): like a bad command line, the agent exits 2, which no retry mends.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Misconfigured(pub String);

/// How long a node whose agent neither watches nor stops its ranks (its counter still: it moves all
/// through `watch`, a stop's grace included) nor said how they ended may stay silent before an agent
/// whose ranks finished takes it for lost.
const NODE_SILENCE: Duration = Duration::from_secs(10);

/// [`signalled_node`] where a node's signal is posted under `key`; `None` where none is (or the store
/// does not say).
pub(super) fn signalled(c: &mut StoreClient, key: &str) -> Option<String> {
    let posted = c.check(&[key.to_string()]).ok()?.first().copied().unwrap_or(false);
    posted.then(|| signalled_node(c, key))
}

/// Which node's signal stopped the group, as its agent posted it under `key` (`node 1 (SIGTERM)`);
/// "another node" where the store does not say (an agent of an earlier build posted the number alone).
pub(super) fn signalled_node(c: &mut StoreClient, key: &str) -> String {
    match c.get(key, Duration::from_secs(2)).map(|v| String::from_utf8_lossy(&v).into_owned()) {
        Ok(v) if v.starts_with("node ") => v,
        _ => "another node".to_string(),
    }
}

/// For an agent whose ranks all succeeded: how the group's attempt ended. The agent marks its node
/// (`PREFIX/succeeded/NODE`) and waits until every node's ranks succeeded (or their agent left:
/// `PREFIX/out/NODE`), or the group failed (it then joins the restart, or stops with the group's code),
/// or was signalled. A node that is still running keeps this agent waiting as long as its agent
/// watches or stops its ranks (its counter moves); one silent for [`NODE_SILENCE`] is lost, which
/// fails the attempt. A signal meanwhile stops the group (through the store) and this agent with 0:
/// its ranks finished.
pub(super) async fn group_outcome(
    client: &mut StoreClient,
    prefix: &str,
    g: Group,
    elastic_member: bool,
    signals: &mut Signals,
) -> Outcome {
    let node = g.node_rank;
    post(client, &format!("{prefix}/succeeded/{node}"), "1").await;
    let (failed, signal, permanent) =
        (format!("{prefix}/failed"), format!("{prefix}/signal"), format!("{prefix}/failed-permanently"));
    let mut keys = vec![failed.clone(), signal.clone()];
    keys.extend((0..g.nnodes).flat_map(|n| [format!("{prefix}/succeeded/{n}"), format!("{prefix}/out/{n}")]));
    // each node's counter, and when it last moved
    let mut beats: Vec<(i64, Instant)> = vec![(-1, Instant::now()); g.nnodes];
    let (t0, mut said) = (Instant::now(), false);
    loop {
        let present = match client.check(&keys) {
            Ok(p) => p,
            Err(e) => {
                let report = format!(
                    "the store (node 0's agent) stopped answering while this node waited for the others' ranks \
                     to end: {e:#}"
                );
                return Outcome::Failed { report, permanent: None, local: None, node: (!elastic_member).then_some(0) };
            }
        };
        // (a signal beats a failure, as in the watch: a node's stop fails the others' ranks; a permanent
        // failure stays one)
        let permanent_posted = present[0] && client.check(std::slice::from_ref(&permanent)).is_ok_and(|p| p[0]);
        if present[1] && !permanent_posted {
            let who = signalled_node(client, &signal);
            console_err!("[launch] {who} was signalled; the group stops (this node's ranks had finished)");
            return Outcome::Stopped(0);
        }
        if present[0] {
            let (report, permanent, node) = other_failure(client, &failed, &permanent);
            let report = format!("another node: {report}");
            return Outcome::Failed { report, permanent, local: None, node };
        }
        let pending: Vec<usize> = (0..g.nnodes).filter(|n| !present[2 + 2 * n] && !present[3 + 2 * n]).collect();
        if pending.is_empty() {
            if said {
                console_err!("[launch] every node's ranks finished");
            }
            return Outcome::Succeeded;
        }
        let mut lost = Vec::new();
        for &n in &pending {
            let Ok(v) = client.add(&poller::beat_key(prefix, n), 0) else { continue };
            if v != beats[n].0 {
                beats[n] = (v, Instant::now());
            } else if beats[n].1.elapsed() >= NODE_SILENCE {
                lost.push(n);
            }
        }
        if !lost.is_empty() {
            let nodes: Vec<String> = lost.iter().map(usize::to_string).collect();
            let report = format!(
                "nodes [{}]: their agents were lost (no sign of them for {} s) while their ranks ran; this \
                 node's ranks had finished",
                nodes.join(", "),
                NODE_SILENCE.as_secs()
            );
            let (report, node) = watch::post_first(client, &failed, report, (lost.len() == 1).then(|| lost[0])).await;
            return Outcome::Failed { report, permanent: None, local: None, node };
        }
        if !said && t0.elapsed() >= Duration::from_secs(1) {
            let nodes: Vec<String> = pending.iter().map(usize::to_string).collect();
            console_err!(
                "[launch] this node's ranks finished; waiting for the ranks of nodes [{}] (the group may yet fail \
                 and restart)",
                nodes.join(", ")
            );
            said = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            got = signals.next() => {
                console_err!(
                    "[launch] got {} while waiting for the other nodes' ranks (this node's finished); stopping the group",
                    signal_name(got)
                );
                // (as a signal to a watching agent: an elastic group's member leaves alone)
                let (key, what) = match elastic_member && !signals.timed_out() {
                    true => (format!("{prefix}/left"), format!("node {node} ({})", signal_name(got))),
                    false => {
                        let what = if signals.timed_out() { "--time-limit" } else { signal_name(got) };
                        (signal.clone(), format!("node {node} ({what})"))
                    }
                };
                post(client, &key, &what).await;
                if key == signal {
                    // (its ranks had finished: as cleanly stopped as checkpointed, for stopped_by_another)
                    post(client, &super::watch::signal_outcome_key(prefix, node), "0").await;
                }
                return Outcome::Stopped(0);
            }
        }
    }
}

/// An agent that found a disagreement: the one hosting the store stays until every node has read the
/// settings (or 5 s), so each reports the disagreement rather than a vanished store.
fn stay_until_read(client: &mut StoreClient, prefix: &str, hosting: bool, nnodes: usize) -> Result<()> {
    client.add(&format!("{prefix}/read"), 1)?;
    let t1 = Instant::now();
    while hosting && client.add(&format!("{prefix}/read"), 0)? < nnodes as i64 && t1.elapsed().as_secs() < 5 {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Leaves `msg`, an agent's disagreement with the others' settings, in the store for the agents that
/// cannot see it themselves (those whose `--nnodes` does not reach the node that disagreed).
fn post_disagreement(client: &mut StoreClient, prefix: &str, msg: &str) -> Result<()> {
    let slot = client.add(&format!("{prefix}/disagreed/slots"), 1)? - 1;
    client.set(&format!("{prefix}/disagreed/{slot}"), msg.as_bytes())?;
    client.add(&format!("{prefix}/disagreed/posted"), 1)?;
    Ok(())
}

/// An agent that disagreed where this one cannot see it (one of a node rank past this one's --nnodes)
/// and left word of it ([`post_disagreement`]), as a clause for this one's waiting lines and timeout: said
/// while it waits rather than a reason to stop, for the nodes it waits for may still come and form the
/// group. Empty without one.
fn posted_clause(client: &mut StoreClient, prefix: &str, timeout: Duration) -> Result<String> {
    Ok(match disagreement_posted(client, prefix, timeout)? {
        Some(said) => format!("; meanwhile an agent with other settings came and left: {said}"),
        None => String::new(),
    })
}

/// The first disagreement another agent left ([`post_disagreement`]).
fn disagreement_posted(client: &mut StoreClient, prefix: &str, timeout: Duration) -> Result<Option<String>> {
    if client.add(&format!("{prefix}/disagreed/posted"), 0)? == 0 {
        return Ok(None);
    }
    let slots = client.add(&format!("{prefix}/disagreed/slots"), 0)?;
    let keys: Vec<String> = (0..slots).map(|k| format!("{prefix}/disagreed/{k}")).collect();
    let present = client.check(&keys)?;
    let Some(key) = keys.iter().zip(present).find_map(|(k, there)| there.then_some(k)) else { return Ok(None) };
    Ok(Some(String::from_utf8_lossy(&client.get(key, timeout)?).into_owned()))
}

/// A meeting's error `e` with what `ended` ([`ended_nodes`]) says of the missing nodes; a timeout stays
/// one ([`NeverArrived`]: the failure record names its missing node).
pub(super) fn with_ended(e: anyhow::Error, ended: &[String]) -> anyhow::Error {
    let more = ended.join("; ");
    match e.downcast::<crate::store::NeverArrived>() {
        Ok(n) => anyhow::Error::new(crate::store::NeverArrived { text: format!("{}; {more}", n.text), ..n }),
        Err(e) => anyhow::anyhow!("{e:#}; {more}"),
    }
}

/// Nodes among `0..nnodes` that never arrived at attempt `attempt`'s meeting but had ended an earlier
/// attempt (their agent exited): `node 1 had ended: its agent exited with code 0 after attempt 0 (its
/// ranks had finished)`, for the rendezvous timeout.
pub(super) fn ended_nodes(c: &mut StoreClient, run_id: &str, attempt: u32, nnodes: usize) -> Vec<String> {
    let pre = format!("{run_id}/attempt-{attempt}/agents");
    let arrived = c.check(&(0..nnodes).map(|n| format!("{pre}/rank/{n}")).collect::<Vec<_>>()).unwrap_or_default();
    let mut out = Vec::new();
    for n in (0..nnodes).filter(|&n| !arrived.get(n).copied().unwrap_or(true)) {
        for k in (0..attempt).rev() {
            let key = format!("{run_id}/attempt-{k}/out/{n}");
            if c.check(std::slice::from_ref(&key)).ok() != Some(vec![true]) {
                continue;
            }
            let code = c.get(&key, Duration::from_secs(1)).map(|v| String::from_utf8_lossy(&v).into_owned());
            let done = c.check(&[format!("{run_id}/attempt-{k}/succeeded/{n}")]).ok() == Some(vec![true]);
            out.push(format!(
                "node {n} had ended: its agent exited with code {} after attempt {k}{}",
                code.unwrap_or_else(|_| "?".into()),
                if done { " (its ranks had finished)" } else { "" }
            ));
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreServer;

    /// The store listens in the family `--rdzv` is reached by: a name that resolves to IPv6 addresses
    /// alone (an IPv6-only cluster's) gets `::`, where an IPv4 socket would refuse every agent.
    #[test]
    fn the_store_listens_in_the_family_its_name_resolves_to() {
        let (v4, v6): (std::net::SocketAddr, std::net::SocketAddr) =
            ("10.0.0.1:29400".parse().unwrap(), "[fd00::1]:29400".parse().unwrap());
        assert_eq!(bind_host(2, "pod0.svc", Some(&[v6])), "::");
        assert_eq!(bind_host(2, "pod0.svc", Some(&[v6, v4])), "0.0.0.0");
        assert_eq!(bind_host(2, "pod0.svc", Some(&[v4])), "0.0.0.0");
        assert_eq!(bind_host(2, "pod0.svc", None), "0.0.0.0", "not resolving yet");
        assert_eq!(bind_host(2, "fd00::1", Some(&[v6])), "::");
        assert_eq!(bind_host(1, "localhost", Some(&[v4])), "localhost", "one node: that host alone");
    }

    /// An agent of a fixed group at an elastic group's store is refused at once, naming both settings,
    /// and so is the reverse; the store's host is never refused, whoever came first.
    #[test]
    fn an_agent_of_the_other_kind_of_group_is_refused() {
        let server = StoreServer::spawn("127.0.0.1:0".parse().unwrap(), "t".into()).unwrap();
        let addr = server.addr.to_string();
        let client = || StoreClient::connect(&addr, "t", "test", Duration::from_secs(5)).unwrap();
        let (elastic, fixed) = ("--nnodes 1:2 --nproc-per-node 1", "--nnodes 2 --nproc-per-node 1");
        // (a stray agent that connects before the host has said: it waits for the host's word)
        let mut stray = client();
        let early = std::thread::spawn(move || check_kind(&mut stray, "run", false, fixed, false));
        std::thread::sleep(Duration::from_millis(300));
        check_kind(&mut client(), "run", true, elastic, true).unwrap();
        let err = early.join().unwrap().unwrap_err();
        assert!(err.downcast_ref::<Misconfigured>().is_some(), "{err:#}");
        let want = "run: the store serves an elastic group (--nnodes 1:2 --nproc-per-node 1); this agent has \
                    --nnodes 2 --nproc-per-node 1: not joining (start every agent with the group's --nnodes MIN:MAX)";
        assert_eq!(format!("{err:#}"), want);
        check_kind(&mut client(), "run", true, elastic, false).unwrap();

        // another run id at the same store: a fixed group of its own, whose elastic agent is refused
        check_kind(&mut client(), "other", false, fixed, true).unwrap();
        let err = format!("{:#}", check_kind(&mut client(), "other", true, elastic, false).unwrap_err());
        assert!(err.starts_with("other: the store serves a fixed group (--nnodes 2 --nproc-per-node 1)"), "{err}");
        check_kind(&mut client(), "other", false, fixed, false).unwrap();
    }

    /// A restart's rendezvous that times out names a missing node that had ended an earlier attempt
    /// (its ranks finished, its agent exited 0) rather than only `start infinity launch there`.
    #[test]
    fn a_node_that_ended_an_earlier_attempt_is_named_as_such() {
        let server = StoreServer::spawn("127.0.0.1:0".parse().unwrap(), "t".into()).unwrap();
        let mut c = StoreClient::connect(&server.addr.to_string(), "t", "test", Duration::from_secs(5)).unwrap();
        // attempt 1's meeting: node 0 arrived, nodes 1 and 2 did not; node 1 had left after attempt 0
        c.set("run/attempt-1/agents/rank/0", b"1").unwrap();
        c.set("run/attempt-0/succeeded/1", b"1").unwrap();
        c.set("run/attempt-0/out/1", b"0").unwrap();
        let ended = ended_nodes(&mut c, "run", 1, 3);
        assert_eq!(ended, ["node 1 had ended: its agent exited with code 0 after attempt 0 (its ranks had finished)"]);
        assert!(ended_nodes(&mut c, "run", 0, 3).is_empty());
    }

    /// The flags whose values differ between agents' settings lines are named, each once.
    #[test]
    fn differing_flags_are_named() {
        let line = |nodes: u32, restarts: u32| {
            format!("--nnodes {nodes} --nproc-per-node 1 --max-restarts {restarts} --preempted-exit-code 0")
        };
        let theirs = [line(2, 3), line(2, 3)];
        assert_eq!(super::differing_flags(&line(2, 2), theirs.iter()), "--max-restarts");
        let theirs = [line(3, 3), line(2, 4)];
        assert_eq!(super::differing_flags(&line(2, 2), theirs.iter()), "--nnodes and --max-restarts");
    }

    /// A timeout with the ended nodes said stays a timeout, its missing nodes kept.
    #[test]
    fn a_timeout_with_ended_nodes_keeps_its_missing_nodes() {
        let e = anyhow::Error::new(crate::store::NeverArrived { missing: vec![1], text: "never arrived".into() });
        let e = super::with_ended(e, &["node 1 had ended".to_string()]);
        let n = e.downcast_ref::<crate::store::NeverArrived>().expect("still a timeout");
        assert_eq!((n.missing.as_slice(), e.to_string().as_str()), (&[1][..], "never arrived; node 1 had ended"));
        let other = super::with_ended(anyhow::anyhow!("refused"), &["node 1 had ended".to_string()]);
        assert_eq!(other.to_string(), "refused; node 1 had ended");
    }
}
