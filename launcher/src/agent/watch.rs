//! Watching one attempt of the group: its local ranks, the other nodes' failures and signals posted in
//! the store, and (elastic groups) agents waiting to join. The first failure posted is the root cause.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::elastic::Group;
use super::ending::{signalled, signalled_node};
use super::failure;
use super::poller::{agent_key, agent_name, beat_key, Heartbeat, Poller};
use super::ranks::{describe, drain, futures_select_all, signal_origin, stop_group, Rank};
use super::signals::{forwarded, signal_name, Signals};
use super::verdict;
use super::{LaunchArgs, Outcome, Plan};
use crate::comm::CommError;
use crate::env::{is_permanent_failure, STOPPED_EARLY};
use crate::store::StoreClient;

/// How an elastic group's membership changes while it runs: a node leaves (its agent got a stop
/// signal: only that node stops, unless it hosts the store, which would go with it) or, below MAX
/// nodes, an agent waits to join (`grow`, the next round's `joined`). Either makes the others
/// checkpoint, stop and regroup, spending no restart.
pub(super) struct Membership {
    pub grow: Option<String>,
    pub hosting: bool,
}

// Indices into the keys an agent polls (an elastic group below MAX nodes adds `grow` after `left`).
const FAILED: usize = 0;
const SIGNAL: usize = 1;
const PERMANENT: usize = 2;
const LEFT: usize = 3;

