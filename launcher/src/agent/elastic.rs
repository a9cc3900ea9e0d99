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
//!   round            the open round (`add` reads it; moved on once per round, after it closed)
//!   R/joined         agents that joined round R; closing adds [`CLOSED`], so later joiners know
//!   R/who/K          the id of round R's K-th agent (1-based)
//!   R/members        the ids of round R's members, one per line, in the order they joined, once closed:
//!                    only agents whose beat was seen moving (one that joined and died is left out)
//!   beat/ID          a counter each agent bumps every [`BEAT_EVERY`] while it lives
//!   ended            the exit code every waiting agent takes when the group ended (finished the run,
//!                    or stopped for good): they exit rather than form a group of their own

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::agreement::Misconfigured;
use super::group::check_run;
use crate::store::waiting::{refused_clause, Progress};
use crate::store::StoreClient;

/// Added to a round's `joined` count to close it: every later `add` returns more than this.
const CLOSED: i64 = 1 << 40;
/// How often an agent bumps its beat, and how long a silent one counts as alive.
const BEAT_EVERY: Duration = Duration::from_secs(1);
const BEAT_STALE: Duration = Duration::from_secs(6);
/// How long a joiner's id or a closing round's member list may take to appear.
const SLOW_WRITE: Duration = Duration::from_secs(10);
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

/// What [`Rounds::join`] came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Joined {
    Member(Group),
    /// The group ended meanwhile (finished, or stopped for good) with this exit code.
    Ended(i32),
}

/// One agent's view of the rounds of an elastic run.
#[derive(Clone)]
pub(super) struct Rounds {
    run_id: String,
    base: String,
    /// This agent's id: `host:pid:nonce`.
    pub me: String,
    pub min: usize,
    pub max: usize,
    last_call: Duration,
    /// How long fewer than MIN agents may wait when no one else is known to be coming.
    timeout: Duration,
    /// This agent's command-line settings ([`super::agreement::settings_line`]), which an agent joining a
    /// running group compares with the group's before it joins (empty: not compared).
    settings: String,
}

impl Rounds {
    pub fn new(run_id: &str, min: usize, max: usize, last_call: Duration, timeout: Duration) -> Rounds {
        let me = format!(
            "{}:{}:{:04x}",
            crate::env::hostname().unwrap_or_else(|| "host".into()),
            std::process::id(),
            rand::random::<u16>()
        );
        let base = format!("{run_id}/elastic");
        Rounds { run_id: run_id.to_string(), base, me, min, max, last_call, timeout, settings: String::new() }
    }

    /// With this agent's settings, compared with the group's before it joins ([`Rounds::join`]).
    pub fn with_settings(self, settings: String) -> Rounds {
        Rounds { settings, ..self }
    }

    fn key(&self, round: u32, what: &str) -> String {
        format!("{}/{round}/{what}", self.base)
    }

    fn round_key(&self) -> String {
        format!("{}/round", self.base)
    }

    /// Present once an agent waits to join the round after `round`.
    pub fn waiting_key(&self, round: u32) -> String {
        self.key(round + 1, "joined")
    }

    pub fn ended_key(&self) -> String {
        format!("{}/ended", self.base)
    }

    /// Bumps this agent's beat every second on a connection of its own, for as long as the process
    /// lives (reconnecting when the store does not answer): the next round knows it is alive.
    pub fn beat(&self, addr: &str, token: &str) {
        let (key, addr, token, who) =
            (format!("{}/beat/{}", self.base, self.me), addr.to_string(), token.to_string(), self.me.clone());
        std::thread::spawn(move || loop {
            if let Ok(mut c) = StoreClient::connect(&addr, &token, &format!("agent {who} beat"), BEAT_STALE) {
                while c.add(&key, 1).is_ok() {
                    std::thread::sleep(BEAT_EVERY);
                }
            }
            std::thread::sleep(BEAT_EVERY);
        });
    }

    fn ended(&self, c: &mut StoreClient) -> Result<Option<i32>> {
        if !c.check(&[self.ended_key()])?[0] {
            return Ok(None);
        }
        let v = c.get(&self.ended_key(), SLOW_WRITE)?;
        Ok(Some(String::from_utf8_lossy(&v).parse().unwrap_or(1)))
    }

