//! The trainer crate: the `infinity` command line for now; the Infinity transformer, its training loop,
//! checkpoints and sampling land here next (issues 3 and 4).

pub mod cli;
