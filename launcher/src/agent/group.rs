//! How an agent finds its group's attempt: who hosts the store, the run it serves, the attempt to join
//! first (a lost node's replacement joins the restart), the restarts used, and the nodes that had ended.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Plan;
use crate::store::waiting::Progress;
use crate::store::{StoreClient, StoreServer};

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

/// The key under which the agent of node rank `node` that found it taken in attempt `prefix` says so.
pub(super) fn waiting_key(prefix: &str, node: usize) -> String {
    format!("{prefix}/agents/{}/{node}", crate::store::STARTED_AGAIN)
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
