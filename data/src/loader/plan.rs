//! The global sample order: a pure function of (seed, epoch, dataset, global batch size).
//!
//! For each epoch:
//! 1. every bucket's rows are shuffled with a stream keyed by (seed, epoch, bucket);
//! 2. each bucket is cut into global batches of `G` rows; the `n_b mod G` rows left over are not used in
//!    this epoch (they are different rows next epoch) and are reported by [`EpochPlan::rows_left_over`];
//! 3. the list of (bucket, chunk) batches is shuffled with a stream keyed by (seed, epoch).
//!
//! Nothing here depends on the world size: rank `r` of `W` takes rows `[r·G/W, (r+1)·G/W)` of every global
//! batch, so changing `W` between runs changes who reads a row, never which rows form a step.
//!
//! An epoch in which a resume changed `G` ([`super::sizes`]) is cut again: each bucket's rows in the
//! same shuffled order, less the global batches drawn before the change ([`Cut`]), are cut into batches
//! of the new size, and those batches are shuffled with a stream keyed by (seed, epoch, cuts made).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A deterministic RNG for one purpose. Streams are separated by hashing the keys (SplitMix64 finaliser).
pub fn keyed_rng(seed: u64, keys: &[u64]) -> ChaCha8Rng {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for &k in keys {
        h = mix64(h ^ mix64(k.wrapping_add(0x632b_e59b_d9b4_e019)));
    }
    ChaCha8Rng::seed_from_u64(h)
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Key separating the batch-order stream from the per-bucket streams.
const ORDER_STREAM: u64 = u64::MAX;

/// The global batches an epoch drew at one size before a resume changed the size: which chunks of
/// each bucket's shuffled rows (cut at `global_batch`) were drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct Cut {
    pub global_batch: usize,
    /// By bucket, the chunks drawn, increasing.
    pub drawn: Vec<Vec<u32>>,
}

impl Cut {
    /// The cut of the first `drawn` batches of `order` (an epoch's `(bucket, chunk)` batches at
    /// `global_batch`) over `buckets` buckets.
    pub fn of(order: &[(u16, u32)], drawn: usize, global_batch: usize, buckets: usize) -> Cut {
        let mut by_bucket = vec![Vec::new(); buckets];
        for &(b, c) in &order[..drawn] {
            by_bucket[b as usize].push(c);
        }
        by_bucket.iter_mut().for_each(|d| d.sort_unstable());
        Cut { global_batch, drawn: by_bucket }
    }

    /// Bucket `b`'s rows the cut left undrawn, in their order (`rows`: the bucket's rows before it).
    fn undrawn(&self, b: usize, rows: Vec<u64>) -> Vec<u64> {
        let drawn = &self.drawn[b];
        if drawn.is_empty() {
            return rows;
        }
        let g = self.global_batch;
        let mut kept = Vec::with_capacity(rows.len() - drawn.len() * g);
        for (c, chunk) in rows.chunks(g).enumerate() {
            if chunk.len() < g || drawn.binary_search(&(c as u32)).is_err() {
                kept.extend_from_slice(chunk);
            }
        }
        kept
    }
}

/// Rows of each bucket (of `counts` rows) left undrawn by `cuts`, one after the other.
pub fn undrawn_counts(counts: &[usize], cuts: &[Cut]) -> Vec<usize> {
    let mut left = counts.to_vec();
    for cut in cuts {
        for (n, d) in left.iter_mut().zip(&cut.drawn) {
            *n -= d.len() * cut.global_batch;
        }
    }
    left
}

/// The order of an epoch's global batches: every bucket (of `counts` rows) cut into `global_batch`
/// chunks, shuffled keyed by (seed, epoch), and by the number of cuts made before (none: as an epoch
/// at one size has always been drawn).
pub fn batch_order(counts: &[usize], global_batch: usize, seed: u64, epoch: u64, cuts: usize) -> Vec<(u16, u32)> {
    let mut order: Vec<(u16, u32)> =
        counts.iter().enumerate().flat_map(|(b, n)| (0..n / global_batch).map(move |c| (b as u16, c as u32))).collect();
    let mut rng = match cuts {
        0 => keyed_rng(seed, &[epoch, ORDER_STREAM]),
        k => keyed_rng(seed, &[epoch, ORDER_STREAM, k as u64]),
    };
    order.shuffle(&mut rng);
    order
}

pub struct EpochPlan {
    pub epoch: u64,
    /// Rows of a global batch that one rank reads: `G / W`.
    per_rank: usize,
    /// This rank's rows of every global batch, by bucket: chunk `c`'s at `[c·per_rank, (c+1)·per_rank)`
    /// of its bucket's list. A rank keeps its part alone (`1/W` of the row ids: at a billion rows, 8 GB
    /// each for the whole), of the order every world size shares.
    rows: Vec<Vec<u64>>,
    /// `(bucket, chunk)` of every global batch, in order.
    order: Vec<(u16, u32)>,
}

