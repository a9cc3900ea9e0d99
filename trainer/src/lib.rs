//! The trainer crate: the Infinity transformer (`model`), AdamW and schedules (`optim`), the training
//! loop and checkpoints (`train`), sampling to images (`infer`), export, sweeps and scaling fits
//! (`sweep`, `scaling`), TensorBoard logs and the `infinity` command line (`cli`).

#[macro_use]
extern crate infinity_launcher; // console!, console_err!, console_text!: printing that survives a closed pipe

pub mod cli;
pub mod export;
pub mod golden;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod infer;
pub mod model;
pub mod optim;
pub mod scaling;
pub mod sweep;
pub mod tensorboard;
pub mod train;
