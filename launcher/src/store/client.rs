//! A blocking store client (training processes are synchronous; agents call it from blocking tasks).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::waiting::{never_arrived, refused_clause, Progress, START_THERE};
use super::wire::{body_len, frame, Request, Response};

pub struct StoreClient {
    sock: TcpStream,
    addr: String,
    /// Who this client is (`agent 1`, `rank 3`), as its hello said.
    who: String,
    /// The token it joined with: the ring's hellos are keyed by it too.
    token: String,
    /// How long a reply to a call that does not wait (set, add, check) may take, and the slack given to
    /// one that does (get, wait): a frozen store host must not hold a caller much longer.
    reply_timeout: Duration,
    /// A call went unanswered or its connection broke: a late reply would be taken for the next call's,
    /// so every later call fails (reconnect for a fresh one).
    broken: bool,
}

/// The reply timeout of a new client.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to the first of `targets` that accepts one, in the resolver's order: `localhost` may
/// resolve to ::1 first while the store listens on 127.0.0.1. Otherwise why each failed.
fn first_that_accepts(targets: impl Iterator<Item = SocketAddr>) -> std::result::Result<TcpStream, String> {
    let mut failed = Vec::new();
    for target in targets {
        match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(sock) => return Ok(sock),
            Err(e) => failed.push(format!("{target}: {e}")),
        }
    }
    match failed.is_empty() {
        true => Err("it resolves to no address".into()),
        false => Err(failed.join("; ")),
    }
}

/// A meeting's timeout ([`StoreClient::meet`]): the members that never arrived, by number, beside its
/// message (a failure record names the node where it is one).
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub struct NeverArrived {
    pub missing: Vec<usize>,
    pub text: String,
}

