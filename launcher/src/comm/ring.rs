//! A ring of TCP connections (rank r → r+1): ring reduce-scatter + all-gather for all-reduce, as Gloo
//! and NCCL's ring algorithm do, so each rank sends and receives `2·(W−1)/W` of the buffer.
//!
//! Each step sends one chunk to the next rank while receiving one from the previous rank: the send runs
//! on a scoped thread straight from the caller's buffer, so neither side waits for the other's socket
//! buffer and nothing is copied. The order of
//! additions is fixed by (rank, world), so results are deterministic and identical on every rank.
//! Values travel as the host's f32 bytes (all supported hosts are little-endian). Each collective
//! starts with a header (see [`ring_wire`](super::ring_wire)), so ranks that call different ones fail.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::flight::FlightRecorder;
use super::ring_wire::{Header, Hello, Op, HEADER_WORDS, HELLO_WORDS};
use super::{CommError, CommResult, Communicator};
use crate::store::StoreClient;

pub struct TcpRing {
    rank: usize,
    world: usize,
    /// Connection to rank + 1 (we write) and from rank − 1 (we read).
    next: TcpStream,
    prev: TcpStream,
    timeout: Duration,
    /// Receive buffer of one block (reductions).
    scratch: Vec<f32>,
    /// Collectives begun since the ring was built (headers carry it).
    count: u64,
    flight: FlightRecorder,
}

/// How long an accepted connection may take to say its hello.
const HELLO_WAIT: Duration = Duration::from_secs(2);

