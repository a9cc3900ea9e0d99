//! The training loader: a deterministic global order of bucket-homogeneous global batches (see
//! [`plan`]), each rank reading its equal slice, optionally prefetched by background threads, with a
//! small serialisable position for sample-exact resume (also across a change of world size). A joined
//! dataset's parts are mixed by weight ([`mix`]).

pub mod batch;
pub mod mix;
pub mod plan;
pub mod sizes;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

pub use batch::Batch;
pub use plan::EpochPlan;
pub use sizes::EarlierSize;

use crate::dataset::{parts_buckets_fingerprint, Dataset};
use crate::error::{DataError, Result};

/// What to do with a row that fails validation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadRows {
    /// Stop with an error naming the file, row and column (the default).
    #[default]
    Error,
    /// Leave the row out of its batch, log it and count it in [`Batch::skipped`].
    Skip,
}

#[derive(Clone, Debug)]
pub struct LoaderOptions {
    /// Rows per global batch, all ranks together (`G`). Must be divisible by `world_size`.
    pub global_batch: usize,
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
    /// Background reader threads; 0 reads on the caller's thread.
    pub workers: usize,
    /// Batches each worker may have ready ahead of the consumer.
    pub prefetch: usize,
    pub bad_rows: BadRows,
    /// Relative weights of a joined dataset's parts ([`mix`]), one per part; `None` mixes them by their
    /// sizes (the datasets concatenated).
    pub mix_weights: Option<Vec<f64>>,
    /// Later weights of the mix, each from a global batch on ([`mix`]), by increasing start.
    pub mix_phases: Vec<MixPhase>,
}

/// A phase of a mix: from global batch `from` on (the batches before it drawn as without it), the
/// parts drawn by `weights`, one per part.
#[derive(Clone, Debug, PartialEq)]
pub struct MixPhase {
    pub from: u64,
    pub weights: Vec<f64>,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            global_batch: 32,
            seed: 0,
            rank: 0,
            world_size: 1,
            workers: 1,
            prefetch: 4,
            bad_rows: BadRows::Error,
            mix_weights: None,
            mix_phases: Vec::new(),
        }
    }
}

/// The loader's position: everything needed to continue sample-exactly. It holds no rank or world size,
/// so a run may resume on a different number of ranks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderState {
    pub seed: u64,
    pub global_batch: usize,
    /// Global batches delivered so far, over all epochs.
    pub batches_done: u64,
    /// [`crate::manifest::Manifest::fingerprint`] of the dataset the position refers to.
    pub dataset: String,
    /// [`crate::dataset::buckets_fingerprint`] of that dataset: which rows each bucket holds, so a resume
    /// on a mended dataset can tell whether it is drawn in the same order (positions saved by earlier
    /// builds have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<String>,
    /// For a mix of several datasets, how it draws them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<MixState>,
    /// The global batch sizes before `global_batch`, where a resume changed it ([`sizes`]), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_sizes: Vec<EarlierSize>,
}

/// A mix's part of the position: each dataset's global batches per mixed epoch ([`mix::quotas`]) and
/// the weights they came from (none: by size). The weights are kept too, so a weight changed along with
/// a mended dataset (`--accept-data-change`, whose batches per epoch may change) is still told apart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixState {
    pub batches_per_epoch: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<f64>>,
    /// The mix's later phases, each with its batches per mixed epoch of each dataset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseState>,
}

/// A phase of a mix as the position records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseState {
    pub from: u64,
    pub weights: Vec<f64>,
    pub batches_per_epoch: Vec<u64>,
}

/// Whether two lists of weights have the same shares (`[1, 1]` and `[2, 2]` draw the same samples).
fn same_shares(a: &[f64], b: &[f64]) -> bool {
    let (sa, sb): (f64, f64) = (a.iter().sum(), b.iter().sum());
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x / sa - y / sb).abs() <= 1e-12)
}

impl MixState {
    /// Whether two mixes weigh their datasets alike before global batch `done`: none given on both, or
    /// the same shares, and the same phases begun by then (a phase that starts at `done` or later has
    /// drawn nothing yet: it may change).
    pub fn same_weights(&self, other: &MixState, done: u64) -> bool {
        let first = match (&self.weights, &other.weights) {
            (None, None) => true,
            (Some(a), Some(b)) => same_shares(a, b),
            _ => false,
        };
        let (a, b) = (self.begun(done), other.begun(done));
        first
            && a.len() == b.len()
            && a.iter().zip(&b).all(|(x, y)| x.from == y.from && same_shares(&x.weights, &y.weights))
    }