/// Watch the group until it succeeds, fails, or a signal stops it (`elastic`: see [`Membership`]).
#[allow(clippy::too_many_arguments)]
pub(super) async fn watch(
    mut ranks: Vec<Rank>,
    a: &LaunchArgs,
    p: &Plan,
    g: Group,
    store_addr: &str,
    prefix: &str,
    elastic: Option<Membership>,
    signals: &mut Signals,
) -> Result<Outcome> {
    let mut exited: Vec<Option<ExitStatus>> = vec![None; ranks.len()];
    let attempt_dir = p.attempt_dir(&a.log_dir, g.round);
    let live = |ranks: &[Rank], exited: &[Option<ExitStatus>]| -> Vec<(usize, i32)> {
        ranks.iter().zip(exited).filter(|(_, e)| e.is_none()).map(|(r, _)| (r.global, r.pid)).collect()
    };
    // another node's failure or signal is posted in the store; a separate connection polls for it
    let mut poller = Poller::new(store_addr, &p.token, &format!("agent {} watch", g.node_rank));
    // this node's counter moves all through the watch, the ranks' stop (up to the grace and the drain)
    // and the look for lost nodes included: an agent whose ranks finished first tells a node still
    // running or stopping (beating) from a lost one (ending.rs, group_outcome)
    let _beat =
        Heartbeat::start(store_addr, &p.token, &format!("agent {} beat", g.node_rank), beat_key(prefix, g.node_rank));
    poller.post(&agent_key(prefix, g.node_rank), &agent_name()).await;
    let mut keys: Vec<String> =
        ["failed", "signal", verdict::PERMANENT, "left"].iter().map(|k| format!("{prefix}/{k}")).collect();
    keys.extend(elastic.as_ref().and_then(|m| m.grow.clone()));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    // no answer from the store for STORE_LOSS means its host is gone (or frozen)
    let (mut answered, mut store_err) = (Instant::now(), None::<anyhow::Error>);
    // the node whose loss a silent store means (an elastic group's host has no fixed node rank)
    let store_node = elastic.is_none().then_some(0);
    let host = store_host(store_node);
    loop {
        let running: Vec<usize> = (0..ranks.len()).filter(|&i| exited[i].is_none()).collect();
        if running.is_empty() {
            // (whatever the ranks left running goes with the attempt; their last output is read)
            stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM, None).await;
            return Ok(match poller.client().await {
                Ok(c) => ended_cleanly(c, &keys, prefix, g, store_node).await,
                Err(e) => {
                    let report = format!("the store ({host}) stopped answering as the ranks ended: {e:#}");
                    Outcome::Failed { report, permanent: None, local: None, node: store_node }
                }
            });
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
                // (its run time ends here, not once its output has been read)
                let seconds = ranks[i].started.elapsed().as_secs_f64();
                exited[i] = Some(status);
                // (reaped: its group's id is free once the group is empty, and recorded gone then)
                ranks[i].group_alive();
                if !status.success() {
                    // what the failed rank left running (a wrapper's children) stops with it, so its
                    // pipes close and its last lines are read at once
                    ranks[i].signal_group(libc::SIGTERM);
                    drain(std::slice::from_mut(&mut ranks[i]), Duration::from_secs(1)).await;
                    // a rank whose peer here closed the connection failed of that peer's failure, which
                    // its report says nothing of: the peer's is the report
                    let (node_rank, nproc) = (g.node_rank, a.nproc_per_node);
                    let (i, status, seconds) =
                        failed_peer_here(&mut ranks, &mut exited, i, (node_rank, nproc)).await.unwrap_or((i, status, seconds));
                    // (a store that does not answer leaves the report this node's)
                    let mut store = poller.client().await.ok();
                    // a node signalled meanwhile (its ranks stopping broke this one's connections): the
                    // group stops, as every node sees it, not a failure that restarts into a meeting
                    // that node never joins (a permanent failure stays one: a restart would repeat it)
                    let own_permanent = status.code().is_some_and(|c| is_permanent_failure(Some(c)));
                    let signalled_now =
                        store.as_mut().filter(|_| !own_permanent).and_then(|c| signalled(c, &keys[SIGNAL]));
                    if let Some(who) = signalled_now {
                        console_err!(
                            "[launch] {who} was signalled as rank {} exited with {}; the group stops",
                            ranks[i].global,
                            describe(&status)
                        );
                        // (a rank already failed: the others cannot checkpoint either)
                        let code = stop_group(&mut ranks, &mut exited, a.failure_grace_s(), libc::SIGTERM, None).await;
                        return Ok(Outcome::Stopped(stopped_by_another(code, store.as_deref_mut(), prefix, g).await));
                    }
                    // a node leaving or joining may break the ranks' connections before this agent
                    // polled the news: that is a regroup, not a failure
                    let regroup = elastic.as_ref().and(store.as_mut()).and_then(|c| changing(c, &keys));
                    if let Some(why) = regroup {
                        console_err!("[launch] {why}; the ranks stop to regroup");
                        // (a rank already failed of it: the others cannot checkpoint either)
                        stop_group(&mut ranks, &mut exited, a.failure_grace_s(), libc::SIGTERM, None).await;
                        return Ok(Outcome::Regroup(why));
                    }
                    let r = &ranks[i];
                    let lines: Vec<String> = r.tail.lock().unwrap().iter().cloned().collect();
                    let last = match lines.is_empty() {
                        true => " (it printed nothing)".to_string(),
                        false => format!("; its last lines:\n    {}", lines.join("\n    ")),
                    };
                    // (several nodes: the host too, for the other nodes' consoles, which show this report)
                    let on_host = match (g.nnodes > 1, crate::env::hostname()) {
                        (true, Some(h)) => format!(" on {h}"),
                        _ => String::new(),
                    };
                    let mut report = format!(
                        "rank {} (node {}{on_host}, pid {}) exited with {} after {seconds:.1} s{}{last}",
                        r.global,
                        g.node_rank,
                        r.pid,
                        describe(&status),
                        signal_origin(&status)
                    );
                    let (global, nproc) = (r.global, a.nproc_per_node);
                    let failed = failure::RankFailure::new(global, r.pid, &status, seconds, lines);
                    let mut node = Some(g.node_rank);
                    // a collective that timed out names the rank it waited for: that one is the root cause
                    // (where it is a rank here that timed out too, the one it waited for, and so on)
                    if let Some((peer, _)) = failed.silent_peer(nproc) {
                        let chain = silent_beyond_here(&ranks, peer, (g.node_rank, nproc)).await;
                        let (world, peer) = (g.nnodes * nproc, chain[chain.len() - 1]);
                        let peer_node = peer / nproc.max(1);
                        report = failure::blame_silent_peer(&chain, peer_node, global, world, &report);
                        node = Some(peer_node);
                    } else if let Some((peer, peer_node)) =
                        failed.closed_peer(a.nproc_per_node).filter(|&(_, n)| n != g.node_rank)
                    {
                        // a rank on another node closed the connection: its node reports its own failure
                        // first, unless that node is gone with its agent, which then is the root cause
                        if let Some(c) = store.as_mut() {
                            if lost_without_report(c, (prefix, &keys[FAILED]), peer_node, CLOSED_PEER_PATIENCE).await {
                                report = failure::blame_closed_peer(peer, peer_node, &report);
                                node = Some(peer_node);
                            }
                        }
                    }
                    let local = Some(failed);
                    // the group's first failure is its root cause (a rank on another node may fail
                    // later, of the broken connection): the first report posted stays
                    // (a permanent failure is marked first, its rank before it: an agent that sees the
                    // report sees the mark)
                    let permanent = status.code().filter(|&c| is_permanent_failure(Some(c)));
                    if let Some(c) = store {
                        if let Some(code) = permanent {
                            post(c, &format!("{}/rank", keys[PERMANENT]), &global.to_string()).await;
                            post(c, &keys[PERMANENT], &code.to_string()).await;
                        }
                        (report, node) = post_first(c, &keys[FAILED], report, node).await;
                    }
                    if failure::timed_out(&report) {
                        failure::ask_for_flight_records(&attempt_dir, g.node_rank, &live(&ranks, &exited), (&p.run_id, g.round)).await;
                    }
                    stop_group(&mut ranks, &mut exited, a.failure_grace_s(), libc::SIGTERM, None).await;
                    return Ok(Outcome::Failed { report, permanent, local, node });
                }
            }
            got = signals.next() => {
                let sig = forwarded(got);
                let why = match signals.timed_out() {
                    true => "the time limit came".to_string(),
                    false => format!("got {}", signal_name(got)),
                };
                console_err!("[launch] {why}; forwarding {} to the ranks (they checkpoint and exit)", signal_name(sig));
                // a fixed group stops on every node; from an elastic one only this node leaves (but the
                // time limit is the job's: the whole group stops)
                let (key, what) = match elastic {
                    Some(Membership { hosting: false, .. }) if !signals.timed_out() => {
                        (LEFT, format!("node {} ({})", g.node_rank, signal_name(got)))
                    }
                    _ => {
                        let what = if signals.timed_out() { "--time-limit" } else { signal_name(got) };
                        (SIGNAL, format!("node {} ({what})", g.node_rank))
                    }
                };
                // the ranks hear of it at once, the other nodes as soon as the store answers
                // (a Ctrl-C again cuts the grace short; not after a scheduler's SIGTERM or the time limit)
                let hurry = match got == libc::SIGINT && !signals.timed_out() {
                    true => Some(&mut *signals),
                    false => None,
                };
                let (code, ()) = tokio::join!(
                    stop_group(&mut ranks, &mut exited, a.grace_s, sig, hurry),
                    poller.post(&keys[key], &what),
                );
                // (128 + the signal the agent got, as before the ranks start: SIGHUP is 129 either way)
                let code = if code == 128 + sig { 128 + got } else { code };
                // how this node's ranks stopped, for the nodes whose ranks failed of it (stopped_by_another)
                if key == SIGNAL {
                    poller.post(&signal_outcome_key(prefix, g.node_rank), &code.to_string()).await;
                }
                return Ok(Outcome::Stopped(code));
            }
            present = poller.answer() => {
                let present = match present {
                    Ok(p) => {
                        (answered, store_err) = (Instant::now(), None);
                        p
                    }
                    Err(e) => {
                        store_err = Some(e);
                        continue;
                    }
                };
                // (a signal beats a failure: a node's stop fails the others' ranks, and the group stops)
                if present[SIGNAL] {
                    let who = match poller.client().await {
                        Ok(c) => signalled_node(c, &keys[SIGNAL]),
                        Err(_) => "another node".to_string(),
                    };
                    console_err!("[launch] {who} was signalled; forwarding SIGTERM");
                    let code = stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM, None).await;
                    return Ok(Outcome::Stopped(stopped_by_another(code, poller.client().await.ok(), prefix, g).await));
                }
                if present[FAILED] {
                    let (report, permanent, node) = match poller.client().await {
                        Ok(c) => other_failure(c, &keys[FAILED], &keys[PERMANENT]),
                        Err(e) => (format!("(unreadable: {e:#})"), None, None),
                    };
                    if failure::timed_out(&report) {
                        failure::ask_for_flight_records(&attempt_dir, g.node_rank, &live(&ranks, &exited), (&p.run_id, g.round)).await;
                    }
                    stop_group(&mut ranks, &mut exited, a.failure_grace_s(), libc::SIGTERM, None).await;
                    let report = format!("another node: {report}");
                    return Ok(Outcome::Failed { report, permanent, local: None, node });
                }
                if let Some(why) = change(&present[LEFT..]) {
                    console_err!("[launch] {why}; the ranks checkpoint and stop to regroup");
                    stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM, None).await;
                    return Ok(Outcome::Regroup(why));
                }
            }
            _ = tick.tick() => {
                // an exited rank's group that emptied is recorded gone before its id can be reused
                for i in (0..ranks.len()).filter(|&i| exited[i].is_some()) {
                    ranks[i].group_alive();
                }
                if answered.elapsed() >= STORE_LOSS {
                    let why = store_err.as_ref().map_or_else(|| "no answer".to_string(), |e| format!("{e:#}"));
                    let report = format!(
                        "the store at {store_addr} ({host}) stopped answering for {} s: {why}",
                        STORE_LOSS.as_secs()
                    );
                    stop_group(&mut ranks, &mut exited, a.failure_grace_s(), libc::SIGTERM, None).await;
                    return Ok(Outcome::Failed { report, permanent: None, local: None, node: store_node });
                }
                poller.start(&keys);
            }
        }
    }
}

