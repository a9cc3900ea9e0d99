//! `infinity train CONFIG --check`: what a run checks before its first step, without training,
//! joining a group or writing anything: the dataset (with checksums), the model it implies, the batch
//! split for a world size, the validation data, the sample preview's tokenizer, the device, and the
//! weights the run would start from (a checkpoint to resume, `model.init_from`, or a fresh
//! initialisation). Then the run's size: tokens, FLOPs, host memory for weights and optimiser state,
//! checkpoint size. For a job about to wait in a queue for many nodes; `--gpu-gib` checks a GPU run
//! from a machine without the GPU (a login node).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use infinity_data::loader::{Loader, LoaderOptions, LoaderState};
use infinity_data::reader::{non_finite, RowRef};
use infinity_data::{DataError, Dataset};

use super::config::{DeviceChoice, TrainConfig};
use super::token_mix::TokenMix;
use super::{checkpoint, compute, gpu_fit, loader_options, mfu, micro_steps, unrecoverable, val, Preview, Setup};
use crate::cli::plural;
use crate::model::host_memory::{host_state, HostState, Updates};
use crate::model::memory::{gib, RUNTIME_MARGIN};
use crate::model::{Conditioning, ModelConfig, Params};

/// Check everything `train` would for `world` ranks starting from `resume` (or fresh); one line per
/// finding, or the first error a run would stop with. With `gpu` (bytes) a GPU run is checked against
/// a GPU of that size and this machine's devices are not opened.
pub fn check(cfg: &TrainConfig, world: usize, resume: Option<&Path>, gpu: Option<u64>) -> Result<Vec<String>> {
    check_with(cfg, world, resume, gpu, false)
}

