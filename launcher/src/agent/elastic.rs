//! Elastic groups (`--nnodes MIN:MAX`, torchrun's elastic mode): agents meet in numbered rounds in the
//! store instead of by fixed node ranks. A round closes once at least MIN agents have joined and every
//! member of the previous round has either joined too or stopped beating (its node is gone), either at
//! MAX agents or when no one has joined for `--rdzv-last-call-s`. Members take node ranks in the order
//! they joined; later arrivals wait for the next round. A running group below MAX nodes regroups when
//! an agent waits to join (its ranks checkpoint and stop; that is no failure), and a failed group
//! continues with whichever nodes come back. The training run resumes from its newest checkpoint on
//! the new world size (the data order and checkpoints do not depend on it).
//!
//! Store keys, under `RUN_ID/elastic`:
//!   round            the open round (`add` reads it; the agent that closes a round moves it on)
//!   R/joined         agents that joined round R; closing adds [`CLOSED`], so the sum fixes the members
//!   R/who/K          the id of round R's K-th agent (1-based)
//!   R/closed         the number of members, once round R closed
//!   beat/ID          a counter each agent bumps every [`BEAT_EVERY`] while it lives
//!   finished         set when a group finished the run: waiting agents exit 0

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::store::StoreClient;

/// Added to a round's `joined` count to close it: every later `add` returns more than this.
const CLOSED: i64 = 1 << 40;
/// How often an agent bumps its beat, and how long a silent one counts as alive.
const BEAT_EVERY: Duration = Duration::from_secs(1);
const BEAT_STALE: Duration = Duration::from_secs(6);
const POLL: Duration = Duration::from_millis(100);

/// `--nnodes`: a fixed number of nodes (`N`, each started with its `--node-rank`) or an elastic range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nodes {
    Fixed(usize),
    Elastic { min: usize, max: usize },
}

impl FromStr for Nodes {
    type Err = String;

    fn from_str(s: &str) -> Result<Nodes, String> {
        let num = |v: &str| v.trim().parse::<usize>().ok().filter(|&n| n > 0);
        let bad = || format!("{s:?}: expected a number of nodes N or a range MIN:MAX (both at least 1)");
        match s.split_once(':') {
            None => num(s).map(Nodes::Fixed).ok_or_else(bad),
            Some((a, b)) => match (num(a), num(b)) {
                (Some(min), Some(max)) if min <= max => Ok(Nodes::Elastic { min, max }),
                (Some(min), Some(max)) => Err(format!("{s:?}: MIN {min} is above MAX {max}")),
                _ => Err(bad()),
            },
        }
    }
}

/// The nodes one attempt of the group runs on: this agent's place among them and the round (the
/// attempt number the ranks see, which names their store keys and log folders).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Group {
    pub round: u32,
    pub node_rank: usize,
    pub nnodes: usize,
}

/// One agent's view of the rounds of an elastic run.
#[derive(Clone)]
pub(super) struct Rounds {
    base: String,
    /// This agent's id: `host:pid`.
    pub me: String,
    pub min: usize,
    pub max: usize,
    last_call: Duration,
    /// How long fewer than MIN agents may wait when no one else is known to be coming.
    timeout: Duration,
}

impl Rounds {
    pub fn new(run_id: &str, min: usize, max: usize, last_call: Duration, timeout: Duration) -> Rounds {
        let me = format!("{}:{}", hostname(), std::process::id());
        Rounds { base: format!("{run_id}/elastic"), me, min, max, last_call, timeout }
    }

    fn key(&self, round: u32, what: &str) -> String {
        format!("{}/{round}/{what}", self.base)
    }

    /// Present once an agent waits to join the round after `round`.
    pub fn waiting_key(&self, round: u32) -> String {
        self.key(round + 1, "joined")
    }

    pub fn finished_key(&self) -> String {
        format!("{}/finished", self.base)
    }

    /// Bumps this agent's beat every second on a connection of its own, for as long as the process
    /// lives (or the store answers): the next round knows it is still coming.
    pub fn beat(&self, addr: &str, token: &str) {
        let (key, addr, token, who) =
            (format!("{}/beat/{}", self.base, self.me), addr.to_string(), token.to_string(), self.me.clone());
        std::thread::spawn(move || {
            let Ok(mut c) = StoreClient::connect(&addr, &token, &format!("agent {who} beat"), Duration::from_secs(30))
            else {
                return;
            };
            while c.add(&key, 1).is_ok() {
                std::thread::sleep(BEAT_EVERY);
            }
        });
    }