    /// The phases begun before global batch `done`.
    pub fn begun(&self, done: u64) -> Vec<&PhaseState> {
        self.phases.iter().filter(|p| p.from < done).collect()
    }

    /// Each dataset's batches per mixed epoch, of the first phase and of each phase begun before `done`.
    pub fn begun_batches(&self, done: u64) -> Vec<Vec<u64>> {
        std::iter::once(self.batches_per_epoch.clone())
            .chain(self.begun(done).into_iter().map(|p| p.batches_per_epoch.clone()))
            .collect()
    }

    /// [`MixState::begun_batches`] as messages name them: one list, or one per phase.
    pub fn batches_text(&self, done: u64) -> String {
        match &self.begun_batches(done)[..] {
            [one] => format!("{one:?}"),
            all => format!("{all:?} (by phase)"),
        }
    }

    /// The weights before `done` as a resume error names them: the first's, then each phase's begun.
    fn weights_text(&self, done: u64) -> String {
        let first = self.weights.as_ref().map_or("none (by size)".into(), |w| format!("{w:?}"));
        let phases = self.begun(done).into_iter().map(|p| format!(", from batch {}: {:?}", p.from, p.weights));
        std::iter::once(first).chain(phases).collect()
    }
}

impl LoaderState {
    /// An error unless a loader of `seed`, `global_batch` and the dataset of `manifest` continues this
    /// position: each of them fixes the order of the samples (a configuration error, not bad data).
    pub fn continues_with(
        &self,
        manifest: &crate::Manifest,
        seed: u64,
        global_batch: usize,
        mix: Option<&MixState>,
    ) -> Result<()> {
        let mismatch = |what: &str, saved: String, now: String| {
            Err(DataError::Config(format!(
                "cannot resume the data stream: the saved position has {what} {saved}, this run has {now} \
                 (it fixes the order of the samples: resume with the saved value, or start a new run)"
            )))
        };
        let parts = |m: Option<&MixState>| m.map(|m| m.batches_per_epoch.len());
        if parts(self.mix.as_ref()) != parts(mix) {
            // (the fingerprint differs too, but a dataset added or taken away is what the user did)
            let say = |m: Option<usize>| m.map_or("one dataset".into(), |n| format!("a mix of {n} datasets"));
            return mismatch("data.mix:", say(parts(self.mix.as_ref())), say(parts(mix)));
        }
        let done = self.batches_done;
        if let (Some(saved), Some(now)) = (&self.mix, mix) {
            if !saved.same_weights(now, done) {
                // (data.phases named where either side has phases)
                let phased = !(saved.phases.is_empty() && now.phases.is_empty());
                let keys = if phased { "data.weight, data.mix, data.phases" } else { "data.weight, data.mix" };
                return mismatch(
                    &format!("the mix's weights drawn before batch {done} ({keys})"),
                    saved.weights_text(done),
                    now.weights_text(done),
                );
            }
        }
        if !manifest.fingerprint_matches(&self.dataset) {
            // the hashes alone say nothing to a user: spell out what the fingerprint tells
            let changes = manifest.fingerprint_changes(&self.dataset).join("; ");
            return Err(DataError::Config(format!(
                "cannot resume the data stream: the dataset is not the one the saved position was read from: \
                 {changes} (dataset fingerprint {} → {}); the dataset fixes the order of the samples: resume \
                 on the dataset the run started with, or start a new run",
                self.dataset,
                manifest.fingerprint()
            )));
        }
        // (the size may change: the rest of each dataset's epoch is cut at the new size, `sizes`)
        self.check_sizes()?;
        if self.seed != seed {
            return mismatch("run.seed", self.seed.to_string(), seed.to_string());
        }
        // (a mix's batches per epoch at another size are another size's: the size's change, not the data's)
        let batches = |m: Option<&MixState>| m.map(|m| m.begun_batches(done));
        if self.global_batch == global_batch && batches(self.mix.as_ref()) != batches(mix) {
            let say = |m: Option<&MixState>| m.map_or("one dataset".into(), |m| m.batches_text(done));
            return mismatch(
                "the mix's batches per epoch of each dataset (data.mix and its weights)",
                say(self.mix.as_ref()),
                say(mix),
            );
        }
        Ok(())
    }