    /// Blocks until this agent is a member of a closed round, or the group ended. A store that serves
    /// another run refuses it.
    pub fn join(&self, c: &mut StoreClient) -> Result<Joined> {
        check_run(c, &self.run_id)?;
        // (an agent arriving after the group ended learns that first)
        if let Some(code) = self.ended(c)? {
            return Ok(Joined::Ended(code));
        }
        self.check_settings(c)?;
        loop {
            if let Some(code) = self.ended(c)? {
                return Ok(Joined::Ended(code));
            }
            let round = c.add(&self.round_key(), 0)? as u32;
            let order = c.add(&self.key(round, "joined"), 1)?;
            if order > CLOSED {
                self.wait_past(c, round)?;
                continue;
            }
            c.set(&self.key(round, &format!("who/{order}")), self.me.as_bytes())?;
            match self.until_closed(c, round)? {
                None => continue, // ended: the loop's first check says how
                Some(ids) => match ids.iter().position(|id| *id == self.me) {
                    Some(k) => return Ok(Joined::Member(Group { round, node_rank: k, nnodes: ids.len() })),
                    None => {
                        console_err!(
                            "[launch] round {round} started with {} without this one (at most {}); waiting for the next",
                            crate::plural(ids.len(), "node"),
                            self.max
                        );
                        self.wait_past(c, round)?;
                    }
                },
            }
        }
    }

    /// The settings of the group that runs, once a round's members agreed on them
    /// ([`Rounds::post_settings`]); absent before.
    fn settings_key(&self) -> String {
        format!("{}/settings", self.base)
    }

    /// The members of a round agreed on their settings (`super::agreement::agree_on_settings`): later
    /// agents compare theirs with them before they join ([`Rounds::check_settings`]).
    pub fn post_settings(&self, c: &mut StoreClient) -> Result<()> {
        match self.settings.is_empty() {
            true => Ok(()),
            false => c.set(&self.settings_key(), self.settings.as_bytes()),
        }
    }

    /// An agent started with other settings than those of the group that runs (another
    /// `--nproc-per-node`, say) is refused ([`Misconfigured`]: it exits 2) before it joins a round, so
    /// the group is not made to regroup only to find the disagreement and stop on every node. Before any
    /// round has agreed there is nothing to compare with: the check after each round finds agents that
    /// start together and disagree.
    fn check_settings(&self, c: &mut StoreClient) -> Result<()> {
        let key = self.settings_key();
        if self.settings.is_empty() || !c.check(std::slice::from_ref(&key))?[0] {
            return Ok(());
        }
        let group = String::from_utf8_lossy(&c.get(&key, SLOW_WRITE)?).into_owned();
        if group != self.settings {
            let msg = format!(
                "{}: the elastic group runs with {group}; this agent has {}: not joining (start every agent with \
                 the same)",
                self.run_id, self.settings
            );
            return Err(Misconfigured(msg).into());
        }
        Ok(())
    }

