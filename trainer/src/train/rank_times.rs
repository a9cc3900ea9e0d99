//! Where each rank's time goes, to spot stragglers: every rank measures its own work in a step (the
//! batch, forward and backward: everything before the step's first collective) and, within it, its
//! wait for the batch. The values travel in the step's metrics all-reduce (each rank fills its own
//! slots of a zeroed vector, so the sum is every rank's value), and the leader logs the spread.
//!
//! A straggler is warned of once per rank, then again only when its lead over the median rank has
//! doubled or [`REPEAT_AFTER`] has passed: a slow node lags at every step, and a warning per logged step
//! would bury the log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A step's per-rank timings, reduced to what the logs show.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RankTimes {
    /// Own work (data, forward, backward), the slowest rank's and the median rank's, in seconds.
    pub work_s_max: f64,
    pub work_s_median: f64,
    pub slowest_rank: usize,
    /// Waiting for the batch (loader and self-correction on the host), the longest, in seconds.
    pub data_s_max: f64,
    pub data_slowest_rank: usize,
    /// The ranks timed (for the straggler line's words: with two, the median is the other rank).
    #[serde(skip)]
    pub world: usize,
}

/// A straggler is reported when the slowest rank's work takes this much longer than the median's …
const STRAGGLER_RATIO: f64 = 1.25;
/// … and at least this many seconds longer (short steps jitter by a few milliseconds).
const STRAGGLER_MIN_S: f64 = 0.05;
/// A rank already warned of is warned of again while it lags after this long.
pub const REPEAT_AFTER: Duration = Duration::from_secs(600);

impl RankTimes {
    /// This rank's slots: `[work of each rank…, data wait of each rank…]`, zero but its own.
    pub fn slots(rank: usize, world: usize, work_s: f64, data_s: f64) -> Vec<f64> {
        let mut v = vec![0.0; 2 * world];
        (v[rank], v[world + rank]) = (work_s, data_s);
        v
    }

    /// From the slots summed over ranks (`sum`) or averaged (`mean`: multiplied back by the world).
    pub fn from_slots(slots: &[f64], world: usize, averaged: bool) -> RankTimes {
        assert_eq!(slots.len(), 2 * world, "rank time slots");
        let k = if averaged { world as f64 } else { 1.0 };
        let (work, data): (Vec<f64>, Vec<f64>) =
            (slots[..world].iter().map(|v| v * k).collect(), slots[world..].iter().map(|v| v * k).collect());
        let argmax = |v: &[f64]| (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best });
        let mut sorted = work.clone();
        sorted.sort_by(f64::total_cmp);
        let (slowest, data_slowest) = (argmax(&work), argmax(&data));
        RankTimes {
            work_s_max: work[slowest],
            // the lower middle: with two ranks the faster one, which the slower is compared against
            work_s_median: sorted[(world - 1) / 2],
            slowest_rank: slowest,
            data_s_max: data[data_slowest],
            data_slowest_rank: data_slowest,
            world,
        }
    }

    /// Whether one rank's work stands out from the median's.
    pub fn has_straggler(&self) -> bool {
        let (max, median) = (self.work_s_max, self.work_s_median);
        max > STRAGGLER_RATIO * median && max - median >= STRAGGLER_MIN_S
    }

    /// A line naming the straggler (and its host, from `hosts` by rank, when known), if there is one.
    pub fn straggler(&self, step: u64, hosts: &[String]) -> Option<String> {
        let on = |rank: usize| hosts.get(rank).map_or(String::new(), |h| format!(" on {h}"));
        let (median, others) = match self.world {
            2 => ("the other rank's", "the other waits"),
            _ => ("the median rank's", "the others wait"),
        };
        self.has_straggler().then(|| {
            format!(
                "straggler at step {step}: rank {}'s own work took {:.3} s{}, {median} {:.3} s (the longest wait \
                 for data: {:.3} s, rank {}{}); {others} for it in every all-reduce",
                self.slowest_rank,
                self.work_s_max,
                on(self.slowest_rank),
                self.work_s_median,
                self.data_s_max,
                self.data_slowest_rank,
                on(self.data_slowest_rank)
            )
        })
    }
}

/// Rank 0's straggler warnings, rate-limited per rank (see the module comment).
#[derive(Default)]
pub struct StragglerReport {
    /// Each rank's host, by rank (empty when unknown).
    hosts: Vec<String>,
    /// Per rank warned of: its lead over the median then (seconds), and when.
    warned: HashMap<usize, (f64, Instant)>,
}

impl StragglerReport {
    pub fn new(hosts: Vec<String>) -> StragglerReport {
        StragglerReport { hosts, warned: HashMap::new() }
    }

