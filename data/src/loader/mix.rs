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
//! A mix may change its weights at given global batches (phases: an annealing phase on other data).
//! Phase `k` starts mixed epochs of its own at its first batch, its slots shuffled keyed by (seed,
//! epoch, `k`), and each part's slots go on in its stream where the phases before left it. So the
//! batches before a phase are the same with or without it, and no part draws a row twice before all
//! were drawn across a phase's start either.
//!
//! Batch `a` is a pure function of `a` (the slot table of its mixed epoch, cached), so prefetch
//! threads, resume and a change of world size work as for one dataset.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rand::seq::SliceRandom;
use rand::RngCore;

use super::plan::keyed_rng;
use super::position::DrawnSpan;
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
    let out = shares(total, w);
    if let Some(i) = (0..out.len()).find(|&i| w[i] > 0.0 && natural[i] == 0) {
        return Err(DataError::Config(format!(
            "{}: weighted {} in the mix, but none of its buckets holds a full global batch",
            names[i], w[i]
        )));
    }
    if let Some(i) = (0..out.len()).find(|&i| out[i] == 0 && w[i] > 0.0) {
        return Err(DataError::Config(format!(
            "{}: weight {} gives it none of the {total} global batches of a mixed epoch ({} or more gives it one; 0 \
             leaves it out)",
            names[i],
            w[i],
            significant(least_weight(total, w, i))
        )));
    }
    Ok(out)
}

/// `total` batches shared by the weights `w` (their sum positive): each its share rounded down, and the
/// batches left over to the largest remainders (ties to the earlier part).
fn shares(total: u64, w: &[f64]) -> Vec<u64> {
    let sum: f64 = w.iter().sum();
    let exact: Vec<f64> = w.iter().map(|x| x / sum * total as f64).collect();
    let mut out: Vec<u64> = exact.iter().map(|x| x.floor() as u64).collect();
    let mut by_remainder: Vec<usize> = (0..w.len()).collect();
    by_remainder
        .sort_by(|&i, &j| (exact[j] - exact[j].floor()).total_cmp(&(exact[i] - exact[i].floor())).then(i.cmp(&j)));
    let short = total - out.iter().sum::<u64>();
    for &i in by_remainder.iter().take(short as usize) {
        out[i] += 1;
    }
    out
}

/// The least weight of part `i`, rounded up to three significant digits, that gets it one of `total`
/// batches ([`shares`]), the other weights as they are (one remainder against the others', so less than
/// the (Σ others) / (total − 1) that gets it one by itself).
fn least_weight(total: u64, w: &[f64], i: usize) -> f64 {
    let gets_one = |x: f64| {
        let mut w = w.to_vec();
        w[i] = x;
        shares(total, &w)[i] >= 1
    };
    let others: f64 = w.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, x)| x).sum();
    let (mut lo, mut hi) = (w[i], 2.0 * others / (total.max(2) - 1) as f64);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        match gets_one(mid) {
            true => hi = mid,
            false => lo = mid,
        }
    }
    let unit = 10f64.powi(hi.log10().floor() as i32 - 2);
    let mut least = (hi / unit).ceil() * unit;
    while !gets_one(least) {
        least += unit;
    }
    least
}

/// `x` to three significant digits.
fn significant(x: f64) -> String {
    let decimals = if x > 0.0 { (2 - x.log10().floor() as i32).max(0) as usize } else { 3 };
    format!("{x:.decimals$}")
}

/// The phases of a resumed mix (each a start and its quotas): those it drew with before global batch
/// `done` (`drawn`, as its position records them), then those of `now` (the mix as the datasets and
/// settings give it now) from `done` on: the one in effect at `done`, starting there where its quotas
/// differ from the last drawn (a dataset's rows changed under `--accept-data-change`), and the later
/// ones. So the batches before `done` keep the parts they were, and each part its place in its own
/// stream. No record (a fresh start, a position of an earlier build): `now`.
pub(crate) fn with_drawn(now: Vec<(u64, Vec<u64>)>, drawn: &[DrawnSpan], done: u64) -> Vec<(u64, Vec<u64>)> {
    let mut out: Vec<(u64, Vec<u64>)> =
        drawn.iter().filter(|d| d.from < done).map(|d| (d.from, d.batches_per_epoch.clone())).collect();
    let Some(last) = out.last().map(|(_, q)| q.clone()) else { return now };
    // (`now` starts at batch 0, so some phase of it is in effect at `done`)
    let at = now.iter().rposition(|(from, _)| *from <= done).expect("a phase from batch 0");
    let mut later = now.into_iter().skip(at);
    let (from, quotas) = later.next().expect("the phase at `done`");
    if from == done || quotas != last {
        out.push((done, quotas));
    }
    out.extend(later);
    out
}

