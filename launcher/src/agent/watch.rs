//! Watching one attempt of the group: its local ranks, the other nodes' failures and signals posted in
//! the store, and (elastic groups) agents waiting to join. The first failure posted is the root cause.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::elastic::Group;
use super::failure;
use super::ranks::{describe, futures_select_all, stop_group, Rank};
use super::signals::{signal_name, Signals};
use super::{LaunchArgs, Outcome, Plan};
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
    // another node's failure or signal is posted in the store; a separate connection polls for it
    let (addr, token, who) = (store_addr.to_string(), p.token.clone(), format!("agent {} watch", g.node_rank));
    let mut poller =
        tokio::task::spawn_blocking(move || StoreClient::connect(&addr, &token, &who, Duration::from_secs(30)))
            .await??;
    let mut keys: Vec<String> =
        ["failed", "signal", "failed-permanently", "left"].iter().map(|k| format!("{prefix}/{k}")).collect();
    keys.extend(elastic.as_ref().and_then(|m| m.grow.clone()));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut store_lost: Option<Instant> = None;
    loop {
        let running: Vec<usize> = (0..ranks.len()).filter(|&i| exited[i].is_none()).collect();
        if running.is_empty() {
            return Ok(ended_cleanly(&mut poller, &keys, prefix).await);
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
                    // a node leaving or joining may break the ranks' connections before this agent
                    // polled the news: that is a regroup, not a failure
                    if let Some(why) = elastic.as_ref().and_then(|_| changing(&mut poller, &keys)) {
                        console_err!("[launch] {why}; the ranks stop to regroup");
                        stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM).await;
                        return Ok(Outcome::Regroup(why));
                    }
                    let r = &ranks[i];
                    let lines: Vec<String> = r.tail.lock().unwrap().iter().cloned().collect();
                    let seconds = r.started.elapsed().as_secs_f64();
                    let report = format!(
                        "rank {} (node {}, pid {}) exited with {} after {seconds:.1} s; its last lines:\n    {}",
                        r.global, g.node_rank, r.pid, describe(&status), lines.join("\n    ")
                    );
                    let local = Some(failure::RankFailure::new(r.global, r.pid, &status, seconds, lines));
                    // the group's first failure is its root cause (a rank on another node may fail
                    // later, of the broken connection): the first report posted stays
                    // (a permanent failure is marked first: an agent that sees the report sees the mark)
                    let permanent = status.code().filter(|&c| is_permanent_failure(Some(c)));
                    if let Some(code) = permanent {
                        post(&mut poller, &keys[PERMANENT], &code.to_string()).await;
                    }
                    let report = post_first(&mut poller, &keys[FAILED], report).await;
                    stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM).await;
                    return Ok(Outcome::Failed { report, permanent, local });
                }
            }
            sig = signals.next() => {
                console_err!("[launch] got {}; forwarding to the ranks (they checkpoint and exit)", signal_name(sig));
                // a fixed group stops on every node; from an elastic one only this node leaves
                let (key, what) = match elastic {
                    Some(Membership { hosting: false, .. }) => (LEFT, format!("node {} ({})", g.node_rank, signal_name(sig))),
                    _ => (SIGNAL, sig.to_string()),
                };
                post(&mut poller, &keys[key], &what).await;
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
                if present[FAILED] {
                    let report = match poller.get(&keys[FAILED], Duration::from_secs(1)) {
                        Ok(v) => String::from_utf8_lossy(&v).to_string(),
                        Err(e) => format!("(unreadable: {e})"),
                    };
                    stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM).await;
                    let permanent = match poller.check(&keys[PERMANENT..=PERMANENT]) {
                        Ok(p) if p == [true] => poller
                            .get(&keys[PERMANENT], Duration::from_secs(1))
                            .ok()
                            .and_then(|v| String::from_utf8_lossy(&v).parse().ok())
                            .filter(|&c| is_permanent_failure(Some(c))),
                        _ => None,
                    };
                    let report = format!("another node: {report}");
                    return Ok(Outcome::Failed { report, permanent, local: None });
                }
                if present[SIGNAL] {
                    console_err!("[launch] another node was signalled; forwarding SIGTERM");
                    return Ok(Outcome::Stopped(stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM).await));
                }
                if let Some(why) = change(&present[LEFT..]) {
                    console_err!("[launch] {why}; the ranks checkpoint and stop to regroup");
                    stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM).await;
                    return Ok(Outcome::Regroup(why));
                }
            }
        }
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

/// How a group whose local ranks all exited 0 ended. Ranks also exit 0 after a stop signal (they
/// checkpoint first, marking `STOPPED_EARLY`): that is the group's end when an agent was signalled, a
/// regroup when an elastic group's nodes change, and otherwise a failure (an agent or its node was
/// lost, or a rank was signalled directly), which restarts from the checkpoint. So is a store that
/// no longer answers: its host (node 0's agent) waits for every agent before it exits.
async fn ended_cleanly(poller: &mut StoreClient, keys: &[String], prefix: &str) -> Outcome {
    let marker = format!("{prefix}/{STOPPED_EARLY}");
    let mut ask = vec![marker.clone()];
    ask.extend(keys[SIGNAL..].iter().cloned());
    let present = match poller.check(&ask) {
        Ok(p) => p,
        Err(e) => {
            let report = format!("the store (node 0's agent) stopped answering as the ranks ended: {e:#}");
            return Outcome::Failed { report, permanent: None, local: None };
        }
    };
    // [marker, signal, failed-permanently, left, grow?]: the ranks may stop for a change before this
    // agent's poll saw it, so the reason is read here too
    match (present[0], present[1], change(&present[3..])) {
        (false, ..) => Outcome::Succeeded,
        (true, true, _) => Outcome::Stopped(0),
        (true, false, Some(why)) => Outcome::Regroup(why),
        (true, false, None) => {
            let step = poller.get(&marker, Duration::from_secs(1)).map(|v| String::from_utf8_lossy(&v).into_owned());
            let report = format!(
                "the ranks checkpointed and stopped after step {} before the run's end, though no agent was \
                 signalled: an agent or its node was lost, or a rank was signalled directly",
                step.unwrap_or_else(|_| "?".into())
            );
            Outcome::Failed { report: post_first(poller, &keys[FAILED], report).await, permanent: None, local: None }
        }
    }
}

/// How long the store may not answer before an agent gives its group up.
const STORE_LOSS: Duration = Duration::from_secs(10);

/// Posts `report` as the group's failure unless another agent posted one first; returns the report
/// that stands (`another node: …` when it is not ours).
pub(super) async fn post_first(client: &mut StoreClient, key: &str, report: String) -> String {
    match client.add(&format!("{key}/claims"), 1) {
        Ok(1) => {
            post(client, key, &report).await;
            report
        }
        Ok(_) => match client.get(key, Duration::from_secs(5)) {
            Ok(first) if first == report.as_bytes() => format!("another node and this one: {report}"),
            Ok(first) => format!("another node: {}\n  (then here: {report})", String::from_utf8_lossy(&first)),
            Err(_) => report,
        },
        Err(e) => {
            tracing::warn!("store: posting {key}: {e:#}");
            report
        }
    }
}

pub(super) async fn post(client: &mut StoreClient, key: &str, value: &str) {
    if let Err(e) = client.set(key, value.as_bytes()) {
        tracing::warn!("store: posting {key}: {e:#}");
    }
}
