//! `infinity launch`: one agent per node. It hosts the store (node 0), meets the other agents, spawns
//! the local ranks with torchrun-style variables, tees their output (prefixed on the console, one file
//! per rank per attempt), and watches them. Any rank failing, here or on another node, stops the whole
//! group, which restarts from its newest complete checkpoint up to `--max-restarts` times. SIGTERM,
//! SIGINT, SIGUSR1 and SIGUSR2 are forwarded to the ranks, SIGHUP and SIGQUIT as SIGTERM (they checkpoint and
//! exit); SIGKILL follows after the grace period. With `--nnodes MIN:MAX` the group is elastic
//! (elastic.rs): nodes join and leave between attempts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::env::{EXIT_BAD_DATA, EXIT_BAD_INVOCATION, EXIT_DIVERGED};
use crate::store::{JoinedTwice, MeetingStopped, Members, NeverArrived, Refused, StoreClient};

mod agreement;
mod args;
mod elastic;
mod ending;
mod failure;
mod group;
mod nproc;
mod numa;
mod plan;
mod poller;
mod ranks;
mod ranks_filter;
mod signals;
mod verdict;
mod watch;

use agreement::{agree_on_settings, check_kind, settings_line, Misconfigured};
pub use args::LaunchArgs;
pub use elastic::Nodes;
use elastic::{Group, Joined, Rounds};
use ending::{group_outcome, wait_for_agents, Ending};
use group::{ended_nodes, failed_attempts, first_attempt, host_store, CURRENT_ATTEMPT};
pub use nproc::visible_gpu_ids;
pub use numa::NumaBinding;
use plan::{plan, Plan};
use ranks::spawn_group;
pub use ranks::OWN_SUBCOMMANDS;
pub use ranks_filter::LocalRanks;
use signals::{until_signal, Signals};
use verdict::{Next, Permanent};
use watch::{watch, Membership};

/// How an attempt ended.
enum Outcome {
    Succeeded,
    /// A signal was forwarded and the ranks stopped; the exit code to return.
    Stopped(i32),
    /// The root cause; `permanent` holds the exit code of a rank whose failure a restart would repeat
    /// (`EXIT_BAD_INVOCATION`: its command line or config is wrong; `EXIT_BAD_DATA`: its dataset is;
    /// `EXIT_DIVERGED`: its run diverged).
    Failed {
        report: String,
        permanent: Option<i32>,
        /// This node's failed rank, when one failed.
        local: Option<failure::RankFailure>,
        /// The node of the root cause, where it is known.
        node: Option<usize>,
    },
    /// An elastic group's nodes change (the reason: a node left, or an agent waits to join): the ranks
    /// checkpointed and stopped to regroup.
    Regroup(&'static str),
}

/// The command line's own errors (node counts and ranks, the rendezvous address, the run id, …), before
/// anything starts: a bad invocation, which no retry mends.
pub fn check_args(a: &LaunchArgs) -> Result<()> {
    plan(a).map(|_| ())
}

/// Run the agent; returns the process exit code.
pub fn launch(a: LaunchArgs, exe: PathBuf) -> Result<i32> {
    ranks::raise_open_files();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let code = rt.block_on(run(a, exe));
    // a store wait a signal cut short may still be blocking a thread: leave it behind
    rt.shutdown_background();
    match code {
        // the agents' command lines do not fit together (a wrong token or run id among them): a bad
        // invocation, as a scheduler must see it
        Err(e)
            if e.downcast_ref::<Misconfigured>().is_some()
                || e.downcast_ref::<JoinedTwice>().is_some()
                || e.chain().any(|c| c.downcast_ref::<Refused>().is_some()) =>
        {
            console_err!("error: {e:#}");
            Ok(EXIT_BAD_INVOCATION)
        }
        code => code,
    }
}

/// The exit code of an agent whose meeting `e` ([`MeetingStopped`]) ended: another node's agent was
/// signalled and left, so the group stops before its ranks start, on every node. The store's host
/// (`hosting`) stays a little longer, for the other agents still waiting to read it too.
async fn another_left(e: &anyhow::Error, signals: &Signals, hosting: bool) -> i32 {
    let code = signals.another_stopped_code();
    console_err!("[launch] {e}: the group stops, no rank running; exiting with {code}");
    if hosting {
        tokio::time::sleep(crate::store::STOP_READ).await;
    }
    code
}

async fn run(a: LaunchArgs, exe: PathBuf) -> Result<i32> {
    // (a variable the ranks would refuse alike on every attempt: refused before any starts)
    let ring_ports = crate::comm::ring_ports::from_env().map_err(|e| Misconfigured(format!("{e:#}")))?;
    let p = plan(&a)?;
    // (each local rank's ring listener takes a port of the range: too few fails every attempt alike)
    if let Some(r) = ring_ports.filter(|r| r.len() < p.nproc_per_node) {
        return Err(Misconfigured(format!(
            "{}={}: {} for {} ranks on this node; each rank's ring listener takes one, so give at least {}",
            crate::comm::ring_ports::RING_PORTS_VAR,
            match r.start() == r.end() {
                true => r.start().to_string(),
                false => format!("{}-{}", r.start(), r.end()),
            },
            crate::plural(r.len(), "port"),
            p.nproc_per_node,
            p.nproc_per_node
        ))
        .into());
    }
    let a = LaunchArgs { nproc_per_node: p.nproc_per_node, ..a };
    // (the run id of SLURM's job too: a store that serves another run there is another job's)
    let (derived, port, port_derived) = (p.port_derived && a.run_id.is_none(), p.port, p.port_derived);
    let in_use = |e: &anyhow::Error| {
        e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse))
    };
    match run_planned(a, p, exe).await {
        // (node 0 cannot host the store at the port SLURM's job id gives: another process holds it)
        Err(e) if port_derived && in_use(&e) => bail!(
            "{e:#}\nthe port {port} was derived from SLURM_JOB_ID (30000 + (the job id + 6173 × the step id) mod \
             10000), and another \
             process on this node holds it: pass --rdzv HOST:PORT with a free port on every node (exit 1, a failure \
             worth a retry)"
        ),
        // (a port of SLURM's job id that another job's store holds: worth a retry, not a bad command line)
        Err(e) if derived && e.chain().any(|c| c.downcast_ref::<Refused>().is_some()) => bail!(
            "{e:#}\nthe port {port} was derived from SLURM_JOB_ID: unless the nodes disagree on the token or run id, \
             another job's store holds it (a job or step whose id + 6173 × step id is this one's mod 10000, on node \
             0): run again later (exit 1, a failure worth a retry), or pass --rdzv HOST:PORT"
        ),
        r => r,
    }
}

