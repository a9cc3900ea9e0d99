//! The text of the `infinity scaling` report: the runs' table (`runs.csv`, `runs.md`, one row per run
//! with whether it is fitted and on the compute frontier), the fits' Markdown (`fits.md`: coefficients
//! with their 95 % intervals, warnings, notes) and the budgets' table appended to it.

use std::fmt::Write as _;

use super::fit::Fit;
use super::{budget, RunRecord};

const COLUMNS: [&str; 11] = [
    "run",
    "parameters",
    "steps",
    "tokens",
    "compute_flops",
    "final_train_loss",
    "final_val_loss",
    "smoothed_val_loss",
    "finished",
    "fitted",
    "on_frontier",
];

/// Whether a run is in the fits, and whether on the compute frontier (in L(C)).
type Marks<'a> = dyn Fn(&RunRecord) -> (bool, bool) + 'a;

/// One table row; missing values are empty.
fn row(r: &RunRecord, marks: &Marks) -> [String; 11] {
    let (fitted, frontier) = marks(r);
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    [
        r.name.clone(),
        r.params.to_string(),
        r.steps.to_string(),
        format!("{:.6e}", r.tokens),
        format!("{:.6e}", r.compute),
        format!("{:.6}", r.final_train),
        opt(r.final_val),
        opt(r.smoothed_val),
        r.finished.to_string(),
        fitted.to_string(),
        frontier.to_string(),
    ]
}

pub(super) fn runs_csv(runs: &[RunRecord], marks: &Marks) -> String {
    let mut s = COLUMNS.join(",") + "\n";
    for r in runs {
        s.push_str(&(row(r, marks).join(",") + "\n"));
    }
    s
}

pub(super) fn runs_markdown(runs: &[RunRecord], marks: &Marks) -> String {
    let mut s = format!("| {} |\n|{}\n", COLUMNS.join(" | "), "---|".repeat(COLUMNS.len()));
    for r in runs {
        let cells: Vec<String> = row(r, marks).into_iter().map(|c| if c.is_empty() { "–".into() } else { c }).collect();
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    s
}

pub(super) fn fits_markdown(fits: &[&Fit], r: f64, notes: &[String], warnings: &[String]) -> String {
    let mut s = format!(
        "# Scaling fits\n\nPearson r of ln(loss) against ln(compute), runs on the compute frontier: {r:.4}\n\n"
    );
    for w in warnings {
        let _ = writeln!(s, "**Warning**: {w}\n");
    }
    for f in fits {
        let _ = writeln!(s, "## {}\n\n{} runs, RMS of the log residuals {:.4}\n", f.formula, f.n, f.rmse_log);
        s.push_str("| coefficient | value | 95 % interval |\n|---|---|---|\n");
        // no interval: too few runs for the coefficients, or a covariance the runs leave singular (a
        // coefficient at its bound, such as E at 0, or two that the runs do not separate)
        let why = match f.n <= f.coefs.len() {
            true => "– (no degrees of freedom)",
            false => "– (not determined: the fit's covariance is singular)",
        };
        for c in &f.coefs {
            let ci = c.ci95.map_or(why.into(), |(lo, hi)| format!("[{lo:.5}, {hi:.5}]"));
            let _ = writeln!(s, "| {} | {:.5} | {} |", c.name, c.value, ci);
        }
        s.push('\n');
    }
    for n in notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

/// The budgets' table (empty without budgets).
pub fn budgets_markdown(plans: &[budget::BudgetPlan]) -> String {
    if plans.is_empty() {
        return String::new();
    }
    let mut s =
        "\n## Budgets\n\nk = training FLOPs per parameter and token, the runs' median (its spread: the notes); N* \
                 and D* minimise L(N, D) under C = k·N·D; † = outside the runs' range of N or D (an extrapolation).\n\n\
                 | C (FLOPs) | × largest run | L(C) power | L(C) with floor | N* | D* (tokens) | L(N*, D*) | nearest \
                 preset |\n|---|---|---|---|---|---|---|---|\n"
            .to_string();
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("–".to_string(), f);
    for b in plans {
        let o = b.optimal.as_ref();
        let dagger = |what: &str| match o.and_then(|o| o.extrapolation.as_ref()).is_some_and(|x| x.contains(what)) {
            true => "†",
            false => "",
        };
        let _ = writeln!(
            s,
            "| {:.3e} | {:.1} | {} | {} | {}{} | {}{} | {} | {} |",
            b.compute,
            b.times_largest_run,
            opt(b.loss_power, &|v| format!("{v:.4}")),
            opt(b.loss_power_floor, &|v| format!("{v:.4}")),
            opt(o.map(|o| o.params), &|v| format!("{v:.3e}")),
            dagger("N*"),
            opt(o.map(|o| o.tokens), &|v| format!("{v:.3e}")),
            dagger("D*"),
            opt(o.map(|o| o.loss), &|v| format!("{v:.4}")),
            o.and_then(|o| o.nearest_preset.as_ref()).map_or("–".into(), |(p, n)| format!("{p} ({:.3e})", *n as f64)),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_interval_gives_its_reason() {
        use crate::scaling::fit::{Coef, Fit};
        let coefs = |k: usize| (0..k).map(|_| Coef { name: "E", value: 0.0, ci95: None }).collect::<Vec<_>>();
        let fit = |n: usize| Fit { formula: "L = E + A/N^α + B/D^β", coefs: coefs(5), n, rmse_log: 0.0 };
        let (nine, five) = (fit(9), fit(5));
        assert!(super::fits_markdown(&[&nine], 0.9, &[], &[]).contains("covariance is singular"));
        assert!(super::fits_markdown(&[&five], 0.9, &[], &[]).contains("no degrees of freedom"));
    }
}
