//! Communicators: one trait for the collectives data-parallel training needs, with a TCP ring backend
//! for CPU ranks (as Gloo does) and an NCCL backend for GPU ranks (feature `cuda`).
//!
//! A peer that stops sending or reading makes a collective fail after the communicator's timeout
//! ([`CommError::Timeout`] on the ring, [`CommError::Stalled`] from the NCCL watchdog) rather than hang;
//! ranks next to a failed one fail, others may finish the collective first; NCCL's own setup
//! (`ncclCommInitRank`) is waited for as long, naming a rank that never came. Ranks that call different
//! collectives (a bug in the caller) fail on the ring, which sends a header ahead of each collective;
//! NCCL checks nothing of the kind and may hang until its watchdog fires, or misread.

pub mod flight;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod ring;
pub mod ring_ports;
pub mod ring_wire;

#[cfg(feature = "cuda")]
pub use nccl::{nccl_available, NcclComm};
pub use ring::TcpRing;

/// Exit code of a training process whose collective timed out (the launcher reports it by name).
pub const EXIT_COMM_TIMEOUT: i32 = 86;

#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error("collective `{op}` timed out after {secs:.0} s waiting for rank {peer}")]
    Timeout { op: &'static str, peer: usize, secs: f64 },
    #[error("collective `{op}`: rank {peer}: {detail}")]
    Peer { op: &'static str, peer: usize, detail: String },
    #[error("collective `{op}`: {detail}")]
    Usage { op: &'static str, detail: String },
    /// A collective that made no progress: the communicator was aborted.
    #[error("collective `{op}` stalled: {detail}")]
    Stalled { op: &'static str, detail: String },
    /// The backend library failed (NCCL, CUDA).
    #[error("collective `{op}`: {detail}")]
    Backend { op: &'static str, detail: String },
}

impl CommError {
    /// The rank that a [`CommError::Timeout`] printed in `text` (a rank's error line, as the trainer
    /// prints it before exiting with [`EXIT_COMM_TIMEOUT`]) waited for: the agent blames that rank, the
    /// silent one, not the rank that timed out. Parses the `Display` text above.
    pub fn timed_out_peer(text: &str) -> Option<usize> {
        let (_, after) = text.split_once("` timed out after ")?;
        let (_, peer) = after.split_once(" s waiting for rank ")?;
        let digits = peer.find(|c: char| !c.is_ascii_digit()).unwrap_or(peer.len());
        peer[..digits].parse().ok()
    }

    /// The rank whose closed connection `text` (a rank's error line) reports: a [`CommError::Peer`]
    /// whose peer went away, most often because that rank failed first. Parses the `Display` text above.
    pub fn closed_peer(text: &str) -> Option<usize> {
        let (_, after) = text.split_once("`: rank ")?;
        let (peer, detail) = after.split_once(": ")?;
        detail.starts_with(CLOSED).then(|| peer.parse().ok()).flatten()
    }
}

/// How a [`CommError::Peer`] says its peer closed the connection.
pub const CLOSED: &str = "closed the connection";

/// Whether a socket error says the peer is gone: its end closed or reset (a write into it fails with a
/// broken pipe or a reset, where a read would find its end).
pub(crate) fn closed_by_peer(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof)
}

pub type CommResult<T> = std::result::Result<T, CommError>;

/// Collectives over f32 buffers. `all_reduce_sum` leaves the same bytes on every rank.
pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Element-wise sum over ranks, in place.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> CommResult<()>;
    /// `root`'s buffer to every rank.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> CommResult<()>;
    /// Rank r's `send` lands at `recv[r·n .. (r+1)·n]` on every rank (`n = send.len()`).
    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> CommResult<()>;
    /// Sum over ranks of `send` (`world·n` values); rank r keeps part r in `recv` (`n` values).
    fn reduce_scatter_sum(&mut self, send: &[f32], recv: &mut [f32]) -> CommResult<()>;
    /// Rank r's `send` lands at `recv[r·n .. (r+1)·n]` on `root` alone, the only rank that passes a
    /// `recv` (`n = send.len()`): a checkpoint's whole tensor from ZeRO-1 shards, kept by the rank that
    /// writes it. See [`gather_in_chunks`] for how.
    fn gather(&mut self, send: &[f32], recv: Option<&mut [f32]>, root: usize) -> CommResult<()> {
        gather_in_chunks(self, send, recv, root, GATHER_CHUNK)
    }
    fn barrier(&mut self) -> CommResult<()> {
        self.all_reduce_sum(&mut [0.0]).map(|_| ())
    }
    /// The communicator's record of its last collectives (none: it keeps none, as [`Solo`]).
    fn flight(&self) -> Option<&flight::FlightRecorder> {
        None
    }
    /// The NCCL communicator behind this one, for collectives on device buffers.
    #[cfg(feature = "cuda")]
    fn nccl(&mut self) -> Option<&mut NcclComm> {
        None
    }
}

/// Values (all ranks' pieces together) that [`Communicator::gather`] moves at a time: 64 MiB.
pub const GATHER_CHUNK: usize = 1 << 24;

/// [`Communicator::gather`] as all-gathers of `values_at_a_time` values (at least one per rank) that
/// every rank but `root` drops. Along a ring the root's incoming link carries the other ranks' parts
/// either way, so this takes the time a gather would; what it bounds is memory: a rank holds one
/// chunk of the whole, not the whole (33 GB a rank for each moment of an 8B model, the way it was).
/// Every rank passes the same `send` length and `values_at_a_time`, so the chunks agree.
pub fn gather_in_chunks<C: Communicator + ?Sized>(
    comm: &mut C,
    send: &[f32],
    mut recv: Option<&mut [f32]>,
    root: usize,
    values_at_a_time: usize,
) -> CommResult<()> {
    let (n, world, rank) = (send.len(), comm.world(), comm.rank());
    let usage = |detail: String| Err(CommError::Usage { op: "gather", detail });
    if root >= world {
        return usage(format!("root {root} ≥ world {world}"));
    }
    match (&recv, rank == root) {
        (Some(r), true) if r.len() != n * world => {
            return usage(format!("recv has {} values, expected {}", r.len(), n * world))
        }
        (None, true) => return usage(format!("the root (rank {root}) passed no recv buffer")),
        (Some(_), false) => return usage(format!("rank {rank} passed a recv buffer; only the root {root} keeps one")),
        _ => {}
    }
    let step = (values_at_a_time / world).max(1);
    let tag = comm.flight().and_then(|f| f.take_tag());
    let mut chunk = vec![0.0; step.min(n) * world];
    for at in (0..n).step_by(step) {
        let len = step.min(n - at);
        if let (Some(f), Some(t)) = (comm.flight(), tag) {
            f.tag_next(t); // each chunk's line in the flight record says what the whole was for
        }
        comm.all_gather(&send[at..at + len], &mut chunk[..len * world])?;
        if let Some(recv) = recv.as_deref_mut() {
            for (q, piece) in chunk[..len * world].chunks_exact(len).enumerate() {
                recv[q * n + at..q * n + at + len].copy_from_slice(piece);
            }
        }
    }
    Ok(())
}

/// The single-process communicator: every collective is the identity.
pub struct Solo;

impl Communicator for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _: &mut [f32]) -> CommResult<()> {
        Ok(())
    }
    fn broadcast(&mut self, _: &mut [f32], _: usize) -> CommResult<()> {
        Ok(())
    }
    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> CommResult<()> {
        recv.copy_from_slice(send);
        Ok(())
    }
    fn reduce_scatter_sum(&mut self, send: &[f32], recv: &mut [f32]) -> CommResult<()> {
        recv.copy_from_slice(send);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_a_timed_out_collective_waited_for_is_read_back_from_its_error_line() {
        let e = CommError::Timeout { op: "all_reduce", peer: 12, secs: 30.0 };
        assert_eq!(CommError::timed_out_peer(&format!("error: {e}; aborting (exit code 86)")), Some(12));
        let other = CommError::Peer { op: "broadcast", peer: 3, detail: "closed the connection".into() };
        assert_eq!(CommError::timed_out_peer(&other.to_string()), None);
        assert_eq!(CommError::timed_out_peer("waiting for rank 1"), None);
        assert_eq!(CommError::closed_peer(&format!("error: {other}")), Some(3));
        let refused = CommError::Peer { op: "all_reduce", peer: 2, detail: "sent 7 bytes, expected 8".into() };
        assert_eq!(CommError::closed_peer(&refused.to_string()), None);
        assert_eq!(CommError::closed_peer(&format!("error: {e}")), None);
    }

    /// A write into a connection the next rank's end closed or reset names that rank as gone, as a read
    /// from a closed one does.
    #[test]
    fn a_send_to_a_rank_that_is_gone_names_it_as_closed() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut next = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        drop(listener.accept().unwrap());
        // (the first write may land in the buffers before the reset: write until the peer's reset shows)
        let e = (0..100).find_map(|_| next.write_all(&[0u8; 1 << 16]).err()).expect("a failed send");
        assert!(closed_by_peer(&e), "{e:?}");
        let _ = next.read(&mut [0u8; 8]);
        let line = CommError::Peer { op: "all_reduce", peer: 2, detail: format!("{CLOSED} (send failed: {e})") };
        assert_eq!(CommError::closed_peer(&format!("[rank 1] error: {line}")), Some(2));
        assert!(!closed_by_peer(&std::io::Error::from(std::io::ErrorKind::PermissionDenied)));
    }

    #[test]
    fn a_misused_gather_is_refused_before_this_rank_sends_anything() {
        let msg = |r: CommResult<()>| r.unwrap_err().to_string();
        let mut whole = [0.0; 3];
        assert_eq!(msg(Solo.gather(&[1.0; 3], Some(&mut whole), 1)), "collective `gather`: root 1 ≥ world 1");
        assert!(msg(Solo.gather(&[1.0; 3], None, 0)).contains("the root (rank 0) passed no recv buffer"));
        assert!(msg(Solo.gather(&[1.0; 2], Some(&mut whole), 0)).contains("recv has 3 values, expected 2"));
        // one rank: the gather is a copy, in chunks of any size
        gather_in_chunks(&mut Solo, &[1.0, 2.0, 3.0], Some(&mut whole), 0, 2).unwrap();
        assert_eq!(whole, [1.0, 2.0, 3.0]);
    }
}
