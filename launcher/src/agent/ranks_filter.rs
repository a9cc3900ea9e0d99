//! `--local-ranks-filter` (torchrun's flag): the local ranks whose output the agent copies to its
//! console. Every rank's output still goes to its log file and its tail to the failure report, so
//! eight ranks a node saying the same line once each need not fill a job's output.

use std::collections::BTreeSet;
use std::fmt;

/// Beyond any node's local ranks: a range is cut here (the check against `--nproc-per-node` names it),
/// so that a typo such as `0-4000000000` does not fill memory.
const MAX_LOCAL_RANKS: usize = 1 << 16;

/// Local ranks, as `0`, `0,3` or `0-3,6` writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRanks(BTreeSet<usize>);

impl LocalRanks {
    /// Parse a comma-separated list of ranks and inclusive ranges (`0-3,6`).
    pub fn parse(text: &str) -> Result<LocalRanks, String> {
        let mut ranks = BTreeSet::new();
        for part in text.split(',').map(str::trim) {
            let number = |s: &str| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("expected local ranks as `0`, `0,3` or `0-3,6`, found `{part}` in `{text}`"))
            };
            match part.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (number(lo)?, number(hi)?);
                    if lo > hi {
                        return Err(format!("`{part}`: a range runs from the lower rank to the higher"));
                    }
                    ranks.extend(lo..=hi.min(MAX_LOCAL_RANKS));
                }
                None => {
                    ranks.insert(number(part)?);
                }
            }
        }
        Ok(LocalRanks(ranks))
    }

    pub fn contains(&self, local: usize) -> bool {
        self.0.contains(&local)
    }

    /// The highest rank listed.
    pub fn max(&self) -> Option<usize> {
        self.0.last().copied()
    }
}

impl fmt::Display for LocalRanks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranks: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&ranks.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::LocalRanks;

    #[test]
    fn lists_and_ranges_parse_and_bad_ones_are_named() {
        let r = LocalRanks::parse("0-2, 5").unwrap();
        assert!([0, 1, 2, 5].iter().all(|&i| r.contains(i)) && !r.contains(3) && !r.contains(6));
        assert_eq!((r.to_string(), r.max()), ("0,1,2,5".to_string(), Some(5)));
        assert_eq!(LocalRanks::parse("3").unwrap().to_string(), "3");
        // (a typo's huge range is cut, not filled: it stays above any node's ranks)
        assert!(LocalRanks::parse("0-4000000000").unwrap().max() > Some(4096));
        for (bad, want) in [("a", "found `a` in `a`"), ("0,,1", "found `` in `0,,1`"), ("4-2", "`4-2`: a range")] {
            let e = LocalRanks::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
