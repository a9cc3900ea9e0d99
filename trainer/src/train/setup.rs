//! What a run is set up from before its first step: the dataset and the model it implies, each rank's
//! share of the batch and the micro-batch every rank agrees on. The state it starts from is
//! `start_state`'s; the tokens its batches hold, `token_mix`'s.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use infinity_data::loader::{BadRows, LoaderOptions};
use infinity_data::{Checksums, Dataset, Manifest};

use super::config::{MicroBatchSize, TrainConfig};
use super::dist::Dist;
use super::token_mix::TokenMix;
use super::{compute, gpu_fit};
use crate::model::config::LVL_EMBED_ROWS;
use crate::model::{Layout, ModelConfig};

/// Micro-steps per rank and step: the global batch split over `world` ranks in whole micro-batches of
/// `micro_batch` samples.
pub fn micro_steps(cfg: &TrainConfig, world: usize, micro_batch: usize) -> Result<usize> {
    let per_rank = cfg.data.global_batch / world;
    if !cfg.data.global_batch.is_multiple_of(world) || !per_rank.is_multiple_of(micro_batch) || per_rank == 0 {
        bail!(
            "data.global_batch {} must split into {world} ranks × whole micro-batches of {micro_batch}",
            cfg.data.global_batch
        );
    }
    Ok(per_rank / micro_batch)
}

/// The training data (checksums verified) and the model it implies, with the run's sizes per token.
pub struct Setup {
    pub ds: Dataset,
    pub mc: ModelConfig,
    pub lay: Layout,
    pub mix: TokenMix,
}

/// The warning for shard files in `data.dir` its manifest does not list (a batch of data copied in
/// without being written into the dataset would otherwise be left out unsaid), if any.
pub fn unlisted_warning(cfg: &TrainConfig, ds: &Dataset) -> Result<Option<String>> {
    let mut out = Vec::new();
    for ((key, dir), part) in cfg.data.dirs().zip(ds.parts()) {
        let unlisted = part.manifest.unlisted_shards(&part.dir).with_context(|| format!("{key} {}", dir.display()))?;
        let names: Vec<String> = unlisted.iter().map(|p| p.display().to_string()).collect();
        if !names.is_empty() {
            out.push(format!(
                "{key} {}: {} shard file(s) the manifest does not list, not read: {} (write them into the dataset, \
                 or move them away)",
                dir.display(),
                names.len(),
                names.join(", ")
            ));
        }
    }
    Ok((!out.is_empty()).then(|| out.join("; ")))
}

impl Setup {
    /// The dataset of `cfg` opened (every shard hashed), and the model it implies.
    pub fn open(cfg: &TrainConfig) -> Result<Setup> {
        Setup::open_with(cfg, Checksums::Verify)
    }

    /// [`Setup::open`], hashing the shards `checksums` says (a training rank: its share).
    pub fn open_with(cfg: &TrainConfig, checksums: Checksums) -> Result<Setup> {
        let mut parts: Vec<Dataset> = Vec::new();
        let mut shards_before = 0;
        for (key, dir) in cfg.data.dirs() {
            let mine = checksums.after(shards_before);
            let ds = Dataset::open(dir, mine).with_context(|| super::config::path_as_read(&key, dir))?;
            shards_before += ds.shards().len();
            if let Some(first) = parts.first() {
                check_mixable((&first.manifest, first.dir()), (&ds.manifest, dir), &key)?;
            }
            parts.push(ds);
        }
        let ds = Dataset::join(parts).context("data.mix")?;
        // (the spike guard keys a step's level by dataset and bucket in 16 bits)
        let levels = ds.parts().len() * ds.manifest.schedules.len();
        ensure!(
            levels < u16::MAX as usize,
            "data.mix: {levels} datasets × schedules; at most {} are told apart",
            u16::MAX - 1
        );

        let m = &ds.manifest;
        let mc = cfg.model_for(m)?;
        // (upstream reads a row's long caption where it has no short one: so does a dataset without any)
        let text = mc.conditioning == crate::model::Conditioning::Text;
        if text && cfg.data.short_cap_prob > 0.0 {
            // (the joined manifest has short captions where any dataset of the mix has them)
            match m.conditions.text.as_ref().is_some_and(|t| t.short_caption) {
                false => tracing::warn!(
                    "data.short_cap_prob = {}, but {} {} no short captions (the manifest's \
                     conditions.text.short_caption is not set): every sample reads its long caption",
                    cfg.data.short_cap_prob,
                    cfg.data.folders(),
                    if cfg.data.mix.is_empty() { "has" } else { "have" }
                ),
                true => {
                    let short = |p: &infinity_data::dataset::Part| {
                        p.manifest.conditions.text.as_ref().is_some_and(|t| t.short_caption)
                    };
                    for ((key, dir), _) in cfg.data.dirs().zip(ds.parts()).filter(|(_, p)| !short(p)) {
                        tracing::warn!(
                            "data.short_cap_prob = {}, but {key} {} has no short captions: its samples read their \
                             long ones",
                            cfg.data.short_cap_prob,
                            dir.display()
                        );
                    }
                }
            }
        }
        check_schedules_fit(&mc, m).with_context(|| format!("data.dir {}", cfg.data.dir.display()))?;
        let mut lay = Layout::new(&mc);
        if let Some(base) = cfg.model.mup() {
            crate::model::mup::set_lr_mults(&mut lay, &mc, &base);
        }
        let manifests: Vec<&Manifest> = ds.parts().iter().map(|p| &p.manifest).collect();
        let mix = TokenMix::of_mix(&mc, &manifests, cfg)?;
        Ok(Setup { ds, mc, lay, mix })
    }
}

