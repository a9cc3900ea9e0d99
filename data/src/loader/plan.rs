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
        assert!(global_batch > 0 && world > 0 && global_batch.is_multiple_of(world) && rank < world);
        let per_rank = global_batch / world;
        let mut rows = Vec::with_capacity(rows_by_bucket.len());
        let mut order = Vec::new();
        for (b, bucket_rows) in rows_by_bucket.iter().enumerate() {
            // (the whole bucket shuffled, one bucket at a time: every rank draws the same permutation)
            let mut perm = bucket_rows.clone();
            perm.shuffle(&mut keyed_rng(seed, &[epoch, b as u64]));
            let chunks = perm.len() / global_batch;
            order.extend((0..chunks).map(|c| (b as u16, c as u32)));
            let at = |c: usize| c * global_batch + rank * per_rank;
            rows.push((0..chunks).flat_map(|c| perm[at(c)..at(c) + per_rank].iter().copied()).collect());
        }
        order.shuffle(&mut keyed_rng(seed, &[epoch, ORDER_STREAM]));
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