impl TcpRing {
    /// Build the ring: listen, publish the address under `prefix/ring/{rank}`, connect to the next rank
    /// and accept the previous one. `host` is the address other ranks reach this one at; with
    /// `listen_all` the listener takes every interface of its family, for a rank that only knows a
    /// loopback address for itself while ranks on other hosts must reach it (they substitute the
    /// store's address, which is then this host's: see below).
    pub fn connect(
        store: &mut StoreClient,
        prefix: &str,
        rank: usize,
        world: usize,
        host: &str,
        listen_all: bool,
        timeout: Duration,
    ) -> Result<TcpRing> {
        // (the address `host` names here, of this machine where it names several; its family decides
        // the wildcard's)
        let ips: Vec<IpAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, 0))
            .with_context(|| format!("ring: resolving {host} (INFINITY_RING_HOST, or the store connection's address)"))?
            .map(|a| a.ip())
            .collect();
        let ip = ips.iter().copied().find(|&ip| crate::store::is_this_machine(ip)).or(ips.first().copied());
        let ip = ip.with_context(|| format!("ring: {host} resolves to no address"))?;
        let ports = super::ring_ports::from_env()?;
        let listen_on = match ip {
            IpAddr::V4(_) if listen_all => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) if listen_all => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => ip,
        };
        let listener = super::ring_ports::bind(listen_on, ports.as_ref()).context("ring")?;
        // published: `host`'s address (an IPv6 one as [addr]:port) and the listener's port
        let advertised = SocketAddr::new(ip, listener.local_addr()?.port());
        store.set(&format!("{prefix}/ring/{rank}"), advertised.to_string().as_bytes())?;
        let next = (rank + 1) % world;
        let prev = (rank + world - 1) % world;
        let published = String::from_utf8(store.get(&format!("{prefix}/ring/{next}"), timeout)?)
            .context("ring: a rank published a non-UTF-8 address")?;
        let mut addr: SocketAddr =
            published.parse().with_context(|| format!("ring: rank {next} published {published:?}, not an address"))?;
        // a loopback address published by a rank on another host (one that reached the store over
        // loopback: it runs on the store's host, e.g. MASTER_ADDR=localhost in a master pod) is reached
        // at the store's address from here
        if addr.ip().is_loopback() && !store.local_ip()?.is_loopback() {
            addr.set_ip(store.peer_ip()?);
            tracing::debug!("ring: rank {next} published {published}, reached at {addr} (the store's host)");
        }

        let deadline = Instant::now() + timeout;
        let mut out = loop {
            // (bounded: a peer behind a firewall that drops packets would hold a plain connect for minutes)
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
            match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(5))) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("ring: connecting to rank {next} at {addr}: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => bail!("ring: rank {next} at {addr} not reachable: {e}"),
            }
        };
        out.set_nodelay(true).ok();
        out.write_all(bytemuck::cast_slice(&Hello::new(store.token(), prefix, rank, world).encode()))?;

        listener.set_nonblocking(true)?;
        let expected = Hello::new(store.token(), prefix, prev, world);
        let mut refused = String::new(); // the last connection turned away, for the error if none comes
        let inp = loop {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false)?;
                    // (the predecessor sends its hello as it connects: a connection silent for 2 s, time
                    // for a lost segment's retransmissions, is not it, and strangers that keep connecting
                    // must not hold this past the deadline)
                    let left = deadline.saturating_duration_since(Instant::now());
                    s.set_read_timeout(Some(left.clamp(Duration::from_millis(10), HELLO_WAIT)))?;
                    let mut words = [0u32; HELLO_WORDS];
                    let why = match s.read_exact(bytemuck::cast_slice_mut(&mut words)) {
                        Err(e) => Some(format!("no hello: {e}")),
                        Ok(()) => match Hello::decode(&words) {
                            None => Some("not a ring connection".to_string()),
                            Some(hello) => hello.mismatch(&expected),
                        },
                    };
                    let Some(why) = why else { break s };
                    tracing::warn!("ring: rank {rank} refused a connection from {peer}: {why}");
                    refused = format!(" (refused {peer}: {why})");
                    if Instant::now() >= deadline {
                        bail!("ring: rank {prev} never connected to rank {rank} within the deadline{refused}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => bail!("ring: rank {prev} never connected to rank {rank}: {e}{refused}"),
            }
        };
        inp.set_nodelay(true).ok();
        let flight = FlightRecorder::from_env(rank, world, "ring");
        flight.answer_requests();
        let mut ring = TcpRing { rank, world, next: out, prev: inp, timeout, scratch: vec![], count: 0, flight };
        ring.set_timeout(timeout)?;
        Ok(ring)
    }

    /// How long a collective waits on a peer from now on (building the ring may need longer: ranks
    /// start at different times).
    pub fn set_timeout(&mut self, timeout: Duration) -> std::io::Result<()> {
        self.prev.set_read_timeout(Some(timeout))?;
        self.next.set_write_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }

    fn next_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Write `out` (values, or a header's words) to the next rank. A send that times out is a timeout
    /// waiting for that rank (it stopped reading: hung, or stuck elsewhere), so the launcher blames it,
    /// not this rank.
    fn send<T: bytemuck::Pod>(
        next: &mut TcpStream,
        op: &'static str,
        peer: usize,
        timeout: Duration,
        out: &[T],
    ) -> CommResult<()> {
        next.write_all(bytemuck::cast_slice(out)).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                CommError::Timeout { op, peer, secs: timeout.as_secs_f64() }
            }
            // (the next rank gone, as a read finds the previous one gone: named alike, so the launcher
            // blames that rank's node, not this one)
            _ if super::closed_by_peer(&e) => {
                CommError::Peer { op, peer, detail: format!("{} (send failed: {e})", super::CLOSED) }
            }
            _ => CommError::Peer { op, peer, detail: format!("send failed: {e}") },
        })
    }

    /// Read `dst.len()` values (or a header's words) from the previous rank.
    fn recv_into<T: bytemuck::Pod>(
        prev: &mut TcpStream,
        op: &'static str,
        peer: usize,
        timeout: Duration,
        dst: &mut [T],
    ) -> CommResult<()> {
        prev.read_exact(bytemuck::cast_slice_mut(dst)).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                CommError::Timeout { op, peer, secs: timeout.as_secs_f64() }
            }
            std::io::ErrorKind::UnexpectedEof => {
                CommError::Peer { op, peer, detail: format!("{} (exited?)", super::CLOSED) }
            }
            _ if super::closed_by_peer(&e) => CommError::Peer { op, peer, detail: format!("{} ({e})", super::CLOSED) },
            _ => CommError::Peer { op, peer, detail: e.to_string() },
        })
    }

    /// Begin collective `op` of `len` values from `root`: send its header to the next rank and check the
    /// previous rank's. Every rank passes the same arguments unless the caller has a bug; then the rank
    /// after the one that differs fails here, naming both collectives, before any value is misread.
    /// (The header is a few bytes into a socket that every earlier collective left empty: the send
    /// cannot block, so it need not overlap the receive.)
    fn begin(&mut self, op: Op, len: usize, root: usize) -> CommResult<()> {
        let mine = Header { op, root: root as u32, count: self.count, len: len as u64 };
        self.count += 1;
        let (name, next, prev) = (op.name(), self.next_rank(), self.prev_rank());
        Self::send(&mut self.next, name, next, self.timeout, &mine.encode())?;
        let mut theirs = [0u32; HEADER_WORDS];
        Self::recv_into(&mut self.prev, name, prev, self.timeout, &mut theirs)?;
        match mine.mismatch(&theirs) {
            None => Ok(()),
            Some(detail) => Err(CommError::Peer { op: name, peer: prev, detail }),
        }
    }

    /// Send `out` to the next rank while receiving `dst.len()` values from the previous one, which are
    /// added into `dst` (`reduce`) or stored there. Additions happen block by block as data arrives, so
    /// they overlap with the transfer.
    fn exchange(&mut self, op: &'static str, out: &[f32], dst: &mut [f32], reduce: bool) -> CommResult<()> {
        const BLOCK: usize = 1 << 18; // values: 1 MiB
        let (next, prev) = (self.next_rank(), self.prev_rank());
        let (tx, rx, scratch, timeout) = (&mut self.next, &mut self.prev, &mut self.scratch, self.timeout);
        std::thread::scope(|sc| {
            let sending = sc.spawn(move || Self::send(tx, op, next, timeout, out));
            let received = if reduce {
                scratch.resize(BLOCK.min(dst.len()), 0.0);
                dst.chunks_mut(BLOCK).try_for_each(|block| {
                    let got = &mut scratch[..block.len()];
                    Self::recv_into(rx, op, prev, timeout, got)?;
                    block.iter_mut().zip(got.iter()).for_each(|(x, y)| *x += *y);
                    Ok(())
                })
            } else {
                Self::recv_into(rx, op, prev, timeout, dst)
            };
            let sent =
                sending.join().unwrap_or_else(|_| Err(CommError::Usage { op, detail: "sender panicked".into() }));
            received.and(sent)
        })
    }

    /// The chunk to send and the (distinct) chunk to receive into, both slices of `buf`.
    fn two_chunks<'a>(buf: &'a mut [f32], bounds: &[usize], send: usize, recv: usize) -> (&'a [f32], &'a mut [f32]) {
        let (s, r) = ((bounds[send], bounds[send + 1]), (bounds[recv], bounds[recv + 1]));
        // the chunks are disjoint: the send chunk ends before the receive chunk starts, or the reverse
        if s.1 <= r.0 {
            let (lo, hi) = buf.split_at_mut(r.0);
            (&lo[s.0..s.1], &mut hi[..r.1 - r.0])
        } else {
            let (lo, hi) = buf.split_at_mut(s.0);
            (&hi[..s.1 - s.0], &mut lo[r.0..r.1])
        }
    }

    /// W − 1 ring steps over chunks `bounds`, starting by sending chunk `first`: step `s` sends chunk
    /// `first − s` and receives chunk `first − s − 1` (mod W), adding it in (`reduce`, reduce-scatter:
    /// afterwards this rank holds the full sum of chunk `first + 1`) or storing it (all-gather: this
    /// rank starts holding chunk `first` and ends holding all).
    fn ring_pass(
        &mut self,
        op: &'static str,
        buf: &mut [f32],
        bounds: &[usize],
        first: usize,
        reduce: bool,
    ) -> CommResult<()> {
        let w = self.world;
        for s in 0..w - 1 {
            let (send_c, recv_c) = ((first + w - s) % w, (first + 2 * w - s - 1) % w);
            let (out, dst) = Self::two_chunks(buf, bounds, send_c, recv_c);
            self.exchange(op, out, dst, reduce)?;
        }
        Ok(())
    }
}