/// Whether the dataset of `other` (`key`: `data.mix[i].dir`) can be mixed with `data.dir`'s, `first`:
/// the same bits, schedules, columns, conditions and tokenizer, or an error naming the key and what
/// differs.
pub(crate) fn check_mixable(
    (first, first_dir): (&Manifest, &Path),
    (other, dir): (&Manifest, &Path),
    key: &str,
) -> Result<()> {
    super::val::compatible(first, first_dir, (other, dir), key, None)?;
    if let Some(what) = infinity_data::dataset::mix_difference(first, other) {
        bail!("{key} {}: cannot be mixed with data.dir {}: {what}", dir.display(), first_dir.display());
    }
    Ok(())
}

/// Whether the model can take a dataset's schedules: stored for its spatial patchify (at twice the
/// transformer's sides, `data synth|pack --spatial-patchify`, tools/write_shards.py, for a model with
/// it; as the transformer's otherwise), and of at most `LVL_EMBED_ROWS` scales (a scale's index picks
/// its `lvl_embed` row: a 16th scale would read past the table).
pub fn check_schedules_fit(mc: &ModelConfig, m: &Manifest) -> Result<()> {
    if let Some(s) = m.schedules.iter().find(|s| s.scales.len() > LVL_EMBED_ROWS) {
        bail!(
            "schedule `{}` has {} scales; the model embeds at most {LVL_EMBED_ROWS} (upstream's lvl_embed is \
             Embedding({LVL_EMBED_ROWS}, C), and its longest schedule has 13)",
            s.name,
            s.scales.len()
        );
    }
    if let Some(s) = m.schedules.iter().find(|s| s.spatial_patchify != mc.apply_spatial_patchify) {
        match mc.apply_spatial_patchify {
            true => bail!(
                "model.apply_spatial_patchify = true (set, or the 8b preset's default), but schedule `{}` is stored at the \
                 transformer's sides: make the dataset with --spatial-patchify (twice the sides, d = {}), or set \
                 model.apply_spatial_patchify = false",
                s.name,
                mc.d_vae()
            ),
            false => bail!(
                "schedule `{}` is stored for spatial patchify (twice the transformer's sides): set \
                 model.apply_spatial_patchify = true",
                s.name
            ),
        }
    }
    Ok(())
}

/// What rank `rank` of `world` reads: its slice of each global batch, in the run's seeded order.
pub(crate) fn loader_options(cfg: &TrainConfig, rank: usize, world: usize) -> LoaderOptions {
    LoaderOptions {
        global_batch: cfg.data.global_batch,
        seed: cfg.run.seed,
        rank,
        world_size: world,
        workers: cfg.data.workers,
        prefetch: 2,
        bad_rows: BadRows::Error,
        mix_weights: cfg.data.mix_weights(),
        mix_phases: cfg.data.mix_phases(cfg.run.steps),
    }
}

/// An error no restart can mend, found before the first step: the config, the dataset, the checkpoint
/// or the weights it names disagree, or one of them is missing or corrupt. `infinity train` exits for
/// it with a code `infinity launch` does not restart (bad data's, where a dataset's check failed).
#[derive(Debug)]
pub struct Unrecoverable(pub anyhow::Error);

impl std::fmt::Display for Unrecoverable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Unrecoverable {}

pub(crate) fn unrecoverable(e: anyhow::Error) -> anyhow::Error {
    Unrecoverable(e).into()
}

/// The run's micro-batch ([`gpu_fit::resolve_micro_batch`]), the same on every rank: with `"auto"` the
/// smallest any rank's GPU holds, so that the ranks step together.
pub(crate) fn agree_on_micro_batch(
    cfg: &TrainConfig,
    model: (&ModelConfig, &Layout),
    m: &Manifest,
    compute: &compute::Compute,
    dist: &mut Dist,
) -> Result<usize> {
    let resolved = gpu_fit::resolve_micro_batch(cfg, model, m, dist.world, compute.gpu_total_memory());
    if cfg.data.micro_batch != MicroBatchSize::Auto || dist.world == 1 {
        let (micro, line) = resolved?;
        if let Some(line) = line.filter(|_| dist.is_leader()) {
            console!("{line}");
        }
        return Ok(micro);
    }
    // every rank's choice in its own slot (exact in f32 below 2^24), 0 from a rank whose GPU holds no
    // sample: every rank reaches the collective, and every rank stops when one cannot train
    let mut all = vec![0f32; dist.world];
    all[dist.rank] = resolved.as_ref().map_or(0.0, |(b, _)| *b as f32);
    dist.tag("micro-batch agreement");
    dist.all_reduce_sum(&mut all)?;
    let (mine, line) = resolved?;
    let all: Vec<usize> = all.iter().map(|&b| b as usize).collect();
    let least = all.iter().copied().min().unwrap_or(mine);
    if least == 0 {
        let ranks: Vec<usize> = (0..all.len()).filter(|&r| all[r] == 0).collect();
        let text =
            format!("data.micro_batch = auto: the GPU of rank(s) {ranks:?} holds no sample (its error says what fits)");
        return Err(gpu_fit::GpuTooSmall(text).into());
    }
    if dist.is_leader() {
        match all.iter().all(|&b| b == least) {
            true => line.into_iter().for_each(|l| console!("{l}")),
            false => tracing::warn!(
                "data.micro_batch = auto: the ranks' GPUs take {all:?} (by rank); every rank takes {least}"
            ),
        }
    }
    Ok(least)
}
