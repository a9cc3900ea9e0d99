//! What a run is set up from before its first step: the dataset and the model it implies, each rank's
//! share of the batch, the micro-batch every rank agrees on, and the state it starts from (a checkpoint,
//! or fresh weights and those `model.init_from` names).

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use infinity_data::loader::{BadRows, LoaderOptions, LoaderState, MixState};
use infinity_data::{Checksums, DataError, Dataset, Manifest};

use super::checkpoint::TrainState;
use super::config::{MicroBatchSize, TrainConfig};
use super::dist::Dist;
use super::{checkpoint, compute, gpu_fit, keyed_seed, rundir, STREAM_INIT};
use crate::model::bench::train_flops_per_token;
use crate::model::config::LVL_EMBED_ROWS;
use crate::model::init::init_params;
use crate::model::{Layout, ModelConfig, Params};
use crate::optim::AdamW;

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
            let ds = Dataset::open(dir, mine).with_context(|| match dir.is_relative() && !dir.exists() {
                // (a config's relative paths are taken from the working folder, not the config's)
                true => {
                    let here = std::env::current_dir().map_or("?".into(), |d| d.display().to_string());
                    format!("{key} {} (relative to the working folder, {here})", dir.display())
                }
                false => format!("{key} {}", dir.display()),
            })?;
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
        let num_classes = m.conditions.class.as_ref().map(|c| c.num_classes as usize);
        let text = m.conditions.text.as_ref().map(|t| (t.width as usize, t.max_tokens as usize));
        let mc = cfg.model_config(m.d as usize, num_classes, text)?;
        if cfg.data.short_cap_prob > 0.0
            && text.is_some()
            && !m.conditions.text.as_ref().is_some_and(|t| t.short_caption)
        {
            // (upstream reads a row's long caption where it has no short one: so does a dataset without any)
            tracing::warn!(
                "data.short_cap_prob = {}, but data.dir {} has no short captions (its manifest's \
                 conditions.text.short_caption is not set): every sample reads its long caption",
                cfg.data.short_cap_prob,
                cfg.data.dir.display()
            );
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
    super::val::compatible(first, first_dir, (other, dir), key)?;
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
                "model.apply_spatial_patchify = true (the 8b preset's default), but schedule `{}` is stored at the \
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

/// Tokens and training FLOPs per sample of a dataset's schedules, and their mean over the batches a
/// run draws: each schedule weighted by its whole global batches per epoch (the loader's plan; the
/// rows left over are not drawn), or by its rows where no bucket holds a batch. In a mix each dataset's
/// batches count by its share of the mixed epoch.
#[derive(Clone, Debug)]
pub struct TokenMix {
    /// Training FLOPs per token of each schedule (the attention context differs between them).
    pub flops_per_token: Vec<f64>,
    /// Tokens per sample, the mean over the drawn batches.
    pub mean_tokens: f64,
    /// Training FLOPs per sample, the mean over the drawn batches.
    pub mean_flops: f64,
    /// Rows an epoch draws: each bucket's whole global batches (of every dataset of a mix).
    pub rows_per_epoch: u64,
    /// `(schedule, rows)` of the buckets holding fewer rows than a global batch, which no epoch draws
    /// (in a mix, `schedule of data.mix[i]` for its datasets).
    pub undrawn: Vec<(String, u64)>,
    /// Global batches per (mixed) epoch of each dataset: `data.dir`'s, then `data.mix`'s.
    pub quotas: Vec<u64>,
    /// The same of each later phase of the mix (`data.phases`), with its first step.
    pub phase_quotas: Vec<(u64, Vec<u64>)>,
}

/// The weights of a mix from step 0 and its phases', with the names of its datasets for errors and
/// the run's length, as [`TokenMix`] takes them.
struct MixWeights<'a> {
    first: Option<&'a [f64]>,
    phases: &'a [super::config::DataPhase],
    names: &'a [String],
    steps: u64,
}