/// Another node's failure posted in the store (at `failed`; `permanent`: its mark): its report, its exit
/// code if a restart would repeat it, and the node it names (where known).
pub(super) fn other_failure(
    c: &mut StoreClient,
    failed: &str,
    permanent: &str,
) -> (String, Option<i32>, Option<usize>) {
    let report = match c.get(failed, Duration::from_secs(1)) {
        Ok(v) => String::from_utf8_lossy(&v).to_string(),
        Err(e) => format!("(unreadable: {e:#})"),
    };
    let node = failed_node(c, failed);
    let permanent = match c.check(&[permanent.to_string()]) {
        Ok(p) if p == [true] => super::verdict::read_permanent(c, permanent).map(|p| p.code),
        _ => None,
    };
    (report, permanent, node)
}

/// The node of the failure posted at `failed`, where its poster knew it.
fn failed_node(c: &mut StoreClient, failed: &str) -> Option<usize> {
    let key = format!("{failed}/node");
    match c.check(std::slice::from_ref(&key)) {
        Ok(p) if p == [true] => {
            c.get(&key, Duration::from_secs(1)).ok().and_then(|v| String::from_utf8_lossy(&v).parse().ok())
        }
        _ => None,
    }
}

/// How an elastic group's nodes are changing, if they are: a node left, or an agent waits to join.
fn changing(poller: &mut StoreClient, keys: &[String]) -> Option<&'static str> {
    poller.check(&keys[LEFT..]).ok().and_then(|p| change(&p))
}

