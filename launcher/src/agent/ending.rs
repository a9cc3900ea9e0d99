//! How an agent leaves an attempt: waiting for the other nodes' ranks once its own finished, telling the
//! others when a signal stops it (and which node's stopped the group), and the exit that waits for them.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::elastic::{Group, Rounds};
use super::group::waiting_key;
use super::poller;
use super::signals::{signal_name, Signals};
use super::watch::{self, other_failure, post};
use super::Outcome;
use crate::store::{StoreClient, STOP_READ};

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
/// duplicated `--node-rank`, or a lost node's replacement), as
/// [`first_attempt`](super::group::first_attempt) posts it.
fn waited_for(client: &mut StoreClient, prefix: &str, nnodes: usize) -> bool {
    let keys: Vec<String> = (0..nnodes).map(|n| waiting_key(prefix, n)).collect();
    client.check(&keys).is_ok_and(|present| present.contains(&true))
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
