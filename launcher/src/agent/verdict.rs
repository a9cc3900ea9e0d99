//! What the group does after a failed attempt, the same on every node: stop for good when any node's
//! rank failed in a way a restart would repeat (its mark may come after the root cause another node
//! posted), stop when the store's host is gone (a restart could not meet), else restart.

use std::time::{Duration, Instant};

use super::elastic::Group;
use super::watch::post;
use crate::env::is_permanent_failure;
use crate::store::StoreClient;

/// Store key (under the attempt's prefix) of a permanent failure's exit code; `PERMANENT/rank` names
/// the rank (set first).
pub(super) const PERMANENT: &str = "failed-permanently";

/// A rank's failure that a restart would repeat: its exit code and, where known, its global rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Permanent {
    pub code: i32,
    pub rank: Option<usize>,
}

/// How long an agent whose group failed for no permanent reason it knows of waits for another node's
/// permanent mark. The root cause is the first failure posted, which may be a consequence (a rank that
/// lost its connection) of a permanent failure whose agent posts later: it first reads its rank's last
/// output (up to 1 s) and may wait for a store poll under way (up to 2 s); with room for a loaded host.
/// Paid in full only when a node never settles (its agent is gone or cut off from the store).
const SETTLE: Duration = Duration::from_secs(5);

