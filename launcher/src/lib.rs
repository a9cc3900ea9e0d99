//! `infinity launch`: one agent per node that spawns and watches local ranks, a rendezvous store, and
//! the communicators (NCCL for GPUs, a TCP ring for CPU ranks).
//!
//! Nothing is implemented here yet: the launcher is issue 5. The crate exists now so the workspace has
//! its final shape and the dependency direction (launcher knows nothing of the model) is fixed from the
//! start.
