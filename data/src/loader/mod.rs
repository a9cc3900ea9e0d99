//! The training loader: a deterministic global order of bucket-homogeneous global batches (see
//! [`plan`]), each rank reading its equal slice, optionally prefetched by background threads, with a
//! small serialisable position for sample-exact resume (also across a change of world size). A joined
//! dataset's parts are mixed by weight ([`mix`]).

pub mod batch;
pub mod mix;
pub mod plan;
pub mod position;
pub mod sizes;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

pub use batch::Batch;
pub use plan::EpochPlan;
pub use position::{mix_state, DrawnSpan, LoaderState, MixState, PhaseState};
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
        let (part, epoch, plan, k) = self.planned(a);
        let (bucket, rows) = plan.rank_slice(k);
        let spare = self.spares.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut b = batch::gather(&self.ds, bucket, rows, self.skip_bad, spare)?;
        b.global_index = a;
        b.epoch = epoch;
        b.part = part;
        Ok(b)
    }

    /// Where absolute global batch `a` stands: its dataset of the mix, its epoch, and the epoch plan that
    /// holds it with its place there (this rank's slice is `plan.rank_slice(k)`).
    fn planned(&self, a: u64) -> (u16, u64, Arc<EpochPlan>, usize) {
        let (p, i, mixed_epoch) = self.mix.source(a);
        let (plan, k) = self.parts[p].get(i);
        // (one dataset's epochs are its own: their lengths change with the size)
        let epoch = if self.parts.len() == 1 { plan.epoch } else { mixed_epoch };
        (p as u16, epoch, plan, k)
    }
}

/// The rows a batch draws, before they are read: their dataset of the mix, bucket and epoch, and the
/// global row numbers, in the order the batch holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedRows {
    pub part: u16,
    pub bucket: u16,
    pub epoch: u64,
    pub rows: Vec<u64>,
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
    /// must come from the same dataset, seed and mix; at another global batch size the rest of each epoch
    /// is cut at the new size, [`LoaderState::resized`]) or at the very beginning.
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
        // (mixed datasets share one tokenizer: the first's; a tokenizer file that does not read, which
        // training does not need and `data verify` names, is checked by the checksum its manifest records)
        let first = &ds.parts()[0];
        let tokenizer = Some(crate::tokenizer::identity(&first.dir, &first.manifest));
        // (what a resumed mix drew with before its position: the batches before it keep their parts)
        let drawn = resume.as_ref().and_then(|s| s.mix.as_ref()).map_or(Vec::new(), |m| m.drawn.clone());
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
                    tokenizer,
                    rows_changed_at: None,
                }
            }
            Some(mut s) => {
                s.same_tokenizer_as(&first.dir, tokenizer.as_deref())?;
                s.continues_with(&ds.manifest, opts.seed, g, mixed.as_ref())?;
                // (an earlier build's form, from now on this one's; the weights as this run gives them)
                // (a tokenizer file that cannot be read now keeps the saved identity, which holds its
                // checksum, for the next resume to check)
                (s.dataset, s.buckets, s.mix) = (dataset, buckets, mixed);
                let unread = |id: &Option<String>| id.as_ref().is_none_or(|id| !id.contains(" crc32c "));
                if !unread(&tokenizer) || unread(&s.tokenizer) {
                    s.tokenizer = tokenizer;
                }
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
                position::sized_mix_phases(&ds, opts.mix_weights.as_deref(), &opts.mix_phases, &sizes)?
            }
            Some(m) => std::iter::once((0, m.batches_per_epoch.clone()))
                .chain(m.phases.iter().map(|p| (p.from, p.batches_per_epoch.clone())))
                .collect(),
        };
        let mix = mix::Mix::new(mix::with_drawn(phases, &drawn, state.batches_done), opts.seed);
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
                        "reader thread {i} stopped without a result (it panicked, or ended at an error it handed \
                         over before); see the log above"
                    ))
                })??
            }
        };
        self.state.batches_done += 1;
        Ok(batch)
    }

    /// The rows of this rank's next batch, without reading them (a bad row among them is no error): what
    /// `infinity train --rows-of-step` lists. It counts as the batch delivered.
    pub fn next_rows(&mut self) -> PlannedRows {
        let (part, epoch, plan, k) = self.shared.planned(self.state.batches_done);
        let (bucket, rows) = plan.rank_slice(k);
        self.state.batches_done += 1;
        PlannedRows { part, bucket, epoch, rows: rows.to_vec() }
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
        let mut state = self.state.clone();
        if let Some(m) = state.mix.as_mut() {
            m.drawn = self.shared.mix.spans_before(state.batches_done);
        }
        state
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

/// How long a dropped loader waits for its workers to end.
const WORKER_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Drop for Loader {
    fn drop(&mut self) {
        if let Some(w) = self.workers.take() {
            w.end(WORKER_EXIT_WAIT);
        }
    }
}

impl Workers {
    /// Stop the workers and join them, but wait no longer than `wait`: a worker stuck in a read (a
    /// frozen file system's page fault) would otherwise hold up the process's exit, and the error that
    /// ended the run (a collective's timeout) would never be said; one left behind ends with the process.
    fn end(self, wait: std::time::Duration) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.rx); // unblocks workers waiting on a full channel
        let t0 = std::time::Instant::now();
        while self.handles.iter().any(|h| !h.is_finished()) && t0.elapsed() < wait {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for h in self.handles.into_iter().filter(|h| h.is_finished()) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Workers that end are joined; one stuck is left behind after the wait, not waited for.
    #[test]
    fn a_stuck_worker_does_not_hold_up_the_end() {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, done) = (stop.clone(), Arc::new(AtomicBool::new(false)));
        let ended = done.clone();
        let obeys = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            ended.store(true, Ordering::SeqCst);
        });
        let stuck = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(30)));
        let w = Workers { rx: Vec::new(), handles: vec![obeys, stuck], stop };
        let t0 = std::time::Instant::now();
        w.end(std::time::Duration::from_millis(300));
        assert!(t0.elapsed() < std::time::Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(done.load(Ordering::SeqCst), "the worker that stops was joined");
    }
}
