//! The rendezvous store: set, get, add, wait and check over TCP with a per-run token (see `wire` for the
//! format). Served by node 0's agent, or by rank 0 when a scheduler started the ranks directly.

pub mod client;
pub mod server;
pub mod wire;

pub use client::{JoinedTwice, Members, StoreClient};
pub use server::StoreServer;