impl TokenMix {
    pub fn of(mc: &ModelConfig, m: &Manifest, global_batch: usize) -> TokenMix {
        let names = ["data.dir".to_string()];
        let weights = MixWeights { first: None, phases: &[], names: &names, steps: 1 };
        Self::of_parts(mc, &[m], weights, global_batch).expect("one dataset, no weights")
    }

    /// The mix of `cfg`'s datasets (`data.dir`, `data.mix`), whose manifests are `parts` (the first's
    /// schedules are every one's).
    pub fn of_mix(mc: &ModelConfig, parts: &[&Manifest], cfg: &TrainConfig) -> Result<TokenMix> {
        let names: Vec<String> = cfg.data.dirs().map(|(key, dir)| format!("{key} {}", dir.display())).collect();
        let first = cfg.data.mix_weights();
        let weights =
            MixWeights { first: first.as_deref(), phases: &cfg.data.phases, names: &names, steps: cfg.run.steps };
        Self::of_parts(mc, parts, weights, cfg.data.global_batch)
    }

    /// [`TokenMix::of_mix`] under `weights`.
    fn of_parts(mc: &ModelConfig, parts: &[&Manifest], weights: MixWeights, global_batch: usize) -> Result<TokenMix> {
        let m = parts[0];
        let text_tokens = m.conditions.text.as_ref().map_or(0, |t| t.max_tokens as usize);
        let scales: Vec<Vec<(usize, usize)>> = m.schedules.iter().map(|s| mc.token_scales(&s.hw())).collect();
        let flops_per_token: Vec<f64> = scales.iter().map(|s| train_flops_per_token(mc, s, text_tokens)).collect();
        let g = global_batch.max(1) as u64;
        // rows and whole global batches of each dataset's buckets
        let rows: Vec<Vec<u64>> = parts.iter().map(|p| p.rows_per_bucket()).collect();
        let batches: Vec<Vec<u64>> = rows.iter().map(|r| r.iter().map(|n| n / g).collect()).collect();
        let natural: Vec<u64> = batches.iter().map(|b| b.iter().sum()).collect();
        let quotas_of = |w: Option<&[f64]>, names: &[String]| match natural.iter().any(|&n| n > 0) {
            true => infinity_data::loader::mix::quotas(&natural, w, names),
            false => Ok(natural.clone()),
        };
        let quotas = quotas_of(weights.first, weights.names)?;
        let mut phase_quotas = Vec::with_capacity(weights.phases.len());
        for (k, p) in weights.phases.iter().enumerate() {
            let names: Vec<String> = weights.names.iter().map(|n| format!("{n} (data.phases[{k}])")).collect();
            phase_quotas.push((p.start(weights.steps), quotas_of(Some(&p.weights), &names)?));
        }
        let named = |p: usize, b: usize| match p {
            0 => m.schedules[b].name.clone(),
            _ => format!("{} of data.mix[{}]", m.schedules[b].name, p - 1),
        };
        let mut undrawn = Vec::new();
        for (p, part) in rows.iter().enumerate() {
            for (b, &n) in part.iter().enumerate() {
                // (a dataset weighted 0 is left out on purpose: the mix's line says so)
                if n > 0 && batches[p][b] == 0 {
                    undrawn.push((named(p, b), n));
                }
            }
        }
        // each bucket's expected batches per mixed epoch: a dataset's quota spread as its own epoch is
        let share_of = |quotas: &[u64]| -> Vec<f64> {
            let mut share = vec![0.0f64; m.schedules.len()];
            for p in 0..parts.len() {
                for (b, slot) in share.iter_mut().enumerate() {
                    *slot += match natural[p] {
                        0 => 0.0,
                        n => quotas[p] as f64 * batches[p][b] as f64 / n as f64,
                    };
                }
            }
            share
        };
        let mut share = share_of(&quotas);
        if !phase_quotas.is_empty() {
            // over a mix's phases (each as many batches an epoch), each phase's by its steps in the run
            let starts = std::iter::once(0).chain(phase_quotas.iter().map(|(from, _)| *from));
            let ends = phase_quotas.iter().map(|(from, _)| *from).chain(std::iter::once(u64::MAX));
            let phases = std::iter::once(&quotas).chain(phase_quotas.iter().map(|(_, q)| q));
            share = vec![0.0; m.schedules.len()];
            for ((from, to), q) in starts.zip(ends).zip(phases) {
                let steps = to.min(weights.steps.max(1)).saturating_sub(from) as f64;
                share.iter_mut().zip(share_of(q)).for_each(|(s, x)| *s += steps * x);
            }
        }
        if share.iter().all(|&x| x == 0.0) {
            // (no bucket holds a batch: weighted by rows, for the estimate alone)
            share = (0..m.schedules.len()).map(|b| rows.iter().map(|r| r[b] as f64).sum()).collect();
        }
        let rows_per_epoch = quotas.iter().sum::<u64>() * g;
        let total = share.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let mean =
            |per_sample: &dyn Fn(usize) -> f64| (0..share.len()).map(|b| share[b] * per_sample(b)).sum::<f64>() / total;
        let tokens = |b: usize| infinity_kernels::bsq::num_tokens(&scales[b]) as f64;
        let mean_flops = mean(&|b| tokens(b) * flops_per_token[b]);
        Ok(TokenMix {
            mean_tokens: mean(&tokens),
            mean_flops,
            flops_per_token,
            rows_per_epoch,
            undrawn,
            quotas,
            phase_quotas,
        })
    }

