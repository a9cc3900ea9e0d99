//! The settings every agent of a group must share (the kind of group, the node count, the ranks per node,
//! the restarts, the preempted exit code): posted and compared before the agents meet, a disagreement
//! named on every node.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::task::JoinHandle;

use super::elastic::{Group, Nodes};
use super::group::check_run;
use super::LaunchArgs;
use crate::store::waiting::{never_arrived, refused_clause, Progress, START_THERE};
use crate::store::StoreClient;

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

/// Before a fixed group's first meeting (and after each elastic round's), every agent checks that all
/// nodes launch the same group: the same number of nodes, ranks per node and restarts (a node that
/// differs would otherwise surface later as a rendezvous that waits for a node that never comes, ranks
/// joining twice or a restart that one node never joins). Each agent posts its settings and reads the
/// others' as they come: the first that differs stops it with [`Misconfigured`] naming the nodes and
/// values, on every node. The wait says every 30 s which nodes are missing and what the store refused
/// (a wrong token, another run id); `Err(nodes)` inside: those nodes of an elastic round never posted
/// their settings within `timeout` (a fixed group's agent fails then, naming them and the refusals).
/// An agent that leaves meanwhile, signalled, posts who it is under one of `stops`
/// ([`tell_leaving`](super::ending::tell_leaving)): the wait ends with
/// [`MeetingStopped`](crate::store::MeetingStopped) naming it.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreServer;

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
}
