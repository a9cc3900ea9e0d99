//! The rendezvous store: set, get, add, wait and check over TCP with a per-run token (see `wire` for the
//! format). Served by node 0's agent, or by rank 0 when a scheduler started the ranks directly.

pub mod client;
mod refusals;
pub mod server;
pub(crate) mod waiting;
pub mod wire;

pub use client::{JoinedTwice, MeetingStopped, Members, NeverArrived, Refused, StoreClient, STOP_POLL, STOP_READ};
pub use server::{StoreServer, INSTANCE_KEY, MAX_HELLO};

/// Whether `ip` is an address of this machine (a socket binds to it here).
pub fn is_this_machine(ip: std::net::IpAddr) -> bool {
    std::net::TcpListener::bind((ip, 0)).is_ok()
}

/// Under a fixed group's meeting prefix, where an agent that found its node rank taken posts its host
/// (`…/agents/started-again/N`), for the others' timeout to name.
pub const STARTED_AGAIN: &str = "started-again";
