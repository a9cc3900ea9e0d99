//! The trainer crate: the Infinity transformer (`model`), and the `infinity` command line (`cli`).
//! The training loop, checkpoints and sampling land here next (issue 4).

pub mod cli;
pub mod golden;
pub mod model;
pub mod optim;
pub mod tensorboard;
pub mod train;
