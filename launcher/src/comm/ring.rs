//! A ring of TCP connections (rank r → r+1): ring reduce-scatter + all-gather for all-reduce, as Gloo
//! and NCCL's ring algorithm do, so each rank sends and receives `2·(W−1)/W` of the buffer.
//!
//! Each step sends one chunk to the next rank while receiving one from the previous rank: the send runs
//! on the ring's sender thread so that neither side waits for the other's socket buffer. The order of
//! additions is fixed by (rank, world), so results are deterministic and identical on every rank.
//! Values travel as little-endian f32 (all supported hosts are little-endian).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{CommError, CommResult, Communicator};
use crate::store::StoreClient;

const MAGIC: u32 = 0x1f1e_7a11;

pub struct TcpRing {
    rank: usize,
    world: usize,
    prev: TcpStream,
    timeout: Duration,
    /// Buffers to write to the next rank; each comes back on `done` once written (or with the error).
    to_send: Sender<Vec<f32>>,
    done: Receiver<std::io::Result<Vec<f32>>>,
    spare: Vec<Vec<f32>>,
    scratch: Vec<f32>,
}

impl TcpRing {
    /// Build the ring: listen, publish the address under `prefix/ring/{rank}`, connect to the next rank
    /// and accept the previous one. `host` is the address other ranks reach this one at.
    pub fn connect(
        store: &mut StoreClient,
        prefix: &str,
        rank: usize,
        world: usize,
        host: &str,
        timeout: Duration,
    ) -> Result<TcpRing> {
        let listener = TcpListener::bind((host, 0)).with_context(|| format!("ring: binding {host}:0"))?;
        let port = listener.local_addr()?.port();
        store.set(&format!("{prefix}/ring/{rank}"), format!("{host}:{port}").as_bytes())?;
        let next = (rank + 1) % world;
        let prev = (rank + world - 1) % world;
        let addr = String::from_utf8(store.get(&format!("{prefix}/ring/{next}"), timeout)?)
            .context("ring: a rank published a non-UTF-8 address")?;

        let deadline = Instant::now() + timeout;
        let mut out = loop {
            match TcpStream::connect(&addr) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("ring: connecting to rank {next} at {addr}: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => bail!("ring: rank {next} at {addr} not reachable: {e}"),
            }
        };
        out.set_nodelay(true).ok();
        out.write_all(&[MAGIC.to_le_bytes(), (rank as u32).to_le_bytes()].concat())?;

        listener.set_nonblocking(true)?;
        let inp = loop {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let mut hello = [0u8; 8];
                    let ok = s.read_exact(&mut hello).is_ok()
                        && u32::from_le_bytes(hello[..4].try_into().unwrap()) == MAGIC
                        && u32::from_le_bytes(hello[4..].try_into().unwrap()) as usize == prev;
                    if ok {
                        break s;
                    }
                    tracing::warn!("ring: rank {rank} refused a connection from {peer} (not rank {prev})");
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => bail!("ring: rank {prev} never connected to rank {rank}: {e}"),
            }
        };
        inp.set_nodelay(true).ok();
        inp.set_read_timeout(Some(timeout))?;
        out.set_write_timeout(Some(timeout))?;