    /// The line saying how a mix draws its datasets (`data.dir` and `data.mix`), where there is one.
    pub fn mix_line(&self, cfg: &TrainConfig, ds: &Dataset) -> Option<String> {
        if self.quotas.len() < 2 {
            return None;
        }
        let total = self.quotas.iter().sum::<u64>().max(1) as f64;
        let percent = |q: u64| 100.0 * q as f64 / total;
        let parts: Vec<String> = cfg
            .data
            .dirs()
            .zip(ds.parts())
            .zip(&self.quotas)
            .map(|(((key, dir), part), &q)| {
                let rows = part.rows.end - part.rows.start;
                format!("{key} {} ({rows} rows): {:.1} % of the batches", dir.display(), percent(q))
            })
            .collect();
        let how = match cfg.data.mix_weights() {
            Some(_) => "by weight",
            None => "by size",
        };
        let mut line = format!("data mix ({how}, {} global batches an epoch): {}", total as u64, parts.join("; "));
        for (from, quotas) in &self.phase_quotas {
            let shares: Vec<String> =
                cfg.data.dirs().zip(quotas).map(|((key, _), &q)| format!("{key} {:.1} %", percent(q))).collect();
            // (after step N as metrics.jsonl counts steps, from 1: the phase's first is step N + 1)
            let late = match *from >= cfg.run.steps {
                true => format!(" (the run has {} steps: never reached)", cfg.run.steps),
                false => String::new(),
            };
            line.push_str(&format!("; after step {from}{late}: {}", shares.join(", ")));
        }
        Some(line)
    }

