//! The sample grid logged during training every `sample.every` steps (and at the last step).

use std::path::PathBuf;

use anyhow::{Context, Result};
use infinity_data::Dataset;

use super::config::TrainConfig;
use super::log::Logger;
use crate::infer::Sampler;
use crate::model::sample::SampleOptions;
use crate::model::{Layout, ModelConfig};

/// Conditions side by side in a grid's row (each with its `sample.per_condition` copies): `sample.n`
/// conditions in a few rows a TensorBoard panel shows whole, where `infinity sample` gives each its own.
const CONDITIONS_PER_ROW: usize = 4;

/// The sample grid logged every `sample.every` steps: a fixed condition and seed, so grids of
/// different steps compare; written to TensorBoard and `RUN/samples/step-N.png`.
pub(crate) struct Preview {
    every: u64,
    last: u64,
    cond: Option<crate::model::sample::SampleCondition>,
    sched: infinity_data::ScaleSchedule,
    tokenizer: Option<infinity_data::tokenizer::PatchTokenizer>,
    opts: SampleOptions,
    per_condition: usize,
    dir: PathBuf,
    /// What its rows show, for the console (the PNG holds no labels).
    labels: String,
}

impl Preview {
    pub(crate) fn new(cfg: &TrainConfig, mc: &ModelConfig, ds: &Dataset) -> Result<Preview> {
        let s = &cfg.sample;
        let tokenizer = match s.every > 0 {
            true => crate::infer::tokenizer(ds.dir(), &ds.manifest).with_context(|| {
                format!(
                    "sample.every = {}: the sample grids decode with the dataset's tokenizer, which does not read \
                     (mend its file, or set sample.every = 0 to train without grids)",
                    s.every
                )
            })?,
            false => None,
        };
        if s.every > 0 && tokenizer.is_none() {
            tracing::warn!("sample grids disabled: the dataset's tokenizer is not built in");
        }
        let cond = match tokenizer {
            Some(_) => Some(crate::infer::preview_condition(mc, ds, s.n)?.repeat(s.per_condition, mc.text_channels)),
            None => None,
        };
        // (each sample keyed by its condition, as `infinity sample` keys them: a tile is what `infinity sample`
        // draws for its class or caption from the checkpoint of that step, with the same settings)
        let labels = match &mc.conditioning {
            crate::model::Conditioning::Class { num_classes } => {
                let ids = crate::infer::preview_classes(*num_classes, s.n);
                format!("classes {}", ids.iter().map(usize::to_string).collect::<Vec<_>>().join(","))
            }
            // (of the rows `preview_condition` checked: none without grids)
            crate::model::Conditioning::Text if cond.is_some() => text_labels(ds, s.n),
            crate::model::Conditioning::Text => String::new(),
        };
        let mut opts = SampleOptions::uniform(s.cfg, s.tau, s.top_p, s.seed);
        opts.keys = cond.as_ref().map(|c| c.keys(mc.text_channels)).unwrap_or_default();
        Ok(Preview {
            every: s.every,
            last: cfg.run.steps,
            cond,
            sched: crate::infer::pick_schedule(
                &ds.manifest,
                &crate::infer::rows_by_schedule(&ds.manifest),
                crate::infer::SchedulePick::Default,
            )?
            .clone(),
            tokenizer,
            opts,
            per_condition: s.per_condition,
            dir: cfg.run.dir.join("samples"),
            labels,
        })
    }

    pub(crate) fn due(&self, step: u64) -> bool {
        // (sample.every = 0: no grids, not one at the end)
        self.cond.is_some() && self.every > 0 && super::due(step, self.every, self.last)
    }

    pub(crate) fn log(
        &self,
        (mc, lay): (&ModelConfig, &Layout),
        sampler: Sampler,
        step: u64,
        logger: &mut Logger,
    ) -> Result<()> {
        let (Some(cond), Some(tok)) = (&self.cond, &self.tokenizer) else { return Ok(()) };
        let sampled = crate::infer::sample_schedule(mc, lay, sampler, cond, &self.sched, &self.opts)
            .context("drawing the sample grid")?;
        let grid = infinity_data::inspect::grid_image(
            &crate::infer::decode(tok, &sampled, &self.sched),
            self.per_condition * CONDITIONS_PER_ROW,
        );
        logger.image("samples", grid.as_raw(), grid.height(), grid.width(), step);
        // (TensorBoard has the grid now: a PNG that cannot be written is said as such)
        let in_tb = "the grid is in TensorBoard only";
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {} ({in_tb})", self.dir.display()))?;
        let path = self.dir.join(format!("step-{step:08}.png"));
        grid.save(&path).with_context(|| format!("writing {} ({in_tb})", path.display()))?;
        logger.println(&format!("sample grid: {} ({}, {} each)", path.display(), self.labels, self.per_condition));
        Ok(())
    }
}

/// What a text model's grid shows, row by row: the dataset's first `n` rows' captions where it stores
/// them (`infinity sample --caption` draws each tile again), else their ids.
fn text_labels(ds: &Dataset, n: usize) -> String {
    let rows = 0..(n as u64).min(ds.num_rows());
    let captions: Option<Vec<String>> = rows.clone().map(|g| ds.row(g).caption.map(|c| format!("{c:?}"))).collect();
    match captions {
        Some(c) => format!("the captions of the dataset's first {} rows: {}", c.len(), c.join(", ")),
        None => {
            let ids: Vec<String> = rows.map(|g| ds.row(g).id.to_string()).collect();
            format!("the text of the dataset's first {} rows, ids {}", ids.len(), ids.join(", "))
        }
    }
}