        let (to_send, rx) = channel::<Vec<f32>>();
        let (tx_done, done) = channel();
        std::thread::Builder::new().name(format!("ring-send-{rank}")).spawn(move || {
            for buf in rx {
                let r = out.write_all(bytemuck::cast_slice(&buf)).map(|_| buf);
                if tx_done.send(r).is_err() {
                    break;
                }
            }
        })?;
        Ok(TcpRing { rank, world, prev: inp, timeout, to_send, done, spare: vec![], scratch: vec![] })
    }

    fn next(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Queue `out` for the next rank (the sender thread writes it).
    fn post(&mut self, op: &'static str, out: &[f32]) -> CommResult<()> {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(out);
        let next = self.next();
        self.to_send.send(buf).map_err(|_| CommError::Peer { op, peer: next, detail: "sender stopped".into() })
    }

    /// Wait until the posted buffer is written.
    fn sent(&mut self, op: &'static str) -> CommResult<()> {
        let next = self.next();
        match self.done.recv() {
            Ok(Ok(buf)) => {
                self.spare.push(buf);
                Ok(())
            }
            Ok(Err(e)) => Err(CommError::Peer { op, peer: next, detail: format!("send failed: {e}") }),
            Err(_) => Err(CommError::Peer { op, peer: next, detail: "sender stopped".into() }),
        }
    }

    /// Read `dst.len()` values from the previous rank.
    fn recv_into(
        prev: &mut TcpStream,
        op: &'static str,
        peer: usize,
        timeout: Duration,
        dst: &mut [f32],
    ) -> CommResult<()> {
        prev.read_exact(bytemuck::cast_slice_mut(dst)).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                CommError::Timeout { op, peer, secs: timeout.as_secs_f64() }
            }
            std::io::ErrorKind::UnexpectedEof => {
                CommError::Peer { op, peer, detail: "closed the connection (exited?)".into() }
            }
            _ => CommError::Peer { op, peer, detail: e.to_string() },
        })
    }

    /// Send `out` to the next rank while receiving `n_in` values from the previous one into `scratch`.
    fn exchange(&mut self, op: &'static str, out: &[f32], n_in: usize) -> CommResult<()> {
        self.post(op, out)?;
        self.scratch.resize(n_in, 0.0);
        let peer = self.prev_rank();
        Self::recv_into(&mut self.prev, op, peer, self.timeout, &mut self.scratch)?;
        self.sent(op)
    }

    /// Ring reduce-scatter over chunks `bounds`; afterwards this rank holds the full sum of chunk
    /// `(rank + shift + 1) mod W`.
    fn reduce_scatter_chunks(
        &mut self,
        op: &'static str,
        buf: &mut [f32],
        bounds: &[usize],
        shift: usize,
    ) -> CommResult<()> {
        let w = self.world;
        for s in 0..w - 1 {
            let send_c = (self.rank + shift + w - s) % w;
            let recv_c = (self.rank + shift + 2 * w - s - 1) % w;
            let (a, b) = (bounds[recv_c], bounds[recv_c + 1]);
            self.exchange(op, &buf[bounds[send_c]..bounds[send_c + 1]], b - a)?;
            buf[a..b].iter_mut().zip(&self.scratch).for_each(|(x, y)| *x += *y);
        }
        Ok(())
    }

    /// Ring all-gather: this rank starts holding chunk `first`; afterwards it holds all chunks.
    fn all_gather_chunks(
        &mut self,
        op: &'static str,
        buf: &mut [f32],
        bounds: &[usize],
        first: usize,
    ) -> CommResult<()> {
        let w = self.world;
        for s in 0..w - 1 {
            let send_c = (first + w - s) % w;
            let recv_c = (first + 2 * w - s - 1) % w;
            let (a, b) = (bounds[recv_c], bounds[recv_c + 1]);
            self.exchange(op, &buf[bounds[send_c]..bounds[send_c + 1]], b - a)?;
            buf[a..b].copy_from_slice(&self.scratch);
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
        if self.world == 1 {
            return Ok(());
        }
        let bounds = even_bounds(buf.len(), self.world);
        self.reduce_scatter_chunks("all_reduce", buf, &bounds, 0)?;
        let owned = (self.rank + 1) % self.world;
        self.all_gather_chunks("all_reduce", buf, &bounds, owned)
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> CommResult<()> {
        if self.world == 1 {
            return Ok(());
        }
        if root >= self.world {
            return Err(CommError::Usage { op: "broadcast", detail: format!("root {root} ≥ world {}", self.world) });
        }
        // Pass the buffer along the ring from the root; the rank before the root only receives.
        let last = (root + self.world - 1) % self.world;
        if self.rank != root {
            let peer = self.prev_rank();
            Self::recv_into(&mut self.prev, "broadcast", peer, self.timeout, buf)?;
        }
        if self.rank != last {
            self.post("broadcast", buf)?;
            self.sent("broadcast")?;
        }
        Ok(())
    }

    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> CommResult<()> {
        let n = send.len();
        if recv.len() != n * self.world {
            return Err(CommError::Usage {
                op: "all_gather",
                detail: format!("recv has {} values, expected {}", recv.len(), n * self.world),
            });
        }
        recv[self.rank * n..(self.rank + 1) * n].copy_from_slice(send);
        let bounds: Vec<usize> = (0..=self.world).map(|i| i * n).collect();
        self.all_gather_chunks("all_gather", recv, &bounds, self.rank)
    }

    fn reduce_scatter_sum(&mut self, send: &[f32], recv: &mut [f32]) -> CommResult<()> {
        let n = recv.len();
        if send.len() != n * self.world {
            return Err(CommError::Usage {
                op: "reduce_scatter",
                detail: format!("send has {} values, expected {}", send.len(), n * self.world),
            });
        }
        let mut work = send.to_vec();
        let bounds: Vec<usize> = (0..=self.world).map(|i| i * n).collect();
        // shift W−1: the chunk this rank ends with is its own index
        self.reduce_scatter_chunks("reduce_scatter", &mut work, &bounds, self.world - 1)?;
        recv.copy_from_slice(&work[self.rank * n..(self.rank + 1) * n]);
        Ok(())
    }
}