/// [`check`], resuming with `--accept-data-change` when `accept_data_change`.
pub fn check_with(
    cfg: &TrainConfig,
    world: usize,
    resume: Option<&Path>,
    mut gpu: Option<u64>,
    accept_data_change: bool,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    super::watchdog::check_limit(cfg.run.stall_timeout_s, world, cfg.dist.timeout_s).map_err(unrecoverable)?;
    let Setup { ds, mc, lay, mix } = Setup::open(cfg).map_err(unrecoverable)?;
    let unlisted = super::setup::unlisted_warning(cfg, &ds)?;
    let mean_tokens = mix.mean_tokens;
    let m = &ds.manifest;
    let patches = match mc.apply_spatial_patchify {
        true => format!(" (spatial patchify: tokens of 2×2 × {} = {} bits)", m.d, mc.d),
        false => String::new(),
    };
    out.push(format!(
        "dataset {}: {} in {} (checksums verified), d = {}{patches}, {}, {mean_tokens:.0} tokens per sample",
        cfg.data.folders(),
        plural(ds.num_rows() as usize, "row"),
        plural(m.shards.len(), "shard"),
        m.d,
        plural(m.schedules.len(), "schedule")
    ));
    // one pass over the rows: the ones the loader would refuse (or the step, for a non-finite value)
    // stop the run at whatever step first draws them, so they fail the check as they would the run;
    // a bucket smaller than a global batch is never drawn (warned of below), so its rows cannot
    // a repeated id (a shard copied under another name) trains twice, with the same flips and drops;
    // (ids are a dataset's own: mixed datasets may share them)
    let mut repeated = Vec::new();
    for (((p, part), &quota), (key, dir)) in ds.parts().iter().enumerate().zip(&mix.quotas).zip(cfg.data.dirs()) {
        let mut bad = BadRows::default();
        let drawn: Vec<bool> =
            part.manifest.rows_per_bucket().iter().map(|&n| quota > 0 && n >= cfg.data.global_batch as u64).collect();
        let mut ids = std::collections::HashSet::new();
        for g in part.rows.clone() {
            let row = ds.row(g);
            if !ids.insert(row.id) {
                repeated.push((p, row.id));
            }
            if drawn[row.bucket as usize] {
                // (in range: `Dataset::open` refuses other buckets)
                bad.note(row_as_read(&ds, g, &mc, cfg.data.short_cap_prob > 0.0));
            }
        }
        bad.finish(&key, dir).map_err(unrecoverable)?;
    }
    out.extend(bsq_sample_warning(&ds));
    out.extend(mix.mix_line(cfg, &ds));
    out.extend(unlisted.map(|w| format!("warning: {w}")));
    if let Some((p, first)) = repeated.first() {
        let within = match ds.parts().len() {
            1 => String::new(),
            _ => format!(" of its dataset (first in {})", ds.parts()[*p].dir.display()),
        };
        out.push(format!(
            "warning: {} rows repeat an earlier row's id{within} (first: id {first}); they are drawn as often as \
             the others, with the same self-correction flips and condition drops (`infinity data verify` names them)",
            repeated.len()
        ));
    }
    let n = lay.numel as f64;
    out.push(format!(
        "model {}: depth {}, width {}, {}, {} parameters ({:.2} M)",
        cfg.model.preset,
        mc.depth,
        mc.embed_dim,
        crate::cli::plural(mc.num_heads, "head"),
        lay.numel,
        n / 1e6
    ));
    if let Some(base) = cfg.model.mup() {
        out.push(base.describe(&mc, &lay));
    }
    // the device first: "auto" takes the micro-batch its memory holds
    let device_line = match gpu {
        Some(bytes) if cfg.run.device == DeviceChoice::Cpu => {
            let e = anyhow::anyhow!("a GPU of {} to check against, but run.device = \"cpu\"", gib(bytes));
            return Err(unrecoverable(e));
        }
        Some(bytes) => {
            // (sizing a GPU run on a login node may take any build; it says what this one would do)
            let here = match (cfg!(feature = "cuda"), cfg.run.device) {
                (true, _) => "",
                (false, DeviceChoice::Cuda) => "; this build has no CUDA support and cannot train it (--features cuda)",
                (false, _) => "; this build has no CUDA support: run.device = \"auto\" would train on the CPU with it",
            };
            format!(
                "device: {} ({}), checked against a GPU of {} (this machine's devices not opened){here}",
                cfg.run.device,
                cfg.run.precision,
                gib(bytes)
            )
        }
        None => {
            // (the model's buffers are not allocated: an 8B model's whole f32 weights and gradients would
            // not fit the 80 GB GPU that ZeRO-1 lets it train on)
            let device = compute::Compute::open_deferred(&cfg.run, true, &mc, &lay)?;
            gpu = device.gpu_total_memory();
            let on_gpu = device.gpu_name().is_some();
            let note = device.precision_note(&cfg.run).map(|n| format!("; {n}")).unwrap_or_default();
            let (_, peak) = mfu::resolve_peak(cfg.run.peak_tflops, device.gpu_name(), cfg.run.precision);
            let peak = peak.map(|p| format!("; {p}")).unwrap_or_default();
            match (on_gpu, cfg.run.device) {
                (false, DeviceChoice::Auto) => {
                    format!("device: cpu (run.device = \"auto\" and no GPU here: the GPU estimate below is for a GPU run; --gpu-gib G checks one){note}")
                }
                _ => format!("device: {} ({}){note}{peak}", cfg.run.device, cfg.run.precision),
            }
        }
    };
    let (micro_batch, chosen) = gpu_fit::resolve_micro_batch(cfg, (&mc, &lay), m, world, gpu)?;
    let accum = micro_steps(cfg, world, micro_batch)?;
    let (b, steps) = (cfg.data.global_batch as f64, cfg.run.steps as f64);
    out.push(format!(
        "batch: {} samples per step = {} × {} × {}; {:.0} tokens and {:.3e} FLOPs per step",
        cfg.data.global_batch,
        plural(world, "rank"),
        plural(accum, "micro-step"),
        micro_batch,
        b * mean_tokens,
        b * mix.mean_flops
    ));
    out.push(format!(
        "run: {} steps, {:.3e} tokens, {:.3e} training FLOPs, {:.2} epochs of the {} rows an epoch draws",
        cfg.run.steps,
        steps * b * mean_tokens,
        steps * b * mix.mean_flops,
        steps * b / mix.rows_per_epoch.max(1) as f64,
        mix.rows_per_epoch
    ));
    out.extend(mix.undrawn_warning(cfg.data.global_batch, ds.num_rows()).map(|w| format!("warning: {w}")));
    let per_256 = match (cfg.optim.lr, cfg.optim.lr_per_256) {
        (None, Some(t)) => format!(" (optim.lr_per_256 = {t} × {} / 256)", cfg.data.global_batch),
        _ => String::new(),
    };
    out.push(format!(
        "learning rate: peak {:.4e}{per_256} after {} warm-up steps",
        cfg.peak_lr(),
        cfg.optim.warmup_steps
    ));
    // (in MB below a gigabyte: a tiny model's 0.00 GB said nothing)
    let size =
        |bytes: f64| if bytes < 1e9 { format!("{:.1} MB", bytes / 1e6) } else { format!("{:.2} GB", bytes / 1e9) };
    let on_gpu = gpu.is_some() && cfg.run.device != DeviceChoice::Cpu;
    let host = host_need(cfg, lay.numel, world, on_gpu);
    // (said, not refused: the check may run on a login node, with less memory than the job's nodes;
    // the run refuses it on a node that cannot hold it)
    if let Err(e) = crate::model::host_memory::check_fits(host.rank0, crate::model::host_memory::bound()) {
        out.push(format!("warning: {e} (on this machine: a run here is refused before it allocates)"));
    }
    let others = match world {
        1 => String::new(),
        _ => format!(", each other rank {}", size(host.other_ranks as f64)),
    };
    // a checkpoint holds the weights, the two moments and the moving average, in f32
    out.push(format!(
        "host memory for the model's state: rank 0 {} ({} more while a checkpoint is written, twice that when \
         the next is due before the write ends){others}, \
         besides activations on the CPU and the dataset's page cache; checkpoints of {} (a stop by a signal \
         writes one before the ranks exit: the scheduler's grace, `infinity launch --grace-s`, must cover it)",
        size(host.rank0 as f64),
        size(host.rank0_writing as f64),
        size(host.rank0_writing as f64)
    ));
    // (a checkpoint is written whole before the oldest is pruned: keep_last + 1 at once, less those there)
    // (at most as many as the run writes: one every checkpoint.every steps and the last)
    let kept = checkpoint::complete(&cfg.run.dir).len().min(cfg.checkpoint.keep_last);
    let written = cfg.run.steps.checked_div(cfg.checkpoint.every).unwrap_or(0) + 1;
    let n = (cfg.checkpoint.keep_last.saturating_add(1) - kept).min(written as usize);
    let more = n as f64 * host.rank0_writing as f64;
    if let Some(free) = free_bytes(&cfg.run.dir).filter(|&f| (f as f64) < more) {
        out.push(format!(
            "warning: run.dir {}'s file system has {} free, less than the {} that {} of {} take \
             (checkpoint.keep_last = {}, and one more is written before the oldest is pruned): checkpoint writes \
             may fail",
            cfg.run.dir.display(),
            size(free as f64),
            size(more),
            plural(n, "more checkpoint"),
            size(host.rank0_writing as f64),
            cfg.checkpoint.keep_last
        ));
    }
    if let Some(v) = val::Validator::new(cfg, &mc, &ds, micro_batch).map_err(unrecoverable)? {
        let dir = cfg.val.dir.as_ref().map_or(String::new(), |d| d.display().to_string());
        let rows = v.rows();
        let more: Vec<String> = rows[1..]
            .iter()
            .zip(&cfg.val.sets)
            .map(|((name, n), set)| format!("; {n} rows of {} ({})", name.unwrap_or_default(), set.dir.display()))
            .collect();
        out.push(format!("validation: {} rows of {dir}{}", rows[0].1, more.concat()));
        out.extend(v.warnings().into_iter().map(|w| format!("warning: {w}")));
    }
    let _preview = Preview::new(cfg, &mc, &ds).map_err(unrecoverable)?;
    out.push(device_line);
    out.extend(chosen);
    if cfg.run.device != DeviceChoice::Cpu {
        // on the GPU this check opened (or --gpu-gib's), with 1 GiB left for the CUDA context and
        // libraries
        let step = gpu_fit::gpu_step(cfg, &mc, &ds.manifest, world, micro_batch)?;
        out.push(match gpu {
            Some(total) => gpu_fit::fits(&mc, &lay, &step, total, RUNTIME_MARGIN)?,
            None => gpu_fit::describe(&mc, &lay, &step),
        });
    }
    // the run folder, as the run takes it before it loads the checkpoint
    out.push(check_run_dir(&cfg.run.dir).map_err(unrecoverable)?);
    let mut position = None;
    // (the text the run compares checkpoints and a recorded divergence with)
    let config_toml = toml::to_string(&cfg.with_absolute_paths()).context("serialising the config")?;
    if let Some(given) = resume {
        // (a rewind repeated with the same config continues its history, as the run would)
        let repeated = super::resume_point::rewound_before(&cfg.run.dir, given, &config_toml, Some(&ds.manifest));
        let note = |found| super::resume_point::rewound_before_note(&cfg.run.dir, given, found);
        out.extend(repeated.map(|found| format!("resume: {}", note(found))));
        let newest = repeated.map(|(_, m)| checkpoint::step_dir(&cfg.run.dir, m));
        let dir = newest.as_deref().unwrap_or(given);
        // (as the run's rank 0 loads and checks it: its part of the moments)
        let super::start_state::Resumed { state, changes, data_change, .. } = super::start_state::resume_from(
            dir,
            cfg,
            (&mc, &lay),
            &config_toml,
            (&ds, (0, world), accept_data_change),
        )?;
        out.push(format!("start: resume from {} at step {}", dir.display(), state.step));
        out.extend(
            super::start_state::other_world_note(state.world_size, world, "would resume")
                .map(|n| format!("resume: {n}")),
        );
        let (later, grids) = checkpoint::later_than(&cfg.run.dir, state.step);
        // (grids alone after the checkpoint are a stopped session's, drawn again)
        if !later.is_empty() {
            let steps: Vec<u64> = later.iter().map(|(s, _)| *s).collect();
            out.push(format!(
                "resume: a new history from step {}: the run's {} would move to {} (with a copy of its logs, \
                 which are cut back to step {})",
                state.step,
                checkpoint::describe_later(state.step, &steps, grids.len()),
                checkpoint::set_aside_folder(&cfg.run.dir, state.step)
                    .unwrap_or_else(|| cfg.run.dir.join("abandoned"))
                    .display(),
                state.step
            ));
        }
        if !changes.is_empty() {
            out.push(format!("resume: settings that differ from the checkpoint's: {}", changes.join("; ")));
        }
        out.extend(data_change.map(|w| format!("resume: {w}")));
        out.extend(sized_totals(cfg, (&mc, &ds), &state.loader)?);
        position = Some(state.loader);
    } else {
        if let Some(why) = super::divergence::fresh_repeats_divergence(cfg, &config_toml, &ds.manifest, world) {
            return Err(super::stop::Diverged(why).into());
        }
        // (weights only for a source to fill: a model larger than this machine's memory is checked all
        // the same, and one with a source is refused, not aborted)
        let mut start = Params { data: Vec::new() };
        if cfg.model.init_from.is_some() {
            start.data.try_reserve_exact(lay.numel).map_err(|_| {
                unrecoverable(anyhow::anyhow!(
                    "model.init_from: the model's {} parameters ({:.1} GB in f32) do not fit this machine's memory",
                    lay.numel,
                    lay.numel as f64 * 4e-9
                ))
            })?;
            start.data.resize(lay.numel, 0.0);
        }
        let first = &ds.parts()[0];
        match super::init_from::init_from(cfg, (&mc, &lay), &mut start, (&first.dir, &first.manifest))
            .map_err(unrecoverable)?
        {
            Some(super::init_from::Started { said, fresh, warnings, .. }) => {
                out.push(format!(
                    "start: {said} ({} kept fresh or left out)",
                    crate::cli::plural(fresh.len(), "tensor")
                ));
                out.extend(warnings.iter().map(|w| format!("start: warning: {w}")));
                const SHOWN: usize = 12;
                out.extend(fresh.iter().take(SHOWN).map(|t| format!("start:   kept fresh or left out: {t}")));
                if fresh.len() > SHOWN {
                    out.push(format!("start:   … and {} more", fresh.len() - SHOWN));
                }
                // where a run keeping its own average starts it: read and checked as the run reads it
                // (every tensor decoded, none kept: the window is empty)
                if cfg.optim.ema_decay > 0.0 {
                    let (_, average) =
                        super::ema::fresh_values(cfg, (&mc, &lay), &start, 0..0).map_err(unrecoverable)?;
                    out.extend(super::ema::fresh_start_said(cfg, average.as_deref()).map(|s| format!("start: {s}")));
                }
            }
            None => out.push("start: a fresh initialisation".into()),
        }
        out.extend(super::resume_point::fresh_start_note(&cfg.run.dir));
    }
    // the loader's own checks, as the run's first step makes them: a bucket that holds a global batch,
    // a saved position this config can continue (the same seed, batch and dataset)
    let lo = LoaderOptions { workers: 0, ..loader_options(cfg, 0, world) };
    Loader::new(Arc::new(ds), lo, position).map_err(|e| super::unrecoverable(e.into()))?;
    Ok(out)
}