    /// An error unless the sizes are as [`LoaderState::resized`] writes them: above 0, each earlier one
    /// ending after the one before and by the batches done, and other than the next (a position edited
    /// by hand, or damaged).
    fn check_sizes(&self) -> Result<()> {
        let bad = |what: String| {
            Err(DataError::Config(format!("the saved position's {what} (a position edited by hand, or damaged)")))
        };
        if self.global_batch == 0 {
            return bad("global_batch is 0".into());
        }
        let mut after = 0;
        let next = self.earlier_sizes.iter().skip(1).map(|e| e.global_batch).chain([self.global_batch]);
        for (k, (e, next)) in self.earlier_sizes.iter().zip(next).enumerate() {
            if e.global_batch == 0 || e.until <= after || e.until > self.batches_done || e.global_batch == next {
                return bad(format!(
                    "earlier_sizes[{k}] (global_batch {}, until {}) must be a size above 0 other than the next \
                     ({next}) that ends after the one before ({after}) and by the batches done ({})",
                    e.global_batch, e.until, self.batches_done
                ));
            }
            after = e.until;
        }
        Ok(())
    }

    /// This position continued at global batch size `global_batch` from here on ([`sizes`]): the size
    /// it was at becomes an earlier one, unless it drew nothing (then it is dropped, and a size equal to
    /// the one before joins it: changing the size back before a step changes nothing).
    pub fn resized(&self, global_batch: usize) -> LoaderState {
        let mut s = self.clone();
        let start = s.earlier_sizes.last().map_or(0, |e| e.until);
        if s.batches_done > start {
            s.earlier_sizes.push(EarlierSize { global_batch: s.global_batch, until: s.batches_done });
        } else if s.earlier_sizes.last().is_some_and(|e| e.global_batch == global_batch) {
            s.earlier_sizes.pop();
        }
        s.global_batch = global_batch;
        s
    }

    /// This position moved to `ds` where that is not the dataset it was read from (a shard mended
    /// since): the same batches done, under the dataset's own fingerprints. Refused where `d` or the
    /// schedules changed: the model could not take the rows.
    pub fn moved_to(&self, ds: &Dataset) -> Result<LoaderState> {
        let manifest = &ds.manifest;
        if !manifest.same_layout(&self.dataset) {
            return Err(DataError::Config(format!(
                "cannot move the data stream to this dataset: `d` or the scale schedules changed since the saved \
                 position (dataset fingerprint {} → {})",
                self.dataset,
                manifest.fingerprint()
            )));
        }
        let buckets = Some(ds.buckets_fingerprint());
        Ok(LoaderState { dataset: manifest.fingerprint(), buckets, ..self.clone() })
    }

    /// Whether `ds` holds the same rows in each bucket as the dataset of this position (then, with the
    /// same seed and global batch, it is drawn in the same order); `None` for a position that does not
    /// record it.
    pub fn same_buckets(&self, ds: &Dataset) -> Option<bool> {
        let saved = self.buckets.as_deref()?;
        Some(saved == ds.buckets_fingerprint())
    }
}

/// How a loader of `ds` (several datasets joined) draws them under `weights`, as [`LoaderState::mix`]
/// records it; `None` for one dataset.
pub fn mix_state(
    ds: &Dataset,
    global_batch: usize,
    weights: Option<&[f64]>,
    phases: &[MixPhase],
) -> Result<Option<MixState>> {
    if ds.parts().len() == 1 {
        return match phases.first() {
            Some(p) => Err(DataError::Config(format!(
                "a mix's phase from global batch {}: one dataset has no mix to change",
                p.from
            ))),
            None => Ok(None),
        };
    }
    // (from the manifests' counts, which `Dataset::open` checked against the files: no row lists)
    let g = global_batch.max(1) as u64;
    let natural: Vec<u64> =
        ds.parts().iter().map(|p| p.manifest.rows_per_bucket().iter().map(|n| n / g).sum()).collect();
    let names: Vec<String> = ds.parts().iter().map(|p| p.dir.display().to_string()).collect();
    let batches_per_epoch = mix::quotas(&natural, weights, &names)?;
    let mut states = Vec::with_capacity(phases.len());
    let mut after = 0;
    for (k, p) in phases.iter().enumerate() {
        if p.from <= after {
            return Err(DataError::Config(format!(
                "data.phases[{k}] starts at global batch {}: the phases must start after batch 0, each after the \
                 one before",
                p.from
            )));
        }
        after = p.from;
        let names: Vec<String> = names.iter().map(|n| format!("{n} (data.phases[{k}])")).collect();
        let batches_per_epoch = mix::quotas(&natural, Some(&p.weights), &names)?;
        states.push(PhaseState { from: p.from, weights: p.weights.clone(), batches_per_epoch });
    }
    Ok(Some(MixState { batches_per_epoch, weights: weights.map(<[f64]>::to_vec), phases: states }))
}