impl StoreClient {
    /// The token this client joined the store with (the group's shared secret).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Connect to `addr` and authenticate, retrying until `timeout` (the store may still be starting, and
    /// its host's name may not resolve yet: a Kubernetes Service appears with its pod), and saying so
    /// every 30 s. A wrong token is [`Refused`].
    pub fn connect(addr: &str, token: &str, who: &str, timeout: Duration) -> Result<StoreClient> {
        let deadline = Instant::now() + timeout;
        let secs = timeout.as_secs_f64();
        let mut progress = Progress::start(timeout, "the rendezvous timeout");
        loop {
            let last_err = match addr.to_socket_addrs() {
                Ok(targets) => match first_that_accepts(targets) {
                    Ok(sock) => match Self::hello(sock, addr, token, who, deadline, secs) {
                        // (closed before any answer: a store with too many connections waiting for
                        // their hello closes new ones at once; it takes them again as those go)
                        Err(e) if e.downcast_ref::<Closed>().is_some() && Instant::now() < deadline => {
                            "it closed the connection before answering the hello (a store busy with other \
                             connections?)"
                                .to_string()
                        }
                        done => return done,
                    },
                    Err(e) => e,
                },
                Err(e) => format!("cannot resolve its host: {e}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "store {addr} not reachable within {secs:.0} s: {last_err} (the store is hosted by the agent \
                     `--rdzv` names, node 0's, or without one by rank 0: is it running, and is this its address?)"
                );
            }
            if progress.due() {
                // (a store expected on this very machine: the agent meant to host it runs elsewhere, or not yet)
                let here = match addr.to_socket_addrs().ok().and_then(|mut t| t.next()) {
                    // (a rank finds no store where a scheduler started the ranks without the agent, whose
                    // store is up before its ranks start: rank 0 hosts it)
                    Some(t) if super::is_this_machine(t.ip()) && who.starts_with("rank ") => {
                        " (that is this machine: rank 0, the store's host where the ranks start without \
                         `infinity launch`, should run here; is it running, with RANK=0?)"
                    }
                    Some(t) if super::is_this_machine(t.ip()) => {
                        " (that is this machine: the store's host, node rank 0's agent or rank 0 without one, \
                         should run here; is it running, with --node-rank 0?)"
                    }
                    _ => "",
                };
                console_err!("[store] {who}: no store at {addr} yet ({last_err}){here}: {}", progress.so_far());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Authenticates on a fresh connection; the store answers at once, so a peer silent until
    /// `deadline` is not one (or its host is frozen).
    fn hello(sock: TcpStream, addr: &str, token: &str, who: &str, deadline: Instant, secs: f64) -> Result<StoreClient> {
        sock.set_nodelay(true).ok();
        let wait = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let mut c = StoreClient {
            sock,
            addr: addr.to_string(),
            who: who.to_string(),
            token: token.to_string(),
            reply_timeout: wait,
            broken: false,
        };
        let hello = Request::Hello { token: token.into(), who: who.into() };
        // (the store closes a longer first message unread, which would read as a store gone away)
        let len = super::wire::frame(&hello).len() - 4;
        if len > super::MAX_HELLO {
            bail!(
                "store {addr}: the hello of {who} is {len} bytes, above the {} a store reads before the token is \
                 checked: a shorter INFINITY_RDZV_TOKEN (or --token)",
                super::MAX_HELLO
            );
        }
        let reply = c.call(&hello, Duration::ZERO).map_err(|e| match is_timeout(&e) {
            true => anyhow::anyhow!(
                "no answer from {addr} within {:.0} s (its host frozen or overloaded, or not an infinity store)",
                secs.max(wait.as_secs_f64())
            ),
            false => e,
        })?;
        c.reply_timeout = REPLY_TIMEOUT;
        match reply {
            Response::Ok => Ok(c),
            Response::Error { message } => Err(Refused(format!("store {addr} refused {who}: {message}")).into()),
            other => bail!("store {addr}: unexpected reply to hello: {other:?}"),
        }
    }

    /// Tells the store which run this agent belongs to: a store serving another run refuses it
    /// ([`Refused`], the connection is closed) and tells the agents waiting there.
    pub fn for_run(&mut self, run_id: &str) -> Result<()> {
        match self.call(&Request::ForRun { run_id: run_id.into() }, Duration::ZERO)? {
            Response::Ok => Ok(()),
            Response::Error { message } => {
                self.broken = true;
                Err(Refused(format!("store {} refused {}: {message}", self.addr, self.who)).into())
            }
            r => bail!("store {}: unexpected reply {r:?}", self.addr),
        }
    }

    /// The connections the store refused (a wrong token, another run's agent), one line each:
    /// `agent 1 from 10.0.0.2 (5 s ago): wrong token (…)`.
    pub fn refusals(&mut self) -> Result<Vec<String>> {
        match self.expect_ok(Request::Refusals, Duration::ZERO)? {
            Response::Refused { refused } => Ok(refused),
            r => bail!("store {}: unexpected reply {r:?}", self.addr),
        }
    }

    /// Bounds how long a reply may take (default 30 s): see `reply_timeout`.
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.reply_timeout = timeout;
    }

    /// Whether an earlier call failed, so that every later one does: reconnect.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// This side's address of the store connection: an address the store's network reaches us at.
    pub fn local_ip(&self) -> Result<std::net::IpAddr> {
        Ok(self.sock.local_addr()?.ip())
    }

    /// The store's address as this side reaches it.
    pub fn peer_ip(&self) -> Result<std::net::IpAddr> {
        Ok(self.sock.peer_addr()?.ip())
    }

    /// One request and its reply, which may take `wait` (how long the request itself waits) and then
    /// the reply timeout.
    fn call(&mut self, req: &Request, wait: Duration) -> Result<Response> {
        if self.broken {
            bail!("store {}: an earlier request went unanswered; this connection is no longer used", self.addr);
        }
        // a request that waits itself gets a few seconds' slack for its reply (at most the reply timeout)
        let timeout = match wait.is_zero() {
            true => self.reply_timeout,
            false => wait + self.reply_timeout.min(Duration::from_secs(5)),
        };
        let r = self.exchange(req, timeout);
        self.broken = r.is_err();
        r
    }

    fn exchange(&mut self, req: &Request, timeout: Duration) -> Result<Response> {
        let ctx = || format!("store {}", self.addr);
        let bytes = frame(req);
        if bytes.len() - 4 > super::wire::MAX_FRAME {
            let what = match req {
                Request::Set { key, value } => format!("the value of {key} ({} bytes)", value.len()),
                _ => "a request".into(),
            };
            anyhow::bail!(
                "store {}: {what} is too large for the store's frames ({} bytes of at most {}): its values are \
                 addresses, ids and counters",
                self.addr,
                bytes.len() - 4,
                super::wire::MAX_FRAME
            );
        }
        self.sock.set_read_timeout(Some(timeout)).with_context(ctx)?;
        self.sock.write_all(&bytes).with_context(ctx)?;
        let mut header = [0u8; 4];
        if let Err(e) = self.sock.read_exact(&mut header) {
            let secs = timeout.as_secs_f64();
            return Err(match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                    anyhow::Error::new(e).context(format!("no answer from store {} within {secs:.0} s", self.addr))
                }
                // (the store's host exited, or the store closed this connection after refusing it; the
                // io error's own words, "failed to fill whole buffer", would say no more)
                ErrorKind::UnexpectedEof => Closed(format!(
                    "store {} closed the connection (did its host exit: node 0's agent, an elastic group's agent at \
                     --rdzv, or rank 0?)",
                    self.addr
                ))
                .into(),
                _ => anyhow::Error::new(e).context(format!("store {}: no reply", self.addr)),
            });
        }
        let n = body_len(header).map_err(|e| anyhow::anyhow!("store {}: {e}", self.addr))?;
        let mut body = vec![0u8; n];
        self.sock.read_exact(&mut body).with_context(ctx)?;
        serde_json::from_slice(&body).with_context(|| format!("store {}: malformed reply", self.addr))
    }

    fn expect_ok(&mut self, req: Request, timeout: Duration) -> Result<Response> {
        match self.call(&req, timeout)? {
            Response::Error { message } => bail!("store {}: {message}", self.addr),
            r => Ok(r),
        }
    }

    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.expect_ok(Request::Set { key: key.into(), value: value.to_vec() }, Duration::ZERO)?;
        Ok(())
    }