/// The host memory a rank of a run of `cfg` on `world` ranks holds for the model's state (`numel`
/// parameters; `on_gpu`: the model runs on a GPU), AdamW placed where `Updater::place` places it.
pub(crate) fn host_need(cfg: &TrainConfig, numel: usize, world: usize, on_gpu: bool) -> HostState {
    let updates = match (on_gpu, gpu_fit::device_optimizer(cfg, numel, world)) {
        (true, Some(1)) => Updates::Device,
        (true, Some(_)) => Updates::DeviceZero1,
        _ if cfg.dist.zero1 && world > 1 => Updates::HostZero1,
        _ => Updates::Host,
    };
    host_state(numel, world, updates, cfg.optim.ema_decay > 0.0)
}

/// What the run meets at `run.dir` before it writes: a folder it can create (the nearest existing
/// ancestor a writable folder) or write, and a lock no live training job holds. Found without creating
/// the folder or taking the lock; the errors are the run's.
fn check_run_dir(run: &Path) -> Result<String> {
    if run.is_dir() {
        writable(run).with_context(|| format!("run.dir {} is not writable", run.display()))?;
        let lock = run.join(super::run_lock::LOCK_FILE);
        if lock.exists() {
            // the run opens it to read and write
            accessible(&lock, libc::R_OK | libc::W_OK)
                .with_context(|| format!("run.dir {} is not writable: opening {}", run.display(), lock.display()))?;
        }
        super::run_lock::check_free(run)?;
        return Ok(format!("run.dir {}: writable, no training job holds it", run.display()));
    }
    let cannot = || format!("run.dir {} cannot be created (not writable?)", run.display());
    let absolute = std::path::absolute(run).with_context(cannot)?;
    let ancestor = absolute.ancestors().find(|p| p.exists()).context("no existing ancestor").with_context(cannot)?;
    if !ancestor.is_dir() {
        let e = anyhow::anyhow!("{} is not a folder", ancestor.display());
        return Err(e.context(cannot()));
    }
    writable(ancestor).with_context(|| ancestor.display().to_string()).with_context(cannot)?;
    Ok(format!("run.dir {}: to be created in {}", run.display(), ancestor.display()))
}