/// A mix's phases where its global batch changed (`sizes`: each size from its first global batch, by
/// increasing start): every start of a weighting (`weights`, then `phases`) or of a size, with the
/// quotas of the weights and the size in effect there.
fn sized_mix_phases(
    ds: &Dataset,
    weights: Option<&[f64]>,
    phases: &[MixPhase],
    sizes: &[(u64, usize)],
) -> Result<Vec<(u64, Vec<u64>)>> {
    let mut starts: Vec<u64> = phases.iter().map(|p| p.from).chain(sizes.iter().map(|s| s.0)).collect();
    starts.sort_unstable();
    starts.dedup();
    let mut out = Vec::with_capacity(starts.len());
    for from in starts {
        let w = phases.iter().rfind(|p| p.from <= from).map(|p| &p.weights[..]).or(weights);
        let g = sizes.iter().rfind(|s| s.0 <= from).map_or(sizes[0].1, |s| s.1) as u64;
        let natural: Vec<u64> =
            ds.parts().iter().map(|p| p.manifest.rows_per_bucket().iter().map(|n| n / g).sum()).collect();
        let names: Vec<String> = ds
            .parts()
            .iter()
            .map(|p| format!("{} (at global batch {g}, from batch {from})", p.dir.display()))
            .collect();
        let quotas = mix::quotas(&natural, w, &names)?;
        if quotas.iter().all(|&n| n == 0) {
            // (a mended dataset whose buckets hold no batch of a size it drew at: nothing to draw)
            return Err(DataError::Config(format!(
                "loader: the saved position drew global batches of {g} rows from batch {from}, of which no dataset of \
                 the mix has a full one: it cannot be continued on these datasets"
            )));
        }
        out.push((from, quotas));
    }
    Ok(out)
}

/// A part's stream, with a shared cache of its last few epoch plans (workers may straddle an epoch
/// boundary).
struct Plans {
    /// The part's global row ids per bucket.
    rows_by_bucket: Vec<Vec<u64>>,
    seed: u64,
    /// The stream at each global batch size it had ([`sizes`]; one, but for a resized dataset).
    segments: Vec<sizes::Segment>,
    /// The rank whose part of each global batch the plans keep, of `world_size`.
    rank: usize,
    world_size: usize,
    /// Each by (segment, epoch).
    cache: Mutex<VecDeque<(usize, Arc<EpochPlan>)>>,
}

impl Plans {
    /// The plan holding the part's batch `i` (counted over its whole stream), and where in it.
    fn get(&self, i: u64) -> (Arc<EpochPlan>, usize) {
        let at = sizes::locate(&self.segments, i);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, p)) = cache.iter().find(|(s, p)| (*s, p.epoch) == (at.segment, at.epoch)) {
            return (p.clone(), at.index as usize);
        }
        let seg = &self.segments[at.segment];
        let cuts = if at.after_cuts { &seg.cuts[..] } else { &[] };
        let part = (self.rank, self.world_size);
        let p =
            Arc::new(EpochPlan::after_cuts(&self.rows_by_bucket, self.seed, at.epoch, cuts, seg.global_batch, part));
        if cache.len() >= 3 {
            cache.pop_front();
        }
        cache.push_back((at.segment, p.clone()));
        (p, at.index as usize)
    }
}

struct Shared {
    ds: Arc<Dataset>,
    /// Each part's own stream ([`mix`]).
    parts: Vec<Plans>,
    mix: mix::Mix,
    skip_bad: bool,
    /// Batches handed back by the consumer, whose buffers the next reads reuse.
    spares: Mutex<Vec<Batch>>,
}

impl Shared {
    /// Read absolute global batch `a` (this rank's slice).
    fn read(&self, a: u64) -> Result<Batch> {
        let (p, i, mixed_epoch) = self.mix.source(a);
        let (plan, k) = self.parts[p].get(i);
        let (bucket, rows) = plan.rank_slice(k);
        // (one dataset's epochs are its own: their lengths change with the size)
        let epoch = if self.parts.len() == 1 { plan.epoch } else { mixed_epoch };
        let spare = self.spares.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut b = batch::gather(&self.ds, bucket, rows, self.skip_bad, spare)?;
        b.global_index = a;
        b.epoch = epoch;
        b.part = p as u16;
        Ok(b)
    }
}