    pub fn get(&mut self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let req = Request::Get { key: key.into(), timeout_ms: timeout.as_millis() as u64 };
        match self.expect_ok(req, timeout)? {
            Response::Value { value } => Ok(value),
            Response::Timeout { .. } => {
                bail!("store {}: `{key}` not set within {:.0} s", self.addr, timeout.as_secs_f64())
            }
            r => bail!("store {}: unexpected reply {r:?}", self.addr),
        }
    }

    pub fn add(&mut self, key: &str, delta: i64) -> Result<i64> {
        match self.expect_ok(Request::Add { key: key.into(), delta }, Duration::ZERO)? {
            Response::Int { value } => Ok(value),
            r => bail!("store {}: unexpected reply {r:?}", self.addr),
        }
    }

    /// Wait until all `keys` are set; `Err(missing)` lists those that never were.
    pub fn wait(&mut self, keys: &[String], timeout: Duration) -> Result<std::result::Result<(), Vec<String>>> {
        let req = Request::Wait { keys: keys.to_vec(), timeout_ms: timeout.as_millis() as u64 };
        match self.expect_ok(req, timeout)? {
            Response::Ok => Ok(Ok(())),
            Response::Timeout { missing } => Ok(Err(missing)),
            r => bail!("store {}: unexpected reply {r:?}", self.addr),
        }
    }

    pub fn check(&mut self, keys: &[String]) -> Result<Vec<bool>> {
        match self.expect_ok(Request::Check { keys: keys.to_vec() }, Duration::ZERO)? {
            Response::Present { present } => Ok(present),
            r => bail!("store {}: unexpected reply {r:?}", self.addr),
        }
    }

    /// The store's instance id ([`INSTANCE_KEY`](super::INSTANCE_KEY)); `None` from a store of an earlier
    /// build, which holds none (looked for first: a get would wait for it).
    pub fn instance(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let key = super::INSTANCE_KEY.to_string();
        match self.check(std::slice::from_ref(&key))?[0] {
            true => self.get(&key, timeout).map(Some),
            false => Ok(None),
        }
    }

    /// Every rank announces itself under `prefix/rank/{r}` and waits for the others. Refused: a rank
    /// outside the world, a rank that joins twice ([`JoinedTwice`]), a world size that differs from
    /// rank 0's; a timeout names the ranks that never arrived.
    pub fn rendezvous(&mut self, prefix: &str, rank: usize, world: usize, timeout: Duration) -> Result<()> {
        self.meet(prefix, rank, world, timeout, Members::Ranks, &[])
    }