/// One mixed epoch's slots: `(part, the part's batch within this mixed epoch)`.
struct Slots {
    phase: usize,
    epoch: u64,
    slots: Vec<(u16, u32)>,
}

/// The weights of the mix from one global batch on.
struct Phase {
    /// Its first global batch.
    from: u64,
    /// `n_p`: each part's slots per mixed epoch.
    quotas: Vec<u64>,
    /// `N = Σ n_p`.
    per_epoch: u64,
    /// Each part's own batches drawn before the phase.
    offsets: Vec<u64>,
    /// Mixed epochs begun before the phase.
    epochs_before: u64,
}

/// The mix of a joined dataset's parts (see the module's docs).
pub(crate) struct Mix {
    /// By `from`, the first from batch 0.
    phases: Vec<Phase>,
    seed: u64,
    cache: Mutex<VecDeque<Arc<Slots>>>,
}

impl Mix {
    /// The mix whose phase `k` starts at global batch `phases[k].0` with quotas `phases[k].1`
    /// (`phases[0]` from batch 0; the starts increasing, every phase's quotas one per part).
    pub(crate) fn new(phases: Vec<(u64, Vec<u64>)>, seed: u64) -> Mix {
        debug_assert!(phases[0].0 == 0 && phases.windows(2).all(|w| w[0].0 < w[1].0), "phase starts");
        let mut mix = Mix { phases: Vec::with_capacity(phases.len()), seed, cache: Mutex::new(VecDeque::new()) };
        for (k, (from, quotas)) in phases.into_iter().enumerate() {
            let (offsets, epochs_before) = match mix.phases.last() {
                None => (vec![0; quotas.len()], 0),
                Some(before) => {
                    // where the phase before left each part's stream: its whole epochs, then the
                    // first slots of the one the new phase cut short
                    let span = from - before.from;
                    let (full, cut) = (span / before.per_epoch, (span % before.per_epoch) as usize);
                    let mut offsets: Vec<u64> =
                        before.offsets.iter().zip(&before.quotas).map(|(o, n)| o + full * n).collect();
                    for &(p, _) in &mix.slots(k - 1, full).slots[..cut] {
                        offsets[p as usize] += 1;
                    }
                    (offsets, before.epochs_before + full + (cut > 0) as u64)
                }
            };
            let per_epoch = quotas.iter().sum();
            mix.phases.push(Phase { from, quotas, per_epoch, offsets, epochs_before });
        }
        mix
    }

    /// Global batches per mixed epoch of the last phase (the same in every phase at one global batch
    /// size: the quotas of each sum to `Σ N_p`).
    pub(crate) fn per_epoch(&self) -> u64 {
        self.phases[self.phases.len() - 1].per_epoch
    }

    /// The phases begun before global batch `done`, as a position records them ([`with_drawn`]).
    pub(crate) fn spans_before(&self, done: u64) -> Vec<DrawnSpan> {
        let begun = self.phases.iter().take_while(|p| p.from < done);
        begun.map(|p| DrawnSpan { from: p.from, batches_per_epoch: p.quotas.clone() }).collect()
    }

    /// Each part's own batches drawn before global batch `from`, where a phase starts (the loader
    /// starts one at each change of the global batch size).
    pub(crate) fn drawn_before(&self, from: u64) -> &[u64] {
        let phase = self.phases.iter().find(|p| p.from == from).expect("a phase starts at each change of size");
        &phase.offsets
    }

    /// The part global batch `a` comes from, which of that part's own batches it is (counted over its
    /// whole stream), and the mixed epoch it belongs to (counted over the phases).
    pub(crate) fn source(&self, a: u64) -> (usize, u64, u64) {
        let k = self.phases.partition_point(|ph| ph.from <= a).max(1) - 1;
        let ph = &self.phases[k];
        let (epoch, slot) = ((a - ph.from) / ph.per_epoch, ((a - ph.from) % ph.per_epoch) as usize);
        if ph.quotas.len() == 1 {
            return (0, a, a / ph.per_epoch);
        }
        let (p, i) = self.slots(k, epoch).slots[slot];
        (p as usize, ph.offsets[p as usize] + epoch * ph.quotas[p as usize] + i as u64, ph.epochs_before + epoch)
    }

