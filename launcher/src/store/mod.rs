//! The rendezvous store: set, get, add, wait and check over TCP with a per-run token (see `wire` for the
//! format). Served by node 0's agent, or by rank 0 when a scheduler started the ranks directly.

pub mod client;
mod refusals;
pub mod server;
pub(crate) mod waiting;
pub mod wire;

pub use client::{JoinedTwice, Members, Refused, StoreClient};
pub use server::StoreServer;