/// Rows of each dataset with latents whose bits [`bsq_sample_warning`] compares with them.
const BSQ_SAMPLE: u64 = 64;

/// Training re-quantises a row's latent and never reads its stored bits, so bits that are not the
/// latent's multi-scale BSQ (a writer's other bit order, latent layout or resampling: then the latents
/// may be what is wrong) go unnoticed by the run: a warning where any of up to [`BSQ_SAMPLE`] rows
/// spread over each dataset with latents disagrees. `infinity data verify` checks every row.
fn bsq_sample_warning(ds: &Dataset) -> Option<String> {
    let (mut checked, mut wrong, mut first) = (0, 0, None);
    for part in ds.parts().iter().filter(|p| p.manifest.latent.is_some()) {
        let n = part.rows.end - part.rows.start;
        for g in (0..n.min(BSQ_SAMPLE)).map(|k| part.rows.start + k * n / n.min(BSQ_SAMPLE)) {
            // (a row the loader refuses is named by the pass above where a run draws it)
            if ds.validate_row(g).is_err() {
                continue;
            }
            let row = ds.row(g);
            let sched = &part.manifest.schedules[row.bucket as usize];
            checked += 1;
            if let Some(((t, b, _), _)) = infinity_data::inspect::bsq_mismatch(&row, sched, part.manifest.d as usize) {
                wrong += 1;
                first.get_or_insert(format!("id {} of {}: token {t}, bit {b}", row.id, part.dir.display()));
            }
        }
    }
    Some(format!(
        "warning: {wrong} of {checked} rows checked have bits that are not the multi-scale BSQ of their latent (first: \
         {}); training reads the latents and not the bits, so a writer's convention that differs may have made \
         the latents wrong: `infinity data verify` checks every row and names the usual causes",
        first?
    ))
}

