//! `infinity train CONFIG --rows-of-step N`: the rows step `N` draws, rank by rank: each one's shard,
//! row and sample id. The seed, the global batch and the mix fix them (docs/data-format.md, "The
//! loader's order"), so a loss spike that comes back at one step after a resume can be traced to its
//! rows, and `infinity data verify` or a reader pointed at them.

use anyhow::{bail, ensure, Context, Result};
use infinity_data::loader::{Loader, LoaderState};
use infinity_data::{Checksums, Dataset};

use super::checkpoint;
use super::config::TrainConfig;
use super::setup::{loader_options, Setup};

/// The lines that say which rows step `step` (counted from 1, as `metrics.jsonl` counts) draws on each
/// of `world` ranks. A run folder with a checkpoint lends its position's record of earlier global
/// batch sizes, so a run whose batch size changed at a resume is drawn as it was.
pub fn rows_of_step(cfg: &TrainConfig, step: u64, world: usize) -> Result<Vec<String>> {
    ensure!(step >= 1, "--rows-of-step counts steps from 1, as metrics.jsonl does");
    // (the rows' places are what is asked: the shards are not hashed)
    let setup = Setup::open_with(cfg, Checksums::Skip)?;
    let (ds, mc) = (std::sync::Arc::new(setup.ds), setup.mc);
    let batch_index = step - 1;
    let (size, position, note) = position_at(cfg, &ds, batch_index, world)?;
    let (mut lines, mut bad): (Vec<String>, usize) = (note.into_iter().collect(), 0);
    for rank in 0..world {
        let opts =
            infinity_data::loader::LoaderOptions { global_batch: size, workers: 0, ..loader_options(cfg, rank, world) };
        let mut loader = Loader::new(ds.clone(), opts, Some(position.clone())).context("--rows-of-step")?;
        // (unread: a bad row, which stops the run at this step, is listed as such)
        let batch = loader.next_rows();
        if rank == 0 {
            let (key, dir) = cfg.data.dirs().nth(batch.part as usize).context("a dataset of the mix")?;
            let schedule = &ds.manifest.schedules[batch.bucket as usize].name;
            // (a mix's batch tells the mixed epoch: its datasets each count epochs of their own)
            let epoch = if cfg.data.mix.is_empty() { "epoch" } else { "mixed epoch" };
            lines.push(format!(
                "step {step}: global batch {size} from {key} {} ({epoch} {}), bucket {} (schedule `{schedule}`), \
                 {} a rank",
                dir.display(),
                batch.epoch,
                batch.bucket,
                crate::cli::plural(batch.rows.len(), "row")
            ));
        }
        for &g in &batch.rows {
            let (s, row) = ds.locate(g);
            let shard = ds.shards()[s].path().display();
            // (checked as the step reads it: a NaN in the latent stops the run as a bad class id does; a
            // short caption's embedding is read where the step draws it, `data.short_cap_prob`)
            let short = cfg.data.short_cap_prob > 0.0;
            match super::check::row_as_read(&ds, g, &mc, false) {
                Err(e) => {
                    bad += 1;
                    lines.push(format!("rank {rank}  {shard}  row {row}  BAD: {e}"));
                }
                // (its short caption's too, once the rest passed, where the step may draw it)
                Ok(()) => match short.then(|| super::check::row_as_read(&ds, g, &mc, true)) {
                    Some(Err(e)) => lines.push(format!(
                        "rank {rank}  {shard}  row {row}  BAD where the step draws its short caption: {e}"
                    )),
                    _ => lines.push(format!("rank {rank}  {shard}  row {row}  id {}", ds.row(g).id)),
                },
            }
        }
    }
    if bad > 0 {
        lines.push(format!(
            "{} marked BAD: the run stops at this step (exit 65); `infinity data verify` lists every bad row of \
             the dataset",
            crate::cli::plural(bad, "row")
        ));
    }
    Ok(lines)
}

/// The loader's position before batch `index`, and the global batch size it draws at: from scratch, or
/// the newest checkpoint's (its earlier sizes up to that batch). A dataset changed since the checkpoint
/// whose buckets hold the same rows (mended in place) is drawn from as the run read it, with a note
/// saying so; one with other rows draws other batches, which is an error naming what changed.
fn position_at(
    cfg: &TrainConfig,
    ds: &std::sync::Arc<Dataset>,
    index: u64,
    world: usize,
) -> Result<(usize, LoaderState, Option<String>)> {
    let (saved, mut note) = match super::latest_checkpoint(&cfg.run.dir) {
        Some(dir) => (Some(checkpoint::read_state(&dir)?.loader), None),
        None => (None, None),
    };
    let saved = match saved {
        Some(s) if !ds.manifest.fingerprint_matches(&s.dataset) => {
            s.same_tokenizer(ds)?;
            let changes = ds.manifest.fingerprint_changes(&s.dataset).join("; ");
            ensure!(
                s.same_buckets(ds) == Some(true),
                "--rows-of-step: {} changed since the run's newest checkpoint ({changes}) and its buckets hold other \
                 rows: the batches drawn from it are not the ones the run read; point data.dir at the dataset the \
                 run read",
                cfg.data.folders()
            );
            note = Some(format!(
                "note: {} changed since the run's newest checkpoint ({changes}); its buckets hold the same rows \
                 (mended in place): the rows below are those the run read, as they are now",
                cfg.data.folders()
            ));
            Some(s.moved_to(ds)?)
        }
        s => s,
    };
    let mut state = match saved {
        Some(s) => s,
        None => Loader::new(ds.clone(), loader_options(cfg, 0, world), None)?.state(),
    };
    // (rows the dataset held as they were when the run drew them, which it no longer does)
    if let Some(at) = state.rows_changed_at.filter(|&at| index < at) {
        bail!(
            "--rows-of-step {}: the run drew steps 1 to {at} from {} as it was before `--accept-data-change` took \
             it with other rows at step {}: the rows of those steps cannot be told from the dataset as it is now \
             (steps from {} on can)",
            index + 1,
            cfg.data.folders(),
            at + 1,
            at + 1
        );
    }
    // the size in effect at `index`: the first earlier one that lasted past it, else the last
    let size = match state.earlier_sizes.iter().position(|e| e.until > index) {
        Some(k) => {
            let size = state.earlier_sizes[k].global_batch;
            state.earlier_sizes.truncate(k);
            // (a mix's batches per epoch as they were at that size; what it drew with before stays)
            let (weights, phases) = (cfg.data.mix_weights(), cfg.data.mix_phases(cfg.run.steps));
            let at_size = infinity_data::loader::mix_state(ds, size, weights.as_deref(), &phases)?;
            state.mix = at_size.map(|m| m.keeping_drawn(state.mix.as_ref()));
            size
        }
        None => state.global_batch,
    };
    (state.global_batch, state.batches_done) = (size, index);
    // (what the mix drew with before `index` alone: a position there records no later start)
    if let Some(m) = state.mix.as_mut() {
        m.drawn.retain(|d| d.from < index);
    }
    Ok((size, state, note))
}