    /// [`rendezvous`](Self::rendezvous), its errors naming `members` (training ranks, or agents). A long
    /// wait says every 30 s who is missing, and with a timeout, what the store refused meanwhile. A
    /// member that leaves the meeting (a signalled agent) posts who it is under one of the keys `stops`:
    /// the wait ends within a second with [`MeetingStopped`] naming it, rather than waiting for the rest
    /// and forming a group without it.
    pub fn meet(
        &mut self,
        prefix: &str,
        rank: usize,
        world: usize,
        timeout: Duration,
        members: Members,
        stops: &[String],
    ) -> Result<()> {
        let (name, world_flag, hint) = match members {
            Members::Ranks => ("rank", "WORLD_SIZE", ""),
            Members::Nodes => ("node rank", "--nnodes", START_THERE),
        };
        let (speaker, setting) = match members {
            Members::Ranks => (format!("{}:", self.who), "dist.rdzv_timeout_s"),
            Members::Nodes => ("[launch]".to_string(), "--rdzv-timeout-s"),
        };
        let timed_out = |c: &mut Self, missing: &[String]| {
            let refused = c.refusals().unwrap_or_default();
            let again = match members {
                Members::Nodes => c.started_again(prefix, world),
                Members::Ranks => String::new(),
            };
            let text = format!("{}{again}", never_arrived(prefix, name, missing, world, timeout, hint, &refused));
            anyhow::Error::new(NeverArrived { missing: missing.iter().filter_map(|m| m.parse().ok()).collect(), text })
        };
        // a member that cannot join says why under `mismatch`, for the others' waits to name both sides
        let mismatch = format!("{prefix}/mismatch");
        if rank >= world {
            let why = format!("{name} {rank} is outside a world of {world} (its {world_flag})");
            let _ = self.set(&mismatch, why.as_bytes());
            bail!("rendezvous {prefix}: {why}");
        }
        if self.add(&format!("{prefix}/claims/{rank}"), 1)? > 1 {
            let why = match members {
                Members::Ranks => "two processes with the same RANK?".to_string(),
                Members::Nodes => format!("two agents with --node-rank {rank}?"),
            };
            return Err(JoinedTwice(format!("rendezvous {prefix}: {name} {rank} joined twice ({why})")).into());
        }
        if rank == 0 {
            self.set(&format!("{prefix}/world"), world.to_string().as_bytes())?;
        } else {
            let key = format!("{prefix}/world");
            let mut progress = Progress::start(timeout, setting);
            let ends = (mismatch.as_str(), stops);
            let waited = self.wait_saying(std::slice::from_ref(&key), ends, &mut progress, &speaker, |_| {
                format!("waiting for {name}s [0] of {world}")
            })?;
            if waited.is_err() {
                return Err(timed_out(self, &["0".to_string()]));
            }
            let w = self.get(&key, Duration::from_secs(1))?;
            let w0 = String::from_utf8_lossy(&w).to_string();
            if w0 != world.to_string() {
                let why = format!("{name} {rank} has {world_flag} {world}, {name} 0 has {w0}");
                let _ = self.set(&mismatch, why.as_bytes());
                bail!("rendezvous {prefix}: {why}");
            }
        }
        self.set(&format!("{prefix}/rank/{rank}"), b"1")?;
        let keys: Vec<String> = (0..world).map(|r| format!("{prefix}/rank/{r}")).collect();
        let ranks = |missing: &[String]| -> Vec<String> {
            missing.iter().filter_map(|k| k.rsplit('/').next()).map(str::to_string).collect()
        };
        let mut progress = Progress::start(timeout, setting);
        if let Err(missing) = self.wait_saying(&keys, (&mismatch, stops), &mut progress, &speaker, |missing| {
            format!("waiting for {name}s [{}] of {world}", ranks(missing).join(", "))
        })? {
            return Err(timed_out(self, &ranks(&missing)));
        }
        Ok(())
    }

    /// [`MeetingStopped`], naming who posted it, where one of the keys `stops` is `present` (a
    /// [`check`](Self::check) of them): a member left the meeting.
    pub fn check_left(&mut self, stops: &[String], present: &[bool]) -> Result<()> {
        match stops.iter().zip(present).find(|(_, &p)| p) {
            Some((stop, _)) => {
                let who = String::from_utf8_lossy(&self.get(stop, Duration::from_secs(1))?).into_owned();
                Err(MeetingStopped(who).into())
            }
            None => Ok(()),
        }
    }

