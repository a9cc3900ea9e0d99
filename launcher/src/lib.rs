//! Scale-out without the model: the `infinity launch` agent (`agent`), the rendezvous store (`store`),
//! the process's place in the group from the environment (`env`), and communicators (`comm`: a TCP ring
//! for CPU ranks; NCCL for GPUs with issue 6).

pub mod agent;
pub mod bench;
pub mod comm;
pub mod env;
pub mod store;
