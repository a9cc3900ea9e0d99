//! A global batch size changed at a resume (`data.global_batch`): the stream in segments, each at one
//! size.
//!
//! Segment `s` starts at global batch `from_s` (where the resume that changed the size stood). It
//! draws first what is left of the epoch it starts in: that epoch's rows, in the order they were
//! shuffled in, less the batches drawn before at the earlier sizes, cut at the new size
//! ([`super::plan::Cut`]). Whole epochs at the new size follow. So no row is drawn twice in an epoch
//! across a change, and the rows a run had not reached are drawn before the epoch ends, as without it;
//! only the rows a full batch of the new size has no room for wait for the next epoch, as any epoch's
//! left-over rows do.
//!
//! The segments are a pure function of the sizes and where they changed (which the position records),
//! so a run resumed again after a change, on any number of ranks, draws what it would have drawn.

use super::plan::{batch_order, undrawn_counts, Cut};
use serde::{Deserialize, Serialize};

/// A size the stream had before its present one, as the position records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlierSize {
    pub global_batch: usize,
    /// The global batch at which the next size took over (the batches done at that resume).
    pub until: u64,
}

/// The stream from one global batch on, at one size.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub from: u64,
    pub global_batch: usize,
    /// The epoch it starts in, and the batches that epoch drew before it at earlier sizes (none: the
    /// segment starts the epoch).
    pub epoch: u64,
    pub cuts: Vec<Cut>,
    /// Its batches in `epoch`: what is left of it, cut at `global_batch`.
    pub first_epoch_len: u64,
    /// Batches of a whole epoch at `global_batch`.
    pub per_epoch: u64,
}

/// Where a global batch lies: its segment, its epoch, whether that epoch is the segment's cut one, and
/// its index among the epoch's batches at the segment's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    pub segment: usize,
    pub epoch: u64,
    pub after_cuts: bool,
    pub index: u64,
}

/// The segments of a stream over buckets of `counts` rows, under `seed`: `earlier` sizes, then
/// `global_batch` from the last `until` on (the `until`s increasing; a mix's dataset may repeat one,
/// having drawn nothing at a size).
pub fn segments(counts: &[usize], seed: u64, earlier: &[EarlierSize], global_batch: usize) -> Vec<Segment> {
    let per_epoch = |g: usize| counts.iter().map(|n| (n / g) as u64).sum::<u64>();
    let first = earlier.first().map_or(global_batch, |e| e.global_batch);
    let mut out = vec![Segment {
        from: 0,
        global_batch: first,
        epoch: 0,
        cuts: Vec::new(),
        first_epoch_len: per_epoch(first),
        per_epoch: per_epoch(first),
    }];
    let later = earlier.iter().skip(1).map(|e| e.global_batch).chain(std::iter::once(global_batch));
    for (change, g) in earlier.iter().zip(later) {
        let prev = out.last().expect("the first segment");
        if change.until == prev.from {
            // (a size that drew nothing here: a dataset of a mix not drawn while it lasted) the next
            // one starts where it did
            let first_epoch_len = undrawn_counts(counts, &prev.cuts).iter().map(|n| (n / g) as u64).sum();
            let (epoch, cuts) = (prev.epoch, prev.cuts.clone());
            out.push(Segment {
                from: change.until,
                global_batch: g,
                epoch,
                cuts,
                first_epoch_len,
                per_epoch: per_epoch(g),
            });
            continue;
        }
        let at = locate(&out, change.until);
        // the cuts of the epoch the change falls in: those before it in that epoch, and the batches
        // the segment before drew of it (none where the change falls on the epoch's start)
        let mut cuts = if at.after_cuts { prev.cuts.clone() } else { Vec::new() };
        if at.index > 0 || at.after_cuts {
            let left = undrawn_counts(counts, &cuts);
            let order = batch_order(&left, prev.global_batch, seed, at.epoch, cuts.len());
            cuts.push(Cut::of(&order, at.index as usize, prev.global_batch, counts.len()));
        }
        let first_epoch_len = undrawn_counts(counts, &cuts).iter().map(|n| (n / g) as u64).sum();
        out.push(Segment {
            from: change.until,
            global_batch: g,
            epoch: at.epoch,
            cuts,
            first_epoch_len,
            per_epoch: per_epoch(g),
        });
    }
    out
}

/// Where global batch `a` lies among `segments`.
pub fn locate(segments: &[Segment], a: u64) -> Located {
    let s = segments.partition_point(|seg| seg.from <= a).max(1) - 1;
    let seg = &segments[s];
    let t = a - seg.from;
    // (a segment that starts an epoch has no cuts: its first epoch is a whole one at its size)
    if t < seg.first_epoch_len {
        return Located { segment: s, epoch: seg.epoch, after_cuts: !seg.cuts.is_empty(), index: t };
    }
    // (then whole epochs at its size, which has batches: the loader refuses a size with none)
    let rest = t - seg.first_epoch_len;
    let (epoch, index) = (seg.epoch + 1 + rest / seg.per_epoch, rest % seg.per_epoch);
    Located { segment: s, epoch, after_cuts: false, index }
}