    /// What the agents that found their node rank of meeting `prefix` taken posted
    /// ([`STARTED_AGAIN`](super::STARTED_AGAIN)): `; node rank 1 (again on HOST) was started a second
    /// time meanwhile: …`, or nothing.
    pub fn started_again(&mut self, prefix: &str, world: usize) -> String {
        let keys: Vec<String> = (0..world).map(|n| format!("{prefix}/{}/{n}", super::STARTED_AGAIN)).collect();
        let present = self.check(&keys).unwrap_or_default();
        let again: Vec<String> = keys
            .iter()
            .zip(present)
            .enumerate()
            .filter(|(_, (_, p))| *p)
            .map(|(n, (k, _))| {
                let host = self.get(k, Duration::from_secs(1)).map(|h| String::from_utf8_lossy(&h).into_owned());
                format!("{n} (again on {})", host.unwrap_or_else(|_| "?".into()))
            })
            .collect();
        match again.is_empty() {
            true => String::new(),
            false => format!(
                "; node rank {} was started a second time meanwhile: two agents with one --node-rank, and none with \
                 the missing one? (or a lost agent's replacement)",
                again.join(", ")
            ),
        }
    }

    /// [`wait`](Self::wait) until `progress` times out, saying what it waits for (`what` of the keys still
    /// missing) and the store's refusals whenever a report is due: `[launch] waiting for node ranks [1] of
    /// 2 (30 s so far, 270 s until --rdzv-timeout-s)`. `(mismatch, stops)`: a member that posted why it
    /// cannot join under `mismatch` ends the wait at the next report (or the timeout) with that error;
    /// one that left, under one of `stops`, within [`STOP_POLL`] with [`MeetingStopped`].
    fn wait_saying(
        &mut self,
        keys: &[String],
        (mismatch, stops): (&str, &[String]),
        progress: &mut Progress,
        speaker: &str,
        what: impl Fn(&[String]) -> String,
    ) -> Result<std::result::Result<(), Vec<String>>> {
        let ends: Vec<String> = std::iter::once(mismatch.to_string()).chain(stops.iter().cloned()).collect();
        loop {
            let slice = match stops.is_empty() {
                false => progress.slice().min(STOP_POLL),
                true => progress.slice(),
            };
            let waited = self.wait(keys, slice)?;
            let posted = match waited.is_err() {
                true => self.check(&ends)?,
                false => vec![],
            };
            if posted.first() == Some(&true) {
                let why = String::from_utf8_lossy(&self.get(mismatch, Duration::from_secs(1))?).into_owned();
                let prefix = mismatch.trim_end_matches("/mismatch");
                bail!("rendezvous {prefix}: {why}, so the group cannot form (start every member with the same size)");
            }
            self.check_left(stops, posted.get(1..).unwrap_or_default())?;
            match waited {
                Ok(()) => return Ok(Ok(())),
                Err(missing) if progress.timed_out() => return Ok(Err(missing)),
                Err(missing) if progress.due() => {
                    let refused = refused_clause(&self.refusals().unwrap_or_default());
                    console_err!("{speaker} {} ({}){refused}", what(&missing), progress.so_far());
                }
                Err(_) => {}
            }
        }
    }
}

/// Who meets in a rendezvous, for its errors: training ranks (`RANK`) or agents (`--node-rank`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Members {
    Ranks,
    Nodes,
}

/// The store closed this client's connection without an answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Closed(pub String);

/// The store refused this client: a wrong token, or an agent of another run (the message says which).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// How often a meeting that a member may leave ([`StoreClient::meet`]'s `stops`) looks for its leaving.
pub const STOP_POLL: Duration = Duration::from_secs(1);

/// How long the store's host stays after a member left a meeting, for the others waiting in it to read
/// that ([`STOP_POLL`]: two of their looks).
pub const STOP_READ: Duration = Duration::from_secs(2);

/// A member left a meeting before it formed, posting who it is (`node 1 (SIGTERM)`): the group cannot
/// form without it, and stops as it did.
#[derive(Debug, thiserror::Error)]
#[error("{0} was signalled while the group met")]
pub struct MeetingStopped(pub String);

/// A rendezvous refused a rank (or node rank) that had joined already: two processes were given one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JoinedTwice(pub String);

/// Whether a call failed for want of an answer in time.
fn is_timeout(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|e| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every address a name resolves to is tried, in order: the first refusing does not end the try.
    #[test]
    fn the_first_address_that_accepts_is_taken() {
        let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // (dropped)
        let open = listening.local_addr().unwrap();
        let sock = first_that_accepts([closed, open].into_iter()).unwrap();
        assert_eq!(sock.peer_addr().unwrap(), open);

        let why = first_that_accepts([closed, closed].into_iter()).unwrap_err();
        assert_eq!(why.matches(&closed.to_string()).count(), 2, "{why}");
        assert_eq!(first_that_accepts(std::iter::empty()).unwrap_err(), "it resolves to no address");
    }
}
