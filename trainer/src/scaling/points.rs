//! The points the fits take: one per distinct experiment. Runs of one config that differ only in their
//! seed or folder ([`Settings::experiment`](super::settings::Settings)) are repeats of one measurement,
//! not independent ones: fitting each would count the config several times, shrink the intervals and
//! let a fit of as many coefficients as configs pass exactly through them unnoticed. A point holds
//! their mean loss and its spread; the compute frontier is a set of points.

use serde::Serialize;

use super::RunRecord;

/// One distinct config among the fitted runs.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// Its runs' names (one, or its repeats).
    pub runs: Vec<String>,
    #[serde(skip)]
    pub dirs: Vec<std::path::PathBuf>,
    /// N, D, C: the runs' (equal, for one config) means.
    pub params: f64,
    pub tokens: f64,
    pub compute: f64,
    /// The compute budget a sweep planned its runs for, where it did (`RunRecord::planned_compute`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned_compute: Option<f64>,
    /// The mean of the runs' losses ([`RunRecord::loss`]): what the fits take.
    pub loss: f64,
    /// The runs' sample standard deviation (`None` for a single run).
    pub std: Option<f64>,
    /// Whether no other point reaches a lower loss with no more compute (`L(C)` is fitted to these).
    pub on_frontier: bool,
}

impl Point {
    pub fn n(&self) -> usize {
        self.runs.len()
    }
}

/// The runs grouped by experiment, in the order of each group's first run; runs whose config could
/// not be read are groups of their own.
pub fn by_experiment<'a>(runs: &[&'a RunRecord]) -> Vec<Vec<&'a RunRecord>> {
    let mut groups: Vec<Vec<&RunRecord>> = Vec::new();
    for r in runs {
        let same = |g: &&mut Vec<&RunRecord>| {
            r.settings.experiment.is_some() && g[0].settings.experiment == r.settings.experiment
        };
        match groups.iter_mut().find(same) {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
}

/// The points of the runs: one per experiment ([`by_experiment`]).
pub fn group(runs: &[&RunRecord]) -> Vec<Point> {
    let groups = by_experiment(runs);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let mut points: Vec<Point> = groups
        .into_iter()
        .map(|g| {
            let losses: Vec<f64> = g.iter().map(|r| r.loss()).collect();
            let m = mean(&losses);
            let std = (losses.len() > 1)
                .then(|| (losses.iter().map(|l| (l - m).powi(2)).sum::<f64>() / (losses.len() - 1) as f64).sqrt());
            Point {
                runs: g.iter().map(|r| r.name.clone()).collect(),
                dirs: g.iter().map(|r| r.dir.clone()).collect(),
                params: mean(&g.iter().map(|r| r.n).collect::<Vec<_>>()),
                tokens: mean(&g.iter().map(|r| r.tokens).collect::<Vec<_>>()),
                compute: mean(&g.iter().map(|r| r.compute).collect::<Vec<_>>()),
                // (one config's runs: one plan)
                planned_compute: g[0].planned_compute.filter(|&c| g.iter().all(|r| r.planned_compute == Some(c))),
                loss: m,
                std,
                on_frontier: false,
            }
        })
        .collect();
    let pairs: Vec<(f64, f64)> = points.iter().map(|p| (p.compute, p.loss)).collect();
    for (p, f) in points.iter_mut().zip(compute_frontier(&pairs)) {
        p.on_frontier = f;
    }
    points
}

/// Which `(compute, loss)` pairs are not dominated: none of the others reached a lower loss with no
/// more compute, or the same loss with less. `L(C)` describes the best loss a compute budget buys, so
/// it is fitted to these.
pub fn compute_frontier(points: &[(f64, f64)]) -> Vec<bool> {
    let dominates = |o: (f64, f64), r: (f64, f64)| (o.0 <= r.0 && o.1 < r.1) || (o.0 < r.0 && o.1 <= r.1);
    points.iter().map(|&r| !points.iter().any(|&o| dominates(o, r))).collect()
}

/// The warning for the runs of one experiment that share a seed (one folder copied, or one run trained
/// again under another name: a sweep's axes renamed): one run twice, which the point's run count and
/// spread take for two measurements.
pub fn same_seed_warning(runs: &[&RunRecord]) -> Option<String> {
    let mut twice = Vec::new();
    for g in by_experiment(runs) {
        for (i, r) in g.iter().enumerate() {
            let first = g[..i].iter().find(|o| o.settings.seed.is_some() && o.settings.seed == r.settings.seed);
            if let Some(o) = first {
                twice.push(format!("{} = {} (run.seed {})", r.name, o.name, r.settings.seed.unwrap_or_default()));
            }
        }
    }
    (!twice.is_empty()).then(|| {
        format!(
            "runs of one config with one seed: {} (a run copied, or trained again under another name): one run \
             twice, which its point counts as two repeats, its spread too small; remove one of each",
            twice.join("; ")
        )
    })
}

/// The note on repeats merged into points (none when every point is one run).
pub fn merged_note(points: &[Point]) -> Option<String> {
    let repeated: Vec<&Point> = points.iter().filter(|p| p.n() > 1).collect();
    (!repeated.is_empty()).then(|| {
        let runs: usize = repeated.iter().map(|p| p.n()).sum();
        let list: Vec<String> = repeated.iter().map(|p| p.runs.join(" + ")).collect();
        format!(
            "{runs} runs are repeats of {} (other seeds or folders, same settings): each config is one point of the \
             fits, at its runs' mean loss (their spread: the fitted points' table): {}",
            crate::cli::plural(repeated.len(), "config"),
            list.join("; ")
        )
    })
}
