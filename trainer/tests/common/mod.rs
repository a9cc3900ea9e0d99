//! Shared by the tests that run the `infinity` binary on a small dataset.

use std::path::Path;

use infinity_data::synth::{synth, SynthOptions};
use infinity_data::writer::WriterOptions;

/// The small dataset of the multi-process tests: 128 synthetic rows on the `demo4` schedule (37 tokens).
pub fn small_options() -> SynthOptions {
    SynthOptions {
        rows: 128,
        fit_rows: 48,
        budget: "demo4".into(),
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    }
}

/// [`small_options`] written to `dir`.
pub fn small_dataset(dir: &Path) {
    synth(dir, &small_options()).unwrap();
}