/// Another node's permanent failure in attempt `prefix`, after this agent stopped its ranks: it marks
/// its node settled (`PREFIX/settled/NODE`) and waits until a permanent mark appears, every node of
/// the attempt has settled or left (none can post one any more), or [`SETTLE`] has passed. So every
/// node stops with the permanent code, rather than some restarting into a group that never meets.
pub(super) async fn permanent_elsewhere(c: &mut StoreClient, prefix: &str, g: Group) -> Option<Permanent> {
    post(c, &format!("{prefix}/settled/{}", g.node_rank), "1").await;
    let mut keys = vec![format!("{prefix}/{PERMANENT}")];
    keys.extend((0..g.nnodes).flat_map(|n| [format!("{prefix}/settled/{n}"), format!("{prefix}/out/{n}")]));
    let t0 = Instant::now();
    loop {
        let present = c.check(&keys).ok()?;
        if present[0] {
            return read_permanent(c, &keys[0]);
        }
        let all_settled = (0..g.nnodes).all(|n| present[1 + 2 * n] || present[2 + 2 * n]);
        if all_settled || t0.elapsed() >= SETTLE {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The permanent mark at `key` (present).
pub(super) fn read_permanent(c: &mut StoreClient, key: &str) -> Option<Permanent> {
    let read = |c: &mut StoreClient, k: &str| {
        c.get(k, Duration::from_secs(1)).ok().and_then(|v| String::from_utf8_lossy(&v).trim().parse().ok())
    };
    let code = read(c, key).filter(|&code| is_permanent_failure(Some(code)))?;
    let rank = read(c, &format!("{key}/rank")).map(|r: i32| r as usize);
    Some(Permanent { code, rank })
}

/// Why a restart cannot meet, for an agent that does not host the store: the store does not answer a
/// fresh connection in any of [`PROBES`] tries of [`PROBE`] each (its host, node 0's agent or an
/// elastic group's agent at `--rdzv`, is gone or frozen, and the group's state with it), or another
/// store answers there than the one this agent met in (`instance`, its [`crate::store::INSTANCE_KEY`]: the host's
/// pod started again within seconds, with an empty store). One missed answer is not enough: a loaded or
/// briefly cut-off host would stop this node for good while the others restart and wait for it.
pub(super) async fn store_lost(addr: &str, token: &str, who: &str, instance: Option<&[u8]>) -> Option<String> {
    let mut why = None;
    for _ in 0..PROBES {
        let (at, token, who) = (addr.to_string(), token.to_string(), format!("{who} probe"));
        let probe = tokio::task::spawn_blocking(move || {
            let mut c = StoreClient::connect(&at, &token, &who, PROBE)?;
            c.set_reply_timeout(PROBE);
            // (a store of an earlier build holds no id: it answers, which is all there is to know)
            c.instance(PROBE)
        });
        why = match probe.await {
            Ok(Ok(now)) if instance.zip(now.as_deref()).is_none_or(|(met, now)| met == now) => return None,
            Ok(Ok(_)) => {
                return Some(format!(
                    "another store answers at {addr} than the one the group met in: its host started again, \
                     without the group's state"
                ))
            }
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(e) => Some(e.to_string()),
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    why
}

/// How long the store may take to answer one of [`store_lost`]'s probes (it answers at once when it
/// lives), and how many it gets, a second apart.
const PROBE: Duration = Duration::from_secs(2);
const PROBES: usize = 4;

/// What a failed attempt's agent does next, as its failure record says (`next`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    Restart,
    NoRestartsLeft,
    Permanent,
    StoreHostLost,
    /// A node was signalled as the attempt failed: the group stops, as that node did.
    Signalled,
    /// The restart's meeting failed (a node never came back): written into the attempt that never
    /// started, beside the record of the one before, which says `restart`.
    RestartNeverMet,
}

impl Next {
    pub fn as_str(self) -> &'static str {
        match self {
            Next::Restart => "restart",
            Next::NoRestartsLeft => "stop: no restarts left",
            Next::Permanent => "stop: permanent",
            Next::StoreHostLost => "stop: store host lost",
            Next::Signalled => "stop: a node was signalled",
            Next::RestartNeverMet => "stop: the restart's rendezvous failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreServer;

    fn client(server: &StoreServer) -> StoreClient {
        StoreClient::connect(&server.addr.to_string(), "t", "test", Duration::from_secs(5)).unwrap()
    }

    /// A permanent mark posted after this agent's failure (another node's agent was slower) is found;
    /// without one, the wait ends as soon as every node has settled, or after [`SETTLE`] when one never
    /// does (a lost agent).
    #[test]
    fn a_late_permanent_mark_is_waited_for_and_settled_nodes_end_the_wait() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let server = StoreServer::spawn("127.0.0.1:0".parse().unwrap(), "t".into()).unwrap();
        let g = |node_rank| Group { round: 0, node_rank, nnodes: 2 };
        rt.block_on(async {
            // node 0 marks rank 0's exit code 2 half a second after node 1 looks
            let mut other = client(&server);
            let late = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                other.set("a/attempt-0/failed-permanently/rank", b"0").unwrap();
                other.set("a/attempt-0/failed-permanently", b"2").unwrap();
            });
            let t0 = Instant::now();
            let found = permanent_elsewhere(&mut client(&server), "a/attempt-0", g(1)).await;
            assert_eq!(found, Some(Permanent { code: 2, rank: Some(0) }));
            assert!(t0.elapsed() < SETTLE, "{:?}", t0.elapsed());
            late.await.unwrap();

            // both nodes settled, no mark: at once
            client(&server).set("b/attempt-0/settled/0", b"1").unwrap();
            let t0 = Instant::now();
            assert_eq!(permanent_elsewhere(&mut client(&server), "b/attempt-0", g(1)).await, None);
            assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());

            // node 0 never settles: the whole wait
            let t0 = Instant::now();
            assert_eq!(permanent_elsewhere(&mut client(&server), "c/attempt-0", g(1)).await, None);
            assert!(t0.elapsed() >= SETTLE, "{:?}", t0.elapsed());
        });
    }

    #[test]
    fn a_store_that_is_gone_is_found_lost_and_a_living_one_is_not() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let server = StoreServer::spawn("127.0.0.1:0".parse().unwrap(), "t".into()).unwrap();
        rt.block_on(async {
            let met = client(&server).instance(Duration::from_secs(1)).unwrap().expect("an instance id");
            assert_eq!(store_lost(&server.addr.to_string(), "t", "agent 1", Some(&met)).await, None);
            // the host started again at the same address: a store answers, but not the one met in
            let addr = server.addr;
            drop(server);
            let again = StoreServer::spawn(addr, "t".into()).unwrap();
            let t0 = Instant::now();
            let why = store_lost(&addr.to_string(), "t", "agent 1", Some(&met)).await.expect("lost");
            assert!(why.contains("another store answers") && why.contains("started again"), "{why}");
            assert!(t0.elapsed() < Duration::from_secs(1), "said at once: {:?}", t0.elapsed());
            drop(again);
            let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
            let t0 = Instant::now();
            assert!(store_lost(&gone, "t", "agent 1", Some(&met)).await.is_some());
            // (every probe tried, none much longer than its timeout and the pause after it: a second's
            // slack each for a loaded machine)
            let most = (PROBE + Duration::from_secs(2)) * PROBES as u32;
            assert!(t0.elapsed() >= Duration::from_secs(PROBES as u64) && t0.elapsed() < most, "{:?}", t0.elapsed());
        });
    }
}