fn even_bounds(n: usize, w: usize) -> Vec<usize> {
    (0..=w).map(|i| i * n / w).collect()
}

impl Communicator for TcpRing {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> CommResult<()> {
        let flight = self.flight.clone();
        flight.record("all_reduce", buf.len(), || self.all_reduce_unrecorded(buf))
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> CommResult<()> {
        let flight = self.flight.clone();
        flight.record("broadcast", buf.len(), || self.broadcast_unrecorded(buf, root))
    }

    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> CommResult<()> {
        let flight = self.flight.clone();
        flight.record("all_gather", send.len(), || self.all_gather_unrecorded(send, recv))
    }

    fn reduce_scatter_sum(&mut self, send: &[f32], recv: &mut [f32]) -> CommResult<()> {
        let flight = self.flight.clone();
        flight.record("reduce_scatter", recv.len(), || self.reduce_scatter_unrecorded(send, recv))
    }

    fn flight(&self) -> Option<&FlightRecorder> {
        Some(&self.flight)
    }
}

/// The collectives themselves (the trait's methods record them).
impl TcpRing {
    fn all_reduce_unrecorded(&mut self, buf: &mut [f32]) -> CommResult<()> {
        if self.world == 1 {
            return Ok(());
        }
        self.begin(Op::AllReduce, buf.len(), 0)?;
        let bounds = even_bounds(buf.len(), self.world);
        self.ring_pass("all_reduce", buf, &bounds, self.rank, true)?;
        let owned = (self.rank + 1) % self.world;
        self.ring_pass("all_reduce", buf, &bounds, owned, false)
    }