impl EpochPlan {
    /// The plan of `epoch` as rank `rank` of `world` reads it (`(0, 1)`: whole global batches).
    pub fn new(
        rows_by_bucket: &[Vec<u64>],
        seed: u64,
        epoch: u64,
        global_batch: usize,
        (rank, world): (usize, usize),
    ) -> EpochPlan {
        EpochPlan::after_cuts(rows_by_bucket, seed, epoch, &[], global_batch, (rank, world))
    }

    /// The plan of the rest of `epoch` after `cuts` (the batches drawn at earlier sizes), cut at
    /// `global_batch`, as rank `rank` of `world` reads it.
    pub fn after_cuts(
        rows_by_bucket: &[Vec<u64>],
        seed: u64,
        epoch: u64,
        cuts: &[Cut],
        global_batch: usize,
        (rank, world): (usize, usize),
    ) -> EpochPlan {
        assert!(global_batch > 0 && world > 0 && global_batch.is_multiple_of(world) && rank < world);
        let per_rank = global_batch / world;
        let mut rows = Vec::with_capacity(rows_by_bucket.len());
        let mut counts = Vec::with_capacity(rows_by_bucket.len());
        for (b, bucket_rows) in rows_by_bucket.iter().enumerate() {
            // (the whole bucket shuffled, one bucket at a time: every rank draws the same permutation)
            let mut perm = bucket_rows.clone();
            perm.shuffle(&mut keyed_rng(seed, &[epoch, b as u64]));
            let perm = cuts.iter().fold(perm, |perm, cut| cut.undrawn(b, perm));
            let chunks = perm.len() / global_batch;
            counts.push(perm.len());
            let at = |c: usize| c * global_batch + rank * per_rank;
            rows.push((0..chunks).flat_map(|c| perm[at(c)..at(c) + per_rank].iter().copied()).collect());
        }
        let order = batch_order(&counts, global_batch, seed, epoch, cuts.len());
        EpochPlan { epoch, per_rank, rows, order }
    }

    /// Global batches in one epoch: `Σ_b ⌊n_b / G⌋`. The same for every epoch.
    pub fn batches_per_epoch(rows_by_bucket: &[Vec<u64>], global_batch: usize) -> u64 {
        rows_by_bucket.iter().map(|r| (r.len() / global_batch) as u64).sum()
    }

    /// Rows that do not fit a full global batch of their bucket this epoch.
    pub fn rows_left_over(rows_by_bucket: &[Vec<u64>], global_batch: usize) -> u64 {
        rows_by_bucket.iter().map(|r| (r.len() % global_batch) as u64).sum()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Bucket and this rank's `G / W` global row ids of global batch `k` of this epoch (rank `r` of
    /// `W` reads rows `[r·G/W, (r+1)·G/W)` of each global batch).
    pub fn rank_slice(&self, k: usize) -> (u16, &[u64]) {
        let (b, c) = self.order[k];
        let n = self.per_rank;
        (b, &self.rows[b as usize][c as usize * n..(c as usize + 1) * n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets() -> Vec<Vec<u64>> {
        // three buckets of uneven sizes, rows interleaved as they would be across shards
        let mut b = vec![vec![], vec![], vec![]];
        for g in 0..1000u64 {
            b[(g % 7 % 3) as usize].push(g);
        }
        b
    }

    #[test]
    fn same_seed_same_order_other_seed_or_epoch_differs() {
        let b = buckets();
        let p = |seed, epoch| {
            let plan = EpochPlan::new(&b, seed, epoch, 16, (0, 1));
            (0..plan.len()).flat_map(|k| plan.rank_slice(k).1.to_vec()).collect::<Vec<_>>()
        };
        assert_eq!(p(1, 0), p(1, 0));
        assert_ne!(p(1, 0), p(2, 0));
        assert_ne!(p(1, 0), p(1, 1));
    }

    #[test]
    fn batches_are_bucket_homogeneous_and_ranks_disjoint_and_complete() {
        let b = buckets();
        let plan = EpochPlan::new(&b, 5, 3, 12, (0, 1));
        assert_eq!(plan.len() as u64, EpochPlan::batches_per_epoch(&b, 12));
        // each rank's plan holds its part alone
        let parts: Vec<EpochPlan> = (0..4).map(|rank| EpochPlan::new(&b, 5, 3, 12, (rank, 4))).collect();
        let held = |p: &EpochPlan| p.rows.iter().map(Vec::len).sum::<usize>();
        assert!(parts.iter().all(|p| held(p) * 4 == held(&plan)));
        let mut seen = std::collections::HashSet::new();
        for k in 0..plan.len() {
            let (bucket, rows) = plan.rank_slice(k);
            assert!(rows.len() == 12 && rows.iter().all(|r| b[bucket as usize].contains(r)));
            let mut union = Vec::new();
            for part in &parts {
                let (their_bucket, theirs) = part.rank_slice(k);
                assert_eq!(their_bucket, bucket);
                union.extend_from_slice(theirs);
            }
            assert_eq!(union, rows, "rank slices must tile the global batch in order");
            for r in rows {
                assert!(seen.insert(*r), "row {r} used twice in one epoch");
            }
        }
        let used = seen.len() as u64;
        assert_eq!(used + EpochPlan::rows_left_over(&b, 12), 1000);
    }
}