/// The change that `[left, grow?]` (present or not) names.
fn change(left_grow: &[bool]) -> Option<&'static str> {
    match left_grow {
        [true, ..] => Some("a node leaves the group"),
        [false, true] => Some("an agent waits to join the group"),
        _ => None,
    }
}

/// Which agent hosts the store, in words: node 0's (`store_node` 0), or an elastic group's, whichever
/// agent is at `--rdzv` (no fixed node rank).
pub(super) fn store_host(store_node: Option<usize>) -> &'static str {
    match store_node {
        Some(_) => "node 0's agent",
        None => "the agent at --rdzv",
    }
}

/// How a group whose local ranks all exited 0 ended. Ranks also exit 0 after a stop signal (they
/// checkpoint first, marking `STOPPED_EARLY`): that is the group's end when an agent was signalled, a
/// regroup when an elastic group's nodes change, and otherwise a failure (an agent or its node was
/// lost, or a rank was signalled directly), which restarts from the checkpoint. So is a store that
/// no longer answers: its host waits for every agent before it exits.
async fn ended_cleanly(
    poller: &mut StoreClient,
    keys: &[String],
    prefix: &str,
    g: Group,
    store_node: Option<usize>,
) -> Outcome {
    let marker = format!("{prefix}/{STOPPED_EARLY}");
    let mut ask = vec![marker.clone()];
    ask.extend(keys[SIGNAL..].iter().cloned());
    let present = match poller.check(&ask) {
        Ok(p) => p,
        Err(e) => {
            let report = format!("the store ({}) stopped answering as the ranks ended: {e:#}", store_host(store_node));
            return Outcome::Failed { report, permanent: None, local: None, node: store_node };
        }
    };
    // [marker, signal, failed-permanently, left, grow?]: the ranks may stop for a change before this
    // agent's poll saw it, so the reason is read here too
    match (present[0], present[1], change(&present[3..])) {
        (false, ..) => Outcome::Succeeded,
        (true, true, _) => {
            // (the ranks learn of a signal among themselves, often before this agent polls the store)
            let who = signalled_node(poller, &keys[SIGNAL]);
            console_err!("[launch] {who} was signalled: the ranks checkpointed and stopped");
            Outcome::Stopped(0)
        }
        (true, false, Some(why)) => Outcome::Regroup(why),
        (true, false, None) => {
            let step = poller.get(&marker, Duration::from_secs(1)).map(|v| String::from_utf8_lossy(&v).into_owned());
            let lost = lost_nodes(poller, prefix, g).await;
            // (each with its machine, as its agent posted it)
            let named: Vec<String> = lost
                .iter()
                .map(|&n| match poller.get(&agent_key(prefix, n), Duration::from_millis(300)) {
                    Ok(who) => format!("{n} ({})", String::from_utf8_lossy(&who)),
                    Err(_) => n.to_string(),
                })
                .collect();
            let who = match lost.len() {
                0 => "an agent or its node was lost, or a rank was signalled directly".to_string(),
                1 => format!("the agent of node {} or the node was lost (it stopped watching its ranks)", named[0]),
                _ => format!("the agents of nodes [{}] or the nodes were lost", named.join(", ")),
            };
            let report = format!(
                "the ranks checkpointed and stopped after step {} before the run's end, though no agent was \
                 signalled: {who}",
                step.unwrap_or_else(|_| "?".into())
            );
            let (report, node) = post_first(poller, &keys[FAILED], report, (lost.len() == 1).then(|| lost[0])).await;
            Outcome::Failed { report, permanent: None, local: None, node }
        }
    }
}

