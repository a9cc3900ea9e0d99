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

/// Watch the group until it succeeds, fails, or a signal stops it; an elastic group below its most
/// nodes also stops to regroup once `grow` (the next round's `joined`) appears.
#[allow(clippy::too_many_arguments)]
pub(super) async fn watch(
    mut ranks: Vec<Rank>,
    a: &LaunchArgs,
    p: &Plan,
    g: Group,
    store_addr: &str,
    prefix: &str,
    grow: Option<String>,
    signals: &mut Signals,
) -> Result<Outcome> {
    let mut exited: Vec<Option<ExitStatus>> = vec![None; ranks.len()];
    // another node's failure or signal is posted in the store; a separate connection polls for it
    let (addr, token, who) = (store_addr.to_string(), p.token.clone(), format!("agent {} watch", g.node_rank));
    let mut poller =
        tokio::task::spawn_blocking(move || StoreClient::connect(&addr, &token, &who, Duration::from_secs(30)))
            .await??;
    let mut keys = vec![format!("{prefix}/failed"), format!("{prefix}/signal"), format!("{prefix}/failed-permanently")];
    keys.extend(grow);
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
                if present.get(3) == Some(&true) {
                    eprintln!("[launch] an agent waits to join the group; the ranks checkpoint and stop to regroup");
                    stop_group(&mut ranks, &mut exited, a.grace_s, libc::SIGTERM).await;
                    return Ok(Outcome::Regroup);
                }
            }
        }
    }
}

/// How a group whose local ranks all exited 0 ended. Ranks also exit 0 after a stop signal (they
/// checkpoint first, marking `STOPPED_EARLY`): that is the group's end when an agent was signalled,
/// a regroup when an agent waits to join, and otherwise a failure (an agent or its node was lost, or a
/// rank was signalled directly), which restarts from the checkpoint.
async fn ended_cleanly(poller: &mut StoreClient, keys: &[String], prefix: &str) -> Outcome {
    let marker = format!("{prefix}/{STOPPED_EARLY}");
    let mut ask = vec![marker.clone(), keys[1].clone()];
    ask.extend(keys.get(3).cloned());
    let present = match poller.check(&ask) {
        Ok(p) => p,
        Err(_) => return Outcome::Succeeded,
    };
    match present[..] {
        [false, ..] => Outcome::Succeeded,
        [true, true, ..] => Outcome::Stopped(0),
        [true, false, true] => Outcome::Regroup,
        _ => {
            let step = poller.get(&marker, Duration::from_secs(1)).map(|v| String::from_utf8_lossy(&v).into_owned());
            let report = format!(
                "the ranks checkpointed and stopped after step {} before the run's end, though no agent was \
                 signalled: an agent or its node was lost, or a rank was signalled directly",
                step.unwrap_or_else(|_| "?".into())
            );
            Outcome::Failed { report: post_first(poller, &keys[0], report).await, permanent: None, local: None }
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