    /// Blocks until this agent is a member of a closed round, or returns `None` when a group finished
    /// the run meanwhile.
    pub fn join(&self, c: &mut StoreClient) -> Result<Option<Group>> {
        loop {
            if c.check(&[self.finished_key()])?[0] {
                return Ok(None);
            }
            let round = c.add(&format!("{}/round", self.base), 0)? as u32;
            let order = c.add(&self.key(round, "joined"), 1)?;
            if order > CLOSED {
                self.wait_past(c, round)?;
                continue;
            }
            c.set(&self.key(round, &format!("who/{order}")), self.me.as_bytes())?;
            match self.until_closed(c, round)? {
                None => return Ok(None),
                Some(n) if order as usize <= n => {
                    return Ok(Some(Group { round, node_rank: order as usize - 1, nnodes: n }));
                }
                Some(n) => {
                    eprintln!(
                        "[launch] round {round} closed with {n} nodes (the most, --nnodes); waiting for the next"
                    );
                    self.wait_past(c, round)?;
                }
            }
        }
    }

    /// Waits for round `round` to close and returns its member count (`None`: the run finished). This
    /// agent closes it when the rule in the module comment says so.
    fn until_closed(&self, c: &mut StoreClient, round: u32) -> Result<Option<usize>> {
        let previous = match round {
            0 => Vec::new(),
            r => self.members(c, r - 1)?,
        };
        let mut beats = Beats::default();
        let mut here: Vec<String> = Vec::new();
        let (mut last_n, mut changed) = (0usize, Instant::now());
        let mut short_since: Option<Instant> = None;
        let keys = [self.key(round, "closed"), self.finished_key()];
        loop {
            let present = c.check(&keys)?;
            if present[1] {
                return Ok(None);
            }
            if present[0] {
                let v = c.get(&keys[0], Duration::from_secs(5))?;
                let n = String::from_utf8_lossy(&v).parse().with_context(|| format!("store key {}", keys[0]))?;
                return Ok(Some(n));
            }
            let joined = c.add(&self.key(round, "joined"), 0)?;
            if joined > CLOSED {
                // another agent is closing the round: its `closed` follows
                std::thread::sleep(POLL);
                continue;
            }
            let n = joined as usize;
            if n != last_n {
                (last_n, changed) = (n, Instant::now());
            }
            for k in here.len() + 1..=n {
                let who = c.get(&self.key(round, &format!("who/{k}")), Duration::from_secs(10))?;
                here.push(String::from_utf8_lossy(&who).into_owned());
            }
            // the previous round's members that are still alive and have not joined yet
            let mut coming = Vec::new();
            for id in previous.iter().filter(|id| !here.contains(id)) {
                if beats.alive(c, &format!("{}/beat/{id}", self.base))? {
                    coming.push(id.as_str());
                }
            }
            if n >= self.min && coming.is_empty() && (n >= self.max || changed.elapsed() >= self.last_call) {
                self.close(c, round)?;
                continue;
            }
            if n < self.min && coming.is_empty() {
                let since = *short_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.timeout {
                    bail!(
                        "round {round}: {n} of at least {} nodes joined within {:.0} s (--nnodes {}:{}); start \
                         `infinity launch` on more nodes",
                        self.min,
                        self.timeout.as_secs_f64(),
                        self.min,
                        self.max
                    );
                }
            } else {
                short_since = None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Closes `round` with the agents that joined it so far (at most MAX); the first to close wins.
    fn close(&self, c: &mut StoreClient, round: u32) -> Result<()> {
        let total = c.add(&self.key(round, "joined"), CLOSED)?;
        if total < 2 * CLOSED {
            let n = ((total - CLOSED) as usize).min(self.max);
            c.set(&self.key(round, "closed"), n.to_string().as_bytes())?;
            c.add(&format!("{}/round", self.base), 1)?;
        }
        Ok(())
    }

    /// The ids of a closed round's members.
    fn members(&self, c: &mut StoreClient, round: u32) -> Result<Vec<String>> {
        let n = c.get(&self.key(round, "closed"), Duration::from_secs(10))?;
        let n: usize = String::from_utf8_lossy(&n).parse().context("store: a round's member count")?;
        (1..=n)
            .map(|k| {
                let who = c.get(&self.key(round, &format!("who/{k}")), Duration::from_secs(10))?;
                Ok(String::from_utf8_lossy(&who).into_owned())
            })
            .collect()
    }

    /// Waits until the open round is past `round` (its closer moves it on right after closing).
    fn wait_past(&self, c: &mut StoreClient, round: u32) -> Result<()> {
        while c.add(&format!("{}/round", self.base), 0)? <= round as i64 {
            std::thread::sleep(POLL);
        }
        Ok(())
    }
}

/// The beats seen so far: an agent whose counter stood still for [`BEAT_STALE`] is gone.
#[derive(Default)]
struct Beats(HashMap<String, (i64, Instant)>);

impl Beats {
    fn alive(&mut self, c: &mut StoreClient, key: &str) -> Result<bool> {
        let v = c.add(key, 0)?;
        let e = self.0.entry(key.to_string()).or_insert((v, Instant::now()));
        if e.0 != v {
            *e = (v, Instant::now());
        }
        Ok(e.1.elapsed() < BEAT_STALE)
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname(2) writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match rc {
        0 if end > 0 => String::from_utf8_lossy(&buf[..end]).into_owned(),
        _ => "host".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreServer;

    #[test]
    fn nnodes_parses_a_count_or_a_range() {
        assert_eq!("4".parse(), Ok(Nodes::Fixed(4)));
        assert_eq!("2:8".parse(), Ok(Nodes::Elastic { min: 2, max: 8 }));
        for bad in ["0", "3:2", "x", "1:", ":4", "0:2"] {
            assert!(bad.parse::<Nodes>().is_err(), "{bad}");
        }
    }

    fn client(addr: &str) -> StoreClient {
        StoreClient::connect(addr, "t", "test", Duration::from_secs(5)).unwrap()
    }

    /// Three agents of a 2:3 group form round 0 at once (MAX reached); when one is gone, the other
    /// two form round 1 once its beat stops, taking node ranks in the order they joined; an agent
    /// arriving at a full round waits for the next one.
    #[test]
    fn rounds_close_at_max_and_without_the_agents_that_are_gone() {
        let server = StoreServer::spawn("127.0.0.1:0".parse().unwrap(), "t".into()).unwrap();
        let addr = server.addr.to_string();
        let rounds = |id: &str| Rounds {
            me: id.to_string(),
            ..Rounds::new("run", 2, 3, Duration::from_millis(300), Duration::from_secs(20))
        };
        let join = |id: &'static str| {
            let addr = addr.clone();
            std::thread::spawn(move || rounds(id).join(&mut client(&addr)).unwrap().unwrap())
        };
        let mut round0: Vec<Group> = ["a", "b", "c"].map(join).into_iter().map(|h| h.join().unwrap()).collect();
        round0.sort_by_key(|g| g.node_rank);
        assert_eq!(
            round0.iter().map(|g| (g.round, g.node_rank, g.nnodes)).collect::<Vec<_>>(),
            [(0, 0, 3), (0, 1, 3), (0, 2, 3)]
        );
        // a fourth agent finds round 1 open but cannot close it while a, b and c beat
        let mut c = client(&addr);
        let beat = |id: &str, c: &mut StoreClient| c.add(&format!("run/elastic/beat/{id}"), 1).unwrap();
        let spare = join("d");
        for _ in 0..10 {
            ["a", "b", "c"].iter().for_each(|id| _ = beat(id, &mut c));
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!spare.is_finished(), "round 1 closed while round 0's agents were alive");
        // a and b come back; c stays silent and is left out once its beat is stale
        let t0 = Instant::now();
        let (a, b) = (join("a"), join("b"));
        let mut round1 = [spare.join().unwrap(), a.join().unwrap(), b.join().unwrap()];
        round1.sort_by_key(|g| g.node_rank);
        assert!(round1.iter().all(|g| g.round == 1 && g.nnodes == 3), "{round1:?}");
        assert!(t0.elapsed() >= BEAT_STALE - Duration::from_secs(2), "closed before c's beat went stale");
        // the run finishes: an agent waiting for the next round learns it
        c.set("run/elastic/finished", b"1").unwrap();
        assert_eq!(rounds("e").join(&mut client(&addr)).unwrap(), None);
    }

    #[test]
    fn too_few_agents_time_out_naming_the_range() {
        let server = StoreServer::spawn("127.0.0.1:0".parse().unwrap(), "t".into()).unwrap();
        let r = Rounds::new("run", 2, 4, Duration::from_millis(100), Duration::from_secs(1));
        let err = r.join(&mut client(&server.addr.to_string())).unwrap_err();
        assert!(format!("{err:#}").contains("1 of at least 2 nodes joined within 1 s (--nnodes 2:4)"), "{err:#}");
    }
}