struct Workers {
    rx: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

pub struct Loader {
    shared: Arc<Shared>,
    state: LoaderState,
    /// Absolute batch number at which the workers started.
    first: u64,
    workers: Option<Workers>,
}

impl Loader {
    /// A loader over `ds` (its parts mixed by `opts.mix_weights`), starting at `resume` if given (which
    /// must come from the same dataset, seed, global batch size and mix) or at the very beginning.
    pub fn new(ds: Arc<Dataset>, opts: LoaderOptions, resume: Option<LoaderState>) -> Result<Loader> {
        let LoaderOptions { global_batch: g, world_size: w, rank, .. } = opts;
        if g == 0 || w == 0 || g % w != 0 || rank >= w {
            return Err(DataError::Config(format!(
                "loader: global batch {g} must be a positive multiple of world size {w}, and rank {rank} < {w}"
            )));
        }
        let part_rows: Vec<Vec<Vec<u64>>> = (0..ds.parts().len()).map(|p| ds.part_rows_by_bucket(p)).collect();
        let per_epoch: Vec<u64> = part_rows.iter().map(|rows| EpochPlan::batches_per_epoch(rows, g)).collect();
        if per_epoch.iter().all(|&n| n == 0) {
            let largest = part_rows.iter().flat_map(|p| p.iter().map(Vec::len)).max().unwrap_or(0);
            return Err(DataError::Config(format!(
                "loader: {}: no bucket has a full global batch of {g} rows (largest bucket: {largest} rows)",
                ds.parts().iter().map(|p| p.dir.display().to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
        // (one dataset: its own epoch; a mix: its datasets' shares, as the position records them)
        let mixed = mix_state(&ds, g, opts.mix_weights.as_deref(), &opts.mix_phases)?;
        let rows_of: Vec<&[Vec<u64>]> = part_rows.iter().map(|p| &p[..]).collect();
        let (dataset, buckets) = (ds.manifest.fingerprint(), Some(parts_buckets_fingerprint(&rows_of)));
        let state = match resume {
            None => {
                let earlier_sizes = Vec::new();
                LoaderState {
                    seed: opts.seed,
                    global_batch: g,
                    batches_done: 0,
                    dataset,
                    buckets,
                    mix: mixed,
                    earlier_sizes,
                }
            }
            Some(mut s) => {
                s.continues_with(&ds.manifest, opts.seed, g, mixed.as_ref())?;
                // (an earlier build's form, from now on this one's; the weights as this run gives them)
                (s.dataset, s.buckets, s.mix) = (dataset, buckets, mixed);
                if s.global_batch != g {
                    s = s.resized(g);
                }
                s
            }
        };
        // (a dataset mended since, `--accept-data-change`, may have no batch of an earlier size; a mix's
        // quotas say so of a dataset it weighs)
        let no_batch = |e: &&EarlierSize| EpochPlan::batches_per_epoch(&part_rows[0], e.global_batch) == 0;
        if let Some((k, e)) = state.earlier_sizes.iter().enumerate().find(|(_, e)| part_rows.len() == 1 && no_batch(e))
        {
            let largest = part_rows[0].iter().map(Vec::len).max().unwrap_or(0);
            return Err(DataError::Config(format!(
                "loader: the saved position drew global batches of {} rows (earlier_sizes[{k}]), of which {} has no \
                 full one (largest bucket: {largest} rows): it cannot be continued on this dataset",
                e.global_batch,
                ds.dir().display()
            )));
        }
        // one dataset: its own epochs; a mix: its datasets' shares, as the position records them, and
        // where the size changed, a phase of its own from each change on (the shares are whole batches)
        let phases: Vec<(u64, Vec<u64>)> = match &state.mix {
            None => vec![(0, vec![per_epoch[0]])],
            Some(_) if !state.earlier_sizes.is_empty() => {
                let starts = std::iter::once(0).chain(state.earlier_sizes.iter().map(|e| e.until));
                let gs = state.earlier_sizes.iter().map(|e| e.global_batch).chain([g]);
                let sizes: Vec<(u64, usize)> = starts.zip(gs).collect();
                sized_mix_phases(&ds, opts.mix_weights.as_deref(), &opts.mix_phases, &sizes)?
            }
            Some(m) => std::iter::once((0, m.batches_per_epoch.clone()))
                .chain(m.phases.iter().map(|p| (p.from, p.batches_per_epoch.clone())))
                .collect(),
        };
        let mix = mix::Mix::new(phases, opts.seed);
        let parts: Vec<Plans> = part_rows
            .into_iter()
            .enumerate()
            .map(|(p, rows_by_bucket)| {
                let seed = mix::part_seed(opts.seed, p);
                let counts: Vec<usize> = rows_by_bucket.iter().map(Vec::len).collect();
                // (each dataset's own batches drawn at each size: a mix's part counts them itself)
                let own: Vec<EarlierSize> = match state.mix {
                    None => state.earlier_sizes.clone(),
                    Some(_) => state
                        .earlier_sizes
                        .iter()
                        .map(|e| EarlierSize { global_batch: e.global_batch, until: mix.drawn_before(e.until)[p] })
                        .collect(),
                };
                let segments = sizes::segments(&counts, seed, &own, g);
                let cache = Mutex::new(VecDeque::new());
                Plans { rows_by_bucket, seed, segments, rank, world_size: w, cache }
            })
            .collect();
        let shared = Arc::new(Shared {
            ds,
            parts,
            mix,
            skip_bad: opts.bad_rows == BadRows::Skip,
            spares: Mutex::new(Vec::new()),
        });
        let first = state.batches_done;
        let workers = (opts.workers > 0).then(|| spawn_workers(&shared, first, opts.workers, opts.prefetch.max(1)));
        Ok(Loader { shared, state, first, workers })
    }

    /// The next batch of this rank. Errors from reader threads arrive here, in order.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let a = self.state.batches_done;
        let batch = match &self.workers {
            None => self.shared.read(a)?,
            Some(w) => {
                let i = ((a - self.first) % w.rx.len() as u64) as usize;
                w.rx[i].recv().map_err(|_| {
                    DataError::Loader(format!(
                        "reader thread {i} stopped without a result (it panicked); see the log above"
                    ))
                })??
            }
        };
        self.state.batches_done += 1;
        Ok(batch)
    }

    /// Hand a consumed batch back so its buffers are reused (optional). Reusing them matters with
    /// prefetch threads: buffers freed on another thread are not reused by the allocator, and fresh
    /// multi-megabyte buffers cost a page fault per 4 KiB.
    pub fn recycle(&self, batch: Batch) {
        let mut spares = self.shared.spares.lock().unwrap_or_else(|p| p.into_inner());
        if spares.len() < 2 * self.workers.as_ref().map_or(1, |w| w.rx.len()) {
            spares.push(batch);
        }
    }

    /// The position after the last delivered batch.
    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }

    /// Global batches per (mixed) epoch at the present size (every phase of a mix at one size has as
    /// many).
    pub fn batches_per_epoch(&self) -> u64 {
        self.shared.mix.per_epoch()
    }

    /// Rows per epoch of each part that do not fill a global batch of their bucket.
    pub fn rows_left_over_per_epoch(&self) -> u64 {
        let g = self.state.global_batch;
        self.shared.parts.iter().map(|p| EpochPlan::rows_left_over(&p.rows_by_bucket, g)).sum()
    }

    pub fn dataset(&self) -> &Dataset {
        &self.shared.ds
    }
}

/// Worker `w` of `n` reads absolute batches `first + w, first + w + n, ...` into its own bounded channel,
/// so the consumer can take them in global order with no reordering buffer.
fn spawn_workers(shared: &Arc<Shared>, first: u64, n: usize, depth: usize) -> Workers {
    let stop = Arc::new(AtomicBool::new(false));
    let mut rx = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    for w in 0..n {
        let (tx, r) = sync_channel::<Result<Batch>>(depth);
        let (shared, stop) = (shared.clone(), stop.clone());
        let h = std::thread::Builder::new()
            .name(format!("loader-{w}"))
            .spawn(move || {
                let mut a = first + w as u64;
                while !stop.load(Ordering::Relaxed) {
                    let res = shared.read(a);
                    let failed = res.is_err();
                    if tx.send(res).is_err() || failed {
                        break; // consumer gone, or the error was handed over: stop reading
                    }
                    a += n as u64;
                }
            })
            .expect("spawning a loader thread");
        rx.push(r);
        handles.push(h);
    }
    Workers { rx, handles, stop }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if let Some(w) = self.workers.take() {
            w.stop.store(true, Ordering::Relaxed);
            drop(w.rx); // unblocks workers waiting on a full channel
            for h in w.handles {
                let _ = h.join();
            }
        }
    }
}