async fn run_planned(a: LaunchArgs, p: Plan, exe: PathBuf) -> Result<i32> {
    let timeout = Duration::from_secs_f64(a.rdzv_timeout_s);
    let server = host_store(&p).await?;
    let port = server.as_ref().map_or(p.port, |s| s.addr.port());
    let store_addr = format!("{}:{port}", p.host);
    let rounds = p.elastic.map(|(min, max)| {
        let last_call = Duration::from_secs_f64(a.rdzv_last_call_s);
        Rounds::new(&p.run_id, min, max, last_call, timeout).with_settings(settings_line(&a, min))
    });
    let who = match &rounds {
        None => format!("agent {}", p.node_rank),
        Some(r) => format!("agent {}", r.me),
    };
    let mut signals = Signals::new(a.time_limit, i32::from(a.preempted_exit_code))?;
    if let Some(t) = a.time_limit {
        // (sbatch's plain number is minutes: the limit as read, to be sure)
        let (h, m, s) = (t / 3600, t / 60 % 60, t % 60);
        console_err!("[launch] --time-limit: the group stops {h}:{m:02}:{s:02} (h:mm:ss) after this agent's start");
    }
    let (addr2, token2, who2) = (store_addr.clone(), p.token.clone(), who.clone());
    let connect = tokio::task::spawn_blocking(move || StoreClient::connect(&addr2, &token2, &who2, timeout));
    let mut client = match until_signal(&mut signals, connect, "connecting to the store").await {
        Ok(c) => c?,
        Err(code) => return Ok(code),
    };
    // the store answers at once: one that does not within seconds is frozen or gone, and an agent
    // leaving (finish) must not wait long on it
    client.set_reply_timeout(Duration::from_secs(5));
    // (which store this is: one started again at its address later is another, without the group)
    let store_instance = client.instance(Duration::from_secs(5)).ok().flatten();
    match &rounds {
        None => console_err!(
            "[launch] node {}/{}: {} of {}, store {store_addr}, run {} (logs {})",
            p.node_rank,
            p.nnodes,
            crate::plural(a.nproc_per_node, "local rank"),
            p.nnodes * a.nproc_per_node,
            p.run_id,
            a.log_dir.join(&p.run_id).display()
        ),
        Some(r) => {
            console_err!(
                "[launch] agent {} of an elastic group of {}:{} nodes: {} each, store {store_addr}, run {} (logs {})",
                r.me,
                r.min,
                r.max,
                crate::plural(a.nproc_per_node, "local rank"),
                p.run_id,
                a.log_dir.join(&p.run_id).display()
            );
            r.beat(&store_addr, &p.token);
        }
    }

    // a fixed group's agent may replace a lost node's (a restarted pod or node): it joins the group's
    // current attempt, or the next one when the lost agent had joined the current
    // (an agent of the other kind of group, fixed or elastic, is refused first: it would wait for nodes
    // that never come)
    let first = {
        let (run_id, node, max_restarts, elastic) = (p.run_id.clone(), p.node_rank, a.max_restarts, rounds.is_some());
        let mine = settings_line(&a, rounds.as_ref().map_or(p.nnodes, |r| r.min));
        let hosting = server.is_some();
        let find = tokio::task::spawn_blocking(move || {
            let k = check_kind(&mut client, &run_id, elastic, &mine, hosting).and_then(|()| match elastic {
                true => Ok(0),
                false => first_attempt(&mut client, &run_id, node, max_restarts, timeout),
            });
            (client, k)
        });
        let what = if rounds.is_some() { "checking the group" } else { "waiting for the group's attempt to end" };
        match until_signal(&mut signals, find, what).await {
            Err(code) => return Ok(code),
            Ok((c, k)) => {
                client = c;
                k?
            }
        }
    };
    for attempt in first.. {
        // a fixed group's agents check on their first meeting that they launch the same group (before
        // they meet: agents that disagree on --nnodes would wait for different nodes)
        // (an agent signalled meanwhile leaves the meeting, posting so under the attempt's `signal`: the
        // others stop too, and a lost node's replacement does not join)
        let leaving = format!("{}/attempt-{attempt}/signal", p.run_id);
        // (and a node signalled as the attempt before failed, after this agent looked for that: it
        // never comes to this meeting)
        let before = attempt.checked_sub(1).map(|k| format!("{}/attempt-{k}/signal", p.run_id));
        let stops: Vec<String> = std::iter::once(leaving.clone()).chain(before).collect();
        let tell_leaving = |signals: &Signals| {
            let what = format!("node {} ({})", p.node_rank, signals.stopped_by().unwrap_or("a signal"));
            ending::tell_leaving(&store_addr, &p.token, &who, leaving.clone(), what, server.is_some())
        };
        if attempt == first && rounds.is_none() {
            let settings = format!("{}/settings", p.run_id);
            let g = Group { round: attempt, node_rank: p.node_rank, nnodes: p.nnodes };
            let agree = agree_on_settings(client, &a, &settings, g, server.is_some(), timeout, stops.clone());
            match until_signal(&mut signals, agree, "waiting for the other agents").await {
                Err(code) => {
                    tell_leaving(&signals).await;
                    return Ok(code);
                }
                Ok(Err(e)) if e.downcast_ref::<MeetingStopped>().is_some() => {
                    return Ok(another_left(&e, &signals, server.is_some()).await);
                }
                Ok(agreed) => {
                    let (c, agreed) = agreed?;
                    client = c;
                    if let Err(missing) = agreed {
                        let nodes: Vec<String> = missing.iter().map(usize::to_string).collect();
                        bail!(
                            "rendezvous {settings}: node ranks [{}] of {} never arrived within {:.0} s (start \
                             `infinity launch` there)",
                            nodes.join(", "),
                            p.nnodes,
                            timeout.as_secs_f64()
                        );
                    }
                }
            }
        }
        // all agents meet before spawning, so a restart starts every node together
        let (meet, what) = match rounds.clone() {
            None => {
                let (run_id, node, nnodes, stops) = (p.run_id.clone(), p.node_rank, p.nnodes, stops.clone());
                let meet = tokio::task::spawn_blocking(move || -> Result<(StoreClient, Joined)> {
                    // where an agent that replaces a lost node joins
                    client.set(&format!("{run_id}/{CURRENT_ATTEMPT}"), attempt.to_string().as_bytes())?;
                    let pre = format!("{run_id}/attempt-{attempt}/agents");
                    if let Err(e) = client.meet(&pre, node, nnodes, timeout, Members::Nodes, &stops) {
                        if e.downcast_ref::<MeetingStopped>().is_some() {
                            return Err(e);
                        }
                        // a node that is missing because it ended an earlier attempt (its agent exited) is
                        // named so: no `infinity launch` to start there, its agent is gone
                        let ended = ended_nodes(&mut client, &run_id, attempt, nnodes);
                        if ended.is_empty() {
                            return Err(e);
                        }
                        return Err(group::with_ended(e, &ended));
                    }
                    Ok((client, Joined::Member(Group { round: attempt, node_rank: node, nnodes })))
                });
                (meet, "waiting for the other agents")
            }
            Some(r) => {
                let meet = tokio::task::spawn_blocking(move || -> Result<(StoreClient, Joined)> {
                    let joined = r.join(&mut client)?;
                    Ok((client, joined))
                });
                (meet, "waiting for a round of the elastic group")
            }
        };
        // a fixed group's restart that never met: the attempt before's record says `restart`, this
        // attempt's says why none came
        let unmet = |cause: String, node: Option<usize>, next: Next| {
            if rounds.is_none() && attempt > first {
                let dir = p.attempt_dir(&a.log_dir, attempt);
                failure::write(&dir, (attempt, p.node_rank), (&cause, node), None, next.as_str(), &[]);
            }
        };
        let g = match until_signal(&mut signals, meet, what).await {
            Err(code) => {
                let by = signals.stopped_by().unwrap_or("a signal");
                unmet(format!("the restart's rendezvous: this node was stopped by {by}"), None, Next::Signalled);
                if rounds.is_none() {
                    tell_leaving(&signals).await;
                }
                return Ok(code);
            }
            Ok(Err(e)) if e.downcast_ref::<MeetingStopped>().is_some() => {
                unmet(format!("the restart's rendezvous: {e}"), None, Next::Signalled);
                return Ok(another_left(&e, &signals, server.is_some()).await);
            }
            Ok(met) => {
                let (c, joined) = match met {
                    Ok(met) => met,
                    Err(e) => {
                        // (the node that never came, where one did not)
                        let missing = e.downcast_ref::<NeverArrived>().map(|n| &n.missing[..]);
                        let node = match missing {
                            Some(&[one]) => Some(one),
                            _ => None,
                        };
                        unmet(format!("the restart's rendezvous failed: {e:#}"), node, Next::RestartNeverMet);
                        // (at a restart, two agents of one node rank are a node's pod and its replacement,
                        // started while it lived: the group goes on with the one that came first, and
                        // this one fails as a pod does, not as a bad command line (exit 2), which a
                        // scheduler's failure policy takes to end the job)
                        if attempt > 0 && e.downcast_ref::<JoinedTwice>().is_some() {
                            bail!(
                                "{e:#}: another agent of node rank {} came first to attempt {attempt}'s meeting (a \
                                 node's pod and its replacement, both running?); the group goes on with that \
                                 one, without this agent",
                                p.node_rank
                            );
                        }
                        return Err(e);
                    }
                };
                client = c;
                match joined {
                    Joined::Member(g) => g,
                    Joined::Ended(code) => {
                        console_err!("[launch] the group ended (exit code {code}) without this node");
                        if let (Some(r), Some(_)) = (&rounds, &server) {
                            // the group's agents (and other waiting ones) finish before the store goes
                            if let Ok(Some((round, nnodes))) = r.last_group(&mut client) {
                                wait_for_agents(&mut client, &format!("{}/attempt-{round}", p.run_id), nnodes).await;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        return Ok(code);
                    }
                }
            }
        };
        if rounds.is_some() {
            let (first, last) = (g.node_rank * a.nproc_per_node, (g.node_rank + 1) * a.nproc_per_node - 1);
            let ranks = match first == last {
                true => format!("rank {first}"),
                false => format!("ranks {first}-{last}"),
            };
            console_err!(
                "[launch] round {}: node {} of {}, {ranks} of {}",
                g.round,
                g.node_rank,
                g.nnodes,
                g.nnodes * a.nproc_per_node
            );
        }
        let prefix = format!("{}/attempt-{}", p.run_id, g.round);
        let end = Ending { prefix: &prefix, g, hosting: server.is_some(), rounds: rounds.as_ref() };
        // every member of an elastic round launches the same ranks (one that vanished since the round
        // closed fails the round, which the others restart without it)
        let mut outcome = None;
        if rounds.is_some() {
            let settings = format!("{}/settings/{}", p.run_id, g.round);
            // (an elastic round's members are alive and post theirs at once)
            let wait = timeout.min(Duration::from_secs(30));
            let agree = agree_on_settings(client, &a, &settings, g, server.is_some(), wait, Vec::new());
            let (c, agreed) = match until_signal(&mut signals, agree, "checking the round's settings").await {
                Err(code) => return Ok(code),
                Ok(agreed) => agreed?,
            };
            client = c;
            if let (Ok(()), Some(r)) = (&agreed, &rounds) {
                // (what a later agent compares its own settings with before it joins)
                r.post_settings(&mut client)?;
            }
            if let Err(missing) = agreed {
                let nodes: Vec<String> = missing.iter().map(usize::to_string).collect();
                let missing_text = format!(
                    "nodes [{}] of {} never started their ranks (no settings within {:.0} s: gone?)",
                    nodes.join(", "),
                    g.nnodes,
                    wait.as_secs_f64()
                );
                let one = (missing.len() == 1).then(|| missing[0]);
                let (report, node) =
                    watch::post_first(&mut client, &format!("{prefix}/failed"), missing_text, one).await;
                outcome = Some(Outcome::Failed { report, permanent: None, local: None, node });
            }
        }
        let outcome = match outcome {
            Some(o) => o,
            None => {
                let ranks = spawn_group(&a, &p, g, &exe, port).await?;
                signals.ranks_started();
                let elastic = rounds.as_ref().map(|r| Membership {
                    grow: (g.nnodes < r.max).then(|| r.waiting_key(g.round)),
                    hosting: server.is_some(),
                });
                watch(ranks, &a, &p, g, &store_addr, &prefix, elastic, &mut signals).await?
            }
        };
        // ranks that succeeded here end the run only when every node's did: a group that fails meanwhile
        // is joined (its restart, or its exit code)
        let outcome = match outcome {
            Outcome::Succeeded => {
                match a.nproc_per_node {
                    1 => console_err!("[launch] the local rank finished"),
                    n => console_err!("[launch] all {n} local ranks finished"),
                }
                let elastic_member = rounds.is_some() && server.is_none();
                group_outcome(&mut client, &prefix, g, elastic_member, &mut signals).await
            }
            o => o,
        };
        match outcome {
            Outcome::Succeeded => {
                return Ok(end.finish(&mut client, 0, true).await);
            }
            Outcome::Stopped(code) => {
                // (0: stopped cleanly, checkpointed; what a scheduler that retries failures should see)
                let how = match code {
                    0 => "the ranks stopped after the signal",
                    c if c > 128 => "the ranks stopped after the signal, not all of them checkpointed (killed)",
                    _ => "the ranks stopped after the signal, a rank failing",
                };
                let code = if code == 0 { i32::from(a.preempted_exit_code) } else { code };
                console_err!("[launch] {how}; exiting with {code}");
                // (a node that leaves an elastic group ends only its own part, unless it hosts the store)
                return Ok(end.finish(&mut client, code, end.hosting).await);
            }
            Outcome::Regroup(why) => {
                console_err!("[launch] {why}: the ranks checkpointed; regrouping (not a restart)");
            }
            Outcome::Failed { mut report, permanent, local, node } => {
                let dir = p.attempt_dir(&a.log_dir, g.round);
                // a restart meets in the store: with its host gone (node 0's agent; an elastic group's
                // agent at --rdzv) none can, and only the whole job started again goes on
                let lost = match (permanent, &server) {
                    (None, None) => verdict::store_lost(&store_addr, &p.token, &who, store_instance.as_deref()).await,
                    _ => None,
                };
                if let Some(why) = lost {
                    let store_node = rounds.is_none().then_some(0);
                    let (host, node) = (watch::store_host(store_node), store_node.or(node));
                    if !report.starts_with("the store") {
                        report = format!("the store's host ({host}) was lost: {why}\n  (here: {report})");
                    }
                    console_err!("[launch] attempt {} failed. Root cause: {report}", g.round);
                    let next = Next::StoreHostLost.as_str();
                    failure::write(&dir, (g.round, g.node_rank), (&report, node), local.as_ref(), next, &[]);
                    console_err!(
                        "[launch] not restarting: the store's host ({host}) is gone, and the group's rendezvous \
                         with it; restart the job on every node (a requeue does; `--resume auto` takes the newest \
                         checkpoint)"
                    );
                    return Ok(1);
                }
                // every node stops for a permanent failure, whichever failure was posted first
                let permanent = match permanent {
                    Some(code) => {
                        // this node's rank, or the one another node marked (read from the store)
                        let marked = |c: &mut StoreClient| {
                            verdict::read_permanent(c, &format!("{prefix}/{}", verdict::PERMANENT)).and_then(|p| p.rank)
                        };
                        let rank = local.as_ref().filter(|l| l.exit_code == Some(code)).map(|l| l.rank);
                        let rank = rank.or_else(|| marked(&mut client));
                        Some(Permanent { code, rank })
                    }
                    None => {
                        let found = verdict::permanent_elsewhere(&mut client, &prefix, g).await;
                        if let Some(Permanent { code, rank: Some(r) }) = found {
                            let n = r / a.nproc_per_node;
                            if node != Some(n) {
                                report += &format!(
                                    "\n  (then rank {r} (node {n}) exited with exit code {code}, which a restart \
                                     would repeat)"
                                );
                            }
                        }
                        found
                    }
                };
                // (a silent rank named by a timeout may be waiting itself: the flight records say which)
                let (report, node) = failure::by_flight_records(&dir, report, node, a.nproc_per_node);
                console_err!("[launch] attempt {} failed. Root cause: {report}", g.round);
                let collectives = failure::collectives(&dir, local.as_ref());
                for line in &collectives {
                    console_err!("[launch] flight records: {line}");
                }
                // restarts used: failed attempts so far (an elastic group's regroups are not failures)
                let used = match rounds {
                    None => attempt + 1,
                    Some(_) => failed_attempts(&mut client, &p.run_id, g.round)?,
                };
                // a node signalled as the attempt failed (after this node posted its failure): the group
                // stops, as that node did; a restart would wait for it in vain
                let signal_key = format!("{prefix}/signal");
                let stopped_by = permanent.is_none().then(|| ending::signalled(&mut client, &signal_key)).flatten();
                let next = match (permanent, used > a.max_restarts, &stopped_by) {
                    (Some(_), ..) => Next::Permanent,
                    (None, _, Some(_)) => Next::Signalled,
                    (None, true, None) => Next::NoRestartsLeft,
                    (None, false, None) => Next::Restart,
                };
                let (at, cause) = ((g.round, g.node_rank), (report.as_str(), node));
                failure::write(&dir, at, cause, local.as_ref(), next.as_str(), &collectives);
                if let Some(Permanent { code, rank }) = permanent {
                    let what = match code {
                        EXIT_BAD_DATA => "the dataset is wrong",
                        EXIT_DIVERGED => "the run diverged (it would again from its last good checkpoint)",
                        _ => "the command or its config is wrong",
                    };
                    let by = rank.map_or(String::new(), |r| format!(" (rank {r}, node {})", r / a.nproc_per_node));
                    console_err!(
                        "[launch] not restarting: exit code {code}{by} means {what}, and a restart would fail the \
                         same way"
                    );
                    return Ok(end.finish(&mut client, code, true).await);
                }
                if let Some(who) = stopped_by {
                    let code = i32::from(a.preempted_exit_code);
                    console_err!(
                        "[launch] {who} was signalled as the attempt failed: the group stops; exiting with {code}"
                    );
                    return Ok(end.finish(&mut client, code, true).await);
                }
                if used > a.max_restarts {
                    console_err!("[launch] no restarts left (--max-restarts {})", a.max_restarts);
                    return Ok(end.finish(&mut client, 1, true).await);
                }
                console_err!(
                    "[launch] restarting the group (restart {used} of {}): it resumes from run.dir's newest checkpoint, \
                     or, without one, starts as its first attempt did",
                    a.max_restarts
                );
            }
        }
    }
    unreachable!("the loop returns")
}