    /// A warning naming the buckets no epoch draws (fewer rows than a global batch), if any.
    pub fn undrawn_warning(&self, global_batch: usize, total_rows: u64) -> Option<String> {
        let never: u64 = self.undrawn.iter().map(|(_, r)| r).sum();
        let list: Vec<String> = self.undrawn.iter().map(|(name, rows)| format!("{name} ({rows} rows)")).collect();
        (!self.undrawn.is_empty()).then(|| {
            format!(
                "warning: {never} of {total_rows} rows ({:.1} %) are never trained on: their buckets hold fewer \
                 rows than a global batch of {global_batch}: {} (a smaller data.global_batch, or more data of \
                 those schedules, draws them)",
                100.0 * never as f64 / total_rows.max(1) as f64,
                list.join(", ")
            )
        })
    }
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

/// A fresh start's random weights: `[model.init]`'s initialisation, scaled for μP where the run uses it.
pub fn fresh_weights(cfg: &TrainConfig, mc: &ModelConfig, lay: &Layout) -> Params<f32> {
    let mut p = init_params(mc, lay, &cfg.model.init, keyed_seed(cfg.run.seed, STREAM_INIT));
    if let Some(base) = cfg.model.mup() {
        crate::model::mup::rescale_init(&mut p, lay, mc, &base);
    }
    p
}

/// `model.init_from`'s weights (or with `model.init_from_ema` their moving average) over the fresh
/// ones in `p` (nothing without it): where they came from, in words ("weights from FILE"), and the
/// tensors kept fresh or left out.
pub(crate) fn init_from(
    cfg: &TrainConfig,
    mc: &ModelConfig,
    lay: &Layout,
    p: &mut Params<f32>,
) -> Result<Option<(String, Vec<String>)>> {
    let Some(from) = &cfg.model.init_from else { return Ok(None) };
    let ema = cfg.model.init_from_ema;
    let (file, which) = checkpoint::weights_file(from, ema).context("model.init_from")?;
    let fresh = crate::model::io::init_from_weights(&file, which, mc, lay, p).context("model.init_from")?;
    // (a PyTorch file's reader says so itself; a checkpoint's file is looked for, not read: a note needs
    // no checksum, and a run that does not take the average must not fail on it)
    let keeps_average = || checkpoint::resolve(from).is_ok_and(|dir| dir.join(checkpoint::EMA_FILE).is_file());
    if !ema && cfg.optim.ema_decay == 0.0 && !from.is_file() && keeps_average() {
        tracing::info!(
            "{} also keeps a moving average of the weights: model.init_from_ema starts from it",
            from.display()
        );
    }
    let what = if ema { "the weights' moving average" } else { "weights" };
    Ok(Some((format!("{what} from {}", file.display()), fresh)))
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

/// For a fresh start in a run folder that holds a run but no complete checkpoint (`--resume auto`, or a
/// group restarted before its first checkpoint), a line saying so: its logs are then rewritten from
/// step 0, which should not happen unsaid.
pub(crate) fn fresh_start_note(run: &Path) -> Option<String> {
    let logs = rundir::RUN_FILES.iter().any(|f| run.join(f).is_file());
    let (incomplete, _) = checkpoint::later_than(run, 0);
    let fresh = checkpoint::complete(run).is_empty() && (logs || !incomplete.is_empty());
    fresh.then(|| format!("no complete checkpoint in {}: starting fresh", run.display()))
}

/// Check that the saved loader `position` continues under `cfg` on the dataset `ds`; with
/// `accept_data_change` (`--accept-data-change`) a dataset changed since the checkpoint (a mended shard)
/// is taken, the position moved to it, and the warning that says so returned.
pub(crate) fn continue_position(
    position: &mut LoaderState,
    ds: &Dataset,
    cfg: &TrainConfig,
    accept_data_change: bool,
) -> Result<Option<String>> {
    let manifest = &ds.manifest;
    let (mut warning, mut rows_changed) = (None, false);
    if accept_data_change && !manifest.fingerprint_matches(&position.dataset) {
        let changes = manifest.fingerprint_changes(&position.dataset).join("; ");
        let same_rows = position.same_buckets(ds);
        rows_changed = same_rows == Some(false);
        let order = match same_rows {
            Some(true) => "every bucket holds the same rows as before (a shard mended in place): it draws the \
                           batches it would have drawn, the mended rows as they are now"
                .to_string(),
            Some(false) => "the rows in its buckets changed (rows added, removed or of another schedule): the \
                            rest of this epoch follows the new dataset's order, which may draw some of its rows \
                            twice and others not at all"
                .to_string(),
            // a position saved by an earlier build does not record its buckets
            None => "where every bucket holds the same rows as before (a shard mended in place), in the order \
                     it would have drawn, the mended rows as they are now; otherwise the rest of this epoch \
                     follows the new dataset's order, which may draw some of its rows twice and others not at all"
                .to_string(),
        };
        *position = position.moved_to(ds)?;
        warning = Some(format!(
            "--accept-data-change: {} changed since the checkpoint ({changes}); the run goes on from its position \
             ({} batches drawn): {order}",
            cfg.data.folders(),
            position.batches_done
        ));
    }
    let (weights, phases) = (cfg.data.mix_weights(), cfg.data.mix_phases(cfg.run.steps));
    let mix = infinity_data::loader::mix_state(ds, cfg.data.global_batch, weights.as_deref(), &phases)?;
    // a mended mix whose datasets' sizes changed: their batches per epoch change with them (said; a
    // weight changed, or a dataset added or taken away, is refused below, as without the flag)
    let moved = match (&position.mix, &mix) {
        (Some(saved), Some(now)) if rows_changed && same_datasets(saved, now, position.batches_done) => {
            // (the first phase's and those of the phases begun)
            let done = position.batches_done;
            (saved.begun_batches(done) != now.begun_batches(done))
                .then(|| format!("{} → {}", saved.batches_text(done), now.batches_text(done)))
        }
        _ => None,
    };
    if let (Some(w), Some(change)) = (warning.as_mut(), moved) {
        w.push_str(&format!("; the mix's batches per epoch of each dataset change with it: {change}"));
        position.mix = mix.clone();
    }
    position.continues_with(manifest, cfg.run.seed, cfg.data.global_batch, mix.as_ref()).map_err(|e| {
        // a phase set by a share of run.steps moves with it: said where that is what changed (the same
        // phases, weights and all, at other starts)
        let moved = match (&position.mix, &mix) {
            (Some(saved), Some(now)) => {
                saved.phases.len() == now.phases.len()
                    && saved.phases.iter().zip(&now.phases).all(|(a, b)| a.weights == b.weights)
                    && saved.phases.iter().zip(&now.phases).any(|(a, b)| a.from != b.from)
            }
            _ => false,
        };
        let moving: Vec<String> = cfg
            .data
            .phases
            .iter()
            .enumerate()
            .filter(|(_, p)| p.from_step.is_none())
            .map(|(k, p)| p.start_key(k, cfg.run.steps))
            .collect();
        match e {
            DataError::Config(m) if moved && !moving.is_empty() => DataError::Config(format!(
                "{m}; {} moves with run.steps: a phase begun at the checkpoint cannot move, so resume with the \
                 run.steps it was begun under, or give the phase its start there as from_step",
                moving.join(", ")
            )),
            e => e,
        }
    })?;
    Ok(warning)
}

/// Whether two mixes draw the same datasets by the same weights up to global batch `done` (their
/// batches per epoch aside).
fn same_datasets(a: &MixState, b: &MixState, done: u64) -> bool {
    a.batches_per_epoch.len() == b.batches_per_epoch.len() && a.same_weights(b, done)
}

/// A checkpoint to resume from, as loaded and checked: its weights, optimiser and state (the loader's
/// position continued on the dataset as it is now), the settings that differ from the checkpoint's,
/// and what `--accept-data-change` continues from when the dataset changed.
pub(crate) struct Resumed {
    pub params: Params<f32>,
    pub opt: AdamW,
    pub state: TrainState,
    pub changes: Vec<String>,
    pub data_change: Option<String>,
}

/// The settings that shape the model's tensors, as `rundir::resume_changes` names them.
const SHAPE_KEYS: [&str; 7] = [
    "model.preset:",
    "model.depth:",
    "model.embed_dim:",
    "model.num_heads:",
    "model.mlp_ratio:",
    "model.conditioning:",
    "model.apply_spatial_patchify:",
];

/// Load checkpoint `dir` to resume `cfg` (whose resolved text is `config_toml`) on `ds` as `rank` of
/// `world` ranks (AdamW's moments: that rank's ZeRO-1 shard alone, [`moments_of`]), refusing what the
/// run cannot continue: another run's checkpoint into a run.dir holding a run of its own, a damaged
/// checkpoint, another model, a position this config or dataset cannot continue, and a resume that
/// would repeat a divergence. `train` and `--check` both come here, so the check
/// stops where the run would.
pub(crate) fn resume_from(
    dir: &Path,
    cfg: &TrainConfig,
    (mc, lay): (&ModelConfig, &Layout),
    config_toml: &str,
    (ds, (rank, world), accept_data_change): (&Dataset, (usize, usize), bool),
) -> Result<Resumed> {
    // (before the tensors are read: the step alone decides)
    if let Some(why) = checkpoint::saved_step(dir).and_then(|step| rundir::foreign_history(&cfg.run.dir, dir, step)) {
        return Err(unrecoverable(anyhow::anyhow!(why)));
    }
    let changes = rundir::resume_changes(dir, config_toml, mc)?;
    // a checkpoint of another shape lists its tensors: the settings that shape the model say why
    let shaping: Vec<&str> =
        changes.iter().filter(|c| SHAPE_KEYS.iter().any(|k| c.starts_with(k))).map(String::as_str).collect();
    let moments = moments_of(cfg, lay.numel, rank, world);
    let (params, opt, state, data_change) = checkpoint::load(dir, &cfg.run.dir, mc, lay, (&cfg.optim.adamw, moments))
        .map_err(|e| match shaping.is_empty() {
            true => e,
            false => e.context(format!("model settings changed since the checkpoint: {}", shaping.join("; "))),
        })
        .and_then(|(p, o, mut s)| {
            // (data.phases start at steps, which the loader counts as global batches: one a step)
            if !cfg.data.phases.is_empty() && s.loader.batches_done != s.step {
                anyhow::bail!(
                    "the checkpoint of step {} has drawn {} global batches, where data.phases takes one a step",
                    s.step,
                    s.loader.batches_done
                );
            }
            let moved = continue_position(&mut s.loader, ds, cfg, accept_data_change)?;
            Ok((p, o, s, moved))
        })
        .with_context(|| format!("resuming from {}", dir.display()))
        .map_err(unrecoverable)?;
    if changes.is_empty() && data_change.is_none() {
        if let Some(why) = rundir::repeats_divergence(&cfg.run.dir, state.step, world) {
            return Err(super::stop::Diverged(why).into());
        }
    }
    Ok(Resumed { params, opt, state, changes, data_change })
}

/// The parameters whose AdamW moments `rank` of `world` keeps: its ZeRO-1 shard (`dist.zero1`), else
/// all of them.
pub(crate) fn moments_of(cfg: &TrainConfig, numel: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    match cfg.dist.zero1 && world > 1 {
        true => super::dist::shard_range(numel, rank, world),
        false => 0..numel,
    }
}

/// The weights, optimiser and saved state the run starts from: the checkpoint `resume` names, or fresh
/// weights from the run's seed (rescaled under µP, overlaid by `model.init_from`) and a new optimiser.
pub(crate) fn starting_state(
    cfg: &TrainConfig,
    opts: &super::TrainOptions,
    (mc, lay): (&ModelConfig, &Layout),
    config_toml: &str,
    (ds, rank, world): (&Dataset, usize, usize),
) -> Result<(Params<f32>, AdamW, Option<TrainState>)> {
    let leader = rank == 0;
    Ok(match opts.resume.as_deref() {
        Some(dir) => {
            // (the loader checks the position again; here before the run says it resumed)
            let r = resume_from(dir, cfg, (mc, lay), config_toml, (ds, (rank, world), opts.accept_data_change))?;
            if let Some(warning) = r.data_change.filter(|_| leader) {
                tracing::warn!("{warning}");
            }
            console!("resumed from {} at step {}", dir.display(), r.state.step);
            if leader && !r.changes.is_empty() {
                let changes = r.changes.join("\n  ");
                tracing::warn!("resuming with settings that differ from the checkpoint's:\n  {changes}");
            }
            (r.params, r.opt, Some(r.state))
        }
        None => {
            if let Some(note) = fresh_start_note(&cfg.run.dir).filter(|_| leader) {
                console!("{note}");
            }
            let mut p = fresh_weights(cfg, mc, lay);
            if let Some((source, fresh)) = init_from(cfg, mc, lay, &mut p).map_err(unrecoverable)? {
                console!("{source} ({} tensors kept fresh or left out)", fresh.len());
                if leader && !fresh.is_empty() {
                    tracing::warn!("model.init_from: kept fresh or left out:\n  {}", fresh.join("\n  "));
                }
            }
            (p, AdamW::new(cfg.optim.adamw.clone(), lay), None)
        }
    })
}