    fn slots(&self, phase: usize, epoch: u64) -> Arc<Slots> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cache.iter().find(|s| (s.phase, s.epoch) == (phase, epoch)) {
            return s.clone();
        }
        let quotas = &self.phases[phase].quotas;
        let mut parts: Vec<u16> =
            quotas.iter().enumerate().flat_map(|(p, &n)| std::iter::repeat_n(p as u16, n as usize)).collect();
        // (the first phase keyed as a mix without phases is)
        let mut rng = match phase {
            0 => keyed_rng(self.seed, &[epoch, MIX_STREAM]),
            k => keyed_rng(self.seed, &[epoch, MIX_STREAM, k as u64]),
        };
        parts.shuffle(&mut rng);
        let mut next = vec![0u32; quotas.len()];
        let slots = parts
            .into_iter()
            .map(|p| {
                let i = next[p as usize];
                next[p as usize] += 1;
                (p, i)
            })
            .collect();
        let s = Arc::new(Slots { phase, epoch, slots });
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
        // 101 batches: 0.001 of 1.001 is 0.1 of one; above half of one (w > 0.5 / 100.5) its remainder
        // beats the other's, and it gets the batch left over
        let tiny = e(&[1.0, 0.001], &[100, 1]);
        assert!(
            tiny.contains("part 1: weight 0.001 gives it none of the 101 global batches")
                && tiny.contains("(0.00498 or more gives it one"),
            "{tiny}"
        );
        assert_eq!(quotas(&[100, 1], Some(&[1.0, 0.00498]), &names(2)).unwrap(), vec![100, 1]);
        assert!(quotas(&[100, 1], Some(&[1.0, 0.00497]), &names(2)).is_err());
        // three parts: the least is against the others' remainders
        let three = e(&[0.6, 0.4, 0.002], &[50, 40, 9]);
        let least: f64 = three.split("(").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert_eq!(quotas(&[50, 40, 9], Some(&[0.6, 0.4, least]), &names(3)).unwrap()[2], 1, "{three}");
        let below = least - 10f64.powi(least.log10().floor() as i32 - 2);
        assert!(quotas(&[50, 40, 9], Some(&[0.6, 0.4, below]), &names(3)).is_err(), "{three}");
        assert_eq!(significant(0.00025), "0.000250");
        assert_eq!(significant(12.5), "12.5");
    }

    #[test]
    fn every_part_takes_its_quota_in_stream_order() {
        let mix = Mix::new(vec![(0, vec![5, 2, 3])], 9);
        let mut next = [0u64; 3];
        for epoch in 0..4u64 {
            let mut taken = [0u64; 3];
            for k in 0..10 {
                let (p, i, e) = mix.source(epoch * 10 + k);
                assert_eq!(e, epoch);
                assert_eq!(i, next[p], "part {p}'s batches come in order");
                next[p] += 1;
                taken[p] += 1;
            }
            assert_eq!(taken, [5, 2, 3], "epoch {epoch}");
        }
        let order = |e: u64| (0..10).map(|k| mix.source(e * 10 + k).0).collect::<Vec<_>>();
        assert_ne!(order(0), order(1), "each mixed epoch is shuffled anew");
        // one part: the batches themselves
        assert_eq!(Mix::new(vec![(0, vec![7])], 3).source(12), (0, 12, 1));
        assert_eq!(part_seed(5, 0), 5);
        assert_ne!(part_seed(5, 1), part_seed(5, 2));
    }

    #[test]
    fn a_phase_changes_the_quotas_and_each_part_goes_on_where_it_was() {
        // phase 1 from batch 23 (two epochs of 10 and 3 slots of a third), phase 2 from batch 40
        let phases = vec![(0, vec![5, 2, 3]), (23, vec![0, 8, 2]), (40, vec![4, 4, 2])];
        let (plain, mix) = (Mix::new(vec![phases[0].clone()], 9), Mix::new(phases, 9));
        for a in 0..23 {
            assert_eq!(mix.source(a), plain.source(a), "batch {a}: before a phase, as without it");
        }
        let mut next = [0u64; 3];
        for a in 0..80u64 {
            let (p, i, _) = mix.source(a);
            assert_eq!(i, next[p], "batch {a}: part {p}'s batches come in order across phases");
            next[p] += 1;
        }
        let count = |range: std::ops::Range<u64>, p: usize| range.filter(|&a| mix.source(a).0 == p).count();
        assert_eq!([0, 1, 2].map(|p| count(23..33, p)), [0, 8, 2], "phase 1's first epoch");
        assert_eq!([0, 1, 2].map(|p| count(40..50, p)), [4, 4, 2], "phase 2's first epoch");
        // mixed epochs counted over the phases: 0, 1, 2 (cut short), then phase 1's from 3
        assert_eq!([22, 23, 39, 40].map(|a| mix.source(a).2), [2, 3, 4, 5]);
    }
}