    fn broadcast_unrecorded(&mut self, buf: &mut [f32], root: usize) -> CommResult<()> {
        if self.world == 1 {
            return Ok(());
        }
        if root >= self.world {
            return Err(CommError::Usage { op: "broadcast", detail: format!("root {root} ≥ world {}", self.world) });
        }
        self.begin(Op::Broadcast, buf.len(), root)?;
        // Pass the buffer along the ring from the root, a block at a time so the ranks forward at once (a
        // whole buffer forwarded rank by rank would take W hops of it, and the last rank would wait out
        // its timeout for large ones); the rank before the root only receives.
        const BLOCK: usize = 1 << 18; // values: 1 MiB
        let (last, prev, next) = ((root + self.world - 1) % self.world, self.prev_rank(), self.next_rank());
        for block in buf.chunks_mut(BLOCK) {
            if self.rank != root {
                Self::recv_into(&mut self.prev, "broadcast", prev, self.timeout, block)?;
            }
            if self.rank != last {
                Self::send(&mut self.next, "broadcast", next, self.timeout, block)?;
            }
        }
        Ok(())
    }

    fn all_gather_unrecorded(&mut self, send: &[f32], recv: &mut [f32]) -> CommResult<()> {
        let n = send.len();
        if recv.len() != n * self.world {
            return Err(CommError::Usage {
                op: "all_gather",
                detail: format!("recv has {} values, expected {}", recv.len(), n * self.world),
            });
        }
        recv[self.rank * n..(self.rank + 1) * n].copy_from_slice(send);
        if self.world == 1 {
            return Ok(());
        }
        self.begin(Op::AllGather, n, 0)?;
        let bounds: Vec<usize> = (0..=self.world).map(|i| i * n).collect();
        self.ring_pass("all_gather", recv, &bounds, self.rank, false)
    }

    fn reduce_scatter_unrecorded(&mut self, send: &[f32], recv: &mut [f32]) -> CommResult<()> {
        let n = recv.len();
        if send.len() != n * self.world {
            return Err(CommError::Usage {
                op: "reduce_scatter",
                detail: format!("send has {} values, expected {}", send.len(), n * self.world),
            });
        }
        if self.world == 1 {
            recv.copy_from_slice(send);
            return Ok(());
        }
        self.begin(Op::ReduceScatter, n, 0)?;
        let mut work = send.to_vec();
        let bounds: Vec<usize> = (0..=self.world).map(|i| i * n).collect();
        // starting one chunk back, the chunk this rank ends with is its own index
        let first = (self.rank + self.world - 1) % self.world;
        self.ring_pass("reduce_scatter", &mut work, &bounds, first, true)?;
        recv.copy_from_slice(&work[self.rank * n..(self.rank + 1) * n]);
        Ok(())
    }
}