    /// Waits for round `round` to close and returns its members (`None`: the group ended). This agent
    /// closes it when the rule in the module comment says so.
    fn until_closed(&self, c: &mut StoreClient, round: u32) -> Result<Option<Vec<String>>> {
        let previous = match round {
            0 => Vec::new(),
            r => self.members(c, r - 1)?,
        };
        let mut beats = Beats::default();
        // the joiners' ids, and when each was first missed (an agent adds itself, then writes its id)
        let mut here: Vec<(Option<String>, Instant)> = Vec::new();
        let (mut last_n, mut changed) = (0usize, Instant::now());
        // (while too few agents are here: the clock of the timeout, which reports as it runs)
        let (mut short, mut closing_since): (Option<Progress>, Option<Instant>) = (None, None);
        let keys = [self.key(round, "members"), self.ended_key()];
        loop {
            let present = c.check(&keys)?;
            if present[1] {
                return Ok(None);
            }
            if present[0] {
                self.advance(c, round)?;
                return Ok(Some(self.members(c, round)?));
            }
            let joined = c.add(&self.key(round, "joined"), 0)?;
            if joined > CLOSED {
                // another agent is closing the round: its member list follows at once
                let since = *closing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > SLOW_WRITE {
                    bail!("round {round}: the agent that closed it never wrote its members (it died?); restart the agents");
                }
                std::thread::sleep(POLL);
                continue;
            }
            let n = joined as usize;
            if n != last_n {
                (last_n, changed) = (n, Instant::now());
            }
            here.resize_with(n.max(here.len()), || (None, Instant::now()));
            for (k, (id, _)) in here.iter_mut().enumerate().filter(|(_, h)| h.0.is_none()) {
                let key = self.key(round, &format!("who/{}", k + 1));
                if c.check(std::slice::from_ref(&key))?[0] {
                    *id = Some(String::from_utf8_lossy(&c.get(&key, SLOW_WRITE)?).into_owned());
                }
            }
            // who is alive among the joiners, and who of the previous round may still come
            let (mut live, mut pending) = (Vec::new(), 0usize);
            for (id, since) in &here {
                match id {
                    None if since.elapsed() < SLOW_WRITE => pending += 1,
                    None => {}
                    Some(id) => match beats.life(c, &format!("{}/beat/{id}", self.base))? {
                        Life::Alive => live.push(id.clone()),
                        Life::Unknown => pending += 1,
                        Life::Gone => {}
                    },
                }
            }
            let mut coming = 0;
            for id in previous.iter().filter(|id| !here.iter().any(|h| h.0.as_ref() == Some(*id))) {
                if beats.life(c, &format!("{}/beat/{id}", self.base))? != Life::Gone {
                    coming += 1;
                }
            }
            let settled = pending == 0 && coming == 0;
            if settled && live.len() >= self.min && (live.len() >= self.max || changed.elapsed() >= self.last_call) {
                self.close(c, round, &live)?;
                continue;
            }
            if live.len() + pending < self.min && coming == 0 {
                let progress = short.get_or_insert_with(|| Progress::start(self.timeout, "--rdzv-timeout-s"));
                let here = live.len() + pending;
                if progress.timed_out() {
                    bail!(
                        "round {round}: {here} of at least {} nodes joined within {:.0} s (--nnodes {}:{}); start \
                         `infinity launch` on more nodes{}",
                        self.min,
                        self.timeout.as_secs_f64(),
                        self.min,
                        self.max,
                        refused_clause(&c.refusals().unwrap_or_default())
                    );
                }
                if progress.due() {
                    console_err!(
                        "[launch] round {round}: waiting for at least {} nodes, {here} here ({}){}",
                        self.min,
                        progress.so_far(),
                        refused_clause(&c.refusals().unwrap_or_default())
                    );
                }
            } else {
                short = None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Closes `round` with `live` (at most MAX of them); the first agent to close it wins.
    fn close(&self, c: &mut StoreClient, round: u32, live: &[String]) -> Result<()> {
        let total = c.add(&self.key(round, "joined"), CLOSED)?;
        if total < 2 * CLOSED {
            let members = live[..live.len().min(self.max)].join("\n");
            c.set(&self.key(round, "members"), members.as_bytes())?;
            self.advance(c, round)?;
        }
        Ok(())
    }

    /// Moves the open round past `round` (closed), once whoever does it first.
    fn advance(&self, c: &mut StoreClient, round: u32) -> Result<()> {
        if c.add(&self.key(round, "advanced"), 1)? == 1 {
            c.add(&self.round_key(), 1)?;
        }
        Ok(())
    }

    /// The ids of a closed round's members.
    fn members(&self, c: &mut StoreClient, round: u32) -> Result<Vec<String>> {
        let v = c.get(&self.key(round, "members"), SLOW_WRITE)?;
        Ok(String::from_utf8_lossy(&v).lines().map(str::to_string).collect())
    }

    /// Waits until the open round is past `round` (or the group ended).
    fn wait_past(&self, c: &mut StoreClient, round: u32) -> Result<()> {
        let (keys, t0) = ([self.key(round, "members"), self.ended_key()], Instant::now());
        while c.add(&self.round_key(), 0)? <= round as i64 {
            match c.check(&keys)?[..] {
                [_, true] => return Ok(()),
                [true, _] => self.advance(c, round)?,
                _ if t0.elapsed() > SLOW_WRITE => {
                    bail!("round {round}: the agent that closed it never wrote its members (it died?); restart the agents")
                }
                _ => std::thread::sleep(POLL),
            }
        }
        Ok(())
    }

    /// The newest closed round and its number of members, if any round closed.
    pub fn last_group(&self, c: &mut StoreClient) -> Result<Option<(u32, usize)>> {
        match c.add(&self.round_key(), 0)? {
            0 => Ok(None),
            open => Ok(Some((open as u32 - 1, self.members(c, open as u32 - 1)?.len()))),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Life {
    /// Its beat moved within [`BEAT_STALE`].
    Alive,
    /// Not seen moving yet (watched for less than [`BEAT_STALE`]).
    Unknown,
    /// Still for [`BEAT_STALE`].
    Gone,
}

/// The beats seen so far: when each last moved, and whether it was seen moving at all.
#[derive(Default)]
struct Beats(HashMap<String, (i64, Instant, bool)>);

impl Beats {
    fn life(&mut self, c: &mut StoreClient, key: &str) -> Result<Life> {
        let v = c.add(key, 0)?;
        let e = self.0.entry(key.to_string()).or_insert((v, Instant::now(), false));
        if e.0 != v {
            *e = (v, Instant::now(), true);
        }
        Ok(match (e.1.elapsed() < BEAT_STALE, e.2) {
            (false, _) => Life::Gone,
            (true, true) => Life::Alive,
            (true, false) => Life::Unknown,
        })
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

    /// Bumps `id`'s beat twice a second until `alive` is cleared.
    fn beating(addr: &str, id: &str) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let alive = std::sync::Arc::new(AtomicBool::new(true));
        let (flag, mut c, key) = (alive.clone(), client(addr), format!("run/elastic/beat/{id}"));
        std::thread::spawn(move || {
            while flag.load(Ordering::Relaxed) {
                c.add(&key, 1).unwrap();
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        alive
    }

    /// Three agents of a 2:3 group form round 0 at once (MAX reached). A fourth cannot close round 1
    /// while round 0's agents live; once two come back and the third stops beating, round 1 forms
    /// without it. An agent that joins round 2 and dies is left out of it. Node ranks follow the
    /// order of joining; an agent arriving after the group ended learns it.
    #[test]
    fn rounds_form_from_the_agents_that_are_alive() {
        use std::sync::atomic::Ordering;
        let server = StoreServer::spawn("127.0.0.1:0".parse().unwrap(), "t".into()).unwrap();
        let addr = server.addr.to_string();
        let rounds = |id: &str| Rounds {
            me: id.to_string(),
            ..Rounds::new("run", 2, 3, Duration::from_millis(300), Duration::from_secs(30))
        };
        let join = |id: &'static str| {
            let addr = addr.clone();
            std::thread::spawn(move || match rounds(id).join(&mut client(&addr)).unwrap() {
                Joined::Member(g) => g,
                ended => panic!("{id}: {ended:?}"),
            })
        };
        let flags: Vec<_> = ["a", "b", "c", "d"].iter().map(|id| beating(&addr, id)).collect();
        let mut round0: Vec<Group> = ["a", "b", "c"].map(join).into_iter().map(|h| h.join().unwrap()).collect();
        round0.sort_by_key(|g| g.node_rank);
        let shape: Vec<(u32, usize, usize)> = round0.iter().map(|g| (g.round, g.node_rank, g.nnodes)).collect();
        assert_eq!(shape, [(0, 0, 3), (0, 1, 3), (0, 2, 3)]);

        let spare = join("d");
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!spare.is_finished(), "round 1 closed while round 0's agents were alive");
        let t0 = Instant::now();
        flags[2].store(false, Ordering::Relaxed);
        let (a, b) = (join("a"), join("b"));
        let round1 = [spare.join().unwrap(), a.join().unwrap(), b.join().unwrap()];
        assert!(round1.iter().all(|g| g.round == 1 && g.nnodes == 3), "{round1:?}");
        assert_eq!(round1[0].node_rank, 0, "d joined round 1 first");
        // (staleness counts from c's last beat, which a starved beating thread may have bumped well before
        // t0: not at once is the point)
        assert!(t0.elapsed() >= BEAT_STALE / 2, "closed before c's beat went stale");

        // round 2: a ghost joins first (its id written, no beat), then the three living agents
        let mut c = client(&addr);
        assert_eq!(c.add("run/elastic/2/joined", 1).unwrap(), 1);
        c.set("run/elastic/2/who/1", b"ghost").unwrap();
        let round2 = ["d", "a", "b"].map(join).map(|h| h.join().unwrap());
        assert!(round2.iter().all(|g| g.round == 2 && g.nnodes == 3), "{round2:?}");
        let mut ranks: Vec<usize> = round2.iter().map(|g| g.node_rank).collect();
        ranks.sort();
        assert_eq!(ranks, [0, 1, 2], "the ghost took a node rank");

        // the group ended: an agent arriving now exits with its code
        c.set("run/elastic/ended", b"0").unwrap();
        assert_eq!(rounds("e").join(&mut client(&addr)).unwrap(), Joined::Ended(0));
        flags.iter().for_each(|f| f.store(false, Ordering::Relaxed));
    }

    #[test]
    fn too_few_agents_time_out_naming_the_range() {
        let server = StoreServer::spawn("127.0.0.1:0".parse().unwrap(), "t".into()).unwrap();
        let r = Rounds::new("run", 2, 4, Duration::from_millis(100), Duration::from_secs(1));
        let err = r.join(&mut client(&server.addr.to_string())).unwrap_err();
        assert!(format!("{err:#}").contains("1 of at least 2 nodes joined within 1 s (--nnodes 2:4)"), "{err:#}");
    }

    /// An agent that joins a running group with other settings (here `--nproc-per-node`) is refused
    /// before it joins a round (a bad command line, exit 2): the group does not regroup for it.
    #[test]
    fn a_late_agent_with_other_settings_is_refused_before_it_joins() {
        let server = StoreServer::spawn("127.0.0.1:0".parse().unwrap(), "t".into()).unwrap();
        let addr = server.addr.to_string();
        let agent = |id: &str, settings: &str| Rounds {
            me: id.to_string(),
            ..Rounds::new("run", 1, 2, Duration::from_millis(100), Duration::from_secs(5))
                .with_settings(settings.into())
        };
        let alive = beating(&addr, "a");
        let first = agent("a", "--nnodes 1:2 --nproc-per-node 2");
        assert_eq!(
            first.join(&mut client(&addr)).unwrap(),
            Joined::Member(Group { round: 0, node_rank: 0, nnodes: 1 })
        );
        // (the round's members agreed on their settings)
        first.post_settings(&mut client(&addr)).unwrap();
        let err = agent("b", "--nnodes 1:2 --nproc-per-node 3").join(&mut client(&addr)).unwrap_err();
        assert!(err.downcast_ref::<Misconfigured>().is_some(), "{err:#}");
        let want = "run: the elastic group runs with --nnodes 1:2 --nproc-per-node 2; this agent has --nnodes 1:2 \
                    --nproc-per-node 3: not joining";
        assert!(format!("{err:#}").starts_with(want), "{err:#}");
        // (nobody waits to join round 1: the running group is not asked to regroup)
        assert!(!client(&addr).check(&["run/elastic/1/joined".to_string()]).unwrap()[0]);
        alive.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// An agent of another run is refused (a bad command line, exit 2), and named in the timeout of
    /// the round it never joined.
    #[test]
    fn an_agent_of_another_run_is_refused_and_named() {
        let server = StoreServer::spawn_for("127.0.0.1:0".parse().unwrap(), "t".into(), Some("run".into())).unwrap();
        let addr = server.addr.to_string();
        let stranger = Rounds::new("other", 2, 4, Duration::from_millis(100), Duration::from_secs(1));
        let err = stranger.join(&mut client(&addr)).unwrap_err();
        assert!(err.downcast_ref::<crate::store::Refused>().is_some(), "{err:#}");
        assert!(format!("{err:#}").contains("it serves run \"run\", not \"other\""), "{err:#}");
        let r = Rounds::new("run", 2, 4, Duration::from_millis(100), Duration::from_secs(1));
        let err = format!("{:#}", r.join(&mut client(&addr)).unwrap_err());
        assert!(err.contains("on more nodes; the store refused test from 127.0.0.1 ("), "{err}");
        assert!(err.contains("it asked for run id \"other\", this group is \"run\""), "{err}");
    }
}