    /// The warning for step `step`'s times `t` at `now`, when one is due.
    pub fn check(&mut self, t: &RankTimes, step: u64, now: Instant) -> Option<String> {
        let line = t.straggler(step, &self.hosts)?;
        let lead = t.work_s_max - t.work_s_median;
        let again = match self.warned.get(&t.slowest_rank) {
            None => "warned again if its lead over the median doubles, or in 10 minutes if it still lags",
            Some(&(before, _)) if lead >= 2.0 * before => "its lead over the median has doubled",
            Some(&(_, at)) if now.duration_since(at) >= REPEAT_AFTER => "still lagging 10 minutes on",
            Some(_) => return None,
        };
        self.warned.insert(t.slowest_rank, (lead, now));
        Some(format!("{line} ({again})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_summed_over_ranks_name_the_slowest() {
        let world = 4;
        let (work, data) = ([0.30, 0.31, 0.52, 0.29], [0.01, 0.20, 0.02, 0.0]);
        let mut sum = vec![0.0; 2 * world];
        for r in 0..world {
            let s = RankTimes::slots(r, world, work[r], data[r]);
            assert_eq!(s.iter().filter(|v| **v != 0.0).count(), 2 - usize::from(data[r] == 0.0));
            sum.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
        }
        let t = RankTimes::from_slots(&sum, world, false);
        assert_eq!((t.slowest_rank, t.work_s_max, t.work_s_median), (2, 0.52, 0.30));
        assert_eq!((t.data_slowest_rank, t.data_s_max), (1, 0.20));
        let line = t.straggler(7, &[]).unwrap();
        assert!(line.contains("rank 2's own work took 0.520 s, the median") && line.contains("0.300 s"), "{line}");
        let hosts: Vec<String> = ["a", "b", "c", "d"].map(String::from).into();
        let line = t.straggler(7, &hosts).unwrap();
        assert!(line.contains("rank 2's own work took 0.520 s on c, ") && line.contains("rank 1 on b)"), "{line}");

        let mean: Vec<f64> = sum.iter().map(|v| v / world as f64).collect();
        let m = RankTimes::from_slots(&mean, world, true);
        assert_eq!(m.slowest_rank, 2);
        assert!((m.work_s_max - 0.52).abs() < 1e-12);
    }

    #[test]
    fn even_ranks_and_jitter_are_not_stragglers() {
        let t = RankTimes::from_slots(&[0.100, 0.104, 0.0, 0.0], 2, false);
        assert_eq!((t.work_s_median, t.slowest_rank), (0.100, 1));
        assert!(t.straggler(1, &[]).is_none(), "4 ms apart is jitter");
        let t = RankTimes::from_slots(&[0.010, 0.030, 0.0, 0.0], 2, false);
        assert!(t.straggler(1, &[]).is_none(), "3× slower but only 20 ms: too short to matter");
        let t = RankTimes::from_slots(&[0.10, 0.40, 0.0, 0.0], 2, false);
        let line = t.straggler(1, &[]).unwrap();
        assert!(line.contains("rank 1's own work took 0.400 s, the other rank's 0.100 s"), "{line}");
        assert!(line.ends_with("the other waits for it in every all-reduce"), "{line}");
        let t = RankTimes::from_slots(&[0.10, 0.40, 0.11, 0.0, 0.0, 0.0], 3, false);
        assert!(t.straggler(1, &[]).unwrap().contains(", the median rank's 0.110 s"));
    }

    #[test]
    fn a_straggler_is_warned_of_once_then_when_worse_or_ten_minutes_on() {
        let mut report = StragglerReport::new(vec!["node-a".into(), "node-b".into()]);
        let times = |slow: f64| RankTimes::from_slots(&[0.10, slow, 0.0, 0.0], 2, false);
        let t0 = Instant::now();
        let first = report.check(&times(0.30), 1, t0).expect("the first time");
        assert!(first.contains("rank 1's own work took 0.300 s on node-b") && first.contains("doubles"), "{first}");
        for (step, slow, secs) in [(2, 0.30, 1), (3, 0.45, 60), (4, 0.20, 599)] {
            assert_eq!(report.check(&times(slow), step, t0 + Duration::from_secs(secs)), None, "step {step}");
        }
        let worse = report.check(&times(0.55), 5, t0 + Duration::from_secs(600)).expect("lead doubled");
        assert!(worse.contains("has doubled"), "{worse}");
        assert_eq!(report.check(&times(0.55), 6, t0 + Duration::from_secs(1199)), None);
        let later = report.check(&times(0.30), 7, t0 + Duration::from_secs(1200)).expect("10 minutes on");
        assert!(later.contains("10 minutes on"), "{later}");
        // another rank is warned of on its own account
        let other = RankTimes::from_slots(&[0.40, 0.10, 0.0, 0.0], 2, false);
        assert!(report.check(&other, 8, t0 + Duration::from_secs(1201)).unwrap().contains("rank 0's"));
    }
}
