//! Mixing datasets: which part's batch each global batch is.
//!
//! Every part (a joined folder, [`crate::dataset::Part`]) has its own stream of batches: its own
//! [`super::EpochPlan`]s, epoch after epoch, of its rows alone (part 0 under the run's seed, so a run
//! of one dataset is drawn exactly as before mixing existed; part `p > 0` under a seed keyed by `p`).
//! A mixed epoch is as long as the parts' epochs together (`N = Σ N_p` global batches); part `p` has
//! `n_p` of its slots, its weight's share of `N` (with no weights, `n_p = N_p`: the datasets
//! concatenated). The slots are shuffled per mixed epoch, keyed by (seed, epoch), and each part's slots
//! take its stream's batches in order, where the last mixed epoch left it. So a part weighted above its
//! size repeats its rows (a new epoch of its own, newly shuffled) and one weighted below it goes
//! through them more slowly, never twice before all were drawn.
//!
//! Batch `a` is a pure function of `a` (the slot table of its mixed epoch, cached), so prefetch
//! threads, resume and a change of world size work as for one dataset.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rand::seq::SliceRandom;
use rand::RngCore;

use super::plan::keyed_rng;
use crate::error::{DataError, Result};

/// Key separating the mix's streams from the epoch plans'.
const MIX_STREAM: u64 = u64::MAX - 1;

/// The seed of part `p`'s own stream.
pub(crate) fn part_seed(seed: u64, p: usize) -> u64 {
    match p {
        0 => seed,
        _ => keyed_rng(seed, &[MIX_STREAM, p as u64]).next_u64(),
    }
}

/// Slots per mixed epoch of each part: with no weights each part's own batches per epoch (`natural`);
/// otherwise each weight's share of their sum, rounded to whole batches by largest remainder (ties to
/// the earlier part), so the slots still sum to `Σ natural`. `names` name the parts in errors.
pub fn quotas(natural: &[u64], weights: Option<&[f64]>, names: &[String]) -> Result<Vec<u64>> {
    if natural.len() > u16::MAX as usize {
        return Err(DataError::Config(format!("mixing {} datasets: at most {} may be mixed", natural.len(), u16::MAX)));
    }
    let Some(w) = weights else { return Ok(natural.to_vec()) };
    if w.len() != natural.len() {
        return Err(DataError::Config(format!(
            "mixing {} datasets with {} weights: give one weight per dataset",
            natural.len(),
            w.len()
        )));
    }
    if let Some(i) = w.iter().position(|x| !x.is_finite() || *x < 0.0) {
        return Err(DataError::Config(format!("{}: weight {} must be a finite number ≥ 0", names[i], w[i])));
    }
    let sum: f64 = w.iter().sum();
    if sum <= 0.0 {
        return Err(DataError::Config("mixing datasets: every weight is 0; give one a positive weight".into()));
    }
    let total: u64 = natural.iter().sum();
    let exact: Vec<f64> = w.iter().map(|x| x / sum * total as f64).collect();
    let mut out: Vec<u64> = exact.iter().map(|x| x.floor() as u64).collect();
    let mut by_remainder: Vec<usize> = (0..w.len()).collect();
    by_remainder
        .sort_by(|&i, &j| (exact[j] - exact[j].floor()).total_cmp(&(exact[i] - exact[i].floor())).then(i.cmp(&j)));
    let short = total - out.iter().sum::<u64>();
    for &i in by_remainder.iter().take(short as usize) {
        out[i] += 1;
    }
    if let Some(i) = (0..out.len()).find(|&i| w[i] > 0.0 && natural[i] == 0) {
        return Err(DataError::Config(format!(
            "{}: weighted {} in the mix, but none of its buckets holds a full global batch",
            names[i], w[i]
        )));
    }
    if let Some(i) = (0..out.len()).find(|&i| out[i] == 0 && w[i] > 0.0) {
        // (its share of the N batches reaches one at w ≥ (Σ others) / (N − 1))
        let least = (sum - w[i]) / (total.max(2) - 1) as f64;
        return Err(DataError::Config(format!(
            "{}: weight {} gives it none of the {total} global batches of a mixed epoch (about {} or more gives it \
             one; 0 leaves it out)",
            names[i],
            w[i],
            significant(least)
        )));
    }
    Ok(out)
}

/// `x` to three significant digits.
fn significant(x: f64) -> String {
    let decimals = if x > 0.0 { (2 - x.log10().floor() as i32).max(0) as usize } else { 3 };
    format!("{x:.decimals$}")
}

/// One mixed epoch's slots: `(part, the part's batch within this mixed epoch)`.
struct Slots {
    epoch: u64,
    slots: Vec<(u16, u32)>,
}

/// The mix of a joined dataset's parts (see the module's docs).
pub(crate) struct Mix {
    /// `n_p`: each part's slots per mixed epoch.
    quotas: Vec<u64>,
    /// `N = Σ n_p`.
    per_epoch: u64,
    seed: u64,
    cache: Mutex<VecDeque<Arc<Slots>>>,
}

