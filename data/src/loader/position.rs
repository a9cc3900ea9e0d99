//! The loader's position ([`LoaderState`]): what a checkpoint records of the data stream to continue
//! it sample-exactly, the checks a resume makes of it, and a mix's part of it ([`MixState`]).

use serde::{Deserialize, Serialize};

use super::mix;
use super::sizes::EarlierSize;
use super::MixPhase;
use crate::dataset::Dataset;
use crate::error::{DataError, Result};

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
    /// The global batch sizes before `global_batch`, where a resume changed it ([`super::sizes`]), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_sizes: Vec<EarlierSize>,
    /// [`crate::tokenizer::identity`] of the dataset's tokenizer: a resume on bits of another one, which
    /// mean other images, is refused (positions saved before 2026-12-05 have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// The batches done where `--accept-data-change` last took a dataset whose buckets hold other rows
    /// than the position's: the batches before were drawn from rows the dataset no longer holds as they
    /// were (`--rows-of-step` refuses them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_changed_at: Option<u64>,
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
    /// What the stream drew with before the position: each dataset's batches per mixed epoch from each
    /// start (of a phase, a global batch size, a dataset's rows changed under `--accept-data-change`). A
    /// resume draws the batches before the position by these, not by the datasets as they are now, so
    /// where one dataset's rows changed the others go on in their own streams where they were
    /// (positions saved before 2026-12-07 have none: recounted from the datasets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drawn: Vec<DrawnSpan>,
}

/// A start of [`MixState::drawn`]: from global batch `from` on, each dataset's batches per mixed epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrawnSpan {
    pub from: u64,
    pub batches_per_epoch: Vec<u64>,
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

    /// An error unless `drawn` is as a loader writes it: starts from batch 0 on, increasing, before
    /// `done`, each with a count per dataset and some batches (a position edited by hand, or damaged).
    fn check_drawn(&self, done: u64) -> Result<()> {
        let parts = self.batches_per_epoch.len();
        for (k, d) in self.drawn.iter().enumerate() {
            let after = k.checked_sub(1).map(|j| self.drawn[j].from);
            let starts_right = if k == 0 { d.from == 0 } else { after.is_some_and(|a| d.from > a) && d.from < done };
            if !starts_right || d.batches_per_epoch.len() != parts || d.batches_per_epoch.iter().all(|&n| n == 0) {
                return Err(DataError::Config(format!(
                    "the saved position's mix.drawn[{k}] (from batch {}, batches per epoch {:?}) must start at batch \
                     0 for the first and after the one before for the others, before the batches done ({done}), \
                     with a count for each of the {parts} datasets, not all 0 (a position edited by hand, or damaged)",
                    d.from, d.batches_per_epoch
                )));
            }
        }
        Ok(())
    }

    /// This mix (the datasets and settings as they are now) with what `before` (the saved position's
    /// mix) drew with: the batches before the position keep their datasets, and each its place.
    pub fn keeping_drawn(self, before: Option<&MixState>) -> MixState {
        MixState { drawn: before.map_or(Vec::new(), |m| m.drawn.clone()), ..self }
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
    /// Refused where `ds`'s bits are of another tokenizer than the saved position's data (mixed datasets
    /// share one, the first's): its bits mean other images, which no resume takes. A tokenizer file that
    /// does not read (training does not need it; `data verify` names it) is compared by the checksum its
    /// manifest records ([`crate::tokenizer::identity`]).
    pub fn same_tokenizer(&self, ds: &crate::Dataset) -> Result<()> {
        let first = &ds.parts()[0];
        self.same_tokenizer_as(&first.dir, Some(&crate::tokenizer::identity(&first.dir, &first.manifest)))
    }

    /// [`LoaderState::same_tokenizer`] where the dataset's tokenizer identity, `now`, is known already
    /// (`dir`: the dataset folder it names).
    pub(crate) fn same_tokenizer_as(&self, dir: &std::path::Path, now: Option<&str>) -> Result<()> {
        match (&self.tokenizer, now) {
            (Some(saved), Some(now)) if !crate::tokenizer::same_identity(saved, now) => {
                Err(DataError::Config(format!(
                    "{}: its bits are of another tokenizer than the checkpoint's data ({saved} → {now}), so they mean \
                 other images: no resume takes that, --accept-data-change included (it takes mended rows); train \
                 a new run on it",
                    dir.display()
                )))
            }
            _ => Ok(()),
        }
    }

    /// An error unless a loader of `seed` and the dataset of `manifest` continues this position: each
    /// fixes the order of the samples (a configuration error, not bad data). Another `global_batch` is
    /// no error (the caller resizes the position); it only tells a mix's change from a size's.
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
        if let Some(saved) = &self.mix {
            saved.check_drawn(done)?;
        }
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
            // (rows the model cannot take: no flag continues on them, so none is suggested)
            if !manifest.same_layout(&self.dataset) {
                return Err(DataError::Config(format!(
                    "cannot resume the data stream: the dataset is not the one the saved position was read from: \
                     {changes} (dataset fingerprint {} → {}); with another `d` or other scale schedules no resume \
                     goes on, --accept-data-change included: resume on the dataset the run started with, or start \
                     a new run",
                    self.dataset,
                    manifest.fingerprint()
                )));
            }
            return Err(DataError::Config(format!(
                "cannot resume the data stream: the dataset is not the one the saved position was read from: \
                 {changes} (dataset fingerprint {} → {}); the dataset fixes the order of the samples: resume \
                 on the dataset the run started with, or start a new run (a dataset mended since, its bad rows \
                 rewritten: `infinity train --resume … --accept-data-change` goes on from the saved position)",
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

    /// Each global batch size of the stream with the global batches it spans, as `(from, until, size)`:
    /// the earlier ones, then the present one's until `end` (or its start, where that is later).
    pub fn size_spans(&self, end: u64) -> Vec<(u64, u64, usize)> {
        let starts: Vec<u64> = std::iter::once(0).chain(self.earlier_sizes.iter().map(|e| e.until)).collect();
        let ends = self.earlier_sizes.iter().map(|e| e.until).chain([end.max(starts[starts.len() - 1])]);
        let sizes = self.earlier_sizes.iter().map(|e| e.global_batch).chain([self.global_batch]);
        starts.into_iter().zip(ends).zip(sizes).map(|((from, until), g)| (from, until, g)).collect()
    }

    /// This position continued at global batch size `global_batch` from here on ([`super::sizes`]): the size
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
    let weights = weights.map(<[f64]>::to_vec);
    Ok(Some(MixState { batches_per_epoch, weights, phases: states, drawn: Vec::new() }))
}

/// A mix's phases where its global batch changed (`sizes`: each size from its first global batch, by
/// increasing start): every start of a weighting (`weights`, then `phases`) or of a size, with the
/// quotas of the weights and the size in effect there.
pub(super) fn sized_mix_phases(
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