/// How long an agent whose ranks checkpointed and stopped with no agent signalled looks for the node
/// that was lost.
const LOST_WAIT: Duration = Duration::from_secs(3);

/// The nodes of the attempt whose agents are gone, for an agent whose ranks stopped early with no agent
/// signalled: it marks its own node (`PREFIX/stopped/NODE`), then, for up to [`LOST_WAIT`], counts a
/// node alive once it marks itself so (or its ranks succeeded, or its agent exited) or its watch counter
/// moves (its ranks are still stopping). The others are lost (or cut off from the store). None when
/// another agent posted the failure first (its report stands).
async fn lost_nodes(c: &mut StoreClient, prefix: &str, g: Group) -> Vec<usize> {
    post(c, &format!("{prefix}/stopped/{}", g.node_rank), "1").await;
    if c.check(&[format!("{prefix}/failed")]).ok() == Some(vec![true]) {
        return Vec::new();
    }
    let kinds = ["stopped", "succeeded", "out"];
    let marks: Vec<String> = (0..g.nnodes).flat_map(|n| kinds.map(|k| format!("{prefix}/{k}/{n}"))).collect();
    let (mut alive, mut first) = (vec![false; g.nnodes], vec![None::<i64>; g.nnodes]);
    alive[g.node_rank] = true;
    let t0 = Instant::now();
    loop {
        if let Ok(p) = c.check(&marks) {
            (0..g.nnodes).filter(|n| p[3 * n..3 * n + 3].contains(&true)).for_each(|n| alive[n] = true);
        }
        for n in 0..g.nnodes {
            if alive[n] {
                continue;
            }
            match (c.add(&beat_key(prefix, n), 0), first[n]) {
                (Ok(v), None) => first[n] = Some(v),
                (Ok(v), Some(f)) if v != f => alive[n] = true,
                _ => {}
            }
        }
        if alive.iter().all(|&a| a) || t0.elapsed() >= LOST_WAIT {
            return (0..g.nnodes).filter(|&n| !alive[n]).collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long the store may not answer before an agent gives its group up.
const STORE_LOSS: Duration = Duration::from_secs(10);

/// How long an agent whose rank lost a peer on another node watches that node's agent.
const CLOSED_PEER_PATIENCE: Duration = Duration::from_secs(3);

/// Whether node `peer` is lost with its agent: within `patience`, no failure is posted (at `failed`,
/// by any node) and its agent's heartbeat ([`beat_key`] under `prefix`) does not move. A node whose
/// agent beats is alive: its failure, signal or exit is its own to report. A store that does not
/// answer tells nothing: not lost (this node's report stands).
async fn lost_without_report(
    c: &mut StoreClient,
    (prefix, failed): (&str, &str),
    peer: usize,
    patience: Duration,
) -> bool {
    let t0 = std::time::Instant::now();
    let (claims, beat) = ([format!("{failed}/claims")], beat_key(prefix, peer));
    let Ok(first) = c.add(&beat, 0) else { return false };
    loop {
        let reported = c.check(&claims).map(|p| p.first() == Some(&true));
        let beating = c.add(&beat, 0).map(|v| v != first);
        match (reported, beating) {
            (Ok(false), Ok(false)) if t0.elapsed() >= patience => return true,
            (Ok(false), Ok(false)) => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => return false,
        }
    }
}

/// Posts `report` as the group's failure (with `node`, the node it names, where known) unless another
/// agent posted one first; returns the report that stands (`another node: …` when it is not ours) and
/// its node.
pub(super) async fn post_first(
    client: &mut StoreClient,
    key: &str,
    report: String,
    node: Option<usize>,
) -> (String, Option<usize>) {
    match client.add(&format!("{key}/claims"), 1) {
        Ok(1) => {
            // (the node first: an agent that reads the report finds it)
            if let Some(n) = node {
                post(client, &format!("{key}/node"), &n.to_string()).await;
            }
            post(client, key, &report).await;
            (report, node)
        }
        Ok(_) => match client.get(key, Duration::from_secs(5)) {
            Ok(first) if first == report.as_bytes() => (format!("another node and this one: {report}"), node),
            Ok(first) => (
                format!("another node: {}\n  (then here: {report})", String::from_utf8_lossy(&first)),
                failed_node(client, key),
            ),
            Err(_) => (report, node),
        },
        Err(e) => {
            console_err!("[launch] warning: store: posting {key}: {e:#}");
            (report, node)
        }
    }
}

pub(super) async fn post(client: &mut StoreClient, key: &str, value: &str) {
    if let Err(e) = client.set(key, value.as_bytes()) {
        console_err!("[launch] warning: store: posting {key}: {e:#}");
    }
}

/// The ranks a timeout leads to, the last the one to blame: `peer` (which a rank here timed out waiting
/// for), and where that is a rank here whose output says it timed out too (as it does within moments
/// when it waits in the ring for the rank before it; its lines looked at for up to 1 s), the one it
/// waited for, followed along this node's ranks, so that a frozen node's rank is blamed rather than the
/// rank here that the first report to arrive names. `[peer]` where it is elsewhere, or says no timeout.
/// The ranks are only read, not waited for: one still running (busy, not waiting) is asked for its
/// flight record after.
async fn silent_beyond_here(ranks: &[Rank], mut peer: usize, (node, nproc): (usize, usize)) -> Vec<usize> {
    let mut chain = vec![peer];
    for _ in 0..nproc {
        let Some(p) = peer.checked_sub(node * nproc).filter(|&p| p < nproc && p < ranks.len()) else { break };
        let waited_for = || ranks[p].tail.lock().unwrap().iter().rev().find_map(|l| CommError::timed_out_peer(l));
        let mut next = waited_for();
        let deadline = Instant::now() + Duration::from_secs(1);
        while next.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            next = waited_for();
        }
        match next {
            Some(next) if !chain.contains(&next) => {
                (peer, chain) = (next, [&chain[..], &[next]].concat());
            }
            _ => break,
        }
    }
    chain
}

/// The rank on this node (`node` of `nproc`-rank nodes) whose closed connection rank `i` reports in its
/// last lines, once it has failed too (waiting up to 3 s for it to exit), its output read: its exit
/// status and run time. `None` when `i` names none, or names a rank elsewhere or one that succeeds.
async fn failed_peer_here(
    ranks: &mut [Rank],
    exited: &mut [Option<ExitStatus>],
    i: usize,
    (node, nproc): (usize, usize),
) -> Option<(usize, ExitStatus, f64)> {
    let peer = ranks[i].tail.lock().unwrap().iter().rev().find_map(|l| CommError::closed_peer(l))?;
    let p = peer.checked_sub(node * nproc).filter(|&p| p < nproc && p != i && p < ranks.len())?;
    let status = match exited[p] {
        Some(s) => s,
        None => {
            let s = tokio::time::timeout(Duration::from_secs(3), ranks[p].child.wait()).await.ok()?.ok()?;
            exited[p] = Some(s);
            ranks[p].group_alive();
            s
        }
    };
    if status.success() {
        return None;
    }
    let seconds = ranks[p].started.elapsed().as_secs_f64();
    ranks[p].signal_group(libc::SIGTERM);
    drain(std::slice::from_mut(&mut ranks[p]), Duration::from_secs(1)).await;
    Some((p, status, seconds))
}

/// The key under which a signalled node's agent (node `node`) posts how its ranks stopped, in attempt
/// `prefix`: 0 where they checkpointed, 128 + N where they were killed at the end of the grace (the
/// code that node's agent exits with, before `--preempted-exit-code`).
pub(super) fn signal_outcome_key(prefix: &str, node: usize) -> String {
    format!("{prefix}/signal-outcome/{node}")
}

/// How long a node whose ranks failed of another node's stop waits for how that node's ranks stopped
/// (posted as they have: the failure here comes as they exit or are killed).
const SIGNAL_OUTCOME_WAIT: Duration = Duration::from_secs(10);

/// The exit code of a node whose ranks stopped because another node was signalled. A rank that failed
/// of it (its peer's connection closed: 1; a collective timed out: 86) failed as the group stopped:
/// after its checkpoint (a peer left first) or without one (the signalled node's ranks were killed at
/// the end of its grace). The signalled nodes' agents post which ([`signal_outcome_key`]): this node
/// exits as cleanly (0: `--preempted-exit-code`) or as killed (128 + N) as their ranks stopped (the
/// worst of those posted within a moment of the first: two nodes signalled at once), and with the
/// rank's failure where none says within [`SIGNAL_OUTCOME_WAIT`] (a scheduler that retries failures
/// resumes from the last checkpoint; 0 could end the job unsaved). A permanent failure's code, or a
/// rank killed by the signal (128 + it), stays.
async fn stopped_by_another(code: i32, store: Option<&mut StoreClient>, prefix: &str, g: Group) -> i32 {
    let failed_of_it = code > 0 && code < 128 && !is_permanent_failure(Some(code));
    let Some(c) = store.filter(|_| failed_of_it) else { return code };
    let others: Vec<String> =
        (0..g.nnodes).filter(|&n| n != g.node_rank).map(|n| signal_outcome_key(prefix, n)).collect();
    let (t0, mut first_seen) = (Instant::now(), None::<Instant>);
    loop {
        let Ok(present) = c.check(&others) else { return code };
        if present.contains(&true) {
            let seen = *first_seen.get_or_insert_with(Instant::now);
            if seen.elapsed() >= Duration::from_millis(500) || present.iter().all(|&p| p) {
                let read = |c: &mut StoreClient, k: &String| {
                    let v = c.get(k, Duration::from_secs(1)).ok()?;
                    String::from_utf8_lossy(&v).trim().parse::<i32>().ok()
                };
                let posted: Vec<i32> =
                    others.iter().zip(&present).filter(|(_, &p)| p).filter_map(|(k, _)| read(c, k)).collect();
                return match posted.iter().max() {
                    Some(&killed) if killed > 128 => killed,
                    Some(0) => 0,
                    _ => code,
                };
            }
        } else if t0.elapsed() >= SIGNAL_OUTCOME_WAIT {
            return code;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