impl Mix {
    pub(crate) fn new(quotas: Vec<u64>, seed: u64) -> Mix {
        let per_epoch = quotas.iter().sum();
        Mix { quotas, per_epoch, seed, cache: Mutex::new(VecDeque::new()) }
    }

    pub(crate) fn per_epoch(&self) -> u64 {
        self.per_epoch
    }

    /// The part global batch `a` comes from, and which of that part's own batches it is (counted over
    /// its whole stream).
    pub(crate) fn source(&self, a: u64) -> (usize, u64) {
        if self.quotas.len() == 1 {
            return (0, a);
        }
        let (epoch, k) = (a / self.per_epoch, (a % self.per_epoch) as usize);
        let (p, i) = self.slots(epoch).slots[k];
        (p as usize, epoch * self.quotas[p as usize] + i as u64)
    }

    fn slots(&self, epoch: u64) -> Arc<Slots> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cache.iter().find(|s| s.epoch == epoch) {
            return s.clone();
        }
        let mut parts: Vec<u16> =
            self.quotas.iter().enumerate().flat_map(|(p, &n)| std::iter::repeat_n(p as u16, n as usize)).collect();
        parts.shuffle(&mut keyed_rng(self.seed, &[epoch, MIX_STREAM]));
        let mut next = vec![0u32; self.quotas.len()];
        let slots = parts
            .into_iter()
            .map(|p| {
                let i = next[p as usize];
                next[p as usize] += 1;
                (p, i)
            })
            .collect();
        let s = Arc::new(Slots { epoch, slots });
        if cache.len() >= 3 {
            cache.pop_front();
        }
        cache.push_back(s.clone());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("part {i}")).collect()
    }

    #[test]
    fn quotas_follow_the_weights_and_keep_the_epoch_length() {
        assert_eq!(quotas(&[30, 10], None, &names(2)).unwrap(), vec![30, 10]);
        assert_eq!(quotas(&[30, 10], Some(&[1.0, 1.0]), &names(2)).unwrap(), vec![20, 20]);
        // 40 · (0.7, 0.2, 0.1) = (28, 8, 4); 41 · (2/3, 1/3) = (27.33, 13.67) → (27, 14)
        assert_eq!(quotas(&[20, 10, 10], Some(&[0.7, 0.2, 0.1]), &names(3)).unwrap(), vec![28, 8, 4]);
        assert_eq!(quotas(&[40, 1], Some(&[2.0, 1.0]), &names(2)).unwrap(), vec![27, 14]);
        // a tie of remainders goes to the earlier part
        assert_eq!(quotas(&[2, 1], Some(&[1.0, 1.0]), &names(2)).unwrap(), vec![2, 1]);
        assert_eq!(quotas(&[5, 5], Some(&[1.0, 0.0]), &names(2)).unwrap(), vec![10, 0]);
    }

    #[test]
    fn bad_weights_are_named() {
        let e = |w: &[f64], n: &[u64]| quotas(n, Some(w), &names(n.len())).unwrap_err().to_string();
        assert!(e(&[1.0, -1.0], &[4, 4]).contains("part 1: weight -1"), "{}", e(&[1.0, -1.0], &[4, 4]));
        assert!(e(&[f64::NAN, 1.0], &[4, 4]).contains("part 0: weight NaN"));
        assert!(e(&[0.0, 0.0], &[4, 4]).contains("every weight is 0"));
        assert!(e(&[1.0], &[4, 4]).contains("2 datasets with 1 weights"));
        assert!(e(&[1.0, 1.0], &[4, 0]).contains("part 1: weighted 1 in the mix, but none of its buckets"));
        // 101 batches: 0.001 of 1.001 is 0.1 of one; (1 / 100 = 0.01 gets one)
        let tiny = e(&[1.0, 0.001], &[100, 1]);
        assert!(
            tiny.contains("part 1: weight 0.001 gives it none of the 101 global batches")
                && tiny.contains("about 0.0100 or more"),
            "{tiny}"
        );
        assert_eq!(quotas(&[100, 1], Some(&[1.0, 0.0101]), &names(2)).unwrap(), vec![100, 1]);
        assert_eq!(significant(0.00025), "0.000250");
        assert_eq!(significant(12.5), "12.5");
    }

    #[test]
    fn every_part_takes_its_quota_in_stream_order() {
        let mix = Mix::new(vec![5, 2, 3], 9);
        let mut next = [0u64; 3];
        for epoch in 0..4u64 {
            let mut taken = [0u64; 3];
            for k in 0..10 {
                let (p, i) = mix.source(epoch * 10 + k);
                assert_eq!(i, next[p], "part {p}'s batches come in order");
                next[p] += 1;
                taken[p] += 1;
            }
            assert_eq!(taken, [5, 2, 3], "epoch {epoch}");
        }
        let order = |e: u64| (0..10).map(|k| mix.source(e * 10 + k).0).collect::<Vec<_>>();
        assert_ne!(order(0), order(1), "each mixed epoch is shuffled anew");
        // one part: the batches themselves
        assert_eq!(Mix::new(vec![7], 3).source(12), (0, 12));
        assert_eq!(part_seed(5, 0), 5);
        assert_ne!(part_seed(5, 1), part_seed(5, 2));
    }
}
