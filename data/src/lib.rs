//! Datasets of pre-tokenized bits for bitwise visual autoregressive training.
//!
//! A dataset is a folder of Arrow IPC file-format shards plus `manifest.json` (docs/data-format.md).
//! - [`format`], [`manifest`], [`schedule`]: the on-disk contract;
//! - [`writer`], [`reader`], [`dataset`]: writing and memory-mapped, zero-copy reading;
//! - [`loader`]: the deterministic, resumable, rank-sliced training loader;
//! - [`tokenizer`], [`synth`], [`pack`]: the built-in patch-PCA BSQ tokenizer, the procedural demo
//!   dataset and packing a folder of images, or those upstream's metadata files list ([`meta`]);
//! - [`inspect`]: `infinity data inspect | verify | stats`; [`bench`]: loader throughput.

pub mod bench;
pub mod build;
pub mod dataset;
pub mod error;
pub mod file_lock;
pub mod format;
pub mod image_file;
pub mod inspect;
pub mod loader;
pub mod manifest;
pub mod meta;
pub mod pack;
pub mod reader;
pub mod schedule;
pub mod synth;
pub mod tokenizer;
pub mod writer;

pub use dataset::Dataset;
pub use error::{DataError, Result};
pub use manifest::Manifest;
pub use reader::Checksums;
pub use schedule::{Catalog, ScaleSchedule};