/// The bytes free to this process on the file system of `path` (or of its nearest existing ancestor).
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let absolute = std::path::absolute(path).ok()?;
    let existing = absolute.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` a buffer statvfs(3) fills on success.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // (the fields' widths differ between targets: u64 here)
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// A folder this process may create entries in.
fn writable(dir: &Path) -> Result<()> {
    accessible(dir, libc::W_OK | libc::X_OK)
}

/// `access(2)`: the error it names (a read-only file system, a permission) when `mode` is refused.
fn accessible(path: &Path, mode: libc::c_int) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).context("a path with a NUL byte")?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    match unsafe { libc::access(c.as_ptr(), mode) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error().into()),
    }
}

/// Row `g` of `ds` checked as a run reads it: the loader's row check (bucket, lengths, padding bits,
/// class range), then the values the step refuses (a NaN or an infinity in the latent, or in the text
/// embedding of a text model: a class model never reads it; its short caption's too where the run reads
/// them, `short_captions`). The error names file, row, id and column.
pub(crate) fn row_as_read(ds: &Dataset, g: u64, mc: &ModelConfig, short_captions: bool) -> Result<(), DataError> {
    ds.validate_row(g)?;
    let row = ds.row(g);
    let text = matches!(mc.conditioning, Conditioning::Text);
    let short = row.text_emb_short.filter(|_| text && short_captions);
    let read = RowRef { text_emb: row.text_emb.filter(|_| text), text_emb_short: short, ..row };
    let Some((column, i)) = non_finite(&read, &ds.manifest) else { return Ok(()) };
    let (s, r) = ds.locate(g);
    Err(DataError::Row {
        path: ds.shards()[s].path().into(),
        row: r as u64,
        id: row.id,
        column: column.into(),
        expected: "finite values".into(),
        found: format!("a NaN or an infinity at value {i}"),
    })
}

/// The rows of one pass that fail [`row_as_read`]: the first one's error and how many.
#[derive(Default)]
pub(crate) struct BadRows {
    first: Option<DataError>,
    count: u64,
}

impl BadRows {
    pub(crate) fn note(&mut self, checked: Result<(), DataError>) {
        if let Err(e) = checked {
            self.count += 1;
            self.first.get_or_insert(e);
        }
    }

    /// The first bad row's error (a `DataError` in the chain: exit 65), with how many there are, under
    /// `key` (the config key that names `dir`).
    pub(crate) fn finish(self, key: &str, dir: &Path) -> Result<()> {
        let Some(first) = self.first else { return Ok(()) };
        let rows = if self.count == 1 { "row" } else { "rows" };
        Err(anyhow::Error::from(first).context(format!(
            "{key} {}: {} bad {rows} (`infinity data verify {}` lists them); the first",
            dir.display(),
            self.count,
            dir.display()
        )))
    }
}

/// The run's totals over the global batch sizes it had (the `run:` line counts every step at
/// `data.global_batch`), where a resume changes the size or changed it before; `None` otherwise.
fn sized_totals(cfg: &TrainConfig, (mc, ds): (&ModelConfig, &Dataset), saved: &LoaderState) -> Result<Option<String>> {
    let g = cfg.data.global_batch;
    if saved.global_batch == g && saved.earlier_sizes.is_empty() {
        return Ok(None);
    }
    let sizes = if saved.global_batch == g { saved.clone() } else { saved.resized(g) };
    if sizes.earlier_sizes.is_empty() {
        return Ok(None); // (changed back before a step: one size)
    }
    let (mut tokens, mut flops, mut epochs) = (0.0, 0.0, 0.0);
    for (from, until, g) in sizes.size_spans(cfg.run.steps) {
        let mix = TokenMix::at_size(mc, ds, cfg, g, (from, until))?;
        let rows = until.saturating_sub(from) as f64 * g as f64;
        (tokens, flops) = (tokens + rows * mix.mean_tokens, flops + rows * mix.mean_flops);
        epochs += rows / mix.rows_per_epoch.max(1) as f64;
    }
    let sizes: Vec<String> =
        sizes.earlier_sizes.iter().map(|e| format!("{} to step {}", e.global_batch, e.until)).collect();
    Ok(Some(format!(
        "resume: over its global batch sizes ({}, then {g}): {tokens:.3e} tokens, {flops:.3e} training FLOPs, \
         {epochs:.2} epochs (the run: line counts every step at {g})",
        sizes.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    /// A run folder yet to be made is measured on the file system it will be made on.
    #[test]
    fn free_bytes_of_a_folder_yet_to_be_made_are_its_ancestors() {
        let tmp = tempfile::tempdir().unwrap();
        let here = super::free_bytes(tmp.path()).expect("statvfs of a temporary folder");
        let later = super::free_bytes(&tmp.path().join("runs/a/b")).unwrap();
        assert!(here > 0 && later.abs_diff(here) < 1 << 30, "{here} {later}");
    }
}
